"""Synthetic nuclei: fluorescence-like or bright-field-like images with exact instance labels.

For tests, demos and benchmarks, never in place of real data. Each nucleus is a randomly oriented
ellipse with a soft edge and a blotchy texture; some come in touching pairs; the background is
uneven and the image is noisy. The same call also gives the ideal probability map (soft-edged
nucleus masks), which is what a well-trained network outputs, for benchmarking the labelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi


@dataclass(frozen=True)
class SyntheticNuclei:
    image: np.ndarray
    """(H, W) or (H, W, 3) uint8"""
    labels: np.ndarray
    """(H, W) int32 instance labels, 0 background, 1..K in raster order of first pixel"""
    probability: np.ndarray
    """(H, W) float32 in [0, 1]: soft nucleus masks (> 0.5 inside a nucleus)"""


def synthetic_nuclei(
    shape: tuple[int, int] = (256, 256),
    *,
    coverage: float = 0.25,
    radius: tuple[float, float] = (5.0, 12.0),
    touching: float = 0.3,
    kind: str = "fluorescence",
    noise: float = 0.04,
    seed: int | np.random.Generator | None = None,
) -> SyntheticNuclei:
    """Makes one synthetic image of nuclei.

    Args:
        shape: (H, W) of the image.
        coverage: the fraction of the image the nuclei should cover, roughly.
        radius: the range of the nuclei's semi-axes in pixels.
        touching: the fraction of nuclei placed in contact with a neighbour.
        kind: "fluorescence" (bright nuclei on dark, gray) or "brightfield" (dark stained nuclei on a
            light background, RGB).
        noise: standard deviation of the additive Gaussian noise, in units of the full range.
        seed: a seed or generator, for reproducible images.
    """
    if kind not in ("fluorescence", "brightfield"):
        raise ValueError(f"kind must be 'fluorescence' or 'brightfield', got {kind!r}")
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"shape must be two positive sizes (H, W), got {shape}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    rng = np.random.default_rng(seed)
    mean_area = np.pi * np.mean(radius) ** 2
    n = max(1, int(round(coverage * h * w / mean_area)))

    labels = np.zeros((h, w), np.int32)
    probability = np.zeros((h, w), np.float32)
    brightness = np.zeros((h, w), np.float32)
    centres = rng.uniform((0, 0), (h, w), size=(n, 2))
    axes = rng.uniform(*radius, size=(n, 2))
    angles = rng.uniform(0, np.pi, size=n)
    partner = rng.random(n) < touching
    for i in range(1, n):  # put some nuclei against the previous one
        if partner[i]:
            direction = rng.uniform(0, 2 * np.pi)
            distance = 0.9 * (axes[i - 1].mean() + axes[i].mean())
            centres[i] = centres[i - 1] + distance * np.array([np.sin(direction), np.cos(direction)])
    level = rng.uniform(0.45, 1.0, size=n)

    for i in range(n):
        (cy, cx), (a, b), t = centres[i], axes[i], angles[i]
        reach = int(np.ceil(max(a, b))) + 3
        y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        r = np.sqrt(u * u + v * v)
        inside = (r < 1) & (labels[y0:y1, x0:x1] == 0)  # earlier nuclei stay on top
        labels[y0:y1, x0:x1][inside] = i + 1
        soft = 1 / (1 + np.exp(np.clip((r - 1) * min(a, b) * 1.5, -30, 30)))
        np.maximum(probability[y0:y1, x0:x1], soft.astype(np.float32), out=probability[y0:y1, x0:x1])
        brightness[y0:y1, x0:x1] = np.where(inside, level[i] * soft, brightness[y0:y1, x0:x1])

    # drop nuclei hidden by others, number in raster order as every label here is
    labels = raster_order(labels)

    texture = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-6
    yy, xx = np.mgrid[0:h, 0:w]
    gx, gy = rng.uniform(-1, 1, 2)
    background = 0.08 + 0.06 * (gx * xx / max(w, 1) + gy * yy / max(h, 1))
    signal = np.clip(brightness * (1 + 0.15 * texture) + background, 0, None)
    signal += rng.normal(0, noise, size=(h, w)).astype(np.float32)
    signal = np.clip(signal, 0, 1)
    if kind == "fluorescence":
        image = (signal * 255).astype(np.uint8)
    else:  # hematoxylin-like blue-purple nuclei on a pale pink (eosin) background
        paper = np.array([0.96, 0.86, 0.92], np.float32)
        stain = np.array([0.60, 0.80, 0.30], np.float32)  # absorbs red and green most
        rgb = paper - signal[..., None] * stain * 1.3
        image = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return SyntheticNuclei(image=image, labels=labels, probability=probability)


def raster_order(labels: np.ndarray) -> np.ndarray:
    """Renumbers instance labels 1..K in raster order of each object's first pixel."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]
