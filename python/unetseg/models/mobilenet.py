"""A U-Net with a MobileNetV2 encoder (Sandler et al., CVPR 2018).

The encoder is written here (no torchvision dependency) with the module names of torchvision's
``mobilenet_v2``, so its ImageNet weights (``mobilenet_v2-b0353104.pth`` or
``mobilenet_v2-7ebf99e0.pth``, downloaded by the user) load with :meth:`load_imagenet_weights`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# t (expansion), c (channels), n (repeats), s (stride): torchvision's inverted_residual_setting
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# indices into `features` whose outputs are the skips at strides 2, 4, 8 and 16
_SKIPS = (1, 3, 6, 13)
_SKIP_CHANNELS = (16, 24, 32, 96)


class _ConvBNReLU6(nn.Sequential):  # torchvision's Conv2dNormActivation: keys .0 (conv) and .1 (bn)
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU6(c_in, hidden, kernel=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class _Decoder(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(c_out + c_skip, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class MobileNetV2UNet(nn.Module):
    """U-Net decoder on a MobileNetV2 encoder, skips from strides 2, 4, 8 and 16.

    Args:
        in_channels: image channels. ImageNet weights are for 3; for 1, the first conv's RGB
            weights are summed when loading them.
        out_channels: 1 (nucleus) or 2 (nucleus + boundary).
        decoder_width: filters of the last decoder level (doubling towards the bottleneck).
        freeze_encoder: keep the encoder's weights (and batch-norm statistics) fixed.

    Input ``(N, in_channels, H, W)``, any size (padded to a multiple of 32 inside); output logits
    ``(N, out_channels, H, W)``.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, decoder_width: int = 16, freeze_encoder: bool = False
    ):
        super().__init__()
        features: list[nn.Module] = [_ConvBNReLU6(in_channels, 32, stride=2)]
        c = 32
        for t, c_out, n, s in _SETTING:
            for i in range(n):
                features.append(_InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        features.append(_ConvBNReLU6(c, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        widths = [decoder_width * 2**k for k in range(4)]  # at strides 2, 4, 8, 16
        self.decoders = nn.ModuleList(
            [_Decoder(1280 if k == 3 else widths[k + 1], _SKIP_CHANNELS[k], widths[k]) for k in (3, 2, 1, 0)]
        )
        self.final_up = nn.ConvTranspose2d(widths[0], widths[0], kernel_size=2, stride=2)
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self.freeze_encoder = freeze_encoder
        self.multiple = 32  # input sides are padded to this inside forward
        if freeze_encoder:
            self.features.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.features.eval()  # frozen batch-norm statistics too
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (
            (self.multiple - height % self.multiple) % self.multiple,
            (self.multiple - width % self.multiple) % self.multiple,
        )
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h])
        skips: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 1 or i == 3 or i == 6 or i == 13:
                skips.append(x)
        for k, decoder in enumerate(self.decoders):
            x = decoder(x, skips[3 - k])
        x = self.head(self.final_up(x))
        return x[..., :height, :width]

    def load_imagenet_weights(self, path: str | os.PathLike) -> None:
        """Loads torchvision's ImageNet ``mobilenet_v2`` weights (a state dict file) into the encoder.

        The classifier is ignored; any other missing or unexpected key, or a shape that differs, is
        an error naming the keys. For a 1-channel model the first conv's RGB weights are summed.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no such weights file; download torchvision's mobilenet_v2 ImageNet weights "
                "(e.g. https://download.pytorch.org/models/mobilenet_v2-b0353104.pth) and pass its path"
            ) from None
        except Exception as e:
            raise ValueError(f"{path}: not a PyTorch state-dict file ({e})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        encoder = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = sorted(set(own) - set(encoder))
        unexpected = sorted(set(encoder) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not hold torchvision mobilenet_v2 weights: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )
        first = "0.0.weight"
        if encoder[first].shape[1] != own[first].shape[1] and own[first].shape[1] == 1:
            encoder[first] = encoder[first].sum(dim=1, keepdim=True)
        bad = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in encoder.items()
            if v.shape != own[k].shape
        ]
        if bad:
            raise ValueError(f"{path}: shapes differ from this model's encoder: {bad[:3]}")
        self.features.load_state_dict(encoder)
