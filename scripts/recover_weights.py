"""Recovers a trainable checkpoint from a frozen unetseg model file (batch norm folded into the
convolutions): each folded convolution's weight and bias go back into the U-Net's convolution and an
identity batch norm (mean 0, variance 1 - eps, scale 1, shift = the folded bias), so the eval-mode
network equals the file's. Used once, to fine-tune the model that was shipped before training
checkpoints were shipped with it:

    python scripts/recover_weights.py python/unetseg/assets/default_model.pt -o runs/recovered.pt
"""

import argparse
import warnings

import torch

from unetseg.checkpoint import CHECKPOINT_FORMAT
from unetseg.export import load
from unetseg.models import build_model


def recover(path: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen, meta = load(path)
    if meta["architecture"] != "unet":
        raise SystemExit(f"{path}: only unet models can be recovered, got {meta['architecture']}")
    model = build_model("unet", **meta["options"]).eval()
    consts = [n for n in frozen.graph.nodes() if n.kind() in ("aten::conv2d", "aten::conv_transpose2d")]
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    norms = {
        id(seq[i]): seq[i + 1]
        for seq in model.modules()
        if isinstance(seq, torch.nn.Sequential)
        for i in range(len(seq) - 1)
        if isinstance(seq[i + 1], torch.nn.BatchNorm2d)
    }
    if len(consts) != len(convs):
        raise SystemExit(f"{path}: {len(consts)} convolutions in the file, {len(convs)} in the model")
    with torch.no_grad():
        for node, conv in zip(consts, convs):
            weight, bias = (list(node.inputs())[k].toIValue() for k in (1, 2))
            conv.weight.copy_(weight)
            bn = norms.get(id(conv))
            if bn is None:
                conv.bias.copy_(bias)
            else:
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
                bn.weight.fill_(1)
                bn.bias.copy_(bias)
    x = torch.rand(1, meta["in_channels"], 128, 128)
    with torch.no_grad():
        error = (model(x) - frozen(x)).abs().max().item()
    if error > 1e-4:
        raise SystemExit(f"{path}: the recovered network differs from the file's by {error}")
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"architecture": "unet", "options": meta["options"]},
        "state_dict": model.state_dict(),
        "in_channels": meta["in_channels"],
        "out_channels": meta["out_channels"],
        "normalisation": meta["normalisation"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    torch.save(recover(args.model), args.output)
    print(f"wrote {args.output}")
