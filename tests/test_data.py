"""Readers (DSB 2018 layout, label folders, npz, image/mask pairs), transforms and the dataset."""

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unetseg.data import (
    Augment,
    NucleiDataset,
    PixelWeights,
    read_dataset,
    read_dsb2018,
    read_label_folders,
    read_npz,
    read_pairs,
    separation_weights,
    small_object_weights,
    synthetic_nuclei,
    targets,
    to_channels,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018_stage1_train"


def make_samples(n=3, size=(48, 64)):
    return [synthetic_nuclei(size, seed=i, kind="fluorescence" if i % 2 else "brightfield") for i in range(n)]


def write_dsb_layout(root: Path, samples):
    for i, s in enumerate(samples):
        d = root / f"id{i}"
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        cv2.imwrite(str(d / "images" / f"id{i}.png"), s.image)
        for k in range(1, s.labels.max() + 1):
            cv2.imwrite(str(d / "masks" / f"m{k:03d}.png"), ((s.labels == k) * 255).astype(np.uint8))


def test_dsb_layout_roundtrip(tmp_path):
    samples = make_samples()
    write_dsb_layout(tmp_path, samples)
    read = read_dsb2018(tmp_path)
    assert [r.name for r in read] == ["id0", "id1", "id2"]
    for r, s in zip(read, samples):
        np.testing.assert_array_equal(r.labels, s.labels)  # same objects, same raster numbering
        assert r.image.shape[:2] == s.labels.shape
    assert [r.name for r in read_dataset(tmp_path)] == ["id0", "id1", "id2"]


def test_label_folders_npz_and_pairs(tmp_path):
    samples = make_samples()
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for i, s in enumerate(samples):
        cv2.imwrite(str(tmp_path / "set" / "images" / f"im{i}.png"), s.image)
        cv2.imwrite(str(tmp_path / "set" / "labels" / f"im{i}.png"), s.labels.astype(np.uint16))
    (tmp_path / "set" / "manifest.csv").write_text("id,kind\nim0,color_brightfield_HE\nim1,gray_fluorescence\n")
    read = read_label_folders(tmp_path / "set")
    assert [r.kind for r in read] == ["color_brightfield_HE", "gray_fluorescence", "unknown"]
    np.testing.assert_array_equal(read[1].labels, samples[1].labels)
    gray = np.stack([s.image for s in samples[1::2]])
    np.savez_compressed(tmp_path / "d.npz", images=gray, masks=np.stack([s.labels > 0 for s in samples[1::2]]))
    npz = read_npz(tmp_path / "d.npz")
    assert len(npz) == 1 and npz[0].labels.max() > 0  # binary masks become instances
    (tmp_path / "masks").mkdir()
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.tif"), (samples[1].image.astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), (samples[1].labels > 0).astype(np.uint8) * 255)
    pairs = read_pairs(tmp_path / "imgs", tmp_path / "masks")
    assert pairs[0].image.dtype == np.uint16


def test_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        read_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset unetseg knows"):
        read_dataset(tmp_path / "empty")
    s = make_samples(1)[0]
    (tmp_path / "p" / "images").mkdir(parents=True)
    (tmp_path / "p" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "images" / "a.png"), s.image)
    cv2.imwrite(str(tmp_path / "p" / "images" / "b.png"), s.image)
    cv2.imwrite(str(tmp_path / "p" / "masks" / "a.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"1 images have no mask .* \['b'\]"):
        read_dataset(tmp_path / "p")
    cv2.imwrite(str(tmp_path / "p" / "masks" / "b.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="a.png: the image is 64x48 but its mask is 10x10; fix the pair, or skip"):
        read_dataset(tmp_path / "p")
    (tmp_path / "p" / "images" / "a.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="cannot read .*a.png as an image"):
        read_dataset(tmp_path / "p")
    np.savez(tmp_path / "x.npz", pictures=np.zeros(3))
    with pytest.raises(ValueError, match="no array named 'images'"):
        read_npz(tmp_path / "x.npz")
    d = tmp_path / "dsb" / "id0"
    (d / "images").mkdir(parents=True)
    cv2.imwrite(str(d / "images" / "id0.png"), s.image)
    with pytest.raises(ValueError, match="has no masks"):
        read_dsb2018(tmp_path / "dsb")


@pytest.mark.skipif(
    not SHARED.exists(), reason="../shared/data/dsb2018_stage1_train is absent (not on users' machines)"
)
def test_real_dsb_images_through_the_dsb_layout(tmp_path):
    """A small copy of the real data in the original DSB layout reads back to the same labels."""
    import csv

    rows = list(csv.DictReader(io.StringIO(Path(SHARED / "manifest.csv").read_text())))
    picked = {r["kind"]: r["id"] for r in rows}  # one image of each kind
    for name in picked.values():
        d = tmp_path / name
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        shutil.copy(SHARED / "images" / f"{name}.png", d / "images" / f"{name}.png")
        labels = cv2.imread(str(SHARED / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        for k in range(1, labels.max() + 1):
            cv2.imwrite(str(d / "masks" / f"{k}.png"), ((labels == k) * 255).astype(np.uint8))
    for sample in read_dsb2018(tmp_path):
        labels = cv2.imread(str(SHARED / "labels" / f"{sample.name}.png"), cv2.IMREAD_UNCHANGED)
        assert sample.image.ndim == 3 and sample.image.shape[2] in (3, 4)
        assert sample.labels.max() == len(np.unique(labels)) - 1
        np.testing.assert_array_equal(sample.labels > 0, labels > 0)


def test_transforms_and_dataset():
    samples = make_samples(2, (40, 30))
    from unetseg.data.readers import Sample

    data = [Sample(f"s{i}", s.image, s.labels) for i, s in enumerate(samples)]
    assert to_channels(np.zeros((5, 5, 4), np.uint8), 3).shape == (5, 5, 3)
    assert to_channels(np.zeros((5, 5), np.uint16), 3).shape == (5, 5, 3)
    t = targets(samples[1].labels, 2)
    assert t.shape == (2, 40, 30) and (t[1] <= t[0]).all() and t[1].sum() > 0
    for mode in ("crop", "center", "resize"):
        ds = NucleiDataset(
            data, 1, 2, size=32, mode=mode, augment=Augment() if mode != "center" else None, samples_per_epoch=5
        )
        image, target = ds[3]
        assert image.shape == (1, 32, 32) and target.shape == (2, 32, 32) and image.dtype == torch.float32
        torch.testing.assert_close(ds[3][0], image)  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], image)
    wide = NucleiDataset(data, 1, 2, size=32, mode="center", contact_width=2)
    assert torch.equal(wide[0][0], NucleiDataset(data, 1, 2, size=32, mode="center")[0][0])
    assert (wide[0][1][1] >= NucleiDataset(data, 1, 2, size=32, mode="center")[0][1][1]).all()


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_each_epoch_draws_new_crops_in_the_loaders_workers(workers):
    """As `unetseg train` loads: persistent workers hold copies of the dataset made once, yet see set_epoch."""
    from torch.utils.data import DataLoader

    from unetseg.data.readers import Sample

    data = [Sample(f"s{i}", s.image, s.labels) for i, s in enumerate(make_samples(3, (48, 40)))]
    ds = NucleiDataset(data, 1, 2, size=24, augment=Augment(elastic=2.0, blur=1.0), samples_per_epoch=6)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, persistent_workers=workers > 0)
    epochs = []
    for epoch in (0, 1, 2, 1):
        ds.set_epoch(epoch)
        images = torch.cat([batch[0] for batch in loader])
        assert torch.equal(images, torch.stack([ds[i][0] for i in range(6)]))  # the same in any process
        epochs.append(images)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert torch.equal(epochs[1], epochs[3])


@pytest.mark.parametrize("width", [1, 2, 3])
def test_contact_width_widens_the_boundary_target_where_nuclei_touch(width):
    """Two nuclei touching along a vertical line, a third apart: the boundary target covers the
    pixels within `width` (Chebyshev distance) of another nucleus, on both sides, and elsewhere
    only the inner boundary."""
    import scipy.ndimage as ndi

    labels = np.zeros((20, 30), np.int32)
    labels[2:12, 2:10], labels[2:12, 10:18], labels[14:19, 22:28] = 1, 2, 3
    plain = targets(labels, 2)[1].astype(bool)
    wide = targets(labels, 2, width)[1].astype(bool)
    near_other = np.zeros_like(plain)
    for k in (1, 2, 3):
        others = (labels > 0) & (labels != k)
        near_other |= (labels == k) & ndi.binary_dilation(others, np.ones((2 * width + 1,) * 2, bool))
    np.testing.assert_array_equal(wide, plain | near_other)
    assert wide[6, 10 - width : 10 + width].all() and not wide[6, 10 - width - 1]  # a 2w band at the contact
    np.testing.assert_array_equal(wide[labels == 3], plain[labels == 3])  # the lone nucleus is unchanged
    np.testing.assert_array_equal(targets(labels, 2, width)[0], targets(labels, 2)[0])
    with pytest.raises(ValueError, match="the dataset is empty"):
        NucleiDataset([], 1, 1)


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_rim_fraction_leaves_each_nucleus_a_core_in_proportion(fraction):
    """The rim against a plain reference computed one nucleus at a time: a pixel is rim when its
    distance to its own nucleus's inner boundary is under `fraction` of that nucleus's largest;
    touching nuclei keep separate cores, and the cores shrink with the fraction."""
    import scipy.ndimage as ndi
    from skimage.draw import disk
    from skimage.segmentation import find_boundaries

    labels = np.zeros((48, 64), np.int32)
    for k, (centre, radius) in enumerate((((20, 14), 10), ((20, 33), 10), ((38, 52), 5), ((8, 52), 3)), start=1):
        labels[disk(centre, radius, shape=labels.shape)] = k
    rim = targets(labels, 2, 0, fraction)[1].astype(bool)
    expected = find_boundaries(labels, mode="inner") & (labels > 0)
    for k in range(1, 5):
        inside = labels == k
        edge = inside & find_boundaries(labels, mode="inner")
        distance = ndi.distance_transform_edt(inside & ~edge)
        expected |= inside & (distance < fraction * distance[inside].max())
    np.testing.assert_array_equal(rim, expected)
    cores = (labels > 0) & ~rim
    core_labels, n = ndi.label(cores, np.ones((3, 3)))
    assert n == 4 and all(len(np.unique(labels[core_labels == i])) == 1 for i in range(1, n + 1))
    assert rim[labels == 1].mean() > 1 - (1 - fraction) ** 2 - 0.15  # about the disk's outer annulus
    np.testing.assert_array_equal(targets(labels, 2, 0, 0.0), targets(labels, 2))
    np.testing.assert_array_equal(targets(labels, 2, 0, fraction)[0], targets(labels, 2)[0])


def reference_separation_weights(labels, w0, sigma):
    """Ronneberger's map the plain way: an exact distance transform per nucleus over the whole image,
    the two smallest distances per pixel."""
    import scipy.ndimage as ndi

    ids = [i for i in np.unique(labels) if i]
    if len(ids) < 2:
        return np.ones(labels.shape)
    d = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in ids]), axis=0)
    return 1 + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    nuclei=st.integers(0, 6),
    w0=st.sampled_from([1.0, 10.0]),
    sigma=st.sampled_from([1.0, 2.5, 5.0]),
    dtype=st.sampled_from([np.int32, np.int64, np.uint16]),
    seed=st.integers(0, 2**16),
)
def test_separation_weights_match_the_exact_weight_map(shape, nuclei, w0, sigma, dtype, seed):
    """Random rectangles (later ones overwrite earlier ones, so nuclei touch, split and vanish): the
    windowed map equals the exact one to within the documented w0 * exp(-8)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype)
    for k in range(1, nuclei + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[y : y + rng.integers(1, 12), x : x + rng.integers(1, 12)] = k
    w = separation_weights(labels, w0, sigma)
    assert w.shape == shape and w.dtype == np.float32
    np.testing.assert_allclose(
        w, reference_separation_weights(labels, w0, sigma), atol=w0 * np.exp(-8) + 1e-5, rtol=1e-5
    )


def test_separation_weights_peak_where_nuclei_touch():
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 2:10], labels[5:15, 10:18], labels[5:15, 30:38] = 1, 2, 3
    w = separation_weights(labels, 10, 5)
    assert w[10, 9] == w[10, 10] == pytest.approx(1 + 10 * np.exp(-1 / 50))  # d1 = 0, d2 = 1 across the contact
    assert w[10, 24] == pytest.approx(1 + 10 * np.exp(-((7 + 6) ** 2) / 50))  # in the gap: 7 pixels from 2, 6 from 3
    assert w[10, 5] < w[10, 9] and w[0, 39] < 1.01
    assert (separation_weights(labels * (labels == 1), 10, 5) == 1).all()  # one nucleus: nothing to separate
    assert (separation_weights(np.zeros((4, 4), np.int32)) == 1).all()
    with pytest.raises(ValueError, match=r"expected \(H, W\) instance labels, got shape \(2, 4, 4\)"):
        separation_weights(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="w0 >= 0 and sigma > 0, got w0=10, sigma=0"):
        separation_weights(labels, 10, 0)


def test_small_object_weights_grow_like_the_square_root_of_the_area():
    labels = np.zeros((30, 30), np.uint16)
    labels[0:2, 0:2], labels[5:15, 5:15], labels[20:30, 0:30] = 1, 7, 2  # 4, 100 and 300 pixels
    w = small_object_weights(labels, 100)
    assert w.dtype == np.float32 and (w[labels == 0] == 1).all()
    assert (w[labels == 1] == 5).all() and (w[labels == 7] == 1).all() and (w[labels == 2] == 1).all()
    np.testing.assert_allclose(small_object_weights(labels, 400)[labels == 2], np.sqrt(4 / 3))
    assert (small_object_weights(labels, 0) == 1).all()
    with pytest.raises(ValueError, match="small object area must be >= 0 pixels, got -1"):
        small_object_weights(labels, -1)


def test_pixel_weights_multiply_and_the_dataset_appends_them():
    from unetseg.data.readers import Sample

    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 2:10], labels[5:15, 10:18], labels[8:10, 30:32] = 1, 2, 3
    both = PixelWeights(separation=10, sigma=3, small_area=50)(labels)
    np.testing.assert_allclose(both, separation_weights(labels, 10, 3) * small_object_weights(labels, 50))
    assert (PixelWeights()(labels) == 1).all()
    with pytest.raises(ValueError, match="got separation=10, sigma=0, small_area=0"):
        PixelWeights(separation=10, sigma=0)
    with pytest.raises(ValueError, match="small_area=-5"):
        PixelWeights(small_area=-5)

    data = [Sample(f"s{i}", s.image, s.labels) for i, s in enumerate(make_samples(2, (40, 30)))]
    weights = PixelWeights(separation=10, sigma=3, small_area=200)
    plain = NucleiDataset(data, 1, 2, size=32, mode="center", contact_width=2)
    weighted = NucleiDataset(data, 1, 2, size=32, mode="center", contact_width=2, pixel_weights=weights)
    image, target = weighted[1]
    assert target.shape == (3, 32, 32)
    torch.testing.assert_close(image, plain[1][0])
    torch.testing.assert_close(target[:2], plain[1][1])
    # the weights are those of the crop's labels (centre crop of a 40 x 30 image padded to 32 wide)
    crop = np.pad(data[1].labels, ((0, 0), (0, 2)))[4:36, :32]
    np.testing.assert_array_equal(target[2].numpy(), weights(crop))


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    channels=st.sampled_from([1, 3]),
    dtype=st.sampled_from([np.uint16, np.int32, np.int64]),
    std=st.sampled_from([0.0, 1.0, 3.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_elastic_deform_matches_scipy_map_coordinates(shape, channels, dtype, std, seed):
    """Labels move as scipy moves them (nearest, mirrored borders) with the same field; the image
    (bilinear) follows, and a zero field is the identity."""
    import scipy.ndimage as ndi

    from unetseg.data.transforms import elastic_deform

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, shape).astype(dtype) * (70000 if dtype != np.uint16 else 1)  # ids past 16 bits
    image = rng.random((*shape, channels), dtype=np.float32)
    grid = rng.normal(0, std, (2, 3, 3))
    warped, moved = elastic_deform(image, labels, grid)
    assert warped.shape == image.shape and warped.dtype == np.float32 and moved.dtype == labels.dtype
    h, w = shape
    dy, dx = (cv2.resize(g.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) for g in grid)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([yy + dy, xx + dx])
    tie = (np.abs(coords - np.floor(coords) - 0.5) < 1e-6).any(axis=0)  # rounding conventions differ at x.5
    np.testing.assert_array_equal(
        np.where(tie, 0, moved), np.where(tie, 0, ndi.map_coordinates(labels, coords, order=0, mode="mirror"))
    )
    expected = np.stack(
        [ndi.map_coordinates(image[..., c], coords, order=1, mode="mirror") for c in range(channels)], -1
    )
    np.testing.assert_allclose(warped, expected, atol=0.03)  # cv2 samples at 1/32 pixel
    if std == 0:
        np.testing.assert_array_equal(moved, labels)
        np.testing.assert_array_equal(warped, image)


def test_blur_and_channel_jitter():
    from unetseg.data.transforms import Augment

    rng = np.random.default_rng(0)
    image = np.repeat(rng.random((64, 64, 1), dtype=np.float32), 3, axis=2)
    labels = np.zeros((64, 64), np.int32)
    plain = Augment(
        flips=False, rotations=False, scale=(1.0, 1.0), brightness=0, contrast=0, gamma=None, noise=0, invert=0
    )
    out, _ = plain(image, labels, np.random.default_rng(1))
    np.testing.assert_array_equal(out, image)
    jittered, _ = Augment(**{**plain.__dict__, "channel_jitter": 0.1})(image, labels, np.random.default_rng(1))
    assert np.abs(jittered[..., 0] - jittered[..., 1]).max() > 0.01  # each channel its own gain and offset
    np.testing.assert_allclose(np.corrcoef(jittered[..., 0].ravel(), jittered[..., 2].ravel())[0, 1], 1, atol=1e-5)
    roughness = [
        np.abs(
            np.diff(Augment(**{**plain.__dict__, "blur": 2.0})(image, labels, np.random.default_rng(s))[0], axis=0)
        ).mean()
        for s in range(8)
    ]
    assert min(roughness) < 0.5 * np.abs(np.diff(image, axis=0)).mean() < max(roughness)  # about half are blurred
    with pytest.raises(ValueError, match="augmentation elastic must be >= 0, got -2"):
        Augment(elastic=-2)


def test_low_res_loses_detail_finer_than_its_factor_and_keeps_what_is_coarser():
    """Lost resolution (shrunk by the factor, enlarged back) flattens a 1-pixel checkerboard in about
    half the items, and keeps a smooth ramp, shape and dtype as they were."""
    from unetseg.data.transforms import Augment, lose_resolution

    checker = np.repeat((np.indices((64, 48)).sum(0) % 2).astype(np.float32)[..., None], 3, axis=2)
    flat = lose_resolution(checker, 2.0)
    assert flat.shape == checker.shape and flat.dtype == np.float32
    np.testing.assert_allclose(flat, 0.5, atol=1e-6)  # each 2x2 block averages to 0.5
    ramp = np.repeat(np.linspace(0, 1, 64, dtype=np.float32)[:, None, None], 48, axis=1)
    np.testing.assert_allclose(lose_resolution(ramp, 2.0)[4:-4], ramp[4:-4], atol=1e-3)

    plain = Augment(
        flips=False, rotations=False, scale=(1.0, 1.0), brightness=0, contrast=0, gamma=None, noise=0, invert=0
    )
    lowered = Augment(**{**plain.__dict__, "low_res": 3.0})
    labels = np.zeros(checker.shape[:2], np.int32)
    contrast = [
        np.abs(np.diff(lowered(checker, labels, np.random.default_rng(s))[0], axis=0)).mean() for s in range(12)
    ]
    assert sum(c < 0.5 for c in contrast) in range(3, 10) and max(contrast) == 1  # about half lose resolution
    colour_only = Augment(**{**lowered.__dict__, "low_res_colour_only": True})
    tinted = checker * np.float32([1.0, 0.8, 0.9])

    def unchanged(image):
        return sum(np.array_equal(colour_only(image, labels, np.random.default_rng(s))[0], image) for s in range(12))

    assert unchanged(checker) == 12 and unchanged(tinted) in range(3, 10)  # gray kept, colour about half lowered
    with pytest.raises(ValueError, match=r"augmentation low_res must be >= 1 \(1: off\), got 0.5"):
        Augment(low_res=0.5)


def test_scale_augmentation_resizes_as_the_runner_does():
    """A shrinking scale draw area-averages, as the runner shrinks images (a 1-pixel checkerboard
    goes flat gray, not into aliased stripes), and the labels follow nearest-neighbour."""
    from unetseg.data.transforms import Augment, rescale

    checker = np.repeat((np.indices((60, 50)).sum(0) % 2).astype(np.float32)[..., None], 3, axis=2)
    labels = np.arange(60 * 50, dtype=np.int32).reshape(60, 50)
    scaled = Augment(flips=False, rotations=False, scale=(0.5, 0.5))
    image, moved = scaled.geometric(checker, labels, np.random.default_rng(0))
    assert image.shape == (30, 25, 3) and moved.shape == (30, 25)
    np.testing.assert_allclose(image, 0.5, atol=1e-6)
    np.testing.assert_array_equal(moved, rescale(checker, labels, 0.5)[1])
    shrink = Augment(flips=False, rotations=False, scale=(0.7, 0.9)).geometric(
        checker, labels, np.random.default_rng(1)
    )
    assert np.abs(shrink[0] - 0.5).max() < 0.25  # 0.18; bilinear sampling: 0.28


@settings(max_examples=25, deadline=None)
@given(
    stains=st.lists(st.floats(0.02, 0.06), min_size=3, max_size=3),
    scale=st.lists(st.floats(0.8, 1.2), min_size=3, max_size=3),
    shift=st.lists(st.floats(-0.05, 0.05), min_size=3, max_size=3),
)
def test_stain_jitter_scales_and_shifts_the_stains_scikit_image_separates(stains, scale, shift):
    """The jittered image's haematoxylin, eosin and DAB, as scikit-image's colour deconvolution
    reads them, are the original's scaled and shifted (its stain units are optical densities over
    -log(1e-6))."""
    from skimage.color import hed2rgb, rgb2hed

    from unetseg.data.transforms import stain_jitter

    rng = np.random.default_rng(0)
    hed = (np.asarray(stains) * rng.uniform(0.5, 1.5, (16, 16, 3))).astype(np.float64)
    rgb = hed2rgb(hed).astype(np.float32)  # transmitted light in (0, 1]
    assert rgb.min() > 2 / 255  # above the jitter's floor of 1/255: no clipping on the way

    class Draws:  # the jitter's draws: scale first, then shift
        values = [np.asarray(scale), np.asarray(shift)]

        def uniform(self, low, high, n):
            return self.values.pop(0)

    jittered = stain_jitter(rgb, 0.2, Draws())
    expected = rgb2hed(rgb) * scale + np.asarray(shift) / -np.log(1e-6)
    np.testing.assert_allclose(rgb2hed(jittered), expected, atol=2e-4)


def test_stain_jitter_leaves_gray_images_and_refuses_negative_strength():
    from unetseg.data.transforms import restain, stain_jitter

    rng = np.random.default_rng(0)
    gray = np.repeat(rng.random((32, 32, 1), dtype=np.float32), 3, axis=2)
    assert stain_jitter(gray, 0.2, rng) is gray  # fluorescence keeps its look
    single = rng.random((32, 32, 1), dtype=np.float32)
    assert stain_jitter(single, 0.2, rng) is single
    colour = rng.random((32, 32, 3), dtype=np.float32) * 0.9 + 0.05
    np.testing.assert_allclose(restain(colour, np.ones(3), np.zeros(3)), colour, rtol=1e-5)  # nothing clipped
    jittered = stain_jitter(colour, 0.2, rng)
    assert jittered.dtype == np.float32 and jittered.shape == colour.shape
    assert 0.005 < np.abs(jittered - colour).mean() < 0.2
    with pytest.raises(ValueError, match="augmentation stain must be >= 0, got -0.1"):
        Augment(stain=-0.1)
