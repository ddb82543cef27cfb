"""unetseg.ops.seeded_label / seeded_label_stats (nucleus + boundary scores) against the plain
reference in reference.py, skimage's watershed and regionprops."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.measure
import skimage.segmentation
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_stats_match_regionprops, label_batch, seeded_batch
from test_label import DTYPES, EDGE_CASES, blobby, cast

import unetseg
from unetseg.ops import STATS_COLUMNS


def two_channel(
    rng: np.random.Generator, shape, density: float, smooth: float, boundary_density: float
) -> torch.Tensor:
    """(..., 2, H, W) scores in [0, 1): blob-shaped nuclei and an independent boundary map."""
    nucleus = blobby(rng, shape, density, smooth)
    boundary = blobby(rng, shape, boundary_density, smooth / 2)
    return torch.stack([nucleus, boundary], dim=-3)


SEEDED_LAYOUTS = ["n2hw", "2hw", "channels_last", "transposed", "strided", "channel_pick"]


def seeded_layout(base: torch.Tensor, layout: str, h: int, w: int) -> torch.Tensor:
    """(N, 2, 2h+1, 2w+1) `base` as (N, 2, h, w) or (2, h, w) scores in one of SEEDED_LAYOUTS."""
    return {
        "n2hw": lambda: base[:, :, :h, :w].contiguous(),
        "2hw": lambda: base[0, :, :h, :w] if len(base) else base[:, :, :h, :w].contiguous(),
        "channels_last": lambda: base[:, :, :h, :w].contiguous(memory_format=torch.channels_last),
        "transposed": lambda: base[:, :, :w, :h].transpose(2, 3),
        "strided": lambda: base[:, :, ::2, ::2],
        "channel_pick": lambda: torch.cat([base, base], 1)[:, 1:3, :h, :w],  # boundary first in memory
    }[layout]()


def thresholds(dtype: torch.dtype) -> tuple[float, float]:
    return {torch.bool: (0, 0.5), torch.uint8: (127.5, 127.5)}.get(dtype, (0.5, 0.5))


def assert_same(scores, threshold=0.5, boundary_threshold=0.5, connectivity=8, min_area=0):
    labels, counts = unetseg.seeded_label(scores, threshold, boundary_threshold, connectivity, min_area)
    ref_labels, ref_counts = seeded_batch(scores, threshold, boundary_threshold, connectivity, min_area)
    assert labels.dtype == torch.int32 and counts.dtype == torch.int64
    assert labels.shape == scores.select(-3, 0).shape
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    return labels, counts


@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    density=st.floats(0.3, 0.75),
    smooth=st.sampled_from([0.0, 1.5, 3.0]),
    boundary_density=st.floats(0.05, 0.6),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.sampled_from([0, 0, 5]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(threads, h, w, density, smooth, boundary_density, connectivity, min_area, dtype, seed):
    scores = cast(two_channel(np.random.default_rng(seed), (h, w), density, smooth, boundary_density), dtype)
    assert_same(scores, *thresholds(dtype), connectivity, min_area)


@given(
    n=st.integers(0, 4),
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    layout=st.sampled_from(SEEDED_LAYOUTS),
    connectivity=st.sampled_from([4, 8]),
    threshold=st.floats(0.2, 0.8),
    boundary_threshold=st.floats(0.2, 0.8),
    dtype=st.sampled_from(DTYPES[:3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_batches_and_layouts(threads, n, h, w, layout, connectivity, threshold, boundary_threshold, dtype, seed):
    base = two_channel(np.random.default_rng(seed), (n, 2 * h + 1, 2 * w + 1), 0.55, 1.5, 0.3).to(dtype)
    assert_same(seeded_layout(base, layout, h, w), threshold, boundary_threshold, connectivity)


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("connectivity", [4, 8])
def test_no_seeds_or_no_boundaries_is_plain_labelling(name, connectivity):
    """Without seeds every object is an orphan, and without boundaries every foreground pixel is a
    seed: both are plain labelling."""
    mask = torch.from_numpy(EDGE_CASES[name]).float()
    plain = label_batch(mask, 0.5, connectivity)[0]
    for boundary in (torch.ones_like(mask), torch.zeros_like(mask)):
        labels, _ = assert_same(torch.stack([mask, boundary]), 0.5, 0.5, connectivity)
        np.testing.assert_array_equal(labels.numpy(), plain)


def touching_disks(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Labels of `count` random disks (radius 4..10) that may touch and overlap (later disks win)."""
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, count + 1):
        r = rng.uniform(4, 10)
        cy, cx = rng.uniform(0, size, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def geodesic_distance(source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """8-connected steps from `source` within `mask` (a large value where it does not reach)."""
    import scipy.ndimage as ndi

    distance = np.full(mask.shape, mask.size, np.int64)
    reached, step = source & mask, 0
    distance[reached] = 0
    while True:
        step += 1
        grown = ndi.binary_dilation(reached, np.ones((3, 3), bool)) & mask
        if (grown == reached).all():
            return distance
        distance[grown & ~reached] = step
        reached = grown


@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 25))
def test_perfect_scores_recover_touching_nuclei(seed, count):
    """Scores made from true labels (nucleus mask, inner boundaries) give back each true object
    whose interior is one piece within a pixel of all of it, where plain labelling merges touching
    objects; skimage's watershed from the same seeds in the same mask finds the same objects."""
    import scipy.ndimage as ndi

    true = touching_disks(np.random.default_rng(seed), 96, count)
    boundary = skimage.segmentation.find_boundaries(true, connectivity=2, mode="inner")
    scores = torch.from_numpy(np.stack([true > 0, boundary]).astype(np.float32))
    labels = assert_same(scores)[0].numpy()
    seeds = (true > 0) & ~boundary
    recovered = []
    for k in range(1, count + 1):
        obj = true == k
        core = seeds & obj
        if (
            core.any()
            and ndi.label(core, np.ones((3, 3)))[1] == 1
            and (ndi.binary_dilation(core, np.ones((3, 3))) >= obj).all()
        ):
            assert len(np.unique(labels[obj])) == 1  # all of it in one object...
            recovered.append(labels[core][0])
    assert len(set(recovered)) == len(recovered)  # ...of its own
    markers = skimage.measure.label(seeds, connectivity=2)
    ws = skimage.segmentation.watershed(np.zeros(true.shape), markers, mask=true > 0, connectivity=2)
    grown = ws > 0
    assert len(np.unique(labels[grown])) == markers.max()
    # Both give each pixel to a seed nearest to it along the mask; they differ only on ties between
    # equally near seeds (the op takes the smaller label, skimage's flooding the first to arrive).
    marker_of = np.zeros(labels.max() + 1, np.int64)
    marker_of[labels[seeds]] = markers[seeds]
    disagree = grown & (marker_of[labels] != ws)
    for a, b in set(zip(marker_of[labels[disagree]], ws[disagree])):
        where = disagree & (marker_of[labels] == a) & (ws == b)
        np.testing.assert_array_equal(
            geodesic_distance(markers == a, true > 0)[where], geodesic_distance(markers == b, true > 0)[where]
        )
    assert labels.max() >= label_batch(scores[0], 0.5)[0].max()  # never fewer objects than plain


