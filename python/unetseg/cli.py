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
    import numpy as np

    from .data import read_image

    if path is None:
        path = resources.files("unetseg").joinpath("assets", BUNDLED_MAP)
    if path.suffix == ".npy":
        image = np.load(path)
    else:
        try:
            image = read_image(path)
        except ValueError as e:
            raise SystemExit(f"unetseg label: {e}, or a .npy array") from None
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


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from .train import TrainConfig, train

    options = json.loads(args.model_options) if args.model_options else {"base_width": 16, "depth": 4, "batch_norm": True}
    config = TrainConfig(
        data=str(args.data), output=str(args.output), architecture=args.architecture, model_options=options,
        in_channels=args.in_channels, out_channels=args.out_channels, crop=args.crop, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, patience=args.patience, val_fraction=args.val_fraction, seed=args.seed,
        workers=args.workers, device=args.device, imagenet_weights=args.imagenet_weights, resume=args.resume,
        samples_per_epoch=args.samples_per_epoch,
    )
    try:
        train(config)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg train: {e}") from None
    print(f"checkpoints, metrics.csv, training_curves.png and overlays/ are in {args.output}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_summary

    try:
        result = evaluate(args.checkpoint, args.data, args.output, split=args.split, threshold=args.threshold,
                          min_area=args.min_area, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg evaluate: {e}") from None
    print(format_summary(result))
    if args.output:
        print(f"per-image metrics: {args.output / 'per_image.csv'}, summary: {args.output / 'summary.json'}")
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

    p = sub.add_parser("train", help="train a U-Net on a nuclei dataset",
                       description="Train a U-Net (BCE + Dice, Adam, plateau LR schedule, early stopping). Writes best.pt, "
                       "last.pt, metrics.csv, training_curves.png and validation overlays to OUTPUT; --resume continues "
                       "an interrupted run from last.pt.")
    p.add_argument("data", type=Path, help="dataset: DSB 2018 folder, images/+labels/ or images/+masks/ folders, or .npz")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/unet"), help="run folder (default runs/unet)")
    p.add_argument("--architecture", choices=("unet", "mobilenetv2_unet"), default="unet")
    p.add_argument("--model-options", help='JSON constructor options, e.g. \'{"base_width": 32, "depth": 4}\'')
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=3, help="image channels the model takes")
    p.add_argument("--out-channels", type=int, choices=(1, 2), default=1, help="1: nucleus; 2: nucleus + boundary")
    p.add_argument("--crop", type=int, default=256, help="training crop size (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--samples-per-epoch", type=int, help="random crops per epoch (default: one per training image)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, default=8, help="early stopping patience in epochs")
    p.add_argument("--val-fraction", type=float, default=0.15, help="validation images, stratified by kind")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, crops and initialisation")
    p.add_argument("--workers", type=int, default=2, help="data loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--imagenet-weights", help="torchvision mobilenet_v2 ImageNet weights file (mobilenetv2_unet)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on a dataset (DSB score, AP, AJI, PQ, Dice...)",
                       description="Segment the images of DATA with CHECKPOINT and score them: DSB 2018 score, AP at "
                       "IoU 0.5..0.95, AJI, PQ, Dice, IoU, pixel accuracy, count error; overall and per image kind.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("-o", "--output", type=Path, help="write per_image.csv and summary.json here")
    p.add_argument("--split", choices=("val", "all"), default="val", help="the checkpoint's validation images, or all")
    p.add_argument("-t", "--threshold", type=float, help="foreground threshold (default: the checkpoint's)")
    p.add_argument("--min-area", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
