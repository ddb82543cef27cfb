"""unetseg::_conv3x3_c24, the CPU runner's 3x3 convolution for 24 output channels on CPUs with
AVX512-BF16 and no AMX (csrc/runner/conv3x3_c24.h), bit for bit against a plain reference that does
its arithmetic in the order the header states: the sum starts at the bias, then per tap inside the
image, in bfloat16 per input pair the odd product and then the even one, each added with one float32
rounding (vdpbf16ps), in float32 per input channel a fused multiply-add; + add, ReLU, and the
output's rounding. The values keep every product and sum normal (vdpbf16ps treats denormals as
zero), and in float32 let float64 hold a multiply-add exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unetseg  # noqa: F401  (registers the unetseg ops)

HAS_AVX512_BF16 = bool(torch._C._cpu._get_cpu_capability().get("avx512_bf16"))
needs_avx512_bf16 = pytest.mark.skipif(not HAS_AVX512_BF16, reason="unetseg::_conv3x3_c24 needs AVX512-BF16")


def bfloat16_values(rng: np.random.Generator, shape) -> torch.Tensor:
    """bfloat16 values of both signs with exponents in [-20, 20] and random mantissas, some zeros
    (+0 and -0)."""
    sign = rng.choice([-1.0, 1.0], shape)
    value = sign * rng.uniform(1, 2, shape) * 2.0 ** rng.integers(-20, 21, shape)
    value[rng.random(shape) < 0.1] = 0.0
    value[rng.random(shape) < 0.05] = -0.0
    return torch.from_numpy(value.astype(np.float32)).bfloat16()


def float32_values(rng: np.random.Generator, shape) -> torch.Tensor:
    """float32 values with 16 significant bits and exponents in [-2, 2], some zeros: each product
    has up to 32 bits, more than float32 holds (a fused multiply-add is not a multiply and an add),
    and every sum is a multiple of 2^-34 below 2^16, which float64 holds exactly."""
    sign = rng.choice([-1.0, 1.0], shape)
    value = sign * (1 + rng.integers(0, 2**15, shape) / 2**15) * 2.0 ** rng.integers(-2, 3, shape)
    value[rng.random(shape) < 0.1] = 0.0
    value[rng.random(shape) < 0.05] = -0.0
    return torch.from_numpy(value.astype(np.float32))


def reference(x, weight, bias, add, relu):
    """The op's arithmetic in numpy, one float32 rounding an operation, in the header's order; the
    output in x's dtype."""
    bfloat16 = x.dtype == torch.bfloat16
    x = x.float().permute(0, 2, 3, 1).numpy()  # NHWC
    w = weight.float().numpy()  # [24, ic, 3, 3]
    n, h, width, ic = x.shape
    padded = np.zeros((n, h, width + 2, ic), np.float32)  # +0 columns either side
    padded[:, :, 1:-1] = x
    total = np.empty((n, h, width, 24), np.float32)
    total[...] = bias.float().numpy() if bias is not None else np.float32(0)
    # bfloat16: odd channel, then even, two float32 additions of exact products; float32: a fused
    # multiply-add a channel, exact in float64 for float32_values, then rounded once
    order = [c for pair in range(ic // 2) for c in (2 * pair + 1, 2 * pair)] if bfloat16 else range(ic)
    for ky in range(3):
        rows = [y for y in range(h) if 0 <= y + ky - 1 < h]  # taps outside the image are skipped
        if not rows:
            continue
        source = padded[:, [y + ky - 1 for y in rows]]
        for kx in range(3):
            s = source[:, :, kx : kx + width]
            for c in order:
                if bfloat16:
                    total[:, rows] = total[:, rows] + s[..., c, None] * w[:, c, ky, kx]
                else:
                    fma = total[:, rows].astype(np.float64) + s[..., c, None].astype(np.float64) * w[:, c, ky, kx]
                    total[:, rows] = fma.astype(np.float32)
    if add is not None:
        total = total + add.float().permute(0, 2, 3, 1).numpy()
    if relu:
        total = np.where(total > 0, total, np.float32(0))
    out = torch.from_numpy(np.ascontiguousarray(total)).permute(0, 3, 1, 2)
    return out.bfloat16() if bfloat16 else out


@needs_avx512_bf16
@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 2),
    pairs=st.integers(1, 26),
    h=st.integers(1, 5),
    width=st.integers(1, 30),
    with_bias=st.booleans(),
    with_add=st.booleans(),
    relu=st.booleans(),
    channels_last=st.booleans(),
    dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    odd=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_c24_convolution_is_its_reference_bit_for_bit(
    n, pairs, h, width, with_bias, with_add, relu, channels_last, dtype, odd, seed
):
    rng = np.random.default_rng(seed)
    ic = 2 * pairs - (odd and dtype == torch.float32)  # float32 takes any channel count
    values = bfloat16_values if dtype == torch.bfloat16 else float32_values
    x = values(rng, (n, ic, h, width))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = values(rng, (24, ic, 3, 3))
    bias = values(rng, (24,)) if with_bias else None
    add = values(rng, (n, 24, h, width)) if with_add else None
    packed = torch.ops.unetseg._pack_conv3x3_c24(weight)
    got = torch.ops.unetseg._conv3x3_c24(x, packed, bias, add, relu)
    want = reference(x, weight, bias, add, relu)
    assert got.dtype == dtype and got.shape == (n, 24, h, width)
    assert got.is_contiguous(memory_format=torch.channels_last)
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert torch.equal(got.view(bits), want.contiguous(memory_format=torch.channels_last).view(bits))


@needs_avx512_bf16
def test_the_c24_convolution_rounds_the_odd_product_first_then_the_even_one():
    """Random values rarely tell orders of float32 rounding apart once the result is rounded to
    bfloat16, so one pixel whose products do: the bias 1, then the pairs (channel 1, 0) and (3, 2)
    with products 2^-8, 2^-23, 2^-24 and -2^-23. Odd first, each with its own rounding, the sum ends
    above 1 + 2^-8, the tie between two bfloat16 values, and rounds up; the even product first, or
    a pair's two products summed first, ends on the tie and rounds to 1. Odd first is Intel's
    pseudocode for vdpbf16ps and what AMD's Zen 4, the CPU the runner takes the op on, computes; on
    other CPUs (the op runs there only when called) either order is accepted."""
    weight = torch.zeros(24, 4, 3, 3)
    weight[:, :, 1, 1] = torch.tensor([2.0**-23, 2.0**-8, -(2.0**-23), 2.0**-24])
    x, bias = torch.ones(1, 4, 1, 1).bfloat16(), torch.ones(24).bfloat16()
    got = torch.ops.unetseg._conv3x3_c24(x, torch.ops.unetseg._pack_conv3x3_c24(weight.bfloat16()), bias, None, False)
    odd_first = torch.full((1, 24, 1, 1), 1 + 2**-7).bfloat16()
    assert torch.equal(reference(x, weight.bfloat16(), bias, None, False), odd_first)
    if str(torch._C._cpu._get_cpu_capability().get("cpu_name", "")).startswith("AMD"):
        assert torch.equal(got, odd_first)
    else:
        assert torch.equal(got, odd_first) or torch.equal(got, torch.ones_like(odd_first))


@needs_avx512_bf16
def test_the_c24_convolution_of_real_sized_values_is_a_float32_convolution_to_one_rounding():
    """The arithmetic the reference replays is a convolution: against torch's float32 one."""
    torch.manual_seed(0)
    x = torch.randn(1, 48, 9, 31).bfloat16()
    weight, bias = (torch.randn(24, 48, 3, 3) * 0.2).bfloat16(), torch.randn(24).bfloat16()
    want = torch.nn.functional.conv2d(x.float(), weight.float(), bias.float(), padding=1)
    got = torch.ops.unetseg._conv3x3_c24(x, torch.ops.unetseg._pack_conv3x3_c24(weight), bias, None, False)
    assert (got.float() - want).abs().max() <= want.abs().max() * 2**-7


@needs_avx512_bf16
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_c24_convolution_of_a_cropped_view_is_that_of_its_copy(dtype):
    """A valid-padding U-Net crops its skips: the op gets strided views, and reads them as copies."""
    torch.manual_seed(0)
    whole = torch.randn(2, 24, 20, 30).to(dtype).contiguous(memory_format=torch.channels_last)
    view = whole[:, :, 3:-2, 5:-4]
    weight, bias = (torch.randn(24, 24, 3, 3) * 0.2).to(dtype), torch.randn(24).to(dtype)
    add = torch.randn(2, 24, 21, 15).to(dtype).transpose(2, 3)  # strided too
    packed = torch.ops.unetseg._pack_conv3x3_c24(weight)
    got = torch.ops.unetseg._conv3x3_c24(view, packed, bias, add, True)
    want = torch.ops.unetseg._conv3x3_c24(view.contiguous(), packed, bias, add.contiguous(), True)
    assert torch.equal(got, want)


@needs_avx512_bf16
def test_the_c24_convolution_of_an_empty_batch_is_empty():
    packed = torch.ops.unetseg._pack_conv3x3_c24(torch.zeros(24, 2, 3, 3, dtype=torch.bfloat16))
    assert torch.ops.unetseg._conv3x3_c24(
        torch.zeros(0, 2, 4, 4, dtype=torch.bfloat16), packed, None, None, True
    ).shape == (0, 24, 4, 4)


def test_the_c24_ops_refuse_what_they_do_not_compute():
    with pytest.raises(RuntimeError, match=r"in float32, or in bfloat16 with an even C, got Double"):
        torch.ops.unetseg._pack_conv3x3_c24(torch.zeros(24, 2, 3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"with an even C, got BFloat16 \[24, 3, 3, 3\]"):
        torch.ops.unetseg._pack_conv3x3_c24(torch.zeros(24, 3, 3, 3, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"got Float \[16, 2, 3, 3\]"):
        torch.ops.unetseg._pack_conv3x3_c24(torch.zeros(24 - 8, 2, 3, 3))
    if not HAS_AVX512_BF16:
        return
    packed = torch.ops.unetseg._pack_conv3x3_c24(torch.zeros(24, 2, 3, 3, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="packed weights .* for 2 input channels in Float expected, got BFloat16"):
        torch.ops.unetseg._conv3x3_c24(torch.zeros(1, 2, 4, 4), packed, None, None, True)
    with pytest.raises(RuntimeError, match="with an even C, got BFloat16 \\[1, 3, 4, 4\\]"):
        torch.ops.unetseg._conv3x3_c24(torch.zeros(1, 3, 4, 4, dtype=torch.bfloat16), packed, None, None, True)
    with pytest.raises(RuntimeError, match="packed weights .* for 4 input channels in BFloat16 expected"):
        torch.ops.unetseg._conv3x3_c24(torch.zeros(1, 4, 4, 4, dtype=torch.bfloat16), packed, None, None, True)
    with pytest.raises(
        RuntimeError, match="`add` of the output's shape .* in BFloat16 expected, got BFloat16 \\[1, 24, 4, 5\\]"
    ):
        x = torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16)
        torch.ops.unetseg._conv3x3_c24(x, packed, None, torch.zeros(1, 24, 4, 5, dtype=torch.bfloat16), True)
