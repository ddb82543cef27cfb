"""The CUDA path on a GPU: the fused CUDA threshold + label op against cupyx.scipy.ndimage.label,
OpenCV's CUDA labelling (where this OpenCV has it) and the memory floor; then segment_batch on the
GPU against the starter-project pipeline on the same GPU. In between, the seeded op (nucleus +
boundary maps from bench_seeded.py) against the plain op on CUDA.

    python benchmarks/bench_cuda.py [--sizes 2048 4096 8192] [--repeats 50] [--markdown]

Needs a CUDA GPU and unetseg built with CUDA (a torch with CUDA at install time); says so and exits
otherwise. Times are medians of calls timed with CUDA events after warm-up, inputs already on the
GPU. Ratios are competitor time / unetseg time (above 1: unetseg is faster). The memory floor reads
the float32 map and writes int32 labels once (a device copy). Every competitor's object count is
checked against the CPU op first.

The segment_batch part runs the bundled model's architecture (fresh weights: time does not depend
on them) on 1024^2 synthetic images; "post-processing" is the share of segment_batch's time spent in
the label op on the network's probabilities (timed alone on the same batch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

import unetseg
from unetseg.data import synthetic_nuclei

THRESHOLD = 0.5


def gpu_ms(fn, repeats: int) -> float:
    """Median milliseconds of fn() on the current stream, by CUDA events, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_maps(sizes: list[int]) -> dict[str, torch.Tensor]:
    maps = {f"{s}x{s}": torch.from_numpy(synthetic_nuclei((s, s), seed=s).probability) for s in sizes}
    maps["256x256x256"] = torch.from_numpy(
        np.stack([synthetic_nuclei((256, 256), seed=1000 + i).probability for i in range(256)])
    )
    return maps


def competitors(scores: torch.Tensor):
    """(name, fn, count()) triples on a CUDA map (H, W) or batch (N, H, W)."""
    labels = torch.empty(scores.shape, dtype=torch.int32, device="cuda")
    counts = torch.empty(1 if scores.dim() == 2 else scores.shape[0], dtype=torch.int64, device="cuda")
    images = scores if scores.dim() == 3 else scores[None]
    out = [
        ("unetseg label (out=)", lambda: unetseg.label(scores, THRESHOLD, out=(labels, counts)), None),
        (
            "unetseg label",
            lambda: unetseg.label(scores, THRESHOLD),
            lambda: unetseg.label(scores, THRESHOLD).counts.tolist(),
        ),
        ("unetseg label_stats", lambda: unetseg.label_stats(scores, THRESHOLD), None),
        ("memory floor (read f32, write i32)", lambda: labels.copy_(scores.view(torch.int32)), None),
    ]
    try:
        import cupy
        import cupyx.scipy.ndimage as cnd

        cp_images = [cupy.from_dlpack(i) for i in images]
        eight = cupy.ones((3, 3), dtype=bool)

        def cupyx_label():
            return [cnd.label(i > THRESHOLD, structure=eight) for i in cp_images]

        out.append(("cupyx.scipy.ndimage.label", cupyx_label, lambda: [int(n) for _, n in cupyx_label()]))
    except ImportError:
        print("# cupy is not installed: no cupyx.scipy.ndimage.label row (pip install cupy-cuda13x)")
    if hasattr(cv2, "cuda") and cv2.cuda.getCudaEnabledDeviceCount() > 0:
        masks = [cv2.cuda_GpuMat((i > THRESHOLD).to(torch.uint8).cpu().numpy()) for i in images]

        def opencv_cuda():
            return [cv2.cuda.connectedComponents(m) for m in masks]

        out.append(("OpenCV cuda.connectedComponents", opencv_cuda, None))
    else:
        print("# this OpenCV has no CUDA: no OpenCV CUDA row")
    return out


def label_table(sizes: list[int], repeats: int) -> list[tuple]:
    rows = []
    for name, cpu_scores in make_maps(sizes).items():
        scores = cpu_scores.cuda()
        want = unetseg.label(cpu_scores, THRESHOLD)
        got = unetseg.label(scores, THRESHOLD)
        assert torch.equal(got.labels.cpu(), want.labels), f"{name}: CUDA labels differ from the CPU op"
        results = []
        for method, fn, count in competitors(scores):
            if count is not None:
                assert count() == want.counts.tolist(), f"{name}: {method} finds other objects"
            results.append((method, gpu_ms(fn, repeats)))
        ours = results[0][1]
        for method, ms in results:
            rows.append((name, int(want.counts.sum()), method, ms, scores.numel() / ms / 1e6, ms / ours))
    return rows


