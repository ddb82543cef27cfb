"""The fused threshold + connected-components ops, typed.

Thin wrappers over ``torch.ops.unetseg.*`` (registered by the C++ op library); the same ops run in
TorchScript and in a pure C++ process. Label convention everywhere: 0 is background, objects are
numbered 1..K in raster (row-major) order of their first pixel, bit-identical to
``scipy.ndimage.label`` on ``scores > threshold`` (8-connectivity: a 3x3 structure of ones;
4-connectivity: the cross).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

#: Columns of :func:`label_stats`' table. The bbox is ``[min, max)`` like skimage's regionprops.
STATS_COLUMNS: tuple[str, ...] = (
    "area",
    "min_row",
    "min_col",
    "max_row",
    "max_col",
    "centroid_row",
    "centroid_col",
    "mean_score",
)

#: Columns of every object table users get (``ObjectTable.to_pandas()``, ``objects.csv`` of
#: ``unetseg segment``, slides and dask): the label, then the statistics above with the op's score
#: named for what the runner labels, the nucleus probability.
OBJECT_COLUMNS: tuple[str, ...] = ("label", *STATS_COLUMNS[:-1], "mean_probability")


class Labels(NamedTuple):
    labels: torch.Tensor
    """int32, the shape of ``scores``"""
    counts: torch.Tensor
    """int64 (N,): objects per image"""


class LabelStats(NamedTuple):
    labels: torch.Tensor
    """int32, the shape of ``scores``"""
    counts: torch.Tensor
    """int64 (N,): objects per image"""
    stats: torch.Tensor
    """float64 (counts.sum(), len(STATS_COLUMNS)): image 0's objects first, each in label order"""

    @property
    def offsets(self) -> torch.Tensor:
        """int64 (N + 1,): image ``i``'s objects are rows ``offsets[i]:offsets[i + 1]`` of stats."""
        return torch.nn.functional.pad(self.counts.cumsum(0), (1, 0))


