"""Peak memory of segmenting one large image in memory, per pixel.

    python benchmarks/bench_memory.py [--sizes 4096 5000 8192] [--starter-limit 4096]

Each figure comes from a fresh process (peak RSS: VmHWM) holding a synthetic gray fluorescence
field of the size (bench_slide's): the bundled default model loaded and warmed up on a 256² image
first, and that peak subtracted, so "bytes / px" is what the image itself costs on top of a loaded
model. The rows:

- `segment_batch`: unetseg's default path (diameter "auto", automatic tiles, seeded labelling);
  the floor is the image (1 byte a pixel here) plus its int32 labels (4).
- `unetseg segment` (CLI): reading a TIFF of the field and writing every default output (labels,
  overlay, GeoJSON, tables); its baseline is the same command on a 256² image.
- starter pipeline: the eager PyTorch model on the whole image, sigmoid, numpy threshold,
  cv2.connectedComponentsWithStats (where it fits: --starter-limit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_slide import field, peak_rss
from common import cpu_name


def child(mode: str, size: int) -> None:
    """Runs in a fresh process: one large image through `mode`; prints the peaks as JSON."""
    import torch

    image = field(size)
    if mode == "segment_batch":
        import unetseg

        runner = unetseg.Runner()
        runner.segment([field(256)])
        base = peak_rss()
        t0 = time.perf_counter()
        seg = runner.segment([image])[0]
        count = seg.count
    else:  # the starter pipeline
        from bench_segment import checkpoint_like_default
        from bench_slide import starter

        torch.set_grad_enabled(False)
        _, eager = checkpoint_like_default()
        starter(eager, field(256))
        base = peak_rss()
        t0 = time.perf_counter()
        count = starter(eager, image)
    print(json.dumps({"peak": peak_rss(), "base": base, "wall": time.perf_counter() - t0, "count": count}))


def measure(mode: str, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(size)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli_peak(size: int, folder: Path) -> tuple[int, float]:
    """Peak RSS of `unetseg segment` on a TIFF of the field (a fresh process), and its wall time."""
    import tifffile

    path = folder / f"field{size}.tif"
    tifffile.imwrite(path, field(size))
    script = (
        "import resource, sys; from unetseg.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(code)"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script, "segment", str(path), "-o", str(folder / f"out{size}")],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[4096, 5000, 8192])
    p.add_argument("--starter-limit", type=int, default=4096, help="largest image run by the starter pipeline")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(f"\n## Peak memory of one large image ({cpu_name()})\n")
    print("| image | path | wall s | nuclei | peak RSS GiB | above the loaded model GiB | bytes / px | vs starter |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cli_base, _ = cli_peak(256, Path(tmp))
        for size in args.sizes:
            px = size * size
            rows = {"segment_batch": measure("segment_batch", size)}
            if size <= args.starter_limit:
                rows["starter pipeline"] = measure("starter", size)
            peak, wall = cli_peak(size, Path(tmp))
            rows["unetseg segment (CLI)"] = {"peak": peak, "base": cli_base, "wall": wall, "count": None}
            starter = rows.get("starter pipeline")
            for name, r in rows.items():
                above = r["peak"] - r["base"]
                ratio = (
                    f"{(starter['peak'] - starter['base']) / above:.1f}x less" if starter and r is not starter else ""
                )
                count = r["count"] if r["count"] is not None else ""
                print(
                    f"| {size}² | {name} | {r['wall']:.1f} | {count} | {r['peak'] / 2**30:.2f} | "
                    f"{above / 2**30:.2f} | {above / px:.1f} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
