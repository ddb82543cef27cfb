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
        raise SystemExit(
            f"unetseg label: expected a single-channel probability map, got shape {image.shape} from {path}"
        )
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535
    return image.astype(np.float32)


def _refuse_to_replace(paths: list[Path], overwrite: bool) -> None:
    """Checked before any work: a ValueError naming the existing `paths` (what the command would
    write over), unless --overwrite asks for them to be replaced."""
    found = [p for p in paths if p.exists()]
    if not found or overwrite:
        return
    shown = ", ".join(repr(str(p)) for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    one = len(found) == 1
    raise ValueError(
        f"{shown} already exist{'s' if one else ''} (an earlier run's?); give another -o, or --overwrite to "
        f"replace {'it' if one else 'them'}"
    )


def _cmd_label(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import unetseg

    try:
        _refuse_to_replace([args.output] if args.output else [], args.overwrite)
    except ValueError as e:
        raise SystemExit(f"unetseg label: {e}") from None
    scores = torch.from_numpy(_read_probability_map(args.map))
    source = (
        args.map
        or f"the bundled map ({BUNDLED_MAP}, {scores.shape[1]}x{scores.shape[0]}, "
        "made by unetseg.data.synthetic_nuclei)"
    )
    unetseg.label_stats(scores, args.threshold, args.connectivity, args.min_area)  # warm-up
    start = time.perf_counter()
    result = unetseg.label_stats(scores, args.threshold, args.connectivity, args.min_area)
    elapsed = time.perf_counter() - start
    stats = result.stats.numpy()
    area = stats[:, 0]
    print(f"labelled {source}")
    print(
        f"  threshold {args.threshold}, {args.connectivity}-connectivity, min_area {args.min_area}: "
        f"{int(result.counts[0])} objects in {elapsed * 1e3:.2f} ms ({scores.numel() / elapsed / 1e6:.0f} Mpx/s, "
        f"{torch.get_num_threads()} threads)"
    )
    if len(area):
        print(
            f"  area: median {np.median(area):.0f} px, min {area.min():.0f}, max {area.max():.0f}; "
            f"foreground {area.sum() / scores.numel():.1%} of the image"
        )
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

    def parse(text: str | None, flag: str, default: dict) -> dict:
        try:
            value = json.loads(text) if text else default
        except json.JSONDecodeError as e:
            raise SystemExit(
                f"unetseg train: {flag} is not JSON ({e}): got {text!r}, expected a JSON object "
                "such as '{\"name\": 1}' (quote it for the shell)"
            ) from None
        if not isinstance(value, dict):
            raise SystemExit(f"unetseg train: {flag} must be a JSON object, got {text!r}")
        return value

    from .models import DEFAULT_OPTIONS

    options = parse(args.model_options, "--model-options", DEFAULT_OPTIONS[args.architecture])
    config = TrainConfig(
        data=[str(d) for d in args.data] if len(args.data) > 1 else str(args.data[0]),
        output=str(args.output),
        architecture=args.architecture,
        model_options=options,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        crop=args.crop,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
        crop_seed=args.crop_seed,
        workers=args.workers,
        device=args.device,
        imagenet_weights=args.imagenet_weights,
        resume=args.resume,
        samples_per_epoch=args.samples_per_epoch,
        contact_width=args.contact_width,
        rim_fraction=args.rim_fraction,
        init_weights=args.init_weights,
        separation_weight=args.separation_weight,
        separation_sigma=args.separation_sigma,
        small_object_area=args.small_object_area,
        dev_fraction=args.dev_fraction,
        augment_options=parse(args.augment_options, "--augment-options", {}),
        precision=args.precision,
        diameter=args.diameter,
        balanced=not args.no_balance,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        sampling_weights=parse(args.sampling_weights, "--sampling-weights", {}),
        ema=args.ema,
    )
    try:
        train(config)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg train: {e}") from None
    print(f"checkpoints, metrics.csv, training_curves.png and overlays/ are in {args.output}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import OUTPUT_FILES, evaluate, format_summary

    try:
        _refuse_to_replace([args.output / name for name in OUTPUT_FILES] if args.output else [], args.overwrite)
        result = evaluate(
            args.model,
            args.data,
            args.output,
            split=args.split,
            threshold=args.threshold,
            min_area=args.min_area,
            labelling=args.labelling,
            boundary_threshold=args.boundary_threshold,
            device=args.device,
            tta=args.tta,
            precision=args.precision,
            overlays=args.overlays,
            diameter=args.diameter,
            scale=args.scale,
            skip_invalid=args.skip_invalid,
            split_of=args.split_of,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg evaluate: {e}") from None
    print(format_summary(result))
    if args.output:
        print(f"per-image metrics: {args.output / 'per_image.csv'}, summary: {args.output / 'summary.json'}")
        if args.overlays > 0:
            print(f"the {args.overlays} worst images, outlined: {args.output / 'overlays'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate import compare, format_comparison, read_per_image, read_settings, setting_differences

    try:
        before, after = read_per_image(args.before), read_per_image(args.after)
        result = compare(before, after, resamples=args.resamples, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg compare: {e}") from None
    shared = result["all"][0]
    if shared < max(len(before), len(after)):
        print(f"compared on the {shared} images both scored ({len(before)} and {len(after)} in all)")
    settings = read_settings(args.before), read_settings(args.after)
    if None not in settings and (differences := setting_differences(*settings)):
        print(
            "note: the two evaluations segmented differently, so a change is not the models' alone: "
            + "; ".join(differences)
        )
    print(format_comparison(result, str(args.before), str(args.after)))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .evaluate import tune

    try:
        _refuse_to_replace([args.output] if args.output else [], args.overwrite)
        result = tune(
            args.checkpoint,
            args.data,
            args.output,
            images=args.images,
            seed=args.seed,
            thresholds=args.thresholds,
            boundary_thresholds=args.boundary_thresholds,
            min_areas=args.min_areas,
            labelling=args.labelling,
            device=args.device,
            tta=args.tta,
            skip_invalid=args.skip_invalid,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg tune: {e}") from None
    grid = result["grid"]
    print(f"{len(result['images'])} training images{' with TTA' if args.tta else ''}, best DSB score first:")
    print("| " + " | ".join(grid[0]) + " |")
    print("|" + "---:|" * len(grid[0]))
    for row in grid:
        print(
            "| "
            + " | ".join(
                "-"
                if v is None
                else f"{v:.4f}"
                if isinstance(v, float) and k not in ("threshold", "boundary_threshold")
                else str(v)
                for k, v in row.items()
            )
            + " |"
        )
    best = grid[0]
    options = f"--threshold {best['threshold']} --min-area {best['min_area']}"
    if best["boundary_threshold"] is not None:
        options += f" --boundary-threshold {best['boundary_threshold']}"
    print(f"best: {options}\nexport it: unetseg export {args.checkpoint} -o model.pt {options}")
    if args.output:
        print(f"the grid: {args.output}")
    return 0


def _export_bioimageio(args: argparse.Namespace, is_model_file) -> int:
    import tempfile

    from .bioimageio import export_bioimageio
    from .export import export
    from .segment import default_model_path

    source = default_model_path() if args.checkpoint == "default" else Path(args.checkpoint)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not is_model_file(source):  # a checkpoint: its model file first
                model = Path(tmp) / "model.pt"
                export(
                    source,
                    model,
                    threshold=args.threshold,
                    boundary_threshold=args.boundary_threshold,
                    min_area=args.min_area,
                )
                source = model
            export_bioimageio(source, args.output, maintainer=args.maintainer)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg export: {e}") from None
    print(
        f"wrote {args.output}: a bioimage.io model package (spec 0.5); check it with "
        f"`python -m bioimageio.spec validate {args.output}` or bioimageio.core"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export, is_model_file

    try:
        _refuse_to_replace([args.output], args.overwrite)
    except ValueError as e:
        raise SystemExit(f"unetseg export: {e}") from None
    if args.format == "bioimageio":
        return _export_bioimageio(args, is_model_file)
    try:
        metadata = export(
            args.checkpoint,
            args.output,
            threshold=args.threshold,
            boundary_threshold=args.boundary_threshold,
            min_area=args.min_area,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"unetseg export: {e}") from None
    print(
        f"wrote {args.output}: {metadata['architecture']}, {metadata['in_channels']} input channel(s), "
        f"outputs {', '.join(metadata['outputs'])}, threshold {metadata['threshold']}, "
        f"{metadata['labelling']} labelling, min_area {metadata['min_area']}"
    )
    return 0


def _sample_images() -> list[Path]:
    folder = Path(str(resources.files("unetseg").joinpath("assets", "samples")))
    return sorted(p for p in folder.iterdir() if p.is_file())


def _cmd_segment(args: argparse.Namespace) -> int:
    from .files import input_images, previous_outputs, segment_files
    from .geometry import checked_pixel_size
    from .io import check_output_folder
    from .segment import Runner, default_model_path

    if args.samples == bool(args.inputs):
        raise SystemExit("unetseg segment: give INPUTS (files, folders or globs), or --samples for the bundled samples")
    try:
        if args.plane is not None and args.plane < 0:
            raise ValueError(f"--plane is a 0-based plane index, got {args.plane}")
        if args.tile_size is not None and args.tile_size < 0:
            raise ValueError(f"--tile-size must be >= 0 pixels (0: never tile), got {args.tile_size}")
        checked_pixel_size(args.pixel_size, "--pixel-size")
        check_output_folder(args.output)
        _refuse_to_replace(previous_outputs(args.output), args.overwrite)
        paths = _sample_images() if args.samples else input_images(args.inputs)
        runner = Runner(args.model, device=args.device, batch_size=args.batch_size, precision=args.precision)
        runner.resolve(
            threshold=args.threshold,
            min_area=args.min_area,
            labelling=args.labelling,
            boundary_threshold=args.boundary_threshold,
        )  # bad options stop here, before any work
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"unetseg segment: {e}") from None
    if not paths:
        raise SystemExit(
            f"unetseg segment: {' '.join(map(str, args.inputs))} hold only unetseg's own outputs "
            "(*_labels.png, *_overlay.png); give the images"
        )
    model = args.model or f"the bundled default model ({default_model_path().name})"
    print(
        f"segmenting {len(paths)} image(s) with {model} on {runner.device} in {runner.precision}; "
        f"writing to {args.output}/"
    )
    options = dict(
        threshold=args.threshold,
        min_area=args.min_area,
        labelling=args.labelling,
        boundary_threshold=args.boundary_threshold,
        tile_size=args.tile_size,
        tta=args.tta,
        diameter=args.diameter,
        channel=args.channel,
    )
    result = segment_files(
        paths,
        args.output,
        runner,
        overlays=not args.no_overlays,
        geojson=not args.no_geojson,
        rois=args.rois,
        plane=args.plane,
        measurements=args.measure,
        pixel_size=args.pixel_size,
        **options,
    )
    if result.images:
        _print_segmented(result, args)
    else:
        print(f"no image could be segmented; nothing written to {args.output}/", file=sys.stderr)
    for path, why in result.failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    return 1 if result.failed or not result.images else 0


def _print_segmented(result, args: argparse.Namespace) -> None:
    """`unetseg segment`'s table of what it found and where it wrote it; images without nuclei, with
    what to try."""
    print(f"\n{'image':<32} {'size':>11} {'nuclei':>7} {'median area':>12} {'diameter':>9}")
    for s in result.images[:20]:
        print(
            f"{s.name[:32]:<32} {f'{s.shape[0]}x{s.shape[1]}':>11} {s.count:>7} {s.median_area:>10.0f} px "
            f"{s.diameter:>6.1f} px"
        )
    if len(result.images) > 20:
        print(f"... and {len(result.images) - 20} more (all in summary.csv)")
    print(
        f"{result.count} nuclei in {len(result.images)} image(s). Labels (*_labels.png, 16-bit; .tif above 65535 "
        f"objects){', overlays (*_overlay.png)' if not args.no_overlays else ''}"
        f"{', outlines for QuPath (*.geojson)' if not args.no_geojson else ''}"
        f"{', ImageJ ROI sets (*_rois.zip)' if args.rois else ''}, objects.csv and summary.csv are in {args.output}/"
    )
    empty = [s.name for s in result.images if s.count == 0]
    if empty:
        print(
            f"no nuclei found in {len(empty)} image(s) ({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}). "
            "A colour image of several fluorescence stains needs --channel N (its nuclear channel, e.g. 2 for DAPI in "
            "blue); nuclei far from the estimate need --diameter D (their size in pixels); a lower --threshold finds "
            "fainter ones.",
            file=sys.stderr,
        )


def _cmd_segment_slide(args: argparse.Namespace) -> int:
    from .segment import default_model_path
    from .slide import segment_slide

    model = args.model or f"the bundled default model ({default_model_path().name})"
    print(f"segmenting {args.slide} with {model}; writing to {args.output}/")
    try:
        result = segment_slide(
            args.slide,
            args.output,
            args.model,
            level=args.level,
            channel=args.channel,
            device=args.device,
            batch_size=args.batch_size,
            band_height=args.band_height,
            block_width=args.block_width,
            tile_size=args.tile_size,
            tta=args.tta,
            precision=args.precision,
            labelling=args.labelling,
            threshold=args.threshold,
            boundary_threshold=args.boundary_threshold,
            min_area=args.min_area,
            labels_format=args.labels_format,
            table_format=args.table_format,
            geojson=not args.no_geojson,
            rois=args.rois,
            measurements=args.measure,
            diameter=args.diameter,
            resume=args.resume,
            restart=args.restart,
            pixel_size=args.pixel_size,
            progress=True,
        )
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:
        raise SystemExit(f"unetseg segment-slide: {e}") from None
    h, w = result.shape
    total = sum(result.seconds.values())
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in result.seconds.items() if total > 0)
    print(
        f"{result.count} nuclei in {h}x{w} pixels ({h * w / 1e6:.0f} Mpx) in {total:.0f} s "
        f"({h * w / max(total, 1e-9) / 1e6:.2f} Mpx/s; {shares})"
    )
    if result.scale != 1.0:
        print(f"the network read the slide resized by {result.scale:.3g} (--diameter); the labels are on its own grid")
    outputs = [result.labels, result.table, result.geojson, result.rois, result.summary]
    outputs = [p for p in outputs if p]
    print("wrote " + ", ".join(str(p) for p in outputs))
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, e.g. 0.5,0.6,0.7; got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, e.g. 0,10,20; got {text!r}"
        ) from None


def _add_labelling_options(p: argparse.ArgumentParser) -> None:
    from .ops import LABELLING_CHOICES

    p.add_argument(
        "--labelling",
        choices=LABELLING_CHOICES,
        default="auto",
        help="plain: threshold + connected components; seeded: split touching nuclei with the boundary "
        "output (needs a nucleus + boundary model); auto (default): seeded for such models, else plain",
    )
    p.add_argument(
        "--boundary-threshold",
        type=float,
        help="seeded labelling: seeds are nucleus pixels whose boundary probability is below this "
        "(default: the model's)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the network's probabilities over the 8 turns and mirrors of "
        "each image (8x the network time; more accurate, see docs/model_card.md)",
    )


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="the network's precision. auto (default): bfloat16 on CPUs with native bfloat16 (AVX512-BF16, "
        "AMX) and on CUDA, else float32. bfloat16 runs it under autocast: on such CPUs about 2x faster than "
        "float32 with the same scores on the DSB 2018 validation split (docs/model_card.md); float16 "
        "needs a CUDA device",
    )


def _channel(text: str) -> int | str:
    """A channel index, or a name (looked up in each file's OME metadata)."""
    return int(text) if text.lstrip("-").isdigit() else text


def _diameter(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'auto', got {text!r}")
    return value


def _add_diameter_option(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument(
        "--diameter",
        type=_diameter,
        default="auto",
        metavar="PX|auto",
        help=help
        or "the images' median nucleus diameter in pixels, for models trained at a canonical diameter "
        "(the bundled one): images are resized to it for the network and labels come back at full "
        "resolution; auto (default): estimated per image",
    )


def _add_overwrite_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"{help}; without it, existing outputs are an error")


def _add_label_parser(sub) -> None:
    """The `label` command's options."""
    p = sub.add_parser(
        "label",
        allow_abbrev=False,
        help="threshold and label a probability map (default: a bundled nuclei-like map)",
        description="Threshold a probability map and label its connected components with unetseg's fused op; "
        "prints what was found. Without MAP, labels a bundled 1024x1024 nuclei-like map.",
    )
    p.add_argument("map", nargs="?", type=Path, help="probability map: 8/16-bit PNG or TIFF (scaled to [0, 1]) or .npy")
    p.add_argument("-t", "--threshold", type=float, default=0.5, help="foreground is score > threshold (default 0.5)")
    p.add_argument("-c", "--connectivity", type=int, choices=(4, 8), default=8, help="pixel connectivity (default 8)")
    p.add_argument("--min-area", type=int, default=0, help="remove objects with fewer pixels (default 0)")
    p.add_argument("-o", "--output", type=Path, help="write the labels here (16-bit PNG, or TIFF for >65535 objects)")
    _add_overwrite_option(p, "replace an existing OUTPUT file")
    p.set_defaults(run=_cmd_label)


def _add_segment_parser(sub) -> None:
    """The `segment` command's options."""
    p = sub.add_parser(
        "segment",
        allow_abbrev=False,
        help="segment nuclei in images (files, folders, globs) with a model",
        description="Segment nuclei with a U-Net model file and the fused threshold + labelling op. Writes, "
        "per image, NAME_labels.png (16-bit label image; TIFF above 65535 objects) and NAME_overlay.png "
        "(outlines in magenta), plus objects.csv (one row per nucleus: area, bbox, centroid, mean "
        "probability) and summary.csv (count per image). Images: PNG/TIFF/JPEG, 8 or 16 bit, "
        "gray/RGB/RGBA.",
    )
    p.add_argument("inputs", nargs="*", help="image files, folders (their images) or glob patterns")
    p.add_argument("--samples", action="store_true", help="segment the bundled sample images instead")
    p.add_argument("-o", "--output", type=Path, default=Path("unetseg-out"), help="output folder (default unetseg-out)")
    _add_overwrite_option(
        p,
        "write into an OUTPUT that holds an earlier run's results (its tables and the files of images of the "
        "same names are replaced)",
    )
    p.add_argument("-m", "--model", type=Path, help="model file from `unetseg export` (default: the bundled model)")
    p.add_argument("-t", "--threshold", type=float, help="nucleus probability threshold (default: the model's)")
    p.add_argument(
        "--min-area",
        type=int,
        help="remove objects with fewer pixels, counted at the model's canonical nucleus diameter (so it "
        "follows the image's scale: with nuclei twice that size, objects under 4x as many of the image's pixels "
        "go; default: the model's)",
    )
    _add_labelling_options(p)
    _add_device_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per network call (default 8)")
    p.add_argument(
        "--tile-size",
        type=int,
        help="tile images with a side longer than this (default: images over "
        "2048x2048 pixels are tiled by 1024; 0: never)",
    )
    p.add_argument("--no-overlays", action="store_true", help="do not write overlay pictures")
    p.add_argument("--no-geojson", action="store_true", help="do not write NAME.geojson (QuPath detections)")
    p.add_argument("--rois", action="store_true", help="also write NAME_rois.zip: an ImageJ ROI set for Fiji")
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="µm per pixel of every input (default: each TIFF's own, from OME, ImageJ or resolution tags): adds "
        "area_um2, centroid_x_um and centroid_y_um to objects.csv and pixel_size_um to summary.csv",
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="add to objects.csv each nucleus's mean, max and integrated intensity of every image channel and its "
        "shape (perimeter, equivalent diameter, axes, eccentricity, solidity, orientation)",
    )
    p.add_argument(
        "--plane",
        type=int,
        metavar="N",
        help="TIFF z/time stacks: segment only plane N (0-based, file order; default: every plane, each as "
        "NAME_z000, NAME_z001...)",
    )
    _add_diameter_option(p)
    p.add_argument(
        "--channel",
        type=_channel,
        metavar="N|NAME",
        help="the channel holding the nuclei of multi-channel images, by index (0-based) or by its OME name (e.g. "
        "DAPI), e.g. the DAPI plane of a fluorescence composite: segmented alone, as a gray image (default: images "
        "must be gray or RGB)",
    )
    p.set_defaults(run=_cmd_segment)


def _add_segment_slide_parser(sub) -> None:
    """The `segment-slide` command's options."""
    from .slide.pipeline import LABEL_FORMATS, TABLE_FORMATS

    p = sub.add_parser(
        "segment-slide",
        allow_abbrev=False,
        help="segment a whole slide in row bands (TIFF/OME-TIFF, zarr, .npy, OpenSlide)",
        description="Segment nuclei in a slide of any size with bounded memory: the slide is read and segmented in "
        "row bands (tiles with a halo across each band), labelled with a carry across band edges so that nuclei on "
        "a seam are single objects, and written to OUTPUT/: labels.ome.tif (tiled pyramidal BigTIFF, int32) or "
        "labels.ome.zarr (OME-Zarr), "
        "objects.csv or .parquet (one row per nucleus), objects.geojson (polygons QuPath imports as detections) and "
        "summary.json. An interrupted run goes on from its last finished band with --resume.",
    )
    p.add_argument(
        "slide",
        help="TIFF/BigTIFF/OME-TIFF (tiled, pyramidal), .zarr / OME-Zarr, .npy, or an OpenSlide "
        "format (.svs, .ndpi, .mrxs; needs `pip install openslide-python openslide-bin`)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("-m", "--model", type=Path, help="model file from `unetseg export` (default: the bundled model)")
    p.add_argument(
        "--level",
        type=int,
        default=0,
        help="pyramid level to segment (default 0, full resolution); tables and GeoJSON stay in level-0 pixels",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="µm per level-0 pixel (default: the file's, from OME, ImageJ or TIFF resolution tags, OME-Zarr or "
        "OpenSlide metadata): adds µm columns to the table and the physical size to the labels",
    )
    p.add_argument("--channel", type=int, help="nuclear channel of a multi-channel (fluorescence) slide")
    p.add_argument("-t", "--threshold", type=float, help="nucleus probability threshold (default: the model's)")
    p.add_argument(
        "--min-area",
        type=int,
        help="remove objects with fewer pixels, counted at the model's canonical diameter, the scale the labels "
        "are written at (default: the model's)",
    )
    _add_labelling_options(p)
    p.add_argument(
        "--band-height",
        type=int,
        default=1024,
        help="rows of the blocks the slide is read in (default "
        "1024; memory grows with band height x block width, not with the slide)",
    )
    p.add_argument("--block-width", type=int, default=4096, help="columns of those blocks (default 4096)")
    p.add_argument("--tile-size", type=int, default=1024, help="tile side within a block (default 1024)")
    p.add_argument(
        "--labels-format",
        choices=tuple(LABEL_FORMATS),
        default="ome-tiff",
        help="labels.ome.tif (pyramidal OME-TIFF, the default) or labels.ome.zarr (OME-Zarr NGFF 0.4 image-label "
        "with multiscales); both carry the pixel size and open in napari, QuPath and Fiji",
    )
    p.add_argument("--table-format", choices=tuple(TABLE_FORMATS), default="csv")
    _add_diameter_option(
        p,
        "the slide's median nucleus diameter in pixels (of the level read), for models trained at a canonical "
        "diameter (the bundled one): the network reads the slide resized by canonical / PX and its probabilities "
        "are resized back, so the labels come on the slide's own grid; auto (default): estimated on sample "
        "crops; within 25%% of the canonical diameter the slide is not resized",
    )
    p.add_argument("--no-geojson", action="store_true", help="do not write objects.geojson")
    p.add_argument(
        "--rois", action="store_true", help="also write objects_rois.zip: an ImageJ ROI set for Fiji (level-0 pixels)"
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="add to the objects table each nucleus's mean, max and integrated intensity of every channel read and "
        "its shape (perimeter, equivalent diameter, axes, eccentricity, solidity, orientation; lengths in level-0 "
        "pixels), measured window by window",
    )
    p.add_argument("--resume", action="store_true", help="go on with an interrupted run in OUTPUT")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard an interrupted run in OUTPUT, or replace a finished one's results, and start over",
    )
    _add_device_options(p)
    p.add_argument("--batch-size", type=int, default=4, help="tiles per network call (default 4)")
    p.set_defaults(run=_cmd_segment_slide)


def _add_export_parser(sub) -> None:
    """The `export` command's options."""
    p = sub.add_parser(
        "export",
        allow_abbrev=False,
        help="export a training checkpoint to a TorchScript model file",
        description="Write a frozen TorchScript model file that carries its metadata (unetseg.json: "
        "architecture, channels, normalisation, outputs, threshold, training data, validation metrics); "
        "the C++ runner, `unetseg segment` and unetseg.segment_batch load it.",
    )
    p.add_argument(
        "checkpoint",
        help="best.pt or last.pt from `unetseg train`; with --format bioimageio also a model file, or `default` "
        "(the bundled model)",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="file to write (model.pt; model.zip for bioimageio)"
    )
    _add_overwrite_option(p, "replace an existing OUTPUT file")
    p.add_argument(
        "--format",
        choices=("torchscript", "bioimageio"),
        default="torchscript",
        help="torchscript (default): unetseg's model file; bioimageio: a BioImage Model Zoo package (spec 0.5: "
        "rdf.yaml, TorchScript weights, preprocessing, test tensors, cover) that deepImageJ, ilastik, QuPath and "
        "bioimageio tools run, and `unetseg segment -m model.zip` too",
    )
    p.add_argument("--maintainer", metavar="GITHUB_USER", help="bioimageio: the package's maintainer on GitHub")
    p.add_argument(
        "-t", "--threshold", type=float, help="default nucleus threshold stored in the file (default: the checkpoint's)"
    )
    p.add_argument(
        "--boundary-threshold",
        type=float,
        default=0.5,
        help="default boundary threshold of seeded labelling (default 0.5)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=0,
        help="default: remove objects with fewer pixels, counted at the model's canonical diameter when it has "
        "one (an image whose nuclei are twice that diameter drops objects under 4x as many of its pixels; "
        "default 0)",
    )
    p.set_defaults(run=_cmd_export)


def _add_train_parser(sub) -> None:
    """The `train` command's options: one add_argument per TrainConfig field (over 30), kept as one
    flat list because it reads as the option reference, in the order --help shows."""
    p = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a U-Net on a nuclei dataset",
        description="Train a U-Net (BCE + Dice, Adam, plateau or cosine LR schedule, early stopping). Writes best.pt, "
        "last.pt, metrics.csv, training_curves.png and validation overlays to OUTPUT; --resume continues "
        "an interrupted run from last.pt.",
    )
    p.add_argument(
        "data",
        type=Path,
        nargs="+",
        help="one or more datasets: DSB 2018 folders, images/+labels/ or "
        "images/+masks/ folders, or .npz files (with several, image names become DATASET/NAME)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("runs/unet"), help="run folder (default runs/unet)")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="auto (default): bfloat16 autocast + channels_last where the CPU (AVX512-BF16, AMX) or GPU "
        "computes bfloat16 natively (2.6-3.4x faster on such CPUs, benchmarks/README.md), else float32; "
        "float16: CUDA only",
    )
    p.add_argument(
        "--diameter",
        type=float,
        metavar="PX",
        help="canonical nucleus diameter: every image is resized so that its nuclei's median diameter is "
        "PX pixels, and the model file records it so inference rescales images to it (default: no "
        "rescaling)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave out, with a warning, image/label pairs whose sizes differ (default: stop with an error)",
    )
    p.add_argument(
        "--no-balance",
        action="store_true",
        help="one crop of each training image in turn, instead of crops balanced by dataset and kind with "
        "large images drawn more often",
    )
    p.add_argument(
        "--sampling-weights",
        metavar="JSON",
        help='factors on the balanced shares, by dataset or "dataset:kind", e.g. \'{"tnbc": 0.5}\'',
    )
    from .models import MODELS

    p.add_argument(
        "--architecture",
        choices=sorted(MODELS),
        default="unet",
        help="the network (default unet: the classic U-Net; --model-options sets its width, depth...)",
    )
    p.add_argument("--model-options", help='JSON constructor options, e.g. \'{"base_width": 32, "depth": 4}\'')
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=3, help="image channels the model takes")
    p.add_argument("--out-channels", type=int, choices=(1, 2), default=1, help="1: nucleus; 2: nucleus + boundary")
    p.add_argument("--crop", type=int, default=256, help="training crop size (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--samples-per-epoch", type=int, help="random crops per epoch (default: one per training image)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument(
        "--lr-schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="plateau (default): halve the learning rate when the validation loss has not improved for 3 "
        "epochs; cosine: lower it from --lr to 0 along a half cosine over --epochs whatever the validation "
        "loss does (give a --patience as long as --epochs to run the whole schedule)",
    )
    p.add_argument("--patience", type=int, default=8, help="early stopping patience in epochs")
    p.add_argument("--val-fraction", type=float, default=0.15, help="validation images, stratified by kind")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, crops and initialisation")
    p.add_argument(
        "--crop-seed",
        type=int,
        help="seed of the crops, augmentations and batch order (default: --seed); trained on from a run "
        "with its --seed (to keep the split), give another to draw other crops than that run did",
    )
    p.add_argument("--workers", type=int, default=2, help="data loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--imagenet-weights", help="torchvision mobilenet_v2 ImageNet weights file (mobilenetv2_unet)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an OUTPUT that holds one (its checkpoints and metrics are replaced)",
    )
    p.add_argument(
        "--init-weights",
        metavar="CKPT|default",
        help="start from the weights of this checkpoint, or `default` for the bundled model's (fine-tuning; "
        "fresh optimizer and schedule; same architecture and options). Training on the checkpoint's own "
        "datasets, keep its --seed (0 for `default`) so that its validation images stay unseen; train warns "
        "when they would not",
    )
    p.add_argument(
        "--contact-width",
        type=int,
        default=0,
        help="2-channel models: the boundary target also covers nucleus pixels within this many pixels "
        "of another nucleus, so touching nuclei get a wider cut (default 0: inner boundaries only)",
    )
    p.add_argument(
        "--rim-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="2-channel models: the boundary target also covers each nucleus's rim, its pixels nearer its "
        "edge than this fraction of the largest such distance in it, so seeds are cores in proportion to "
        "the nucleus (e.g. 0.4; default 0: off)",
    )
    p.add_argument(
        "--separation-weight",
        type=float,
        default=0.0,
        metavar="W0",
        help="weight the loss where nuclei touch or nearly touch: Ronneberger's weight map, pixel weight "
        "1 + W0 * exp(-(d1 + d2)^2 / (2 sigma^2)) with d1, d2 the distances to the two nearest nuclei "
        "(the paper uses 10; default 0: off)",
    )
    p.add_argument(
        "--separation-sigma",
        type=float,
        default=5.0,
        metavar="SIGMA",
        help="its width in pixels (default 5, as in the paper)",
    )
    p.add_argument(
        "--small-object-area",
        type=float,
        default=0.0,
        metavar="A",
        help="weight each pixel of a nucleus smaller than A pixels by sqrt(A / its area) in the loss, so "
        "small nuclei, which the instance metrics count as much as big ones, are not cheap to miss "
        "(default 0: off)",
    )
    p.add_argument(
        "--augment-options",
        metavar="JSON",
        help="augmentation beyond the defaults (flips, turns, scale 0.7-1.4, brightness, contrast, gamma, "
        'noise, inversion), as JSON fields of unetseg.data.Augment: e.g. \'{"elastic": 4, "blur": 1.5, '
        '"channel_jitter": 0.1, "stain": 0.1}\' for an elastic deformation (pixels), Gaussian blur (sigma '
        "up to), per-channel gain/offset jitter and H&E stain jitter (colour images' haematoxylin, eosin "
        "and DAB amounts scaled and shifted by up to 0.1)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep an exponential moving average of the weights, updated after every step with this decay "
        "(e.g. 0.999: about the last 1000 steps); validation, best.pt and the exported model use the "
        "average, which is usually better than the last weights (default 0: off)",
    )
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of the training images (by kind, fixed by --seed) as dev images: "
        "not trained on, scored by `unetseg tune` to choose thresholds and compare runs while the "
        "validation images stay unseen (with --init-weights, only if the initial model did not train "
        "on them either; default 0: none)",
    )
    p.set_defaults(run=_cmd_train)


def _add_evaluate_parser(sub) -> None:
    """The `evaluate` command's options."""
    p = sub.add_parser(
        "evaluate",
        allow_abbrev=False,
        help="score a model on a labelled dataset (DSB score, AP, AJI, PQ, Dice...)",
        description="Segment the images of DATA with MODEL and score them against their labels: DSB "
        "2018 score, AP at IoU 0.5..0.95, AJI, PQ, Dice, IoU, pixel accuracy, count error, and the "
        "fractions of true nuclei merged with another (at least half of each in one predicted object) "
        "and missed (no predicted object holds half of it); overall and per image kind. MODEL is a "
        "training checkpoint (runs/NAME/best.pt), a model file from `unetseg export` (run by the C++ "
        "runner, as `unetseg segment` runs it), or `default` for the bundled model.",
    )
    p.add_argument("model", help="checkpoint, model file, or `default`")
    p.add_argument(
        "data",
        type=Path,
        nargs="+",
        help="labelled datasets: DSB 2018 folder, images/+labels/ or images/+masks/ folders, or .npz",
    )
    p.add_argument(
        "-o", "--output", type=Path, help="write per_image.csv, summary.json, settings.json and overlays/ here"
    )
    _add_overwrite_option(p, "replace an earlier evaluation in OUTPUT")
    p.add_argument(
        "--overlays",
        type=int,
        default=8,
        metavar="N",
        help="with -o: pictures of the N images that scored worst, in OUTPUT/overlays (predicted "
        "outlines magenta, true ones green; default 8, 0: none)",
    )
    p.add_argument(
        "--split",
        choices=("val", "dev", "all"),
        default="val",
        help="val (default): only the images the model was validated on, held out of its training; dev: "
        "only its dev images (train --dev-fraction), to compare runs without touching val; all",
    )
    p.add_argument("-t", "--threshold", type=float, help="nucleus probability threshold (default: the model's)")
    p.add_argument(
        "--min-area",
        type=int,
        help="remove objects with fewer pixels, counted at the model's canonical diameter (default: the model "
        "file's; 0 for checkpoints)",
    )
    _add_labelling_options(p)
    _add_device_options(p)
    _add_diameter_option(p)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="resize every image and its labels by F first (e.g. 0.5, 2, 3): scores on nuclei of another "
        "size than the data's, to check a model's diameter handling (default 1)",
    )
    p.add_argument("--skip-invalid", action="store_true", help="leave out image/label pairs of different sizes")
    p.add_argument(
        "--split-of",
        metavar="OTHER",
        help="score the validation (--split val) or dev images of OTHER, a checkpoint or model file, instead of "
        "MODEL's own: two models compared on the same images",
    )
    p.set_defaults(run=_cmd_evaluate)


