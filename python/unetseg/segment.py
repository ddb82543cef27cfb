"""``segment_batch`` and ``Runner``: segmentation through the C++ runner (``unetseg._C.Runner``).

Everything from normalisation to the object table happens in C++ (csrc/runner), so Python gets
exactly what an embedding C++ host gets; this module only converts inputs and wraps results.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch

from . import _C
from .ops import OBJECT_COLUMNS

DEFAULT_MODEL = "default_model.pt"


def default_model_path() -> Path:
    """The bundled default model: a U-Net trained on the DSB 2018 images (docs/model_card.md)."""
    return Path(str(resources.files("unetseg").joinpath("assets", DEFAULT_MODEL)))


@dataclass(frozen=True)
class ObjectTable:
    """Per-object measurements of one image; row k is label k + 1.

    ``table`` is float64 (count, 8) with the op's columns (:data:`unetseg.ops.STATS_COLUMNS`); the
    bbox is [min, max) like skimage's regionprops, the centroid is in (row, col) pixels,
    mean_probability is the mean nucleus probability over the object. :meth:`columns` and
    :meth:`to_pandas` name them as every object table does (:data:`unetseg.ops.OBJECT_COLUMNS`).
    ``first_label``: the label of row 0 (1 for an image; slides number on).
    """

    table: np.ndarray
    first_label: int = 1

    def __len__(self) -> int:
        return self.table.shape[0]

    @property
    def label(self) -> np.ndarray:
        return np.arange(self.first_label, self.first_label + len(self), dtype=np.int32)

    @property
    def area(self) -> np.ndarray:
        return self.table[:, 0].astype(np.int64)

    @property
    def bbox(self) -> np.ndarray:
        """(count, 4) int64: min_row, min_col, max_row, max_col (exclusive)."""
        return self.table[:, 1:5].astype(np.int64)

    @property
    def centroid(self) -> np.ndarray:
        """(count, 2) float64: row, col."""
        return self.table[:, 5:7]

    @property
    def mean_probability(self) -> np.ndarray:
        return self.table[:, 7]

    mean_score = mean_probability  # the op's name for it

    def columns(self) -> dict[str, np.ndarray]:
        """{name: column} in :data:`unetseg.ops.OBJECT_COLUMNS` order; integers as int64 (label int32)."""
        bbox = self.bbox
        values = (self.label, self.area, *bbox.T, self.centroid[:, 0], self.centroid[:, 1], self.mean_probability)
        return dict(zip(OBJECT_COLUMNS, values))

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ObjectTable.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.columns())


@dataclass(frozen=True)
class Segmentation:
    """One image's result: ``labels`` int32 (H, W) (0 background, objects 1..count in raster order),
    ``count``, the per-object table ``objects``, and ``diameter``: the nucleus diameter in pixels the
    image was segmented at (given or estimated; 0 for models without a canonical diameter)."""

    labels: np.ndarray
    count: int
    objects: ObjectTable
    diameter: float = 0.0


Diameter = Union[float, Literal["auto"], None]


def _options(
    *,
    threshold=None,
    min_area=None,
    connectivity=8,
    labelling="auto",
    boundary_threshold=None,
    tile_size=None,
    halo=None,
    normalisation=None,
    context=(0, 0, 0, 0),
    tta=False,
    diameter: Diameter = "auto",
    channel: int | None = None,
) -> _C.SegmentOptions:
    """The C++ runner's SegmentOptions, field by field by name."""
    o = _C.SegmentOptions()
    o.threshold, o.min_area, o.connectivity, o.labelling = threshold, min_area, connectivity, labelling
    o.boundary_threshold, o.tile_size, o.halo, o.tta = boundary_threshold, tile_size, halo, tta
    if normalisation is not None:
        o.normalisation = _C.Normalisation(list(normalisation[0]), list(normalisation[1]))
    o.context_top, o.context_bottom, o.context_left, o.context_right = context
    o.channel = channel
    if diameter is not None and diameter != "auto":
        if isinstance(diameter, str) or not isinstance(diameter, (int, float)):
            raise ValueError(f"diameter must be a number of pixels or 'auto', got {diameter!r}")
        o.diameter = float(diameter)
    return o


