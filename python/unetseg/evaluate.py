"""Evaluation of a model on a dataset: per-image CSV, summary overall and per image kind.

The model is a training checkpoint (scored in Python, as training validates) or a model file made by
``unetseg export``, the bundled default included (scored through the C++ runner, exactly as
``segment_batch`` and ``unetseg segment`` segment).
"""

from __future__ import annotations

import csv
import heapq
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import metrics
from ._C import min_area_at
from .data import Sample, read_datasets
from .data.readers import dataset_name
from .data.transforms import rescale
from .export import is_model_file
from .io import atomic_path, check_output_folder
from .ops import label_by, resolve_labelling
from .predict import checkpoint_factor

#: What an evaluation writes in its output folder.
OUTPUT_FILES = ("per_image.csv", "summary.json", "settings.json", "overlays")


def evaluate(
    model: str | os.PathLike | None,
    data: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    split: str = "val",
    threshold: float | None = None,
    min_area: int | None = None,
    labelling: str = "auto",
    boundary_threshold: float | None = None,
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    diameter: float | str | None = "auto",
    scale: float = 1.0,
    overlays: int = 8,
    skip_invalid: bool = False,
    split_of: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Segments the images of `data` and scores them against their labels: with split="val" (the
    default) only the model's validation images, with "dev" only its dev images (``unetseg train
    --dev-fraction``), with "all" every image.

    model: a training checkpoint (``best.pt``), a model file from ``unetseg export``, or None (or
        "default") for the bundled default model. A checkpoint's probabilities come from
        unetseg.predict.predict and its instances from the fused ops: unetseg.ops.label on the nucleus
        map ("plain") or unetseg.ops.seeded_label on nucleus + boundary ("seeded"). A model file is
        run by the C++ runner, whole images, as users get it.
    threshold, min_area, labelling, boundary_threshold: as :func:`unetseg.segment_batch`; None takes
        the model's defaults (for a checkpoint: its threshold, min_area 0, boundary_threshold 0.5);
        "auto" labelling is seeded for nucleus + boundary models, else plain.
    tta: probabilities averaged over each image's eight turns and mirrors (test-time augmentation).
    precision: the network's: "auto" (bfloat16 where the device computes it natively), "float32",
        "bfloat16" or (CUDA) "float16", as :class:`unetseg.Runner`
        (a checkpoint runs under torch.autocast then).
    diameter: for models with a canonical diameter: the images' nucleus diameter in pixels, or "auto":
        a model file estimates it per image as :func:`unetseg.segment_batch` does; a checkpoint takes
        each image's median labelled diameter (the scale training validates at).
    scale: every image and its labels are first resized by this factor (images bilinear, labels
        nearest): how the model copes with nuclei of another size than the data's.
    split_of: score the validation (or dev) images of this other checkpoint or model file instead of
        the model's own: two models compared on the same images.
    data: one dataset or several (as ``unetseg train`` takes them); skip_invalid: leave out image/label
        pairs of different sizes (with a warning) instead of stopping.

    Returns {"all": summary, "<kind>": summary, ..., "<dataset>": summary, "<dataset>:<kind>": summary,
    ...} (datasets when there are several, their kinds when a dataset has several); with `output`, also
    writes per_image.csv, summary.json and settings.json (how the images were segmented: the model,
    how it ran, the scale and post-processing, all resolved; :func:`setting_differences`) there
    (atomically), and in ``output/overlays`` pictures of the `overlays` images that scored worst (DSB
    score), worst first: predicted outlines in magenta, true ones in green.
    """
    from tqdm.auto import tqdm

    if split not in ("val", "dev", "all"):
        raise ValueError(f"split must be 'val', 'dev' or 'all', got {split!r}")
    if overlays < 0:
        raise ValueError(f"overlays is a number of pictures (>= 0), got {overlays}")
    if output is not None:
        check_output_folder(output)
    if not (np.isfinite(scale) and 0 < scale <= 8):
        raise ValueError(f"scale is a resize factor in (0, 8], got {scale}")
    if model is None or str(model) == "default":
        from .segment import default_model_path

        model = default_model_path()
    if not Path(model).is_file():
        raise FileNotFoundError(f"{str(model)!r}: no such checkpoint or model file")
    options = dict(
        threshold=threshold,
        min_area=min_area,
        labelling=labelling,
        boundary_threshold=boundary_threshold,
        device=device,
        tta=tta,
        precision=precision,
        diameter=diameter,
    )
    segment, splits, settings = (_model_file_segmenter if is_model_file(model) else _checkpoint_segmenter)(
        model, **options
    )
    if split_of is not None:  # another model's images: compare two models on the same split
        splits = _splits_of(split_of)
    samples = _read_as_named(data, skip_invalid, [n for names in (splits or {}).values() for n in names])
    if split != "all":
        what = {"val": "validation", "dev": "dev"}[split]
        if splits is None:
            raise ValueError(
                f"{str(model)!r} does not say which images it was validated on; use split='all'"
                if split == "val"
                else f"{str(model)!r} does not name its {what} images; use split='all'"
            )
        if not splits.get(split):
            raise ValueError(
                f"{str(model)!r} has no {what} images (train with --dev-fraction for dev images); "
                "use split='val' or 'all'"
            )
        samples = _named(samples, splits[split], f"the model's {what} images", data, "use split='all'")
    rows = []
    worst: list[tuple[float, int, np.ndarray]] = []  # a heap of the `overlays` lowest scores: (-score, i, labels)
    for i, s in enumerate(tqdm(samples, desc="evaluate", disable=not progress)):
        if scale != 1:
            image, labels = rescale(np.atleast_3d(s.image), s.labels, scale)
            s = Sample(s.name, image, labels, s.kind, s.dataset, s.group)
            samples[i] = s
        pred = segment(s)
        rows.append({"image": s.name, "dataset": s.dataset, "kind": s.kind, **metrics.image_metrics(s.labels, pred)})
        if output is not None and overlays > 0:
            heapq.heappush(worst, (-rows[-1]["dsb_score"], -i, pred))
            if len(worst) > overlays:
                heapq.heappop(worst)
    result = _summaries(rows)
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        _write_csv(output / "per_image.csv", rows)
        with atomic_path(output / "summary.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        settings = {"model": str(model), "split": split, "scale": scale, **settings}
        with atomic_path(output / "settings.json") as tmp:
            tmp.write_text(json.dumps(settings, indent=2))
        if worst or (output / "overlays").exists():  # no stale pictures of an earlier evaluation left
            ranked = [(samples[-neg_i], pred) for _, neg_i, pred in sorted(worst, reverse=True)]
            _write_overlays(output / "overlays", ranked)
    return result


def _write_overlays(folder: Path, worst: list) -> None:
    """Pictures of (sample, predicted labels), named by rank so that they list worst first."""
    from .io import write_overlay

    folder.mkdir(exist_ok=True)
    written = set()
    for rank, (sample, pred) in enumerate(worst, start=1):
        path = folder / f"{rank:02d}_{sample.name[:40]}.png"
        write_overlay(path, sample.image, pred, sample.labels)
        written.add(path)
    for stale in set(folder.glob("[0-9][0-9]_*.png")) - written:  # an earlier evaluation's ranking
        stale.unlink()


Segmenter = Callable[[Sample], np.ndarray]


def _checkpoint_segmenter(
    path, *, threshold, min_area, labelling, boundary_threshold, device, tta, precision, diameter
) -> tuple[Segmenter, dict[str, list[str]], dict]:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .device import autocast as device_autocast
    from .device import resolve_device, resolve_precision
    from .predict import predict

    ckpt = load_checkpoint(path)
    network = model_from_checkpoint(ckpt)
    device = resolve_device(device)
    threshold = ckpt["threshold"] if threshold is None else threshold
    boundary_threshold = ckpt.get("boundary_threshold", 0.5) if boundary_threshold is None else boundary_threshold
    min_area = 0 if min_area is None else min_area
    labelling = resolve_labelling(labelling, ckpt["out_channels"])
    precision = resolve_precision(precision, device)
    autocast = device_autocast(device, precision)

    def segment(sample: Sample) -> np.ndarray:
        factor = checkpoint_factor(ckpt, sample.labels, diameter)
        with autocast:
            prob = torch.from_numpy(predict(network, sample.image, ckpt, device, tta=tta, factor=factor))
        return _label(prob, labelling, threshold, boundary_threshold, min_area_at(min_area, factor))

    settings = _settings(
        "the training checkpoint in Python",
        _diameter_setting(ckpt.get("diameter"), diameter, "each image's labelled median diameter"),
        precision,
        tta,
        labelling,
        threshold,
        boundary_threshold,
        min_area,
    )
    return segment, _checkpoint_splits(ckpt), settings


def _label(
    prob: torch.Tensor, labelling: str, threshold: float, boundary_threshold: float | None, min_area: int
) -> np.ndarray:
    """Instance labels of one image's probabilities (channels, H, W) by the fused ops."""
    return label_by(labelling, prob, threshold, boundary_threshold, 8, min_area).labels.numpy()