def label(
    scores: torch.Tensor,
    threshold: float = 0.5,
    connectivity: int = 8,
    min_area: int = 0,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Labels:
    """Threshold and label connected components in one pass.

    Args:
        scores (Tensor[H, W], Tensor[N, H, W] or Tensor[N, 1, H, W]): float32/float16/bfloat16
            probabilities or bool/uint8 masks, any strides. Foreground is ``scores > threshold``,
            compared as torch compares a tensor with a Python float (floating scores in their own
            dtype, so NaN is background); ``threshold=0`` on a mask means nonzero.
        threshold: the foreground threshold.
        connectivity: 8 (edge and corner neighbours) or 4 (edge neighbours).
        min_area: objects with fewer pixels are removed and the others renumbered.
        out: optional ``(labels, counts)`` tensors to write into (int32 of the shape of scores and
            int64 (N,), any strides), so that repeated calls allocate no output.

    Returns:
        ``Labels(labels, counts)``: int32 labels shaped like ``scores`` and int64 counts, one per
        image (``(1,)`` for a 2-D input).
    """
    if out is None:
        return Labels(*torch.ops.unetseg.label(scores, threshold, connectivity, min_area))
    labels, counts = out
    torch.ops.unetseg.label_out(scores, threshold, connectivity, min_area, labels, counts)
    return Labels(labels, counts)


def label_stats(scores: torch.Tensor, threshold: float = 0.5, connectivity: int = 8, min_area: int = 0) -> LabelStats:
    """:func:`label` plus per-object statistics for the whole batch, without a Python loop.

    Returns:
        ``LabelStats(labels, counts, stats)`` where ``stats`` is float64
        ``(counts.sum(), len(STATS_COLUMNS))``: area, bbox (min_row, min_col, max_row, max_col;
        max exclusive), centroid (row, col) and mean score (of ``scores`` over the object), equal
        to ``skimage.measure.regionprops`` on the same labels. Image ``i``'s objects are the rows
        ``offsets[i]:offsets[i + 1]``.
    """
    return LabelStats(*torch.ops.unetseg.label_stats(scores, threshold, connectivity, min_area))


def seeded_label(
    scores: torch.Tensor,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    connectivity: int = 8,
    min_area: int = 0,
) -> Labels:
    """Seeded labelling of nucleus + boundary scores: touching nuclei stay apart.

    Foreground is ``nucleus > threshold``. Seeds are the foreground pixels with ``boundary <
    boundary_threshold``, labelled as :func:`label` labels them. Every foreground pixel connected to
    a seed then joins the seed nearest to it along the foreground: rounds of dilation inside the
    foreground where each pixel takes the label of its labelled neighbour with the highest nucleus
    score (then the smaller label). Foreground components without a seed are objects of their own.
    Objects smaller than ``min_area`` pixels are removed and all are numbered 1..K in raster order
    of their first pixel, as :func:`label` numbers them.

    Args:
        scores (Tensor[2, H, W] or Tensor[N, 2, H, W]): channel 0 the nucleus score, channel 1 the
            boundary score; dtypes and strides as :func:`label`.

    Returns:
        ``Labels(labels, counts)``: int32 labels shaped like ``scores`` without the channel
        dimension, and int64 counts, one per image.
    """
    return Labels(*torch.ops.unetseg.seeded_label(scores, threshold, boundary_threshold, connectivity, min_area))


def seeded_label_stats(
    scores: torch.Tensor,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    connectivity: int = 8,
    min_area: int = 0,
) -> LabelStats:
    """:func:`seeded_label` plus :func:`label_stats`' per-object table (``mean_score`` is the mean
    nucleus score)."""
    return LabelStats(
        *torch.ops.unetseg.seeded_label_stats(scores, threshold, boundary_threshold, connectivity, min_area)
    )


#: Labelling modes: name -> the probability maps it reads (nucleus; nucleus + boundary).
LABELLING_CHANNELS: dict[str, int] = {"plain": 1, "seeded": 2}
#: What users may ask for: a mode, or "auto" (the model's own).
LABELLING_CHOICES: tuple[str, ...] = ("auto", *LABELLING_CHANNELS)
Labelling = Literal["auto", "plain", "seeded"]


def resolve_labelling(labelling: str, out_channels: int) -> str:
    """The mode ``labelling`` names for a model with ``out_channels`` outputs: "auto" is "seeded"
    for nucleus + boundary models and "plain" otherwise; an unknown mode, or one reading more maps
    than the model has, is an error. (The C++ runner applies the same rule to model files.)"""
    if labelling == "auto":
        return "seeded" if out_channels >= LABELLING_CHANNELS["seeded"] else "plain"
    if labelling not in LABELLING_CHANNELS:
        raise ValueError(f"labelling must be one of {list(LABELLING_CHOICES)}, got {labelling!r}")
    if out_channels < LABELLING_CHANNELS[labelling]:
        raise ValueError(
            f"{labelling} labelling needs a checkpoint with a boundary output: it reads "
            f"{LABELLING_CHANNELS[labelling]} probability maps (nucleus + boundary), this one has {out_channels}; "
            "train one with --out-channels 2, or use labelling 'plain'"
        )
    return labelling


def label_by(
    labelling: str,
    scores: torch.Tensor,
    threshold: float,
    boundary_threshold: float | None = None,
    connectivity: int = 8,
    min_area: int = 0,
) -> LabelStats:
    """The fused op of a resolved labelling mode on (C, H, W) scores: the nucleus map (channel 0)
    for "plain", nucleus + boundary (channels 0, 1) for "seeded"; extra channels are ignored."""
    if labelling == "seeded":
        return seeded_label_stats(scores[:2], threshold, boundary_threshold, connectivity, min_area)
    return label_stats(scores[0], threshold, connectivity, min_area)


def _batch_size(scores: torch.Tensor) -> int:
    return 1 if scores.dim() == 2 else scores.shape[0]


_SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8)


def _check_fake(op: str, scores, threshold, connectivity, min_area) -> None:
    """The checks the C++ ops make before any work (csrc/ops/ops.cpp), for fake tensors: a traced
    or compiled call fails where the real one would, with the same message."""
    torch._check(
        scores.dtype in _SCORE_DTYPES,
        lambda: (
            f"{op}: scores must be float32, float16 or bfloat16 (probabilities) or bool or uint8 (masks), got "
            f"{scores.dtype}; convert with .float() or .to(torch.uint8)"
        ),
    )
    torch._check(
        connectivity in (4, 8),
        lambda: f"{op}: connectivity must be 4 (edge neighbours) or 8 (edge and corner neighbours), got {connectivity}",
    )
    torch._check(min_area >= 0, lambda: f"{op}: min_area must be >= 0 pixels, got {min_area}")
    torch._check(threshold == threshold, lambda: f"{op}: threshold must be a number, got nan")