def _as_tensor(image, index: int) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        from .data import read_image

        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.float64:
            image = image.astype(np.float32)
        elif image.dtype == np.bool_:  # a mask image, as a 1-bit PNG reads: nonzero is 255
            image = image.astype(np.uint8) * 255
        elif image.dtype not in (np.uint8, np.uint16, np.float32):
            raise TypeError(f"image {index} has dtype {image.dtype}; expected uint8, uint16 or float32 (or float64)")
        return torch.from_numpy(image)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.float64:
            image = image.float()
        elif image.dtype == torch.bool:
            image = image.to(torch.uint8) * 255
        return image.detach().cpu()
    raise TypeError(f"image {index} is a {type(image).__name__}; expected a numpy array, a torch tensor or a file path")


def signal_channel(image) -> int | None:
    """The channel that holds all of a colour image (H, W, 3|4) that is one gray image in colour: a
    DAPI image saved as blue RGB, or a gray image under a colour table that copies it into several
    channels (cyan, magenta); every other colour channel is empty (its 1st-99.8th percentile range
    under 1/16 of the widest channel's) or equal to it. None for every other image: gray, stained
    tissue, composites of several stains. Without ``channel=`` the runner reads such an image as that
    channel alone (a gray image, as the network was trained on); training reads it the same way."""
    image = _as_tensor(image, 0)
    if image.dim() != 3 or image.shape[2] not in (3, 4):
        return None
    return _C.signal_channel(image)


