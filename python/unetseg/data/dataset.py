"""A torch Dataset over in-memory samples: normalise, crop or resize, augment, make targets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .readers import Sample
from .transforms import Augment, Normalisation, PixelWeights, pad_to, random_crop, resize, targets, to_channels


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
        contact_width: see :func:`targets`.
        pixel_weights: a :class:`PixelWeights`: the target gains a last channel, the per-pixel BCE weights
            of the crop's labels, which ``unetseg.train.loss_fn`` uses.
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
        pixel_weights: PixelWeights | None = None,
    ):
        if mode not in ("crop", "center", "resize"):
            raise ValueError(f"mode must be 'crop', 'center' or 'resize', got {mode!r}")
        if not samples:
            raise ValueError("no samples: the dataset is empty")
        self.samples, self.channels, self.out_channels = samples, channels, out_channels
        self.size, self.mode, self.augment, self.normalisation = size, mode, augment, normalisation
        self.samples_per_epoch = samples_per_epoch or len(samples)
        self.seed, self.contact_width = seed, contact_width
        # in shared memory: a DataLoader's persistent workers hold copies of this dataset made once, and
        # would otherwise draw the first epoch's crops and augmentations in every epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.pixel_weights = pixel_weights
        # normalise once: percentiles over the whole image, not over a crop
        self.images = [normalisation(to_channels(s.image, channels)) for s in samples]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draws this epoch's crops and augmentations, in this process and in the loader's workers."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int):
        i = index % len(self.samples)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, labels = self.images[i], self.samples[i].labels
        if self.mode == "resize":
            image, labels = resize(image, labels, self.size)
        else:
            if self.augment is not None and self.augment.scale != (1.0, 1.0):
                # crop a larger window first so the scaled crop still covers `size`
                window = int(np.ceil(self.size / self.augment.scale[0])) + 2
                image, labels = random_crop(image, labels, window, rng)
            if self.augment is not None:
                image, labels = self.augment(image, labels, rng)
            if self.mode == "crop":
                image, labels = random_crop(image, labels, self.size, rng)
            else:
                image, labels = pad_to(image, labels, self.size)
                y, x = (image.shape[0] - self.size) // 2, (image.shape[1] - self.size) // 2
                image, labels = image[y : y + self.size, x : x + self.size], labels[y : y + self.size, x : x + self.size]
        if self.mode == "resize" and self.augment is not None:
            image, labels = self.augment(image, labels, rng)
            image, labels = random_crop(image, labels, self.size, rng)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        labels = np.ascontiguousarray(labels)
        target = targets(labels, self.out_channels, self.contact_width)
        if self.pixel_weights is not None:
            target = np.concatenate([target, self.pixel_weights(labels)[None]])
        return image, torch.from_numpy(target)
