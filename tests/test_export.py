"""TorchScript export: parity with the eager model, metadata, warnings, errors."""

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint

from unetseg.checkpoint import model_from_checkpoint
from unetseg.cli import main
from unetseg.data import Normalisation, read_image, synthetic_nuclei, to_channels
from unetseg.export import FORMAT_VERSION, METADATA_FILE, export, load, read_metadata

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_stage1_train"


def _batch(image, channels):
    x = Normalisation()(to_channels(image, channels))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _check_parity(ckpt, images, tmp_path):
    path = tmp_path / "m.pt"
    export(ckpt, path)
    scripted, metadata = load(path)
    eager = model_from_checkpoint(ckpt)
    with torch.no_grad():
        for image in images:
            x = _batch(image, ckpt["in_channels"])
            torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)
    return metadata


@pytest.mark.parametrize(
    "architecture,in_channels,out_channels,options",
    [("unet", 1, 1, {}), ("unet", 3, 2, {"depth": 3}), ("mobilenetv2_unet", 3, 1, {"decoder_width": 8})],
)
def test_exported_model_equals_eager_on_synthetic_images(tmp_path, architecture, in_channels, out_channels, options):
    ckpt = make_checkpoint(architecture, in_channels, out_channels, **options)
    images = [
        synthetic_nuclei(shape, kind=kind, seed=i).image
        for i, (shape, kind) in enumerate(
            [((64, 64), "fluorescence"), ((37, 90), "brightfield"), ((130, 71), "fluorescence")]
        )
    ]
    metadata = _check_parity(ckpt, images, tmp_path)
    assert metadata["architecture"] == architecture and metadata["in_channels"] == in_channels
    assert metadata["out_channels"] == out_channels and len(metadata["outputs"]) == out_channels
    assert metadata["size_multiple"] == (32 if architecture == "mobilenetv2_unet" else 2 ** options.get("depth", 2))


@pytest.mark.skipif(not SHARED.is_dir(), reason="real DSB 2018 data (../shared/data) not present")
def test_exported_model_equals_eager_on_real_images(tmp_path):
    picked = [read_image(p) for p in sorted((SHARED / "images").glob("*.png"))[::150]]  # gray, RGB, sizes
    _check_parity(make_checkpoint(in_channels=3, out_channels=2), picked, tmp_path)


def test_metadata_is_complete_and_readable_without_loading(model_file):
    path, ckpt = model_file
    m = read_metadata(path)
    assert m["format"] == "unetseg-model" and m["format_version"] == FORMAT_VERSION
    assert m["options"] == ckpt["model"]["options"]
    assert m["normalisation"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert m["outputs"] == ["nucleus"] and m["threshold"] == 0.5 and m["output_activation"] == "sigmoid"
    assert m["training_data"]["dataset"] == "synthetic" and m["training_data"]["val_names"] == ["b"]
    assert m["validation"] == {"dsb_score": 0.5}
    import unetseg

    assert m["unetseg_version"] == unetseg.__version__
    with zipfile.ZipFile(path) as z:  # the metadata is an extra file of the TorchScript archive
        assert any(n.endswith(f"extra/{METADATA_FILE}") for n in z.namelist())


def test_exported_model_is_frozen(model_file):
    scripted, _ = load(model_file[0])
    assert not list(scripted.parameters())  # weights are constants of the graph
    assert "batch_norm" not in str(scripted.graph)  # folded into the convolutions


def test_no_jit_deprecation_warning_reaches_the_user(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(make_checkpoint(), tmp_path / "m.pt")
        load(tmp_path / "m.pt")


def test_valid_padding_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="padding='same'"):
        export(make_checkpoint(padding="valid"), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_bad_model_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metadata(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript model file"):
        read_metadata(tmp_path / "junk.pt")
    plain = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ValueError, match="without unetseg metadata"):
        read_metadata(plain)


def test_export_cli(tmp_path, capsys):
    ckpt_path = tmp_path / "best.pt"
    torch.save(make_checkpoint(), ckpt_path)
    assert main(["export", str(ckpt_path), "-o", str(tmp_path / "model.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads(json.dumps(read_metadata(tmp_path / "model.pt")))["architecture"] == "unet"
    with pytest.raises(SystemExit, match="unetseg export"):
        main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.pt")])
