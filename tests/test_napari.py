"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): manifest, widget, cancel, reader/writer
round trip, samples; and that ``import unetseg`` loads no Qt."""

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'unetseg[napari]')")

import unetseg  # noqa: E402
from unetseg.napari import _io  # noqa: E402
from unetseg.napari._widget import SegmentWidget  # noqa: E402


def test_manifest_is_valid():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("unetseg")
    assert manifest.name == "unetseg"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment nuclei", "Segment slide"}
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "unetseg"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_unetseg_loads_no_qt_and_no_training():
    code = (
        "import sys, unetseg; unetseg.segment_batch; "
        "print(any(m.startswith(('PyQt', 'qtpy', 'napari')) for m in sys.modules), 'unetseg.train' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def run_widget(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)


def test_widget_segments_like_segment_batch(make_napari_viewer, qtbot, model_file):
    viewer = make_napari_viewer()
    image = _io.sample_fluorescence()[0][0]
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.5))
    widget = SegmentWidget(viewer)
    widget.image.value = layer
    widget.model.value = model_file[0]
    widget.model_defaults.value = False
    widget.threshold.value, widget.min_area.value = 0.4, 5
    run_widget(widget, qtbot)
    labels = viewer.layers["cells nuclei"]
    want = unetseg.segment_batch([image], model_file[0], threshold=0.4, min_area=5)[0]
    np.testing.assert_array_equal(labels.data, want.labels)
    assert tuple(labels.scale) == (0.5, 0.5) and len(labels.features) == want.count
    assert list(labels.features["index"]) == list(range(1, want.count + 1))
    widget.threshold.value = 0.6  # a second run updates the layer
    run_widget(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells nuclei"]
    want = unetseg.segment_batch([image], model_file[0], threshold=0.6, min_area=5)[0]
    np.testing.assert_array_equal(viewer.layers["cells nuclei"].data, want.labels)


def test_widget_segments_stacks_plane_by_plane_and_cancels(make_napari_viewer, qtbot, model_file):
    viewer = make_napari_viewer()
    image = _io.sample_fluorescence()[0][0][:64, :64]
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    widget = SegmentWidget(viewer)
    widget.image.value = viewer.add_image(stack, name="zstack")
    widget.model.value = model_file[0]
    run_widget(widget, qtbot)
    data = viewer.layers["zstack nuclei"].data
    want = unetseg.segment_batch(list(stack), model_file[0])
    for plane, seg in zip(data, want):
        np.testing.assert_array_equal(plane, seg.labels)
    assert sorted(set(viewer.layers["zstack nuclei"].features["plane"])) <= [0, 1, 2]
    big = np.stack([image] * 40)
    widget.image.value = viewer.add_image(big, name="long")
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert "long nuclei" not in viewer.layers and widget.status.value == "cancelled"


def test_writer_and_reader_round_trip(tmp_path):
    labels = np.zeros((30, 40), np.int32)
    labels[2:8, 3:9], labels[15:25, 20:30] = 1, 2
    written = _io.write_labels(str(tmp_path / "im_labels.png"), labels, {})
    assert [os.path.basename(p) for p in written] == ["im_labels.png", "im_labels_objects.csv"]
    (tmp_path / "im_labels_objects.csv").rename(tmp_path / "objects.csv")
    text = (tmp_path / "objects.csv").read_text().splitlines()
    (tmp_path / "objects.csv").write_text("\n".join(["image," + text[0]] + [f"im,{row}" for row in text[1:]]))
    reader = _io.get_reader(str(tmp_path / "im_labels.png"))
    [(data, meta, kind)] = reader(str(tmp_path / "im_labels.png"))
    assert kind == "labels" and meta["name"] == "im nuclei"
    np.testing.assert_array_equal(data, labels)
    assert list(meta["features"]["index"]) == [1, 2] and list(meta["features"]["area"]) == [36, 100]
    assert _io.get_reader(str(tmp_path / "nothing.txt")) is None


@pytest.mark.parametrize("labels_format", ["ome-tiff", "ome-zarr"])
def test_reader_opens_a_slide_output(tmp_path, model_file, labels_format):
    import dask.array as da

    from unetseg.slide import segment_slide

    image = np.tile(_io.sample_fluorescence()[0][0], (2, 2))
    out = tmp_path / "slide"
    result = segment_slide(image, out, model_file[0], progress=False, labels_format=labels_format)
    [(data, meta, kind)] = _io.get_reader(str(out))(str(out))
    assert kind == "labels" and data.shape == image.shape[:2] and len(meta["features"]) == result.count
    assert int(np.asarray(data).max()) == result.count
    assert isinstance(data, da.Array) == (labels_format == "ome-zarr")  # zarr: lazy; a small TIFF: read whole
    assert meta["scale"] == (1.0, 1.0)


def test_reader_opens_a_resized_slides_labels_on_its_grid(tmp_path):
    from unetseg.slide import segment_slide

    runner = unetseg.Runner(device="cpu")
    image = np.tile(_io.sample_fluorescence()[0][0], (2, 2))[:300, :280]
    segment_slide(image, tmp_path / "slide", runner, diameter=2 * runner.diameter, progress=False)
    [(data, meta, _)] = _io.get_reader(str(tmp_path / "slide"))(str(tmp_path / "slide"))
    assert data.shape == (300, 280) and meta["scale"] == pytest.approx((1.0, 1.0))


def test_samples_open():
    for sample in (_io.sample_fluorescence, _io.sample_brightfield):
        [(data, meta, kind)] = sample()
        assert kind == "image" and data.ndim in (2, 3)
