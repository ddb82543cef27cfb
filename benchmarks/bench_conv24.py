"""unetseg::_conv3x3_c24, the CPU runner's convolution for 24 output channels
(csrc/runner/conv3x3_c24.h), against oneDNN's, on CPUs with AVX512-BF16: the default model's
full-resolution layers, where oneDNN's 16-lane kernels leave a quarter of their lanes unused. Both
forms the runner's graph uses: + bias + ReLU, and the split skip convolution's + add + ReLU, in
bfloat16 and float32. The script first checks both against a float64 convolution of the same
tensors, then times them in turn (medians).

    python benchmarks/bench_conv24.py [--sizes 512 1024] [--dtypes bfloat16 float32] [--repeats 9]
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
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if not has_avx512_bf16():
        sys.exit("bench_conv24 needs a CPU with AVX512-BF16")
    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(
        "| dtype | image | form | oneDNN ms | unetseg ms | GFLOP/s (oneDNN, unetseg) | oneDNN / unetseg "
        "| max error (oneDNN, unetseg) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.dtypes:
        for size in args.sizes:
            for form, times, errors in compare(DTYPES[name], size, args.repeats):
                flop = 2 * size * size * 24 * 24 * 9
                print(
                    f"| {name} | {size}² x 24 | {form} | {times['onednn'] * 1e3:.1f} | {times['unetseg'] * 1e3:.1f} | "
                    f"{flop / times['onednn'] / 1e9:.0f}, {flop / times['unetseg'] / 1e9:.0f} | "
                    f"{times['onednn'] / times['unetseg']:.2f}x | {errors[0]:.3g}, {errors[1]:.3g} |"
                )


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def compare(dtype: torch.dtype, size: int, repeats: int):
    """(form, median seconds of oneDNN and of the op, their largest errors) for both forms, each
    checked against a float64 convolution of the same tensors first."""
    pointwise = torch.ops.mkldnn._convolution_pointwise
    cl = torch.channels_last
    torch.manual_seed(0)
    x = torch.randn(1, 24, size, size).to(dtype).contiguous(memory_format=cl)
    other = torch.randn(1, 24, size, size).to(dtype).contiguous(memory_format=cl)
    weight = (torch.randn(24, 24, 3, 3) * 0.1).to(dtype)
    bias = torch.randn(24).to(dtype)
    exact = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    packed = torch.ops.unetseg._pack_conv3x3_c24(weight)
    w_cl = weight.contiguous(memory_format=cl)
    forms = {
        "conv + bias + ReLU": (
            lambda: pointwise(x, w_cl, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], None),
            lambda: torch.ops.unetseg._conv3x3_c24(x, packed, bias, None, True),
            torch.relu(exact),
        ),
        "conv + bias + add + ReLU": (
            lambda: pointwise.binary(x, other, w_cl, bias, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], None),
            lambda: torch.ops.unetseg._conv3x3_c24(x, packed, bias, other, True),
            torch.relu(exact + other.double()),
        ),
    }
    # one rounding of the output (8 bits of mantissa in bfloat16), or float32 sums' error
    bound = 2**-7 if dtype == torch.bfloat16 else 1e-5
    with torch.inference_mode():
        for form, (onednn, unetseg_op, reference) in forms.items():
            errors = [(f().double() - reference).abs().max().item() for f in (onednn, unetseg_op)]
            if max(errors) > bound * reference.abs().max().item():
                sys.exit(f"{form} at {size}²: errors {errors} above {bound:.3g} of the largest output")
            yield form, interleaved_median_seconds({"onednn": onednn, "unetseg": unetseg_op}, repeats), errors


if __name__ == "__main__":
    main()
