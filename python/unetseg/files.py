"""``segment_files``: image files in, a folder of labels, overlays and tables out (what ``unetseg
segment`` runs; :func:`unetseg.slide.segment_slide` is its twin for one large slide)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .geometry import (
    checked_pixel_size,
    detection_feature,
    measure,
    micron_columns,
    object_outlines,
    write_geojson,
    write_imagej_rois,
)
from .io import atomic_path, collect_images, overlay, write_csv, write_image, write_labels
from .ops import OBJECT_COLUMNS
from .segment import Runner, Segmentation

#: Name endings of the files segment_files writes per image: never read back as inputs.
OUTPUT_SUFFIXES = ("_labels.png", "_labels.tif", "_overlay.png", ".geojson", "_rois.zip")
#: The tables segment_files writes for a whole run.
OUTPUT_TABLES = ("objects.csv", "summary.csv")


@dataclass
class ImageSummary:
    name: str
    """the output name (the file's stem, made unique)"""
    path: Path
    shape: tuple[int, ...]
    count: int
    median_area: float
    diameter: float
    pixel_size: float | None = None
    """µm per pixel (given, or the file's), None when unknown"""


@dataclass
class FilesResult:
    output: Path
    images: list[ImageSummary] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """(path, why) of each image that could not be read or segmented"""

    @property
    def count(self) -> int:
        return sum(s.count for s in self.images)


def previous_outputs(folder: str | os.PathLike) -> list[Path]:
    """The files in `folder` that segment_files writes (an earlier run's results), tables first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    tables = [folder / name for name in OUTPUT_TABLES if (folder / name).exists()]
    return tables + sorted(p for p in folder.iterdir() if p.name.endswith(OUTPUT_SUFFIXES))


def input_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """:func:`unetseg.io.collect_images` without the files segment_files writes (so segmenting a
    folder into itself twice does not segment its own outputs)."""
    return [p for p in collect_images(inputs) if not p.name.endswith(OUTPUT_SUFFIXES)]


def segment_files(
    paths: list[Path],
    output: str | os.PathLike,
    runner: Runner,
    *,
    overlays: bool = True,
    geojson: bool = True,
    rois: bool = False,
    plane: int | None = None,
    measurements: bool = False,
    pixel_size: float | None = None,
    progress: bool = True,
    **options,
) -> FilesResult:
    """Segments image files into `output`: per image ``NAME_labels.png`` (16-bit; ``.tif`` above 65535
    nuclei), ``NAME_overlay.png``, ``NAME.geojson`` (one valid polygon per nucleus, a QuPath detection:
    :mod:`unetseg.geometry`) and with `rois` ``NAME_rois.zip`` (an ImageJ ROI set for Fiji), and
    ``objects.csv`` (one row per nucleus, columns
    :data:`unetseg.ops.OBJECT_COLUMNS` after ``image``) and ``summary.csv`` (one row per image), all
    written atomically (files already there under those names are replaced: `unetseg segment` refuses
    a folder holding :func:`previous_outputs` without ``--overwrite``). Images that cannot be read or
    segmented are skipped and listed in ``failed`` (when none is left, no tables are written); the
    others are batched by ``runner.batch_size``. A TIFF stack (Z, T... axes) is
    segmented plane by plane, each plane named ``NAME_z003`` (its axis letters and indices), or only
    plane `plane` (0-based, file order). With `measurements` the objects table gains each object's
    intensities per channel of the image and its shape (:func:`unetseg.geometry.measure`).
    `pixel_size` (µm per pixel; default: each file's own, from its TIFF metadata) adds µm columns
    (:func:`unetseg.geometry.micron_columns`) to its objects. `options`: as :meth:`Runner.segment`.
    """
    from tqdm.auto import tqdm

    from .slide.readers import file_pixel_size

    pixel_size = checked_pixel_size(pixel_size)
    pixel_size_of = functools.lru_cache(maxsize=None)(file_pixel_size)  # once per file, not per plane
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    result = FilesResult(output)
    rows: list[dict] = []
    header = dict.fromkeys(["image", *OBJECT_COLUMNS])  # ordered columns
    names: set[str] = set()
    with tqdm(total=len(paths), unit="img", desc="segment", disable=not progress) as bar:
        for start in range(0, len(paths), runner.batch_size):
            chunk = paths[start : start + runner.batch_size]
            for (path, suffix, image), seg in _segment_chunk(chunk, runner, options, result.failed, plane):
                name = _unique(path.stem + suffix, names)
                _write_image_outputs(output, name, image, seg, overlays, geojson, rois)
                columns = {"image": [name] * seg.count, **seg.objects.columns()}
                microns = pixel_size or pixel_size_of(path)
                if microns:
                    columns.update(micron_columns(columns, microns))
                if measurements:
                    columns.update(measure(seg.labels, image))
                header.update(dict.fromkeys(columns))  # images of other channel counts add columns
                rows += [{k: _cell(c[i]) for k, c in columns.items()} for i in range(seg.count)]
                area = seg.objects.area
                result.images.append(
                    ImageSummary(
                        name,
                        path,
                        image.shape,
                        seg.count,
                        float(np.median(area)) if len(area) else 0.0,
                        seg.diameter,
                        microns,
                    )
                )
            bar.update(len(chunk))
    if not result.images:  # every image failed: no empty tables in the way of the run that fixes it
        return result
    write_csv(output / "objects.csv", list(header), [[row.get(k, "") for k in header] for row in rows])
    write_csv(
        output / "summary.csv",
        ["image", "height", "width", "count", "median_area", "diameter", "pixel_size_um"],
        [
            [s.name, s.shape[0], s.shape[1], s.count, f"{s.median_area:.1f}", f"{s.diameter:.1f}", s.pixel_size or ""]
            for s in result.images
        ],
    )
    return result


def _segment_chunk(
    paths: list[Path], runner: Runner, options: dict, failed: list, plane: int | None
) -> list[tuple[tuple[Path, str, np.ndarray], Segmentation]]:
    """Reads and segments a batch of files (stacks plane by plane: each plane an image named with
    its position); a bad file is recorded in `failed` and the rest go on."""
    from .data.readers import read_planes

    items = []
    for path in paths:
        try:
            items += [(path, suffix, image) for suffix, image in read_planes(path, plane)]
        except ValueError as e:
            failed.append((path, str(e)))
    if isinstance(options.get("channel"), str):  # a channel name: looked up file by file
        return _segment_each(items, runner, options, failed)
    try:
        return list(zip(items, runner.segment([im for _, _, im in items], **options)))
    except (ValueError, TypeError, RuntimeError):  # some image is bad: find which, keep the rest
        return _segment_each(items, runner, options, failed)


def _segment_each(items: list, runner: Runner, options: dict, failed: list) -> list:
    """Segments the images one by one (a channel name resolved per file); a bad one is recorded in
    `failed` with its file and the rest go on."""
    from .data.readers import channel_index

    done = []
    for item in items:
        try:
            name = options.get("channel")
            own = {**options, "channel": channel_index(item[0], name)} if isinstance(name, str) else options
            done.append((item, runner.segment([item[2]], **own)[0]))
        except (ValueError, TypeError, RuntimeError) as e:
            failed.append((item[0], str(e).splitlines()[0]))
    return done


def _write_image_outputs(
    output: Path, name: str, image: np.ndarray, seg: Segmentation, overlays: bool, geojson: bool, rois: bool
) -> None:
    suffix = ".png" if seg.count <= 65535 else ".tif"
    write_labels(output / f"{name}_labels{suffix}", seg.labels)
    if overlays:
        write_image(output / f"{name}_overlay.png", overlay(image, seg.labels))
    if geojson or rois:
        polygons = object_outlines(seg.labels, seg.objects.bbox)
    if geojson:
        with atomic_path(output / f"{name}.geojson") as tmp, open(tmp, "w") as f:
            write_geojson(f, map(detection_feature, polygons, seg.objects.label, seg.objects.area))
    if rois:
        write_imagej_rois(output / f"{name}_rois.zip", polygons, seg.objects.label)


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _cell(value) -> str:
    """A table cell: names and integers as they are, measurements to 4 decimals."""
    if isinstance(value, str):
        return value
    return str(int(value)) if isinstance(value, (int, np.integer)) else f"{value:.4f}"
