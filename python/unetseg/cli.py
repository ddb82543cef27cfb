"""The ``unetseg`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

BUNDLED_MAP = "nuclei_probability.png"


def _read_probability_map(path: Path | None):
    """A probability map as float32 (H, W) in [0, 1]: 8/16-bit images are scaled by their maximum
    value, float images (TIFF, .npy) are taken as they are."""
    import cv2
    import numpy as np

    if path is None:
        data = resources.files("unetseg").joinpath("assets", BUNDLED_MAP).read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    elif path.suffix == ".npy":
        image = np.load(path)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"unetseg label: cannot read {path} as an image (PNG, TIFF, JPEG) or .npy array")
    if image.ndim != 2:
        raise SystemExit(f"unetseg label: expected a single-channel probability map, got shape {image.shape} from {path}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535
    return image.astype(np.float32)


def _cmd_label(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import unetseg

    scores = torch.from_numpy(_read_probability_map(args.map))
    source = args.map or f"the bundled map ({BUNDLED_MAP}, {scores.shape[1]}x{scores.shape[0]}, made by unetseg.data.synthetic_nuclei)"
    unetseg.label_stats(scores, args.threshold, args.connectivity, args.min_area)  # warm-up
    start = time.perf_counter()
    result = unetseg.label_stats(scores, args.threshold, args.connectivity, args.min_area)
    elapsed = time.perf_counter() - start
    stats = result.stats.numpy()
    area = stats[:, 0]
    print(f"labelled {source}")
    print(f"  threshold {args.threshold}, {args.connectivity}-connectivity, min_area {args.min_area}: "
          f"{int(result.counts[0])} objects in {elapsed * 1e3:.2f} ms ({scores.numel() / elapsed / 1e6:.0f} Mpx/s, "
          f"{torch.get_num_threads()} threads)")
    if len(area):
        print(f"  area: median {np.median(area):.0f} px, min {area.min():.0f}, max {area.max():.0f}; "
              f"foreground {area.sum() / scores.numel():.1%} of the image")
        print("  largest objects:")
        print("    label    area   centroid (row, col)   bbox [r0, c0, r1, c1)   mean score")
        for k in np.argsort(-area, kind="stable")[:5]:
            s = stats[k]
            bbox = f"[{s[1]:.0f}, {s[2]:.0f}, {s[3]:.0f}, {s[4]:.0f})"
            print(f"    {k + 1:5d} {s[0]:7.0f}   ({s[5]:7.1f}, {s[6]:7.1f})    {bbox:<24}{s[7]:.3f}")
    if args.output:
        from .io import write_labels

        write_labels(args.output, result.labels.numpy())
        print(f"  labels written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="Cell-nuclei segmentation with U-Nets: fused threshold + connected-components labelling, "
        "training, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "label",
        help="threshold and label a probability map (default: a bundled nuclei-like map)",
        description="Threshold a probability map and label its connected components with unetseg's fused op; "
        "prints what was found. Without MAP, labels a bundled 1024x1024 nuclei-like map.",
    )
    p.add_argument("map", nargs="?", type=Path, help="probability map: 8/16-bit PNG or TIFF (scaled to [0, 1]) or .npy")
    p.add_argument("-t", "--threshold", type=float, default=0.5, help="foreground is score > threshold (default 0.5)")
    p.add_argument("-c", "--connectivity", type=int, choices=(4, 8), default=8, help="pixel connectivity (default 8)")
    p.add_argument("--min-area", type=int, default=0, help="remove objects with fewer pixels (default 0)")
    p.add_argument("-o", "--output", type=Path, help="write the labels here (16-bit PNG, or TIFF for >65535 objects)")
    p.set_defaults(run=_cmd_label)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
