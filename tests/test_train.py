"""Training end to end on synthetic data: outputs, resume, checkpoint loading, evaluation, CLI."""

import csv
import io
from pathlib import Path

import pytest
import torch

from unetseg.checkpoint import load_checkpoint
from unetseg.cli import main
from unetseg.data import read_dataset
from unetseg.evaluate import evaluate
from unetseg.train import TrainConfig, loss_fn, make_augment, split_by_kind, train


def config(npz, out, **kw):
    return TrainConfig(
        data=str(npz),
        output=str(out),
        model_options={"base_width": 4, "depth": 2, "batch_norm": True},
        in_channels=1,
        crop=32,
        batch_size=4,
        workers=0,
        **kw,
    )


def tiny_cli_train(npz, out, *options: str) -> int:
    """`unetseg train` of a tiny network on `npz` for one epoch into `out`, plus `options`."""
    tiny = ["--epochs", "1", "--crop", "32", "--batch-size", "4", "--in-channels", "1", "--workers", "0"]
    return main(
        ["train", str(npz), "-o", str(out), *tiny, "--model-options", '{"base_width": 4, "depth": 2}', *options]
    )


def test_train_resume_and_evaluate(npz, tmp_path):
    out = tmp_path / "run"
    first = train(config(npz, out, epochs=2))
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    for name in ("best.pt", "last.pt", "metrics.csv", "training_curves.png"):
        assert (out / name).exists(), name
    assert len(list((out / "overlays").glob("*.png"))) > 0
    rows = list(csv.DictReader(io.StringIO(Path(out / "metrics.csv").read_text())))
    assert len(rows) == 2 and float(rows[0]["lr"]) == 1e-3
    resumed = train(config(npz, out, epochs=3, resume=True))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]  # nothing lost, nothing redone
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["split"]["val"] and not set(ckpt["split"]["val"]) & set(ckpt["split"]["train"])
    result = evaluate(out / "best.pt", npz, tmp_path / "eval", progress=False)
    assert set(result) == {"all", "a", "b"} and 0 <= result["all"]["dsb_score"] <= 1
    assert (tmp_path / "eval" / "per_image.csv").exists()
    with pytest.raises(ValueError, match="seeded labelling needs a checkpoint with a boundary output"):
        evaluate(out / "best.pt", npz, labelling="seeded", progress=False)


def test_cli_train_and_evaluate(npz, tmp_path, capsys):
    out = tmp_path / "cli"
    assert tiny_cli_train(npz, out, "--out-channels", "2") == 0
    for labelling in ("auto", "plain", "seeded"):
        assert main(["evaluate", str(out / "best.pt"), str(npz), "--split", "all", "--labelling", labelling]) == 0
        assert "| all | 12 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["evaluate", str(out / "nope.pt"), str(npz)])


def test_split_is_stratified_and_fixed():
    from unetseg.data.readers import Sample

    samples = [Sample(f"{k}{i}", None, None, k) for k in "ab" for i in range(20)]
    train_names, val = split_by_kind(samples, 0.15, 0)
    assert len(val) == 6 and sum(v.startswith("a") for v in val) == 3
    assert split_by_kind(samples, 0.15, 0) == (train_names, val)


def test_loss_weights_the_boundary_channel():
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) > 0.5).float()
    nucleus, boundary = (loss_fn(logits[:, [c]], target[:, [c]], 1.0) for c in (0, 1))
    torch.testing.assert_close(loss_fn(logits, target, 3.0), (nucleus + 3 * boundary) / 4)


def test_loss_takes_pixel_weights_from_an_extra_target_channel():
    import torch.nn.functional as F

    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) > 0.5).float()
    ones = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(loss_fn(logits, torch.cat([target, ones], 1), 2.0), loss_fn(logits, target, 2.0))
    weights = torch.rand(2, 1, 8, 8) * 10
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted_bce = (bce * weights).sum(dim=(0, 2, 3)) / weights.sum()
    shift = weighted_bce - bce.mean(dim=(0, 2, 3))  # only the BCE term changes; Dice is unweighted
    torch.testing.assert_close(
        loss_fn(logits, torch.cat([target, weights], 1), 2.0),
        loss_fn(logits, target, 2.0) + (shift[0] + 2 * shift[1]) / 3,
    )
    with pytest.raises(ValueError, match="target has 4 channels for 2 outputs; expected 2 or 3"):
        loss_fn(logits, torch.cat([target, target], 1), 2.0)


