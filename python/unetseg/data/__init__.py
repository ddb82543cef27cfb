"""Datasets, readers, normalisation, augmentation and the synthetic nuclei generator."""

from .dataset import NucleiDataset
from .readers import (
    Sample,
    read_dataset,
    read_datasets,
    read_dsb2018,
    read_image,
    read_label_folders,
    read_npz,
    read_pairs,
)
from .synthetic import SyntheticNuclei, synthetic_nuclei
from .transforms import (
    Augment,
    Normalisation,
    PixelWeights,
    separation_weights,
    small_object_weights,
    targets,
    to_channels,
)

__all__ = [
    "Augment",
    "Normalisation",
    "NucleiDataset",
    "PixelWeights",
    "Sample",
    "SyntheticNuclei",
    "read_dataset",
    "read_datasets",
    "read_dsb2018",
    "read_image",
    "read_label_folders",
    "read_npz",
    "read_pairs",
    "separation_weights",
    "small_object_weights",
    "synthetic_nuclei",
    "targets",
    "to_channels",
]
