"""Plain, obviously-correct references the kernels are checked against."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch

STRUCTURE = {8: np.ones((3, 3), bool), 4: ndi.generate_binary_structure(2, 1)}


def label_one(foreground: np.ndarray, connectivity: int = 8, min_area: int = 0) -> tuple[np.ndarray, int]:
    """scipy.ndimage.label of one (H, W) mask, then min_area removal with order-preserving renumbering."""
    labels, count = ndi.label(foreground, STRUCTURE[connectivity])
    labels = labels.astype(np.int32)
    if min_area > 0 and count:
        keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_area
        keep[0] = False
        renumber = np.zeros(count + 1, np.int32)
        renumber[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
        labels, count = renumber[labels], int(keep.sum())
    return labels, count


def label_batch(scores: torch.Tensor, threshold: float, connectivity: int = 8, min_area: int = 0):
    """The reference for unetseg.ops.label on any accepted shape: torch's `scores > threshold`
    (the op's documented foreground rule), then scipy per image."""
    foreground = (scores > threshold).numpy()
    batch = foreground.reshape((-1,) + foreground.shape[-2:])
    out = [label_one(image, connectivity, min_area) for image in batch]
    labels = np.stack([l for l, _ in out]).reshape(foreground.shape) if out else np.zeros(foreground.shape, np.int32)
    return labels, np.array([c for _, c in out], np.int64)
