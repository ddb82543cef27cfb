"""Evaluation of a checkpoint on a dataset: per-image CSV, summary overall and per image kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from . import metrics
from .data import read_dataset
from .io import atomic_path
from .ops import label, seeded_label
from .train import load_checkpoint, model_from_checkpoint, predict


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    output: str | Path | None = None,
    *,
    split: str = "val",
    threshold: float | None = None,
    min_area: int = 0,
    labelling: str = "auto",
    boundary_threshold: float | None = None,
    device: str = "cpu",
    tta: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Segments every image of `data` (only the checkpoint's validation images with split="val")
    and scores it. Instances come from the fused ops on the probabilities: unetseg.ops.label on the
    nucleus map ("plain"), or unetseg.ops.seeded_label on nucleus + boundary ("seeded"); "auto" is
    seeded for 2-channel checkpoints, as the runner does for their exported models. ``tta``:
    probabilities averaged over each image's eight turns and mirrors (test-time augmentation).

    Returns {"all": summary, "<kind>": summary, ...}; with `output`, also writes per_image.csv and
    summary.json there.
    """
    from tqdm.auto import tqdm

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    samples = read_dataset(data)
    if split == "val":
        wanted = set(ckpt["split"]["val"])
        samples = [s for s in samples if s.name in wanted]
        if not samples:
            raise ValueError(f"none of the checkpoint's validation images is in {data}; use split='all'")
    elif split != "all":
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    threshold = ckpt["threshold"] if threshold is None else threshold
    if boundary_threshold is None:
        boundary_threshold = ckpt.get("boundary_threshold", 0.5)
    if labelling == "auto":
        labelling = "seeded" if ckpt["out_channels"] >= 2 else "plain"
    if labelling not in ("plain", "seeded"):
        raise ValueError(f"labelling must be 'auto', 'plain' or 'seeded', got {labelling!r}")
    if labelling == "seeded" and ckpt["out_channels"] < 2:
        raise ValueError("seeded labelling needs a checkpoint with a boundary output (--out-channels 2)")
    rows = []
    for s in tqdm(samples, desc="evaluate", disable=not progress):
        prob = predict(model, s.image, ckpt, device, tta=tta)
        prob = torch.from_numpy(prob)
        if labelling == "seeded":
            pred = seeded_label(prob[:2], threshold, boundary_threshold, 8, min_area).labels.numpy()
        else:
            pred = label(prob[0], threshold, 8, min_area).labels.numpy()
        rows.append({"image": s.name, "kind": s.kind, **metrics.image_metrics(s.labels, pred)})
    result = {"all": metrics.summarise(rows)}
    for kind in sorted({r["kind"] for r in rows}):
        result[kind] = metrics.summarise([r for r in rows if r["kind"] == kind])
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(output / "per_image.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with atomic_path(output / "summary.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return result


def format_summary(result: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per group (all, then each kind)."""
    cols = ["images", "dsb_score", "ap@0.50", "ap@0.75", "ap@0.90", "aji", "pq", "dice", "iou", "count_error"]
    lines = ["| group | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for group, s in result.items():
        cells = [f"{int(s[c])}" if c == "images" else f"{s[c]:.3f}" for c in cols]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
