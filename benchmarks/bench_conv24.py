"""unetseg::_conv3x3_c24, the CPU runner's bfloat16 convolution for 24 output channels
(csrc/runner/conv3x3_c24.h), against oneDNN's, on CPUs with AVX512-BF16: the default model's
full-resolution layers, where oneDNN's 16-lane kernels leave a quarter of their lanes unused. Both
forms the runner's graph uses: + bias + ReLU, and the split skip convolution's + add + ReLU. The
script first checks both against a float32 convolution of the same bfloat16 tensors, then times
them in turn (medians).

    python benchmarks/bench_conv24.py [--sizes 512 1024] [--repeats 9]
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import cpu_name, interleaved_median_seconds

import unetseg  # noqa: F401  (the op, and its allocator: large tensors in cached huge-page mappings, as in the runner)


def has_avx512_bf16() -> bool:
    """Whether this CPU runs the op (ATen's cpuinfo, as the runner reads it)."""
    return bool(torch._C._cpu._get_cpu_capability().get("avx512_bf16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if not has_avx512_bf16():
        sys.exit("bench_conv24 needs a CPU with AVX512-BF16")
    torch.set_num_threads(args.threads)
    pointwise = torch.ops.mkldnn._convolution_pointwise
    cl = torch.channels_last
    print(f"# {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(
        "| image | form | oneDNN ms | unetseg ms | GFLOP/s (oneDNN, unetseg) | oneDNN / unetseg "
        "| max error (oneDNN, unetseg) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    torch.manual_seed(0)
    for size in args.sizes:
        x = torch.randn(1, 24, size, size).bfloat16().contiguous(memory_format=cl)
        other = torch.randn(1, 24, size, size).bfloat16().contiguous(memory_format=cl)
        weight = (torch.randn(24, 24, 3, 3) * 0.1).bfloat16()
        bias = torch.randn(24).bfloat16()
        conv32 = torch.nn.functional.conv2d(x.float(), weight.float(), bias.float(), padding=1)
        packed = torch.ops.unetseg._pack_conv3x3_c24(weight)
        w_cl = weight.contiguous(memory_format=cl)
        forms = {
            "conv + bias + ReLU": (
                lambda: pointwise(x, w_cl, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], None),
                lambda: torch.ops.unetseg._conv3x3_c24(x, packed, bias, None, True),
                torch.relu(conv32),
            ),
            "conv + bias + add + ReLU": (
                lambda: pointwise.binary(x, other, w_cl, bias, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], None),
                lambda: torch.ops.unetseg._conv3x3_c24(x, packed, bias, other, True),
                torch.relu(conv32 + other.float()),
            ),
        }
        flop = 2 * size * size * 24 * 24 * 9
        with torch.inference_mode():
            for form, (onednn, kernel, reference) in forms.items():
                errors = [(f().float() - reference).abs().max().item() for f in (onednn, kernel)]
                # bfloat16 outputs: a rounding of the result (8 bits of mantissa) is the tolerance
                bound = reference.abs().max().item() * 2**-7
                if max(errors) > bound:
                    sys.exit(f"{form} at {size}²: errors {errors} above one bfloat16 rounding ({bound:.3g})")
                t = interleaved_median_seconds({"onednn": onednn, "kernel": kernel}, args.repeats)
                print(
                    f"| {size}² x 24 | {form} | {t['onednn'] * 1e3:.1f} | {t['kernel'] * 1e3:.1f} | "
                    f"{flop / t['onednn'] / 1e9:.0f}, {flop / t['kernel'] / 1e9:.0f} | "
                    f"{t['onednn'] / t['kernel']:.2f}x | {errors[0]:.3g}, {errors[1]:.3g} |"
                )


if __name__ == "__main__":
    main()
