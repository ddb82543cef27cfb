"""Outputs imaging software reads: valid GeoJSON polygons on pixel edges (QuPath), ImageJ ROI sets
(Fiji), from `unetseg segment` and slides."""

import json

import cv2
import numpy as np
import pytest
import roifile
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import Polygon

import unetseg
from unetseg.cli import main
from unetseg.data import read_image, synthetic_nuclei
from unetseg.geometry import object_outlines, outline_polygon, outline_polygons


def test_outlines_are_valid_and_have_the_pixel_area():
    # shapes whose pixel-centre contours are invalid rings: a one-pixel neck, a notch, a diagonal touch
    labels = np.zeros((20, 30), np.int32)
    labels[2:7, 2:7] = 1
    labels[4, 7:10] = 1  # neck
    labels[2:7, 10:15] = 1
    labels[10:16, 2:12] = 2
    labels[12, 6] = 0  # a hole: dropped, the outline is the outer boundary
    labels[10:12, 15:17] = 3
    labels[12:14, 17:19] = 3  # touches itself diagonally
    labels[18, 25] = 4  # one pixel
    labels[16:19, 20] = 5  # one column
    bboxes = [(r.min(), c.min(), r.max() + 1, c.max() + 1) for r, c in (np.nonzero(labels == k) for k in range(1, 6))]
    for k, polygon in enumerate(object_outlines(labels, np.array(bboxes)), start=1):
        shape = Polygon(polygon)
        assert shape.is_valid, (k, shapely.is_valid_reason(shape))
        area = (labels == k).sum() + (1 if k == 2 else 0)  # the hole is filled
        assert abs(shape.area - area) <= max(0.1 * area, 1.0), (k, shape.area, area)
    assert np.allclose(
        sorted(map(tuple, outline_polygon(np.array([[25, 18]]))[:-1])), [(25, 18), (25, 19), (26, 18), (26, 19)]
    )  # the pixel's square


@given(arrays(np.uint8, st.tuples(st.integers(1, 14), st.integers(1, 14)), elements=st.integers(0, 1)))
def test_outlines_of_many_objects_equal_the_per_object_reference(mask):
    """outline_polygons (shapely's vectorised operations) gives each object's polygon exactly as the
    one-object-at-a-time reference, for every connected shape of random masks (necks, notches, holes,
    diagonal touches, single pixels and lines) and for all of them in one call."""
    import reference

    contours, _ = cv2.findContours(np.pad(mask, 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c[:, 0, :] - 1 for c in contours]
    got = outline_polygons(contours)
    assert len(got) == len(contours)
    for contour, polygon in zip(contours, got):
        np.testing.assert_array_equal(polygon, reference.outline_polygon(contour))
    assert outline_polygons([]) == []


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, model_file):
    root = tmp_path_factory.mktemp("outputs")
    image = synthetic_nuclei((96, 120), seed=7, radius=(5, 9)).image
    cv2.imwrite(str(root / "im.png"), image)
    out = root / "out"
    assert main(["segment", str(root / "im.png"), "-m", str(model_file[0]), "-t", "0.4", "-o", str(out), "--rois"]) == 0
    return out


def test_segment_writes_geojson_and_rois_one_per_nucleus(segmented):
    labels = read_image(segmented / "im_labels.png")
    count = int(labels.max())
    assert count > 0
    features = json.loads((segmented / "im.geojson").read_text())["features"]
    assert [f["properties"]["label"] for f in features] == list(range(1, count + 1))
    for f in features:
        shape = Polygon(f["geometry"]["coordinates"][0])
        assert shape.is_valid and f["properties"]["objectType"] == "detection"
        area = (labels == f["properties"]["label"]).sum()
        assert f["properties"]["measurements"]["area_px"] == area
        assert abs(shape.area - area) <= max(0.2 * area, 1.5)
        r, c = np.nonzero(labels == f["properties"]["label"])
        assert abs(shape.centroid.x - (c.mean() + 0.5)) < 1 and abs(shape.centroid.y - (r.mean() + 0.5)) < 1
    rois = roifile.roiread(segmented / "im_rois.zip")
    assert len(rois) == count and rois[0].name == "nucleus 1"
    assert np.allclose(rois[0].coordinates(), np.asarray(features[0]["geometry"]["coordinates"][0])[:-1], atol=1e-3)


