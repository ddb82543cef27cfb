"""``segment_slide``: a slide of any size, in blocks, with memory that does not grow with it.

Pass 1, block by block (row bands of ``band_height`` rows, each cut into blocks of
``block_width`` columns, left to right): read the block plus the network's halo around it, run
the runner on it (tiles over the block's own pixels only, the halo serving as their context;
normalised with ranges computed once for the whole slide) and hand the block of the probability
map to the :class:`StreamLabeller`.
Its labels go into a provisional label file (raw int32, written in place through a memory map of
just those rows), finished objects to an object file and their outlines to a polygon file, all in
``OUTPUT/.unetseg-partial``; after each band a state file records how far the run got, so an
interrupted run goes on from its last finished band.

Pass 2 numbers objects in raster order of their first pixel (a lookup table) and writes the
outputs, each under a temporary name renamed into place when complete:

- ``labels.ome.tif`` (tiled pyramidal BigTIFF, int32, zlib) or ``labels.ome.zarr`` (OME-Zarr NGFF
  0.4 image-label with multiscales);
- ``objects.csv`` or ``objects.parquet`` (label, area, bbox, centroid, mean probability);
- ``objects.geojson``: one polygon per object (a QuPath detection), in level-0 pixel coordinates;
- with ``rois``, ``objects_rois.zip``: the same polygons as an ImageJ ROI set (Fiji's ROI Manager);
- ``summary.json``: slide, model, options, object count and where the time went.

Peak memory: a block (plus halo) of the slide, its probabilities and the network's activations on
one batch of tiles, the carries of the labeller (the components crossing block edges: a few rows
of the slide's width), and the object table (a few numbers per object). Neither the slide's height
nor, beyond those few carried rows, its width changes it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._C import min_area_at
from ..geometry import (
    LENGTH_COLUMNS,
    checked_pixel_size,
    detection_feature,
    measure_in_windows,
    micron_columns,
    outline_polygons,
    write_geojson,
    write_imagej_rois,
)
from ..io import atomic_path
from ..segment import ObjectTable, signal_channel
from .readers import ScaledReader, SlideReader, apply_taps, open_slide, taps
from .stream import StreamLabeller, raster_numbering

PARTIAL = ".unetseg-partial"
#: The outputs besides the label image and the object table (LABEL_FORMATS, TABLE_FORMATS).
GEOJSON, ROIS, SUMMARY = "objects.geojson", "objects_rois.zip", "summary.json"
OBJECT_FIELDS = 10  # provisional id, first pixel, then the 8 statistics


@dataclass
class SlideResult:
    """Where the outputs are, the object count and the seconds spent per stage."""

    labels: Path
    table: Path
    geojson: Path | None
    summary: Path
    count: int
    shape: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)
    rois: Path | None = None
    """objects_rois.zip, when asked for"""
    scale: float = 1.0
    """the factor the level read was resized by for the network (1: its own scale; see ``diameter``)"""


def _resolve(runner, labelling, threshold, boundary_threshold, min_area, connectivity) -> dict:
    """The keyword arguments of StreamLabeller: the runner's post-processing for these options."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    options = runner.resolve(
        threshold=threshold, min_area=min_area, labelling=labelling, boundary_threshold=boundary_threshold
    )
    return {**options, "connectivity": int(connectivity)}


