"""Fused CPU kernels (numba) for BatchNorm in training, then ReLU, with or without a 2x2 stride-2 max pool
between them, on bf16 channels-last activations: the blocks of fast-cnn and cnn94 under bf16 autocast.

Why: in cnn94's bf16 step the convolutions are half the time; the rest is BatchNorm, pooling and ReLU,
each a memory-bound pass over the activations that PyTorch runs one at a time (BatchNorm alone reads them
three times forward and backward, the pool's backward writes a full-size tensor of zeros first). Here a
block is two passes forward and two backward:

    forward   statistics of x                                -> mean, 1/std, running statistics
              out = relu(pool(bf16(x * alpha + beta)))       -> out, and for a pool the winner of each window
    backward  sums of g and g * xhat over the cells that got a gradient (for a pool: the winners only)
              dx = x * k1 + k0 + (g * alpha where the cell got one)

with alpha = weight / std and beta = bias - mean * alpha (BatchNorm's own factoring); the passes are in
norm_passes.py, this module is their PyTorch side (the autograd Function, its plain form, where it
applies). Measured on cnn94's
blocks (Zen 5, bf16, forward + backward, benchmarks/norm_blocks.py, README "Fused BatchNorm blocks"): the
pooled ones 2.5-3.9x faster than PyTorch's three layers, the others 1.2-1.6x; the whole step 1.27-1.29x.

What it equals: `Reference`, the same arithmetic in PyTorch operations, bit for bit (tested). Against
PyTorch's nn.BatchNorm2d the statistics differ in their last bits (summed in another order and
precision), so the output can differ by one bf16 step where a value sits on a rounding boundary; the
pool compares the rounded bf16 values and the first maximum wins, as PyTorch's max_pool2d on BatchNorm's
bf16 output does. The result is independent of the thread count (norm_passes.py says how).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn

from fmnist.nets.kernels import fused, norm_passes
from fmnist.nets.kernels.norm_passes import gradient_factors, image_order_sums, normalise


def _bits(t: torch.Tensor) -> np.ndarray:
    """A bf16 (N, C, H, W) channels-last tensor as its (N, H, W, C) uint16 bits: a view, no copy."""
    return t.view(torch.int16).numpy().transpose(0, 2, 3, 1).view(np.uint16)


def _parameters(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    c = bn.num_features
    return (
        bn.weight.detach().numpy() if bn.weight is not None else np.ones(c, np.float32),
        bn.bias.detach().numpy() if bn.bias is not None else np.zeros(c, np.float32),
    )


def _statistics_args(bn: nn.BatchNorm2d) -> tuple:
    bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d counts
    return float(bn.eps), float(bn.momentum), bn.running_mean.numpy(), bn.running_var.numpy()  # updated in place


def _parameter_grads(ctx, grads: torch.Tensor) -> tuple:
    """BatchNorm's weight and bias gradients, where they are asked for."""
    return grads[0] if ctx.needs_input_grad[1] else None, grads[1] if ctx.needs_input_grad[2] else None


NO_WINNERS, NO_CODES = np.empty((0, 0, 0, 0), np.uint16), np.empty((0, 0, 0, 0), np.int8)


