"""Segmentation of a dask array on a ``dask.distributed`` cluster (or any dask scheduler).

The network, the expensive part, runs on the workers: chunk by chunk with an overlap of the
network's halo (``dask.array.map_overlap``, no padding at the array's edges, so every chunk sees
exactly what the whole image would give it). Chunks are first aligned to the network's pooling
grid. The probability map, persisted on the workers, is then labelled on the client, one row of
chunks at a time, by the
same :class:`unetseg.slide.StreamLabeller` that ``segment_slide`` uses: chunk seams across a row of
chunks disappear because the row is labelled whole, and seams between rows of chunks are merged by
the labeller's carry of open components. So the result is identical to the single-process one,
for plain and for seeded labelling.

Why not dask-image's ``ndmeasure.label`` (per-chunk labels + a graph of equivalences across
faces)? It fits plain connected components, but seeded labelling is not decided chunk by chunk
(a seed grows across a seam), raster-order numbering and min_area need a global pass anyway, and
labelling costs under 5% of the network's time, so the client keeps up with the workers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .segment import ObjectTable, Runner, Segmentation, default_model_path, signal_channel


@functools.lru_cache(maxsize=4)
def _worker_runner(path: str, device: str, precision: str) -> Runner:
    """One Runner per worker process (the C++ runner is thread-safe), loaded on first use."""
    return Runner(path, device=device, batch_size=4, precision=precision)


def _predict_block(
    block, *, model, device, precision, tile_size, ranges, channel, halo, core_rows, core_cols, block_info=None
):
    """The network on one chunk with its overlap; returns the chunk's core, (h, w, out_channels)."""
    i, j = block_info[None]["chunk-location"][:2]
    top = halo if i > 0 and len(core_rows) > 1 else 0
    left = halo if j > 0 and len(core_cols) > 1 else 0
    runner = _worker_runner(model, device, precision)
    # chunks run at the array's own scale (a per-chunk diameter estimate would differ chunk to chunk)
    native = {"diameter": runner.diameter} if runner.diameter else {}
    probs = runner.predict([np.asarray(block)], tile_size=tile_size, normalisation=ranges, channel=channel, **native)[0]
    core = probs[:, top : top + core_rows[i], left : left + core_cols[j]]
    return np.ascontiguousarray(np.moveaxis(core, 0, -1))