def tune(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    images: int = 80,
    seed: int = 1,
    thresholds: Sequence[float] = (0.5, 0.6, 0.7),
    boundary_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    min_areas: Sequence[int] = (20,),
    labelling: str = "auto",
    device: str = "auto",
    tta: bool = False,
    skip_invalid: bool = False,
    progress: bool = True,
) -> dict:
    """Chooses a checkpoint's post-processing without its validation images: scores every threshold x
    boundary_threshold x min_area on the checkpoint's dev images (``unetseg train --dev-fraction``:
    held out from training, so the choice sees how the model does on unseen images) or, for a
    checkpoint without them, on `images` images drawn (with `seed`) from the images of `data` that are
    not in its validation list, i.e. its training images. The network runs once per image (with `tta`,
    eight times); then only the fused ops run.

    Returns {"images": the names scored, "grid": one row per combination, the best DSB score first};
    a row holds threshold, boundary_threshold (None with plain labelling), min_area, dsb_score,
    ap@0.50, aji, count_error, and "dsb_score <kind>" and "ap@0.50 <kind>" for each image kind. With
    `output`, the grid is also written there as a CSV file (atomically). Export the best with
    ``unetseg export``.
    """
    from tqdm.auto import tqdm

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .device import resolve_device
    from .predict import predict

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r}: no such checkpoint")
    if is_model_file(checkpoint):
        raise ValueError(
            f"{str(checkpoint)!r} is an exported model file; tune its training checkpoint "
            "(runs/NAME/best.pt) and export again with the thresholds chosen"
        )
    if images < 1:
        raise ValueError(f"images is how many training images to score (>= 1), got {images}")
    for name, values, low, high in (
        ("thresholds", thresholds, 0, 1),
        ("boundary_thresholds", boundary_thresholds, 0, 1),
        ("min_areas", min_areas, 0, None),
    ):
        if not values or any(v < low or (high is not None and v > high) for v in values):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be a non-empty list of values {bounds}, got {list(values)}")
    ckpt = load_checkpoint(checkpoint)
    labelling = resolve_labelling(labelling, ckpt["out_channels"])
    dev = set(ckpt["split"].get("dev", []))
    if dev:
        samples = _named(
            _read_as_named(data, skip_invalid, dev),
            dev,
            "the checkpoint's dev images",
            data,
            "tune on the data it was trained on",
        )
    else:
        val = set(ckpt["split"]["val"])
        samples = [s for s in _read_as_named(data, skip_invalid, val) if s.name not in val]
        if not samples:
            raise ValueError(
                f"every image of {str(data)!r} is one of the checkpoint's validation images; tune on "
                "the data it was trained on"
            )
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in rng.choice(len(samples), min(images, len(samples)), replace=False)]
    network, device = model_from_checkpoint(ckpt), resolve_device(device)
    factors = [checkpoint_factor(ckpt, s.labels) for s in samples]
    probs = [
        torch.from_numpy(predict(network, s.image, ckpt, device, tta=tta, factor=f))
        for s, f in zip(tqdm(samples, desc="predict", disable=not progress), factors)
    ]
    grid = []
    configs = [
        (t, tb, a)
        for t in thresholds
        for tb in (boundary_thresholds if labelling == "seeded" else [None])
        for a in min_areas
    ]
    for t, tb, area in tqdm(configs, desc="score", disable=not progress):
        # min_area in pixels at the canonical diameter, as the runner counts it (runner.h, min_area_at)
        rows = [
            {
                "dataset": s.dataset,
                "kind": s.kind,
                **metrics.image_metrics(s.labels, _label(p, labelling, t, tb, min_area_at(area, f))),
            }
            for s, p, f in zip(samples, probs, factors)
        ]
        summaries = _summaries(rows)
        overall = summaries.pop("all")
        grid.append(
            {
                "threshold": t,
                "boundary_threshold": tb,
                "min_area": area,
                **{k: overall[k] for k in ("dsb_score", "ap@0.50", "aji", "count_error")},
                **{f"{k} {kind}": summary[k] for kind, summary in summaries.items() for k in ("dsb_score", "ap@0.50")},
            }
        )
    grid.sort(key=lambda row: -row["dsb_score"])
    if output is not None:
        _write_csv(Path(output), grid)
    return {"images": [s.name for s in samples], "grid": grid}


