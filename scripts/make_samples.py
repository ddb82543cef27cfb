"""Writes the bundled sample images (python/unetseg/assets/samples/) with the project's generator.

    .venv/bin/python scripts/make_samples.py

Three images that `unetseg segment --samples` segments: gray fluorescence (8-bit PNG), gray
fluorescence at 16 bits (TIFF, a non-square size) and H&E-like bright-field (RGB PNG), with their
true labels in labels/ so the results can be checked by eye or with `unetseg evaluate`.
"""

from pathlib import Path

import numpy as np

from unetseg.data import synthetic_nuclei
from unetseg.io import write_image, write_labels

OUT = Path(__file__).resolve().parents[1] / "python" / "unetseg" / "assets" / "samples"

SAMPLES = {
    "fluorescence.png": dict(shape=(512, 512), kind="fluorescence", coverage=0.18, seed=11),
    "fluorescence_16bit.tif": dict(shape=(384, 640), kind="fluorescence", coverage=0.15, seed=12),
    "brightfield.png": dict(shape=(512, 512), kind="brightfield", coverage=0.18, seed=13),
}

for name, options in SAMPLES.items():
    sample = synthetic_nuclei(**options)
    image = sample.image.astype(np.uint16) * 257 if "16bit" in name else sample.image
    write_image(OUT / name, image)
    write_labels(OUT / "labels" / (Path(name).stem + ".png"), sample.labels)
    print(f"{OUT / name}: {image.shape} {image.dtype}, {sample.labels.max()} nuclei")