def _grid_chunks(chunks: tuple[int, ...], multiple: int, halo: int) -> tuple[int, ...]:
    """Chunks near the given size that start on the network's pooling grid (multiples of `multiple`)
    and are at least `halo` long (a shorter last chunk joins the one before)."""
    total = sum(chunks)
    size = max(halo, multiple, -(-max(chunks) // multiple) * multiple)
    out = [size] * (total // size)
    rest = total - sum(out)
    if rest and (rest >= halo or not out):
        out.append(rest)
    elif rest:
        out[-1] += rest
    return tuple(out)


def _client_runner(model, precision: str) -> Runner:
    """The model on the client (metadata, halo, normalisation); workers load their own from its path,
    in its precision."""
    if isinstance(model, Runner):
        return model
    return Runner(
        Path(model).resolve() if model is not None else default_model_path(), device="cpu", precision=precision
    )


def probabilities(
    array,
    model: str | os.PathLike | Runner | None = None,
    *,
    device: str = "cpu",
    tile_size: int = 1024,
    normalisation=None,
    precision: str = "auto",
):
    """The network's probabilities of a dask array (H, W) or (H, W, C), lazily: a dask array
    (H, W, out_channels) float32 computed chunk by chunk with overlap on the workers.
    normalisation: (low, high) ranges; default: from a subsample of the array (as segment_slide). A
    colour array that is one gray image in colour (a DAPI image saved as blue RGB) is read at that
    channel in every chunk (:func:`unetseg.segment.signal_channel` of the subsample).
    precision: the network's (as :class:`unetseg.Runner`; a Runner given as `model` brings its own)."""
    import dask.array as da

    from .slide.readers import thumbnail_step

    runner = _client_runner(model, precision)
    path = str(runner.path.resolve())
    array = da.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ValueError(f"expected a dask array (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}")
    h, w = array.shape[:2]
    # the channel a colour array that is one gray image in colour is read at, decided once for all chunks
    channel = None
    if normalisation is None or array.shape[2] >= 3:
        step = thumbnail_step(h, w)
        subsample = np.asarray(array[::step, ::step].compute())
        subsample = subsample[..., 0] if subsample.shape[2] == 1 else subsample
        channel = signal_channel(subsample)
        if normalisation is None:
            normalisation = runner.normalisation(subsample, channel=channel)
    multiple, halo = int(runner.metadata["size_multiple"]), runner.halo
    array = array.rechunk(
        {0: _grid_chunks(array.chunks[0], multiple, halo), 1: _grid_chunks(array.chunks[1], multiple, halo), 2: -1}
    )
    out_channels = int(runner.metadata["out_channels"])
    depth = {0: halo if len(array.chunks[0]) > 1 else 0, 1: halo if len(array.chunks[1]) > 1 else 0, 2: 0}
    return da.map_overlap(
        _predict_block,
        array,
        depth=depth,
        boundary="none",
        trim=False,
        dtype=np.float32,
        chunks=(array.chunks[0], array.chunks[1], (out_channels,)),
        model=path,
        device=device,
        precision=runner.precision,
        tile_size=tile_size,
        ranges=(list(normalisation[0]), list(normalisation[1])),
        channel=channel,
        halo=halo,
        core_rows=array.chunks[0],
        core_cols=array.chunks[1],
        meta=np.empty((0, 0, 0), np.float32),
    )


def segment(
    array,
    model: str | os.PathLike | Runner | None = None,
    *,
    device: str = "cpu",
    tile_size: int = 1024,
    labelling: str = "auto",
    threshold: float | None = None,
    boundary_threshold: float | None = None,
    min_area: int | None = None,
    connectivity: int = 8,
    normalisation=None,
    precision: str = "auto",
    progress: bool = False,
) -> Segmentation:
    """Segments nuclei in a dask array (H, W) or (H, W, C) with the network on the dask workers (use
    it inside a ``dask.distributed.Client``); returns one :class:`unetseg.Segmentation` equal to
    segmenting the whole image in one process with the same normalisation. Options as
    :func:`unetseg.segment_slide`; ``device`` is the workers' device."""
    import dask

    from .slide.pipeline import _resolve
    from .slide.stream import StreamLabeller, raster_numbering

    runner = _client_runner(model, precision)
    options = _resolve(runner, labelling, threshold, boundary_threshold, min_area, connectivity)
    probs = probabilities(array, runner, device=device, tile_size=tile_size, normalisation=normalisation)
    h, w = probs.shape[:2]
    labeller = StreamLabeller(w, **options)
    labels = np.zeros((h, w), np.int32)
    ids, first, stats = [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(probs.chunks[0]), unit="row of chunks", desc="segment (dask)")
    # Computed once on the workers (in parallel, while the client labels): computing it row by row
    # recomputes the chunks shared by neighbouring rows' overlaps under the same keys, which
    # distributed can race on (a key released by one compute while the next resubmits it).
    probs = probs.persist()
    for k in range(len(probs.chunks[0])):
        (band,) = dask.compute(probs.blocks[k])
        done = labeller.feed(np.moveaxis(band, -1, 0), last=k == len(probs.chunks[0]) - 1)
        done.paste(labels[done.row : done.row + done.labels.shape[0], done.col : done.col + done.labels.shape[1]])
        ids.append(done.ids), first.append(done.first_pixel), stats.append(done.stats)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    ids, first, stats = np.concatenate(ids), np.concatenate(first), np.concatenate(stats)
    lut = raster_numbering(ids, first, labeller.id_bound)
    table = stats[np.argsort(lut[ids], kind="stable")]
    return Segmentation(lut[labels], len(ids), ObjectTable(table))


def measure(segmentation: Segmentation, array, window: tuple[int, int] = (1024, 4096)):
    """The object table of a :func:`segment` result with each object's intensities (every channel of
    ``array``, the dask array it was segmented from) and shape, as ``unetseg segment --measure`` and
    ``segment_slide(measurements=True)`` give them: a pandas DataFrame, one row per object. The
    array is read a window of ``window`` pixels at a time (:func:`unetseg.geometry.measure_in_windows`)."""
    from .geometry import measure_in_windows

    labels = segmentation.labels
    if tuple(array.shape[:2]) != labels.shape:
        raise ValueError(
            f"array has shape {tuple(array.shape)}; the segmentation's labels are {labels.shape}: pass the array it "
            "was segmented from"
        )
    columns = measure_in_windows(
        segmentation.objects.bbox,
        labels.shape,
        lambda r0, r1, c0, c1: labels[r0:r1, c0:c1],
        lambda r0, r1, c0, c1: np.asarray(array[r0:r1, c0:c1]),
        window,
    )
    return segmentation.objects.to_pandas().assign(**columns)
