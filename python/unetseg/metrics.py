"""Segmentation metrics: semantic (Dice, IoU, pixel accuracy) and the instance metrics of the field
(DSB 2018 score, AP at IoU thresholds, aggregated Jaccard index, panoptic quality, count error).

Instance metrics take integer label images (0 background); predicted instances normally come from
:func:`unetseg.ops.label`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) of two masks; 1 when both are empty."""
    p, t = pred.astype(bool), true.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """|P∩T| / |P∪T| of two masks; 1 when both are empty."""
    p, t = pred.astype(bool), true.astype(bool)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def pixel_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    return float((pred.astype(bool) == true.astype(bool)).mean()) if pred.size else 1.0


@dataclass(frozen=True)
class Overlap:
    """Pairwise overlaps of true objects (rows) and predicted objects (columns)."""

    intersection: np.ndarray  # (T, P)
    true_area: np.ndarray  # (T,)
    pred_area: np.ndarray  # (P,)

    @property
    def iou(self) -> np.ndarray:
        union = self.true_area[:, None] + self.pred_area[None, :] - self.intersection
        return np.divide(self.intersection, union, out=np.zeros(union.shape), where=union > 0)


def overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Counts pixel overlaps of every (true, predicted) object pair in one pass (labels renumbered to
    1..K by order of their values)."""
    if true.shape != pred.shape:
        raise ValueError(f"true labels {true.shape} and predicted labels {pred.shape} differ in shape")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.reshape(-1), p.reshape(-1)
    t_has0 = (true == 0).any()
    p_has0 = (pred == 0).any()
    nt, np_ = t.max(initial=-1) + 1, p.max(initial=-1) + 1
    joint = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_) if nt and np_ else np.zeros((nt, np_), int)
    joint = joint[int(t_has0) :, int(p_has0) :]  # drop the background row and column
    true_area = np.bincount(t, minlength=nt)[int(t_has0) :]
    pred_area = np.bincount(p, minlength=np_)[int(p_has0) :]
    return Overlap(joint, true_area, pred_area)


def matches_at(iou_matrix: np.ndarray, threshold: float) -> int:
    """True positives at IoU > threshold. For threshold >= 0.5 each object overlaps at most one other
    by more than half, so the matching is one-to-one without any assignment step."""
    if threshold < 0.5:
        raise ValueError(f"unique matching needs an IoU threshold >= 0.5, got {threshold}")
    return int((iou_matrix > threshold).sum())


def dsb_score(true: np.ndarray, pred: np.ndarray) -> float:
    """The DSB 2018 score of one image: mean over IoU thresholds 0.50..0.95 of TP / (TP + FP + FN).
    1 when both images are empty."""
    o = overlap(true, pred)
    n_true, n_pred = len(o.true_area), len(o.pred_area)
    if n_true == 0 and n_pred == 0:
        return 1.0
    m = o.iou
    return float(np.mean([(tp := matches_at(m, t)) / (n_true + n_pred - tp) for t in DSB_THRESHOLDS]))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al., IEEE TMI 2017): each true object joins the predicted
    object of highest IoU; C = sum of their intersections, U = sum of their unions plus the area of
    predicted objects never chosen."""
    o = overlap(true, pred)
    if len(o.true_area) == 0:
        return 1.0 if len(o.pred_area) == 0 else 0.0
    if len(o.pred_area) == 0:
        return 0.0
    m = o.iou
    best = m.argmax(axis=1)
    inter = o.intersection[np.arange(len(best)), best]
    has = m[np.arange(len(best)), best] > 0
    c = inter[has].sum()
    u = (o.true_area + np.where(has, o.pred_area[best] - inter, 0)).sum()
    used = np.zeros(len(o.pred_area), bool)
    used[best[has]] = True
    u += o.pred_area[~used].sum()
    return float(c / u)


def panoptic_quality(true: np.ndarray, pred: np.ndarray) -> float:
    """PQ (Kirillov et al., CVPR 2019) for one class: sum of matched IoUs (IoU > 0.5) over
    TP + FP/2 + FN/2. 1 when both are empty."""
    o = overlap(true, pred)
    n_true, n_pred = len(o.true_area), len(o.pred_area)
    if n_true == 0 and n_pred == 0:
        return 1.0
    m = o.iou
    matched = m[m > 0.5]
    tp = len(matched)
    return float(matched.sum() / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_true - tp)))


def merged_and_missed(o: Overlap) -> tuple[int, int]:
    """How many true objects are merged (at least half of them lies in one predicted object that also
    holds at least half of another true object) and how many are missed (no predicted object holds
    half of them: not found, or split)."""
    if len(o.true_area) == 0:
        return 0, 0
    if len(o.pred_area) == 0:
        return 0, len(o.true_area)
    best = o.intersection.argmax(axis=1)
    held = 2 * o.intersection[np.arange(len(best)), best] >= o.true_area
    holds = np.bincount(best[held], minlength=len(o.pred_area))
    return int((held & (holds[best] >= 2)).sum()), int((~held).sum())


def image_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every per-image metric, plus the TP/FP/FN counts at each DSB threshold for pooled AP and the
    merged and missed true objects (:func:`merged_and_missed`)."""
    o = overlap(true, pred)
    m = o.iou
    n_true, n_pred = len(o.true_area), len(o.pred_area)
    merged, missed = merged_and_missed(o)
    row: dict[str, float] = {
        "dice": dice(pred > 0, true > 0),
        "iou": iou(pred > 0, true > 0),
        "pixel_accuracy": pixel_accuracy(pred > 0, true > 0),
        "dsb_score": dsb_score(true, pred),
        "aji": aji(true, pred),
        "pq": panoptic_quality(true, pred),
        "n_true": n_true,
        "n_pred": n_pred,
        "count_error": abs(n_pred - n_true),
        "merged": merged,
        "missed": missed,
    }
    for t in DSB_THRESHOLDS:
        tp = matches_at(m, t) if n_true and n_pred else 0
        row[f"tp@{t:.2f}"], row[f"fp@{t:.2f}"], row[f"fn@{t:.2f}"] = tp, n_pred - tp, n_true - tp
    return row


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of per-image metrics (DSB score as in the competition: the mean over images), AP at each
    threshold pooled over images (TP / (TP + FP + FN) of summed counts), mean absolute and relative
    count error, and the fractions of all true objects merged and missed (pooled)."""
    if not rows:
        raise ValueError("no images to summarise")
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "iou", "pixel_accuracy", "dsb_score", "aji", "pq")}
    for t in DSB_THRESHOLDS:
        tp, fp, fn = (sum(r[f"{x}@{t:.2f}"] for r in rows) for x in ("tp", "fp", "fn"))
        out[f"ap@{t:.2f}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    out["count_error"] = float(np.mean([r["count_error"] for r in rows]))
    out["relative_count_error"] = float(np.mean([r["count_error"] / max(r["n_true"], 1) for r in rows]))
    n_true = sum(r["n_true"] for r in rows)
    for k in ("merged", "missed"):
        out[k] = sum(r[k] for r in rows) / n_true if n_true else 0.0
    out["images"] = len(rows)
    return out
