"""`unetseg tune`: thresholds chosen on a checkpoint's training images, scored as evaluate scores them."""

import csv
import io
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint

from unetseg import metrics
from unetseg.checkpoint import model_from_checkpoint
from unetseg.cli import main
from unetseg.data import read_dataset
from unetseg.evaluate import evaluate, tune
from unetseg.ops import label, seeded_label
from unetseg.predict import predict


@pytest.fixture(scope="module")
def checkpoint(npz, tmp_path_factory):
    """A nucleus + boundary checkpoint whose validation images are 4 of the npz's 12."""
    names = [s.name for s in read_dataset(npz)]
    ckpt = make_checkpoint(out_channels=2, seed=3)
    ckpt["split"] = {"train": names[4:], "val": names[:4], "seed": 0}
    path = tmp_path_factory.mktemp("tune") / "best.pt"
    torch.save(ckpt, path)
    return path, ckpt


def reference(ckpt, npz, names, t, tb, min_area, tta=False):
    """DSB score and AP@0.5 of the named images, labelled directly by the ops."""
    network = model_from_checkpoint(ckpt)
    rows = []
    for s in (s for s in read_dataset(npz) if s.name in names):
        p = torch.from_numpy(predict(network, s.image, ckpt, tta=tta))
        labels = seeded_label(p[:2], t, tb, 8, min_area) if tb is not None else label(p[0], t, 8, min_area)
        rows.append(metrics.image_metrics(s.labels, labels.labels.numpy()))
    summary = metrics.summarise(rows)
    return summary["dsb_score"], summary["ap@0.50"]


@pytest.mark.parametrize("tta", [False, True], ids=["one-pass", "tta"])
def test_grid_is_scored_on_training_images_only(checkpoint, npz, tmp_path, tta):
    path, ckpt = checkpoint
    result = tune(
        path,
        npz,
        tmp_path / "grid.csv",
        images=5,
        thresholds=[0.4, 0.5],
        boundary_thresholds=[0.3, 0.6],
        min_areas=[0, 8],
        tta=tta,
        progress=False,
    )
    assert len(result["images"]) == 5 and not set(result["images"]) & set(ckpt["split"]["val"])
    grid = result["grid"]
    assert len(grid) == 8
    assert {(r["threshold"], r["boundary_threshold"], r["min_area"]) for r in grid} == {
        (t, tb, a) for t in (0.4, 0.5) for tb in (0.3, 0.6) for a in (0, 8)
    }
    assert [r["dsb_score"] for r in grid] == sorted((r["dsb_score"] for r in grid), reverse=True)
    for r in grid[:3]:
        assert (r["dsb_score"], r["ap@0.50"]) == reference(
            ckpt, npz, result["images"], r["threshold"], r["boundary_threshold"], r["min_area"], tta
        )
    assert {"dsb_score a", "dsb_score b", "ap@0.50 a", "ap@0.50 b"} <= set(grid[0])
    for kind in "ab":
        names = [n for n in result["images"] if n in {s.name for s in read_dataset(npz) if s.kind == kind}]
        r = grid[0]
        assert (r[f"dsb_score {kind}"], r[f"ap@0.50 {kind}"]) == reference(
            ckpt, npz, names, r["threshold"], r["boundary_threshold"], r["min_area"], tta
        )
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path / "grid.csv").read_text())))
    assert [float(r["dsb_score"]) for r in rows] == [r["dsb_score"] for r in grid]


def test_draw_is_seeded_and_capped(checkpoint, npz):
    path, ckpt = checkpoint
    options = dict(thresholds=[0.5], boundary_thresholds=[0.5], progress=False)
    first = tune(path, npz, images=3, seed=1, **options)["images"]
    assert first == tune(path, npz, images=3, seed=1, **options)["images"]
    assert first != tune(path, npz, images=3, seed=2, **options)["images"]
    every = tune(path, npz, images=100, **options)["images"]  # capped at the 8 training images
    assert sorted(every) == sorted(ckpt["split"]["train"])


def test_plain_labelling(checkpoint, npz):
    path, ckpt = checkpoint
    result = tune(path, npz, images=4, thresholds=[0.3, 0.6], labelling="plain", progress=False)
    assert sorted(r["threshold"] for r in result["grid"]) == [0.3, 0.6]
    assert all(r["boundary_threshold"] is None for r in result["grid"])
    best = result["grid"][0]
    assert (best["dsb_score"], best["ap@0.50"]) == reference(ckpt, npz, result["images"], best["threshold"], None, 20)


