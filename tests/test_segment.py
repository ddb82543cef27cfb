"""The C++ runner through unetseg.Runner / segment_batch: parity with the Python pipeline, batching,
input forms, thread safety, errors, the bundled model, and `unetseg segment`."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint
from hypothesis import given
from hypothesis import strategies as st

import unetseg
from unetseg.checkpoint import model_from_checkpoint
from unetseg.cli import main
from unetseg.data import read_image, synthetic_nuclei
from unetseg.export import export, read_metadata
from unetseg.predict import predict
from unetseg.segment import default_model_path


def _images():
    fl = synthetic_nuclei((61, 83), seed=1).image  # uint8 gray, sizes that are multiples of nothing
    bf = synthetic_nuclei((40, 40), kind="brightfield", seed=2).image  # uint8 RGB
    return [
        fl,
        fl.astype(np.uint16) * 250 + 7,
        (fl.astype(np.float32) / 255) ** 2,
        bf,
        np.dstack([bf, np.full(bf.shape[:2], 255, np.uint8)]),  # RGBA
        fl[:, :1],  # one column
    ]


@pytest.mark.parametrize("which", ["model_file", "rgb_model"])
def test_runner_probabilities_equal_the_python_pipeline(which, request):
    path, ckpt = request.getfixturevalue(which)
    runner = unetseg.Runner(path, device="cpu", precision="float32")
    eager = model_from_checkpoint(ckpt)
    images = _images()
    with torch.no_grad():
        expected = [predict(eager, im, ckpt) for im in images]
    for got, want in zip(runner.predict(images), expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_segment_is_the_fused_op_on_the_runners_probabilities(model_file):
    runner = unetseg.Runner(model_file[0], device="cpu")
    images = _images()
    for threshold, min_area in [(None, None), (0.3, 0), (0.6, 5)]:
        results = runner.segment(images, threshold=threshold, min_area=min_area)
        for seg, prob in zip(results, runner.predict(images)):
            labels, counts, stats = unetseg.label_stats(torch.from_numpy(prob[0]), threshold or 0.5, 8, min_area or 0)
            np.testing.assert_array_equal(seg.labels, labels.numpy())
            assert seg.labels.dtype == np.int32 and seg.count == int(counts[0]) == len(seg.objects)
            np.testing.assert_array_equal(seg.objects.table, stats.numpy())


def test_nucleus_boundary_models_label_with_seeds(rgb_model):
    runner = unetseg.Runner(rgb_model[0], device="cpu")
    assert runner.labelling == runner.metadata["labelling"] == "seeded"
    assert runner.metadata["outputs"] == ["nucleus", "nucleus boundary"]
    images = _images()
    probabilities = runner.predict(images)
    for t, tb, min_area in [(None, None, None), (0.4, 0.6, 0), (0.55, 0.45, 4)]:
        results = runner.segment(images, threshold=t, boundary_threshold=tb, min_area=min_area)
        for seg, prob in zip(results, probabilities):
            want = unetseg.seeded_label_stats(torch.from_numpy(prob), t or 0.5, tb or 0.5, 8, min_area or 0)
            np.testing.assert_array_equal(seg.labels, want.labels.numpy())
            np.testing.assert_array_equal(seg.objects.table, want.stats.numpy())
    for seg, prob in zip(runner.segment(images, labelling="plain"), probabilities):
        np.testing.assert_array_equal(seg.labels, unetseg.label(torch.from_numpy(prob[0])).labels.numpy())


def test_labelling_errors(model_file, rgb_model):
    image = [synthetic_nuclei((32, 32), seed=0).image]
    assert unetseg.Runner(model_file[0]).labelling == "plain"
    with pytest.raises(ValueError, match=r"seeded labelling needs a model with a boundary output; .* \[nucleus\]"):
        unetseg.segment_batch(image, model_file[0], labelling="seeded")
    with pytest.raises(ValueError, match="labelling 'watershed' is not one of 'auto', 'plain', 'seeded'"):
        unetseg.segment_batch(image, rgb_model[0], labelling="watershed")
    with pytest.raises(ValueError, match="boundary_threshold 1.5 is not a probability"):
        unetseg.segment_batch(image, rgb_model[0], boundary_threshold=1.5)


def threshold_away_from(probabilities, channel: int = 0) -> float:
    """A threshold no probability of `channel` lies within 1e-6 of. Batch size and thread count
    change the network's float rounding (~1e-7); at such a threshold the labels must not change."""
    values = np.concatenate([p[channel].ravel() for p in probabilities])
    candidates = np.linspace(0.3, 0.7, 81)
    margins = [np.abs(values - t).min() for t in candidates]
    assert max(margins) > 1e-6
    return float(candidates[int(np.argmax(margins))])