def _model_file_segmenter(
    path, *, device, tta, precision, diameter, **options
) -> tuple[Segmenter, dict[str, list[str]] | None, dict]:
    from .segment import Runner

    runner = Runner(path, device=device, precision=precision)
    options = runner.resolve(**options)  # the model's defaults, checked before any image is read

    def segment(sample: Sample) -> np.ndarray:
        return runner.segment([sample.image], tta=tta, diameter=diameter, **options)[0].labels

    used = _diameter_setting(runner.diameter, diameter, "estimated per image")
    settings = _settings("the model file in the C++ runner", used, runner.precision, tta, **options)
    return segment, _metadata_splits(runner.metadata), settings


def _diameter_setting(canonical: float | None, diameter, auto: str) -> str | float:
    """settings.json's diameter: the one given, or `auto` (what "auto" does for this kind of model);
    images are not resized for models without a canonical diameter."""
    if not canonical:
        return "as it is (no canonical diameter)"
    return auto if diameter in (None, "auto") else float(diameter)


def _settings(run_by, diameter, precision, tta, labelling, threshold, boundary_threshold, min_area) -> dict:
    """How an evaluation segments its images, as settings.json records it."""
    return {
        "run by": run_by,
        "diameter": diameter,
        "precision": precision,
        "tta": tta,
        "labelling": labelling,
        "threshold": threshold,
        "boundary_threshold": boundary_threshold if labelling == "seeded" else None,
        "min_area": min_area,
    }


