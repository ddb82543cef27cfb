"""The CUDA path of the label ops.

Three layers, so that a machine without a GPU still checks what it can:
- every .cu file compiles with nvcc for sm_80 and sm_90 (skipped only where nvcc is missing);
- the CUDA kernels' algorithm (csrc/ops/cuda/ccl_parallel.h) run by a sequential host executor
  (tests/cuda_emulation) equals scipy.ndimage.label and the CPU op, bit for bit;
- on a GPU: the CUDA op itself against the CPU op (skipped with the reason where there is none).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import skimage.segmentation
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import label_batch
from test_label import DTYPES, EDGE_CASES, blobby, cast, in_layout
from test_seeded import SEEDED_LAYOUTS, seeded_layout, thresholds, touching_disks, two_channel

import unetseg
from unetseg.ops import STATS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc").rglob("*.cu"))
SCORE_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.uint8: 3, torch.bool: 4}


# ---- nvcc -----------------------------------------------------------------------------------------


def test_there_are_cuda_sources():
    assert [p.name for p in CUDA_SOURCES] == ["label_kernel.cu"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile_for_sm80_and_sm90(source, tmp_path):
    command = [
        "nvcc",
        "-std=c++17",
        "-O3",
        "-Werror",
        "all-warnings",
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
        "-Xcompiler",
        "-Wall,-Wextra",
        "-c",
        str(source),
        "-o",
        str(tmp_path / "out.o"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Batches of blob maps in every layout, dtype, connectivity and min_area the ops take.
BATCHES = dict(
    n=st.integers(1, 4),
    h=st.integers(1, 100),
    w=st.integers(1, 100),
    density=st.floats(0.2, 0.8),
    smooth=st.sampled_from([0.0, 1.0, 3.0]),
    layout=st.sampled_from(["nhw", "n1hw", "hw", "transposed", "strided", "channel_view"]),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.sampled_from([0, 0, 1, 5, 30]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)


# ---- the kernels' algorithm on the host -----------------------------------------------------------


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """The ctypes library of tests/cuda_emulation/emulate.cpp, built with the C++ compiler."""
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX").split()[0]
    library = tmp_path_factory.mktemp("emulation") / "emulate.so"
    command = [
        compiler,
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-shared",
        "-fPIC",
        str(ROOT / "tests/cuda_emulation/emulate.cpp"),
        "-o",
        str(library),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lib = ctypes.CDLL(str(library))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.emulate_label.argtypes = [ptr, ctypes.c_int32, i64, i64, i64, ptr, f32, ctypes.c_int32, i64, ptr, ptr]
    lib.emulate_stats.argtypes = [ptr, ctypes.c_int32, i64, i64, i64, ptr, ptr, ptr, i64, ptr]
    lib.emulate_seeded.argtypes = [
        ptr,
        ctypes.c_int32,
        i64,
        i64,
        i64,
        ptr,
        i64,
        f32,
        f32,
        ctypes.c_int32,
        i64,
        ptr,
        ptr,
    ]
    return lib


def _geometry(scores: torch.Tensor):
    """(n, h, w) and element strides as the ops see them (check_label_args)."""
    images = scores[:, 0] if scores.dim() == 4 else scores
    if images.dim() == 2:
        return (1, *images.shape), np.array([0, *images.stride()], np.int64)
    return tuple(images.shape), np.array(images.stride(), np.int64)


def _rounded(threshold: float, dtype: torch.dtype) -> float:
    return torch.tensor(threshold, dtype=dtype).float().item() if dtype.is_floating_point else float(threshold)


def emulate(lib, scores: torch.Tensor, threshold=0.5, connectivity=8, min_area=0, stats=False):
    """The CUDA algorithm's (labels, counts[, stats]) for `scores`, as unetseg.label(_stats) returns them."""
    (n, h, w), strides = _geometry(scores)
    labels = torch.empty(scores.shape, dtype=torch.int32)
    counts = torch.empty(n, dtype=torch.int64)
    lib.emulate_label(
        scores.data_ptr(),
        SCORE_TYPES[scores.dtype],
        n,
        h,
        w,
        strides.ctypes.data,
        _rounded(threshold, scores.dtype),
        connectivity == 8,
        min_area,
        labels.data_ptr(),
        counts.data_ptr(),
    )
    if not stats:
        return labels, counts
    starts = (counts.cumsum(0) - counts).contiguous()
    objects = int(counts.sum())
    table = torch.empty((objects, len(STATS_COLUMNS)), dtype=torch.float64)
    lib.emulate_stats(
        scores.data_ptr(),
        SCORE_TYPES[scores.dtype],
        n,
        h,
        w,
        strides.ctypes.data,
        labels.data_ptr(),
        starts.data_ptr(),
        objects,
        table.data_ptr(),
    )
    return labels, counts, table


