"""Tiled inference in the runner: tiles with a halo, stitched, equal to the untiled result."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_segment import threshold_away_from

import unetseg
from unetseg.data import synthetic_nuclei
from unetseg.export import METADATA_FILE, quiet_jit, read_metadata


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    image = synthetic_nuclei((h, w), seed=seed).image
    return image if rng.random() < 0.5 else np.dstack([image] * 3)


@settings(max_examples=25)
@given(h=st.integers(1, 260), w=st.integers(1, 260), tile=st.integers(1, 100), seed=st.integers(0, 99))
def test_tiled_equals_untiled(runner, h, w, tile, seed):
    image = _image(h, w, seed)
    whole = runner.predict([image], tile_size=0)[0]
    tiled = runner.predict([image], tile_size=tile)[0]
    np.testing.assert_allclose(tiled, whole, atol=2e-6, rtol=0)  # float rounding of other shapes only
    t, tb = threshold_away_from([whole]), threshold_away_from([whole], 1)
    got = runner.segment([image], tile_size=tile, threshold=t, boundary_threshold=tb)[0]
    # Stitching is exact: the labels are the fused op on the stitched probability map ...
    want = unetseg.seeded_label_stats(torch.from_numpy(tiled), t, tb)
    np.testing.assert_array_equal(got.labels, want.labels.numpy())
    np.testing.assert_array_equal(got.objects.table, want.stats.numpy())
    # ... and a nucleus crossing a seam is one object, numbered as in the untiled result.
    untiled = runner.segment([image], tile_size=0, threshold=t, boundary_threshold=tb)[0]
    np.testing.assert_array_equal(got.labels, untiled.labels)
    plain = runner.segment([image], tile_size=tile, threshold=t, labelling="plain")[0]
    np.testing.assert_array_equal(
        plain.labels, runner.segment([image], tile_size=0, threshold=t, labelling="plain")[0].labels
    )


def test_large_images_are_tiled_automatically(model_file):
    runner = unetseg.Runner(model_file[0], device="cpu")
    image = synthetic_nuclei((2049, 2100), seed=3).image  # more than 2048 x 2048 pixels
    auto = runner.predict([image])[0]
    np.testing.assert_array_equal(auto, runner.predict([image], tile_size=1024)[0])
    np.testing.assert_allclose(auto, runner.predict([image], tile_size=0)[0], atol=2e-6, rtol=0)


def test_halo_is_the_receptive_field(rgb_model, tmp_path):
    metadata = read_metadata(rgb_model[0])
    assert metadata["halo"] == unetseg.Runner(rgb_model[0]).halo > 0
    # A file without the key (exported before tiling) gets the same halo, measured at load.
    with quiet_jit():
        extra = {METADATA_FILE: ""}
        module = torch.jit.load(str(rgb_model[0]), _extra_files=extra)
        old = json.loads(extra[METADATA_FILE])
        del old["halo"]
        torch.jit.save(module, str(tmp_path / "old.pt"), _extra_files={METADATA_FILE: json.dumps(old)})
    assert unetseg.Runner(tmp_path / "old.pt").halo == metadata["halo"]
    # A halo smaller than the receptive field changes the tiled result; the model's does not.
    image = _image(120, 130, 1)
    whole = unetseg.Runner(rgb_model[0]).predict([image], tile_size=0)[0]
    short = unetseg.Runner(rgb_model[0]).predict([image], tile_size=32, halo=0)[0]
    assert np.abs(short - whole).max() > 1e-3


def test_fixed_normalisation(runner):
    image = _image(70, 90, 2)
    low, high = runner.normalisation(image)
    assert len(low) == len(high) == 3
    same = runner.predict([image], normalisation=(low, high))[0]
    np.testing.assert_array_equal(same, runner.predict([image])[0])
    # The given ranges are the ones used: shifting them equals shifting the image.
    shifted = runner.predict([image], normalisation=([v - 20 for v in low], [v - 20 for v in high]))[0]
    np.testing.assert_allclose(
        shifted, runner.predict([image.astype(np.float32) + 20], normalisation=(low, high))[0], atol=1e-6
    )
    assert np.abs(shifted - same).max() > 1e-5
    # Tiles never normalise on their own: a tile of a bright corner keeps the whole image's ranges.
    np.testing.assert_allclose(runner.predict([image], tile_size=8, normalisation=(low, high))[0], same, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_ranges_of_a_large_image_are_its_whole_percentiles(runner, dtype, channels):
    """The runner takes a large image's percentiles a band of rows at a time (never converting it
    whole); the ranges are numpy's over the whole image all the same."""
    rng = np.random.default_rng(channels)
    top = {np.uint8: 255, np.uint16: 60000, np.float32: 3.7}[dtype]
    image = (rng.random((1500, 1001, channels)) ** 3 * top).astype(dtype)  # 1.5 Mpx: two bands
    low, high = runner.normalisation(image if channels == 3 else image[..., 0])
    q = runner.metadata["normalisation"]
    want_low = [np.percentile(image[..., k % channels], q["low"]) for k in range(3)]
    want_high = [np.percentile(image[..., k % channels], q["high"]) for k in range(3)]
    np.testing.assert_allclose(low, want_low, rtol=1e-6)
    np.testing.assert_allclose(high, want_high, rtol=1e-6)


