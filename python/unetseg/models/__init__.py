"""Models and their registry: a checkpoint records ``{"architecture": name, "options": {...}}`` and
:func:`build_model` rebuilds the network from it."""

from __future__ import annotations

from typing import Any

from torch import nn

from .mobilenet import MobileNetV2UNet
from .unet import UNet

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "mobilenetv2_unet": MobileNetV2UNet}

#: The options ``unetseg train`` builds each architecture with when none are given.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "unet": {"base_width": 16, "depth": 4, "batch_norm": True},
    "mobilenetv2_unet": {},
}


def build_model(architecture: str, **options: Any) -> nn.Module:
    """Builds a registered architecture ("unet", "mobilenetv2_unet") with its constructor options."""
    if architecture not in MODELS:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(MODELS)}")
    try:
        return MODELS[architecture](**options)
    except TypeError as e:
        raise ValueError(f"bad options for {architecture}: {e}") from None


__all__ = ["DEFAULT_OPTIONS", "MODELS", "MobileNetV2UNet", "UNet", "build_model"]