def test_pixel_weights_train_and_are_recorded(npz, tmp_path, capsys):
    out = tmp_path / "sep"
    assert (
        tiny_cli_train(
            npz,
            out,
            "--out-channels",
            "2",
            "--separation-weight",
            "10",
            "--separation-sigma",
            "3",
            "--small-object-area",
            "150",
        )
        == 0
    )
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["config"]["separation_weight"] == 10 and ckpt["config"]["separation_sigma"] == 3
    assert ckpt["config"]["small_object_area"] == 150
    assert ckpt["history"][0]["val_loss"] > 0
    with pytest.raises(SystemExit, match="pixel weights need .* got separation=10.0, sigma=0.0, small_area=0.0"):
        main(
            [
                "train",
                str(npz),
                "-o",
                str(tmp_path / "bad"),
                "--out-channels",
                "2",
                "--separation-weight",
                "10",
                "--separation-sigma",
                "0",
            ]
        )


def test_init_weights_fine_tunes_from_a_checkpoint(npz, tmp_path):
    base = train(config(npz, tmp_path / "base", epochs=1, out_channels=2))
    tuned = config(
        npz,
        tmp_path / "tuned",
        epochs=1,
        out_channels=2,
        contact_width=2,
        init_weights=str(tmp_path / "base" / "last.pt"),
        lr=0.0,
    )
    ckpt = train(tuned)
    for name, value in base["state_dict"].items():
        if name.endswith("num_batches_tracked") or "running_" in name:
            continue  # batch norm statistics move without the optimizer
        torch.testing.assert_close(ckpt["state_dict"][name], value, msg=name)  # lr 0: the weights stayed
    assert ckpt["config"]["contact_width"] == 2 and len(ckpt["history"]) == 1
    with pytest.raises(ValueError, match="holds a .* model; this run builds"):
        train(
            config(npz, tmp_path / "other", epochs=1, out_channels=1, init_weights=str(tmp_path / "base" / "last.pt"))
        )
    with pytest.raises(ValueError, match="contact_width must be >= 0 pixels, got -1"):
        train(config(npz, tmp_path / "neg", epochs=1, out_channels=2, contact_width=-1))
    with pytest.raises(ValueError, match=r"rim_fraction must be in \[0, 1\) \(e.g. 0.4; 0: off\), got 1.0"):
        train(config(npz, tmp_path / "rim", epochs=1, out_channels=2, rim_fraction=1.0))


def test_fine_tuning_with_another_split_warns_of_optimistic_validation(npz, tmp_path, capsys):
    train(config(npz, tmp_path / "base", epochs=1, seed=0))
    init = str(tmp_path / "base" / "last.pt")
    capsys.readouterr()
    train(config(npz, tmp_path / "same", epochs=1, seed=0, init_weights=init))
    assert "optimistic" not in capsys.readouterr().out
    ckpt = train(config(npz, tmp_path / "other", epochs=1, seed=1, init_weights=init))
    seen = set(load_checkpoint(init)["split"]["train"]) & set(ckpt["split"]["val"])
    assert seen  # the other seed draws other validation images
    out = capsys.readouterr().out
    assert f"trained on {len(seen)} of this run's {len(ckpt['split']['val'])} validation images" in out
    assert "use that seed" in out and "--seed 0" in out


def test_crop_seed_draws_other_crops_and_keeps_the_split(npz, tmp_path):
    """A run trained on from another keeps its seed (and so its split) and, with another crop seed,
    trains on other crops; without one the crops follow the seed."""
    runs = {
        name: train(config(npz, tmp_path / name, epochs=1, seed=0, **kw))
        for name, kw in {"plain": {}, "same": {"crop_seed": 0}, "other": {"crop_seed": 5}}.items()
    }
    assert runs["plain"]["split"] == runs["same"]["split"] == runs["other"]["split"]
    loss = {name: ckpt["history"][0]["train_loss"] for name, ckpt in runs.items()}
    assert loss["same"] == loss["plain"] != loss["other"]
    assert runs["other"]["config"]["crop_seed"] == 5 and runs["plain"]["config"]["crop_seed"] is None


def test_dev_images_are_held_out_of_training_and_validation(npz, tmp_path):
    ckpt = train(config(npz, tmp_path / "dev", epochs=1, dev_fraction=0.25))
    split = ckpt["split"]
    train_names, val, dev = set(split["train"]), set(split["val"]), set(split["dev"])
    assert len(dev) == 2 and not dev & train_names and not dev & val  # one per kind of the 10 left after val
    assert train_names | val | dev == {s.name for s in read_dataset(npz)}
    assert val == set(load_checkpoint(tmp_path / "dev" / "best.pt")["split"]["val"])
    plain = train(config(npz, tmp_path / "plain", epochs=1))
    assert plain["split"]["val"] == split["val"] and plain["split"]["dev"] == []  # the same validation images
    resumed = train(config(npz, tmp_path / "dev", epochs=2, dev_fraction=0.25, resume=True))
    assert resumed["split"] == split
    with pytest.raises(ValueError, match=r"held-out fraction must lie in \(0, 1\), got 1.5"):
        train(config(npz, tmp_path / "bad", epochs=1, dev_fraction=1.5))


