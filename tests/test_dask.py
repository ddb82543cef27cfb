"""unetseg.dask: the network on a dask.distributed cluster, labels identical to one process."""

import numpy as np
import pytest
from test_segment import threshold_away_from

import unetseg
from unetseg.data import read_image
from unetseg.segment import default_model_path

da = pytest.importorskip("dask.array", reason="the dask extra is not installed")
distributed = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
import unetseg.dask as udask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def image():
    fluo = read_image(default_model_path().parent / "samples" / "fluorescence.png")
    return np.tile(fluo, (2, 2))[:333, :301]


@pytest.mark.parametrize("labelling", ["seeded", "plain"])
@pytest.mark.parametrize("chunks", [(100, 120), (333, 50), (40, 301)])
def test_dask_equals_one_process(client, image, labelling, chunks):
    # float32: bit-for-bit comparisons across chunk shapes (bfloat16 rounds them apart by ~1e-3)
    runner = unetseg.Runner(device="cpu", precision="float32")
    native = {"diameter": runner.diameter}  # dask runs chunks at their own scale
    probs = runner.predict([image], tile_size=0, **native)[0]
    options = dict(
        labelling=labelling,
        threshold=threshold_away_from([probs]),
        boundary_threshold=threshold_away_from([probs], 1),
        min_area=10,
    )
    want = runner.segment([image], tile_size=0, **native, **options)[0]
    got = udask.segment(da.from_array(image, chunks=chunks), precision="float32", **options)
    assert got.count == want.count > 30
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.objects.table[:, :5], want.objects.table[:, :5])
    np.testing.assert_allclose(got.objects.table[:, 5:], want.objects.table[:, 5:], rtol=1e-6)
    lazy = udask.probabilities(da.from_array(image, chunks=chunks), precision="float32")
    np.testing.assert_allclose(np.moveaxis(lazy.compute(), -1, 0), probs, atol=2e-6, rtol=0)


def test_measurements_equal_the_whole_images(client, image):
    from unetseg.geometry import measure

    seg = udask.segment(da.from_array(image, chunks=(100, 120)), precision="float32")
    table = udask.measure(seg, da.from_array(image, chunks=(100, 120)), window=(64, 96))
    want = measure(seg.labels, image)
    assert list(table.columns[: len(unetseg.ops.OBJECT_COLUMNS)]) == list(unetseg.ops.OBJECT_COLUMNS)
    for name, values in want.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="pass the array it was segmented from"):
        udask.measure(seg, da.from_array(image[:100], chunks=50))


def test_grid_chunks():
    assert udask._grid_chunks((100, 100, 100, 33), 16, 96) == (112, 112, 109)
    assert udask._grid_chunks((50,), 16, 96) == (50,)
    assert udask._grid_chunks((1000, 1000), 16, 96) == (1008, 992)


def test_bad_arrays(client):
    with pytest.raises(
        ValueError, match=r"expected a dask array \(H, W\) or \(H, W, C\) with C in 1..4, got shape \(2, 3, 40, 40\)"
    ):
        udask.segment(da.zeros((2, 3, 40, 40), dtype=np.uint8))


def test_precision_reaches_the_workers(client, image):
    """bfloat16 (by name, or by a Runner given as the model) runs on the workers: the lazy
    probabilities are those of a bfloat16 runner in one process, not the float32 ones."""
    native = {"diameter": unetseg.Runner().diameter}  # dask runs chunks at their own scale
    p32 = unetseg.Runner(device="cpu", precision="float32").predict([image], tile_size=0, **native)[0]
    p16 = unetseg.Runner(device="cpu", precision="bfloat16").predict([image], tile_size=0, **native)[0]
    for model, options in ((None, {"precision": "bfloat16"}), (unetseg.Runner(precision="bfloat16"), {})):
        lazy = np.moveaxis(
            udask.probabilities(da.from_array(image, chunks=(100, 120)), model, **options).compute(), -1, 0
        )
        assert np.abs(lazy - p16).max() < np.abs(lazy - p32).max()
        assert np.abs(lazy - p16).mean() < 1e-3
