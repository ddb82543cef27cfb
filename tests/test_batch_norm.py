"""The training batch norm for channels-last CPU tensors (models/batch_norm.py) against nn.BatchNorm2d:
outputs, gradients of the input, weight and bias, running statistics and the batch count."""

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
