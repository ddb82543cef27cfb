"""BioImage Model Zoo packages (bioimage.io model spec 0.5) of unetseg models, which deepImageJ,
ilastik, QuPath and napari (bioimageio tools) can run.

A package is a zip with ``rdf.yaml`` and its files: the network as TorchScript weights (the model
file's frozen network, which holds no unetseg custom op: labelling is the runner's, outside the
network), the preprocessing as the spec's ``scale_range`` (unetseg's per-image, per-channel
percentile normalisation), ``sigmoid`` postprocessing (the network returns logits), test input and
output tensors made by the network itself, a cover picture, and a ``config.unetseg`` block with the
post-processing unetseg applies (labelling, thresholds, min area, canonical diameter), so
``unetseg segment -m model.zip`` runs the package as unetseg's own model file.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = "0.5.4"
WEIGHTS = "weights.pt"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def export_bioimageio(
    model_file: str | os.PathLike,
    output: str | os.PathLike,
    *,
    name: str | None = None,
    authors: list[str] | None = None,
    maintainer: str | None = None,
) -> Path:
    """Writes a bioimage.io model package (zip) of a unetseg model file (``unetseg export``'s, or the
    bundled default) to `output`, atomically. Returns its path. `maintainer`: a GitHub user name (the
    model zoo asks for one; without it the spec's validator warns)."""
    import yaml

    from .export import read_metadata
    from .io import atomic_path

    model_file = Path(model_file)
    meta = read_metadata(model_file)
    files = _package_files(model_file, meta)
    rdf = _rdf(meta, files, name, authors, maintainer)
    output = Path(output)
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf, sort_keys=False))
        for name_, data in files.items():
            archive.writestr(name_, data)
    return output


def _package_files(model_file: Path, meta: dict) -> dict[str, bytes]:
    """The package's files but rdf.yaml: the weights, test and sample tensors (a synthetic image
    through the package's own preprocessing and network), a cover picture and the README."""
    import cv2
    import torch

    from .data import Normalisation, synthetic_nuclei, to_channels
    from .export import load
    from .io import overlay
    from .segment import Runner

    network, _ = load(model_file)
    in_channels = meta["in_channels"]
    norm = Normalisation(**meta["normalisation"])

    # test tensors: a synthetic image through the package's own preprocessing and network
    sample = synthetic_nuclei((256, 256), seed=0, kind="fluorescence" if in_channels == 1 else "brightfield")
    raw = np.ascontiguousarray(to_channels(sample.image, in_channels).transpose(2, 0, 1)[None]).astype(np.float32)
    x = norm(to_channels(sample.image, in_channels)).transpose(2, 0, 1)[None].astype(np.float32)
    with torch.no_grad():
        probs = torch.sigmoid(network(torch.from_numpy(np.ascontiguousarray(x))).float()).numpy()
    seg = Runner(model_file, precision="float32", device="cpu").segment([sample.image], diameter=meta.get("diameter"))
    cover = overlay(sample.image, seg[0].labels)
    ok, cover_png = cv2.imencode(".png", cover[..., ::-1])
    return {
        WEIGHTS: model_file.read_bytes(),
        "test_input.npy": _npy(raw),
        "test_output.npy": _npy(probs),
        "sample_input.tif": _tif(raw),
        "sample_output.tif": _tif(probs),
        "cover.png": cover_png.tobytes(),
        "README.md": _readme(meta).encode(),
    }


