"""The scripts prepared for a lent GPU machine (issue 31), as far as a CPU runs them: the training data
packed small enough to travel and unpacked into the layout `unetseg train` reads; gpu-train.sh
run through on the CPU; the shell scripts' syntax."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from unetseg.checkpoint import load_checkpoint
from unetseg.data import read_datasets, synthetic_nuclei

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _dataset(root: Path, name: str, kind: str, images: dict) -> None:
    (root / name / "images").mkdir(parents=True)
    (root / name / "labels").mkdir()
    rows = ["id,kind"]
    for stem, (image, labels) in images.items():
        cv2.imwrite(str(root / name / "images" / f"{stem}.png"), image)
        cv2.imwrite(str(root / name / "labels" / f"{stem}.png"), labels.astype(np.uint16))
        rows.append(f"{stem},{kind}")
    (root / name / "manifest.csv").write_text("\n".join(rows) + "\n")


def test_training_data_packs_small_and_unpacks_to_the_same_images_and_labels(tmp_path):
    fl = synthetic_nuclei((96, 128), seed=1)
    big = synthetic_nuclei((160, 160), radius=(20, 26), seed=2)  # nuclei over 20 px: shrunk when packed
    he = synthetic_nuclei((96, 96), kind="brightfield", seed=3)
    _dataset(
        tmp_path / "data",
        "fluo",
        "gray_fluorescence",
        {
            "gray": (fl.image, fl.labels),
            "rgb_gray": (np.repeat(fl.image[..., None], 3, axis=2), fl.labels),  # kept as one channel
            "deep": (fl.image.astype(np.uint16) * 200, fl.labels),  # 16-bit: PNG, exact
            "large": (big.image, big.labels),
        },
    )
    _dataset(tmp_path / "data", "he", "color_brightfield_HE", {"tile": (he.image, he.labels)})
    cv2.imwrite(str(tmp_path / "data" / "he" / "labels" / "odd.png"), np.zeros((5, 5), np.uint16))
    cv2.imwrite(str(tmp_path / "data" / "he" / "images" / "odd.png"), np.zeros((6, 6), np.uint8))  # sizes differ

    packed = tmp_path / "train.npz"
    run = [sys.executable, str(SCRIPTS / "gpu-data.py")]
    done = subprocess.run(
        [*run, "pack", "--data", str(tmp_path / "data"), "--out", str(packed), "--max-mib", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "left out he/odd.png" in done.stderr and "5 images of 2 sets" in done.stdout
    subprocess.run([*run, "unpack", str(packed), str(tmp_path / "out")], capture_output=True, check=True)

    got = {s.name.split("/")[-1]: s for s in read_datasets([tmp_path / "out" / "fluo", tmp_path / "out" / "he"])}
    assert sorted(got) == ["deep", "gray", "large", "rgb_gray", "tile"]
    assert got["tile"].kind == "color_brightfield_HE" and got["gray"].kind == "gray_fluorescence"
    for name, sample in (("gray", fl), ("rgb_gray", fl), ("deep", fl), ("tile", he)):
        np.testing.assert_array_equal(got[name].labels, sample.labels)
    np.testing.assert_array_equal(got["deep"].image, fl.image.astype(np.uint16) * 200)
    assert got["rgb_gray"].image.ndim == 2
    assert np.abs(got["gray"].image.astype(int) - fl.image).mean() < 4  # PNG or JPEG, whichever is smaller
    assert got["large"].labels.shape[0] < 160  # shrunk towards the canonical diameter, labels with it
    assert len(np.unique(got["large"].labels)) == len(np.unique(big.labels))


@pytest.mark.parametrize("script", ["gpu-check.sh", "gpu-train.sh", "gpu-wheels.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def test_gpu_train_runs_end_to_end_on_the_cpu(tmp_path):
    """gpu-train.sh as the GPU machine runs it, on the CPU with a few synthetic images: unpack,
    train from the bundled model, return the checkpoint in parts, export and score it."""
    images = {
        "fluo": ("gray_fluorescence", [synthetic_nuclei((96, 96), seed=i) for i in range(6)]),
        "he": ("color_brightfield_HE", [synthetic_nuclei((96, 96), kind="brightfield", seed=9 + i) for i in range(6)]),
    }
    for name, (kind, samples) in images.items():
        _dataset(tmp_path / "data", name, kind, {f"{name}{i}": (s.image, s.labels) for i, s in enumerate(samples)})
    packed = tmp_path / "train.npz"
    subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu-data.py"), "pack", "--data", str(tmp_path / "data"), "--out", str(packed)],
        capture_output=True,
        check=True,
    )
    out = tmp_path / "out"
    settings = dict(PYTHON=sys.executable, DATA=str(packed), DEVICE="cpu", GPU_TRAIN_SECONDS="60", BATCH="2")
    settings.update(SAMPLES="4", WORKERS="0", WORK=str(tmp_path / "work"), OUT=str(out))
    done = subprocess.run(["bash", str(SCRIPTS / "gpu-train.sh")], env={**os.environ, **settings}, capture_output=True)
    log = (out / "gpu-train.log").read_text()
    assert done.returncode == 0 and "evaluate: exit 0" in log, log
    joined = b"".join(part.read_bytes() for part in sorted(out.glob("best.pt.part-*")))
    (tmp_path / "best.pt").write_bytes(joined)
    assert load_checkpoint(tmp_path / "best.pt")["config"]["model_options"]["base_width"] == 24
    table = (out / "evaluate.md").read_text()
    assert "| all | 2 |" in table and "| he | 1 |" in table, table