def test_objects_csv_names_the_probability_column_as_every_table(segmented):
    header = (segmented / "objects.csv").read_text().splitlines()[0].split(",")
    from unetseg.ops import OBJECT_COLUMNS

    assert header == ["image", *OBJECT_COLUMNS] and "mean_probability" in header


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 2-level OME-TIFF pyramid (512², 256²) of tiled synthetic nuclei with PhysicalSizeX 0.5 µm."""
    import tifffile

    image = np.tile(synthetic_nuclei((128, 128), seed=8, radius=(6, 10)).image, (4, 4))
    path = tmp_path_factory.mktemp("pyramid") / "slide.ome.tif"
    size = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(image, subifds=1, tile=(128, 128), metadata={"axes": "YX", **size})
        tif.write(image[::2, ::2], subfiletype=1, tile=(128, 128))
    return path


def test_segment_tables_in_microns_from_the_file_or_the_option(tmp_path, model_file, capsys):
    import pandas as pd
    import tifffile

    image = synthetic_nuclei((96, 96), seed=4).image
    size = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"}
    tifffile.imwrite(tmp_path / "cells.ome.tif", image, metadata={"axes": "YX", **size})
    cv2.imwrite(str(tmp_path / "plain.png"), image)
    common = ["-m", str(model_file[0]), "-t", "0.4", "--no-overlays"]
    inputs = [str(tmp_path / "cells.ome.tif"), str(tmp_path / "plain.png")]
    assert main(["segment", *inputs, "-o", str(tmp_path / "a"), *common]) == 0
    table = pd.read_csv(tmp_path / "a" / "objects.csv")
    ome, plain = table[table.image == "cells.ome"], table[table.image == "plain"]
    assert len(ome) > 0 and np.allclose(ome.area_um2, ome.area * 0.25)
    assert np.allclose(ome.centroid_x_um, (ome.centroid_col + 0.5) * 0.5)
    assert plain.area_um2.isna().all()  # a PNG says nothing of its pixel size
    summary = pd.read_csv(tmp_path / "a" / "summary.csv").set_index("image")
    assert summary.loc["cells.ome", "pixel_size_um"] == 0.5 and np.isnan(summary.loc["plain", "pixel_size_um"])
    # --pixel-size overrides every file's
    assert (
        main(["segment", str(tmp_path / "cells.ome.tif"), "-o", str(tmp_path / "b"), "--pixel-size", "0.2", *common])
        == 0
    )
    table = pd.read_csv(tmp_path / "b" / "objects.csv")
    assert np.allclose(table.area_um2, table.area * 0.04)
    with pytest.raises(SystemExit, match=r"--pixel-size must be a positive number of µm per pixel, got -1.0"):
        main(["segment", str(tmp_path / "cells.ome.tif"), "-o", str(tmp_path / "c"), "--pixel-size", "-1", *common])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("level", [0, 1])
def test_slide_outputs_are_in_level0_pixels_and_microns(pyramid, tmp_path, model_file, level):
    import pandas as pd
    import tifffile

    from unetseg.slide import segment_slide

    out = tmp_path / "out"
    result = segment_slide(pyramid, out, model_file[0], level=level, threshold=0.4, progress=False)
    summary = json.loads(result.summary.read_text())
    d = 2**level
    assert summary["pixel_size_um"] == 0.5 and summary["downsample"] == d
    labels = tifffile.imread(result.labels)
    with tifffile.TiffFile(result.labels) as tif:  # the labels carry the level grid's physical size
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert float(pixels["PhysicalSizeX"]) == 0.5 * d
    table = pd.read_csv(result.table)
    features = json.loads(result.geojson.read_text())["features"]
    assert len(table) == len(features) == result.count > 0
    for row, feature in zip(table.itertuples(), features):
        r, c = np.nonzero(labels == row.label)
        # the label image's centroid, scaled to level 0: within half a pixel of the table's
        assert abs(((c.mean() + 0.5) * d - 0.5) - row.centroid_col) < 0.5
        assert abs(((r.mean() + 0.5) * d - 0.5) - row.centroid_row) < 0.5
        assert row.area == len(r) * d * d and row.area_um2 == pytest.approx(row.area * 0.25)
        assert row.centroid_x_um == pytest.approx((row.centroid_col + 0.5) * 0.5)
        shape = Polygon(feature["geometry"]["coordinates"][0])
        assert shape.is_valid and abs(shape.area - row.area) <= max(0.2 * row.area, 2 * d * d)
        assert abs(shape.centroid.x - (row.centroid_col + 0.5)) < d


def test_slide_labels_are_a_pyramid(tmp_path, model_file):
    import tifffile

    from unetseg.slide import segment_slide

    image = np.tile(synthetic_nuclei((110, 105), seed=9).image, (20, 10))  # 2200 x 1050
    result = segment_slide(image, tmp_path / "out", model_file[0], threshold=0.4, pixel_size=0.25, progress=False)
    with tifffile.TiffFile(result.labels) as tif:
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(2200, 1050), (1100, 525), (550, 263)]
        full, half = levels[0].asarray(), levels[1].asarray()
    np.testing.assert_array_equal(half, full[::2, ::2])  # nearest neighbour: labels stay labels
    assert full.max() == result.count
    assert json.loads(result.summary.read_text())["pixel_size_um"] == 0.25


def test_slide_labels_as_ome_zarr_are_valid_ngff_with_the_same_pyramid(tmp_path, model_file):
    import tifffile
    import zarr
    from ome_zarr_models.v04 import ImageLabel

    from unetseg.slide import segment_slide

    image = np.tile(synthetic_nuclei((110, 105), seed=9).image, (20, 10))  # 2200 x 1050
    options = {"threshold": 0.4, "pixel_size": 0.25, "progress": False}
    tiff = segment_slide(image, tmp_path / "tiff", model_file[0], **options)
    result = segment_slide(image, tmp_path / "zarr", model_file[0], labels_format="ome-zarr", **options)
    assert result.labels.name == "labels.ome.zarr" and result.count == tiff.count
    group = zarr.open_group(str(result.labels), mode="r")
    model = ImageLabel.from_zarr(group)  # raises where the group is not valid NGFF 0.4 image-label
    [multiscale] = model.attributes.multiscales
    assert [a.unit for a in multiscale.axes] == ["micrometer", "micrometer"]
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [[0.25, 0.25], [0.5, 0.5], [1.0, 1.0]]
    with tifffile.TiffFile(tiff.labels) as tif:
        for dataset, level in zip(multiscale.datasets, tif.series[0].levels, strict=True):
            np.testing.assert_array_equal(group[dataset.path][:], level.asarray())


def test_slide_rois_are_the_geojson_polygons_one_per_nucleus(tmp_path, model_file):
    from unetseg.slide import segment_slide

    image = np.tile(synthetic_nuclei((110, 105), seed=9).image, (3, 4))
    result = segment_slide(image, tmp_path / "out", model_file[0], threshold=0.4, rois=True, progress=False)
    rois = roifile.roiread(result.rois)
    assert result.rois.name == "objects_rois.zip" and len(rois) == result.count > 0
    assert [r.name for r in rois] == [f"nucleus {k}" for k in range(1, result.count + 1)]
    features = {f["properties"]["label"]: f for f in json.loads(result.geojson.read_text())["features"]}
    for k, roi in enumerate(rois, start=1):
        ring = np.asarray(features[k]["geometry"]["coordinates"][0])
        np.testing.assert_allclose(roi.coordinates(), ring[:-1], atol=1e-3)
    assert json.loads(result.summary.read_text())["outputs"]["rois"] == "objects_rois.zip"


def test_slide_measurements_window_by_window_equal_the_whole_images(tmp_path):
    import pandas as pd
    import tifffile

    from unetseg.geometry import measure
    from unetseg.slide import segment_slide

    image = np.tile(synthetic_nuclei((110, 105), seed=9).image, (6, 9))  # 660 x 945
    # small blocks: objects are measured in many windows, some cut by a window edge
    runner = unetseg.Runner(device="cpu")  # the bundled model: many nuclei
    options = {"progress": False, "band_height": 128, "block_width": 256}
    result = segment_slide(image, tmp_path / "out", runner, measurements=True, **options)
    table = pd.read_csv(result.table)
    want = measure(tifffile.imread(result.labels), image)
    assert len(table) == result.count > 20
    for name, values in want.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-4, atol=1e-4, err_msg=name)


def test_measurements_are_regionprops_of_the_labels_on_the_image(tmp_path, model_file):
    import pandas as pd
    from skimage.measure import regionprops

    rgb = np.dstack([synthetic_nuclei((80, 96), seed=s, radius=(5, 9)).image for s in (1, 1, 2)])
    gray = synthetic_nuclei((64, 70), seed=3).image
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "b.png"), gray)
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "a.png"),
                str(tmp_path / "b.png"),
                "-m",
                str(model_file[0]),
                "-t",
                "0.4",
                "--measure",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "objects.csv")
    assert {"intensity_mean_c2", "intensity_sum_c0", "solidity", "eccentricity"} <= set(table.columns)
    for name, image in (("a", rgb), ("b", gray)):
        labels = read_image(out / f"{name}_labels.png").astype(np.int32)
        rows = table[table.image == name]
        assert len(rows) == labels.max() > 0
        for prop, row in zip(regionprops(labels, np.atleast_3d(image).astype(float)), rows.itertuples()):
            assert row.intensity_mean_c0 == pytest.approx(prop.intensity_mean[0], abs=1e-3)
            assert row.intensity_sum_c0 == pytest.approx(prop.intensity_mean[0] * prop.area, rel=1e-4)
            assert row.solidity == pytest.approx(prop.solidity, abs=1e-4)
        if name == "b":  # a gray image has one channel: the colour image's other columns stay empty
            assert rows.intensity_mean_c2.isna().all()


@settings(deadline=None)
@given(
    arrays(np.int32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3)),
)
def test_inner_boundaries_are_skimages(labels):
    from skimage.segmentation import find_boundaries

    from unetseg.io import inner_boundaries

    np.testing.assert_array_equal(inner_boundaries(labels), find_boundaries(labels, mode="inner"))