def emulate_seeded(lib, scores: torch.Tensor, threshold=0.5, boundary_threshold=0.5, connectivity=8, min_area=0):
    """The CUDA seeded algorithm's (labels, counts) for (N, 2, H, W) or (2, H, W) `scores`."""
    nucleus = scores.select(-3, 0)
    (n, h, w), strides = _geometry(nucleus)
    labels = torch.empty(nucleus.shape, dtype=torch.int32)
    counts = torch.empty(n, dtype=torch.int64)
    lib.emulate_seeded(
        nucleus.data_ptr(),
        SCORE_TYPES[scores.dtype],
        n,
        h,
        w,
        strides.ctypes.data,
        scores.stride(-3),
        _rounded(threshold, scores.dtype),
        _rounded(boundary_threshold, scores.dtype),
        connectivity == 8,
        min_area,
        labels.data_ptr(),
        counts.data_ptr(),
    )
    return labels, counts


def assert_stats_equal(got: torch.Tensor, want: torch.Tensor):
    """Area, bbox and centroid bit for bit; the mean score to rounding (summed in another order)."""
    np.testing.assert_array_equal(got[:, :7].numpy(), want[:, :7].numpy())
    np.testing.assert_allclose(got[:, 7].numpy(), want[:, 7].numpy(), rtol=1e-12)


@given(**BATCHES)
def test_emulated_kernels_match_scipy(emulated, n, h, w, density, smooth, layout, connectivity, min_area, dtype, seed):
    base = cast(blobby(np.random.default_rng(seed), (n, 2 * h + 1, 2 * w + 1), density, smooth), dtype)
    scores = in_layout(base, layout, h, w)
    threshold = 0 if dtype == torch.bool else (127.5 if dtype == torch.uint8 else 0.5)
    labels, counts = emulate(emulated, scores, threshold, connectivity, min_area)
    want_labels, want_counts = label_batch(scores, threshold, connectivity, min_area)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(labels.numpy(), want_labels)


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_emulated_kernels_edge_cases(emulated, name, connectivity):
    mask = torch.from_numpy(EDGE_CASES[name])
    for scores, threshold in [(mask, 0), (mask.float(), 0.5), (mask.T, 0)]:
        labels, counts = emulate(emulated, scores, threshold, connectivity)
        want = unetseg.label(scores, threshold, connectivity)
        assert torch.equal(labels, want.labels) and torch.equal(counts, want.counts)


