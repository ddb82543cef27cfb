"""A checkpoint's network on whole images in Python, with test-time augmentation (the runner's)."""

from __future__ import annotations

import numpy as np
import torch

from .data import Normalisation


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, ckpt: dict, device: str | torch.device = "cpu",
            tta: bool = False) -> np.ndarray:
    """Probabilities (out_channels, H, W) float32 of one whole image (H, W[, C]) of any size. With
    ``tta``, the mean over the image's eight turns and mirrors, each turned back (as the runner's
    test-time augmentation)."""
    from .data import to_channels

    norm = Normalisation(**ckpt["normalisation"])
    x = norm(to_channels(image, ckpt["in_channels"]))
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    model = model.to(device)
    if not tta:
        return torch.sigmoid(model(x).float())[0].cpu().numpy()
    total = None
    for turns in range(4):
        for mirror in (False, True):
            y = torch.rot90(x, turns, (2, 3))
            p = torch.sigmoid(model(y.flip(3) if mirror else y).float())
            p = torch.rot90(p.flip(3) if mirror else p, -turns, (2, 3))
            total = p if total is None else total + p
    return (total / 8)[0].cpu().numpy()
