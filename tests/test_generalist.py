"""Training on several datasets: names, splits per dataset and kind with tile groups, balanced
sampling, rescaling to a canonical diameter, and the training precision."""

import shutil

import numpy as np
import pytest
import torch

from unetseg.checkpoint import load_checkpoint
from unetseg.data import NucleiDataset, Sample, read_datasets, synthetic_nuclei
from unetseg.data.dataset import sampling_probabilities
from unetseg.data.transforms import median_diameter, rescale
from unetseg.device import resolve_precision
from unetseg.train import TrainConfig, split_by_kind, train


def sample(name, dataset, kind="k", group="", size=(40, 40)):
    return Sample(name, np.zeros((*size, 3), np.uint8), np.zeros(size, np.int32), kind, dataset, group)


def test_several_datasets_get_prefixed_names_and_their_own_split(npz, tmp_path):
    other = tmp_path / "other.npz"
    shutil.copy(npz, other)
    alone = read_datasets(npz)
    both = read_datasets([npz, other])
    assert [s.name for s in both] == (
        [f"synthetic/{s.name}" for s in alone] + [f"other/{s.name}" for s in read_datasets(other)]
    )
    # a dataset splits the same alone as beside others
    _, val_alone = split_by_kind(alone, 0.3, 0)
    _, val_both = split_by_kind(both, 0.3, 0)
    assert sorted(n.split("/", 1)[1] for n in val_both if n.startswith("synthetic/")) == sorted(val_alone)
    with pytest.raises(ValueError, match="different folder names"):
        read_datasets([npz, npz])


def test_split_keeps_tile_groups_together():
    samples = [sample(f"img{g}_{t:03d}", "d", group=f"img{g}") for g in range(10) for t in range(16)]
    train_names, val = split_by_kind(samples, 0.2, 0)
    held = {n.split("_")[0] for n in val}
    assert len(held) == 2 and len(val) == 32
    assert not held & {n.split("_")[0] for n in train_names}


def test_label_folder_tiles_are_grouped(tmp_path):
    import cv2

    for folder in ("images", "labels"):
        (tmp_path / "ds" / folder).mkdir(parents=True)
    for name in ("train_1_000", "train_1_001", "train_2_000"):
        s = synthetic_nuclei((32, 32), seed=1)
        cv2.imwrite(str(tmp_path / "ds" / "images" / f"{name}.png"), s.image)
        cv2.imwrite(str(tmp_path / "ds" / "labels" / f"{name}.png"), s.labels.astype(np.uint16))
    assert [s.split_group for s in read_datasets(tmp_path / "ds")] == ["train_1", "train_1", "train_2"]


def test_balanced_sampling_gives_each_stratum_its_share():
    samples = [sample(f"a{i}", "big") for i in range(90)] + [
        sample("b0", "small", size=(20, 20)),
        sample("b1", "small", size=(40, 40)),
    ]
    areas = [s.labels.size for s in samples]
    p = sampling_probabilities(samples, areas)
    assert p[:90].sum() == pytest.approx(0.5) and p[90:].sum() == pytest.approx(0.5)
    assert p[91] == pytest.approx(4 * p[90])  # four times the area, four times the crops
    p = sampling_probabilities(samples, areas, {"small": 3})
    assert p[90:].sum() == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"\['nope'\], which are neither datasets"):
        sampling_probabilities(samples, areas, {"nope": 1})


def test_images_are_rescaled_to_the_canonical_diameter():
    s = synthetic_nuclei((96, 96), seed=3, radius=(8, 10))
    d = median_diameter(s.labels)
    assert 14 < d < 22
    ds = NucleiDataset([s], 1, 1, 32, diameter=d / 2)
    assert ds.images[0].shape[:2] == (48, 48)
    assert median_diameter(ds.labels[0]) == pytest.approx(d / 2, rel=0.15)
    image, labels = rescale(np.zeros((10, 20, 3), np.float32), np.zeros((10, 20), np.int32), 2.0)
    assert image.shape == (20, 40, 3) and labels.shape == (20, 40)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="diameter must be a positive number"):
            NucleiDataset([s], 1, 1, 32, diameter=bad)
    assert np.isnan(median_diameter(np.zeros((4, 4), np.int32)))


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) in ("float32", "bfloat16")
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        resolve_precision("float16", cpu)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half", cpu)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_on_two_datasets_records_diameter_and_precision(npz, tmp_path, precision):
    other = tmp_path / "other.npz"
    shutil.copy(npz, other)
    config = TrainConfig(
        data=[str(npz), str(other)],
        output=str(tmp_path / "run"),
        in_channels=1,
        out_channels=2,
        model_options={"base_width": 4, "depth": 2, "batch_norm": True},
        crop=32,
        batch_size=4,
        workers=0,
        epochs=1,
        precision=precision,
        diameter=8.0,
        samples_per_epoch=8,
    )
    ckpt = train(config)
    assert ckpt["precision"] == precision and ckpt["diameter"] == 8.0
    assert ckpt["history"][0]["train_loss"] > 0
    assert {n.split("/")[0] for n in ckpt["split"]["val"]} == {"synthetic", "other"}
    assert load_checkpoint(tmp_path / "run" / "best.pt")["training_data"] == [str(npz), str(other)]


def test_an_epoch_shorter_than_a_batch_is_an_error(npz, tmp_path):
    config = TrainConfig(
        data=str(npz),
        output=str(tmp_path / "run"),
        in_channels=1,
        crop=32,
        batch_size=8,
        model_options={"base_width": 4, "depth": 2},
        workers=0,
        epochs=1,
        samples_per_epoch=4,
    )
    with pytest.raises(ValueError, match="an epoch of 4 crops is less than one batch of 8"):
        train(config)


def test_init_weights_default_fine_tunes_the_bundled_model(npz, tmp_path):
    from unetseg.checkpoint import default_checkpoint_path
    from unetseg.export import read_metadata
    from unetseg.segment import default_model_path

    bundled = load_checkpoint(default_checkpoint_path())
    assert "optimizer" not in bundled and bundled["model"]["options"] == read_metadata(default_model_path())["options"]
    config = TrainConfig(
        data=str(npz),
        output=str(tmp_path / "ft"),
        init_weights="default",
        in_channels=3,
        out_channels=2,
        model_options={
            k: v for k, v in bundled["model"]["options"].items() if k not in ("in_channels", "out_channels")
        },
        crop=64,
        batch_size=2,
        workers=0,
        epochs=1,
        samples_per_epoch=2,
        lr=0.0,
    )
    tuned = load_checkpoint(train(config)["format"] and tmp_path / "ft" / "last.pt")
    for name, value in bundled["state_dict"].items():  # lr 0: the bundled weights came through unchanged
        if name.endswith(("weight", "bias")):
            assert torch.equal(tuned["state_dict"][name], value), name
