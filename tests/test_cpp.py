"""C++: the runner's unit tests and the embedding example, built with CMake against the installed
package (find_package(unetseg), target unetseg::unetseg) and run with no Python in the process."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg
from unetseg.data import synthetic_nuclei
from unetseg.segment import default_model_path

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def build(project: Path, build_dir: Path) -> Path:
    prefix = f"{unetseg.cmake_prefix_path};{torch.utils.cmake_prefix_path}"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (
        [
            "cmake",
            "-S",
            str(project),
            "-B",
            str(build_dir),
            f"-DCMAKE_PREFIX_PATH={prefix}",
            "-DCMAKE_BUILD_TYPE=Release",
            *generator,
        ],
        ["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 2)],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return build_dir


def test_cpp_runner_unit_tests(tmp_path, model_file):
    exe = build(ROOT / "tests" / "cpp", tmp_path / "build") / "test_runner"
    done = subprocess.run([str(exe), str(default_model_path()), str(model_file[0])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all C++ runner tests passed" in done.stdout


def _write_netpbm(path: Path, image: np.ndarray) -> None:
    magic = b"P6" if image.ndim == 3 else b"P5"
    maxval = 65535 if image.dtype == np.uint16 else 255
    pixels = image.astype(">u2").tobytes() if image.dtype == np.uint16 else image.tobytes()
    path.write_bytes(magic + f"\n# unetseg test\n{image.shape[1]} {image.shape[0]}\n{maxval}\n".encode() + pixels)


def test_embedding_example_equals_segment_batch(tmp_path):
    exe = build(ROOT / "examples" / "cpp", tmp_path / "build") / "segment_image"
    fl = synthetic_nuclei((150, 203), seed=4).image
    bf = synthetic_nuclei((128, 128), kind="brightfield", seed=5).image
    for name, image in [("gray8.pgm", fl), ("gray16.pgm", fl.astype(np.uint16) * 257), ("rgb.ppm", bf)]:
        _write_netpbm(tmp_path / name, image)
        done = subprocess.run(
            [str(exe), str(default_model_path()), str(tmp_path / name), str(tmp_path / "labels.npy")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        want = unetseg.segment_batch([image])[0]
        np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), want.labels)
        table = np.loadtxt(done.stdout.splitlines()[1:], delimiter=",", ndmin=2)
        assert len(table) == want.count > 0
        np.testing.assert_allclose(table[:, 1:], want.objects.table, rtol=1e-5)
    done = subprocess.run(
        [str(exe), str(default_model_path()), str(tmp_path / "missing.pgm"), "x.npy"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "cannot open" in done.stderr