def test_augment_options_train_and_are_recorded(npz, tmp_path):
    out = tmp_path / "aug"
    assert (
        tiny_cli_train(
            npz, out, "--augment-options", '{"elastic": 2, "blur": 1.0, "channel_jitter": 0.1, "scale": [0.8, 1.25]}'
        )
        == 0
    )
    assert load_checkpoint(out / "best.pt")["config"]["augment_options"] == {
        "elastic": 2,
        "blur": 1.0,
        "channel_jitter": 0.1,
        "scale": [0.8, 1.25],
    }
    assert make_augment({"scale": [0.8, 1.25]}).scale == (0.8, 1.25)
    with pytest.raises(SystemExit, match=r"unknown augmentation option\(s\) \['elastc'\]; known: \['flips'"):
        main(["train", str(npz), "-o", str(tmp_path / "bad"), "--augment-options", '{"elastc": 2}'])
    with pytest.raises(SystemExit, match="--augment-options is not JSON .* got '{elastic: 2}'"):
        main(["train", str(npz), "-o", str(tmp_path / "bad"), "--augment-options", "{elastic: 2}"])
    with pytest.raises(SystemExit, match="augmentation blur must be >= 0, got -1"):
        main(["train", str(npz), "-o", str(tmp_path / "bad"), "--augment-options", '{"blur": -1}'])


def test_weight_average_is_what_checkpoints_hold_and_resumes(npz, tmp_path):
    from unetseg.checkpoint import without_training_state

    out = tmp_path / "ema"
    first = train(config(npz, out, epochs=2, ema=0.9))
    steps_per_epoch = len(first["split"]["train"]) // 4
    assert first["averaged_steps"] == 2 * steps_per_epoch  # one update after every step
    trained, averaged = first["trained_state_dict"], first["state_dict"]
    moved = [k for k in averaged if averaged[k].is_floating_point() and not torch.equal(averaged[k], trained[k])]
    assert moved  # the checkpoint's weights are the average, not the last weights
    resumed = train(config(npz, out, epochs=3, ema=0.9, resume=True))
    assert resumed["history"][:2] == first["history"]
    assert resumed["averaged_steps"] == 3 * steps_per_epoch  # the average went on, not restarted
    kept = without_training_state(resumed)  # the bundled form: the average, without the trained weights
    assert "trained_state_dict" not in kept and "averaged_steps" not in kept
    assert kept["state_dict"] is resumed["state_dict"]
    with pytest.raises(ValueError, match="run with a weight average .* resume it with the same --ema"):
        train(config(npz, out, epochs=4, resume=True))
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\) .* got 1.5"):
        train(config(npz, tmp_path / "bad", epochs=1, ema=1.5))


def test_cosine_schedule_anneals_over_the_run_and_resumes_where_it_stopped(npz, tmp_path, monkeypatch):
    import math

    import unetseg.train as training

    def rates(ckpt):
        return [h["lr"] for h in ckpt["history"]]

    whole = train(config(npz, tmp_path / "whole", epochs=4, lr_schedule="cosine", patience=10))
    expected = [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert rates(whole) == pytest.approx(expected, rel=1e-9)  # whatever the validation loss did

    out = tmp_path / "stopped"
    write_history, calls = training.write_history, []

    def killed_after_two_epochs(history, folder):
        write_history(history, folder)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_history", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train(config(npz, out, epochs=4, lr_schedule="cosine", patience=10))
    monkeypatch.setattr(training, "write_history", write_history)
    with pytest.raises(ValueError, match="cosine-schedule run of 4 epochs, asked to resume with 6: .*--epochs 4"):
        train(config(npz, out, epochs=6, lr_schedule="cosine", resume=True))
    with pytest.raises(ValueError, match="run with the cosine learning-rate schedule, .* --lr-schedule cosine"):
        train(config(npz, out, epochs=4, resume=True))
    resumed = train(config(npz, out, epochs=4, lr_schedule="cosine", patience=10, resume=True))
    assert rates(resumed) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="lr_schedule must be one of plateau, cosine, got 'step'"):
        train(config(npz, tmp_path / "bad", lr_schedule="step"))
