"""unetseg.ops.label / label_stats against scipy.ndimage.label and skimage.measure.regionprops."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIMD_LEVELS
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_stats_match_regionprops, label_batch

import unetseg
from unetseg.ops import STATS_COLUMNS

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool]


def cast(scores01: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scores in [0, 1) to dtype: masks as 0..255 (uint8) or > 0.5 (bool)."""
    if dtype == torch.bool:
        return scores01 > 0.5
    if dtype == torch.uint8:
        return (scores01 * 255).to(torch.uint8)
    return scores01.to(dtype)


def blobby(rng: np.random.Generator, shape, density: float, smooth: float) -> torch.Tensor:
    """Random maps whose foreground fraction is about `density`: white noise (smooth=0, the
    percolation regime) or smoothed noise (blob-shaped objects)."""
    import scipy.ndimage as ndi

    noise = rng.random(shape, dtype=np.float32)
    if smooth > 0 and noise.size:
        noise = ndi.gaussian_filter(noise, sigma=(0,) * (len(shape) - 2) + (smooth, smooth))
        lo, hi = noise.min(), noise.max()
        noise = (noise - lo) / (hi - lo + 1e-12)
    # move the quantile so that about `density` of the pixels lie above 0.5
    q = np.quantile(noise, 1 - density) if noise.size else 0.5
    return torch.from_numpy(np.clip(noise - q + 0.5, 0, 0.999).astype(np.float32))


def assert_same(scores, threshold, connectivity=8, min_area=0):
    labels, counts = unetseg.label(scores, threshold, connectivity, min_area)
    ref_labels, ref_counts = label_batch(scores, threshold, connectivity, min_area)
    assert labels.dtype == torch.int32 and counts.dtype == torch.int64
    assert labels.shape == scores.shape
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)


