"""TorchScript export: one frozen, scripted model file that carries its metadata.

The file is what the C++ runner (and so :func:`unetseg.segment_batch`) loads: a TorchScript module
whose ``forward`` maps a normalised (N, C, H, W) float batch to logits (N, out_channels, H, W), plus
an extra file ``unetseg.json`` saying how to feed it and read it (format version, architecture and
options, input channels, normalisation, size multiple, outputs and their meaning, default
threshold, training data, validation metrics, unetseg version). The runner needs no side files.

torch 2.13 marks ``torch.jit`` deprecated; TorchScript is still the deployment format here (it is
what a pure C++ process can load), so its DeprecationWarnings are kept out of users' faces. Export
is kept to this module so that a ``torch.export`` / AOTInductor path can sit beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import torch

from .io import atomic_path
from .ops import resolve_labelling

METADATA_FILE = "unetseg.json"
FORMAT_VERSION = 1


@contextlib.contextmanager
def quiet_jit():
    """Silences torch's "`torch.jit.*` is deprecated" warnings (and only those)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`torch\.jit\.")
        yield


def metadata_from_checkpoint(
    ckpt: dict,
    model: torch.nn.Module,
    *,
    threshold: float | None = None,
    boundary_threshold: float = 0.5,
    min_area: int = 0,
) -> dict:
    """The model file's metadata, from a training checkpoint (see :mod:`unetseg.train`), with the
    post-processing defaults the runner uses (threshold: the checkpoint's when None)."""
    from . import __version__

    out_channels = int(ckpt["out_channels"])
    threshold = ckpt.get("threshold", 0.5) if threshold is None else threshold
    for key, value in (("threshold", threshold), ("boundary_threshold", boundary_threshold)):
        if not 0 <= value <= 1:
            raise ValueError(f"{key} must be a probability in [0, 1], got {value}")
    if int(min_area) < 0:
        raise ValueError(f"min_area must be >= 0 pixels, got {min_area}")
    return {
        "format": "unetseg-model",
        "format_version": FORMAT_VERSION,
        "architecture": ckpt["model"]["architecture"],
        "options": ckpt["model"]["options"],
        "in_channels": int(ckpt["in_channels"]),
        "input": "float32 (N, in_channels, H, W), each image normalised as `normalisation` says",
        "normalisation": ckpt["normalisation"],
        "size_multiple": int(getattr(model, "multiple", 1)),
        "out_channels": out_channels,
        "outputs": list(ckpt.get("output_meaning") or (["nucleus", "nucleus boundary"][:out_channels])),
        "output_activation": "sigmoid",
        "threshold": float(threshold),
        "labelling": resolve_labelling("auto", out_channels),
        "boundary_threshold": float(boundary_threshold),
        "min_area": int(min_area),
        "halo": receptive_field_halo(model, int(ckpt["in_channels"]), int(getattr(model, "multiple", 1))),
        # canonical nucleus diameter (pixels) the network was trained at; the runner rescales images to it
        "diameter": ckpt.get("diameter"),
        "training_data": _training_data(ckpt),
        "epoch": ckpt.get("epoch"),
        "validation": ckpt.get("validation"),
        "unetseg_version": __version__,
    }


def receptive_field_halo(model: torch.nn.Module, in_channels: int, multiple: int = 1) -> int:
    """The tile halo a model needs: the radius of its receptive field (the input pixels that reach
    one output pixel, found by back-propagating from the centre of a random input), rounded up to
    ``multiple`` so that tiles start on the network's pooling grid. With this halo, a tile's centre
    equals the same pixels of the whole image's output."""
    was_training = model.training
    model.eval()
    try:
        side = -(-256 // multiple) * multiple
        generator = torch.Generator().manual_seed(0)
        while side <= 4096:
            x = torch.rand(1, in_channels, side, side, generator=generator, requires_grad=True)
            model(x)[0, :, side // 2, side // 2].sum().backward()
            seen = torch.nonzero(x.grad.abs().sum((0, 1)) > 0) - side // 2
            radius = int(seen.abs().max()) if len(seen) else 0
            if radius < side // 2 - 1:
                return -(-radius // multiple) * multiple
            side *= 2
        raise ValueError("the model's receptive field is wider than 2048 pixels; cannot derive a tile halo")
    finally:
        model.train(was_training)


def _training_data(ckpt: dict) -> dict | None:
    """Where the weights came from: the dataset's folder name, split sizes, the validation and dev images."""
    if not ckpt.get("training_data"):
        return None
    split = ckpt.get("split") or {}
    return {
        "dataset": (
            [Path(str(d)).name for d in ckpt["training_data"]]
            if isinstance(ckpt["training_data"], list)
            else Path(str(ckpt["training_data"])).name
        ),
        "train_images": len(split.get("train", [])),
        "val_images": len(split.get("val", [])),
        "split_seed": split.get("seed"),
        "val_names": list(split.get("val", [])),
        "dev_names": list(split.get("dev", [])),
    }


def script_model(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """Scripts and freezes an eval-mode model (batch norm folded into the convolutions)."""
    with quiet_jit():
        scripted = torch.jit.script(model.eval())
        return torch.jit.freeze(scripted)


def export(
    checkpoint: str | os.PathLike | dict,
    output: str | os.PathLike,
    *,
    threshold: float | None = None,
    boundary_threshold: float = 0.5,
    min_area: int = 0,
) -> dict:
    """Writes the TorchScript model file for a training checkpoint; returns its metadata.

    threshold, boundary_threshold and min_area set the post-processing defaults stored in the file
    (threshold None: the checkpoint's); users can still override them per call.

    The file is written atomically: an existing ``output`` is only replaced by a complete file.
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    if getattr(model, "same", True) is False:
        raise ValueError(
            "export needs a model with padding='same' (output the size of its input); this checkpoint's "
            "U-Net uses padding='valid', whose output is smaller than its input. Retrain with padding 'same'."
        )
    metadata = metadata_from_checkpoint(
        ckpt, model, threshold=threshold, boundary_threshold=boundary_threshold, min_area=min_area
    )
    frozen = script_model(model)
    output = Path(output)
    with atomic_path(output) as tmp, quiet_jit():
        torch.jit.save(frozen, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
    return metadata


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model file made by :func:`export` (a TorchScript archive with unetseg
    metadata), as opposed to a training checkpoint or anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _metadata_entry(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _metadata_entry(archive: zipfile.ZipFile) -> str | None:
    """The name of the unetseg metadata file in a TorchScript archive, or None."""
    return next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a model file, read without loading the network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            name = _metadata_entry(archive)
            if name is None:
                raise ValueError(
                    f"{str(path)!r} is a TorchScript file without unetseg metadata ({METADATA_FILE}); "
                    "make model files with `unetseg export CHECKPOINT -o model.pt`"
                )
            return json.loads(archive.read(name))
    except zipfile.BadZipFile:
        raise ValueError(f"{str(path)!r} is not a TorchScript model file (not a zip archive)") from None


def load(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """Loads a model file in Python: (TorchScript module, metadata)."""
    metadata = read_metadata(path)
    with quiet_jit():
        return torch.jit.load(str(path), map_location="cpu"), metadata
