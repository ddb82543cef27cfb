"""The streaming labeller: blocks (row bands cut into columns) labelled with carries equal the whole
map labelled at once."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_label import EDGE_CASES

import unetseg
from unetseg.slide.stream import StreamLabeller, raster_numbering


def stream(scores, cuts, col_cuts=(), **options):
    """Labels `scores` (C, H, W) fed in blocks: bands cut at rows `cuts`, each band cut at columns
    `col_cuts`; returns (labels, stats) numbered in raster order, as the whole-map ops return them."""
    labeller = StreamLabeller(scores.shape[2], **options)
    bounds = [0, *sorted(set(cuts)), scores.shape[1]]
    col_bounds = [0, *sorted(set(c for c in col_cuts if 0 < c < scores.shape[2])), scores.shape[2]]
    out = np.full(scores.shape[1:], -1, np.int32)  # every pixel must be written
    ids, first, stats = [], [], []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        for c, d in zip(col_bounds[:-1], col_bounds[1:]):
            done = labeller.feed(scores[:, a:b, c:d], last=i == len(bounds) - 2)
            h, w = done.labels.shape
            assert done.overlay.shape[1] == w and done.overlay.shape[0] <= h
            done.paste(out[done.row : done.row + h, done.col : done.col + w])
            ids.append(done.ids), first.append(done.first_pixel), stats.append(done.stats)
    assert (out >= 0).all()
    ids, first, stats = np.concatenate(ids), np.concatenate(first), np.concatenate(stats)
    lut = raster_numbering(ids, first, labeller.id_bound)
    order = np.argsort(lut[ids])
    return lut[out], stats[order]


def maps(seed, h, w, channels, blobs):
    """Probability-like maps with nucleus-shaped blobs (random noise merges everything)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = rng.random((channels, h, w)).astype(np.float32) * 0.3
    for _ in range(blobs):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 12)
        d = np.hypot(yy - cy, xx - cx) / r
        out[0] = np.maximum(out[0], np.clip(1.2 - d, 0, 1))
        if channels > 1:
            out[1] = np.maximum(out[1], np.clip(1 - 3 * np.abs(d - 0.9), 0, 1))
    return out


def whole(scores, labelling, t, tb, connectivity, min_area):
    x = torch.from_numpy(np.ascontiguousarray(scores))
    if labelling == "seeded":
        out = unetseg.seeded_label_stats(x[:2], t, tb, connectivity, min_area)
    else:
        out = unetseg.label_stats(x[0], t, connectivity, min_area)
    return out.labels.numpy(), out.stats.numpy()


def assert_same(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1][:, :5], want[1][:, :5])  # area and bbox exactly
    np.testing.assert_allclose(got[1][:, 5:], want[1][:, 5:], rtol=1e-12, atol=1e-9)  # sums in another order


@settings(max_examples=200)
@given(
    seed=st.integers(0, 10**6),
    h=st.integers(1, 90),
    w=st.integers(1, 70),
    blobs=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 90), max_size=8),
    col_cuts=st.lists(st.integers(1, 69), max_size=6),
    labelling=st.sampled_from(["plain", "seeded"]),
    connectivity=st.sampled_from([4, 8]),
    min_area=st.integers(0, 30),
    t=st.floats(0.2, 0.8),
)
def test_stream_equals_whole_map(seed, h, w, blobs, cuts, col_cuts, labelling, connectivity, min_area, t):
    scores = maps(seed, h, w, 2, blobs)
    cuts = [c for c in cuts if c <= h]  # empty bands included
    options = dict(
        labelling=labelling, threshold=t, boundary_threshold=0.5, connectivity=connectivity, min_area=min_area
    )
    assert_same(stream(scores, cuts, col_cuts, **options), whole(scores, labelling, t, 0.5, connectivity, min_area))


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("band", [1, 2, 3, 7])
def test_edge_cases_block_by_block(name, band):
    mask = EDGE_CASES[name].astype(np.float32)
    scores = np.stack([mask, np.zeros_like(mask)])
    cuts = list(range(band, mask.shape[0], band))
    for labelling in ("plain", "seeded"):
        for col_cuts in ([], list(range(band, mask.shape[1], band))):
            assert_same(stream(scores, cuts, col_cuts, labelling=labelling), whole(scores, labelling, 0.5, 0.5, 8, 0))