def read_settings(folder: str | os.PathLike) -> dict | None:
    """The settings.json an evaluation wrote in `folder`; None for a folder without one (a
    per_image.csv given alone, or an evaluation from before settings were recorded)."""
    path = Path(folder) / "settings.json"
    return json.loads(path.read_text()) if path.is_file() else None


def setting_differences(before: dict, after: dict) -> list[str]:
    """The settings two evaluations differ in besides their models, as "name (before / after)": where
    they differ, a comparison's change is not the models' alone (a checkpoint is scored at each image's
    labelled diameter, a model file at its estimate; other thresholds, precision or test-time
    augmentation)."""
    return [
        f"{name} ({before.get(name)} / {after.get(name)})"
        for name in dict.fromkeys([*before, *after])
        if name != "model" and before.get(name) != after.get(name)
    ]


def _splits_of(path: str | os.PathLike) -> dict[str, list[str]]:
    """The validation and dev image names a checkpoint or model file records."""
    from .checkpoint import load_checkpoint
    from .export import read_metadata

    if not is_model_file(path):
        return _checkpoint_splits(load_checkpoint(path))
    splits = _metadata_splits(read_metadata(path))
    if splits is None:
        raise ValueError(f"{str(path)!r} does not say which images it was validated on")
    return splits


def _checkpoint_splits(ckpt: dict) -> dict[str, list[str]]:
    return {"val": ckpt["split"]["val"], "dev": ckpt["split"].get("dev", [])}


