"""Slide readers: row bands of a large image without loading it.

:func:`open_slide` opens TIFF / BigTIFF / OME-TIFF (tiled or striped, pyramidal: pick the level)
through tifffile's zarr view, zarr and OME-Zarr arrays, numpy ``.npy`` files (memory-mapped), any
in-memory or dask array, and OpenSlide formats (.svs, .ndpi, .mrxs, ...) through openslide-python
when it is installed. Every reader yields (h, W) gray or (h, W, 3) RGB bands: RGB(A) slides (H&E)
stay RGB; a multi-channel fluorescence slide is read at its nuclear ``channel``.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")


class SlideReader(abc.ABC):
    """A 2-D slide of ``shape`` (H, W) and ``channels`` (1 or 3) read in row bands."""

    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    description: str
    pixel_size: float | None = None
    """µm per pixel of level 0 (the file's physical size; None when it has none)"""
    downsample: float = 1.0
    """level-0 pixels per pixel of the level read"""

    @abc.abstractmethod
    def read(self, row0: int, row1: int, col0: int = 0, col1: int | None = None) -> np.ndarray:
        """Rows [row0, row1) and columns [col0, col1) (default: all): (h, w) or (h, w, 3), the slide's dtype."""

    def thumbnail(self, max_pixels: int = 4096 * 4096, block: tuple[int, int] = (1024, 4096)) -> np.ndarray:
        """Every k-th row and column (k: :func:`thumbnail_step`), read block by block (rows, columns)."""
        h, w = self.shape
        step = thumbnail_step(h, w, max_pixels)
        rows = []
        for r in range(0, h, block[0]):
            parts = [
                self.read(r, min(h, r + block[0]), c, min(w, c + block[1]))[(-r) % step :: step, (-c) % step :: step]
                for c in range(0, w, block[1])
            ]
            rows.append(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def thumbnail_step(h: int, w: int, max_pixels: int = 4096 * 4096) -> int:
    """The smallest k for which every k-th row and column of an (h, w) slide is at most max_pixels:
    the subsample the normalisation ranges of a slide come from (the whole slide up to 4096^2)."""
    step = 1
    while (h // step) * (w // step) > max_pixels:
        step += 1
    return step


@dataclass
class _Axes:
    """Where rows, columns and channels are in an array of named axes (other axes must have size 1)."""

    index: tuple
    channel_axis: int | None  # in the array after `index` is applied


def _axes(shape: tuple[int, ...], axes: str, channel: int | None, name: str, rgb: bool) -> tuple[_Axes, int]:
    """rgb: a channel axis of 3 or 4 is RGB(A) (TIFF samples, channels-last arrays, 8-bit data)."""
    axes = axes.upper().replace("S", "C")
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise ValueError(f"{name}: cannot find rows and columns in axes {axes!r} of shape {shape}")
    index: list = []
    kept = []
    for ax, size in zip(axes, shape):
        if ax in "YX":
            index.append(slice(None))
            kept.append(ax)
        elif ax == "C":
            if channel is not None:
                if not 0 <= channel < size:
                    raise ValueError(
                        f"{name}: channel {channel} asked for, but the slide has {size} channel(s) "
                        f"(axes {axes}, shape {shape})"
                    )
                index.append(channel)
            elif size in (3, 4) and rgb:
                index.append(slice(0, 3))  # RGB; alpha dropped
                kept.append("C")
            elif size == 1:
                index.append(0)
            else:
                raise ValueError(
                    f"{name} has {size} channels (axes {axes}, shape {shape}); choose the nuclear "
                    f"channel with channel=N (--channel N on the command line)"
                )
        elif size == 1:
            index.append(0)
        else:
            raise ValueError(
                f"{name} has {size} planes along axis {ax!r} (axes {axes}, shape {shape}); "
                "unetseg segments 2-D slides: pass a 2-D plane (e.g. one z or time point) as an array"
            )
    if channel is not None and "C" not in axes:
        if channel != 0:
            raise ValueError(f"{name} has one channel (axes {axes}); channel {channel} does not exist")
    channel_axis = kept.index("C") if "C" in kept else None
    return _Axes(tuple(index), channel_axis), 3 if channel_axis is not None else 1


def _guess_axes(shape: tuple[int, ...], name: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[2] <= 4:
        return "YXC"
    if len(shape) == 3 and shape[0] <= 64:
        return "CYX"
    raise ValueError(f"{name} has shape {shape}; expected (H, W), (H, W, C) or (C, H, W)")


class ArrayReader(SlideReader):
    """Any array with numpy slicing: numpy (memory-mapped .npy), zarr, dask, tifffile's zarr view.
    ``axes``: letters Y, X, C (or S) and others of size 1; guessed from the shape when None."""

    def __init__(self, array, axes: str | None = None, channel: int | None = None, name: str = "array", closer=None):
        self.array = array
        shape = tuple(int(s) for s in array.shape)
        self.description = name
        given = (axes or _guess_axes(shape, name)).upper()
        rgb = "S" in given or given.endswith("C") or np.dtype(array.dtype) == np.uint8
        letters = given.replace("S", "C")
        self._axes, self.channels = _axes(shape, letters, channel, name, rgb)
        self._row_index, self._col_index = letters.index("Y"), letters.index("X")
        self.shape = (shape[letters.index("Y")], shape[letters.index("X")])
        self.dtype = np.dtype(array.dtype)
        self._closer = closer
        if self.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
            raise TypeError(f"{name} has dtype {self.dtype}; expected uint8, uint16 or float32/64")

    def read(self, row0: int, row1: int, col0: int = 0, col1: int | None = None) -> np.ndarray:
        index = list(self._axes.index)
        index[self._row_index] = slice(row0, row1)
        index[self._col_index] = slice(col0, col1)
        band = np.asarray(self.array[tuple(index)])
        if self._axes.channel_axis is not None:
            band = np.moveaxis(band, self._axes.channel_axis, -1)
        return np.ascontiguousarray(band)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


class ScaledReader(SlideReader):
    """A slide resized by ``factor`` on the fly, read like any slide: each output pixel is the
    antialiased linear interpolation (a triangle filter widened by 1 / factor when shrinking, the
    weights renormalised at the slide's edges, as torch's antialiased bilinear resize) of the source
    pixels around its centre in slide coordinates, so a pixel has the same value in whatever block
    it is read (each axis resized to ``round(size * factor)``, at that axis's own scale). Its
    ``downsample`` is the source's over ``factor``: tables and polygons of a run on
    it land on level 0 as a pyramid level's do. Reads float32."""

    def __init__(self, source: SlideReader, factor: float):
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive number, got {factor}")
        self.source, self.factor = source, float(factor)
        h, w = source.shape
        self.shape = (max(1, round(h * factor)), max(1, round(w * factor)))
        self.channels = source.channels
        self.dtype = np.dtype(np.float32)
        self.description = f"{source.description} at {factor:.4g}x"
        self.pixel_size = source.pixel_size
        self.downsample = source.downsample * h / self.shape[0]

    def read(self, row0: int, row1: int, col0: int = 0, col1: int | None = None) -> np.ndarray:
        col1 = self.shape[1] if col1 is None else col1
        (h, w), (sh, sw) = self.source.shape, self.shape
        rows, (r0, r1) = taps(row0, row1, sh / h, h)  # each axis's own scale, as torch's resize to a size
        cols, (c0, c1) = taps(col0, col1, sw / w, w)
        block = self.source.read(r0, r1, c0, c1).astype(np.float32)
        block = apply_taps(block, rows, r0, axis=0)
        return apply_taps(block, cols, c0, axis=1)

    def close(self) -> None:
        self.source.close()


def taps(start: int, stop: int, scale: float, size: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[int, int]]:
    """Source indices and weights (n, K) of output pixels [start, stop) of an axis of ``size``
    source pixels resized by ``scale``, and the source range they read."""
    support = max(1.0, 1.0 / scale)  # the filter's half-width in source pixels
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    first = np.floor(centres - support).astype(np.int64) + 1
    k = int(np.ceil(2 * support)) + 1
    index = first[:, None] + np.arange(k)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(index - centres[:, None]) / support)
    weights[(index < 0) | (index >= size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    index = np.clip(index, 0, size - 1)
    return (index, weights.astype(np.float32)), (int(index.min()), int(index.max()) + 1)


def apply_taps(block: np.ndarray, table: tuple[np.ndarray, np.ndarray], offset: int, axis: int) -> np.ndarray:
    """`block` resized along `axis` by a tap table of :func:`taps`; `offset` is the source index of the
    block's first pixel on that axis. Float32."""
    index, weights = table
    block = np.moveaxis(block, axis, 0)
    out = np.zeros((index.shape[0], *block.shape[1:]), np.float32)
    extra = (1,) * (block.ndim - 1)
    for k in range(index.shape[1]):
        out += weights[:, k].reshape(-1, *extra) * block[index[:, k] - offset]
    return np.moveaxis(out, 0, axis)


class OpenSlideReader(SlideReader):
    """OpenSlide formats through openslide-python: RGB at pyramid ``level``."""

    def __init__(self, path: Path, level: int = 0):
        try:
            import openslide
        except ImportError:
            raise ImportError(
                f"{path.name} is an OpenSlide format; reading it needs openslide-python and the OpenSlide "
                "library: pip install 'unetseg[openslide]' (or pip install openslide-python openslide-bin)"
            ) from None
        self._slide = openslide.OpenSlide(str(path))
        if not 0 <= level < self._slide.level_count:
            count = self._slide.level_count
            self._slide.close()
            raise ValueError(f"{path.name} has {count} pyramid level(s) (0..{count - 1}); level {level} asked for")
        self.level = level
        w, h = self._slide.level_dimensions[level]
        self.shape, self.channels, self.dtype = (h, w), 3, np.dtype(np.uint8)
        self._downsample = self.downsample = float(self._slide.level_downsamples[level])
        mpp = self._slide.properties.get("openslide.mpp-x")
        self.pixel_size = float(mpp) if mpp else None
        self.description = (
            f"{path.name} (OpenSlide {self._slide.properties.get('openslide.vendor', '?')}, level {level})"
        )

    def read(self, row0: int, row1: int, col0: int = 0, col1: int | None = None) -> np.ndarray:
        col1 = self.shape[1] if col1 is None else col1
        # OpenSlide takes the location in level-0 pixels
        x, y = int(round(col0 * self._downsample)), int(round(row0 * self._downsample))
        region = self._slide.read_region((x, y), self.level, (col1 - col0, row1 - row0))
        rgba = np.asarray(region)
        return np.ascontiguousarray(rgba[..., :3])

    def close(self) -> None:
        self._slide.close()


def _tiff(path: Path, level: int, channel: int | None, series: int) -> SlideReader:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        if not 0 <= series < len(tif.series):
            raise ValueError(f"{path.name} has {len(tif.series)} image series; series {series} asked for")
        s = tif.series[series]
        if not 0 <= level < len(s.levels):
            raise ValueError(
                f"{path.name} has {len(s.levels)} pyramid level(s) (0..{len(s.levels) - 1}); level {level} asked for"
            )
        page = s.levels[level]
        store = s.aszarr(level=level)
        kind = "OME-TIFF" if tif.is_ome else ("BigTIFF" if tif.is_bigtiff else "TIFF")

        def close():
            store.close()
            tif.close()

        reader = ArrayReader(
            zarr.open(store, mode="r"), page.axes, channel, f"{path.name} ({kind}, level {level})", closer=close
        )
        reader.pixel_size = _tiff_pixel_size(tif)
        x = page.axes.index("X")
        reader.downsample = s.levels[0].shape[s.levels[0].axes.index("X")] / page.shape[x]
        return reader
    except BaseException:
        tif.close()
        raise


_MICRONS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
}


def file_pixel_size(path: str | os.PathLike) -> float | None:
    """µm per pixel of an image file, from its TIFF metadata (see :func:`_tiff_pixel_size`); None
    for other formats or without it."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _tiff_pixel_size(tif)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None


def _tiff_pixel_size(tif) -> float | None:
    """µm per level-0 pixel (x) of a TIFF: OME PhysicalSizeX, else ImageJ's unit with the resolution
    tags, else the resolution tags with ResolutionUnit (inch or centimetre); None without them."""
    import tifffile

    try:
        if tif.is_ome:
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
            if "PhysicalSizeX" in pixels:
                return float(pixels["PhysicalSizeX"]) * _MICRONS.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
        page = tif.pages[0]
        numerator, denominator = page.tags["XResolution"].value
        per_unit = numerator / denominator  # pixels per unit
        if per_unit <= 0 or (numerator, denominator) == (1, 1):
            return None
        unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        if unit in _MICRONS:
            return _MICRONS[unit] / per_unit
        resolution_unit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else 2
        microns = {2: 25400.0, 3: 10000.0}.get(int(resolution_unit))
        return microns / per_unit if microns else None
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _zarr(path: Path, level: int, channel: int | None) -> SlideReader:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return ArrayReader(node, None, channel, f"{path.name} (zarr)")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        raise ValueError(
            f"{path.name} is a zarr group without OME-Zarr 'multiscales' metadata; open one of its "
            f"arrays instead: {arrays}"
        )
    datasets = multiscales[0]["datasets"]
    if not 0 <= level < len(datasets):
        raise ValueError(
            f"{path.name} has {len(datasets)} pyramid level(s) (0..{len(datasets) - 1}); level {level} asked for"
        )
    axes = multiscales[0].get("axes")
    letters = "".join((a["name"] if isinstance(a, dict) else a)[0] for a in axes) if axes else None
    reader = ArrayReader(node[datasets[level]["path"]], letters, channel, f"{path.name} (OME-Zarr, level {level})")
    scales = [_ngff_scale(d) for d in (datasets[0], datasets[level])]
    if letters and all(scales):
        x = letters.upper().index("X")
        unit = (axes[x].get("unit") if isinstance(axes[x], dict) else None) or "micrometer"
        reader.pixel_size = scales[0][x] * _MICRONS.get(unit, 1.0)
        reader.downsample = scales[1][x] / scales[0][x]
    return reader


def _ngff_scale(dataset: dict) -> list[float] | None:
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return None


def open_slide(source, *, level: int = 0, channel: int | None = None, series: int = 0) -> SlideReader:
    """A reader for ``source``: a path (TIFF family, .zarr, .npy, OpenSlide formats) or an array
    ((H, W), (H, W, C) or (C, H, W); numpy, zarr or dask). ``level``: pyramid level (0 is full
    resolution); ``channel``: the nuclear channel of a multi-channel slide."""
    if isinstance(source, SlideReader):
        return source
    if not isinstance(source, (str, os.PathLike)):
        if not hasattr(source, "shape") or not hasattr(source, "dtype"):
            raise TypeError(f"a slide is a path or an array, got {type(source).__name__}")
        return ArrayReader(source, None, channel, "array")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"slide {str(path)!r} does not exist")
    name = path.name.lower()
    if name.endswith(".zarr") or path.is_dir():
        return _zarr(path, level, channel)
    if name.endswith(".npy"):
        return ArrayReader(np.load(path, mmap_mode="r"), None, channel, f"{path.name} (npy, memory-mapped)")
    if name.endswith(OPENSLIDE_SUFFIXES):
        if channel is not None:
            raise ValueError(f"{path.name} is an RGB OpenSlide slide; it has no channel to choose")
        return OpenSlideReader(path, level)
    if name.endswith(TIFF_SUFFIXES):
        return _tiff(path, level, channel, series)
    raise ValueError(
        f"{path.name}: unknown slide format; expected TIFF/OME-TIFF ({', '.join(TIFF_SUFFIXES)}), "
        f".zarr, .npy or an OpenSlide format ({', '.join(OPENSLIDE_SUFFIXES)})"
    )
