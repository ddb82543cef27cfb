"""`unetseg evaluate` on model files: scored through the C++ runner, on the model's validation images."""

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_checkpoint

import unetseg
from unetseg import metrics
from unetseg.cli import main
from unetseg.data import read_dataset
from unetseg.evaluate import evaluate
from unetseg.export import METADATA_FILE, export, is_model_file, load, quiet_jit
from unetseg.segment import default_model_path


@pytest.fixture(scope="module")
def exported(npz, tmp_path_factory):
    """The bundled (trained) model, saved again with metadata naming 4 of the npz's images as its
    validation images."""
    names = [s.name for s in read_dataset(npz)]
    module, metadata = load(default_model_path())
    metadata["training_data"]["val_names"] = names[:4]
    path = tmp_path_factory.mktemp("eval") / "model.pt"
    with quiet_jit():
        torch.jit.save(module, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return path, names[:4]


def reference(model, npz, names, **options):
    """The summary of segment_batch's labels on the named images, scored by unetseg.metrics."""
    samples = [s for s in read_dataset(npz) if s.name in names]
    results = unetseg.segment_batch([s.image for s in samples], model, **options)
    return metrics.summarise([metrics.image_metrics(s.labels, r.labels) for s, r in zip(samples, results)])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"threshold": 0.3, "min_area": 0, "labelling": "plain"},
        {"boundary_threshold": 0.7, "tta": True},
        {"precision": "bfloat16"},
    ],
    ids=["defaults", "plain", "tta", "bfloat16"],
)
def test_model_file_is_scored_as_the_runner_segments(exported, npz, tmp_path, options):
    path, val_names = exported
    result = evaluate(path, npz, tmp_path, progress=False, **options)
    assert result["all"] == reference(path, npz, val_names, **options)
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path / "per_image.csv").read_text())))
    assert [r["image"] for r in rows] == val_names  # the validation images in the model's metadata
    assert json.loads((tmp_path / "summary.json").read_text()) == result
    assert evaluate(path, npz, split="all", progress=False, **options)["all"]["images"] == 12


def test_dev_images_of_a_checkpoint_and_its_model_file(npz, tmp_path):
    names = [s.name for s in read_dataset(npz)]
    ckpt = make_checkpoint(out_channels=2, seed=5)
    ckpt["split"] = {"train": names[6:], "val": names[:3], "dev": names[3:6], "seed": 0}
    ckpt["training_data"] = str(npz)
    torch.save(ckpt, tmp_path / "best.pt")
    export(ckpt, tmp_path / "model.pt")
    for model in (tmp_path / "best.pt", tmp_path / "model.pt"):
        evaluate(model, npz, tmp_path / model.stem, split="dev", progress=False)
        assert [
            r["image"] for r in csv.DictReader(io.StringIO(Path(tmp_path / model.stem / "per_image.csv").read_text()))
        ] == names[3:6]
    assert load(tmp_path / "model.pt")[1]["training_data"]["dev_names"] == names[3:6]
    assert evaluate(tmp_path / "model.pt", npz, split="dev", min_area=0, progress=False)["all"] == reference(
        tmp_path / "model.pt", npz, names[3:6], min_area=0
    )
    ckpt["split"]["val"] = names[:3] + ["not-in-npz"]  # a score on some of a split's images is not its score
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"holds only 3 of the model's validation images \(4\); use split='all'"):
        evaluate(tmp_path / "partial.pt", npz, progress=False)
    del ckpt["split"]["dev"]
    torch.save(ckpt, tmp_path / "nodev.pt")
    with pytest.raises(ValueError, match="has no dev images \\(train with --dev-fraction for dev images\\)"):
        evaluate(tmp_path / "nodev.pt", npz, split="dev", progress=False)


def test_settings_say_how_each_evaluation_segmented(npz, tmp_path, capsys):
    from unetseg.evaluate import read_settings, setting_differences

    names = [s.name for s in read_dataset(npz)]
    ckpt = make_checkpoint(out_channels=2, seed=5)
    ckpt["split"] = {"train": names[3:], "val": names[:3], "dev": [], "seed": 0}
    ckpt["training_data"], ckpt["diameter"] = str(npz), 20.0
    torch.save(ckpt, tmp_path / "best.pt")
    export(ckpt, tmp_path / "model.pt")
    evaluate(tmp_path / "best.pt", npz, tmp_path / "ckpt", threshold=0.4, min_area=5, progress=False)
    evaluate(tmp_path / "model.pt", npz, tmp_path / "file", precision="float32", min_area=5, progress=False)
    evaluate(tmp_path / "model.pt", npz, tmp_path / "same", precision="float32", min_area=5, progress=False)
    on_ckpt, on_file = read_settings(tmp_path / "ckpt"), read_settings(tmp_path / "file")
    assert on_ckpt == {
        "model": str(tmp_path / "best.pt"),
        "split": "val",
        "scale": 1.0,
        "run by": "the training checkpoint in Python",
        "diameter": "each image's labelled median diameter",
        "precision": on_ckpt["precision"],
        "tta": False,
        "labelling": "seeded",
        "threshold": 0.4,
        "boundary_threshold": 0.5,
        "min_area": 5,
    }
    assert on_file["diameter"] == "estimated per image" and on_file["precision"] == "float32"
    assert on_file["threshold"] == pytest.approx(ckpt["threshold"]) and on_file["min_area"] == 5
    differences = setting_differences(on_ckpt, on_file)
    assert "diameter (each image's labelled median diameter / estimated per image)" in differences
    assert any(d.startswith("threshold (0.4 / ") for d in differences)
    assert setting_differences(on_file, read_settings(tmp_path / "same")) == []
    assert read_settings(tmp_path / "file" / "per_image.csv") is None
    assert main(["compare", str(tmp_path / "ckpt"), str(tmp_path / "file"), "--resamples", "100"]) == 0
    assert "note: the two evaluations segmented differently" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "file"), str(tmp_path / "same"), "--resamples", "100"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_model_file_options_reach_the_runner(exported, npz):
    path, _ = exported
    plain = evaluate(path, npz, labelling="plain", threshold=0.3, progress=False)["all"]
    assert plain != evaluate(path, npz, progress=False)["all"]
    assert plain != evaluate(path, npz, labelling="plain", threshold=0.6, progress=False)["all"]