def _metadata_splits(metadata: dict) -> dict[str, list[str]] | None:
    """A model file's validation and dev image names; None when it does not record them."""
    training = metadata.get("training_data") or {}
    if training.get("val_names") is None:
        return None
    return {"val": training["val_names"], "dev": training.get("dev_names", [])}


def _read_as_named(data, skip_invalid: bool, names) -> list:
    """The samples of `data`, named as the model names its images: a model trained on several
    datasets names them ``DATASET/NAME``, which one dataset read alone is not, so a single dataset
    whose name prefixes the model's names is read with that prefix (else its validation images
    would not be recognised: scored as unknown, or tuned on)."""
    samples = read_datasets(data, skip_invalid)
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if len(paths) == 1:
        prefix = dataset_name(paths[0]) + "/"
        if any(str(n).startswith(prefix) for n in names):
            for s in samples:
                s.name = prefix + s.name
                s.group = prefix + s.group if s.group else ""
    return samples


def _named(samples: list, names, what: str, data, fix: str) -> list:
    """The samples named in `names` of the datasets read, in dataset order: all of them, or a clear
    error (a score on some of a split's images is not that split's score). A model trained on several
    datasets names its images DATASET/NAME, and its split was drawn per dataset, so the datasets read
    bring their own share of it: a model trained on nine sets is scored on one of them."""
    names = set(names)
    if names and all("/" in n for n in names):
        read = {s.dataset for s in samples}
        names = {n for n in names if n.split("/", 1)[0] in read} or names
    picked = [s for s in samples if s.name in names]
    if len(picked) != len(names):
        found = "none" if not picked else f"only {len(picked)}"
        raise ValueError(f"{str(data)!r} holds {found} of {what} ({len(names)}); {fix}")
    return picked


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """{"all": rows, "<kind>": ..., "<dataset>": ..., "<dataset>:<kind>": ...} of per-image metric
    rows (each with its "dataset" and "kind"): datasets when there are several, a dataset's kinds
    when it has several."""
    groups = {"all": rows}
    for kind in sorted({r["kind"] for r in rows}):
        groups[kind] = [r for r in rows if r["kind"] == kind]
    datasets = sorted({r["dataset"] for r in rows})
    for dataset in datasets if len(datasets) > 1 else []:
        groups[dataset] = [r for r in rows if r["dataset"] == dataset]
        kinds = sorted({r["kind"] for r in groups[dataset]})
        for kind in kinds if len(kinds) > 1 else []:
            groups[f"{dataset}:{kind}"] = [r for r in groups[dataset] if r["kind"] == kind]
    return groups


def _summaries(rows: list[dict]) -> dict[str, dict[str, float]]:
    """:func:`unetseg.metrics.summarise` of each of :func:`_groups`."""
    return {name: metrics.summarise(group) for name, group in _groups(rows).items()}


COMPARED = ("dsb_score", "ap@0.50", "aji", "pq")
"""The scores `compare` reports: per-image means, and AP@0.5 pooled over images as `summarise` does."""
SURE_IMAGES = 10
"""`format_comparison` marks a change as beyond the choice of images only in groups this large."""


def read_per_image(path: str | os.PathLike) -> list[dict]:
    """The rows of an evaluation's per_image.csv (`path` the file or the folder ``evaluate -o``
    wrote), numbers as floats."""
    path = Path(path)
    csv_path = path / "per_image.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"no per-image scores at {csv_path}: give a folder written by `unetseg evaluate ... -o FOLDER` "
            "or its per_image.csv"
        )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ("image", "dataset", "kind", "dsb_score", "tp@0.50") if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{csv_path} is not an evaluation's per_image.csv (no rows, or no column {missing})")
    text = ("image", "dataset", "kind")
    return [{k: v if k in text else float(v) for k, v in r.items()} for r in rows]