@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    density=st.floats(0.3, 0.75),
    smooth=st.sampled_from([0.0, 0.0, 1.5, 4.0]),
    connectivity=st.sampled_from([4, 8]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_scipy(threads, h, w, density, smooth, connectivity, dtype, seed):
    scores = cast(blobby(np.random.default_rng(seed), (h, w), density, smooth), dtype)
    threshold = 0 if dtype == torch.bool else (127.5 if dtype == torch.uint8 else 0.5)
    assert_same(scores, threshold, connectivity)


@given(
    n=st.integers(0, 5),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    layout=st.sampled_from(["nhw", "n1hw", "transposed", "strided", "channel_view"]),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.integers(0, 12),
    threshold=st.floats(0.2, 0.8),
    dtype=st.sampled_from(DTYPES[:3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_batches_and_layouts(threads, n, h, w, layout, connectivity, min_area, threshold, dtype, seed):
    rng = np.random.default_rng(seed)
    base = blobby(rng, (n, 2 * h + 1, 2 * w + 1), 0.5, 1.0).to(dtype)
    assert_same(in_layout(base, layout, h, w), threshold, connectivity, min_area)


def in_layout(base: torch.Tensor, layout: str, h: int, w: int) -> torch.Tensor:
    """An (h, w)-ish view of `base` (N, 2h + 1, 2w + 1) in one of the memory layouts the ops take."""
    views = {
        "nhw": lambda: base[:, :h, :w].contiguous(),
        "n1hw": lambda: base[:, None, :h, :w].contiguous(),
        "hw": lambda: base[0, :h, :w].contiguous(),
        "transposed": lambda: base[:, :w, :h].transpose(1, 2),  # column-major images
        "strided": lambda: base[:, ::2, ::2],  # every other row and column
        "channel_view": lambda: torch.stack([base, base.flip(-1)], 1)[:, 1:2, :h, :w],  # (N, 1, H, W) of channel 1
    }
    return views[layout]()


def spiral(size: int) -> np.ndarray:
    """A one-pixel-wide square spiral: one object whose runs join only far from where they start."""
    a = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        a[top, left : right + 1] = True
        a[top : bottom + 1, right] = True
        if top + 2 <= bottom:
            a[bottom, left : right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            a[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            a[top - 1, left - 2 + 1 if left - 1 >= 0 else 0] = True
    return a


EDGE_CASES = {
    "1x1 on": np.ones((1, 1), bool),
    "1x1 off": np.zeros((1, 1), bool),
    "all background": np.zeros((64, 97), bool),
    "all foreground": np.ones((64, 97), bool),
    "single row": np.random.default_rng(1).random((1, 1000)) > 0.5,
    "single column": np.random.default_rng(2).random((1000, 1)) > 0.5,
    "checkerboard": (np.add.outer(np.arange(131), np.arange(77)) % 2).astype(bool),
    # 32 edges a word, and every other row ends inside a run at a word's last bit
    "checkerboard of whole words": (np.add.outer(np.arange(9), np.arange(128)) % 2).astype(bool),
    "diagonal stripes": (np.add.outer(np.arange(90), np.arange(90)) % 3 == 0),
    "anti-diagonals": (np.subtract.outer(np.arange(90), np.arange(90)) % 4 == 0),
    "spiral": spiral(101),
    "frame touching all borders": np.pad(np.zeros((50, 70), bool), 1, constant_values=True),
    "max labels, 8-connected": np.kron(np.ones((64, 64), bool), np.array([[1, 0], [0, 0]], bool)),
    "U shapes merging late": np.tile(np.array([[1, 0, 1, 0]] * 9 + [[1, 1, 1, 0]], bool), (6, 20)),
    "row of width 8 words": np.tile(np.array([1] * 8 + [0] * 8 + [1] * 7 + [0], bool), (5, 11)),
}


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_edge_cases(threads, name, connectivity):
    mask = torch.from_numpy(EDGE_CASES[name])
    assert_same(mask, 0, connectivity)
    assert_same(mask.to(torch.float32), 0.5, connectivity)
    assert_same(mask.T, 0, connectivity)  # Fortran order


def test_maximum_label_count():
    checker = torch.from_numpy((np.add.outer(np.arange(512), np.arange(512)) % 2 == 0))
    labels, counts = unetseg.label(checker, 0, connectivity=4)
    assert counts.item() == 512 * 512 // 2 and labels.max().item() == 512 * 512 // 2
    assert unetseg.label(checker, 0, connectivity=8).counts.item() == 1


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 5), (3, 5, 0), (0, 0), (2, 1, 0, 4)])
def test_zero_sized(shape):
    labels, counts = unetseg.label(torch.zeros(shape))
    assert labels.shape == shape and labels.dtype == torch.int32
    n = 1 if len(shape) == 2 else shape[0]
    assert counts.tolist() == [0] * n
    _, _, stats = unetseg.label_stats(torch.zeros(shape))
    assert stats.shape == (0, len(STATS_COLUMNS))


def test_nan_is_background():
    scores = torch.full((5, 5), float("nan"))
    scores[2, 2] = 0.9
    labels, counts = unetseg.label(scores, 0.5)
    assert counts.item() == 1 and labels.sum().item() == 1
    assert unetseg.label(scores, -1.0).counts.item() == 1  # nan > -1 is still False


def test_threshold_is_compared_in_the_scores_dtype():
    # 0.1 rounds to the same half as the score, so `score > 0.1` is False in float16, as in torch.
    scores = torch.full((1, 4, 4), 0.1, dtype=torch.float16)
    assert unetseg.label(scores, 0.1).counts.item() == 0
    assert unetseg.label(scores, 0.09).counts.item() == 1


def test_masks_with_threshold_zero_mean_nonzero():
    mask = torch.tensor([[0, 3, 0, 255], [0, 0, 0, 1]], dtype=torch.uint8)
    labels, counts = unetseg.label(mask, 0)
    assert counts.item() == 2
    assert labels.tolist() == [[0, 1, 0, 2], [0, 0, 0, 2]]


@given(
    n=st.integers(1, 4),
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.integers(0, 20),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.uint8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stats_match_regionprops(threads, n, h, w, connectivity, min_area, dtype, seed):
    scores = cast(blobby(np.random.default_rng(seed), (n, h, w), 0.45, 1.5), dtype)
    threshold = 127 if dtype == torch.uint8 else 0.5
    labels, counts, stats = unetseg.label_stats(scores, threshold, connectivity, min_area)
    ref_labels, ref_counts = label_batch(scores, threshold, connectivity, min_area)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    assert stats.dtype == torch.float64 and stats.shape == (int(ref_counts.sum()), len(STATS_COLUMNS))
    assert_stats_match_regionprops(ref_labels, counts, stats, scores.float().numpy())


def test_out_variant_writes_in_place_and_allocates_nothing(threads):
    scores = blobby(np.random.default_rng(0), (3, 200, 150), 0.5, 2.0)
    labels = torch.full(scores.shape, -7, dtype=torch.int32)
    counts = torch.empty(3, dtype=torch.int64)
    ptrs = labels.data_ptr(), counts.data_ptr()
    for threshold in (0.4, 0.6):
        result = unetseg.label(scores, threshold, out=(labels, counts))
        assert result.labels is labels and result.counts is counts
        assert (labels.data_ptr(), counts.data_ptr()) == ptrs
        ref_labels, ref_counts = label_batch(scores, threshold)
        np.testing.assert_array_equal(labels.numpy(), ref_labels)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)


def test_out_variant_non_contiguous():
    scores = blobby(np.random.default_rng(1), (2, 40, 30), 0.5, 1.0)
    labels = torch.zeros(2, 30, 40, dtype=torch.int32).transpose(1, 2)
    counts = torch.zeros(4, dtype=torch.int64)[::2]
    unetseg.label(scores, out=(labels, counts))
    ref_labels, ref_counts = label_batch(scores, 0.5)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)


@pytest.mark.parametrize(
    "scores, kwargs, message",
    [
        (torch.zeros(5), {}, r"must be \(H, W\), \(N, H, W\) or \(N, 1, H, W\), got a 1-D tensor"),
        (torch.zeros(1, 1, 1, 5, 5), {}, "got a 5-D tensor of shape \\[1, 1, 1, 5, 5\\]"),
        (torch.zeros(2, 3, 5, 5), {}, "with 3 channels; pass one channel"),
        (torch.zeros(5, 5, dtype=torch.int64), {}, "got Long"),
        (torch.zeros(5, 5, dtype=torch.float64), {}, "got Double"),
        (torch.zeros(5, 5, dtype=torch.complex64), {}, "got ComplexFloat"),
        (torch.zeros(5, 5), {"connectivity": 6}, "connectivity must be 4 .* or 8 .*, got 6"),
        (torch.zeros(5, 5), {"min_area": -1}, "min_area must be >= 0 pixels, got -1"),
        (torch.zeros(5, 5), {"threshold": float("nan")}, "threshold must be a number, got nan"),
        (
            torch.zeros(1, 1, dtype=torch.uint8).expand(46341, 46341),
            {},
            "at most 2\\^31 - 1 pixels .* got 46341 x 46341",
        ),
    ],
)
def test_bad_input_is_a_clear_error(scores, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        unetseg.label(scores, **kwargs)
    with pytest.raises(RuntimeError, match=message):
        unetseg.label_stats(scores, **kwargs)


def test_bad_out_tensors():
    scores = torch.zeros(2, 5, 5)
    with pytest.raises(RuntimeError, match="labels must be int32, got Long"):
        unetseg.label(scores, out=(torch.empty(2, 5, 5, dtype=torch.int64), torch.empty(2, dtype=torch.int64)))
    with pytest.raises(RuntimeError, match="counts must be int64, got Int"):
        unetseg.label(scores, out=(torch.empty(2, 5, 5, dtype=torch.int32), torch.empty(2, dtype=torch.int32)))
    with pytest.raises(RuntimeError, match=r"labels must have the shape of scores \[2, 5, 5\], got \[2, 5, 4\]"):
        unetseg.label(scores, out=(torch.empty(2, 5, 4, dtype=torch.int32), torch.empty(2, dtype=torch.int64)))
    with pytest.raises(RuntimeError, match=r"counts must have shape \[2\], got \[3\]"):
        unetseg.label(scores, out=(torch.empty(2, 5, 5, dtype=torch.int32), torch.empty(3, dtype=torch.int64)))


def test_opcheck():
    scores = blobby(np.random.default_rng(3), (2, 1, 33, 47), 0.5, 1.0)
    torch.library.opcheck(torch.ops.unetseg.label.default, (scores, 0.5, 8, 3))
    torch.library.opcheck(torch.ops.unetseg.label.default, (scores.half()[:, 0], 0.5, 4, 0))
    labels, counts = torch.empty(scores.shape, dtype=torch.int32), torch.empty(2, dtype=torch.int64)
    torch.library.opcheck(torch.ops.unetseg.label_out.default, (scores, 0.5, 8, 0, labels, counts))
    torch.library.opcheck(
        torch.ops.unetseg.label_stats.default, (scores, 0.5, 8, 0), test_utils=("test_schema", "test_faketensor")
    )


def test_large_outputs_reuse_freed_blocks_and_overwrite_them_whole():
    """Large label outputs come from a cache of freed blocks (no page zeroing); a reused block still
    holds the last call's labels, which every pixel of the new result overwrites."""
    import scipy.ndimage as ndi

    from unetseg.data import synthetic_nuclei

    busy = torch.from_numpy(synthetic_nuclei((1100, 1000), seed=1).probability)  # 4.4 MB of labels
    sparse = torch.zeros(1100, 1000)
    sparse[10:20, 10:20] = 1
    first = unetseg.label(busy, 0.5).labels
    block = first.data_ptr()
    assert first.max() > 50
    del first
    again = unetseg.label(sparse, 0.5).labels
    assert again.data_ptr() == block
    np.testing.assert_array_equal(again.numpy(), ndi.label(sparse.numpy() > 0.5, np.ones((3, 3)))[0])
    del again
    seeded = unetseg.seeded_label_stats(torch.stack([sparse, torch.zeros_like(sparse)]), 0.5, 0.5)
    assert seeded.labels.data_ptr() == block and int(seeded.labels.max()) == 1 and int((seeded.labels > 0).sum()) == 100


@pytest.mark.parametrize("simd", SIMD_LEVELS)
def test_large_and_misaligned_outputs_on_every_vector_path(simd):
    """Outputs of 32 MiB and more are written with streaming stores on every path, and every row of an
    odd width starts at a different offset in its 64-byte block: labels, out= into a tensor that
    starts 4 bytes into a block, and seeded labels (whose grown pixels the final write must leave
    alone) against scipy and the generic code."""
    import scipy.ndimage as ndi
    from conftest import available_cpu_simd
    from skimage.segmentation import find_boundaries

    from unetseg import _C
    from unetseg.data import synthetic_nuclei

    if simd not in available_cpu_simd():
        pytest.skip(f"this CPU has no {simd}")
    nuclei = synthetic_nuclei((2900, 2901), seed=3)
    scores = torch.from_numpy(nuclei.probability)  # 33.7 MB of labels
    boundary = torch.from_numpy(find_boundaries(nuclei.labels, mode="inner").astype(np.float32))
    two_channel = torch.stack([scores, boundary])
    before = _C.cpu_simd()
    try:
        _C.set_cpu_simd("generic")
        generic_seeded = unetseg.seeded_label(two_channel, 0.5, 0.5, min_area=5).labels
        _C.set_cpu_simd(simd)
        labels = unetseg.label(scores, 0.5).labels
        out = torch.empty(scores.numel() + 1, dtype=torch.int32)[1:].view(scores.shape)
        unetseg.label(scores, 0.5, out=(out, torch.empty(1, dtype=torch.int64)))
        seeded = unetseg.seeded_label(two_channel, 0.5, 0.5, min_area=5).labels
    finally:
        _C.set_cpu_simd(before)
    expected = ndi.label(scores.numpy() > 0.5, np.ones((3, 3)))[0]
    np.testing.assert_array_equal(labels.numpy(), expected)
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(seeded.numpy(), generic_seeded.numpy())
    assert int(seeded.max()) > int(expected.max())  # seeds split touching nuclei: grown pixels exist


def test_set_cpu_simd_refuses_unknown_names():
    from unetseg import _C

    with pytest.raises(RuntimeError, match='expected "generic", "avx2" or "avx512", got "sse9"'):
        _C.set_cpu_simd("sse9")


_Z = torch.zeros(2, 9, 9)
_BAD_CALLS = [
    ("label", (_Z.long(), 0.5, 8, 0), r"scores must be float32, float16 or bfloat16"),
    ("label", (_Z, 0.5, 6, 0), r"connectivity must be 4 \(edge neighbours\) or 8"),
    ("label", (_Z, 0.5, 8, -1), r"min_area must be >= 0 pixels, got -1"),
    ("label", (_Z, float("nan"), 8, 0), r"threshold must be a number, got nan"),
    ("label", (torch.zeros(2, 3, 9, 9), 0.5, 8, 0), r"a 4-D scores tensor must be \(N, 1, H, W\), got \[2, 3, 9, 9\]"),
    ("label", (torch.zeros(9), 0.5, 8, 0), r"scores must be \(H, W\), \(N, H, W\) or \(N, 1, H, W\)"),
    ("seeded_label", (torch.zeros(1, 9, 9), 0.5, 0.5, 8, 0), r"scores must be \(2, H, W\) or \(N, 2, H, W\)"),
    ("seeded_label", (_Z, 0.5, float("nan"), 8, 0), r"boundary_threshold must be a number, got nan"),
    ("seeded_label_stats", (_Z, 0.5, 0.5, 4, -2), r"min_area must be >= 0 pixels, got -2"),
    ("label_stats", (_Z.double(), 0.5, 8, 0), r"scores must be float32, float16 or bfloat16"),
]


@pytest.mark.parametrize("name, args, message", _BAD_CALLS)
def test_fake_kernels_refuse_what_the_kernels_refuse(name, args, message):
    """The fake (meta) kernels check inputs as the C++ ops do, so a traced or compiled call fails
    where the real one would, with the same message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = getattr(torch.ops.unetseg, name)
    with pytest.raises(RuntimeError, match=message):
        op(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=message):
            op(*fake)


def test_torchscript_roundtrip(tmp_path):
    import warnings

    class Segmenter(torch.nn.Module):
        def forward(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ops.unetseg.label(torch.sigmoid(scores), 0.5, 8, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Segmenter())
        scripted.save(str(tmp_path / "segmenter.pt"))
        loaded = torch.jit.load(str(tmp_path / "segmenter.pt"))
    logits = torch.randn(3, 1, 64, 64) * 3
    labels, counts = loaded(logits)
    ref_labels, ref_counts = label_batch(torch.sigmoid(logits), 0.5, 8, 2)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("nm") is None, reason="reads ELF symbols with nm")
def test_cpu_kernels_are_built_with_openmp():
    """at::parallel_for is a header template: code built without OpenMP runs every parallel_for on one
    thread, whatever torch.set_num_threads says (as libunetseg did until session 15)."""
    lib = Path(unetseg.__file__).parent / "libunetseg.so"
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True)
    assert "GOMP_parallel" in symbols.stdout, f"{lib} calls no OpenMP: its CPU kernels run on one thread"


def test_the_phases_benchmark_builds_and_finds_the_ops_objects(tmp_path, monkeypatch):
    """benchmarks/label_phases.cpp times the torch-free core step by step; it must keep compiling
    against ccl.h and find what the op finds."""
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build benchmarks/label_phases.cpp")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_label_phases import build

    from unetseg.data import synthetic_nuclei

    scores = synthetic_nuclei((128, 192), seed=5).probability.astype(np.float32)
    scores.tofile(tmp_path / "map.f32")
    out = subprocess.run(
        [str(build(tmp_path)), str(tmp_path / "map.f32"), "128", "192", "2", "1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = dict(line.split("\t") for line in out.splitlines())
    assert int(rows["objects"]) == unetseg.label(torch.from_numpy(scores), 0.5).counts.item()
