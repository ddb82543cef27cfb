"""Dataset readers. Every reader returns a list of :class:`Sample` (image + instance labels).

Layouts:
- DSB 2018 (``<root>/<id>/images/<id>.png`` + ``<root>/<id>/masks/*.png``, one binary mask a nucleus)
- instance-label folders (``<root>/images/<name>.png`` + ``<root>/labels/<name>.png``, uint16 labels;
  an optional ``manifest.csv`` with ``id`` and ``kind`` columns gives each image's kind)
- ``.npz`` files holding ``images`` (N, H, W[, C]) and ``masks`` (N, H, W; binary or instance labels)
- image/mask folder pairs matched by file name (binary or instance masks)
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .synthetic import raster_order

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class Sample:
    name: str
    image: np.ndarray
    """(H, W) or (H, W, C), uint8 or uint16 (or float)"""
    labels: np.ndarray
    """(H, W) int32 instance labels, 0 background"""
    kind: str = "unknown"
    dataset: str = ""
    """the dataset it came from (its folder or file name)"""
    group: str = ""
    """images of one group (tiles of one source image) always fall on the same side of a split;
    empty: the image is its own group"""

    @property
    def split_group(self) -> str:
        return self.group or self.name


def read_planes(path: str | os.PathLike, plane: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The 2-D images of a file, each (H, W) or (H, W, C), with a name suffix: one image ``("", image)``
    for most files; for a TIFF stack (axes Z, T or others besides Y, X and channels) one per plane,
    named by its position, e.g. ``("_t001_z003", image)``. `plane` keeps only that plane (0-based
    over the planes in file order)."""
    path = Path(path)
    tiff = path.suffix.lower() in (".tif", ".tiff")
    image, axes = _tiff_series(path) if tiff else (read_image(path), "")
    stack = [i for i, a in enumerate(axes) if a not in "YXCS"]
    if not stack:
        if plane not in (None, 0):
            raise ValueError(f"{path} is one 2-D image; plane {plane} asked for (only plane 0 exists)")
        return [("", _channels_last(image, axes, path) if tiff else image)]
    shape = image.shape
    image = np.moveaxis(image, stack, range(len(stack)))
    lead = image.shape[: len(stack)]
    letters = [axes[i].lower() for i in stack]
    count = int(np.prod(lead))
    if plane is not None and not 0 <= plane < count:
        raise ValueError(
            f"{path} has {count} planes (axes {axes}, shape {shape}); plane {plane} asked for, expected 0..{count - 1}"
        )
    rest = "".join(a for a in axes if a in "YXCS")
    planes = []
    for k, index in enumerate(np.ndindex(*lead)):
        if plane is None or k == plane:
            name = "".join(f"_{letter}{i:03d}" for letter, i in zip(letters, index))
            planes.append((name, _channels_last(image[index], rest, path)))
    return planes


def channel_names(path: str | os.PathLike) -> list[str]:
    """The channel names an OME-TIFF records (``Pixels/Channel/@Name``), in channel order; [] for
    other files."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return []
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.is_ome:
            return []
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    return [str(c.get("Name", "")) for c in channels]


def channel_index(path: str | os.PathLike, channel: int | str) -> int:
    """`channel` as an index: an int as it is; a name looked up in the file's OME channel names."""
    if not isinstance(channel, str):
        return int(channel)
    if channel.lstrip("-").isdigit():
        return int(channel)
    names = channel_names(path)
    if channel not in names:
        known = f"its channels are {names}" if names else "it has no OME channel names (give the channel's index)"
        raise ValueError(f"{path}: no channel named {channel!r}; {known}")
    return names.index(channel)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads a PNG/TIFF/JPEG/BMP as (H, W) or (H, W, C) in RGB(A) order, keeping 8 or 16 bits."""
    import cv2

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _channels_last(*_tiff_series(path), path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read {path} as an image (expected PNG, TIFF, JPEG or BMP)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def _tiff_series(path: Path) -> tuple[np.ndarray, str]:
    """A TIFF's first series and its axes (tifffile's letters: Y, X, C, S, Z, T...)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return series.asarray(), series.axes
    except Exception as e:
        raise ValueError(f"cannot read {path} as a TIFF image: {e}") from None


