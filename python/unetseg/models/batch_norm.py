"""Batch norm for training on the CPU in channels-last layout, at any channel count.

torch's channels-last batch-norm kernels on the CPU are fast only when the channel count fills
whole 16-channel blocks: at 24 channels (the default model's first level) a bfloat16 forward and
backward of 8 x 192² took 22-30 ms against 4-6 ms at 16 or 32 channels (torch 2.13, Intel Xeon, 2
threads; benchmarks/README.md). :class:`ChannelsLastBatchNorm2d` computes the same training step
from passes that are fast at any channel count: a channels-last (N, C, H, W) tensor is, in memory,
an (N*H*W, C) matrix, which read as (N*H*W/k, k*C) has k*C channels in whole blocks; each channel's
statistics are combined from its k columns, and the backward pass is two per-channel sums and one
affine combination of the gradient and the input (``unetseg::_batch_norm_input_grad``, one pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Channels per vector block of torch's channels-last batch-norm kernels.
_BLOCK = 16


def _columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as its (N*H*W/k, k*C) matrix (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w // k, k * c)


class _BatchNormTraining(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, k: int):
        c = x.shape[1]
        count = x.numel() // c
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        # per-column mean and biased variance (float32 for bfloat16 input, as torch's own kernel keeps)
        column_mean, column_var = torch.batch_norm_update_stats(
            _columns(x, k), torch.zeros(k * c, dtype=stat_dtype), torch.ones(k * c, dtype=stat_dtype), 0.0
        )
        column_mean, column_var = column_mean.view(k, c), column_var.view(k, c)
        mean = column_mean.mean(0)
        var = (column_var + (column_mean - mean) ** 2).mean(0)  # the k columns hold equal counts
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * count / max(count - 1, 1)).to(running_var.dtype), momentum)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.k = k
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        k, c = ctx.k, x.shape[1]
        count = x.numel() // c
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_columns, x_columns = _columns(grad, k), _columns(x, k)
        # sum(grad * x_hat) and sum(grad) per column: the gradients of weight and bias
        _, column_gw, column_gb = torch.ops.aten.native_batch_norm_backward(
            grad_columns, x_columns, None, None, None, mean.repeat(k), invstd.repeat(k), True, 0.0, [False, True, True]
        )
        grad_weight, grad_bias = column_gw.view(k, c).sum(0), column_gb.view(k, c).sum(0)
        # dx = w * invstd * (grad - sum(grad) / M - x_hat * sum(grad * x_hat) / M) = a * grad + b * x + d
        a = weight * invstd
        b = -a * invstd * grad_weight / count
        d = -a * grad_bias / count - b * mean
        # in the statistics' dtype (float32 for bfloat16 input), the kernel's arithmetic
        a, b, d = (coefficient.to(mean.dtype).repeat(k) for coefficient in (a, b, d))
        dx = torch.ops.unetseg._batch_norm_input_grad(grad_columns, x_columns, a, b, d)
        n, _, h, w = x.shape
        grad_x = dx.view(n, h, w, c).permute(0, 3, 1, 2)
        return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None, None, None, None


class ChannelsLastBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the same parameters, buffers and results, whose training step on
    channels-last CPU tensors with a channel count that is not a multiple of 16 runs through
    :class:`_BatchNormTraining`; every other call is ``nn.BatchNorm2d``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _BLOCK // math.gcd(self.num_features, _BLOCK)
        if (
            k == 1
            or not (self.training and self.affine and self.track_running_stats)
            or self.momentum is None
            or not x.is_cpu
            or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last)
            or (x.numel() // self.num_features) % k
        ):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return _BatchNormTraining.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps, k
        )


def with_channels_last_batch_norm(model: nn.Module) -> nn.Module:
    """Makes every ``nn.BatchNorm2d`` of `model` a :class:`ChannelsLastBatchNorm2d` in place (the same
    module objects, parameters and buffers: an optimizer or state dict made before still holds
    them); returns `model`."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = ChannelsLastBatchNorm2d  # a subclass that adds no state, only forward
    return model