def _as_list(images) -> list:
    """A list of images from a list/tuple, a (N, H, W) or (N, H, W, C) array or tensor, or a path."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim not in (3, 4):
            raise ValueError(
                f"an array of images must be (N, H, W) or (N, H, W, C), got shape {tuple(images.shape)}; "
                "pass a single image as [image]"
            )
        if images.ndim == 3 and images.shape[2] <= 4 < images.shape[1]:
            # (H, W, C): one colour image, which taken as a stack would give H images of one row each
            raise ValueError(
                f"got one array of shape {tuple(images.shape)}: an (H, W, C) image, not a stack of images; "
                "pass it as [image] (a stack of gray images is (N, H, W) with N images)"
            )
        return list(images)
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(
        f"images must be a list of arrays, tensors or paths, or an (N, H, W[, C]) array; got {type(images).__name__}"
    )


def _check_not_a_checkpoint(path: Path) -> None:
    """A training checkpoint given as a model file gets the command that makes one, not torch's
    "cannot load TorchScript" text."""
    import zipfile

    from .export import is_model_file

    if is_model_file(path) or path.suffix.lower() == ".zip":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            torch_save = any(n.endswith("/data.pkl") for n in archive.namelist())
            torchscript = any("/code/" in n for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return  # not a zip: the runner says what it is not
    if torch_save and not torchscript:
        raise ValueError(
            f"{str(path)!r} is a training checkpoint, not a model file; make one with "
            f"`unetseg export {path} -o model.pt` and use that"
        )


class Runner:
    """A loaded model, for repeated calls: ``Runner(model=None, device="auto", precision="auto",
    batch_size=8)``. ``model=None`` is the bundled default model. Safe to share between threads.

    precision: "auto" (default): bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX) and on
    CUDA, float32 elsewhere; ``Runner.precision`` says which. "bfloat16" runs the network under
    autocast: on such CPUs about 2x faster than "float32" with the same scores on the DSB 2018
    validation split (docs/model_card.md); "float16": CUDA only."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
    ):
        path = Path(model) if model is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        _check_not_a_checkpoint(path)
        self.path = path
        if path.suffix.lower() == ".zip":  # a bioimage.io package of a unetseg model
            from .bioimageio import model_file_from_package

            path = model_file_from_package(path)
        self._runner = _C.Runner(str(path), device=device, precision=precision, batch_size=batch_size)
        self.precision: str = self._runner.precision
        """the precision the network runs in ("auto" resolved): "float32", "bfloat16" or "float16"."""
        self.fused: bool = self._runner.fused
        """whether the network runs the graph the CPU runner specialises for oneDNN (activations fused
        into the convolutions, skip concatenations split: docs/design.md) rather than the model
        file's graph as it is (CUDA, or a graph with ops the rewrite does not know)."""
        self.metadata: dict = json.loads(self._runner.info.json)

    @property
    def device(self) -> str:
        return self._runner.device

    @property
    def batch_size(self) -> int:
        return self._runner.batch_size

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"Runner({str(self.path)!r}, device={self.device!r}, {m['architecture']}, "
            f"{m['in_channels']} -> {m['out_channels']} channels)"
        )

    @property
    def halo(self) -> int:
        """The tile halo in pixels: the network's receptive-field radius (see :func:`segment_batch`)."""
        return self._runner.info.halo

    @property
    def diameter(self) -> float:
        """The canonical nucleus diameter (pixels) the model was trained at; 0: it has none and images
        are never rescaled."""
        return self._runner.info.diameter

    def normalisation(self, image, channel: int | None = None) -> tuple[list[float], list[float]]:
        """The per-channel (low, high) ranges the runner would normalise ``image`` with (``channel``:
        as :meth:`segment`'s): percentiles of the whole image. Pass them as ``normalisation=`` to
        normalise pieces of a large image the same way (:mod:`unetseg.slide` does, from a subsample
        of the slide), with the channel :func:`signal_channel` finds in the whole image when none is
        given, so that every piece is read as the whole image is."""
        n = self._runner.normalisation(_as_tensor(image, 0), channel)
        return n.low, n.high

    def resolve(
        self,
        *,
        threshold: float | None = None,
        min_area: int | None = None,
        labelling: str = "auto",
        boundary_threshold: float | None = None,
    ) -> dict:
        """The post-processing :meth:`segment` applies for these options, the model's defaults filled
        in and checked: {"labelling", "threshold", "boundary_threshold", "min_area"}."""
        r = self._runner.resolve(
            _options(threshold=threshold, min_area=min_area, labelling=labelling, boundary_threshold=boundary_threshold)
        )
        return {
            "labelling": r.labelling,
            "threshold": r.threshold,
            "boundary_threshold": r.boundary_threshold,
            "min_area": r.min_area,
        }

    @property
    def labelling(self) -> str:
        """The model's default labelling: "plain", or "seeded" for nucleus + boundary models."""
        return self._runner.info.labelling

    def segment(
        self,
        images,
        *,
        threshold: float | None = None,
        min_area: int | None = None,
        connectivity: int = 8,
        labelling: str = "auto",
        boundary_threshold: float | None = None,
        tile_size: int | None = None,
        halo: int | None = None,
        normalisation=None,
        tta: bool = False,
        diameter: Diameter = "auto",
        channel: int | None = None,
        progress: bool = False,
    ) -> list[Segmentation]:
        """Segments images (see :func:`segment_batch`)."""
        options = _options(
            threshold=threshold,
            min_area=min_area,
            connectivity=connectivity,
            labelling=labelling,
            boundary_threshold=boundary_threshold,
            tile_size=tile_size,
            halo=halo,
            normalisation=normalisation,
            tta=tta,
            diameter=diameter,
            channel=channel,
        )
        items = _as_list(images)
        results: list[Segmentation] = []
        step = self.batch_size
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), unit="img", desc="segment")
        try:
            for start in range(0, len(items), step):
                chunk = [_as_tensor(im, start + i) for i, im in enumerate(items[start : start + step])]
                for labels, count, objects, used in self._runner.segment(chunk, options):
                    results.append(Segmentation(labels.numpy(), int(count), ObjectTable(objects.numpy()), used))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results

    def predict(
        self,
        images,
        *,
        tile_size: int | None = None,
        halo: int | None = None,
        normalisation=None,
        context: tuple[int, ...] = (0, 0),
        tta: bool = False,
        diameter: Diameter = "auto",
        channel: int | None = None,
    ) -> list[np.ndarray]:
        """The network's probabilities, float32 (out_channels, H, W) per image (tiling and
        normalisation as in :meth:`segment`). ``context=(top, bottom)`` or ``(top, bottom, left,
        right)``: rows and columns at the edges of each image that the network only sees (a block of
        a slide read with its halo); the output then has H - top - bottom rows and W - left - right
        columns, and tiles cover just those. ``tta``: test-time augmentation, ``diameter``: the
        scale (see :func:`segment_batch`; "auto" segments each image to estimate it)."""
        if len(context) not in (2, 4):
            raise ValueError(f"context must be (top, bottom) or (top, bottom, left, right), got {tuple(context)}")
        context = tuple(int(c) for c in context) + (0, 0)[: 4 - len(context)]
        items = _as_list(images)
        tensors = [_as_tensor(im, i) for i, im in enumerate(items)]
        options = _options(
            tile_size=tile_size,
            halo=halo,
            normalisation=normalisation,
            context=context,
            tta=tta,
            diameter=diameter,
            channel=channel,
        )
        return [p.numpy() for p in self._runner.predict(tensors, options)]