def _channels_last(image: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """A TIFF series as (H, W) or (H, W, C): its channel axis (C, or S for samples such as RGB) moved
    last, whatever the file's order (Fiji writes CYX). Other axes (Z, T, or an unnamed page axis) are
    stacks, not one image: a clear error (:func:`read_planes` reads them plane by plane)."""
    others = [a for a in axes if a not in "YXCS"]
    channel_axes = [a for a in axes if a in "CS"]
    if others or len(channel_axes) > 1 or not {"Y", "X"} <= set(axes):
        raise ValueError(
            f"{path} holds a stack with axes {axes} (shape {image.shape}); unetseg reads 2-D images with "
            "optional channels (YX, YXS, CYX): segment it plane by plane with `unetseg segment` (or "
            "unetseg.data.read_planes), or pick one with --plane"
        )
    order = [axes.index("Y"), axes.index("X")] + [axes.index(a) for a in channel_axes]
    return image.transpose(order)


def _instances(mask: np.ndarray, path: Path) -> np.ndarray:
    """Instance labels from a mask file: binary masks are labelled (8-connectivity), label images kept."""
    from ..ops import label

    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, min(mask.shape[2], 3))):
            raise ValueError(f"{path}: a mask must be single-channel, got {mask.shape[2]} different channels")
        mask = mask[..., 0]
    values = np.unique(mask)
    if len(values) <= 2:  # binary
        import torch

        return label(torch.from_numpy(np.ascontiguousarray(mask > 0))).labels.numpy()
    return mask.astype(np.int32)


def _check_same_size(image: np.ndarray, labels: np.ndarray, name: str) -> None:
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(
            f"{name}: the image is {image.shape[1]}x{image.shape[0]} but its mask is "
            f"{labels.shape[1]}x{labels.shape[0]}"
        )


def read_dsb2018(root: str | os.PathLike) -> list[Sample]:
    """The Data Science Bowl 2018 layout: one folder per image id with images/ and masks/."""
    root = Path(root)
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted((folder / "images").glob("*.png"))
        if not images:
            raise ValueError(f"{folder}: no images/<id>.png (DSB 2018 layout expected)")
        image = read_image(images[0])
        masks = sorted((folder / "masks").glob("*.png"))
        if not masks:
            raise ValueError(f"{folder}: the image has no masks in {folder / 'masks'}")
        labels = np.zeros(image.shape[:2], np.int32)
        for k, m in enumerate(masks, 1):
            mask = read_image(m)
            _check_same_size(image, mask, str(m))
            mask = mask[..., 0] if mask.ndim == 3 else mask
            labels[(mask > 0) & (labels == 0)] = k  # where masks overlap, the first wins
        samples.append(Sample(folder.name, image, raster_order(labels)))
    if not samples:
        raise ValueError(f"{root}: empty, expected one folder per image (DSB 2018 layout)")
    return samples


_TILE_NAME = re.compile(r"^(.+)_\d{3}$")


def read_label_folders(root: str | os.PathLike, skip_invalid: bool = False) -> list[Sample]:
    """``images/`` + ``labels/`` folders of the same file names; kinds from ``manifest.csv`` if any.

    Groups (kept on one side of a split): a manifest ``group`` column where there is one; otherwise,
    when every name has the form ``<image>_<NNN>`` (three-digit tile numbers, as CoNSeP's tiles), the
    tiles of one ``<image>``, since tiles of one image overlap."""
    root = Path(root)
    rows = {}
    if (root / "manifest.csv").exists():
        with open(root / "manifest.csv", newline="") as f:
            rows = {row["id"]: row for row in csv.DictReader(f)}
    samples = read_pairs(root / "images", root / "labels", skip_invalid)
    tiles = [_TILE_NAME.match(s.name) for s in samples]
    for s, tile in zip(samples, tiles):
        row = rows.get(s.name, {})
        s.kind = row.get("kind") or s.kind
        s.group = row.get("group") or (tile.group(1) if all(tiles) else "")
    return samples


