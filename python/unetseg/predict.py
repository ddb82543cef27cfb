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
    if not tta:
        return resize(torch.sigmoid(model(x).float()), h, w)[0].cpu().numpy()
    total = None
    for turns in range(4):
        for mirror in (False, True):
            y = torch.rot90(x, turns, (2, 3))
            p = torch.sigmoid(model(y.flip(3) if mirror else y).float())
            p = torch.rot90(p.flip(3) if mirror else p, -turns, (2, 3))
            total = p if total is None else total + p
    return resize(total / 8, h, w)[0].cpu().numpy()


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, C, H, W) float resized to (h, w) as the runner resizes: bilinear, antialiased when shrinking."""
    if x.shape[2:] == (h, w):
        return x
    return torch.nn.functional.interpolate(
        x, size=(h, w), mode="bilinear", align_corners=False, antialias=h < x.shape[2] or w < x.shape[3]
    )
