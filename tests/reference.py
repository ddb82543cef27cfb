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
    labels = (
        np.stack([lab for lab, _ in out]).reshape(foreground.shape) if out else np.zeros(foreground.shape, np.int32)
    )
    return labels, np.array([c for _, c in out], np.int64)


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx], `fill` outside the image."""
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = a[
        max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def seeded_one(
    foreground: np.ndarray, seeds: np.ndarray, score: np.ndarray, connectivity: int = 8, min_area: int = 0
) -> tuple[np.ndarray, int]:
    """The seeded rule of unetseg.ops.seeded_label, written out plainly for one image: scipy labels
    the seeds; rounds of dilation inside the foreground, every unlabelled foreground pixel taking
    at once the label of its labelled neighbour with the highest score (then the smaller label);
    foreground left over is labelled by scipy as new objects; min_area; renumbering by first pixel."""
    structure = STRUCTURE[connectivity]
    labels, num_seeds = ndi.label(seeds, structure)
    labels = labels.astype(np.int64)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy or dx) and structure[dy + 1, dx + 1]]
    score = score.astype(np.float32)
    while True:
        best_label = np.zeros_like(labels)
        best_score = np.full(score.shape, -np.inf, np.float32)
        for dy, dx in offsets:
            label_n = _shift(labels, dy, dx, 0)
            score_n = _shift(score, dy, dx, -np.inf)
            better = (label_n > 0) & (
                (best_label == 0) | (score_n > best_score) | ((score_n == best_score) & (label_n < best_label))
            )
            best_label = np.where(better, label_n, best_label)
            best_score = np.where(better, score_n, best_score)
        grow = foreground & (labels == 0) & (best_label > 0)
        if not grow.any():
            break
        labels[grow] = best_label[grow]
    orphans = foreground & (labels == 0)
    orphan_labels, _ = ndi.label(orphans, structure)
    labels[orphans] = orphan_labels[orphans] + num_seeds
    # renumber: raster order of each object's first pixel, dropping those under min_area
    values, first = np.unique(labels.ravel(), return_index=True)
    areas = np.bincount(labels.ravel(), minlength=values.max() + 1 if values.size else 1)
    keep = [(f, v) for v, f in zip(values, first) if v > 0 and areas[v] >= min_area]
    renumber = np.zeros(areas.size, np.int32)
    for new, (_, v) in enumerate(sorted(keep), start=1):
        renumber[v] = new
    return renumber[labels], len(keep)


def seeded_batch(
    scores: torch.Tensor, threshold: float, boundary_threshold: float, connectivity: int = 8, min_area: int = 0
):
    """The reference for unetseg.ops.seeded_label on (2, H, W) or (N, 2, H, W): torch's comparisons
    (the op's documented rule: foreground `nucleus > threshold`, seeds also `boundary <
    boundary_threshold`), then seeded_one per image."""
    nucleus, boundary = scores.select(-3, 0), scores.select(-3, 1)
    foreground = (nucleus > threshold).numpy()
    seeds = foreground & (boundary < boundary_threshold).numpy()
    score = nucleus.float().numpy()
    shape = foreground.shape
    flat = [a.reshape((-1,) + shape[-2:]) for a in (foreground, seeds, score)]
    out = [seeded_one(f, s, v, connectivity, min_area) for f, s, v in zip(*flat)]
    labels = np.stack([lab for lab, _ in out]).reshape(shape) if out else np.zeros(shape, np.int32)
    return labels, np.array([c for _, c in out], np.int64)


def assert_stats_match_regionprops(
    ref_labels: np.ndarray, counts: torch.Tensor, stats: torch.Tensor, intensity: np.ndarray
) -> None:
    """Each image's rows of an op's stats table equal skimage's regionprops of the reference labels
    (area, bbox, centroid; mean of `intensity`, the scores the op was given, as float32)."""
    import skimage.measure

    offsets = np.concatenate([[0], np.cumsum(counts.numpy())])
    for i in range(len(ref_labels)):
        props = skimage.measure.regionprops(ref_labels[i], intensity_image=intensity[i])
        table = stats[offsets[i] : offsets[i + 1]].numpy()
        assert len(props) == len(table)
        for p, row in zip(props, table):
            assert row[0] == p.area
            np.testing.assert_array_equal(row[1:5], p.bbox)
            np.testing.assert_allclose(row[5:7], p.centroid, rtol=0, atol=1e-9)
            np.testing.assert_allclose(row[7], p.intensity_mean, rtol=1e-6)


def outline_polygon(contour: np.ndarray) -> np.ndarray:
    """unetseg.geometry.outline_polygon one object at a time, with shapely's geometry objects."""
    import shapely
    from shapely.geometry import LineString, MultiPoint, Point, Polygon

    centres = np.asarray(contour, np.float64).reshape(-1, 2) + 0.5
    if len(centres) == 1:
        shape = Point(centres[0])
    elif len(centres) == 2:
        shape = LineString(centres)
    else:
        shape = shapely.make_valid(Polygon(centres))
        if shape.is_empty:
            shape = MultiPoint(centres)
    grown = shape.buffer(0.5, cap_style="square", join_style="mitre", mitre_limit=2.0)
    # mitres at sharp turns reach past the pixels: the object's box of pixel edges bounds it
    (x0, y0), (x1, y1) = centres.min(axis=0) - 0.5, centres.max(axis=0) + 0.5
    grown = grown.intersection(shapely.box(x0, y0, x1, y1))
    parts = [p for p in getattr(grown, "geoms", [grown]) if p.geom_type == "Polygon"]
    outer = max(parts, key=lambda p: p.area)
    ring = shapely.geometry.polygon.orient(Polygon(outer.exterior), sign=1.0)
    return np.asarray(ring.exterior.coords)
