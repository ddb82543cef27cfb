"""Training checkpoints: the one place that reads and writes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .io import atomic_path
from .models import build_model

CHECKPOINT_FORMAT = 1
DEFAULT_CHECKPOINT = "default_model.ckpt"


def default_checkpoint_path() -> Path:
    """The bundled default model's training checkpoint (weights and training metadata, no optimizer
    state): what ``unetseg train --init-weights default`` fine-tunes."""
    from importlib import resources

    return Path(str(resources.files("unetseg").joinpath("assets", DEFAULT_CHECKPOINT)))


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Loads a unetseg checkpoint with weights_only=True (no code runs from the file)."""
    from .export import is_model_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if is_model_file(path):
        raise ValueError(
            f"{path} is a model file made by `unetseg export`, not a training checkpoint: segment or "
            "evaluate with it (-m MODEL), or give the training run's best.pt / last.pt here"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable unetseg checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a unetseg checkpoint of format {CHECKPOINT_FORMAT}")
    return ckpt


def without_training_state(ckpt: dict) -> dict:
    """The checkpoint without what only resuming needs (optimizer and schedule state, and with a
    weight average the trained weights behind it): the weights and the training metadata, what
    ``--init-weights`` fine-tunes from (the bundled one's form)."""
    resuming_only = ("optimizer", "scheduler", "trained_state_dict", "averaged_steps")
    return {k: v for k, v in ckpt.items() if k not in resuming_only}


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    model = build_model(ckpt["model"]["architecture"], **ckpt["model"]["options"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