def test_a_spiral_that_leaves_and_comes_back():
    # One component whose first pixel is late in raster order relative to objects it encloses.
    mask = np.zeros((40, 40), np.float32)
    mask[2, 2:38] = mask[2:38, 37] = mask[37, 2:38] = mask[8:38, 2] = mask[8, 2:30] = 1
    mask[20, 20] = mask[5, 5] = 1
    scores = np.stack([mask, np.zeros_like(mask)])
    for band in (1, 3, 5):
        for cuts in ([], list(range(band, 40, band))):
            assert_same(stream(scores, list(range(band, 40, band)), cuts), whole(scores, "plain", 0.5, 0.5, 8, 0))
            assert_same(
                stream(scores.transpose(0, 2, 1), [], cuts), whole(scores.transpose(0, 2, 1), "plain", 0.5, 0.5, 8, 0)
            )


def test_outlines_and_state():
    scores = maps(3, 60, 50, 2, 12)
    labeller = StreamLabeller(50, labelling="seeded", outlines=True)
    first = [labeller.feed(scores[:, :30, :20]), labeller.feed(scores[:, :30, 20:])]
    state = labeller.state_dict()
    again = StreamLabeller(50, labelling="seeded", outlines=True)
    again.load_state_dict({k: np.copy(v) for k, v in state.items()})
    a, b = labeller.feed(scores[:, 30:], last=True), again.feed(scores[:, 30:], last=True)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.first_pixel, b.first_pixel)
    for done in (*first, a):
        assert len(done.outlines) == len(done.ids)
        for outline, stats in zip(done.outlines, done.stats):
            # (x, y) boundary-pixel centres inside the object's bounding box (one for a one-pixel object)
            assert outline.shape[1] == 2 and len(outline) >= 1
            assert (outline[:, 0] >= stats[2]).all() and (outline[:, 0] < stats[4]).all()
            assert (outline[:, 1] >= stats[1]).all() and (outline[:, 1] < stats[3]).all()
    with pytest.raises(RuntimeError, match="has had its last band"):
        labeller.feed(scores[:, :1])


def test_bad_blocks():
    labeller = StreamLabeller(10, labelling="seeded")
    with pytest.raises(
        ValueError, match=r"a block must be \(2\+, h, w\) scores with 1 <= w <= 10 .*got shape \(1, 4, 10\)"
    ):
        labeller.feed(np.zeros((1, 4, 10), np.float32))
    labeller.feed(np.zeros((2, 4, 6), np.float32))
    with pytest.raises(
        ValueError, match=r"1 <= w <= 4 \(the columns of this band still to come\), got shape \(2, 4, 5\)"
    ):
        labeller.feed(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"same rows and `last`: .* had 4 rows \(last=False\), got 3 \(last=False\)"):
        labeller.feed(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(RuntimeError, match="between bands; this band has had 6 of 10 columns"):
        labeller.state_dict()
    with pytest.raises(ValueError, match=r"labelling must be one of \['plain', 'seeded'\], got"):
        StreamLabeller(10, labelling="watershed")


def test_tall_and_wide_regions_are_cut_with_a_warning():
    scores = np.ones((1, 50, 5), np.float32)
    labeller = StreamLabeller(5, max_carry=20)
    with pytest.warns(RuntimeWarning, match="spans rows 0..30 .more than max_carry=20 rows"):
        for a in range(0, 50, 10):
            labeller.feed(scores[:, a : a + 10], last=a == 40)
    labeller = StreamLabeller(50, max_carry=20)
    with pytest.warns(RuntimeWarning, match="spans columns 0..30 .more than max_carry=20 columns"):
        for a in range(0, 50, 10):
            labeller.feed(scores.transpose(0, 2, 1)[:, :, a : a + 10], last=True)
