"""Datasets, readers, normalisation, augmentation and the synthetic nuclei generator."""

from .synthetic import SyntheticNuclei, synthetic_nuclei

__all__ = ["SyntheticNuclei", "synthetic_nuclei"]
