"""A colour image that is one gray image in colour (a DAPI image saved as blue RGB, a gray image under a
cyan or magenta colour table) is read as that channel alone: by the runner, in training, in slides and
in dask, exactly as the gray image itself."""

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import unetseg
from unetseg.data import read_datasets, to_channels
from unetseg.segment import default_model_path, signal_channel
from unetseg.slide import segment_slide

SAMPLES = default_model_path().parent / "samples"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gray():
    return unetseg.data.read_image(SAMPLES / "fluorescence.png")[:200, :240]


def in_colour(image, channels, size=3, alpha=False):
    """`image` copied into `channels` of a (H, W, size) image whose other channels are zero."""
    out = np.zeros((*image.shape, size + alpha), image.dtype)
    for k in channels:
        out[..., k] = image
    if alpha:
        out[..., -1] = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1.0
    return out


def jpeg(rgb, quality):
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize(
    "channels,size,alpha,want",
    [
        ((2,), 3, False, 2),  # DAPI as blue
        ((1,), 3, False, 1),  # GFP as green
        ((0,), 3, True, 0),  # red with an opaque alpha channel
        ((0, 2), 3, False, 0),  # magenta colour table
        ((1, 2), 3, False, 1),  # cyan
        ((0, 1, 2), 3, False, 0),  # gray saved as RGB
    ],
)
def test_the_channel_that_holds_the_image(channels, size, alpha, want):
    image = gray()
    assert signal_channel(in_colour(image, channels, size, alpha)) == want
    for dtype, scale in ((np.uint16, 257), (np.float32, 1 / 255)):
        assert signal_channel(in_colour((image * np.float64(scale)).astype(dtype), channels, size, alpha)) == want


def test_jpeg_colour_bleeding_is_still_one_channel():
    for quality in (95, 75, 50):
        assert signal_channel(jpeg(in_colour(gray(), (2,)), quality)) == 2


def test_images_with_more_than_one_signal_stay_colour():
    image = gray()
    rng = np.random.default_rng(0)
    assert signal_channel(image) is None  # gray: nothing to choose
    assert signal_channel(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) is None
    composite = in_colour(image, (2,))
    composite[..., 1] = np.roll(image, 9, axis=1)  # a second stain in green
    assert signal_channel(composite) is None
    faint = in_colour(image, (2,))
    faint[..., 0] = np.roll(image, 9, axis=1) // 8  # a faint but real second stain: 1/8 of the range
    assert signal_channel(faint) is None
    near_copy = in_colour(image, (1, 2))
    near_copy[0, 0, 1] ^= 1  # two full channels that differ, however little, are two signals
    assert signal_channel(near_copy) is None
    assert signal_channel(np.full((32, 32, 3), 7, np.uint8)) is None  # constant


def test_stained_tissue_is_never_taken_for_one_channel():
    images = [unetseg.data.read_image(SAMPLES / "brightfield.png")]
    images += [unetseg.data.synthetic_nuclei((96, 96), kind="brightfield", seed=s).image for s in range(5)]
    for image in images:
        assert signal_channel(image) is None


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent (not on users' machines)")
def test_no_training_image_of_stained_tissue_is_taken_for_one_channel():
    """Every H&E image of the shared sets keeps its colour; every gray one saved as RGB is its channel 0."""
    sets = ["monuseg2018_train", "consep_train", "tcga_brain_he", "tnbc", "cpm15", "dsb2018_stage1_train"]
    with warnings.catch_warnings():  # cpm15's two swapped label files are skipped with a warning
        warnings.simplefilter("ignore", UserWarning)
        samples = read_datasets([DATA / s for s in sets if (DATA / s).exists()], skip_invalid=True)
    for sample in samples:
        found = signal_channel(sample.image)
        if sample.kind == "color_brightfield_HE":
            assert found is None, sample.name
        elif sample.image.ndim == 3:
            assert found == 0, sample.name


def test_segmented_exactly_as_the_gray_image():
    runner = unetseg.Runner(device="cpu", precision="float32")
    image = gray()
    want = runner.segment([image], diameter=20)[0]
    for channels, alpha in (((2,), False), ((1,), True), ((0, 2), False)):
        got = runner.segment([in_colour(image, channels, alpha=alpha)], diameter=20)[0]
        np.testing.assert_array_equal(got.labels, want.labels)
    assert runner.normalisation(in_colour(image, (2,))) == runner.normalisation(image)
    # an explicit channel is the caller's choice: the empty red channel, as asked
    assert runner.segment([in_colour(image, (2,))], diameter=20, channel=0)[0].count == 0


def test_training_reads_it_as_the_runner_does():
    image = gray()
    for channels in ((2,), (1, 2)):
        np.testing.assert_array_equal(to_channels(in_colour(image, channels), 3), to_channels(image, 3))
        np.testing.assert_array_equal(to_channels(in_colour(image, channels), 1), to_channels(image, 1))


def test_slide_and_dask_decide_once_for_the_whole_image(tmp_path):
    """A blue RGB slide with a small green mark (under 0.2% of the slide, so under the 99.8th
    percentile: the whole slide is one blue image) that fills more of one block, which alone would
    read as two signals, in colour. The slide and dask decide once: it is segmented as the gray slide
    of its blue channel."""
    import dask.array as da

    from unetseg.dask import probabilities

    runner = unetseg.Runner(device="cpu", precision="float32")
    image = np.tile(gray(), (1, 2))
    blue = in_colour(image, (2,))
    blue[10:22, 10:22, 1] = 200
    assert signal_channel(blue) == 2 and signal_channel(blue[:64, :128]) is None
    want = segment_slide(image, tmp_path / "gray", model=runner, band_height=64, block_width=128, diameter=None)
    got = segment_slide(blue, tmp_path / "blue", model=runner, band_height=64, block_width=128, diameter=None)
    assert got.count == want.count > 0
    np.testing.assert_array_equal(tifffile.imread(got.labels), tifffile.imread(want.labels))

    assert json.loads(got.summary.read_text())["normalisation"]["channel"] == 2
    chunks = (64, 128)
    probs_gray = probabilities(da.from_array(image, chunks=chunks), runner).compute()
    probs_blue = probabilities(da.from_array(blue, chunks=(*chunks, 3)), runner).compute()
    np.testing.assert_array_equal(probs_blue, probs_gray)


def test_the_cli_says_what_to_try_when_it_finds_nothing(tmp_path, capsys):
    """An image where nothing is found gets a hint naming --channel, --diameter and --threshold;
    a composite with its nuclear channel given, or a gray image saved as blue, finds nuclei and gets
    none."""
    from unetseg.cli import main

    image = gray()
    composite = in_colour(image, (2,))
    composite[..., 1] = np.roll(image, 37, axis=1)  # a second stain in green
    cv2.imwrite(str(tmp_path / "composite.png"), composite[..., ::-1])
    cv2.imwrite(str(tmp_path / "blue.png"), in_colour(image, (2,))[..., ::-1])
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["segment", str(tmp_path / "blank.png"), "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "no nuclei found in 1 image(s) (blank)" in err and all(o in err for o in ("--channel", "--diameter"))
    for args in (["composite.png", "--channel", "2"], ["blue.png"]):
        assert main(["segment", str(tmp_path / args[0]), *args[1:], "-o", str(tmp_path / args[0][:-4])]) == 0
        assert "no nuclei found" not in capsys.readouterr().err, args