def seeded_table(sizes: list[int], repeats: int) -> list[tuple]:
    """The seeded op against the plain op on the same nucleus + boundary maps (issue 7: at most 2x),
    both with statistics, both checked against the CPU op first."""
    from bench_seeded import two_channel

    maps = {f"{s}x{s}": two_channel((s, s), seed=s) for s in sizes}
    maps["64x256x256"] = np.stack([two_channel((256, 256), seed=1000 + i) for i in range(64)])
    rows = []
    for name, array in maps.items():
        cpu = torch.from_numpy(array)
        scores = cpu.cuda()
        nucleus = scores.select(-3, 0)
        want = unetseg.seeded_label(cpu, THRESHOLD, THRESHOLD)
        got = unetseg.seeded_label(scores, THRESHOLD, THRESHOLD)
        assert torch.equal(got.labels.cpu(), want.labels), f"{name}: CUDA seeded labels differ from the CPU op"
        plain_ms = gpu_ms(lambda: unetseg.label_stats(nucleus, THRESHOLD), repeats)
        seeded_ms = gpu_ms(lambda: unetseg.seeded_label_stats(scores, THRESHOLD, THRESHOLD), repeats)
        rows.append((name, int(want.counts.sum()), plain_ms, seeded_ms, seeded_ms / plain_ms))
    return rows


def segment_table(repeats: int, images: int = 32, size: int = 1024) -> list[tuple]:
    from bench_segment import checkpoint_like_default, normalised_batch

    from unetseg.export import export

    checkpoint, model = checkpoint_like_default()
    channels = checkpoint["in_channels"]
    batch = [synthetic_nuclei((size, size), seed=i).image for i in range(images)]
    x = torch.from_numpy(normalised_batch(batch, channels))
    model = model.cuda().eval()

    def starter():
        out = []
        for s in range(0, images, 8):
            with torch.no_grad():
                prob = torch.sigmoid(model(x[s : s + 8].cuda()))[:, 0]
            for p in (prob > THRESHOLD).to(torch.uint8).cpu().numpy():
                out.append(cv2.connectedComponents(p, connectivity=8)[0] - 1)
        return out

    starter_ms = gpu_ms(starter, repeats)
    pixels = images * size * size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        export(checkpoint, path)
        for precision in ("float32", "float16"):
            runner = unetseg.Runner(path, device="cuda", precision=precision, batch_size=8)
            for labelling in ("plain", "seeded"):
                ms = gpu_ms(lambda: runner.segment(batch, labelling=labelling), repeats)
                probs = torch.from_numpy(np.stack(runner.predict(batch[:8]))).cuda()
                op = (
                    (lambda: unetseg.label_stats(probs[:, 0], THRESHOLD))
                    if labelling == "plain"
                    else (lambda: unetseg.seeded_label_stats(probs[:, :2], THRESHOLD))
                )
                op_ms = gpu_ms(op, repeats) * images / 8
                rows.append(
                    (
                        f"segment_batch {precision}, {labelling} labelling",
                        ms,
                        pixels / ms / 1e3,
                        starter_ms / ms,
                        100 * op_ms / ms,
                    )
                )
    rows.append(("starter pipeline (eager float32, OpenCV)", starter_ms, pixels / starter_ms / 1e3, 1.0, float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192], help="square map sizes")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per method (median reported)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not torch._C._dispatch_has_kernel_for_dispatch_key("unetseg::label", "CUDA"):
        sys.exit(
            "bench_cuda: needs a CUDA GPU and unetseg built against a torch with CUDA "
            f"(torch {torch.__version__}, cuda available: {torch.cuda.is_available()})"
        )
    sys.path.insert(0, str(Path(__file__).parent))
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"unetseg {unetseg.__version__}"
    )
    rows = label_table(args.sizes, args.repeats)
    if args.markdown:
        print("| map | objects | method | ms | Gpx/s | vs unetseg |\n|---|---:|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.1f} | {r[5]:.2f}x |")
    else:
        for r in rows:
            print(f"{r[0]:>12} {r[1]:>7} {r[2]:<40} {r[3]:9.3f} ms {r[4]:7.1f} Gpx/s {r[5]:7.2f}x")
    print(
        "| nucleus + boundary map | objects | label_stats ms | seeded_label_stats ms | seeded / plain |\n"
        "|---|---:|---:|---:|---:|"
    )
    for r in seeded_table(args.sizes, args.repeats):
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f}x |")
    seg = segment_table(max(3, args.repeats // 10))
    print("| pipeline | ms | Mpx/s | vs starter | post-processing % |\n|---|---:|---:|---:|---:|")
    for r in seg:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.2f}x | {r[4]:.1f} |")


if __name__ == "__main__":
    main()
