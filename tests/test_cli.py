"""The command line: the README's main job and its outputs."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

import unetseg
from unetseg.cli import _read_probability_map, main


def test_label_bundled_map(capsys, tmp_path):
    assert main(["label", "-o", str(tmp_path / "labels.png")]) == 0
    out = capsys.readouterr().out
    scores = torch.from_numpy(_read_probability_map(None))
    count = unetseg.label(scores).counts.item()
    assert f"{count} objects" in out and count > 100
    import cv2

    written = cv2.imread(str(tmp_path / "labels.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.max() == count
    np.testing.assert_array_equal(written, unetseg.label(scores).labels.numpy())


def test_label_a_user_map_with_options(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "map.npy", rng.random((64, 80), dtype=np.float32))
    assert (
        main(
            [
                "label",
                str(tmp_path / "map.npy"),
                "-t",
                "0.7",
                "-c",
                "4",
                "--min-area",
                "3",
                "-o",
                str(tmp_path / "l.tif"),
            ]
        )
        == 0
    )
    expected = unetseg.label(torch.from_numpy(np.load(tmp_path / "map.npy")), 0.7, 4, 3)
    assert f"{expected.counts.item()} objects" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"), expected.labels.numpy())


def test_label_bad_inputs(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read .*junk.png"):
        main(["label", str(tmp_path / "junk.png")])
    np.save(tmp_path / "rgb.npy", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(SystemExit, match=r"single-channel probability map, got shape \(4, 4, 3\)"):
        main(["label", str(tmp_path / "rgb.npy")])


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "unetseg.cli", "label", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "probability map" in result.stdout