def _add_compare_parser(sub) -> None:
    """The `compare` command's options."""
    p = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="compare two evaluations of the same images, with bootstrap intervals",
        description="Compare two `unetseg evaluate ... -o FOLDER` runs on the same images (two models, or "
        "a model before and after fine-tuning): DSB score, AP@0.5, AJI and PQ per group (all, each kind, "
        "each dataset), the change, and its 95%% bootstrap interval over images (images drawn with "
        "replacement, both runs scored on the same draw). A change whose interval leaves out 0 is marked "
        "*: it is larger than what another choice of images would give. When the two were segmented "
        "differently besides the model (a checkpoint at each image's labelled diameter against a model file at "
        "its estimate, other thresholds, precision or --tta; from their settings.json), it says how.",
    )
    p.add_argument("before", type=Path, help="an evaluation's output folder (or its per_image.csv)")
    p.add_argument("after", type=Path, help="the other evaluation, of the same images")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.set_defaults(run=_cmd_compare)


def _add_tune_parser(sub) -> None:
    """The `tune` command's options."""
    from .ops import LABELLING_CHOICES

    p = sub.add_parser(
        "tune",
        allow_abbrev=False,
        help="choose a checkpoint's thresholds and min_area on its dev (else training) images",
        description="Score every combination of nucleus threshold x boundary threshold x "
        "min_area (DSB score, AP@0.5, AJI, count error; DSB and AP@0.5 per image kind) on the "
        "checkpoint's dev images (`unetseg train --dev-fraction`) or, without them, on images of DATA "
        "drawn from those it was trained on; never its validation images. Print the grid best first "
        "with the `unetseg export` options of the best. The network runs once per image.",
    )
    p.add_argument("checkpoint", type=Path, help="training checkpoint (runs/NAME/best.pt)")
    p.add_argument("data", type=Path, nargs="+", help="the labelled dataset(s) it was trained on")
    p.add_argument("--skip-invalid", action="store_true", help="leave out image/label pairs of different sizes")
    p.add_argument("-o", "--output", type=Path, help="also write the grid to this CSV file")
    _add_overwrite_option(p, "replace an existing OUTPUT file")
    p.add_argument(
        "--images",
        type=int,
        default=80,
        help="training images to score when the checkpoint has no dev images (default 80)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the draw of images (default 1)")
    p.add_argument(
        "--thresholds",
        type=_floats,
        default=(0.5, 0.6, 0.7),
        metavar="T,T,...",
        help="nucleus thresholds to try (default 0.5,0.6,0.7)",
    )
    p.add_argument(
        "--boundary-thresholds",
        type=_floats,
        default=(0.3, 0.5, 0.7),
        metavar="B,B,...",
        help="seeded labelling: boundary thresholds to try (default 0.3,0.5,0.7)",
    )
    p.add_argument(
        "--min-areas",
        type=_ints,
        default=(20,),
        metavar="A,A,...",
        help="smallest object areas to try, in pixels at the model's canonical diameter as `export --min-area` "
        "stores them (default 20)",
    )
    p.add_argument(
        "--labelling",
        choices=LABELLING_CHOICES,
        default="auto",
        help="auto (default): seeded for nucleus + boundary checkpoints, else plain",
    )
    p.add_argument("--tta", action="store_true", help="score test-time augmented probabilities (8 turns and mirrors)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.set_defaults(run=_cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="unetseg",
        description="Cell-nuclei segmentation with U-Nets: segment images, train and evaluate models, export "
        "them to TorchScript, and label probability maps with the fused threshold + connected-components op.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_label_parser,
        _add_segment_parser,
        _add_segment_slide_parser,
        _add_export_parser,
        _add_train_parser,
        _add_evaluate_parser,
        _add_compare_parser,
        _add_tune_parser,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        # Outputs are written atomically: what was finished is kept, nothing is half-written.
        hint = {
            "train": "; continue with the same command and --resume",
            "segment-slide": "; continue with the same command and --resume",
        }.get(args.command, "")
        print(f"\nunetseg {args.command}: interrupted; finished outputs are kept{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