def test_precision_of_a_checkpoint_and_bad_precisions(exported, npz, tmp_path):
    """A checkpoint runs under torch.autocast in bfloat16: it scores what it scores in float32 within
    a few percent of pixels (a random model, thresholded at its median), and differently enough to
    show the option reached the network. Unknown or CPU float16 precisions are clear errors."""
    names = [s.name for s in read_dataset(npz)]
    ckpt = make_checkpoint(out_channels=2, seed=5)
    ckpt["split"] = {"train": names[4:], "val": names[:4], "seed": 0}
    torch.save(ckpt, tmp_path / "best.pt")
    from unetseg.checkpoint import model_from_checkpoint
    from unetseg.predict import predict

    with torch.no_grad():  # a random model: half of the first image is foreground at this threshold
        t = float(np.median(predict(model_from_checkpoint(ckpt), read_dataset(npz)[0].image, ckpt)[0]))
    f32 = evaluate(tmp_path / "best.pt", npz, threshold=t, split="all", precision="float32", progress=False)["all"]
    bf16 = evaluate(tmp_path / "best.pt", npz, threshold=t, split="all", precision="bfloat16", progress=False)["all"]
    assert bf16 != f32 and abs(bf16["pixel_accuracy"] - f32["pixel_accuracy"]) < 0.05
    for model in (tmp_path / "best.pt", exported[0]):
        with pytest.raises(ValueError, match="float16 needs a CUDA device"):
            evaluate(model, npz, device="cpu", precision="float16", progress=False)
    with pytest.raises(ValueError, match="unknown precision 'float64'; expected"):
        evaluate(tmp_path / "best.pt", npz, precision="float64", progress=False)
    with pytest.raises(SystemExit, match="float16 needs a CUDA device"):
        main(["evaluate", str(exported[0]), str(npz), "--device", "cpu", "--precision", "float16"])


def test_default_model(npz, capsys):
    result = evaluate("default", npz, split="all", progress=False)
    assert result["all"]["images"] == 12 and set(result) == {"all", "a", "b"}
    assert result["all"] == evaluate(None, npz, split="all", progress=False)["all"]
    with pytest.raises(ValueError, match=r"holds none of the model's validation images \(\d+\); use split='all'"):
        evaluate("default", npz, progress=False)  # its validation images are DSB 2018 ones
    assert main(["evaluate", "default", str(npz), "--split", "all"]) == 0
    assert "| all | 12 |" in capsys.readouterr().out


def test_bad_models(exported, npz, tmp_path, model_file):
    path, _ = exported
    assert is_model_file(path) and not is_model_file(npz) and not is_model_file(tmp_path / "missing.pt")
    with pytest.raises(SystemExit, match="no such checkpoint or model file"):
        main(["evaluate", str(tmp_path / "missing.pt"), str(npz)])
    with pytest.raises(ValueError, match="seeded labelling needs a model with a boundary output"):
        evaluate(model_file[0], npz, split="all", labelling="seeded", progress=False)
    with pytest.raises(ValueError, match="threshold 2 is not a probability"):
        evaluate(path, npz, threshold=2.0, progress=False)
    with pytest.raises(ValueError, match="split must be 'val', 'dev' or 'all'"):
        evaluate(path, npz, split="train", progress=False)
    ckpt = make_checkpoint()
    ckpt["training_data"] = None  # a model file that does not say what it was validated on
    export(ckpt, tmp_path / "anonymous.pt")
    with pytest.raises(ValueError, match="does not say which images it was validated on; use split='all'"):
        evaluate(tmp_path / "anonymous.pt", npz, progress=False)
    with pytest.raises(ValueError, match="does not name its dev images; use split='all'"):
        evaluate(tmp_path / "anonymous.pt", npz, split="dev", progress=False)
    assert evaluate(tmp_path / "anonymous.pt", npz, split="all", progress=False)["all"]["images"] == 12


