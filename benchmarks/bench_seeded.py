"""Seeded (nucleus + boundary) labelling against plain threshold + connected components, and against
the usual Python way to split touching nuclei (seeds, then skimage's watershed), in one process
with the same thread count.

    python benchmarks/bench_seeded.py [--threads N] [--repeats R] [--sizes 1024 2048 4096]
    python benchmarks/bench_seeded.py --model MODEL.pt --images DIR_OR_FILES...   # real predictions

Maps come from unetseg's synthetic generator (many touching nuclei): channel 0 is its soft nucleus
probability, channel 1 a soft boundary probability (the objects' inner boundaries, blurred), as a
2-channel model predicts them. "vs plain" is time / the time of unetseg's plain label_stats on the
nucleus channel (the goal of issue 7: seeded at most 2x plain); "vs seeded" is time / unetseg's
seeded_label_stats time (above 1: unetseg is faster). The methods are called in turn in every repeat,
so a shared machine's drift shifts them alike. With --model and --images, the maps are a
2-channel model's probabilities on those images instead (each image timed on its own, times summed),
at 0.5 / 0.5 and at the model's own thresholds.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.ndimage as ndi
import skimage.segmentation
import torch
from common import cpu_name, interleaved_median_seconds

import unetseg
from unetseg.data import synthetic_nuclei

THRESHOLD = 0.5


def two_channel(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """(2, H, W) float32 nucleus + boundary probabilities of one synthetic image."""
    s = synthetic_nuclei(shape, seed=seed)
    boundary = skimage.segmentation.find_boundaries(s.labels, mode="inner").astype(np.float32)
    boundary = np.clip(ndi.gaussian_filter(boundary, 0.7) * 2.5, 0, 1)
    return np.stack([s.probability, boundary]).astype(np.float32)


def make_maps(sizes: list[int], batch: int, small: int) -> dict[str, np.ndarray]:
    maps = {f"{s}x{s}": two_channel((s, s), seed=s) for s in sizes}
    maps[f"{batch}x{small}x{small}"] = np.stack([two_channel((small, small), seed=1000 + i) for i in range(batch)])
    return maps


def predicted_maps(model: str, images: list[str]) -> tuple[list[np.ndarray], tuple[float, float]]:
    """A 2-channel model's (2, H, W) probabilities on real images, and its (threshold, boundary_threshold)."""
    from unetseg.io import collect_images

    runner = unetseg.Runner(model, device="cpu")
    if runner.metadata["out_channels"] < 2:
        raise SystemExit(f"{model} has no boundary output; give a nucleus + boundary model")
    options = runner.resolve(labelling="seeded")
    return [p[:2] for p in runner.predict(collect_images(images))], (
        options["threshold"],
        options["boundary_threshold"],
    )


def bench_predicted(maps: list[np.ndarray], thresholds: tuple[float, float], repeats: int) -> None:
    """Both ops (min_area 0) at 0.5 / 0.5 and at the model's own thresholds (plain at the same t)."""
    scores = [torch.from_numpy(np.ascontiguousarray(m)) for m in maps]
    pixels = sum(s[0].numel() for s in scores)
    print(f"{len(scores)} predicted maps, {pixels / 1e6:.1f} Mpx")
    print("| thresholds (t / t_b) | method | objects | ms (sum) | Mpx/s | vs plain |\n|---|---|---:|---:|---:|---:|")
    for t, tb in dict.fromkeys([(THRESHOLD, THRESHOLD), thresholds]):
        plain = seeded = 0.0
        for s in scores:
            times = interleaved_median_seconds(
                {
                    "plain": lambda: unetseg.label_stats(s[0], t),
                    "seeded": lambda: unetseg.seeded_label_stats(s, t, tb),
                },
                repeats,
            )
            plain += 1e3 * times["plain"]
            seeded += 1e3 * times["seeded"]
        plain_objects = sum(unetseg.label(s[0], t).counts.item() for s in scores)
        seeded_objects = sum(unetseg.seeded_label(s, t, tb).counts.item() for s in scores)
        name = f"{t:g} / {tb:g}" + (" (the model's)" if (t, tb) == thresholds else "")
        print(
            f"| {name} | unetseg label_stats (plain) | {plain_objects} | {plain:.2f} "
            f"| {pixels / plain / 1e3:.0f} | 1.00x |"
        )
        print(
            f"| {name} | unetseg seeded_label_stats | {seeded_objects} | {seeded:.2f} | {pixels / seeded / 1e3:.0f} | "
            f"{seeded / plain:.2f}x |",
            flush=True,
        )


def skimage_watershed(image: np.ndarray) -> np.ndarray:
    """The Python pipeline people write: threshold, seeds labelled by scipy, skimage's watershed
    flooding the inverted nucleus score inside the foreground."""
    foreground = image[0] > THRESHOLD
    markers, _ = ndi.label(foreground & (image[1] < THRESHOLD), np.ones((3, 3)))
    return skimage.segmentation.watershed(-image[0], markers, mask=foreground, connectivity=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for torch")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per method (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="square map sizes")
    parser.add_argument("--model", help="a 2-channel model file: time the ops on its predictions on --images")
    parser.add_argument("--images", nargs="+", help="images (files, folders, globs) for --model")
    parser.add_argument("--skimage-up-to", type=int, default=2048, help="largest size skimage's watershed runs at")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, {args.threads} threads, torch {torch.__version__}, unetseg {unetseg.__version__}")
    if args.model:
        return bench_predicted(*predicted_maps(args.model, args.images or []), args.repeats)
    print("| map | plain objects | seeded objects | method | ms | Mpx/s | vs plain | vs seeded |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, m in make_maps(args.sizes, 16, 256).items():
        scores = torch.from_numpy(m if m.ndim == 4 else m[None])
        nucleus = scores[:, 0]
        plain_objects = unetseg.label(nucleus, THRESHOLD).counts.sum().item()
        seeded_objects = unetseg.seeded_label(scores, THRESHOLD, THRESHOLD).counts.sum().item()
        methods = [
            ("unetseg label_stats (plain)", lambda: unetseg.label_stats(nucleus, THRESHOLD)),
            ("unetseg seeded_label_stats", lambda: unetseg.seeded_label_stats(scores, THRESHOLD, THRESHOLD)),
            ("unetseg seeded_label", lambda: unetseg.seeded_label(scores, THRESHOLD, THRESHOLD)),
        ]
        if max(m.shape[-2:]) <= args.skimage_up_to:
            methods.append(("scipy seeds + skimage watershed", lambda: [skimage_watershed(i) for i in scores.numpy()]))
        times = {method: 1e3 * t for method, t in interleaved_median_seconds(dict(methods), args.repeats).items()}
        plain, seeded = times[methods[0][0]], times[methods[1][0]]
        for method, ms in times.items():
            print(
                f"| {name} | {plain_objects} | {seeded_objects} | {method} | {ms:.2f} | "
                f"{nucleus.numel() / ms / 1e3:.0f} | {ms / plain:.2f}x | {ms / seeded:.2f}x |"
            )


if __name__ == "__main__":
    main()
