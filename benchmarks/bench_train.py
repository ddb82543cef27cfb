"""Training speed: crops per second of one training step (forward, BCE + Dice loss, backward, Adam) of
the nucleus + boundary U-Net, in float32 NCHW (unetseg's training before bfloat16), float32
channels_last, and bfloat16 autocast + channels_last (``unetseg train --precision bfloat16``, what
``auto`` picks on CPUs with AVX512-BF16 or AMX), for base widths 16, 24 (the default model's) and
32, in one run with ratios. The channels-last variants run as ``unetseg train`` does
(``to_training_layout``: its batch norm included); "torch's batch norm" is the bfloat16 step with
``nn.BatchNorm2d``'s own channels-last kernels, which are slow at channel counts that are not a
multiple of 16 (models/batch_norm.py).

The step is unetseg.train's (same model, loss and optimizer); the batches are random tensors so the
data pipeline (a separate worker process in training) is not timed. Run when nothing else runs:

    python benchmarks/bench_train.py [--threads 2] [--steps 6] [--markdown]
"""

from __future__ import annotations

import argparse

import torch
from common import cpu_name, interleaved_median_seconds

from unetseg.device import autocast, cpu_has_native_bfloat16
from unetseg.models import build_model
from unetseg.train import loss_fn, to_training_layout

#: name: (precision, layout: "NCHW", "training" (unetseg train's) or "torch batch norm")
VARIANTS = {
    "float32 NCHW": ("float32", "NCHW"),
    "float32 channels_last": ("float32", "training"),
    "bfloat16 channels_last, torch's batch norm": ("bfloat16", "torch batch norm"),
    "bfloat16 channels_last": ("bfloat16", "training"),
}


def step_fn(base: int, precision: str, layout: str, batch: int, crop: int):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=3, out_channels=2, base_width=base, depth=4, batch_norm=True)
    device = torch.device("cpu")
    if layout == "training":
        to_training_layout(model, device)
    elif layout == "torch batch norm":
        model.to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    memory_format = torch.contiguous_format if layout == "NCHW" else torch.channels_last
    images = torch.rand(batch, 3, crop, crop).contiguous(memory_format=memory_format)
    target = (torch.rand(batch, 2, crop, crop) > 0.7).float()

    def step():
        with autocast(device, precision):
            loss = loss_fn(model(images), target, 2.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (median)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--bases", default="16,24,32")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"CPU: {cpu_name()}; native bfloat16: {cpu_has_native_bfloat16()}; {args.threads} threads; "
        f"batch {args.batch} of {args.crop}x{args.crop}; torch {torch.__version__}"
    )
    rows = []
    for base in (int(b) for b in args.bases.split(",")):
        fns = {name: step_fn(base, p, layout, args.batch, args.crop) for name, (p, layout) in VARIANTS.items()}
        seconds = interleaved_median_seconds(fns, args.steps)
        reference = seconds["float32 NCHW"]
        for name, s in seconds.items():
            rows.append((base, name, args.batch / s, reference / s))
    if args.markdown:
        print("\n| base width | variant | crops/s | vs float32 NCHW |\n|---:|---|---:|---:|")
        for base, name, rate, ratio in rows:
            print(f"| {base} | {name} | {rate:.1f} | {ratio:.2f}x |")
    else:
        for base, name, rate, ratio in rows:
            print(f"base {base:>2}  {name:<42} {rate:6.1f} crops/s  {ratio:5.2f}x float32 NCHW")


if __name__ == "__main__":
    main()