def test_results_do_not_depend_on_batching_or_order(rgb_model):
    images = _images()
    single = unetseg.Runner(rgb_model[0], batch_size=1)
    probabilities = single.predict(images)
    options = dict(
        threshold=threshold_away_from(probabilities), boundary_threshold=threshold_away_from(probabilities, 1)
    )
    alone = [single.segment([im], **options)[0] for im in images]
    mixed = unetseg.Runner(rgb_model[0], batch_size=3).segment(images[::-1] + images, **options)
    for a, b, c in zip(alone, mixed[: len(images)][::-1], mixed[len(images) :]):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.labels, c.labels)
        np.testing.assert_allclose(a.objects.table, c.objects.table, rtol=1e-6)


def test_input_forms(model_file, tmp_path):
    stack = np.stack([synthetic_nuclei((48, 48), seed=i).image for i in range(3)])
    want = [s.labels for s in unetseg.segment_batch(list(stack), model_file[0])]
    for form in (stack, torch.from_numpy(stack), [torch.from_numpy(im) for im in stack], tuple(stack)):
        got = unetseg.segment_batch(form, model_file[0])
        assert all(np.array_equal(g.labels, w) for g, w in zip(got, want))
    import cv2

    paths = []
    for i, im in enumerate(stack):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), im)
    got = unetseg.segment_batch(paths, model_file[0], progress=True)
    assert all(np.array_equal(g.labels, w) for g, w in zip(got, want))
    assert np.array_equal(unetseg.segment_batch(str(paths[0]), model_file[0])[0].labels, want[0])


def test_threads_share_one_runner(model_file):
    runner = unetseg.Runner(model_file[0])
    images = [synthetic_nuclei((64 + 8 * i, 64), seed=i).image for i in range(6)]
    t = threshold_away_from(runner.predict(images))
    want = runner.segment(images, threshold=t)
    got: dict[int, list] = {}

    def work(k):
        got[k] = runner.segment(images[k:] + images[:k], threshold=t)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [0, 1, 2, 3]
    for k, results in got.items():
        rolled = want[k:] + want[:k]
        assert all(np.array_equal(a.labels, b.labels) for a, b in zip(results, rolled))


def test_object_table(model_file):
    seg = unetseg.segment_batch([synthetic_nuclei((96, 96), seed=5).image], model_file[0], threshold=0.2)[0]
    objects = seg.objects
    assert seg.count == len(objects) > 0
    assert objects.label.tolist() == list(range(1, seg.count + 1))
    areas = np.bincount(seg.labels.ravel(), minlength=seg.count + 1)[1:]
    np.testing.assert_array_equal(objects.area, areas)
    rows, cols = np.nonzero(seg.labels == 1)
    assert objects.bbox[0].tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
    np.testing.assert_allclose(objects.centroid[0], [rows.mean(), cols.mean()])
    assert np.all((objects.mean_score > 0.2) & (objects.mean_score <= 1))
    pd = pytest.importorskip("pandas")
    frame = objects.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns)[:2] == ["label", "area"] and len(frame) == seg.count