def test_cli_prints_the_grid_and_the_export_options(checkpoint, npz, tmp_path, capsys):
    path, _ = checkpoint
    assert (
        main(
            [
                "tune",
                str(path),
                str(npz),
                "--images",
                "4",
                "--thresholds",
                "0.4,0.6",
                "--boundary-thresholds",
                "0.5",
                "--min-areas",
                "0,10",
                "-o",
                str(tmp_path / "g.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    best = next(csv.DictReader(io.StringIO(Path(tmp_path / "g.csv").read_text())))
    assert (
        f"--threshold {best['threshold']} --min-area {best['min_area']} --boundary-threshold "
        f"{best['boundary_threshold']}"
    ) in out
    assert f"unetseg export {path} -o model.pt" in out
    assert out.count("\n| ") == 5  # header and 4 rows


def test_bad_input(checkpoint, npz, tmp_path, model_file, capsys):
    path, ckpt = checkpoint
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        tune(tmp_path / "missing.pt", npz)
    with pytest.raises(ValueError, match="exported model file"):
        tune(model_file[0], npz)
    with pytest.raises(ValueError, match=r"thresholds must be .* in \[0, 1\], got \[1.5\]"):
        tune(path, npz, thresholds=[1.5])
    with pytest.raises(ValueError, match="boundary_thresholds must be a non-empty list"):
        tune(path, npz, boundary_thresholds=[])
    with pytest.raises(ValueError, match=r"min_areas .* >= 0, got \[-1\]"):
        tune(path, npz, min_areas=[-1])
    with pytest.raises(ValueError, match="images is how many"):
        tune(path, npz, images=0)
    with pytest.raises(ValueError, match="seeded labelling needs"):
        tune(_one_channel(tmp_path), npz, labelling="seeded")
    only_val = dict(ckpt, split={"train": [], "val": [s.name for s in read_dataset(npz)], "seed": 0})
    torch.save(only_val, tmp_path / "val.pt")
    with pytest.raises(ValueError, match="every image of .* validation images"):
        tune(tmp_path / "val.pt", npz)
    with pytest.raises(SystemExit):
        main(["tune", str(path), str(npz), "--thresholds", "0.5,x"])
    assert "expected numbers separated by commas" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unetseg tune: .*exported model file"):
        main(["tune", str(model_file[0]), str(npz)])


def _one_channel(folder):
    path = folder / "one.pt"
    torch.save(make_checkpoint(), path)
    return path


def test_dev_images_are_scored_when_the_checkpoint_has_them(checkpoint, npz, tmp_path):
    path, ckpt = checkpoint
    with_dev = dict(
        ckpt, split={**ckpt["split"], "train": ckpt["split"]["train"][3:], "dev": ckpt["split"]["train"][:3]}
    )
    dev_path = tmp_path / "dev.pt"
    torch.save(with_dev, dev_path)
    options = dict(thresholds=[0.5], boundary_thresholds=[0.5], progress=False)
    result = tune(dev_path, npz, images=5, seed=2, **options)  # images and seed only draw training images
    assert sorted(result["images"]) == sorted(with_dev["split"]["dev"])
    r = result["grid"][0]
    assert (r["dsb_score"], r["ap@0.50"]) == reference(ckpt, npz, result["images"], 0.5, 0.5, 20)
    missing = dict(with_dev, split={**with_dev["split"], "dev": with_dev["split"]["dev"] + ["not-in-npz"]})
    torch.save(missing, dev_path)
    with pytest.raises(ValueError, match=r"holds only 3 of the checkpoint's dev images \(4\)"):
        tune(dev_path, npz, **options)


def test_one_dataset_of_a_multi_dataset_checkpoint_keeps_its_validation_images_out(npz, tmp_path):
    """A checkpoint trained on several datasets names its images DATASET/NAME; tuned on one of them,
    that dataset's validation images are still recognised and left out; evaluated on it, they are
    the ones scored (all of them, or a clear error)."""
    from unetseg.data.readers import dataset_name

    prefix = dataset_name(npz) + "/"
    names = [prefix + s.name for s in read_dataset(npz)]
    ckpt = make_checkpoint(out_channels=2, seed=3)
    ckpt["split"] = {"train": names[4:] + ["other/a"], "val": names[:4] + ["other/b"], "seed": 0}
    torch.save(ckpt, tmp_path / "multi.pt")
    result = tune(tmp_path / "multi.pt", npz, images=20, thresholds=[0.5], boundary_thresholds=[0.5], progress=False)
    assert sorted(result["images"]) == sorted(names[4:])  # every training image, no validation image
    # evaluated on that dataset alone: its share of the split, no more
    scored = evaluate(tmp_path / "multi.pt", npz, progress=False)
    assert scored["all"]["images"] == 4
    ckpt["split"]["val"] = names[:4] + [prefix + "gone"]  # one of its own validation images is missing
    torch.save(ckpt, tmp_path / "multi.pt")
    with pytest.raises(ValueError, match=r"holds only 4 of the model's validation images \(5\)"):
        evaluate(tmp_path / "multi.pt", npz, progress=False)
