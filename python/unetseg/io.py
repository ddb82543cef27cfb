"""Reading and writing images and label images, atomically."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def check_output_folder(path: str | os.PathLike) -> Path:
    """Checks, before any work, that `path` can be an output folder: not an existing file, and
    writable (or creatable). Raises ValueError naming the path and the fix."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"the output {str(path)!r} is a file, not a folder; give a folder path")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot write to the output folder {str(path)!r} ({str(existing)!r} is not writable); "
            "give a folder you can write to"
        )
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds, so
    a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Writes an (H, W) label image: 16-bit PNG when labels fit (and the name ends in .png), else
    32-bit TIFF."""
    import cv2
    import tifffile

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if labels.max(initial=0) > 65535:
            raise ValueError(f"{path}: {labels.max()} objects do not fit a 16-bit PNG; write a .tif instead")
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), labels.astype(np.uint16)):
                raise OSError(f"cannot write {path}")
    elif suffix in (".tif", ".tiff"):
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels.astype(np.int32), compression="zlib")
    else:
        raise ValueError(f"label images are written as .png or .tif, got {path}")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an (H, W) or (H, W, 3|4) RGB(A) image, 8 or 16 bits: PNG/JPEG through OpenCV, TIFF
    through tifffile."""
    import cv2
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(tmp, image, compression="zlib")
        else:
            bgr = image
            if image.ndim == 3:
                bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(tmp), bgr):
                raise OSError(f"cannot write {path}")


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files from files, folders (their images, not recursive) and glob patterns, in order,
    each once. A name that matches nothing is an error naming it."""
    import glob

    from .data.readers import IMAGE_SUFFIXES

    found: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            matches = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"no images match {text!r}")
            found += matches
        elif Path(text).is_dir():
            matches = sorted(p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise FileNotFoundError(f"folder {text!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += matches
        elif Path(text).is_file():
            found.append(Path(text))
        else:
            raise FileNotFoundError(f"{text!r} is not a file, a folder or a glob pattern that matches images")
    return list(dict.fromkeys(found))


def write_csv(path: str | os.PathLike, header: list[str], rows) -> None:
    """Writes a CSV file atomically."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def overlay(image: np.ndarray, pred: np.ndarray, true: np.ndarray | None = None) -> np.ndarray:
    """An RGB uint8 picture: the image in gray, predicted outlines in magenta, true ones in green."""
    from .data import Normalisation, to_channels

    gray = np.clip(Normalisation()(to_channels(image, 1))[..., 0], 0, 1)
    gray *= 255  # in place: a large image's overlay is the CLI's largest temporary
    rgb = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    del gray
    if true is not None:
        rgb[inner_boundaries(true)] = (0, 220, 0)
    rgb[inner_boundaries(pred)] = (255, 0, 255)
    return rgb


def inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """The object pixels with a 4-neighbour of another label (background included): skimage's
    ``find_boundaries(labels, mode="inner")``, with one byte a pixel of temporaries where it holds
    two dilated copies of the labels."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        head = [slice(None)] * labels.ndim
        tail = [slice(None)] * labels.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        differs = labels[tuple(head)] != labels[tuple(tail)]
        edge[tuple(head)] |= differs
        edge[tuple(tail)] |= differs
        del differs
    edge &= labels != 0
    return edge


def write_overlay(path: Path, image: np.ndarray, pred: np.ndarray, true: np.ndarray | None = None) -> None:
    """Writes :func:`overlay` as a PNG file, atomically."""
    import cv2

    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), overlay(image, pred, true)[..., ::-1])
