"""The training batch norm for channels-last CPU tensors (models/batch_norm.py) against nn.BatchNorm2d:
outputs, gradients of the input, weight and bias, running statistics and the batch count."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unetseg.models import UNet
from unetseg.models.batch_norm import ChannelsLastBatchNorm2d, with_channels_last_batch_norm


def _pair(channels: int, dtype=torch.float64, momentum=0.1):
    torch.manual_seed(channels)
    native = torch.nn.BatchNorm2d(channels, momentum=momentum).to(dtype)
    with torch.no_grad():
        native.weight.normal_()
        native.bias.normal_()
        native.running_mean.normal_()
        native.running_var.uniform_(0.5, 2.0)
    fast = torch.nn.BatchNorm2d(channels, momentum=momentum).to(dtype)
    fast.load_state_dict(native.state_dict())
    with_channels_last_batch_norm(torch.nn.Sequential(fast))
    assert type(fast) is ChannelsLastBatchNorm2d
    return native, fast


def _step(module, x, grad):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    return {
        "output": y,
        "grad input": x.grad,
        "grad weight": module.weight.grad,
        "grad bias": module.bias.grad,
        "running mean": module.running_mean,
        "running var": module.running_var,
        "batches": module.num_batches_tracked,
    }


@given(
    channels=st.integers(1, 50),
    batch=st.integers(1, 4),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    offset=st.floats(-20, 20),
    scale=st.floats(0.01, 50),
)
def test_equals_torchs_batch_norm_in_float64(channels, batch, height, width, offset, scale):
    if batch * height * width == 1:
        return  # torch refuses a training batch norm of one value per channel
    native, fast = _pair(channels)
    x = (torch.randn(batch, channels, height, width, dtype=torch.float64) * scale + offset).contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn_like(x)
    want, got = _step(native, x, grad), _step(fast, x, grad)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9, msg=name)
    assert got["output"].is_contiguous(memory_format=torch.channels_last)
    assert got["grad input"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", [24, 12, 40])
def test_bfloat16_within_bfloat16_rounding_of_torchs(channels):
    """Under autocast the input is bfloat16 and the statistics float32, as in torch's own kernel."""
    native, fast = _pair(channels, torch.float32)
    x = (torch.randn(8, channels, 32, 32) * 3 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    want, got = _step(native, x, grad), _step(fast, x, grad)
    assert got["output"].dtype == got["grad input"].dtype == torch.bfloat16
    for name in want:
        torch.testing.assert_close(got[name].float(), want[name].float(), rtol=2**-6, atol=2**-6, msg=name)


def test_other_calls_are_torchs_own():
    """Eval mode, NCHW input and whole blocks of 16 channels go to nn.BatchNorm2d unchanged (bit for bit)."""
    for channels, layout, training in (
        (24, torch.channels_last, False),
        (24, torch.contiguous_format, True),
        (32, torch.channels_last, True),
    ):
        native, fast = _pair(channels, torch.float32)
        native.train(training)
        fast.train(training)
        x = torch.randn(2, channels, 8, 8).contiguous(memory_format=layout)
        grad = torch.randn_like(x)
        want, got = _step(native, x, grad), _step(fast, x, grad)
        for name in want:
            assert torch.equal(got[name], want[name]), (channels, layout, training, name)


def test_the_model_keeps_its_modules_parameters_and_state_dict():
    model = UNet(in_channels=3, out_channels=2, base_width=24, depth=2, batch_norm=True)
    before = model.state_dict()
    parameters = list(model.parameters())
    with_channels_last_batch_norm(model)
    assert list(model.parameters()) == parameters
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(type(m) is ChannelsLastBatchNorm2d for m in model.modules())


# unetseg::_batch_norm_input_grad, the backward's last pass: (grad * a + d) + x * b per column, each
# product and sum rounded in the dtype's opmath type (float; double for double), then to the dtype.
_OPMATH = {torch.bfloat16: np.float32, torch.float16: np.float32, torch.float32: np.float32, torch.float64: np.float64}
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _plain_input_grad(grad, x, a, b, d):
    t = _OPMATH[x.dtype]
    g, v = (y.to(torch.float64).numpy().astype(t) for y in (grad, x))
    a, b, d = (c.to(torch.float64).numpy().astype(t) for c in (a, b, d))
    return torch.from_numpy((g * a + d) + v * b).to(x.dtype)


def _input_grad_case(dtype, rows, columns, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    grad, x = (torch.randn(rows, columns, generator=generator, dtype=torch.float64).mul(scale).to(dtype) for _ in "gx")
    opmath = torch.promote_types(dtype, torch.float32)
    a, b, d = (torch.randn(columns, generator=generator, dtype=torch.float64).to(opmath) for _ in "abd")
    return grad, x, a, b, d


@given(
    dtype=st.sampled_from(list(_OPMATH)),
    rows=st.integers(0, 70),
    columns=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
)
def test_input_grad_equals_the_plain_expression_bit_for_bit(dtype, rows, columns, seed, scale):
    grad, x, a, b, d = _input_grad_case(dtype, rows, columns, seed, scale)
    got = torch.ops.unetseg._batch_norm_input_grad(grad, x, a, b, d)
    want = _plain_input_grad(grad, x, a, b, d)
    assert got.dtype == dtype and got.shape == (rows, columns)
    bits = _BITS[dtype.itemsize]
    assert torch.equal(got.view(bits), want.view(bits))


def test_input_grad_of_strided_views_and_non_finite_values():
    grad, x, a, b, d = _input_grad_case(torch.bfloat16, 64, 96, 3, 1.0)
    grad, x = grad[::2, ::2], x[1::2, 1::2]  # (32, 48) views with strides of both dimensions
    x[0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    got = torch.ops.unetseg._batch_norm_input_grad(grad, x, a[:48], b[:48], d[:48])
    want = _plain_input_grad(grad, x, a[:48], b[:48], d[:48])
    assert torch.equal(got.isnan(), want.isnan()) and got[0, 2].isnan()
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))


@pytest.mark.parametrize(
    "case, message",
    [
        (lambda g, x, a, b, d: (g, x[:-1], a, b, d), "one shape"),
        (lambda g, x, a, b, d: (g, x.float(), a, b, d), "one shape"),
        (lambda g, x, a, b, d: (g.view(-1), x.view(-1), a, b, d), "one shape"),
        (lambda g, x, a, b, d: (g.int(), x.int(), a, b, d), "floating"),
        (lambda g, x, a, b, d: (g, x, a[:-1], b, d), "coefficients of 8 columns in Float"),
        (lambda g, x, a, b, d: (g, x, a, b.double(), d), "coefficients of 8 columns in Float"),
    ],
)
def test_input_grad_names_what_it_received(case, message):
    args = case(*_input_grad_case(torch.bfloat16, 4, 8, 0, 1.0))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.unetseg._batch_norm_input_grad(*args)


def test_input_grad_opcheck():
    torch.library.opcheck(
        torch.ops.unetseg._batch_norm_input_grad.default, _input_grad_case(torch.bfloat16, 6, 48, 1, 1.0)
    )
    torch.library.opcheck(
        torch.ops.unetseg._batch_norm_input_grad.default, _input_grad_case(torch.float64, 5, 3, 2, 1.0)
    )