@settings(max_examples=20)
@given(
    h=st.integers(1, 200),
    w=st.integers(1, 200),
    tile=st.sampled_from([0, 8, 37, 64]),
    top=st.integers(0, 3),
    bottom=st.integers(0, 40),
    left=st.integers(0, 3),
    right=st.integers(0, 40),
    seed=st.integers(0, 99),
)
def test_context_is_seen_not_predicted(runner, h, w, tile, top, bottom, left, right, seed):
    """A block read with context rows and columns (the slide pipeline's halo) gives the pixels
    between them, as predicting the whole image does (context above and left on the pooling grid,
    as the pipeline's is)."""
    top, left = top * runner.metadata["size_multiple"], left * runner.metadata["size_multiple"]
    image = _image(h + top + bottom, w + left + right, seed)
    want = runner.predict([image], tile_size=0)[0][:, top : top + h, left : left + w]
    got = runner.predict([image], tile_size=tile, context=(top, bottom, left, right))[0]
    assert got.shape[1:] == (h, w)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    if left == right == 0:  # rows only
        np.testing.assert_allclose(
            runner.predict([image], tile_size=tile, context=(top, bottom))[0], want, atol=2e-6, rtol=0
        )


def test_tiling_errors(runner):
    image = [_image(40, 40, 0)]
    with pytest.raises(ValueError, match="tile_size must be >= 0 pixels .*got -1"):
        runner.segment(image, tile_size=-1)
    with pytest.raises(ValueError, match="image 0 has 40 rows, not more than its context rows .20 above, 20 below"):
        runner.predict(image, context=(20, 20))
    with pytest.raises(ValueError, match="image 0 has 40 columns, not more than its context columns .0 left, 40 right"):
        runner.predict(image, context=(0, 0, 0, 40))
    with pytest.raises(ValueError, match=r"context rows and columns must be >= 0, got \(-1, 0, 0, 0\)"):
        runner.predict(image, context=(-1, 0))
    with pytest.raises(
        ValueError, match=r"context must be \(top, bottom\) or \(top, bottom, left, right\), got \(1,\)"
    ):
        runner.predict(image, context=(1,))
    with pytest.raises(ValueError, match="halo must be >= 0 pixels, got -4"):
        runner.predict(image, tile_size=16, halo=-4)
    with pytest.raises(ValueError, match="normalisation has 1 low and 1 high values; this model takes 3 input"):
        runner.predict(image, normalisation=([0.0], [1.0]))
    with pytest.raises(ValueError, match="expected finite values"):
        runner.predict(image, normalisation=([0.0, 0, float("nan")], [1.0, 1, 1]))