def _check_fake_plain(scores, threshold, connectivity, min_area) -> None:
    op = "unetseg.label"
    _check_fake(op, scores, threshold, connectivity, min_area)
    torch._check(
        scores.dim() in (2, 3, 4),
        lambda: f"{op}: scores must be (H, W), (N, H, W) or (N, 1, H, W), got shape {tuple(scores.shape)}",
    )
    torch._check(
        scores.dim() != 4 or scores.shape[1] == 1,
        lambda: (
            f"{op}: a 4-D scores tensor must be (N, 1, H, W), got {list(scores.shape)}; pass one channel, e.g. "
            "scores[:, 0], or use seeded_label for (N, 2, H, W) nucleus + boundary scores"
        ),
    )


def _check_fake_seeded(scores, threshold, boundary_threshold, connectivity, min_area) -> None:
    op = "unetseg.seeded_label"
    _check_fake(op, scores, threshold, connectivity, min_area)
    torch._check(
        boundary_threshold == boundary_threshold, lambda: f"{op}: boundary_threshold must be a number, got nan"
    )
    torch._check(
        scores.dim() in (3, 4) and scores.shape[-3] == 2,
        lambda: (
            f"{op}: scores must be (2, H, W) or (N, 2, H, W) (channel 0: nucleus, channel 1: nucleus boundary), "
            f"got shape {tuple(scores.shape)}; one-channel scores go to label"
        ),
    )


@torch.library.register_fake("unetseg::label")
def _label_fake(scores, threshold=0.5, connectivity=8, min_area=0):
    _check_fake_plain(scores, threshold, connectivity, min_area)
    labels = scores.new_empty(scores.shape, dtype=torch.int32)
    return labels, scores.new_empty((_batch_size(scores),), dtype=torch.int64)


@torch.library.register_fake("unetseg::label_stats")
def _label_stats_fake(scores, threshold=0.5, connectivity=8, min_area=0):
    labels, counts = _label_fake(scores, threshold, connectivity, min_area)
    objects = torch.library.get_ctx().new_dynamic_size()
    return labels, counts, scores.new_empty((objects, len(STATS_COLUMNS)), dtype=torch.float64)


@torch.library.register_fake("unetseg::label_out")
def _label_out_fake(scores, threshold, connectivity, min_area, labels, counts):
    _check_fake_plain(scores, threshold, connectivity, min_area)
    torch._check(labels.dtype == torch.int32, lambda: f"unetseg.label_out: labels must be int32, got {labels.dtype}")
    torch._check(counts.dtype == torch.int64, lambda: f"unetseg.label_out: counts must be int64, got {counts.dtype}")
    torch._check(
        labels.shape == scores.shape,
        lambda: (
            f"unetseg.label_out: labels must have the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}"
        ),
    )
    return None


@torch.library.register_fake("unetseg::seeded_label")
def _seeded_label_fake(scores, threshold=0.5, boundary_threshold=0.5, connectivity=8, min_area=0):
    _check_fake_seeded(scores, threshold, boundary_threshold, connectivity, min_area)
    return _label_fake(scores.select(-3, 0), threshold, connectivity, min_area)


@torch.library.register_fake("unetseg::seeded_label_stats")
def _seeded_label_stats_fake(scores, threshold=0.5, boundary_threshold=0.5, connectivity=8, min_area=0):
    _check_fake_seeded(scores, threshold, boundary_threshold, connectivity, min_area)
    return _label_stats_fake(scores.select(-3, 0), threshold, connectivity, min_area)


@torch.library.register_fake("unetseg::_batch_norm_input_grad")
def _batch_norm_input_grad_fake(grad, x, a, b, d):
    # the training batch norm's backward pass (models/batch_norm.py), so that torch.compile can trace it
    torch._check(grad.shape == x.shape and grad.dim() == 2, lambda: "grad and x must be one (rows, columns) shape")
    return torch.empty_like(x, memory_format=torch.contiguous_format)