def _rdf(meta: dict, files: dict[str, bytes], name, authors, maintainer) -> dict:
    """rdf.yaml of the package (bioimage.io model spec 0.5): tensors, preprocessing, weights and
    unetseg's own post-processing settings."""
    import torch

    from .data import Normalisation

    in_channels, multiple = meta["in_channels"], int(meta["size_multiple"])
    norm = Normalisation(**meta["normalisation"])
    channel_names = ["r", "g", "b"] if in_channels == 3 else ["gray"]
    space = {"min": multiple, "step": multiple}
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name or f"unetseg nuclei {meta['architecture']}",
        "description": "Cell-nuclei segmentation: a U-Net predicting nucleus and nucleus-boundary probabilities "
        "(unetseg); instances by seeded labelling of the two maps.",
        "authors": [{"name": a} for a in (authors or ["unetseg developers"])],
        "cite": _citations(meta),
        "license": "MIT",
        **({"maintainers": [{"name": maintainer, "github_user": maintainer}]} if maintainer else {}),
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": [
            "nuclei",
            "segmentation",
            "instance-segmentation",
            "unet",
            "fluorescence-light-microscopy",
            "brightfield-microscopy",
            "histopathology",
            "2d",
            "pytorch",
        ],
        "inputs": [
            {
                "id": "raw",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channel_names},
                    {"type": "space", "id": "y", "size": space},
                    {"type": "space", "id": "x", "size": space},
                ],
                "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
                "sample_tensor": {"source": "sample_input.tif", "sha256": _sha256(files["sample_input.tif"])},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": norm.low,
                            "max_percentile": norm.high,
                            "eps": 1e-6,
                        },
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": [o.replace(" ", "_") for o in meta["outputs"]]},
                    {"type": "space", "id": "y", "size": {"tensor_id": "raw", "axis_id": "y"}},
                    {"type": "space", "id": "x", "size": {"tensor_id": "raw", "axis_id": "x"}},
                ],
                "test_tensor": {"source": "test_output.npy", "sha256": _sha256(files["test_output.npy"])},
                "sample_tensor": {"source": "sample_output.tif", "sha256": _sha256(files["sample_output.tif"])},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "torchscript": {
                "source": WEIGHTS,
                "sha256": _sha256(files[WEIGHTS]),
                "pytorch_version": torch.__version__.split("+")[0],
            }
        },
        "config": {
            "unetseg": {
                k: meta.get(k)
                for k in (
                    "labelling",
                    "threshold",
                    "boundary_threshold",
                    "min_area",
                    "diameter",
                    "halo",
                    "size_multiple",
                    "format_version",
                )
            }
        },
    }


def _tif(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack", metadata={"axes": "QCYX"})
    return buffer.getvalue()


def _citations(meta: dict) -> list[dict]:
    cites = [
        {
            "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
            "Segmentation. MICCAI 2015.",
            "doi": "10.1007/978-3-319-24574-4_28",
        },
        {
            "text": "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science "
            "Bowl. Nature Methods 2019.",
            "doi": "10.1038/s41592-019-0612-7",
        },
    ]
    return cites


def _readme(meta: dict) -> str:
    training = meta.get("training_data") or {}
    datasets = training.get("dataset")
    datasets = ", ".join(datasets) if isinstance(datasets, list) else datasets
    return (
        "# unetseg nuclei model\n\n"
        f"A {meta['architecture']} ({meta.get('options')}) predicting {', '.join(meta['outputs'])} probabilities. "
        f"Trained on: {datasets}. Canonical nucleus diameter: {meta.get('diameter')} pixels (resize images so their "
        "nuclei are about this wide). Instances: seeded labelling (seeds: nucleus > threshold and boundary < "
        "boundary_threshold, grown through the nucleus mask), parameters in `config.unetseg` (min_area counts "
        "pixels at the canonical diameter).\n\n"
        "With unetseg: `unetseg segment images/ -m model.zip -o out/` (labels, GeoJSON, object table).\n\n"
        "# Validation\n\n"
        f"Validation figures of this model (its held-out images, per dataset and kind, through unetseg's runner): "
        f"{_validation_text(meta)}. The model card of unetseg (docs/model_card.md) has the full tables.\n"
    )


def _validation_text(meta: dict) -> str:
    validation = meta.get("validation") or {}
    scores = {k: v for k, v in validation.items() if isinstance(v, (int, float))}
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) or "see the model card"


def model_file_from_package(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The unetseg model file inside a bioimage.io package written by :func:`export_bioimageio`
    (extracted next to it, or into `cache`), so the runner can load a package."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "rdf.yaml" not in names or WEIGHTS not in names:
            raise ValueError(f"{path} is not a bioimage.io package made by unetseg (no rdf.yaml + {WEIGHTS})")
        target = Path(cache or path.parent) / f".{path.stem}.unetseg.pt"
        data = archive.read(WEIGHTS)
    if not target.exists() or target.read_bytes() != data:
        from .io import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return target