@functools.lru_cache(maxsize=4)
def _cached_runner(path: str, device: str, batch_size: int, precision: str) -> Runner:
    return Runner(path, device=device, batch_size=batch_size, precision=precision)


def segment_batch(
    images: Sequence | np.ndarray | torch.Tensor,
    model: str | os.PathLike | Runner | None = None,
    *,
    device: str = "auto",
    threshold: float | None = None,
    batch_size: int | None = None,
    tile_size: int | None = None,
    min_area: int | None = None,
    labelling: str = "auto",
    boundary_threshold: float | None = None,
    halo: int | None = None,
    tta: bool = False,
    precision: str = "auto",
    diameter: Diameter = "auto",
    channel: int | None = None,
    progress: bool = False,
) -> list[Segmentation]:
    """Segments nuclei in a batch of images with a U-Net and the fused threshold + labelling op.

    images: a list of numpy arrays, torch tensors or file paths (each (H, W) or (H, W, C), uint8,
        uint16 or float32, any sizes), or one (N, H, W) / (N, H, W, C) array.
    model: a model file made by ``unetseg export``, a :class:`Runner`, or None for the bundled
        default model. Loaded runners are cached, so repeated calls do not reload the file.
    threshold: nucleus probability threshold (default: the model's); min_area: drop objects with fewer
        pixels (default: the model's), counted at the model's canonical nucleus diameter: an image
        whose nuclei are twice that size drops objects under 4x as many of its own pixels.
    labelling: "auto" (the model's: "seeded" for nucleus + boundary models, else "plain"), "plain"
        (threshold + connected components of the nucleus map) or "seeded" (seeds inside nuclei grown
        through the foreground, so touching nuclei stay apart; see :func:`unetseg.seeded_label`).
    boundary_threshold: seeded labelling's boundary threshold (default: the model's).
    tile_size: images with a side longer than this are cut into tiles of this side (rounded up to the
        network's size multiple) plus a ``halo`` on each side (default: the model's receptive-field
        radius), and only each tile's centre is kept; the probability map is labelled whole, so
        the result equals the untiled one. None: images of more than 2048 x 2048 pixels are tiled
        by 1024; 0: never tile. Normalisation always uses the whole image.
    tta: test-time augmentation. The network runs on the eight symmetries of each image (four
        quarter turns, each also mirrored) and the probabilities, turned back, are averaged: eight
        times the network's time, for a more accurate map (on the DSB 2018 validation split the
        default model's DSB score goes from 0.588 to 0.605; see docs/model_card.md).
    precision: the network's, as :class:`Runner` ("bfloat16": about 1.9x faster on CPUs with native
        bfloat16, same scores; ignored when `model` is a Runner, which has its own).
    diameter: the images' median nucleus diameter in pixels, for models trained at a canonical
        diameter (``Runner.diameter``, the bundled model's included): each image is resized by
        canonical / diameter for the network, and the probabilities resized back before labelling,
        so labels are at the image's resolution. "auto" (default): estimated per image by the
        network itself (a first pass, other sizes where it is unsure or to check it, then a pass at
        the estimate; see the README). Models without a
        canonical diameter never rescale and refuse a number.
    channel: the channel holding the nuclei (0-based, channels last) of multi-channel images, e.g.
        the DAPI plane of a fluorescence composite: segmented alone, as a gray image. Without it
        images must be gray, RGB or RGBA (two channels are refused as ambiguous).
    Returns one :class:`Segmentation` per image, in order.
    """
    if isinstance(model, Runner):
        runner = model
    else:
        path = Path(model) if model is not None else default_model_path()
        runner = _cached_runner(str(path.resolve()), device, batch_size or 8, precision)  # Runner checks the file
    return runner.segment(
        images,
        threshold=threshold,
        min_area=min_area,
        labelling=labelling,
        boundary_threshold=boundary_threshold,
        tile_size=tile_size,
        halo=halo,
        tta=tta,
        diameter=diameter,
        channel=channel,
        progress=progress,
    )
