"""Test-time augmentation: the runner's probabilities averaged over the eight turns and mirrors."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_segment import threshold_away_from

import unetseg
from unetseg.checkpoint import model_from_checkpoint
from unetseg.data import synthetic_nuclei
from unetseg.predict import predict

SYMMETRIES = [(turns, mirror) for turns in range(4) for mirror in (False, True)]


def _image(h, w, seed):
    image = synthetic_nuclei((h, w), seed=seed).image
    return np.dstack([image, np.roll(image, 3, axis=1), image[::-1]])  # channels differ: no symmetry to hide behind


def _turn(image, turns, mirror):
    out = np.rot90(image, turns, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if mirror else out)


def _turn_back(probs, turns, mirror):
    return np.rot90(probs[:, :, ::-1] if mirror else probs, -turns, axes=(1, 2))


@settings(max_examples=10)
@given(h=st.integers(1, 24), w=st.integers(1, 24), seed=st.integers(0, 99))
def test_tta_is_the_mean_of_the_turned_predictions(runner, h, w, seed):
    # On the network's size grid nothing is padded, so the runner's turns of the whole batch are
    # the turns of the image: the mean of eight plain predictions, each turned back.
    multiple = runner.metadata["size_multiple"]
    image = _image(h * multiple, w * multiple, seed)
    want = np.mean([_turn_back(runner.predict([_turn(image, *s)])[0], *s) for s in SYMMETRIES], axis=0)
    got = runner.predict([image], tta=True)[0]
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert np.abs(got - runner.predict([image])[0]).max() > 1e-4  # the model is not symmetric: TTA did something


@settings(max_examples=15)
@given(h=st.integers(1, 200), w=st.integers(1, 200), tile=st.integers(1, 80), seed=st.integers(0, 99))
def test_tta_tiled_equals_untiled(runner, h, w, tile, seed):
    # Turning a padded batch keeps every pixel's place on the pooling grid, for a tile as for the
    # whole image, so tiles stitch exactly with TTA too.
    image = _image(h, w, seed)
    whole = runner.predict([image], tile_size=0, tta=True)[0]
    np.testing.assert_allclose(runner.predict([image], tile_size=tile, tta=True)[0], whole, atol=2e-6, rtol=0)
    t, tb = threshold_away_from([whole]), threshold_away_from([whole], 1)
    got = runner.segment([image], tile_size=tile, threshold=t, boundary_threshold=tb, tta=True)[0]
    np.testing.assert_array_equal(got.labels, unetseg.seeded_label(torch.from_numpy(whole), t, tb).labels.numpy())


def test_training_predict_matches_the_runner(runner, rgb_model):
    # `unetseg evaluate` scores checkpoints with unetseg.predict.predict: its TTA is the runner's.
    multiple = runner.metadata["size_multiple"]
    image = _image(5 * multiple, 7 * multiple, 1)
    model = model_from_checkpoint(rgb_model[1]).eval()
    got = predict(model, image, rgb_model[1], tta=True)
    np.testing.assert_allclose(got, runner.predict([image], tta=True)[0], atol=1e-5, rtol=0)
    assert np.abs(got - predict(model, image, rgb_model[1])).max() > 1e-4


def test_segment_batch_tta(runner):
    image = _image(40, 52, 5)
    probs = runner.predict([image], tta=True)[0]
    got = unetseg.segment_batch([image], runner, tta=True, labelling="plain", threshold=0.5)[0]
    np.testing.assert_array_equal(got.labels, unetseg.label(torch.from_numpy(probs[0]), 0.5).labels.numpy())
