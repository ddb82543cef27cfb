"""Reading and writing images and label images, atomically."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


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
