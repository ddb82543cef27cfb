"""Widens a trained U-Net checkpoint to a larger base width without changing what it computes
(Net2WiderNet: Chen, Goodfellow & Shlens, ICLR 2016), so that a wider network starts training where
the narrower one stopped instead of from random weights.

Every feature map of width w becomes one of width w' >= w: its first w channels are the old ones
and each extra channel copies an old channel (drawn without replacement). A layer reading a widened
map divides the weights of each copied channel by its number of copies, so the sum is unchanged;
batch-norm statistics and biases are copied with their channels. The concatenation in each
up-sampling block (skip, up-sampled) is widened block by block. Small noise (--noise, relative to
each weight's standard deviation) then breaks the symmetry between copies, which would otherwise
receive identical gradients forever.

    python scripts/widen.py python/unetseg/assets/default_model.ckpt --base-width 24 -o runs/widened.pt
"""

import argparse

import torch

from unetseg.checkpoint import load_checkpoint
from unetseg.models import build_model


def channel_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """New channel -> old channel: the old channels in order, then copies of distinct old channels."""
    if new < old or new > 2 * old:
        raise ValueError(f"can widen {old} channels to {old}..{2 * old}, not {new}")
    extra = torch.randperm(old, generator=generator)[: new - old]
    return torch.cat([torch.arange(old), extra.sort().values])


def copies(mapping: torch.Tensor, old: int) -> torch.Tensor:
    return torch.bincount(mapping, minlength=old).float()


def widen_conv(
    weight: torch.Tensor, out_map: torch.Tensor, in_map: torch.Tensor, in_copies: torch.Tensor, transposed: bool = False
) -> torch.Tensor:
    """A convolution's weight for widened input and output maps (ConvTranspose2d stores (in, out, ...))."""
    if transposed:
        weight = weight.transpose(0, 1)
    wide = weight[out_map][:, in_map] / in_copies[in_map].view(1, -1, 1, 1)
    return wide.transpose(0, 1).contiguous() if transposed else wide


def widen_unet(narrow: torch.nn.Module, wide: torch.nn.Module, seed: int = 0) -> None:
    """Copies ``narrow``'s function into ``wide`` (same depth and channels, larger base width)."""
    generator = torch.Generator().manual_seed(seed)
    maps: dict[int, torch.Tensor] = {}

    def map_for(old: int, new: int) -> torch.Tensor:
        if old not in maps:
            maps[old] = channel_map(old, new, generator)
        return maps[old]

    def copy_block(old_seq, new_seq, in_map, in_copies):
        """A double conv block (conv, bn, relu) x 2; returns its output map."""
        convs = [(o, n) for o, n in zip(old_seq, new_seq) if isinstance(o, torch.nn.Conv2d)]
        norms = [(o, n) for o, n in zip(old_seq, new_seq) if isinstance(o, torch.nn.BatchNorm2d)]
        out_map = map_for(convs[0][0].out_channels, convs[0][1].out_channels)
        out_copies = copies(out_map, convs[0][0].out_channels)
        for old_conv, new_conv in convs:
            new_conv.weight.copy_(widen_conv(old_conv.weight, out_map, in_map, in_copies))
            if old_conv.bias is not None:
                new_conv.bias.copy_(old_conv.bias[out_map])
            in_map, in_copies = out_map, out_copies
        for old_bn, new_bn in norms:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(old_bn, name)[out_map])
            new_bn.num_batches_tracked.copy_(old_bn.num_batches_tracked)
        return out_map, out_copies

    with torch.no_grad():
        in_channels = narrow.downs[0][0].in_channels
        in_map, in_copies = torch.arange(in_channels), torch.ones(in_channels)
        for old_block, new_block in zip(narrow.downs, wide.downs):
            in_map, in_copies = copy_block(old_block, new_block, in_map, in_copies)
        for old_up, new_up in zip(narrow.ups, wide.ups):
            half_old = old_up.up.out_channels
            half_map = map_for(half_old, new_up.up.out_channels)
            new_up.up.weight.copy_(widen_conv(old_up.up.weight, half_map, in_map, in_copies, transposed=True))
            new_up.up.bias.copy_(old_up.up.bias[half_map])
            concat_map = torch.cat([half_map, half_map + half_old])  # [skip, up-sampled]
            concat_copies = torch.cat([copies(half_map, half_old)] * 2)
            in_map, in_copies = copy_block(old_up.conv, new_up.conv, concat_map, concat_copies)
        wide.head.weight.copy_(
            widen_conv(narrow.head.weight, torch.arange(narrow.head.out_channels), in_map, in_copies)
        )
        wide.head.bias.copy_(narrow.head.bias)


def add_noise(model: torch.nn.Module, relative: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                w = module.weight
                w.add_(torch.randn(w.shape, generator=generator) * w.std() * relative)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a unet training checkpoint (e.g. python/unetseg/assets/default_model.ckpt)")
    parser.add_argument("--base-width", type=int, required=True, help="the new base width (up to twice the old)")
    parser.add_argument("--noise", type=float, default=0.01, help="symmetry-breaking noise, relative (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["model"]["architecture"] != "unet":
        raise SystemExit(f"{args.checkpoint}: only unet checkpoints can be widened, got {ckpt['model']}")
    options = ckpt["model"]["options"]
    narrow = build_model("unet", **options)
    narrow.load_state_dict(ckpt["state_dict"])
    wide_options = {**options, "base_width": args.base_width}
    wide = build_model("unet", **wide_options)
    widen_unet(narrow.eval(), wide.eval(), args.seed)
    x = torch.rand(2, options["in_channels"], 96, 96)
    with torch.no_grad():
        error = (wide(x) - narrow(x)).abs().max().item()
    if error > 1e-3:
        raise SystemExit(f"the widened network differs from the checkpoint's by {error}")
    add_noise(wide, args.noise, args.seed)
    with torch.no_grad():
        noisy = (wide(x) - narrow(x)).abs().max().item()
    keep = ("format", "in_channels", "out_channels", "output_meaning", "normalisation", "diameter")
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out.update(model={"architecture": "unet", "options": wide_options}, state_dict=wide.state_dict())
    torch.save(out, args.output)
    params = sum(p.numel() for p in wide.parameters())
    print(
        f"wrote {args.output}: base width {options['base_width']} -> {args.base_width}, {params / 1e6:.2f} M "
        f"parameters; logits differ by {error:.1e} before the noise, {noisy:.1e} after"
    )


if __name__ == "__main__":
    main()