class _Work:
    """The partial run's files in OUTPUT/.unetseg-partial and its state after the last finished band."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.labels, self.objects, self.outlines = (
            folder / "labels.i32",
            folder / "objects.f64",
            folder / "outlines.jsonl",
        )
        self.state = folder / "state.npz"

    def load(self, fingerprint: dict) -> dict | None:
        if not self.state.is_file():
            return None
        with np.load(self.state, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        saved = json.loads(str(state["fingerprint"]))
        saved.setdefault("precision", "float32")  # runs saved before the option existed
        if saved != fingerprint:
            changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise ValueError(
                f"cannot resume: the interrupted run in {self.folder} used other settings "
                f"({', '.join(changed)}); run without resume to start over"
            )
        for path, key in ((self.objects, "objects_bytes"), (self.outlines, "outlines_bytes")):
            with open(path, "r+b") as f:  # drop whatever was written after the state was saved
                f.truncate(int(state[key]))
        return state

    def save(
        self, fingerprint: dict, band: int, ranges, read_channel: int | None, labeller: StreamLabeller, seconds: dict
    ) -> None:
        state = {f"labeller_{k}": np.asarray(v) for k, v in labeller.state_dict().items()}
        state.update(
            fingerprint=json.dumps(fingerprint),
            band=band,
            ranges_low=np.asarray(ranges[0]),
            ranges_high=np.asarray(ranges[1]),
            read_channel=-1 if read_channel is None else read_channel,
            seconds=json.dumps(seconds),
            objects_bytes=self.objects.stat().st_size,
            outlines_bytes=self.outlines.stat().st_size,
        )
        with atomic_path(self.state) as tmp, open(tmp, "wb") as f:
            np.savez(f, **state)


def segment_slide(
    slide,
    output: str | os.PathLike,
    model=None,
    *,
    level: int = 0,
    channel: int | None = None,
    device: str = "auto",
    batch_size: int = 4,
    band_height: int = 1024,
    block_width: int = 4096,
    tile_size: int = 1024,
    tta: bool = False,
    labelling: str = "auto",
    threshold: float | None = None,
    boundary_threshold: float | None = None,
    min_area: int | None = None,
    connectivity: int = 8,
    labels_format: str = "ome-tiff",
    table_format: str = "csv",
    geojson: bool = True,
    rois: bool = False,
    measurements: bool = False,
    resume: bool = False,
    restart: bool = False,
    precision: str = "auto",
    pixel_size: float | None = None,
    diameter: float | str | None = "auto",
    progress: bool = True,
) -> SlideResult:
    """Segments nuclei in a whole slide, streamed in row bands; writes labels, an object table and
    polygons into the folder ``output`` (see the module's docstring) and returns a :class:`SlideResult`.

    slide: a path (TIFF/OME-TIFF/BigTIFF, .zarr/OME-Zarr, .npy, OpenSlide formats) or an array;
        ``level`` picks the pyramid level, ``channel`` the nuclear channel of a multi-channel slide.
    model: a model file, a :class:`unetseg.Runner` or None for the bundled default model.
    band_height, block_width, tile_size: the blocks the slide is read in (rows, columns) and the
        tile side within them. Memory grows with band_height x block_width, not with the slide; a
        block's halo is only tile context, so a band of ``tile_size`` rows (the default) costs the
        network no more than a taller one, and blocks a multiple of ``tile_size`` wide cut no tiles.
    tta, precision, labelling, threshold, boundary_threshold, min_area, connectivity: as
        :func:`unetseg.segment_batch`.
    labels_format: "ome-tiff" (pyramidal OME-TIFF) or "ome-zarr" (OME-Zarr NGFF image-label with
        multiscales); table_format: "csv" or "parquet" (needs pyarrow).
    rois: also write objects_rois.zip, an ImageJ ROI set of the same polygons (level-0 pixels) for
        Fiji's ROI Manager.
    measurements: add to the table each object's intensities (every channel of the slide as read)
        and shape (:func:`unetseg.geometry.measure`, lengths in level-0 pixels), measured window by
        window (memory stays flat).
    resume: go on with an interrupted run in the same output folder (same slide and settings);
        restart: discard it, or a finished run's results there, and start over. An interrupted run
        with neither, or a finished one without restart, is an error: nothing a run has done is
        thrown away unasked.
    pixel_size: µm per level-0 pixel, overriding the file's (OME, ImageJ or TIFF resolution tags,
        OME-Zarr scale, OpenSlide mpp); with one the table gains µm columns and the labels their
        physical size.
    diameter: the slide's median nucleus diameter in pixels of the level read, for models with a
        canonical diameter (``Runner.diameter``): the network reads the slide resized by canonical /
        diameter (one factor for the whole slide, so seams stay exact) and its probabilities are
        resized back, so the labels come on the slide's own grid (``scale`` in summary.json).
        ``band_height`` and ``block_width`` are then the network's blocks (a slide resized up is
        labelled in blocks smaller by the factor, so memory stays bounded). "auto" (default):
        estimated on sample crops of the slide; None: the slide's own scale. Within 25% of the
        canonical diameter the slide is not resized.
    Coordinates: the object table and the GeoJSON are in level-0 pixels whatever ``level`` was read
    (the downsample is in summary.json), so they land right on the full-resolution slide in QuPath;
    the label image keeps the level's grid. The labels equal those of segmenting the whole slide at
    once with the same normalisation.
    """
    from ..segment import Runner

    if labels_format not in LABEL_FORMATS:
        raise ValueError(f"labels_format must be one of {list(LABEL_FORMATS)}, got {labels_format!r}")
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table_format must be one of {list(TABLE_FORMATS)}, got {table_format!r}")
    if table_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError("table_format 'parquet' needs pyarrow: pip install pyarrow (or use 'csv')") from None
    runner = (
        model if isinstance(model, Runner) else Runner(model, device=device, batch_size=batch_size, precision=precision)
    )
    options = _resolve(runner, labelling, threshold, boundary_threshold, min_area, connectivity)
    multiple = int(runner.metadata["size_multiple"])
    if min(band_height, block_width, tile_size) < 1:
        raise ValueError(
            f"band_height, block_width and tile_size must be >= 1 pixel, got {band_height}, "
            f"{block_width} and {tile_size}"
        )
    # blocks start on the network's pooling grid
    band_height, block_width = (-(-n // multiple) * multiple for n in (band_height, block_width))
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {str(output)!r} is a file; segment_slide writes into a folder")
    owned = isinstance(slide, (str, os.PathLike))
    reader: SlideReader = open_slide(slide, level=level, channel=channel)
    try:  # a slide opened here is closed here, whatever stops the run (a ScaledReader closes its source)
        if pixel_size is not None:
            reader.pixel_size = checked_pixel_size(pixel_size)
        interrupted = (output / PARTIAL / "state.npz").exists()
        if interrupted and not (resume or restart):
            raise ValueError(
                f"{str(output)!r} holds an interrupted run; continue it with resume=True (--resume), or discard it "
                "and start over with restart=True (--restart)"
            )
        finished = finished_outputs(output)
        if finished and not (restart or interrupted):
            raise ValueError(
                f"{str(output)!r} holds a finished run's results ({', '.join(p.name for p in finished)}); give "
                "another output folder, or replace them with restart=True (--restart)"
            )
        factor = slide_factor(reader, runner, diameter)
        job = _Job(
            reader,
            ScaledReader(reader, factor) if factor != 1.0 else reader,
            factor,
            runner,
            options,
            output,
            (band_height, block_width),
            tile_size,
            tta,
            labels_format,
            table_format,
            geojson,
            rois,
            measurements,
            resume,
            progress,
            slide,
            level,
            channel,
        )
        return _run(job)
    finally:
        if owned:
            reader.close()


def slide_factor(reader: SlideReader, runner, diameter: float | str | None) -> float:
    """The factor a slide is resized by for the network: the model's canonical diameter over the
    slide's (given, or the median of the runner's estimates on sample crops), within the runner's
    limits, and 1 within its tolerance (``_C.DIAMETER_TOLERANCE``) or for models without one."""
    from .. import _C

    canonical = runner.diameter
    if diameter is None or (diameter == "auto" and not canonical):
        return 1.0
    if not canonical:
        raise ValueError(
            f"diameter {diameter} given, but this model has no canonical nucleus diameter (it was trained "
            "without rescaling); leave diameter unset"
        )
    if diameter == "auto":
        diameter = estimate_diameter(reader, runner)
        if diameter is None:  # no nuclei in the samples: nothing to go by
            return 1.0
    if isinstance(diameter, str) or not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"diameter must be a positive number of pixels or 'auto', got {diameter!r}")
    factor = canonical / float(diameter)
    if not _C.MIN_RESCALE <= factor <= _C.MAX_RESCALE:
        raise ValueError(
            f"diameter {diameter} pixels would resize the slide by {factor:.4g}, outside [{_C.MIN_RESCALE}, "
            f"{_C.MAX_RESCALE}] of the model's canonical diameter {canonical}; expected a diameter between "
            f"{canonical / _C.MAX_RESCALE:g} and {canonical / _C.MIN_RESCALE:g} pixels"
        )
    return 1.0 if abs(np.log(factor)) <= np.log(_C.DIAMETER_TOLERANCE) else factor


def estimate_diameter(reader: SlideReader, runner, crops: int = 4, side: int = 1024) -> float | None:
    """The median nucleus diameter of a slide (pixels of the level read): the runner's own estimate
    (``diameter="auto"``) on the `crops` crops of `side` pixels whose thumbnail cells vary most
    (tissue rather than background), the median over those that hold at least 10 nuclei; None when
    none does."""
    h, w = reader.shape
    side = min(side, h, w)
    thumb = reader.thumbnail(max_pixels=256 * 256)
    step_r, step_c = h / thumb.shape[0], w / thumb.shape[1]
    cells = []
    for r in range(0, h - side + 1, side):
        for c in range(0, w - side + 1, side):
            cell = thumb[int(r / step_r) : int((r + side) / step_r) + 1, int(c / step_c) : int((c + side) / step_c) + 1]
            cells.append((float(np.std(cell)), r, c))
    estimates = []
    for _, r, c in sorted(cells, reverse=True)[:crops]:
        seg = runner.segment([reader.read(r, r + side, c, c + side)], diameter="auto")[0]
        if seg.count >= 10:
            estimates.append(seg.diameter)
    return float(np.median(estimates)) if estimates else None


@dataclass
class _Job:
    """What one segment_slide call does: its reader and runner, resolved labelling options, output
    folder and formats, block shape (rows, columns) and the settings a resume must match."""

    reader: SlideReader
    scaled: SlideReader  # what the network reads: the slide resized by `factor` (the reader itself at 1)
    factor: float
    runner: object
    options: dict
    output: Path
    block: tuple[int, int]
    tile_size: int
    tta: bool
    labels_format: str
    table_format: str
    geojson: bool
    rois: bool
    measurements: bool
    resume: bool
    progress: bool
    slide: object
    level: int
    channel: int | None
    read_channel: int | None = None
    """the one channel the network reads of a colour slide that is one gray image in colour (a DAPI
    slide saved as blue RGB: :func:`unetseg.segment.signal_channel` of its thumbnail), decided once so
    that every block is read alike; None: the slide as read"""


def _run(job: _Job) -> SlideResult:
    reader, runner, options, output, block, tile_size, tta = (
        job.reader,
        job.runner,
        job.options,
        job.output,
        job.block,
        job.tile_size,
        job.tta,
    )
    slide, level, channel, geojson, progress = job.slide, job.level, job.channel, job.geojson, job.progress
    h, w = reader.shape
    work = _Work(output / PARTIAL)
    fingerprint = {
        "slide": str(Path(slide).resolve()) if isinstance(slide, (str, os.PathLike)) else reader.description,
        "shape": [h, w],
        "level": level,
        "downsample": reader.downsample,
        "scale": job.factor,
        "channel": channel,
        "model": str(runner.path.resolve()),
        "model_bytes": runner.path.stat().st_size,
        "band_height": block[0],
        "block_width": block[1],
        "tile_size": tile_size,
        "tta": tta,
        "outlines": geojson or job.rois,  # a resumed run has them for its earlier bands only if asked then
        "precision": runner.precision,
        **options,
    }
    labeller = StreamLabeller(
        w,
        labelling=options["labelling"],
        threshold=options["threshold"],
        boundary_threshold=options["boundary_threshold"],
        connectivity=options["connectivity"],
        min_area=min_area_at(options["min_area"], job.factor),  # min_area counts pixels at the network's scale
        outlines=geojson or job.rois,
    )
    seconds = {"normalisation": 0.0, "read": 0.0, "network": 0.0, "labelling": 0.0, "write": 0.0}
    state = work.load(fingerprint) if job.resume else None
    if state is None:
        shutil.rmtree(work.folder, ignore_errors=True)
        work.folder.mkdir(parents=True)
        for path in (work.objects, work.outlines):
            path.touch()
        with open(work.labels, "wb") as f:  # sparse until written
            f.truncate(h * w * 4)
        start = time.perf_counter()
        # Normalisation ranges of the whole slide (from a subsample when it is very large), once.
        thumbnail = job.scaled.thumbnail()
        job.read_channel = signal_channel(thumbnail)
        ranges = runner.normalisation(thumbnail, channel=job.read_channel)
        seconds["normalisation"] = time.perf_counter() - start
        first_band = 0
    else:
        labeller.load_state_dict({k[len("labeller_") :]: v for k, v in state.items() if k.startswith("labeller_")})
        ranges = (state["ranges_low"].tolist(), state["ranges_high"].tolist())
        read_channel = int(state.get("read_channel", -1))  # runs saved before it was recorded: -1
        job.read_channel = read_channel if read_channel >= 0 else None
        seconds.update(json.loads(str(state["seconds"])))
        first_band = int(state["band"])
    # a slide resized up for the network is labelled in blocks smaller by the factor: the network's
    # blocks stay band_height x block_width
    band, width = (max(1, int(n / max(1.0, job.factor))) for n in block)
    bands = [(r, min(h, r + band)) for r in range(0, h, band)]
    columns = [(c, min(w, c + width)) for c in range(0, w, width)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(bands) * len(columns),
            initial=first_band * len(columns),
            unit="block",
            desc=f"segment {reader.description}",
        )
    try:
        with open(work.objects, "ab") as objects_file, open(work.outlines, "a") as outlines_file:
            for b in range(first_band, len(bands)):
                r0, r1 = bands[b]
                for c0, c1 in columns:
                    t0 = time.perf_counter()
                    probs, t1 = _block_probabilities(job, ranges, r0, r1, c0, c1)
                    t2 = time.perf_counter()
                    done = labeller.feed(probs, last=b == len(bands) - 1)
                    t3 = time.perf_counter()
                    _paste(work.labels, (h, w), done)
                    rows = np.column_stack([done.ids, done.first_pixel, done.stats]).astype(np.float64)
                    objects_file.write(rows.tobytes())
                    for i, outline in zip(done.ids, done.outlines):
                        outlines_file.write(f"[{i},{json.dumps(outline.ravel().tolist())}]\n")
                    seconds["read"] += t1 - t0
                    seconds["network"] += t2 - t1
                    seconds["labelling"] += t3 - t2
                    seconds["write"] += time.perf_counter() - t3
                    if bar is not None:
                        bar.update(1)
                for f in (objects_file, outlines_file):
                    f.flush()
                work.save(fingerprint, b + 1, ranges, job.read_channel, labeller, seconds)
    finally:
        if bar is not None:
            bar.close()
    start = time.perf_counter()
    result = _write_outputs(job, work, ranges, labeller.id_bound)
    seconds["write"] += time.perf_counter() - start
    result.seconds = seconds
    result.scale = job.factor
    _write_summary(result, reader, runner, options, ranges, job.read_channel, fingerprint)
    shutil.rmtree(work.folder, ignore_errors=True)
    return result


def _block_probabilities(job: _Job, ranges, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, float]:
    """The probabilities (C, r1 - r0, c1 - c0) of a block of the slide, and when its read finished. A
    slide resized for the network gives the probabilities of the block's taps (the network's pixels
    its pixels interpolate, as ScaledReader interpolates), resized back: every pixel is computed
    from the same network pixels in whatever block it falls, so seams stay exact."""
    if job.factor == 1.0:
        return _network_probabilities(job, ranges, r0, r1, c0, c1)
    (h, w), (sh, sw) = job.reader.shape, job.scaled.shape
    rows, (s0, s1) = taps(r0, r1, h / sh, sh)
    cols, (t0, t1) = taps(c0, c1, w / sw, sw)
    probs, read = _network_probabilities(job, ranges, s0, s1, t0, t1)
    return apply_taps(apply_taps(probs, rows, s0, axis=1), cols, t0, axis=2), read


def _network_probabilities(job: _Job, ranges, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, float]:
    """The network's probabilities (C, r1 - r0, c1 - c0) of a block of ``job.scaled``, read with the
    network's halo around it as context, from a corner on the network's pooling grid (so a pixel's
    probability does not depend on the block it is computed in), and when the read finished."""
    runner = job.runner
    h, w = job.scaled.shape
    halo, multiple = runner.halo, int(runner.metadata["size_multiple"])
    y0, y1 = max(0, (r0 - halo) // multiple * multiple), min(h, r1 + halo)
    x0, x1 = max(0, (c0 - halo) // multiple * multiple), min(w, c1 + halo)
    image = job.scaled.read(y0, y1, x0, x1)
    read = time.perf_counter()
    # blocks run at the network's scale (a diameter estimated block by block would differ between them)
    native = {"diameter": runner.diameter} if runner.diameter else {}
    probs = runner.predict(
        [image],
        tile_size=job.tile_size,
        normalisation=ranges,
        channel=job.read_channel,
        tta=job.tta,
        context=(r0 - y0, y1 - r1, c0 - x0, x1 - c1),
        **native,
    )[0]
    return probs, read


def _rows(path: Path, shape: tuple[int, int], r0: int, r1: int, mode: str = "r") -> np.ndarray:
    """Rows [r0, r1) of the raw int32 label file of a slide of ``shape``, memory-mapped: slicing it
    touches only the pages of the slice, and the map goes when the array does."""
    return np.memmap(path, np.int32, mode, offset=r0 * shape[1] * 4, shape=(r1 - r0, shape[1]))


def _paste(path: Path, shape: tuple[int, int], done) -> None:
    """Writes a Finished block's labels into the provisional label file, in place."""
    h, w = done.labels.shape
    if h and w:
        rows = _rows(path, shape, done.row, done.row + h, "r+")
        done.paste(rows[:, done.col : done.col + w])
        del rows  # unmapped; the page cache writes it back (no msync: that would wait for the disk)


