"""benchmarks/conv24_bf16.cpp, the candidate kernel for the 24-channel bfloat16 layers that
bench_conv24.py times against oneDNN: it must keep building, and give a float32 convolution's result
to within one bfloat16 rounding, tails of a row (widths around its 12-pixel blocks), single rows and
the `+ add` form included."""

import shutil
from pathlib import Path

import pytest
import torch

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build benchmarks/conv24_bf16.cpp")


@needs_gxx
def test_the_conv24_candidate_builds_and_matches_a_float32_convolution(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_conv24 import build, has_avx512_bf16

    ext = build()
    if not has_avx512_bf16():
        pytest.skip("built; running it needs a CPU with AVX512-BF16")
    torch.manual_seed(0)
    for n, ic, h, w in [(2, 24, 5, 13), (1, 48, 1, 12), (1, 24, 3, 25), (1, 24, 4, 1), (1, 2, 2, 11)]:
        x = torch.randn(n, ic, h, w).bfloat16().contiguous(memory_format=torch.channels_last)
        other = torch.randn(n, 24, h, w).bfloat16().contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(24, ic, 3, 3) * 0.2).bfloat16()
        bias = torch.randn(24).bfloat16()
        conv32 = torch.nn.functional.conv2d(x.float(), weight.float(), bias.float(), padding=1)
        packed = ext.pack(weight)
        for add, relu, reference in [
            (None, True, torch.relu(conv32)),
            (None, False, conv32),
            (other, True, torch.relu(conv32 + other.float())),
        ]:
            got = ext.conv(x, packed, bias, add, relu)
            assert got.shape == reference.shape and got.is_contiguous(memory_format=torch.channels_last)
            bound = reference.abs().max().item() * 2**-7
            error = (got.float() - reference).abs().max().item()
            assert error <= bound, f"{(n, ic, h, w)}, add={add is not None}, relu={relu}: error {error} > {bound}"