def read_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, skip_invalid: bool = False) -> list[Sample]:
    """Images and masks in two folders, matched by file name (stem); masks binary or instance labels.
    A pair whose image and mask differ in size is an error, or with `skip_invalid` left out with a
    warning naming it."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise ValueError(f"{d}: no such folder")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise ValueError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise ValueError(f"{len(missing)} images have no mask in {masks_dir}, e.g. {missing[:3]}")
    samples = []
    for name, path in images.items():
        image = read_image(path)
        labels = _instances(read_image(masks[name]), masks[name])
        try:
            _check_same_size(image, labels, str(path))
        except ValueError as e:
            if not skip_invalid:
                raise ValueError(f"{e}; fix the pair, or skip such pairs (train --skip-invalid)") from None
            warnings.warn(f"skipped: {e}", stacklevel=2)
            continue
        samples.append(Sample(name, image, labels))
    return samples


def read_npz(path: str | os.PathLike) -> list[Sample]:
    """A ``.npz`` holding ``images`` (N, H, W[, C]) and ``masks`` (N, H, W), binary or instance."""
    path = Path(path)
    with np.load(path) as data:
        for key in ("images", "masks"):
            if key not in data:
                raise ValueError(f"{path}: no array named {key!r}; found {sorted(data.files)}")
        images, masks = data["images"], data["masks"]
        kinds = data["kinds"] if "kinds" in data else None
    if len(images) != len(masks):
        raise ValueError(f"{path}: {len(images)} images but {len(masks)} masks")
    samples = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        labels = _instances(mask, path)
        _check_same_size(image, labels, f"{path}[{i}]")
        samples.append(Sample(f"{path.stem}_{i:05d}", image, labels, str(kinds[i]) if kinds is not None else "unknown"))
    return samples


def read_datasets(paths: str | os.PathLike | Sequence[str | os.PathLike], skip_invalid: bool = False) -> list[Sample]:
    """One or several datasets (:func:`read_dataset` each). With several, each image's name becomes
    ``<dataset>/<name>`` (the dataset's folder or file name), so names stay unique."""
    if isinstance(paths, (str, os.PathLike)):
        return read_dataset(paths, skip_invalid)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no dataset given: expected one or more dataset paths")
    names = [dataset_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets must have different folder names, got {names}")
    if len(paths) == 1:
        return read_dataset(paths[0], skip_invalid)
    samples = []
    for path, name in zip(paths, names):
        for s in read_dataset(path, skip_invalid):
            s.name = f"{name}/{s.name}"
            s.group = f"{name}/{s.group}" if s.group else ""
            samples.append(s)
    return samples


def dataset_name(path: str | os.PathLike) -> str:
    path = Path(path)
    return path.stem if path.suffix == ".npz" else path.resolve().name


def read_dataset(path: str | os.PathLike, skip_invalid: bool = False) -> list[Sample]:
    """Any supported layout, recognised from what is there (`skip_invalid`: see :func:`read_pairs`)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    samples = _read_layout(path, skip_invalid)
    for s in samples:
        s.dataset = dataset_name(path)
    return samples


def _read_layout(path: Path, skip_invalid: bool) -> list[Sample]:
    if path.suffix == ".npz":
        return read_npz(path)
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return read_label_folders(path, skip_invalid)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return read_pairs(path / "images", path / "masks", skip_invalid)
    if path.is_dir() and any((p / "images").is_dir() for p in path.iterdir() if p.is_dir()):
        return read_dsb2018(path)
    raise ValueError(
        f"{path}: not a dataset unetseg knows. Expected a .npz (images, masks), images/ + labels/ or "
        "images/ + masks/ folders, or the DSB 2018 layout (<id>/images/<id>.png + <id>/masks/*.png)"
    )