@given(
    n=st.integers(1, 3),
    h=st.integers(1, 100),
    w=st.integers(1, 100),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.integers(0, 15),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.uint8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stats_match_regionprops(threads, n, h, w, connectivity, min_area, dtype, seed):
    scores = cast(two_channel(np.random.default_rng(seed), (n, h, w), 0.5, 1.5, 0.3), dtype)
    t, tb = thresholds(dtype)
    labels, counts, stats = unetseg.seeded_label_stats(scores, t, tb, connectivity, min_area)
    ref_labels, ref_counts = seeded_batch(scores, t, tb, connectivity, min_area)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    assert stats.shape == (int(ref_counts.sum()), len(STATS_COLUMNS))
    assert_stats_match_regionprops(ref_labels, counts, stats, scores[:, 0].float().numpy())


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("min_area", [0, 30])
def test_one_image_grown_in_parallel_groups(threads, connectivity, min_area):
    """One 400 x 500 image with about 97,000 pixels in 138 components of several seeds: with 7
    threads they are grown in 7 groups at once (at least 2048 pixels a group). Labels and
    statistics as the reference's, and bit for bit as with one thread."""
    scores = two_channel(np.random.default_rng(11), (400, 500), 0.5, 1.5, 0.3)
    labels, counts, stats = unetseg.seeded_label_stats(scores, 0.5, 0.5, connectivity, min_area)
    ref_labels, ref_counts = seeded_batch(scores, 0.5, 0.5, connectivity, min_area)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    assert_stats_match_regionprops(ref_labels[None], counts[None], stats, scores[0].numpy()[None])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # any grouping gives the same numbers, the mean scores too, bit for bit
        one = unetseg.seeded_label_stats(scores, 0.5, 0.5, connectivity, min_area)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.labels, labels) and torch.equal(one.stats, stats)


