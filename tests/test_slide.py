"""Whole slides: readers, segment_slide (bands, stitching, outputs, resume) and the CLI."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
import torch
import zarr
from test_segment import threshold_away_from

import unetseg
from unetseg.cli import main
from unetseg.data import read_image
from unetseg.segment import default_model_path
from unetseg.slide import SlideReader, open_slide, segment_slide
from unetseg.slide.pipeline import PARTIAL

SAMPLES = default_model_path().parent / "samples"


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """Real nuclei (the bundled fluorescence sample, tiled) at a size that is a multiple of nothing,
    as a tiled OME-TIFF."""
    image = read_image(SAMPLES / "fluorescence.png")
    image = np.tile(image, (2, 2))[:333, :301]
    path = tmp_path_factory.mktemp("slides") / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(64, 64), ome=True)
    return path, image


@pytest.fixture(scope="module")
def default_runner():
    return unetseg.Runner(device="cpu", precision="float32")  # bit-for-bit comparisons across tile shapes


def whole_image(runner, image, **options):
    """The runner on the whole image at once, at thresholds no probability is within 1e-6 of (tiles
    and bands round the network's floats differently, by ~1e-7), at the image's own scale as slides
    run (for a model with a canonical diameter, that diameter)."""
    native = {"diameter": runner.diameter} if runner.diameter else {}
    probs = runner.predict([image], tile_size=0, tta=options.get("tta", False), **native)[0]
    options = dict(
        threshold=threshold_away_from([probs]), boundary_threshold=threshold_away_from([probs], 1), **options
    )
    # the slide at its own scale too (diameter None; "auto" would estimate one)
    return runner.segment([image], tile_size=0, **native, **options)[0], {**options, "diameter": None}


@pytest.mark.parametrize(
    "band_height,block_width,tile_size,labelling",
    [
        (32, 64, 48, "seeded"),
        (96, 4096, 1000, "plain"),
        (1000, 96, 96, "seeded"),
        (1000, 4096, 96, "plain"),
        (48, 80, 1000, "plain"),
    ],
)
def test_slide_equals_the_whole_image(default_runner, slide, tmp_path, labelling, band_height, block_width, tile_size):
    want, options = whole_image(default_runner, slide[1], labelling=labelling, min_area=10)
    result = segment_slide(
        slide[0],
        tmp_path / "out",
        default_runner,
        band_height=band_height,
        block_width=block_width,
        tile_size=tile_size,
        progress=False,
        **options,
    )
    assert result.count == want.count > 30
    np.testing.assert_array_equal(tifffile.imread(result.labels), want.labels)
    table = pd.read_csv(result.table)
    assert list(table.label) == list(range(1, want.count + 1))
    np.testing.assert_array_equal(table.iloc[:, 1:6].to_numpy(), want.objects.table[:, :5])
    np.testing.assert_allclose(table.iloc[:, 6:].to_numpy(), want.objects.table[:, 5:], rtol=1e-6)
    assert not (tmp_path / "out" / PARTIAL).exists()
    summary = json.loads(result.summary.read_text())
    assert summary["count"] == want.count and set(summary["seconds"]) >= {"read", "network", "labelling", "write"}


def test_slide_with_tta_equals_the_whole_image(default_runner, slide, tmp_path):
    want, options = whole_image(default_runner, slide[1], tta=True)
    assert not np.array_equal(want.labels, whole_image(default_runner, slide[1])[0].labels)
    result = segment_slide(
        slide[0],
        tmp_path / "out",
        default_runner,
        band_height=64,
        block_width=96,
        tile_size=48,
        progress=False,
        **options,
    )
    assert result.count == want.count > 30
    np.testing.assert_array_equal(tifffile.imread(result.labels), want.labels)


def test_zarr_parquet_and_geojson(default_runner, slide, tmp_path):
    runner = default_runner
    want, options = whole_image(runner, slide[1])
    result = segment_slide(
        slide[0],
        tmp_path,
        runner,
        band_height=48,
        labels_format="ome-zarr",
        table_format="parquet",
        progress=False,
        **options,
    )
    np.testing.assert_array_equal(zarr.open_group(str(result.labels), mode="r")["0"][:], want.labels)
    assert len(pd.read_parquet(result.table)) == want.count
    features = json.loads(result.geojson.read_text())["features"]
    assert len(features) == want.count
    assert sorted(f["properties"]["label"] for f in features) == list(range(1, want.count + 1))
    for f in features:
        ring = np.asarray(f["geometry"]["coordinates"][0])
        k = f["properties"]["label"]
        r0, c0, r1, c1 = want.objects.bbox[k - 1]
        assert f["properties"]["objectType"] == "detection" and (ring[0] == ring[-1]).all() and len(ring) >= 4
        # a valid polygon on the pixel edges of the object's box
        assert (ring[:, 0] >= c0).all() and (ring[:, 0] <= c1).all() and (ring[:, 1] >= r0).all()
        assert (ring[:, 1] <= r1).all() and shapely.geometry.Polygon(ring).is_valid


class Interrupt(Exception):
    pass


class FailingReader(SlideReader):
    """A slide reader that fails on its n-th block read (an interrupted run)."""

    def __init__(self, path, fail_at):
        self.inner, self.reads, self.fail_at = open_slide(path), 0, fail_at
        self.shape, self.channels, self.dtype = self.inner.shape, self.inner.channels, self.inner.dtype
        self.description = "failing"

    def thumbnail(self, *args, **kwargs):
        return self.inner.thumbnail(*args, **kwargs)

    def read(self, r0, r1, *columns):
        self.reads += 1
        if self.reads == self.fail_at:
            raise Interrupt
        return self.inner.read(r0, r1, *columns)


def test_an_interrupted_run_resumes(rgb_model, slide, tmp_path, monkeypatch):
    from unetseg.slide import pipeline

    runner = unetseg.Runner(rgb_model[0], precision="float32")
    options = dict(threshold=0.5, labelling="plain", band_height=32, block_width=112)  # 3 blocks a band
    want = segment_slide(slide[0], tmp_path / "straight", runner, progress=False, **options)
    out = tmp_path / "out"
    reads = []
    real_open = pipeline.open_slide
    # Interrupted in the middle of band 2 (its second block), after bands 0 and 1.
    monkeypatch.setattr(pipeline, "open_slide", lambda s, **kw: FailingReader(slide[0], fail_at=8))
    with pytest.raises(Interrupt):
        segment_slide(str(slide[0]), out, runner, progress=False, **options)
    # Nothing is left under a final name; the work done so far is kept.
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL]
    counting = real_open(slide[0])
    monkeypatch.setattr(counting, "read", lambda r0, *rest, f=counting.read: reads.append(r0) or f(r0, *rest))
    monkeypatch.setattr(pipeline, "open_slide", lambda s, **kw: counting)
    with pytest.raises(ValueError, match="cannot resume: .* other settings \\(band_height\\)"):
        segment_slide(str(slide[0]), out, runner, resume=True, progress=False, **{**options, "band_height": 64})
    with pytest.raises(ValueError, match="cannot resume: .* other settings \\(precision\\)"):
        segment_slide(
            str(slide[0]),
            out,
            unetseg.Runner(rgb_model[0], precision="bfloat16"),
            resume=True,
            progress=False,
            **options,
        )
    result = segment_slide(str(slide[0]), out, runner, resume=True, progress=False, **options)
    assert min(reads) == 2 * 32 - runner.halo  # bands 0 and 1 were not read again
    assert result.count == want.count
    np.testing.assert_array_equal(tifffile.imread(result.labels), tifffile.imread(want.labels))
    pd.testing.assert_frame_equal(pd.read_csv(result.table), pd.read_csv(want.table))
    assert result.geojson.read_text() == want.geojson.read_text()


def test_readers(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((150, 170, 3)) * 255).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", bigtiff=True, ome=True) as w:
        w.write(rgb, tile=(64, 64), subifds=1, photometric="rgb")
        w.write(rgb[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
    reader = open_slide(tmp_path / "pyramid.ome.tif")
    assert reader.shape == (150, 170) and reader.channels == 3
    np.testing.assert_array_equal(reader.read(10, 90), rgb[10:90])
    np.testing.assert_array_equal(reader.read(10, 90, 33, 170), rgb[10:90, 33:])
    np.testing.assert_array_equal(open_slide(tmp_path / "pyramid.ome.tif", level=1).read(0, 75), rgb[::2, ::2])
    with pytest.raises(ValueError, match="has 2 pyramid level\\(s\\) \\(0..1\\); level 2 asked for"):
        open_slide(tmp_path / "pyramid.ome.tif", level=2)

    fluo = (rng.random((4, 90, 80)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "fluo.ome.tif", fluo, ome=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(open_slide(tmp_path / "fluo.ome.tif", channel=2).read(5, 50), fluo[2, 5:50])
    np.testing.assert_array_equal(
        open_slide(tmp_path / "fluo.ome.tif", channel=2).read(5, 50, 7, 9), fluo[2, 5:50, 7:9]
    )
    with pytest.raises(ValueError, match="has 4 channels .* choose the nuclear channel with channel=N"):
        open_slide(tmp_path / "fluo.ome.tif")
    with pytest.raises(ValueError, match="channel 7 asked for, but the slide has 4 channel"):
        open_slide(tmp_path / "fluo.ome.tif", channel=7)

    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(90, 80), chunks=(32, 32), dtype="u2")
    z[:] = fluo[0]
    np.testing.assert_array_equal(open_slide(tmp_path / "plain.zarr").read(3, 40), fluo[0, 3:40])
    # OME-Zarr: a group with multiscales metadata, axes (c, y, x)
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.create_array("0", shape=fluo.shape, chunks=(1, 32, 32), dtype="u2")[:] = fluo
    group.create_array("1", shape=(4, 45, 40), chunks=(1, 32, 32), dtype="u2")[:] = fluo[:, ::2, ::2]
    group.attrs["multiscales"] = [
        {"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}, {"path": "1"}]}
    ]
    np.testing.assert_array_equal(open_slide(tmp_path / "ome.zarr", level=1, channel=3).read(0, 45), fluo[3, ::2, ::2])

    np.save(tmp_path / "slide.npy", rgb)
    reader = open_slide(tmp_path / "slide.npy")
    assert isinstance(reader.array, np.memmap)
    np.testing.assert_array_equal(reader.thumbnail(max_pixels=2000), rgb[::4, ::4])
    np.testing.assert_array_equal(reader.thumbnail(max_pixels=2000, block=(33, 25)), rgb[::4, ::4])

    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_slide(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown slide format"):
        open_slide(tmp_path / "notes.txt")
    tifffile.imwrite(tmp_path / "stack.ome.tif", np.zeros((3, 40, 40), np.uint16), ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match="has 3 planes along axis 'Z' .* pass a 2-D plane"):
        open_slide(tmp_path / "stack.ome.tif")


def test_openslide_formats(tmp_path):
    openslide = pytest.importorskip("openslide", reason="openslide-python is an optional extra")
    rgb = (np.random.default_rng(1).random((130, 150, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "generic.tif", rgb, tile=(64, 64), photometric="rgb")  # OpenSlide "generic-tiff"
    from unetseg.slide.readers import OpenSlideReader

    reader = OpenSlideReader(tmp_path / "generic.tif")
    assert "generic-tiff" in reader.description and reader.shape == (130, 150)
    np.testing.assert_array_equal(reader.read(20, 100), rgb[20:100])
    np.testing.assert_array_equal(reader.read(20, 100, 64, 130), rgb[20:100, 64:130])
    assert openslide.OpenSlide.detect_format(str(tmp_path / "generic.tif")) == "generic-tiff"


def test_cli_segment_slide(model_file, slide, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment-slide", "--help"])
    assert e.value.code == 0 and "--resume" in capsys.readouterr().out
    assert (
        main(
            [
                "segment-slide",
                str(slide[0]),
                "-o",
                str(tmp_path),
                "-m",
                str(model_file[0]),
                "--band-height",
                "100",
                "--no-geojson",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "nuclei in 333x301 pixels" in out and (tmp_path / "labels.ome.tif").is_file()
    assert not (tmp_path / "objects.geojson").exists()
    again = ["segment-slide", str(slide[0]), "-o", str(tmp_path), "-m", str(model_file[0]), "--band-height", "100"]
    labels = (tmp_path / "labels.ome.tif").read_bytes()
    finished = (
        r"holds a finished run's results \(labels.ome.tif, objects.csv, summary.json\); give another output folder"
    )
    with pytest.raises(SystemExit, match=finished + r", or replace them with restart=True \(--restart\)"):
        main(again)
    assert (tmp_path / "labels.ome.tif").read_bytes() == labels and not (tmp_path / "objects.geojson").exists()
    assert main([*again, "--restart"]) == 0 and (tmp_path / "objects.geojson").is_file()
    with pytest.raises(SystemExit, match="has 4 channels"):
        fluo = np.zeros((4, 40, 40), np.uint16)
        tifffile.imwrite(tmp_path / "fluo.ome.tif", fluo, ome=True, metadata={"axes": "CYX"})
        main(["segment-slide", str(tmp_path / "fluo.ome.tif"), "-o", str(tmp_path / "x")])


def test_slide_options_are_the_runners(model_file, slide, tmp_path):
    runner = unetseg.Runner(model_file[0])
    assert runner.resolve() == {"labelling": "plain", "threshold": 0.5, "boundary_threshold": 0.5, "min_area": 0}
    with pytest.raises(ValueError, match=r"seeded labelling needs a model with a boundary output; .* \[nucleus\]"):
        segment_slide(slide[0], tmp_path, runner, labelling="seeded", progress=False)
    with pytest.raises(ValueError, match="threshold 1.5 is not a probability"):
        segment_slide(slide[0], tmp_path, runner, threshold=1.5, progress=False)
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        segment_slide(slide[0], tmp_path, runner, connectivity=6, progress=False)


def test_scaled_reader_is_the_same_in_every_block_and_equals_torchs_resize():
    from unetseg.slide.readers import ArrayReader, ScaledReader

    image = (np.random.default_rng(0).random((300, 410, 3)) * 255).astype(np.uint8)
    for factor in (0.37, 0.5, 1.6):
        scaled = ScaledReader(ArrayReader(image, axes="YXC"), factor)
        h, w = scaled.shape
        whole = scaled.read(0, h)
        blocks = np.concatenate(
            [
                np.concatenate([scaled.read(r, min(h, r + 37), c, min(w, c + 53)) for c in range(0, w, 53)], axis=1)
                for r in range(0, h, 37)
            ]
        )
        np.testing.assert_array_equal(blocks, whole)
        x = torch.from_numpy(image).float().permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(
            x, size=(h, w), mode="bilinear", antialias=factor < 1, align_corners=False
        )
        np.testing.assert_allclose(whole, want[0].permute(1, 2, 0).numpy(), atol=2e-3)
        assert scaled.downsample == pytest.approx(300 / h)


@pytest.mark.parametrize("factor", [0.5, 1.6])
def test_a_slide_at_another_diameter_is_labelled_on_its_own_grid_with_exact_seams(default_runner, tmp_path, factor):
    """The network reads the slide resized by `factor` and its probabilities are resized back: the
    labels are those of the whole resized image's probabilities resized to the slide's grid and
    labelled there (min_area counted at the network's scale), whatever the blocks."""
    from unetseg._C import min_area_at
    from unetseg.slide.readers import ArrayReader, ScaledReader, apply_taps, taps

    image = np.tile(read_image(SAMPLES / "fluorescence.png"), (2, 2))[:400, :380]
    h, w = image.shape
    canonical = default_runner.diameter
    scaled = ScaledReader(ArrayReader(image, axes="YX"), factor)
    sh, sw = scaled.shape
    small = scaled.read(0, sh)
    ranges = default_runner.normalisation(small)
    probs = default_runner.predict([small], tile_size=0, diameter=canonical, normalisation=ranges)[0]
    rows, _ = taps(0, h, h / sh, sh)
    cols, _ = taps(0, w, w / sw, sw)
    full = apply_taps(apply_taps(probs, rows, 0, axis=1), cols, 0, axis=2)
    t, tb = threshold_away_from([full]), threshold_away_from([full], 1)
    min_area = default_runner.metadata["min_area"]
    want = unetseg.seeded_label(torch.from_numpy(full), t, tb, 8, min_area_at(min_area, factor)).labels.numpy()
    for band, block in ((64, 128), (1024, 4096)):
        result = segment_slide(
            image,
            tmp_path / f"out{band}",
            default_runner,
            diameter=canonical / factor,
            band_height=band,
            block_width=block,
            threshold=t,
            boundary_threshold=tb,
            progress=False,
        )
        labels = tifffile.imread(result.labels)
        np.testing.assert_array_equal(labels, want)
        assert result.count == want.max() > 10 and result.scale == factor
    summary = json.loads(result.summary.read_text())
    assert summary["downsample"] == 1 and summary["scale"] == factor and summary["shape"] == [h, w]
    table = pd.read_csv(result.table)
    assert table.area.sum() == (labels > 0).sum()


def test_slide_diameter_estimate_and_bad_values(default_runner, model_file, tmp_path):
    from unetseg.data import synthetic_nuclei
    from unetseg.slide.pipeline import slide_factor
    from unetseg.slide.readers import ArrayReader

    canonical = default_runner.diameter
    image = synthetic_nuclei((700, 700), seed=5).image
    native = slide_factor(ArrayReader(image, axes="YX"), default_runner, "auto")
    big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)  # nuclei 3x as large
    # the estimate follows the enlargement (the runner's estimate errs by up to ~25% on large nuclei)
    assert native / 4 < slide_factor(ArrayReader(big, axes="YX"), default_runner, "auto") < native / 2
    assert slide_factor(ArrayReader(image, axes="YX"), default_runner, canonical * 1.2) == 1.0  # within 25%
    assert slide_factor(ArrayReader(image, axes="YX"), default_runner, None) == 1.0
    for bad, message in (
        (0, "diameter must be a positive number of pixels"),
        (-3.0, "diameter must be a positive number of pixels"),
        (float("nan"), "diameter must be a positive number of pixels"),
        ("big", "diameter must be a positive number of pixels or 'auto', got 'big'"),
        (canonical * 100, r"would resize the slide by 0.01, outside \[0.0625, 4"),
    ):
        with pytest.raises(ValueError, match=message):
            segment_slide(image, tmp_path / "bad", default_runner, diameter=bad, progress=False)
    small_model = unetseg.Runner(model_file[0])  # trained without rescaling
    assert slide_factor(ArrayReader(image, axes="YX"), small_model, "auto") == 1.0
    with pytest.raises(ValueError, match="has no canonical nucleus diameter"):
        segment_slide(image, tmp_path / "bad", small_model, diameter=30, progress=False)
    assert not (tmp_path / "bad").exists()
