"""A checkpoint's network on whole images in Python, with test-time augmentation (the runner's)."""

from __future__ import annotations

import numpy as np
import torch

from .data import Normalisation


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    image: np.ndarray,
    ckpt: dict,
    device: str | torch.device = "cpu",
    tta: bool = False,
    factor: float = 1.0,
) -> np.ndarray:
    """Probabilities (out_channels, H, W) float32 of one whole image (H, W[, C]) of any size. With
    ``tta``, the mean over the image's eight turns and mirrors, each turned back (as the runner's
    test-time augmentation). With `factor`, the network sees the normalised image resized by it and
    the probabilities are resized back (as the runner does for a nucleus diameter)."""
    from .data import to_channels

    norm = Normalisation(**ckpt["normalisation"])
    x = norm(to_channels(image, ckpt["in_channels"]))
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    model = model.to(device)
    h, w = x.shape[2:]
    if factor != 1:
        x = resize(x, max(1, round(h * factor)), max(1, round(w * factor)))

    def back(p: torch.Tensor) -> np.ndarray:  # to the image's grid (a valid-padding output stays smaller)
        return (resize(p, h, w) if factor != 1 else p)[0].cpu().numpy()

    if not tta:
        return back(torch.sigmoid(model(x).float()))
    total = None
    for turns in range(4):
        for mirror in (False, True):
            y = torch.rot90(x, turns, (2, 3))
            p = torch.sigmoid(model(y.flip(3) if mirror else y).float())
            p = torch.rot90(p.flip(3) if mirror else p, -turns, (2, 3))
            total = p if total is None else total + p
    return back(total / 8)


def checkpoint_factor(ckpt: dict, labels: np.ndarray, diameter: float | str | None = "auto") -> float:
    """The resize factor :func:`predict` takes for a checkpoint with a canonical diameter: canonical /
    the given diameter, or for "auto" / the median diameter of `labels` (the image's true nuclei: the
    scale training validates at); 1 for checkpoints without one."""
    from .data.dataset import MAX_RESCALE, MIN_RESCALE
    from .data.transforms import median_diameter

    canonical = ckpt.get("diameter")
    if not canonical:
        return 1.0
    d = median_diameter(labels) if diameter in (None, "auto") else float(diameter)
    return float(np.clip(canonical / d, MIN_RESCALE, MAX_RESCALE)) if np.isfinite(d) and d > 0 else 1.0


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, C, H, W) float resized to (h, w) as the runner resizes: bilinear, antialiased when shrinking."""
    if x.shape[2:] == (h, w):
        return x
    return torch.nn.functional.interpolate(
        x, size=(h, w), mode="bilinear", align_corners=False, antialias=h < x.shape[2] or w < x.shape[3]
    )