@pytest.mark.parametrize("size", [200, 520])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_one_component_of_many_seeds(size, connectivity):
    """One foreground component (10% holes) cut by a grid of boundary lines into seeds 40 pixels
    apart: 25 seeds at 200 x 200 are grown with one bit image each; 169 at 520 x 520 would need
    too many such images and are grown pixel by pixel. Both as the reference, seams included."""
    rng = np.random.default_rng(size)
    nucleus = rng.uniform(0.45, 1.0, (size, size)).astype(np.float32)
    boundary = np.zeros((size, size), np.float32)
    boundary[::40] = boundary[:, ::40] = 1.0
    boundary[rng.random((size, size)) < 0.02] = 1.0
    scores = torch.from_numpy(np.stack([nucleus, boundary]))
    labels, counts = unetseg.seeded_label(scores, 0.5, 0.5, connectivity)
    ref_labels, ref_counts = seeded_batch(scores, 0.5, 0.5, connectivity)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    assert counts.item() == ref_counts.item() >= (size // 40) ** 2


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (3, 2, 0, 5), (2, 5, 0), (2, 0, 0)])
def test_zero_sized(shape):
    labels, counts, stats = unetseg.seeded_label_stats(torch.zeros(shape))
    assert labels.shape == shape[:-3] + shape[-2:] and labels.dtype == torch.int32
    assert counts.tolist() == [0] * (shape[0] if len(shape) == 4 else 1)
    assert stats.shape == (0, len(STATS_COLUMNS))


def test_nan_nucleus_is_background_and_nan_boundary_is_no_seed():
    scores = torch.zeros(2, 3, 7)
    scores[0, 1, 1:6] = 0.9
    scores[0, 1, 3] = float("nan")  # cuts the run in two
    scores[1, 1, 1] = float("nan")  # not below the boundary threshold: not a seed
    labels, counts = unetseg.seeded_label(scores)
    assert counts.item() == 2
    assert labels[1].tolist() == [0, 1, 1, 0, 2, 2, 0]


def test_many_objects():
    checker = torch.from_numpy((np.add.outer(np.arange(256), np.arange(256)) % 2 == 0)).float()
    scores = torch.stack([checker, torch.zeros_like(checker)])
    assert unetseg.seeded_label(scores, connectivity=4).counts.item() == 256 * 256 // 2
    assert unetseg.seeded_label(scores, connectivity=8).counts.item() == 1


@pytest.mark.parametrize(
    "scores, kwargs, message",
    [
        (torch.zeros(5, 5), {}, r"must be \(2, H, W\) or \(N, 2, H, W\) .* got shape \[5, 5\]"),
        (torch.zeros(1, 5, 5), {}, r"got shape \[1, 5, 5\]; one-channel scores go to label"),
        (torch.zeros(2, 3, 5, 5), {}, r"got shape \[2, 3, 5, 5\]"),
        (torch.zeros(2, 5, 5, dtype=torch.float64), {}, "got Double"),
        (torch.zeros(2, 5, 5), {"connectivity": 6}, "connectivity must be 4 .* or 8 .*, got 6"),
        (torch.zeros(2, 5, 5), {"min_area": -2}, "min_area must be >= 0 pixels, got -2"),
        (torch.zeros(2, 5, 5), {"boundary_threshold": float("nan")}, "boundary_threshold must be a number"),
    ],
)
def test_bad_input_is_a_clear_error(scores, kwargs, message):
    with pytest.raises(RuntimeError, match="unetseg.seeded_label: .*" + message):
        unetseg.seeded_label(scores, **kwargs)
    with pytest.raises(RuntimeError, match=message):
        unetseg.seeded_label_stats(scores, **kwargs)


def test_label_points_two_channel_scores_to_seeded_label():
    with pytest.raises(RuntimeError, match="use seeded_label for"):
        unetseg.label(torch.zeros(1, 2, 5, 5))


def test_opcheck():
    scores = two_channel(np.random.default_rng(3), (2, 33, 47), 0.5, 1.0, 0.3)
    torch.library.opcheck(torch.ops.unetseg.seeded_label.default, (scores, 0.5, 0.4, 8, 3))
    torch.library.opcheck(torch.ops.unetseg.seeded_label.default, (scores[0].half(), 0.5, 0.5, 4, 0))
    torch.library.opcheck(
        torch.ops.unetseg.seeded_label_stats.default,
        (scores, 0.5, 0.5, 8, 0),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_torchscript_roundtrip(tmp_path):
    import warnings

    class Segmenter(torch.nn.Module):
        def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ops.unetseg.seeded_label(torch.sigmoid(logits), 0.5, 0.5, 8, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Segmenter()).save(str(tmp_path / "segmenter.pt"))
        loaded = torch.jit.load(str(tmp_path / "segmenter.pt"))
    logits = torch.randn(3, 2, 64, 64) * 3
    labels, counts = loaded(logits)
    ref_labels, ref_counts = seeded_batch(torch.sigmoid(logits), 0.5, 0.5, 8, 2)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