class NormReLU(torch.autograd.Function):
    """relu([max_pool2d(] batch_norm(x) [, 2)]) on bf16 channels-last x; `bn` gives eps, momentum, the buffers."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn: nn.BatchNorm2d, pool: bool):
        n, c, h, w = x.shape
        side = (h // 2, w // 2) if pool else (h, w)
        out = torch.empty(n, c, *side, dtype=torch.bfloat16, memory_format=torch.channels_last)
        winner = np.empty((n, *side, c), np.uint16) if pool else NO_WINNERS  # x at each window's winner
        code = np.empty((n, *side, c), np.int8) if pool else NO_CODES  # its cell: 1 byte, not int64 indices
        factors = np.empty((4, c), np.float32)
        fused.use_torch_threads()
        norm_passes.forward(_bits(x), *_parameters(bn), *_statistics_args(bn), pool, _bits(out), winner, code, factors)
        ctx.save_for_backward(x, out)
        ctx.saved = (pool, code, winner, factors)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x, out), (pool, code, winner, factors) = ctx.saved_tensors, ctx.saved
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        parameter_grads = torch.empty(2, x.shape[1])
        fused.use_torch_threads()
        norm_passes.backward(
            _bits(x), _bits(out), code, winner, _bits(grad), factors, pool, _bits(dx), parameter_grads.numpy()
        )
        return dx, *_parameter_grads(ctx, parameter_grads), None, None


def _ordered_sums(values: torch.Tensor, weighted: torch.Tensor) -> np.ndarray:
    """(2, C) float64 per-channel sums of two float32 (N, C, H, W) tensors, added in the kernels' order:
    down each (column, channel) lane in float32, across the columns in float64, then image by image."""
    n, c, h, w = values.shape
    partial = []
    for v in (values, weighted):
        lanes = torch.zeros(n, c, w)
        for i in range(h):
            lanes = lanes + v[:, :, i, :]
        total = torch.zeros(n, c, dtype=torch.float64)
        for j in range(w):
            total = total + lanes[:, :, j].double()
        partial.append(total)
    return image_order_sums(torch.stack(partial, 1).numpy())  # (N, 2, C) -> (2, C)


class Reference(torch.autograd.Function):
    """NormReLU's plain form: the same arithmetic in PyTorch operations (the tests hold the kernels to it)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn: nn.BatchNorm2d, pool: bool):
        n, c, h, w = x.shape
        wide = x.float()
        factors = np.empty((4, c), np.float32)
        normalise(_ordered_sums(wide, wide * wide), n * h * w, *_parameters(bn), *_statistics_args(bn), factors)
        _mean, _invstd, alpha, beta = torch.from_numpy(factors).view(4, 1, c, 1, 1)
        normed = (wide * alpha + beta).bfloat16()
        normed, indices = nn.functional.max_pool2d_with_indices(normed, 2) if pool else (normed, None)
        out = normed.relu()
        ctx.save_for_backward(x, out, indices)
        ctx.factors = factors
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out, indices = ctx.saved_tensors
        c, wide = x.shape[1], x.float()
        mean, invstd, alpha, _beta = torch.from_numpy(ctx.factors).view(4, 1, c, 1, 1)
        g = torch.where(out > 0, grad.float(), 0.0)  # on the pooled grid, for a pool
        at = wide if indices is None else wide.flatten(2).gather(2, indices.flatten(2)).view_as(indices)  # winners
        sums = _ordered_sums(g, g * ((at - mean) * invstd))
        k1, k0 = (torch.from_numpy(v).view(1, c, 1, 1) for v in gradient_factors(sums, x.numel() // c, ctx.factors))
        if indices is not None:  # to each window's winner, zero elsewhere
            g = torch.ops.aten.max_pool2d_with_indices_backward(g, wide, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
        dx = ((wide * k1 + k0) + g * alpha).bfloat16()
        return dx, *_parameter_grads(ctx, torch.from_numpy(np.stack([sums[1], sums[0]]).astype(np.float32))), None, None


def norm_relu(x: torch.Tensor, bn: nn.BatchNorm2d, pool: bool, plain: bool = False) -> torch.Tensor:
    """relu(max_pool2d(bn(x), 2)) with `pool`, else relu(bn(x)), for bn in training mode and x as `applicable`
    says: fused, or with `plain` its plain form."""
    return (Reference if plain else NormReLU).apply(x, bn.weight, bn.bias, bn, pool)


def applicable(x: torch.Tensor, bn: nn.Module, pool: nn.Module | None) -> bool:
    """Whether the fused block can replace `bn`, `pool` (a 2x2 stride-2 max pool, or None) and a ReLU on x: a
    BatchNorm2d in training with batch statistics and an exponential running average, bf16 channels-last x
    on the CPU (of even height and width for the pool), outside ONNX/JIT tracing, the kernels working here."""
    pooled = pool is None or (
        isinstance(pool, nn.MaxPool2d)
        and not pool.ceil_mode
        and _pair(pool.kernel_size) == _pair(pool.stride) == (2, 2)
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and x.shape[-1] % 2 == 0
        and x.shape[-2] % 2 == 0
    )
    return (
        isinstance(bn, nn.BatchNorm2d)
        and bn.training
        and bn.track_running_stats
        and bn.momentum is not None
        and pooled
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and available()
    )


@functools.cache
def available() -> bool:
    """Whether these kernels compile and run here (else PyTorch's layers run): once on a tiny block, gradients
    on (the first call may come from inside inference mode)."""
    if fused.UNAVAILABLE:
        warnings.warn(
            f"fmnist: the fused BatchNorm kernels are unavailable ({fused.UNAVAILABLE}); using PyTorch's layers",
            stacklevel=2,
        )
        return False
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(2, 1, 2, 2, dtype=torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
            for pool in (False, True):
                norm_relu(x, nn.BatchNorm2d(1), pool).sum().backward()
        return True
    except Exception as exc:  # numba's errors have no common base; any failure means "use PyTorch"
        warnings.warn(
            f"fmnist: the fused BatchNorm kernels are unavailable ({exc}); using PyTorch's layers", stacklevel=2
        )
        return False


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
