"""A torch Dataset over in-memory samples: normalise, crop or resize, augment, make targets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import _C
from .readers import Sample
from .transforms import (
    Augment,
    Normalisation,
    PixelWeights,
    median_diameter,
    pad_to,
    random_crop,
    rescale,
    resize,
    targets,
    to_channels,
)

# Rescaling to the canonical diameter stays within the runner's factors (runner.h): an image whose
# labels give an outlandish diameter (a few fragments, one huge blob) is not blown up or crushed.
MIN_RESCALE, MAX_RESCALE = _C.MIN_RESCALE, _C.MAX_RESCALE


def stratum(sample: Sample) -> str:
    """The sampling and split stratum of an image: ``<dataset>:<kind>``."""
    return f"{sample.dataset}:{sample.kind}"


def sampling_probabilities(
    samples: list[Sample], areas: list[int], weights: dict[str, float] | None = None
) -> np.ndarray:
    """Per-image probabilities of a balanced epoch: each stratum (dataset and kind) gets an equal share
    times its weight, and within a stratum an image is drawn in proportion to its area, so a large
    image gives several crops and neither image count nor image size lets a set dominate.

    `weights` maps a dataset name (all its kinds) or a ``dataset:kind`` stratum to a factor (default 1);
    a name that matches nothing is an error."""
    weights = dict(weights or {})
    strata = [stratum(s) for s in samples]
    known = set(strata) | {s.dataset for s in samples}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(
            f"sampling weights name {unknown}, which are neither datasets nor dataset:kind strata of "
            f"the training images; known: {sorted(known)}"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"sampling weights must be finite and >= 0, got {weights}")
    p = np.zeros(len(samples))
    for name in sorted(set(strata)):
        members = [i for i, s in enumerate(strata) if s == name]
        share = weights.get(name, weights.get(samples[members[0]].dataset, 1.0))
        area = np.asarray([areas[i] for i in members], np.float64)
        p[members] = share * area / area.sum()
    if p.sum() <= 0:
        raise ValueError(f"sampling weights {weights} leave nothing to sample")
    return p / p.sum()


class NucleiDataset(Dataset):
    """Yields ``(image float32 (C, S, S), target float32 (K, S, S))``: K = out_channels, plus one with
    ``pixel_weights``.

    Args:
        samples: images with instance labels.
        channels: image channels the model takes (1 or 3).
        out_channels: 1 (nucleus) or 2 (nucleus + boundary).
        size: crop (or resize) side length.
        mode: "crop" (random crops, the default for training), "center" (deterministic centre crops,
            for validation) or "resize" (to size x size).
        augment: an :class:`Augment`, or None.
        samples_per_epoch: items per epoch (crops are drawn anew each time); default len(samples).
        seed: base seed; each item's randomness depends on (seed, epoch, index) only, so any number of
            worker processes gives the same batches.
        contact_width, rim_fraction: see :func:`targets`.
        pixel_weights: a :class:`PixelWeights`: the target gains a last channel, the per-pixel BCE weights
            of the crop's labels, which ``unetseg.train.loss_fn`` uses.
        diameter: the canonical nucleus diameter in pixels: each image is resized so that the median
            diameter of its nuclei (:func:`median_diameter`) becomes this (by a factor within
            [MIN_RESCALE, MAX_RESCALE]); None: images stay as they are.
        balanced: items draw their image at random with :func:`sampling_probabilities` (balanced by
            dataset and kind, large images more often); False: item i is image i modulo the count.
        sampling_weights: see :func:`sampling_probabilities`.
    """

    def __init__(
        self,
        samples: list[Sample],
        channels: int,
        out_channels: int,
        size: int = 256,
        mode: str = "crop",
        augment: Augment | None = None,
        normalisation: Normalisation = Normalisation(),
        samples_per_epoch: int | None = None,
        seed: int = 0,
        contact_width: int = 0,
        rim_fraction: float = 0.0,
        pixel_weights: PixelWeights | None = None,
        diameter: float | None = None,
        balanced: bool = False,
        sampling_weights: dict[str, float] | None = None,
    ):
        if mode not in ("crop", "center", "resize"):
            raise ValueError(f"mode must be 'crop', 'center' or 'resize', got {mode!r}")
        if not samples:
            raise ValueError("no samples: the dataset is empty")
        self.samples, self.channels, self.out_channels = samples, channels, out_channels
        self.size, self.mode, self.augment, self.normalisation = size, mode, augment, normalisation
        self.samples_per_epoch = samples_per_epoch or len(samples)
        self.seed, self.contact_width, self.rim_fraction = seed, contact_width, rim_fraction
        # in shared memory: a DataLoader's persistent workers hold copies of this dataset made once, and
        # would otherwise draw the first epoch's crops and augmentations in every epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.pixel_weights = pixel_weights
        # normalise once: percentiles over the whole image, not over a crop
        self.images = [normalisation(to_channels(s.image, channels)) for s in samples]
        self.labels = [s.labels for s in samples]
        if diameter is not None:
            if not (np.isfinite(diameter) and diameter > 0):
                raise ValueError(f"diameter must be a positive number of pixels, got {diameter}")
            for i, labels in enumerate(self.labels):
                d = median_diameter(labels)
                factor = 1.0 if not np.isfinite(d) else float(np.clip(diameter / d, MIN_RESCALE, MAX_RESCALE))
                self.images[i], self.labels[i] = rescale(self.images[i], labels, factor)
        self.probabilities = None
        if balanced:
            self.probabilities = sampling_probabilities(samples, [lab.size for lab in self.labels], sampling_weights)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draws this epoch's crops and augmentations, in this process and in the loader's workers."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.probabilities is None:
            i = index % len(self.samples)
        else:
            i = int(rng.choice(len(self.samples), p=self.probabilities))
        image, labels = self.images[i], self.labels[i]
        if self.mode == "resize":
            image, labels = resize(image, labels, self.size)
        else:
            if self.augment is not None and self.augment.scale != (1.0, 1.0):
                # crop a larger window first so the scaled crop still covers `size`
                window = int(np.ceil(self.size / self.augment.scale[0])) + 2
                image, labels = random_crop(image, labels, window, rng)
            if self.augment is not None:
                image, labels = self.augment.geometric(image, labels, rng)
            if self.mode == "crop":
                image, labels = random_crop(image, labels, self.size, rng)
            else:
                image, labels = pad_to(image, labels, self.size)
                y, x = (image.shape[0] - self.size) // 2, (image.shape[1] - self.size) // 2
                image, labels = (
                    image[y : y + self.size, x : x + self.size],
                    labels[y : y + self.size, x : x + self.size],
                )
        if self.mode == "resize" and self.augment is not None:
            image, labels = self.augment.geometric(image, labels, rng)
            image, labels = random_crop(image, labels, self.size, rng)
        if self.augment is not None:  # per pixel: on the crop's pixels only
            image = self.augment.photometric(image, rng)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        labels = np.ascontiguousarray(labels)
        target = targets(labels, self.out_channels, self.contact_width, self.rim_fraction)
        if self.pixel_weights is not None:
            target = np.concatenate([target, self.pixel_weights(labels)[None]])
        return image, torch.from_numpy(target)
