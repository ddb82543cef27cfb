"""Whole-image segmentation throughput: unetseg.segment_batch (C++ runner: normalise, TorchScript
network, fused threshold + labelling + object table) against

  - the DSB 2018 starter-project pipeline: numpy normalisation, eager PyTorch forward, sigmoid,
    numpy threshold, cv2.connectedComponents per image;
  - ONNX Runtime running the same network (exported with torch.onnx) followed by OpenCV labelling.

    python benchmarks/bench_segment.py [--threads N] [--repeats R]

All three run the same U-Net (the bundled default model's architecture and options, fresh
weights: the time does not depend on them) on the same synthetic nuclei images with the same
thread count. Ratios are competitor time / unetseg time (above 1: unetseg is faster). "file's
graph alone" is the model file's portable TorchScript graph on the same normalised batches
(float32), which the CPU runner replaces with its fused version: the last column is what that
gains, the whole pipeline included. unetseg runs as users get it (precision "auto": bfloat16
on CPUs with native bfloat16, float32 elsewhere) and in float32, in the same run; the competitors
run float32 (ONNX Runtime's CPU provider has no bfloat16 convolutions), and each ratio is their
time over unetseg's.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from common import cpu_name, interleaved_median_seconds

import unetseg
from unetseg.data import Normalisation, synthetic_nuclei, to_channels
from unetseg.export import export, quiet_jit, read_metadata
from unetseg.models import build_model
from unetseg.segment import default_model_path


def checkpoint_like_default() -> dict:
    meta = read_metadata(default_model_path())
    torch.manual_seed(0)
    model = build_model(meta["architecture"], **meta["options"]).eval()
    return {
        "format": 1,
        "model": {"architecture": meta["architecture"], "options": meta["options"]},
        "in_channels": meta["in_channels"],
        "out_channels": meta["out_channels"],
        "output_meaning": meta["outputs"],
        "threshold": 0.5,
        "normalisation": meta["normalisation"],
        "state_dict": model.state_dict(),
    }, model


def normalised_batch(images: list[np.ndarray], channels: int) -> np.ndarray:
    norm = Normalisation()
    return np.stack([norm(to_channels(im, channels)).transpose(2, 0, 1) for im in images]).astype(np.float32)


def starter_pipeline(model, images, channels, batch):
    def run():
        out = []
        for s in range(0, len(images), batch):
            x = torch.from_numpy(normalised_batch(images[s : s + batch], channels))
            with torch.no_grad():
                prob = torch.sigmoid(model(x))[:, 0].numpy()
            for p in prob:
                out.append(cv2.connectedComponents((p > 0.5).astype(np.uint8), connectivity=8)[0] - 1)
        return out

    return run


def onnx_pipeline(model, channels, size, threads):
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, channels, size, size),),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def make(images, batch):
        def run():
            out = []
            for s in range(0, len(images), batch):
                logits = session.run(None, {"x": normalised_batch(images[s : s + batch], channels)})[0][:, 0]
                for lg in logits:  # sigmoid(x) > 0.5  <=>  x > 0
                    out.append(cv2.connectedComponents((lg > 0).astype(np.uint8), connectivity=8)[0] - 1)
            return out

        return run

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    ckpt, model = checkpoint_like_default()
    channels = ckpt["in_channels"]
    tmp = Path(tempfile.mkdtemp())
    export(ckpt, tmp / "model.pt")
    runner = unetseg.Runner(tmp / "model.pt", device="cpu", batch_size=8)
    with quiet_jit():
        scripted = torch.jit.load(str(tmp / "model.pt"))

    cases = {
        "16 x 256x256": ([synthetic_nuclei((256, 256), seed=i).image for i in range(16)], 8),
        "2 x 1024x1024": ([synthetic_nuclei((1024, 1024), seed=100 + i).image for i in range(2)], 1),
    }
    rows = []
    for name, (images, batch) in cases.items():
        runner = unetseg.Runner(tmp / "model.pt", device="cpu", batch_size=batch)  # the default: precision auto
        size = images[0].shape[0]
        runner32 = unetseg.Runner(tmp / "model.pt", device="cpu", batch_size=batch, precision="float32")
        # the model file's portable graph alone, channels-last float32 batches (the CPU runner runs its
        # own fused version of it: csrc/runner/cpu_graph.h)
        batches = [
            torch.from_numpy(normalised_batch(images[s : s + batch], channels)).contiguous(
                memory_format=torch.channels_last
            )
            for s in range(0, len(images), batch)
        ]

        def network_only():
            with torch.inference_mode():
                for x in batches:
                    scripted(x)

        t = interleaved_median_seconds(
            {
                "ours": lambda: runner.segment(images),
                "ours32": lambda: runner32.segment(images),
                "net": network_only,
                "starter": starter_pipeline(model, images, channels, batch),
                "ort": onnx_pipeline(model, channels, size, args.threads)(images, batch),
            },
            args.repeats,
        )
        ours, ours32, net, starter, ort_time = t["ours"], t["ours32"], t["net"], t["starter"], t["ort"]
        mpx = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
        rows.append((name, mpx, ours, ours32, starter, ort_time, net))

    cpu = cpu_name()
    print(
        f"# segment_batch, {ckpt['model']['architecture']} {ckpt['model']['options']}; {cpu}; "
        f"{args.threads} threads; torch {torch.__version__}; precision auto = {runner.precision}; "
        f"median of {args.repeats}, the five pipelines in turn in every repeat\n"
    )
    header = (
        "| images | unetseg (auto) ms | Mpx/s | unetseg float32 ms | starter ms (/ auto, / float32) "
        "| ONNX Runtime + OpenCV ms (/ auto, / float32) | file's graph alone (float32) ms | it / unetseg float32 |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for name, mpx, ours, ours32, starter, ort_time, net in rows:
        print(
            f"| {name} | {ours * 1e3:.0f} | {mpx / ours:.2f} | {ours32 * 1e3:.0f} | {starter * 1e3:.0f} "
            f"({starter / ours:.2f}x, {starter / ours32:.2f}x) | {ort_time * 1e3:.0f} ({ort_time / ours:.2f}x, "
            f"{ort_time / ours32:.2f}x) | {net * 1e3:.0f} | {net / ours32:.2f}x |"
        )


if __name__ == "__main__":
    main()