def compare(
    before: list[dict], after: list[dict], resamples: int = 2000, seed: int = 0
) -> dict[str, tuple[int, dict[str, tuple[float, float, float, float]]]]:
    """Paired comparison of two evaluations of the same images (per-image rows, as
    :func:`read_per_image` gives): for each of :func:`_groups` (of the images both scored) its
    number of images and, for each of :data:`COMPARED`, (before, after, lower, upper): the two
    scores and a 95% bootstrap interval of after - before. Images are resampled with replacement
    and both runs are scored on the same draw, so what the images share cancels, and the interval
    says whether the change is larger than what another draw of images would give. Raises
    ValueError when the two share no image."""
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100 for a 95% interval, got {resamples}")
    by_name = {r["image"]: r for r in after}
    pairs = [(r, by_name[r["image"]]) for r in before if r["image"] in by_name]
    if not pairs:
        raise ValueError(
            f"the two evaluations share no image ({len(before)} and {len(after)} images): compare "
            "evaluations of the same data and split (evaluate --split-of OTHER scores another model's images)"
        )
    scores = {m: np.array([[_per_image(run, m) for run in pair] for pair in pairs]) for m in COMPARED}
    rng = np.random.default_rng(seed)
    indexed = [{**a, "index": i} for i, (a, _) in enumerate(pairs)]
    out = {}
    for name, rows in _groups(indexed).items():
        picks = np.array([r["index"] for r in rows])
        draws = picks[rng.integers(0, len(picks), (resamples, len(picks)))]
        by_metric = {}
        for m in COMPARED:
            (before_score, after_score), resampled = _score(scores[m], picks, m), _score(scores[m], draws, m)
            low, high = np.percentile(resampled[..., 1] - resampled[..., 0], [2.5, 97.5])
            by_metric[m] = (float(before_score), float(after_score), float(low), float(high))
        out[name] = (len(picks), by_metric)
    return out


def _per_image(row: dict, metric: str):
    """What one image contributes to `metric`: its score, or for AP its TP, FP and FN counts (AP is
    pooled over the images drawn)."""
    if metric.startswith("ap@"):
        return [row[f"{x}@{metric[3:]}"] for x in ("tp", "fp", "fn")]
    return row[metric]


def _score(values: np.ndarray, picks: np.ndarray, metric: str) -> np.ndarray:
    """Both runs' `metric` over the images `picks` (its last axis; any leading axes are separate
    draws): the mean of per-image scores, or for AP the pooled TP / (TP + FP + FN) (1 with no
    objects at all, as :func:`unetseg.metrics.summarise`)."""
    if not metric.startswith("ap@"):
        return values[picks].mean(axis=-2)
    tp, fp, fn = np.moveaxis(values[picks].sum(axis=-3), -1, 0)
    total = tp + fp + fn
    return np.where(total > 0, tp / np.maximum(total, 1), 1.0)


def format_comparison(result: dict, before: str, after: str) -> str:
    """A markdown table of :func:`compare`: one row per group and score; `*` where the interval
    leaves out 0 in a group of at least :data:`SURE_IMAGES` images (a bootstrap over a handful of
    images says little)."""
    lines = [
        f"before: {before}; after: {after}; change: after - before, with its 95% bootstrap interval over "
        f"images (* where it leaves out 0, in groups of {SURE_IMAGES} images or more)",
        "",
        "| group | images | score | before | after | change | 95% interval |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for group, (images, by_metric) in result.items():
        for m, (b, a, low, high) in by_metric.items():
            sure = " *" if images >= SURE_IMAGES and (low > 0 or high < 0) else ""
            lines.append(
                f"| {group} | {images} | {m} | {b:.3f} | {a:.3f} | {a - b:+.3f}{sure} | [{low:+.3f}, {high:+.3f}] |"
            )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts (their keys the header) as a CSV file, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_summary(result: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per group (all, then each kind)."""
    cols = ["images", "dsb_score", "ap@0.50", "ap@0.75", "ap@0.90", "aji", "pq", "dice", "iou", "count_error"]
    cols += ["merged", "missed"]
    lines = ["| group | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for group, s in result.items():
        cells = [f"{int(s[c])}" if c == "images" else f"{s[c]:.3f}" for c in cols]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