def test_overlays_of_the_worst_images(exported, npz, tmp_path, capsys):
    path, _ = exported
    evaluate(path, npz, tmp_path / "eval", split="all", overlays=5, progress=False)
    evaluate(path, npz, tmp_path / "eval", split="all", overlays=3, progress=False)  # replaces the ranking
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path / "eval" / "per_image.csv").read_text())))
    worst = sorted(rows, key=lambda r: float(r["dsb_score"]))[:3]  # stable: ties keep dataset order
    pictures = sorted(p.name for p in (tmp_path / "eval" / "overlays").iterdir())
    assert pictures == [f"{k:02d}_{r['image']}.png" for k, r in enumerate(worst, start=1)]
    picture = cv2.imread(str(tmp_path / "eval" / "overlays" / pictures[0]))
    assert picture.shape == (48, 48, 3)
    assert ((picture == (255, 0, 255)).all(axis=2)).any() and ((picture == (0, 220, 0)).all(axis=2)).any()
    assert main(["evaluate", str(path), str(npz), "-o", str(tmp_path / "cli"), "--overlays", "0"]) == 0
    assert "worst images" not in capsys.readouterr().out and not (tmp_path / "cli" / "overlays").exists()
    with pytest.raises(ValueError, match="overlays is a number of pictures"):
        evaluate(path, npz, tmp_path / "bad", overlays=-1, progress=False)


def test_split_of_scores_another_models_images(exported, npz, tmp_path):
    """Two models compared on the same images: the bundled model file on the images another model
    file (`exported`) was validated on."""
    path, names = exported
    got = evaluate(None, npz, split_of=path, progress=False, overlays=0)
    assert got["all"]["images"] == len(names)
    assert got == evaluate(path, npz, progress=False, overlays=0)  # same weights, same images
    with pytest.raises(ValueError, match="does not say which images it was validated on"):
        module, metadata = load(default_model_path())
        metadata["training_data"] = None
        with quiet_jit():
            torch.jit.save(module, str(tmp_path / "m.pt"), _extra_files={METADATA_FILE: json.dumps(metadata)})
        evaluate(None, npz, split_of=tmp_path / "m.pt", progress=False)


def _per_image_rows(scores, datasets, tp_fp_fn):
    return [
        {
            "image": f"{d}/i{i}",
            "dataset": d,
            "kind": "fluorescence",
            "dsb_score": s,
            "aji": s,
            "pq": s,
            "tp@0.50": c[0],
            "fp@0.50": c[1],
            "fn@0.50": c[2],
        }
        for i, (s, d, c) in enumerate(zip(scores, datasets, tp_fp_fn))
    ]


def test_compare_gives_paired_bootstrap_intervals(tmp_path, capsys):
    from unetseg.cli import main
    from unetseg.evaluate import compare, read_per_image

    rng = np.random.default_rng(0)
    n = 40
    base = rng.uniform(0.2, 0.9, n)  # images differ a lot; the change is the same on each
    datasets = ["a"] * 30 + ["b"] * 10
    counts = [(10, 2, 3)] * n
    before = _per_image_rows(base, datasets, counts)
    after = _per_image_rows(base + 0.01, datasets, [(11, 1, 2)] * n)
    result = compare(before, after, resamples=500)
    assert set(result) == {"all", "fluorescence", "a", "b"} and result["a"][0] == 30
    b, a, low, high = result["all"][1]["dsb_score"]
    assert a - b == pytest.approx(0.01) and low == pytest.approx(0.01) and high == pytest.approx(0.01)
    b, a, low, high = result["all"][1]["ap@0.50"]  # pooled: 400 / 600 against 440 / 560
    assert b == pytest.approx(400 / 600) and a == pytest.approx(440 / 560) and low == pytest.approx(a - b)
    noisy = _per_image_rows(base + rng.normal(0, 0.05, n), datasets, counts)
    b, a, low, high = compare(before, noisy)["all"][1]["pq"]
    assert low < a - b < high and low < 0 < high  # noise around no change: the interval spans 0
    same = compare(before, before)["b"][1]["aji"]
    assert same[2] == same[3] == 0
    # the command: evaluation folders (their per_image.csv), a table, clear errors
    for name, rows in (("before", before), ("after", after[:35])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert read_per_image(tmp_path / "after")[0]["pq"] == pytest.approx(after[0]["pq"])
    assert main(["compare", str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    out = capsys.readouterr().out
    assert "compared on the 35 images both scored (40 and 35 in all)" in out
    assert "| all | 35 | dsb_score |" in out and "+0.010 *" in out
    with pytest.raises(SystemExit, match="unetseg compare: no per-image scores at .*nothing"):
        main(["compare", str(tmp_path / "before"), str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="resamples must be at least 100 .* got 5"):
        main(["compare", str(tmp_path / "before"), str(tmp_path / "after"), "--resamples", "5"])
    with pytest.raises(ValueError, match="share no image"):
        compare(before, [{**r, "image": "x" + r["image"]} for r in after])