def test_bad_inputs_get_clear_errors(model_file, tmp_path):
    runner = unetseg.Runner(model_file[0])
    good = np.zeros((8, 8), np.uint8)
    cases = [
        (np.zeros((8, 8), np.int32), TypeError, "dtype int32"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, r"pick the nuclear channel with channel=N in 0..4 "),
        (np.zeros((0, 8), np.uint8), ValueError, "empty"),
        (np.full((8, 8), np.nan, np.float32), ValueError, "NaN"),
        (np.zeros((2, 8, 8, 1, 1), np.uint8), ValueError, r"\(H, W\) or \(H, W, C\)"),
        ("not-there.png", ValueError, "cannot read"),
        (object(), TypeError, "numpy array, a torch tensor or a file path"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            runner.segment([good, bad])
    with pytest.raises(ValueError, match="probability"):
        runner.segment([good], threshold=1.5)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, C\)"):
        unetseg.segment_batch(good, model_file[0])
    with pytest.raises(ValueError, match="unknown device"):
        unetseg.Runner(model_file[0], device="tpu")
    with pytest.raises(ValueError, match="no usable CUDA" if not torch.cuda.is_available() else "xx"):
        unetseg.Runner(model_file[0], device="cuda")
    with pytest.raises(ValueError, match="batch_size"):
        unetseg.Runner(model_file[0], batch_size=0)


def test_bad_model_files(tmp_path, model_file):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unetseg.Runner(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot load"):
        unetseg.Runner(tmp_path / "junk.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / "plain.pt"))
    with pytest.raises(ValueError, match="without unetseg metadata"):
        unetseg.Runner(tmp_path / "plain.pt")
    # a newer metadata version: rewrite the extra file of a real export
    import json
    import zipfile

    src = zipfile.ZipFile(model_file[0])
    with zipfile.ZipFile(tmp_path / "future.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("extra/unetseg.json"):
                meta = json.loads(data)
                meta["format_version"] = 99
                data = json.dumps(meta).encode()
            dst.writestr(info, data)
    with pytest.raises(ValueError, match="format version 99"):
        unetseg.Runner(tmp_path / "future.pt")


def test_bfloat16_precision_is_close(model_file):
    images = [synthetic_nuclei((64, 64), seed=3).image]
    p32 = unetseg.Runner(model_file[0], precision="float32").predict(images)[0]
    p16 = unetseg.Runner(model_file[0], precision="bfloat16").predict(images)[0]
    assert np.abs(p32 - p16).max() < 0.05
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        unetseg.Runner(model_file[0], device="cpu", precision="float16")


def test_bundled_default_model_is_a_real_trained_model():
    meta = read_metadata(default_model_path())
    assert default_model_path().stat().st_size <= 20 * 2**20  # issue 7: shipped inside the package, at most 20 MB
    assert "dsb2018_stage1_train" in meta["training_data"]["dataset"] and meta["diameter"] == 20
    assert meta["training_data"]["train_images"] > 1000 and meta["validation"]
    sample = Path(unetseg.__file__).parent / "assets" / "samples" / "fluorescence.png"
    truth = read_image(sample.parent / "labels" / sample.name)
    seg = unetseg.segment_batch([sample])[0]
    from unetseg.metrics import image_metrics

    assert image_metrics(seg.labels, truth)["dice"] > 0.8  # random weights would not come close


def test_cli_segment(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(folder / f"im{i}.png"), synthetic_nuclei((40 + i, 50), seed=i).image)
    (folder / "broken.png").write_bytes(b"junk")
    out = tmp_path / "out"
    rc = main(["segment", str(folder), "-o", str(out), "-m", str(model_file[0]), "-t", "0.3"])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped" in captured.err and "broken.png" in captured.err
    for i in range(3):
        labels = read_image(out / f"im{i}_labels.png")
        assert labels.dtype == np.uint16 and labels.shape == (40 + i, 50)
        assert (out / f"im{i}_overlay.png").exists()
    rows = (out / "objects.csv").read_text().splitlines()
    assert rows[0].startswith("image,label,area") and len(rows) > 1
    assert len((out / "summary.csv").read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="give INPUTS"):
        main(["segment", "-o", str(out)])
    with pytest.raises(SystemExit, match="is not a file"):
        main(["segment", str(tmp_path / "nothing"), "-o", str(tmp_path / "out2")])


def test_postprocessing_defaults_travel_in_the_model_file(rgb_model, tmp_path):
    path = tmp_path / "tuned.pt"
    meta = export(rgb_model[1], path, threshold=0.45, boundary_threshold=0.55, min_area=12)
    assert (meta["threshold"], meta["boundary_threshold"], meta["min_area"]) == (0.45, 0.55, 12)
    assert read_metadata(path) == meta
    runner = unetseg.Runner(path)
    images = _images()[:3]
    for seg, prob in zip(runner.segment(images), runner.predict(images)):
        want = unetseg.seeded_label(torch.from_numpy(prob), 0.45, 0.55, 8, 12)
        np.testing.assert_array_equal(seg.labels, want.labels.numpy())
    for seg, prob in zip(runner.segment(images, min_area=0), runner.predict(images)):
        np.testing.assert_array_equal(
            seg.labels, unetseg.seeded_label(torch.from_numpy(prob), 0.45, 0.55).labels.numpy()
        )
    with pytest.raises(ValueError, match="min_area must be >= 0 pixels, got -1"):
        export(rgb_model[1], tmp_path / "bad.pt", min_area=-1)
    with pytest.raises(ValueError, match=r"boundary_threshold must be a probability in \[0, 1\], got 2"):
        export(rgb_model[1], tmp_path / "bad.pt", boundary_threshold=2)


def written_image(tmp_path):
    """A small synthetic image written as tmp_path/im.png, and as read back."""
    import cv2

    cv2.imwrite(str(tmp_path / "im.png"), synthetic_nuclei((48, 56), seed=4).image)
    return read_image(tmp_path / "im.png")


def test_cli_segment_precision(tmp_path, model_file):
    image = written_image(tmp_path)
    t = float(np.median(unetseg.Runner(model_file[0]).predict([image])[0]))  # a random model: half is foreground
    args = ["segment", str(tmp_path / "im.png"), "-m", str(model_file[0]), "--device", "cpu", "-t", str(t)]
    assert main(args + ["-o", str(tmp_path / "out"), "--precision", "bfloat16"]) == 0
    want = unetseg.segment_batch([image], model_file[0], threshold=t, precision="bfloat16")[0]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "im_labels.png"), want.labels)
    f32 = unetseg.segment_batch([image], model_file[0], threshold=t, precision="float32")[0]
    assert not np.array_equal(f32.labels, want.labels)  # the flag reached the runner
    with pytest.raises(SystemExit, match="unetseg segment: .*float16 needs a CUDA device; use float32 or bfloat16"):
        main(args + ["-o", str(tmp_path / "bad"), "--precision", "float16"])


def test_cli_segment_tta(tmp_path, model_file):
    image = written_image(tmp_path)
    t = float(np.median(unetseg.Runner(model_file[0]).predict([image])[0]))  # a random model: half is foreground
    wants = []
    for flag, tta in (([], False), (["--tta"], True)):
        out = tmp_path / f"out{tta}"
        assert (
            main(["segment", str(tmp_path / "im.png"), "-o", str(out), "-m", str(model_file[0]), "-t", str(t)] + flag)
            == 0
        )
        wants.append(unetseg.segment_batch([image], model_file[0], threshold=t, tta=tta)[0])
        np.testing.assert_array_equal(read_image(out / "im_labels.png"), wants[-1].labels)
    assert not np.array_equal(wants[0].labels, wants[1].labels)  # the flag reached the runner


def cpu_graph_op_calls(tmp_path, precision: str, **model_options) -> dict[str, int]:
    """How often the CPU runner calls each op on one 64² image with a random U-Net of these options
    (torch.profiler sees the C++ runner's calls); skips where the precision has no native support."""
    from torch.profiler import ProfilerActivity, profile

    if precision == "bfloat16" and not unetseg.Runner(device="cpu").precision == "bfloat16":
        pytest.skip("this CPU has no native bfloat16")
    export(make_checkpoint("unet", 3, 2, **model_options), tmp_path / "m.pt")
    runner = unetseg.Runner(tmp_path / "m.pt", device="cpu", precision=precision)
    image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        runner.predict([image], tile_size=0)
    return {e.key: e.count for e in p.key_averages()}


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_cpu_graph_leaves_no_separate_relu_or_indexed_pooling_in_a_unet(tmp_path, precision):
    """Speed the parity test cannot see: in the runner's graph of a U-Net every ReLU is a convolution's
    post-op (the decoder's too, after the split concatenations), and in bfloat16 no max-pool computes
    argmax indices."""
    ops = set(cpu_graph_op_calls(tmp_path, precision, base_width=8, depth=3))
    assert "mkldnn::_convolution_pointwise" in ops and not ops & {"aten::relu_", "aten::relu", "aten::clamp_min_"}
    assert ("aten::max_pool2d_with_indices" in ops) == (precision == "float32")
    assert ("unetseg::_max_pool_2x2" in ops) == (precision == "bfloat16")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_cpu_graph_takes_the_c24_convolution_where_it_wins(tmp_path, precision):
    """On a CPU with AVX512-BF16 and no AMX, a U-Net of base width 24 runs its full-resolution 3x3
    convolutions to 24 channels (the decoder's split one as two) as unetseg::_conv3x3_c24: all five
    in float32, the four after the first (three input channels) in bfloat16; elsewhere none."""
    caps = torch._C._cpu._get_cpu_capability()
    wins = bool(caps.get("avx512_bf16")) and not caps.get("amx_bf16")
    calls = cpu_graph_op_calls(tmp_path, precision, base_width=24, depth=2)
    assert calls.get("unetseg::_conv3x3_c24", 0) == ((4 if precision == "bfloat16" else 5) if wins else 0)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 40),
    h=st.integers(2, 33),
    w=st.integers(2, 33),
    specials=st.lists(
        st.sampled_from([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 0.0]), max_size=6
    ),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_bfloat16_max_pool_is_torchs(n, c, h, w, specials, channels_last, seed):
    """unetseg::_max_pool_2x2 (the CPU graph's bfloat16 pool) against torch's max_pool2d: the same
    values, NaN where a cell holds one, odd last rows and columns dropped, any input layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(torch.bfloat16)
    flat = x.view(-1)
    for value, at in zip(specials, torch.randint(0, flat.numel(), (len(specials),), generator=g).tolist()):
        flat[at] = value
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = torch.ops.unetseg._max_pool_2x2(x)
    want = torch.nn.functional.max_pool2d(x.float(), 2)  # exact: the maximum is one of the inputs
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.float().isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got.float()), torch.nan_to_num(want))


def test_the_bfloat16_max_pool_of_one_row_is_empty_and_other_dtypes_are_refused():
    assert torch.ops.unetseg._max_pool_2x2(torch.zeros(2, 3, 1, 9, dtype=torch.bfloat16)).shape == (2, 3, 0, 4)
    with pytest.raises(RuntimeError, match="bfloat16 CPU tensor"):
        torch.ops.unetseg._max_pool_2x2(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize(
    "architecture,options",
    [
        ("unet", {"base_width": 8, "depth": 3}),
        ("unet", {"base_width": 24, "depth": 2}),  # unetseg::_conv3x3_c24 where it wins
        ("unet", {"batch_norm": False}),
        ("mobilenetv2_unet", {}),
    ],
)
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_cpu_graph_computes_what_the_model_file_does(tmp_path, architecture, options, precision):
    """The CPU runner runs its own version of the file's graph (oneDNN convolutions with fused ReLUs,
    concatenations split into two convolutions, max-pools as maxima of strided quarters:
    csrc/runner/cpu_graph.h); its probabilities are the
    file's graph's, run on the same input (in bfloat16 under autocast, as the file runs elsewhere)."""
    from unetseg.export import load

    if precision == "bfloat16" and not unetseg.Runner(device="cpu").precision == "bfloat16":
        pytest.skip("this CPU has no native bfloat16")
    ckpt = make_checkpoint(architecture, 3, 2, **options)
    export(ckpt, tmp_path / "m.pt")
    runner = unetseg.Runner(tmp_path / "m.pt", device="cpu", precision=precision)
    scripted, _ = load(tmp_path / "m.pt")
    multiple = read_metadata(tmp_path / "m.pt")["size_multiple"]
    image = np.random.default_rng(0).random((3 * multiple, 5 * multiple, 3), dtype=np.float32)
    assert runner.fused  # every op of these graphs is one the rewrite knows
    got = runner.predict([image], normalisation=([0.0] * 3, [1.0] * 3), tile_size=0)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bfloat16"):
        logits = scripted(x).float()
    want = torch.sigmoid(logits)[0].numpy()
    if precision == "float32":
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:  # bfloat16 rounds where the two graphs sum in another order
        assert np.abs(got - want).max() < 0.05 and np.abs(got - want).mean() < 0.005
