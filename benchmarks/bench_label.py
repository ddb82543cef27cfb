"""Threshold + connected components on nuclei-like probability maps: unetseg's fused op against
OpenCV, cc3d, scipy, skimage and the memory floor, in one process with the same thread count.

    python benchmarks/bench_label.py [--threads N] [--repeats R] [--rounds K] [--markdown]

Maps come from unetseg's synthetic generator (float32 soft nucleus masks, many touching), at
2048^2, 4096^2 and a batch of 32 x 256^2. Every competitor gets the same map and threshold; ratios
are competitor time / unetseg time (above 1: unetseg is faster). The memory floor reads the float
map and writes int32 labels once (torch's parallel copy, preallocated output). The op also runs
with each vector path narrower than the CPU's widest (AVX2, generic SSE2), to show what each adds.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import torch
from common import cpu_name, median_seconds

import unetseg
from unetseg import _C
from unetseg.data import synthetic_nuclei

THRESHOLD = 0.5


def timeit(fn, repeats: int) -> float:
    """Median wall time in ms over `repeats` calls after one warm-up call."""
    return 1e3 * median_seconds(fn, repeats)


def make_maps(sizes: list[int], batch: int, small: int) -> dict[str, np.ndarray]:
    maps = {f"{s}x{s}": synthetic_nuclei((s, s), seed=s).probability for s in sizes}
    maps[f"{batch}x{small}x{small}"] = np.stack(
        [synthetic_nuclei((small, small), seed=1000 + i).probability for i in range(batch)]
    )
    return maps


def narrower_simd(simd: str) -> list[str]:
    """The kernels' vector paths narrower than `simd`, the one in use (every CPU has "generic")."""
    levels = ["generic", "avx2", "avx512"]
    return levels[: levels.index(simd)]


def competitors(m: np.ndarray):
    """(name, fn) pairs for one map: (H, W) or a batch (N, H, W), looped in Python per image."""
    scores = torch.from_numpy(m)
    images = m if m.ndim == 3 else m[None]
    labels = torch.empty(scores.shape, dtype=torch.int32)
    counts = torch.empty(images.shape[0], dtype=torch.int64)
    mask = np.empty(images.shape[1:], np.uint8)
    cv_labels = np.empty(images.shape[1:], np.int32)
    eight = np.ones((3, 3), bool)
    import cc3d

    def opencv():
        for image in images:
            cv2.compare(image, THRESHOLD, cv2.CMP_GT, dst=mask)
            cv2.connectedComponents(mask, labels=cv_labels, connectivity=8, ltype=cv2.CV_32S)

    def opencv_stats():
        for image in images:
            cv2.compare(image, THRESHOLD, cv2.CMP_GT, dst=mask)
            cv2.connectedComponentsWithStats(mask, labels=cv_labels, connectivity=8, ltype=cv2.CV_32S)

    simd = _C.cpu_simd()

    def on(level, fn):
        """fn with the kernels' `level` code, to show what each vector path adds."""

        def run():
            _C.set_cpu_simd(level)
            try:
                fn()
            finally:
                _C.set_cpu_simd(simd)

        return run

    def label_out():
        unetseg.label(scores, THRESHOLD, out=(labels, counts))

    def label():
        unetseg.label(scores, THRESHOLD)

    vector_paths = [
        row
        for level in narrower_simd(simd)
        for row in [
            (f"unetseg label (out=), {level}", on(level, label_out)),
            (f"unetseg label, {level}", on(level, label)),
        ]
    ]
    return [
        (f"unetseg label (out=), {simd}", label_out),
        (f"unetseg label, {simd}", label),
        ("unetseg label_stats", lambda: unetseg.label_stats(scores, THRESHOLD)),
        *vector_paths,
        ("memory floor (read f32, write i32)", lambda: labels.copy_(scores.view(torch.int32))),
        ("OpenCV compare + connectedComponents", opencv),
        ("OpenCV ... connectedComponentsWithStats", opencv_stats),
        ("cc3d (numpy threshold)", lambda: [cc3d.connected_components(i > THRESHOLD, connectivity=8) for i in images]),
        ("scipy.ndimage.label", lambda: [ndi.label(i > THRESHOLD, eight) for i in images]),
        ("skimage.measure.label", lambda: [skimage.measure.label(i > THRESHOLD, connectivity=2) for i in images]),
    ]


def check_agreement(m: np.ndarray) -> None:
    """The benchmark only means something if everyone finds the same objects."""
    images = m if m.ndim == 3 else m[None]
    ours = unetseg.label(torch.from_numpy(m), THRESHOLD).counts.reshape(-1).tolist()
    theirs = [ndi.label(i > THRESHOLD, np.ones((3, 3)))[1] for i in images]
    assert ours == theirs, (ours[:5], theirs[:5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for torch and OpenCV")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per method (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="square map sizes")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every method this many times in turn and report the medians of the rounds, with the "
        "ratios' range: on a shared machine whose speed drifts, ratios taken within a round are steadier",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    print(
        f"# {cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}, unetseg {unetseg.__version__}"
    )
    rows = []
    for name, m in make_maps(args.sizes, 32, 256).items():
        check_agreement(m)
        n_objects = unetseg.label(torch.from_numpy(m), THRESHOLD).counts.sum().item()
        methods = competitors(m)
        times: dict[str, list[float]] = {method: [] for method, _ in methods}
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):  # every method once a round, in a new order: no method always follows another
            for k in rng.permutation(len(methods)) if args.rounds > 1 else range(len(methods)):
                method, fn = methods[k]
                times[method].append(timeit(fn, args.repeats))
        ours, ours_stats = times[methods[0][0]], times[methods[2][0]]
        for method, _ in methods:
            reference = ours_stats if "Stats" in method else ours
            ratios = [t / r for t, r in zip(times[method], reference)]
            ms = float(np.median(times[method]))
            rows.append((name, n_objects, method, ms, m.size / ms / 1e3, np.median(ratios), min(ratios), max(ratios)))
    spread = args.rounds > 1
    if args.markdown:
        print(
            "| map | objects | method | ms | Mpx/s | vs unetseg |"
            + (" ratio range |\n" if spread else "\n")
            + "|---|---:|---|---:|---:|---:|"
            + ("---:|" if spread else "")
        )
        for r in rows:
            extra = f" {r[6]:.2f}-{r[7]:.2f}x |" if spread else ""
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.0f} | {r[5]:.2f}x |{extra}")
    else:
        for r in rows:
            extra = f" ({r[6]:.2f}-{r[7]:.2f}x)" if spread else ""
            print(f"{r[0]:>12} {r[1]:>6} {r[2]:<42} {r[3]:9.2f} ms {r[4]:8.0f} Mpx/s {r[5]:7.2f}x{extra}")


if __name__ == "__main__":
    main()