@given(
    n=st.integers(1, 3),
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.sampled_from([0, 4]),
    threshold=st.floats(0.1, 0.9),
    dtype=st.sampled_from(DTYPES[:3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_emulated_stats_match_the_cpu_op(emulated, n, h, w, connectivity, min_area, threshold, dtype, seed):
    scores = blobby(np.random.default_rng(seed), (n, h, w), 0.5, 1.5).to(dtype)
    labels, counts, table = emulate(emulated, scores, threshold, connectivity, min_area, stats=True)
    want = unetseg.label_stats(scores, threshold, connectivity, min_area)
    assert torch.equal(labels, want.labels) and torch.equal(counts, want.counts)
    assert_stats_equal(table, want.stats)


def test_emulated_threshold_and_nan_follow_the_cpu_op(emulated):
    half = torch.full((1, 4, 4), 0.1, dtype=torch.float16)
    assert emulate(emulated, half, 0.1)[1].item() == 0 and emulate(emulated, half, 0.09)[1].item() == 1
    scores = torch.full((5, 5), float("nan"))
    scores[2, 2] = 0.9
    assert emulate(emulated, scores, -1.0)[1].item() == 1
    sub = torch.tensor([[6e-8, 0, 1.2e-7, 0, 3e-5, 0, float("inf")]], dtype=torch.float16)  # subnormals
    for t in (0.0, 6e-8, 1e-7, 2e-5):
        assert torch.equal(emulate(emulated, sub, t)[0], unetseg.label(sub, t).labels)
    assert emulate(emulated, sub, 0.0)[1].item() == 4


SEEDED_BATCHES = dict(
    n=st.integers(1, 3),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    density=st.floats(0.3, 0.75),
    smooth=st.sampled_from([0.0, 1.5, 3.0]),
    boundary_density=st.floats(0.05, 0.6),
    layout=st.sampled_from(SEEDED_LAYOUTS),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.sampled_from([0, 0, 1, 5, 30]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)


def seeded_scores(n, h, w, density, smooth, boundary_density, layout, dtype, seed) -> torch.Tensor:
    base = two_channel(np.random.default_rng(seed), (n, 2 * h + 1, 2 * w + 1), density, smooth, boundary_density)
    return seeded_layout(cast(base, dtype), layout, h, w)


@given(**SEEDED_BATCHES)
def test_emulated_seeded_kernels_match_the_cpu_op(
    emulated, n, h, w, density, smooth, boundary_density, layout, connectivity, min_area, dtype, seed
):
    scores = seeded_scores(n, h, w, density, smooth, boundary_density, layout, dtype, seed)
    t, tb = thresholds(dtype)
    labels, counts = emulate_seeded(emulated, scores, t, tb, connectivity, min_area)
    want = unetseg.seeded_label(scores, t, tb, connectivity, min_area)
    assert torch.equal(counts, want.counts)
    assert torch.equal(labels, want.labels)


@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 30),
    connectivity=st.sampled_from([4, 8]),
    score_levels=st.sampled_from([2, 4, 256]),
)
def test_emulated_seeded_growth_ties_match_the_cpu_op(emulated, seed, count, connectivity, score_levels):
    """Touching nuclei with wide boundary bands, so growth runs many rounds, and nucleus scores of few
    distinct values, so the tie-break (the smaller seed) decides often."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    true = touching_disks(rng, 80, count)
    band = ndi.binary_dilation(skimage.segmentation.find_boundaries(true, connectivity=2), iterations=2)
    nucleus = np.where(true > 0, 0.55 + np.floor(rng.uniform(0, score_levels, true.shape)) / (2 * score_levels), 0)
    scores = torch.from_numpy(np.stack([nucleus, band]).astype(np.float32))
    labels, counts = emulate_seeded(emulated, scores, 0.5, 0.5, connectivity)
    want = unetseg.seeded_label(scores, 0.5, 0.5, connectivity)
    assert torch.equal(counts, want.counts) and torch.equal(labels, want.labels)


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_emulated_seeded_edge_cases(emulated, name, connectivity):
    mask = torch.from_numpy(EDGE_CASES[name]).float()
    rng = np.random.default_rng(len(name))
    for boundary in (torch.ones_like(mask), torch.zeros_like(mask), torch.from_numpy(rng.random(mask.shape)).float()):
        for scores in (torch.stack([mask, boundary]), torch.stack([mask.T, boundary.T])):
            labels, counts = emulate_seeded(emulated, scores, 0.5, 0.5, connectivity)
            want = unetseg.seeded_label(scores, 0.5, 0.5, connectivity)
            assert torch.equal(labels, want.labels) and torch.equal(counts, want.counts)


def test_emulated_seeded_nan_and_zero_sized(emulated):
    scores = torch.zeros(2, 3, 7)
    scores[0, 1, 1:6] = 0.9
    scores[0, 1, 3] = float("nan")
    scores[1, 1, 1] = float("nan")
    labels, counts = emulate_seeded(emulated, scores)
    assert counts.item() == 2 and labels[1].tolist() == [0, 1, 1, 0, 2, 2, 0]
    labels, counts = emulate_seeded(emulated, torch.zeros(3, 2, 0, 5))
    assert labels.shape == (3, 0, 5) and counts.tolist() == [0, 0, 0]


# ---- the CUDA op on a GPU -------------------------------------------------------------------------

has_cuda_kernels = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "unetseg::label", "CUDA"
)
gpu = pytest.mark.skipif(
    not has_cuda_kernels,
    reason="needs a CUDA GPU and unetseg built with CUDA "
    "(torch.cuda.is_available() is False or the CUDA kernels were not built)",
)


def assert_same_on_cuda(op, scores: torch.Tensor, *args):
    """op (label_stats or seeded_label_stats) on the GPU equals op on the CPU."""
    got, want = op(scores.cuda(), *args), op(scores, *args)
    assert got.labels.is_cuda and got.counts.is_cuda and got.stats.is_cuda
    assert torch.equal(got.labels.cpu(), want.labels) and torch.equal(got.counts.cpu(), want.counts)
    assert_stats_equal(got.stats.cpu(), want.stats)


@gpu
@settings(max_examples=2000)
@given(**BATCHES)
def test_cuda_matches_cpu(n, h, w, density, smooth, layout, connectivity, min_area, dtype, seed):
    base = cast(blobby(np.random.default_rng(seed), (n, 2 * h + 1, 2 * w + 1), density, smooth), dtype)
    threshold = 0 if dtype == torch.bool else (127.5 if dtype == torch.uint8 else 0.5)
    assert_same_on_cuda(unetseg.label_stats, in_layout(base, layout, h, w), threshold, connectivity, min_area)


@gpu
@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_cuda_edge_cases(name, connectivity):
    mask = torch.from_numpy(EDGE_CASES[name])
    assert_same_on_cuda(unetseg.label_stats, mask, 0, connectivity)
    assert_same_on_cuda(unetseg.label_stats, mask.T, 0, connectivity)


@gpu
@pytest.mark.parametrize("size", [8192, 16384])
def test_cuda_large_images(size):
    scores = blobby(np.random.default_rng(size), (1, size, size), 0.4, 3.0)
    assert_same_on_cuda(unetseg.label_stats, scores, 0.5, 8, 20)


@gpu
def test_cuda_batch_of_small_images_and_half_precision():
    scores = blobby(np.random.default_rng(0), (256, 256, 256), 0.45, 2.0)
    assert_same_on_cuda(unetseg.label_stats, scores.half())
    assert_same_on_cuda(unetseg.label_stats, scores.bfloat16(), 0.5, 4)


@gpu
def test_cuda_on_a_non_default_stream_and_out_variant():
    scores = blobby(np.random.default_rng(1), (3, 500, 700), 0.5, 2.0).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        labels = torch.full((3, 700, 500), -7, dtype=torch.int32, device="cuda").transpose(1, 2)
        counts = torch.empty(3, dtype=torch.int64, device="cuda")
        torch.ops.unetseg.label_out(scores, 0.5, 8, 0, labels, counts)
        got = unetseg.label(scores, 0.5)
    stream.synchronize()
    want = unetseg.label(scores.cpu(), 0.5)
    assert torch.equal(got.labels.cpu(), want.labels) and torch.equal(labels.cpu(), want.labels)
    assert torch.equal(counts.cpu(), want.counts)


@gpu
@settings(max_examples=1000)
@given(**SEEDED_BATCHES)
def test_cuda_seeded_matches_cpu(
    n, h, w, density, smooth, boundary_density, layout, connectivity, min_area, dtype, seed
):
    scores = seeded_scores(n, h, w, density, smooth, boundary_density, layout, dtype, seed)
    assert_same_on_cuda(unetseg.seeded_label_stats, scores, *thresholds(dtype), connectivity, min_area)


@gpu
@pytest.mark.parametrize("connectivity", [4, 8])
def test_cuda_seeded_large_image_of_touching_nuclei(connectivity):
    """A 4096² map of touching nuclei with wide boundary bands: many components of several seeds."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(connectivity)
    tiles = [touching_disks(rng, 256, 60) for _ in range(256)]
    true = np.block(
        [[tiles[16 * r + c] + 1000 * (16 * r + c) * (tiles[16 * r + c] > 0) for c in range(16)] for r in range(16)]
    )
    band = ndi.binary_dilation(skimage.segmentation.find_boundaries(true, connectivity=2), iterations=1)
    nucleus = np.where(true > 0, rng.uniform(0.5, 1.0, true.shape), rng.uniform(0.0, 0.5, true.shape))
    scores = torch.from_numpy(np.stack([nucleus, band * rng.uniform(0.5, 1.0, true.shape)]).astype(np.float32))
    assert_same_on_cuda(unetseg.seeded_label_stats, scores, 0.5, 0.5, connectivity, 10)


@gpu
def test_cuda_seeded_batch_half_precision_and_stream():
    scores = two_channel(np.random.default_rng(5), (64, 256, 256), 0.55, 2.0, 0.3)
    assert_same_on_cuda(unetseg.seeded_label_stats, scores.half())
    assert_same_on_cuda(unetseg.seeded_label_stats, scores.bfloat16(), 0.5, 0.4, 4, 5)
    stream = torch.cuda.Stream()
    cuda_scores = scores.cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = unetseg.seeded_label(cuda_scores, 0.5, 0.5)
    stream.synchronize()
    want = unetseg.seeded_label(scores, 0.5, 0.5)
    assert torch.equal(got.labels.cpu(), want.labels) and torch.equal(got.counts.cpu(), want.counts)