def _write_outputs(job: _Job, work: _Work, ranges, id_bound: int) -> SlideResult:
    output, reader, labels_format, table_format, geojson = (
        job.output,
        job.reader,
        job.labels_format,
        job.table_format,
        job.geojson,
    )
    h, w = reader.shape
    objects = np.fromfile(work.objects, np.float64).reshape(-1, OBJECT_FIELDS)
    ids = objects[:, 0].astype(np.int64)
    lut = raster_numbering(ids, objects[:, 1].astype(np.int64), id_bound)
    count = len(ids)
    side = 512  # output tiles and chunks
    name, write_labels = LABEL_FORMATS[labels_format]
    labels_path = output / name

    def tiles(step: int = 1):
        """Final labels tile by tile in raster order: (row, col, block), reading one tile of the
        provisional file at a time; with `step`, every step-th row and column (a pyramid level,
        nearest neighbour, so labels stay labels)."""
        hs, ws = -(-h // step), -(-w // step)
        for r in range(0, hs, side):
            for c in range(0, ws, side):
                rows = _rows(work.labels, (h, w), r * step, min(h, (r + side) * step))
                yield r, c, lut[rows[::step, c * step : (c + side) * step : step]]
                del rows

    # the label grid's physical size: the level's
    write_labels(
        labels_path, (h, w), tiles, side, reader.pixel_size * reader.downsample if reader.pixel_size else None, count
    )

    order = np.argsort(lut[ids], kind="stable")
    table = ObjectTable(objects[order][:, 2:10])
    frame = table.to_pandas()
    if job.measurements:
        columns = measure_in_windows(
            table.bbox,
            (h, w),
            lambda r0, r1, c0, c1: lut[_rows(work.labels, (h, w), r0, r1)[:, c0:c1]],
            reader.read,
            job.block,
        )
        for name in LENGTH_COLUMNS:  # in level-0 pixels, as the rest of the table
            columns[name] = columns[name] * reader.downsample
        frame = frame.assign(**columns)
    frame = level0_table(frame, reader.downsample, reader.pixel_size)
    table_path = output / f"objects.{table_format}"
    with atomic_path(table_path) as tmp:
        TABLE_FORMATS[table_format](frame, tmp)

    geojson_path = output / GEOJSON if geojson else None
    rois_path = output / ROIS if job.rois else None

    def polygons(chunk: int = 4096):
        """(final label, outline polygon in level-0 pixels) of every object, in the order finished
        (made `chunk` objects at a time: outline_polygons is vectorised)."""
        with open(work.outlines) as lines:
            while rows := [json.loads(line) for line in itertools.islice(lines, chunk)]:
                outlines = outline_polygons([np.reshape(flat, (-1, 2)) for _, flat in rows])
                for (pid, _), polygon in zip(rows, outlines):
                    yield pid, polygon * reader.downsample

    outlines = polygons()  # streamed for the GeoJSON alone; the ROI set holds them all anyway
    if rois_path:
        outlines = list(outlines)
    if geojson_path:
        area = dict(zip(ids.tolist(), objects[:, 2].tolist()))
        area_scale = reader.downsample**2
        with atomic_path(geojson_path) as tmp, open(tmp, "w") as out:
            write_geojson(
                out, (detection_feature(polygon, lut[pid], area[pid] * area_scale) for pid, polygon in outlines)
            )
    if rois_path:
        ordered = sorted((int(lut[pid]), polygon) for pid, polygon in outlines)  # ROI Manager order: by label
        write_imagej_rois(rois_path, [p for _, p in ordered], [k for k, _ in ordered])
    return SlideResult(labels_path, table_path, geojson_path, output / SUMMARY, count, (h, w), rois=rois_path)


def finished_outputs(folder: Path) -> list[Path]:
    """The outputs of a finished run that `folder` holds (any label or table format)."""
    names = [name for name, _ in LABEL_FORMATS.values()] + [f"objects.{f}" for f in TABLE_FORMATS]
    names += [GEOJSON, ROIS, SUMMARY]
    return [folder / name for name in names if (folder / name).exists()]


def pyramid_steps(h: int, w: int, side: int) -> list[int]:
    """The sub-resolutions of a label pyramid (steps of 2, 4, ... pixels, down to about two tiles
    of ``side``), as QuPath, Fiji and napari browse slides."""
    return [2**k for k in range(1, 16) if max(h, w) // 2 ** (k - 1) > 2 * side]


def write_ome_tiff_labels(path: Path, shape, tiles, side: int, pixel_size, count: int) -> None:
    """Writes labels as a tiled pyramidal OME-TIFF (BigTIFF, int32, zlib; sub-resolutions in
    SubIFDs, nearest neighbour), with the physical pixel size when known. ``tiles(step)`` yields
    (row, col, block) of each level; written atomically."""
    import tifffile

    h, w = shape
    metadata = {"axes": "YX", "Name": "labels"}
    if pixel_size:
        metadata.update(
            PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm"
        )
    steps = pyramid_steps(h, w, side)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        options = {"dtype": np.int32, "tile": (side, side), "compression": "zlib"}
        tif.write((t for _, _, t in tiles()), shape=(h, w), subifds=len(steps), metadata=metadata, **options)
        for step in steps:
            tif.write((t for _, _, t in tiles(step)), shape=(-(-h // step), -(-w // step)), subfiletype=1, **options)


def write_ome_zarr_labels(path: Path, shape, tiles, side: int, pixel_size, count: int) -> None:
    """Writes labels as an OME-Zarr (NGFF 0.4, zarr format 2: what Bio-Formats, QuPath, Fiji and
    napari's ome-zarr reader read) image-label group: full resolution in ``0``, then one array per
    pyramid step (nearest neighbour), with physical scales in µm when the pixel size is known.
    ``tiles(step)`` yields (row, col, block) of each level; written under a temporary name and
    renamed into place."""
    import zarr

    steps = pyramid_steps(*shape, side)
    version = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", **version)
    unit = {"unit": "micrometer"} if pixel_size else {}
    datasets = []
    for level, step in enumerate([1, *steps]):
        level_shape = tuple(-(-n // step) for n in shape)
        array = zarr.open_array(
            str(tmp / str(level)),
            mode="w",
            shape=level_shape,
            chunks=(side, side),
            dtype=np.int32,
            fill_value=0,
            dimension_separator="/",  # NGFF 0.4's chunk keys
            **version,
        )
        for r, c, tile in tiles(step):
            array[r : r + tile.shape[0], c : c + tile.shape[1]] = tile
        scale = (pixel_size or 1.0) * step
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [scale, scale]}]})
    root.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": "nuclei",
                    "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
                    "datasets": datasets,
                    "type": "nearest",
                    "metadata": {"description": "every step-th pixel of the full resolution (labels stay labels)"},
                }
            ],
            "image-label": {"version": "0.4"},
            "unetseg": {"labels": "0 background, objects 1..count in raster order", "count": count},
        }
    )
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


