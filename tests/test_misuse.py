"""Wrong inputs and misuse, one test per row: each gives a clear message (what was received, what is
expected, how to fix it) before any work, or a documented correct result; nothing a user had is
overwritten or discarded."""

import math
import re

import cv2
import numpy as np
import pytest
import tifffile
import torch
from conftest import make_checkpoint

import unetseg
from unetseg.cli import main
from unetseg.data import synthetic_nuclei
from unetseg.files import previous_outputs
from unetseg.train import TrainConfig, train


@pytest.fixture(scope="module")
def files(tmp_path_factory, model_file):
    """An image, a training checkpoint and a model file on disk."""
    root = tmp_path_factory.mktemp("misuse")
    image = synthetic_nuclei((48, 56), seed=4).image
    cv2.imwrite(str(root / "im.png"), image)
    torch.save(make_checkpoint(), root / "ckpt.pt")
    return {"root": root, "image": image, "model": model_file[0], "ckpt": root / "ckpt.pt"}


def cli(*args):
    """Runs the CLI; returns (exit status or SystemExit message)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return str(e.code)


def small_train(npz, out, **kw):
    options = dict(
        model_options={"base_width": 4, "depth": 2},
        in_channels=1,
        crop=32,
        batch_size=4,
        workers=0,
        epochs=1,
        samples_per_epoch=4,
    )
    return TrainConfig(data=str(npz), output=str(out), **{**options, **kw})


# (id, call(files, npz, tmp_path) -> error or message text, expected regex)
CASES = [
    (
        "hwc-array-as-batch",
        lambda f, n, t: unetseg.segment_batch(np.zeros((60, 70, 3), np.uint8), f["model"]),
        r"\(H, W, C\) image, not a stack of images; pass it as \[image\]",
    ),
    (
        "two-channels-ambiguous",
        lambda f, n, t: unetseg.segment_batch([np.zeros((40, 40, 2), np.uint8)], f["model"]),
        r"pick the nuclear channel with channel=N in 0..1 \(--channel N on the command line; for gray \+ alpha, 0\)",
    ),
    (
        "five-channels-no-channel",
        lambda f, n, t: unetseg.segment_batch([np.zeros((40, 40, 5), np.uint8)], f["model"]),
        r"has shape \[40, 40, 5\].*channel=N in 0..4 \(--channel N on the command line\)",
    ),
    (
        "channel-out-of-range",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], channel=3),
        r"channel 3 asked for, but image 0 has shape \[48, 56\] \(1 channel\(s\) last\); expected a channel in 0..0",
    ),
    (
        "image-dtype",
        lambda f, n, t: unetseg.segment_batch([np.zeros((8, 8), np.int64)], f["model"]),
        r"image 0 has dtype int64; expected uint8, uint16 or float32",
    ),
    (
        "image-nan",
        lambda f, n, t: unetseg.segment_batch([np.full((8, 8), np.nan, np.float32)], f["model"]),
        r"image 0 contains NaN or infinite values",
    ),
    (
        "image-4d",
        lambda f, n, t: unetseg.segment_batch(np.zeros((2, 8, 8, 3, 1), np.uint8), f["model"]),
        r"must be \(N, H, W\) or \(N, H, W, C\), got shape \(2, 8, 8, 3, 1\)",
    ),
    (
        "image-not-array",
        lambda f, n, t: unetseg.segment_batch([3], f["model"]),
        r"image 0 is a int; expected a numpy array, a torch tensor or a file path",
    ),
    (
        "threshold-negative",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], threshold=-0.5),
        r"threshold -0.5 is not a probability; expected a value in \[0, 1\]",
    ),
    (
        "min-area-negative",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], min_area=-5),
        r"min_area must be >= 0 pixels, got -5",
    ),
    (
        "tile-size-negative",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], tile_size=-1),
        r"tile_size must be >= 0 pixels \(0: no tiling\), got -1",
    ),
    (
        "labelling-unknown",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], labelling="watershed"),
        r"labelling 'watershed' is not one of 'auto', 'plain', 'seeded'",
    ),
    (
        "precision-unknown",
        lambda f, n, t: unetseg.Runner(f["model"], precision="half"),
        r"unknown precision 'half'; expected auto, float32, bfloat16 or float16",
    ),
    ("device-unknown", lambda f, n, t: unetseg.Runner(f["model"], device="tpu"), r"unknown device 'tpu'"),
    ("batch-size-zero", lambda f, n, t: unetseg.Runner(f["model"], batch_size=0), r"batch_size must be >= 1, got 0"),
    (
        "diameter-zero",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], diameter=0),
        r"diameter 0 given, but this model has no canonical nucleus diameter",
    ),
    (
        "diameter-text",
        lambda f, n, t: unetseg.segment_batch([f["image"]], f["model"], diameter="big"),
        r"diameter must be a number of pixels or 'auto', got 'big'",
    ),
    (
        "checkpoint-as-model",
        lambda f, n, t: unetseg.Runner(f["ckpt"]),
        r"is a training checkpoint, not a model file; make one with `unetseg export .*ckpt.pt -o model.pt`",
    ),
    (
        "model-as-checkpoint",
        lambda f, n, t: unetseg.checkpoint.load_checkpoint(f["model"]),
        r"is a model file made by `unetseg export`, not a training checkpoint",
    ),
    ("missing-model", lambda f, n, t: unetseg.Runner(t / "nope.pt"), r"model file '.*nope.pt' does not exist"),
    ("train-crop-zero", lambda f, n, t: train(small_train(n, t / "r", crop=0)), r"crop must be >= 16, got 0"),
    (
        "train-lr-negative",
        lambda f, n, t: train(small_train(n, t / "r", lr=-1e-3)),
        r"lr must be a learning rate >= 0, got -0.001",
    ),
    (
        "train-epoch-shorter-than-batch",
        lambda f, n, t: train(small_train(n, t / "r", samples_per_epoch=2)),
        r"an epoch of 2 crops is less than one batch of 4: no training step would run",
    ),
    (
        "train-resume-nothing",
        lambda f, n, t: train(small_train(n, t / "r", resume=True)),
        r"nothing to resume in .* \(no last.pt\); drop --resume to start a new run there",
    ),
    (
        "train-resume-and-overwrite",
        lambda f, n, t: (train(small_train(n, t / "r")), train(small_train(n, t / "r", resume=True, overwrite=True))),
        r"--resume continues a run and --overwrite replaces it: give one of them",
    ),
    (
        "train-output-is-file",
        lambda f, n, t: (t.joinpath("file").write_text("x"), train(small_train(n, t / "file"))),
        r"the output '.*file' is a file, not a folder; give a folder path",
    ),
    (
        "train-unknown-architecture",
        lambda f, n, t: train(small_train(n, t / "r", architecture="resnet")),
        r"unknown architecture 'resnet'; expected one of \['mobilenetv2_unet', 'unet'\]",
    ),
    (
        "train-sampling-weights-unknown",
        lambda f, n, t: train(small_train(n, t / "r", sampling_weights={"x": 1})),
        r"sampling weights name \['x'\], which are neither datasets nor dataset:kind strata",
    ),
    ("cli-abbreviation", lambda f, n, t: cli("train", n, "--model", "mobilenetv2"), r"^2$"),
    (
        "cli-segment-bad-threshold",
        lambda f, n, t: cli("segment", f["root"] / "im.png", "-m", f["model"], "-t", -0.5, "-o", t / "o"),
        r"unetseg segment: .*threshold -0.5 is not a probability",
    ),
    (
        "cli-segment-bad-tile",
        lambda f, n, t: cli("segment", f["root"] / "im.png", "-m", f["model"], "--tile-size", -1, "-o", t / "o"),
        r"--tile-size must be >= 0 pixels \(0: never tile\), got -1",
    ),
    (
        "cli-segment-output-is-file",
        lambda f, n, t: (
            t.joinpath("f").write_text("x"),
            cli("segment", f["root"] / "im.png", "-m", f["model"], "-o", t / "f"),
        ),
        r"the output '.*f' is a file, not a folder",
    ),
    (
        "cli-segment-checkpoint",
        lambda f, n, t: cli("segment", f["root"] / "im.png", "-m", f["ckpt"], "-o", t / "o"),
        r"is a training checkpoint, not a model file",
    ),
    (
        "cli-segment-nothing",
        lambda f, n, t: cli("segment", t / "missing", "-o", t / "o"),
        r"is not a file, a folder or a glob pattern",
    ),
    (
        "cli-segment-diameter-text",
        lambda f, n, t: cli("segment", f["root"] / "im.png", "--diameter", "big", "-o", t / "o"),
        r"^2$",
    ),
    (
        "cli-evaluate-output-is-file",
        lambda f, n, t: (
            t.joinpath("f").write_text("x"),
            cli("evaluate", f["model"], n, "--split", "all", "-o", t / "f"),
        ),
        r"the output '.*f' is a file, not a folder",
    ),
    (
        "cli-evaluate-bad-scale",
        lambda f, n, t: cli("evaluate", f["model"], n, "--split", "all", "--scale", 0),
        r"scale is a resize factor in \(0, 8\], got 0",
    ),
    (
        "cli-train-existing-run",
        lambda f, n, t: (train(small_train(n, t / "run")), cli("train", n, "-o", t / "run", "--epochs", 1)),
        r"holds a training run \(last.pt, best.pt, metrics.csv\); continue it with --resume, start over there with "
        r"--overwrite",
    ),
    ("cli-train-bad-json", lambda f, n, t: cli("train", n, "--model-options", "{base"), r"--model-options is not JSON"),
    (
        "tiff-stack",
        lambda f, n, t: (
            tifffile.imwrite(
                t / "z.tif", np.zeros((3, 20, 20), np.uint8), metadata={"axes": "ZYX"}, photometric="minisblack"
            ),
            unetseg.segment_batch([t / "z.tif"], f["model"]),
        ),
        r"holds a stack with axes ZYX \(shape \(3, 20, 20\)\)",
    ),
    ("read-missing-dataset", lambda f, n, t: unetseg.data.read_dataset(t / "none"), r"no such file or folder"),
]


@pytest.mark.parametrize("call, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_misuse_gets_a_clear_message(call, expected, files, npz, tmp_path, capsys):
    try:
        result = call(files, npz, tmp_path)
    except (ValueError, TypeError, FileNotFoundError) as e:
        message = str(e)
    else:
        message = str(result[-1] if isinstance(result, tuple) else result)
    assert message is not None and __import__("re").search(expected, message), message


def test_a_users_run_is_never_overwritten(npz, tmp_path):
    out = tmp_path / "run"
    train(small_train(npz, out))
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="holds a training run"):
        train(small_train(npz, out, epochs=2))
    assert (out / "last.pt").read_bytes() == before
    train(small_train(npz, out, epochs=2, overwrite=True))  # asked for: replaced
    assert (out / "last.pt").read_bytes() != before


def test_multichannel_image_with_channel_equals_its_nuclear_plane(files):
    dapi = files["image"]
    composite = np.dstack([dapi // 3, np.zeros_like(dapi), dapi])  # DAPI in blue
    want = unetseg.segment_batch([dapi], files["model"])[0]
    got = unetseg.segment_batch([composite], files["model"], channel=2)[0]
    np.testing.assert_array_equal(got.labels, want.labels)


def test_fiji_cyx_tiff_is_read_channels_last(files, tmp_path):
    stack = np.stack([files["image"] // 2, files["image"]])  # (C, Y, X), as Fiji writes
    tifffile.imwrite(tmp_path / "cyx.tif", stack, imagej=True, metadata={"axes": "CYX"})
    want = unetseg.segment_batch([files["image"]], files["model"])[0]
    got = unetseg.segment_batch([tmp_path / "cyx.tif"], files["model"], channel=1)[0]
    np.testing.assert_array_equal(got.labels, want.labels)


def test_cli_names_its_channel_option_for_a_two_channel_tiff(files, tmp_path, capsys):
    stack = np.stack([files["image"] // 2, files["image"]])
    tifffile.imwrite(tmp_path / "cyx.tif", stack, imagej=True, metadata={"axes": "CYX"})
    assert cli("segment", tmp_path / "cyx.tif", "-m", files["model"], "-o", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "channel=N in 0..1 (--channel N on the command line" in err
    assert "no image could be segmented; nothing written to" in err
    assert not previous_outputs(tmp_path / "o")  # nothing in the way of the retry
    assert cli("segment", tmp_path / "cyx.tif", "-m", files["model"], "-o", tmp_path / "o", "--channel", 1) == 0


def test_bool_masks_are_images_like_one_bit_pngs(files, tmp_path):
    mask = files["image"] > 128
    cv2.imwrite(str(tmp_path / "mask.png"), mask.astype(np.uint8) * 255)
    want = unetseg.segment_batch([tmp_path / "mask.png"], files["model"])[0]
    for form in (mask, torch.from_numpy(mask)):
        np.testing.assert_array_equal(unetseg.segment_batch([form], files["model"])[0].labels, want.labels)


def test_segment_into_its_input_folder_twice_skips_its_own_outputs(files, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), files["image"])
    for again in ([], ["--overwrite"]):
        assert cli("segment", folder, "-m", files["model"], "-o", folder, *again) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "a.geojson",
        "a.png",
        "a_labels.png",
        "a_overlay.png",
        "objects.csv",
        "summary.csv",
    ]
    assert (folder / "summary.csv").read_text().count("\n") == 2  # one image, not three


# (command, its arguments given files and tmp_path, the files a user has there (relative to tmp_path): an earlier
# run's results, a segment run's labels perhaps corrected by hand)
REPLACING = [
    (
        "segment",
        lambda f, t: ["segment", f["root"] / "im.png", "-m", f["model"], "-o", t / "out"],
        ["out/summary.csv", "out/objects.csv", "out/im_labels.png"],
    ),
    ("evaluate", lambda f, t: ["evaluate", f["model"], f["root"], "--split", "all", "-o", t], ["per_image.csv"]),
    ("export", lambda f, t: ["export", f["ckpt"], "-o", t / "model.pt"], ["model.pt"]),
    ("export-bioimageio", lambda f, t: ["export", f["model"], "--format", "bioimageio", "-o", t / "m.zip"], ["m.zip"]),
    ("label", lambda f, t: ["label", "-o", t / "labels.png"], ["labels.png"]),
    ("tune", lambda f, t: ["tune", f["ckpt"], f["root"], "-o", t / "grid.csv"], ["grid.csv"]),
]


@pytest.mark.parametrize("command,args,kept", REPLACING, ids=[r[0] for r in REPLACING])
def test_commands_refuse_to_replace_what_a_user_has(files, tmp_path, command, args, kept):
    for name in kept:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"{name}: a user's")
    before = {name: (tmp_path / name).read_bytes() for name in kept}
    message = cli(*args(files, tmp_path))
    assert re.fullmatch(
        rf"unetseg {command.split('-')[0]}: '.*{kept[0].split('/')[-1]}'.* already exists? "
        r"\(an earlier run's\?\); give another -o, or --overwrite to replace (it|them)",
        message,
    ), message
    assert {name: (tmp_path / name).read_bytes() for name in kept} == before


def test_overwrite_replaces_what_it_writes(files, tmp_path):
    for name in ("model.pt", "labels.png", "out/im_labels.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a user's")
    assert cli("export", files["ckpt"], "-o", tmp_path / "model.pt", "--overwrite") == 0
    assert unetseg.export.is_model_file(tmp_path / "model.pt")
    assert cli("label", "-o", tmp_path / "labels.png", "--overwrite") == 0
    assert cv2.imread(str(tmp_path / "labels.png"), cv2.IMREAD_UNCHANGED).max() > 0
    args = ("segment", files["root"] / "im.png", "-m", files["model"], "-o", tmp_path / "out", "--overwrite")
    assert cli(*args) == 0
    assert cv2.imread(str(tmp_path / "out/im_labels.png"), cv2.IMREAD_UNCHANGED).shape == files["image"].shape


def test_ctrl_c_ends_cleanly(monkeypatch, capsys, files, tmp_path):
    from unetseg import files as files_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files_module, "segment_files", interrupted)
    assert cli("segment", files["root"] / "im.png", "-m", files["model"], "-o", tmp_path / "o") == 130
    assert "interrupted; finished outputs are kept" in capsys.readouterr().err


def test_every_architecture_trains_from_the_cli_with_its_defaults(npz, tmp_path):
    common = ["--epochs", 1, "--crop", 32, "--batch-size", 4, "--workers", 0, "--samples-per-epoch", 4]
    for arch, extra in (
        ("unet", ["--model-options", '{"base_width": 4, "depth": 2}']),
        ("unet", ["--model-options", '{"base_width": 4, "depth": 2, "padding": "valid"}', "--crop", 64]),
        ("mobilenetv2_unet", []),
    ):
        out = tmp_path / f"{arch}{len(extra)}"
        assert cli("train", npz, "-o", out, "--architecture", arch, *common, *extra) == 0, arch
        assert (out / "best.pt").exists()


def test_nan_diameter_is_refused(files):
    with pytest.raises(ValueError, match="diameter"):
        unetseg.segment_batch([files["image"]], files["model"], diameter=math.nan)


def test_an_interrupted_slide_run_is_never_discarded_unasked(files, tmp_path, monkeypatch):
    from unetseg.slide import pipeline, segment_slide

    image = np.tile(files["image"], (3, 2))
    out = tmp_path / "slide"
    calls = []
    real = pipeline._Work.save

    def interrupt_after_first_band(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Work, "save", interrupt_after_first_band)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(image, out, files["model"], band_height=32, progress=False)
    monkeypatch.undo()
    state = (out / pipeline.PARTIAL / "state.npz").read_bytes()
    with pytest.raises(ValueError, match="holds an interrupted run; continue it with resume=True"):
        segment_slide(image, out, files["model"], band_height=32, progress=False)
    assert (out / pipeline.PARTIAL / "state.npz").read_bytes() == state  # untouched
    resumed = segment_slide(image, out, files["model"], band_height=32, progress=False, resume=True)
    assert resumed.count == segment_slide(image, tmp_path / "b", files["model"], band_height=32, progress=False).count


def test_a_tiff_stack_is_segmented_plane_by_plane(files, tmp_path):
    image = files["image"]
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    tifffile.imwrite(tmp_path / "z.tif", stack, metadata={"axes": "ZYX"}, photometric="minisblack")
    assert cli("segment", tmp_path / "z.tif", "-m", files["model"], "-o", tmp_path / "all") == 0
    want = unetseg.segment_batch(list(stack), files["model"])
    for k, seg in enumerate(want):
        got = cv2.imread(str(tmp_path / "all" / f"z_z{k:03d}_labels.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, seg.labels)
    rows = (tmp_path / "all" / "objects.csv").read_text().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {"z_z000", "z_z001", "z_z002"}
    assert cli("segment", tmp_path / "z.tif", "-m", files["model"], "-o", tmp_path / "one", "--plane", 1) == 0
    assert sorted(p.name for p in (tmp_path / "one").glob("*_labels.png")) == ["z_z001_labels.png"]
    assert cli("segment", tmp_path / "z.tif", "-m", files["model"], "-o", tmp_path / "bad", "--plane", 5) == 1
    assert "--plane is a 0-based plane index, got -1" in cli(
        "segment", tmp_path / "z.tif", "-m", files["model"], "-o", tmp_path / "bad", "--plane", -1
    )


def test_channel_by_its_ome_name(files, tmp_path):
    image = files["image"]
    stack = np.stack([image // 3, image])  # (C, Y, X): DAPI second
    tifffile.imwrite(
        tmp_path / "c.ome.tif",
        stack,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DAPI"]}},
    )
    assert cli("segment", tmp_path / "c.ome.tif", "-m", files["model"], "--channel", "DAPI", "-o", tmp_path / "o") == 0
    want = unetseg.segment_batch([image], files["model"])[0]
    np.testing.assert_array_equal(
        cv2.imread(str(tmp_path / "o" / "c.ome_labels.png"), cv2.IMREAD_UNCHANGED), want.labels
    )
    assert cli("segment", tmp_path / "c.ome.tif", "-m", files["model"], "--channel", "RFP", "-o", tmp_path / "x") == 1
