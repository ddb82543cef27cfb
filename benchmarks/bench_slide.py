"""Large slide tiles and streamed slides: throughput, peak memory and where the time goes.

    python benchmarks/bench_slide.py [--tiles 2048 4096 8192] [--slides 8192 16384 32768] [--workdir DIR]
        [--diameter PX]

Tiles (in memory, the bundled default model, seeded labelling): unetseg tiled (tiles of 1024 plus
the model's halo, stitched, labelled whole) against unetseg untiled on the same pixels and against
the starter-project pipeline (the whole tile through the eager PyTorch model, sigmoid, numpy
threshold, cv2.connectedComponentsWithStats), where those fit in memory. "labelling" is the time of
the fused op the runner ends with (the model's labelling and defaults), run on the runner's own
stitched probability map, over the tiled segment time. (It was once segment time minus a separate
predict run: two 90 s runs on a shared VM drift apart by more than the op takes.)

Slides (streamed from a tiled OME-TIFF on disk by `segment_slide`, default blocks of 1024 rows x
4096 columns, tiles 1024; written once into --workdir from a synthetic 2048^2 fluorescence field):
Mpx/s, peak RSS of a fresh process and its ratio to the first (smallest) slide's (flat memory: 1x),
and the shares of reading, network, labelling + stitching and writing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_name


def field(size: int) -> np.ndarray:
    """A synthetic fluorescence field of side `size`: a 2048^2 synthetic image, tiled."""
    from unetseg.data import synthetic_nuclei

    base = synthetic_nuclei((2048, 2048), seed=7).image
    reps = -(-size // 2048)
    return np.tile(base, (reps, reps))[:size, :size]


def starter(model, image: np.ndarray) -> int:
    import cv2
    import torch
    from bench_segment import normalised_batch

    x = torch.from_numpy(normalised_batch([image], 3))
    with torch.no_grad():
        prob = torch.sigmoid(model(x))[0, 0].numpy()
    return cv2.connectedComponentsWithStats((prob > 0.5).astype(np.uint8), connectivity=8)[0] - 1


def bench_tiles(sizes: list[int], untiled_limit: int) -> None:
    import torch
    from bench_segment import checkpoint_like_default

    import unetseg

    runner = unetseg.Runner(device="cpu")
    _, eager = checkpoint_like_default()
    runner.segment([field(512)], tile_size=256)  # warm-up
    print(f"\n## Large tiles (default model, seeded labelling; {cpu_name()}, {torch_threads()} threads)\n")
    print("| tile | tiled s | tiled Mpx/s | untiled s | tiled / untiled throughput | starter s (ratio) | labelling |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        image = field(size)
        mpx = size * size / 1e6
        t0 = time.perf_counter()
        seg = runner.segment([image], tile_size=1024)[0]
        tiled = time.perf_counter() - t0
        prob = torch.from_numpy(runner.predict([image], tile_size=1024)[0])
        t0 = time.perf_counter()
        label_like_runner(runner, prob)
        labelling = time.perf_counter() - t0
        untiled = starter_s = None
        if size <= untiled_limit:
            t0 = time.perf_counter()
            whole = runner.segment([image], tile_size=0)[0]
            untiled = time.perf_counter() - t0
            assert whole.count == seg.count, (whole.count, seg.count)
            t0 = time.perf_counter()
            starter(eager, image)
            starter_s = time.perf_counter() - t0
        share = labelling / tiled
        fmt = lambda v: f"{v:.1f}" if v is not None else "does not fit"  # noqa: E731
        ratio = f"{untiled / tiled:.2f}x" if untiled else "-"
        st = f"{starter_s:.1f} ({starter_s / tiled:.2f}x)" if starter_s else "does not fit"
        print(
            f"| {size}² | {tiled:.1f} | {mpx / tiled:.2f} | {fmt(untiled)} | {ratio} | {st} | {share:.1%} |", flush=True
        )


def label_like_runner(runner, prob):
    """The fused op the runner ends with, on its own probability map, with the model's defaults."""
    import unetseg

    o = runner.resolve()
    if o["labelling"] == "seeded":
        return unetseg.seeded_label_stats(prob[:2], o["threshold"], o["boundary_threshold"], 8, o["min_area"])
    return unetseg.label_stats(prob[0], o["threshold"], 8, o["min_area"])


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_slide(path: Path, size: int) -> None:
    import tifffile

    base = field(2048)

    def tiles():
        for r in range(0, size, 512):
            for c in range(0, size, 512):
                yield base[r % 2048 : r % 2048 + 512, c % 2048 : c % 2048 + 512]

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size),
        dtype=np.uint8,
        tile=(512, 512),
        bigtiff=True,
        ome=True,
        compression="zlib",
        metadata={"axes": "YX"},
    )


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, the high-water mark of its own address
    space. (getrusage's ru_maxrss survives exec, so a child forked from a parent that held a large
    tile would report the parent's peak.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(slide: str, output: str, band_height: int, block_width: int, diameter: str) -> None:
    """Runs in a fresh process: segment_slide, then its peak RSS."""
    import shutil

    import unetseg

    shutil.rmtree(output, ignore_errors=True)  # a fresh run, never a resumed one
    t0 = time.perf_counter()
    result = unetseg.segment_slide(
        slide,
        output,
        progress=False,
        band_height=band_height,
        block_width=block_width,
        diameter=diameter if diameter == "auto" else float(diameter),
    )
    wall = time.perf_counter() - t0
    rss = peak_rss()
    print(json.dumps({"wall": wall, "seconds": result.seconds, "count": result.count, "rss": rss}))


def bench_slides(sizes: list[int], workdir: Path, band_height: int, block_width: int, diameter: str) -> None:
    print(
        f"\n## Streamed slides (segment_slide, blocks {band_height} x {block_width}, tiles 1024, diameter "
        f"{diameter}; {cpu_name()})\n"
    )
    print(
        "| slide | wall s | Mpx/s | nuclei | peak RSS | peak / first slide's | read | network | labelling + stitching "
        "| writing |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first = None
    for size in sizes:
        slide = workdir / f"slide_{size}.ome.tif"
        if not slide.exists():
            write_slide(slide, size)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(slide),
                str(workdir / f"out_{size}"),
                "--band-height",
                str(band_height),
                "--block-width",
                str(block_width),
                "--diameter",
                diameter,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        s = r["seconds"]
        total = sum(s.values())
        share = lambda k: f"{s[k] / total:.1%}"  # noqa: E731
        first = first or r["rss"]
        print(
            f"| {size}² | {r['wall']:.0f} | {size * size / 1e6 / r['wall']:.2f} | {r['count']} | "
            f"{r['rss'] / 2**30:.2f} GiB | {r['rss'] / first:.2f}x | {share('read')} | {share('network')} | "
            f"{share('labelling')} | "
            f"{(s['write'] + s['normalisation']) / total:.1%} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", type=int, nargs="*", default=[2048, 4096, 8192])
    p.add_argument("--untiled-limit", type=int, default=4096, help="largest tile run untiled / by the starter")
    p.add_argument("--slides", type=int, nargs="*", default=[8192, 16384, 32768])
    p.add_argument("--workdir", type=Path, help="where slides and outputs go (default: a temporary folder)")
    p.add_argument("--band-height", type=int, default=1024, help="segment_slide's rows per band (default 1024)")
    p.add_argument("--block-width", type=int, default=4096, help="segment_slide's columns per block (default 4096)")
    p.add_argument(
        "--diameter",
        default="auto",
        help="segment_slide's nucleus diameter in pixels, or auto (default); another than the model's "
        "canonical one runs the network on the slide resized and labels on the slide's grid",
    )
    p.add_argument("--child", nargs=2, metavar=("SLIDE", "OUTPUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.band_height, args.block_width, args.diameter)
        return
    if args.tiles:
        bench_tiles(args.tiles, args.untiled_limit)
    if args.slides:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            bench_slides(args.slides, args.workdir, args.band_height, args.block_width, args.diameter)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench_slides(args.slides, Path(tmp), args.band_height, args.block_width, args.diameter)


if __name__ == "__main__":
    main()