#: Label image formats: name -> (file name, writer(path, shape, tiles, side, pixel_size, count)).
LABEL_FORMATS = {
    "ome-tiff": ("labels.ome.tif", write_ome_tiff_labels),
    "ome-zarr": ("labels.ome.zarr", write_ome_zarr_labels),
}
#: Object table formats: name -> writer(frame, path).
TABLE_FORMATS = {
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "parquet": lambda frame, path: frame.to_parquet(path, index=False),
}


def level0_table(frame, downsample: float, pixel_size: float | None):
    """An object table of a level's pixels in level-0 pixels (bbox edges times the downsample d, area
    times d², centroids (c + 0.5) d - 0.5: a level pixel's centre), with µm columns (area_um2,
    centroid_x_um, centroid_y_um: from the image's top-left corner) when the pixel size is known."""
    if float(downsample).is_integer():
        downsample = int(downsample)  # integer columns stay integers
    if downsample != 1:
        frame["area"] = frame["area"] * downsample**2
        for name in ("min_row", "min_col", "max_row", "max_col"):
            frame[name] = frame[name] * downsample
        for name in ("centroid_row", "centroid_col"):
            frame[name] = (frame[name] + 0.5) * downsample - 0.5
    if pixel_size:
        frame = frame.assign(**micron_columns(frame, pixel_size))
    return frame


def _write_summary(result: SlideResult, reader, runner, options, ranges, read_channel, fingerprint) -> None:
    summary = {
        "slide": fingerprint["slide"],
        "reader": reader.description,
        "shape": list(result.shape),
        "level": fingerprint["level"],
        "channel": fingerprint["channel"],
        "model": fingerprint["model"],
        "options": options,
        "band_height": fingerprint["band_height"],
        "block_width": fingerprint["block_width"],
        "tile_size": fingerprint["tile_size"],
        # channel: the one channel the network read of a slide that is one gray image in colour
        "normalisation": {"low": list(ranges[0]), "high": list(ranges[1]), "channel": read_channel},
        "count": result.count,
        "pixel_size_um": reader.pixel_size,
        "downsample": reader.downsample,
        "scale": result.scale,
        "coordinates": "table and GeoJSON: level-0 pixels (and µm with a pixel size); labels: the level's grid "
        "(the network read it resized by `scale`)",
        "outputs": {
            k: str(getattr(result, k).name) for k in ("labels", "table", "geojson", "rois") if getattr(result, k)
        },
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    with atomic_path(result.summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
