"""The classic U-Net (Ronneberger, Fischer & Brox, MICCAI 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(c_in: int, c_out: int, pad: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, 3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class _Up(nn.Module):
    """Transposed-conv 2x up-sampling, concatenation with the (cropped) skip, two 3x3 convs."""

    def __init__(self, c_in: int, pad: int, batch_norm: bool, dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        self.conv = _double_conv(c_in, c_in // 2, pad, batch_norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = _center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net: two 3x3 convs + ReLU per level, 2x2 max-pool, channels doubling per level (1024 at the
    bottleneck for base_width 64 and depth 4), transposed-conv up-sampling, concatenated skips and a
    1x1 head.

    Args:
        in_channels: image channels (1 gray, 3 RGB).
        out_channels: 1 (nucleus) or 2 (nucleus + nucleus boundary).
        base_width: filters at the first level.
        depth: number of 2x2 poolings.
        padding: "same" (zero-padded convs; any input size, output size = input size) or "valid"
            (the paper's unpadded convs; the output is smaller, see :meth:`output_size`).
        batch_norm: batch normalisation after every conv.
        dropout: Dropout2d probability at the end of each block (0: none).

    Input ``(N, in_channels, H, W)`` float, output logits ``(N, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 64,
        depth: int = 4,
        padding: str = "same",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if depth < 1 or base_width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"depth, base_width, in_channels and out_channels must be >= 1, got {depth}, {base_width}, "
                f"{in_channels}, {out_channels}"
            )
        pad = 1 if padding == "same" else 0
        self.same = padding == "same"
        self.multiple = 2**depth
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.downs = nn.ModuleList(
            [
                _double_conv(c_in, c_out, pad, batch_norm, dropout)
                for c_in, c_out in zip([in_channels] + widths[:-1], widths)
            ]
        )
        self.ups = nn.ModuleList([_Up(c, pad, batch_norm, dropout) for c in reversed(widths[1:])])
        self.head = nn.Conv2d(base_width, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if self.same:  # pad to a multiple of 2^depth, crop back at the end
            pad_h = (self.multiple - height % self.multiple) % self.multiple
            pad_w = (self.multiple - width % self.multiple) % self.multiple
            if pad_h or pad_w:
                x = F.pad(x, [0, pad_w, 0, pad_h])
        skips: list[torch.Tensor] = []
        for i, down in enumerate(self.downs):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = down(x)
            skips.append(x)
        for i, up in enumerate(self.ups):
            x = up(x, skips[len(skips) - 2 - i])
        x = self.head(x)
        if self.same:
            x = x[..., :height, :width]
        return x

    def output_size(self, size: int) -> int:
        """Output side length for an input side length (the same in "same" mode)."""
        if self.same:
            return size
        depth = len(self.ups)
        for _ in range(depth):
            size = (size - 4) // 2
        size -= 4
        for _ in range(depth):
            size = size * 2 - 4
        return size
