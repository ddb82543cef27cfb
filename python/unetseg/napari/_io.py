"""The plugin's reader, writer and sample data (npe2 contributions, see napari.yaml)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _features(table, labels_max: int | None = None):
    """An object table as a napari Labels ``features`` frame: one row per label, its ``index`` the
    label value (how napari matches rows to labels)."""
    import pandas as pd

    frame = pd.DataFrame(table) if not isinstance(table, pd.DataFrame) else table.copy()
    if "label" in frame:
        frame.insert(0, "index", frame["label"].to_numpy())
    return frame


#: Label images of more pixels are opened lazily (dask over the file's tiles) instead of read whole.
LAZY_ABOVE = 1 << 26


def get_reader(path: str | list[str]):
    """A reader for unetseg's outputs: a slide output folder (``summary.json`` + ``labels.ome.tif`` or
    ``labels.ome.zarr``, opened lazily, with its objects table as features) or a ``NAME_labels.png|tif``
    of ``unetseg segment`` (with its rows of ``objects.csv``); None for anything else."""
    if isinstance(path, list):
        return None
    path = Path(path)
    if path.is_dir() and (path / "summary.json").exists():
        if (path / "labels.ome.tif").exists() or (path / "labels.ome.zarr").exists():
            return _read_slide_output
    if path.is_file() and path.name.endswith(("_labels.png", "_labels.tif")):
        return _read_labels_file
    return None


def _read_slide_output(path: str) -> list[tuple]:
    import dask.array as da
    import pandas as pd
    import zarr

    path = Path(path)
    if (path / "labels.ome.zarr").exists():  # its multiscales, full resolution first
        group = zarr.open_group(str(path / "labels.ome.zarr"), mode="r")
        levels = [d["path"] for d in group.attrs["multiscales"][0]["datasets"]]
        data = [da.from_zarr(group[level]) for level in levels]
        data = data if len(data) > 1 else data[0]
    else:
        import tifffile

        with tifffile.TiffFile(path / "labels.ome.tif") as tif:
            shape = tif.series[0].shape
            small = int(np.prod(shape)) <= LAZY_ABOVE
            data = tif.series[0].asarray() if small else None
        if data is None:  # lazily, tile by tile; the file stays open while the layer lives
            store = tifffile.imread(path / "labels.ome.tif", aszarr=True)
            group = zarr.open(store, mode="r")
            data = da.from_zarr(group if isinstance(group, zarr.Array) else group["0"])
    table = next((t for t in (path / "objects.csv", path / "objects.parquet") if t.exists()), None)
    features = None
    if table is not None:
        features = _features(pd.read_csv(table) if table.suffix == ".csv" else pd.read_parquet(table))
    # the labels' grid is the level read, resized by the slide's scale: in level-0 pixels, as the table
    downsample = float(json.loads((path / "summary.json").read_text()).get("downsample", 1.0))
    meta = {"name": f"{path.name} nuclei", "features": features, "scale": (downsample, downsample)}
    return [(data, meta, "labels")]


def _read_labels_file(path: str) -> list[tuple]:
    import pandas as pd

    from ..data import read_image

    path = Path(path)
    labels = read_image(path).astype(np.int32)
    name = path.name.rsplit("_labels", 1)[0]
    features = None
    table = path.parent / "objects.csv"
    if table.exists():
        rows = pd.read_csv(table)
        features = _features(rows[rows["image"].astype(str) == name].drop(columns="image"))
    return [(labels, {"name": f"{name} nuclei", "features": features}, "labels")]


def write_labels(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Writes a Labels layer as a label image (16-bit PNG, or 32-bit TIFF for .tif or more than 65535
    labels) and its object table beside it as ``NAME_objects.csv`` (the layer's features when it has
    them, else area, bbox and centroid measured from the labels)."""
    import pandas as pd
    from skimage.measure import regionprops_table

    from ..io import atomic_path
    from ..io import write_labels as write_label_image

    path = Path(path)
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"unetseg writes 2-D label images, got shape {data.shape}; save one plane")
    if path.suffix.lower() == ".png" and data.max(initial=0) > 65535:
        path = path.with_suffix(".tif")
    write_label_image(path, data)
    features = meta.get("features")
    if features is None or len(features) == 0:
        props = regionprops_table(data.astype(np.int32), properties=("label", "area", "bbox", "centroid"))
        features = pd.DataFrame(props)
    table = path.with_name(f"{path.stem}_objects.csv")
    with atomic_path(table) as tmp:
        pd.DataFrame(features).drop(columns=["index"], errors="ignore").to_csv(tmp, index=False)
    return [os.fspath(path), os.fspath(table)]


def _sample(name: str, rgb: bool) -> list[tuple]:
    from importlib import resources

    from ..data import read_image

    image = read_image(str(resources.files("unetseg").joinpath("assets", "samples", name)))
    return [(image, {"name": Path(name).stem, "rgb": rgb}, "image")]


def sample_fluorescence() -> list[tuple]:
    return _sample("fluorescence.png", rgb=False)


def sample_brightfield() -> list[tuple]:
    return _sample("brightfield.png", rgb=True)
