"""Fused CPU kernels (numba) for BatchNorm in training, then ReLU, with or without a 2x2 stride-2 max pool
between them, on bf16 channels-last activations: the blocks of fast-cnn and cnn94 under bf16 autocast.

Why: in cnn94's bf16 step the convolutions are half the time; the rest is BatchNorm, pooling and ReLU,
each a memory-bound pass over the activations that PyTorch runs one at a time (BatchNorm alone reads them
three times forward and backward, the pool's backward writes a full-size tensor of zeros first). Here a
block is two passes forward and two backward:

    forward   statistics of x (per image, float64)          -> mean, 1/std, running statistics
              out = relu(pool(bf16(x * alpha + beta)))       -> out, and for a pool the winner of each window
    backward  sums of g and g * xhat over the cells that got a gradient (for a pool: the winners only)
              dx = x * k1 + k0 + (g * alpha where the cell got one)

with alpha = weight / std and beta = bias - mean * alpha (BatchNorm's own factoring). Measured on cnn94's
blocks (Zen 5, bf16, forward + backward, benchmarks/norm_blocks.py): the pooled ones 2.5x and 2.3x faster
than PyTorch's three layers, the 14x14 one without a pool 1.26x, the 7x7 ones 0.88x (the call's fixed cost);
the whole step 1.15-1.26x.

What it equals: `Reference`, the same arithmetic in PyTorch operations, bit for bit (tested). Against
PyTorch's nn.BatchNorm2d the statistics differ in their last bits (float64 sums here, PyTorch's own
order there), so the output can differ by one bf16 step where a value sits on a rounding boundary; the
pool compares the rounded bf16 values and the first maximum wins, as PyTorch's max_pool2d on BatchNorm's
bf16 output does. Per-image partial sums added in image order make the result independent of the thread
count. bf16 values are float32's upper 16 bits, so they load and store through bit casts (round to
nearest even, as PyTorch's bf16).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn

from fmnist import kernels

if kernels.numba:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _float_from_bits(typingctx, bits):  # the same 32 bits read as a float32: no conversion, no memory
        return types.float32(types.uint32), lambda context, builder, sig, args: builder.bitcast(args[0],
                                                                                              ir.FloatType())

    @intrinsic
    def _bits_from_float(typingctx, value):
        return types.uint32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0],
                                                                                              ir.IntType(32))

ZERO = np.float32(0.0)
DEAD = np.int8(4)  # a window whose maximum is <= 0: the ReLU passes no gradient to any of its cells


@kernels.inline
def _load(bits):
    """bf16 bits (uint16) -> float32."""
    return _float_from_bits(np.uint32(bits) << np.uint32(16))


@kernels.inline
def _store(value):
    """float32 -> bf16 bits, rounded to nearest even (as c10::BFloat16)."""
    bits = _bits_from_float(value)
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@kernels.inline
def _round(value):
    """float32 -> the nearest bf16 value, as float32 (what PyTorch's BatchNorm would hand its pool)."""
    return _load(_store(value))


# ---------------------------------------------------------------------------------------------
# One image's share of each pass (the drivers below run them over the batch in parallel)
@kernels.inline
def _image_statistics(x, b, partial):
    """partial[b] = (sum, sum of squares) per channel of image b, in float64 (exact for bf16 values' squares)."""
    _, h, w, c = x.shape
    total, squares = np.zeros(c), np.zeros(c)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                v = np.float64(_load(x[b, i, j, k]))
                total[k] += v
                squares[k] += v * v
    partial[b, 0], partial[b, 1] = total, squares


@kernels.inline
def _image_norm_relu(x, b, factors, out):
    """out = relu(bf16(x * alpha + beta))."""
    _, h, w, c = x.shape
    alpha, beta = factors[ALPHA], factors[BETA]
    for i in range(h):
        for j in range(w):
            for k in range(c):
                a = _load(x[b, i, j, k]) * alpha[k] + beta[k]
                out[b, i, j, k] = _store(a if a > ZERO else ZERO)


@kernels.inline
def _image_norm_pool_relu(x, b, factors, out, winner, code):
    """out = relu(max of each 2x2 window of bf16(x * alpha + beta)); code = its first maximum's cell (0-3,
    row-major) or DEAD; winner = that cell's x. No tuples in the selects: the loop stays vectorized."""
    _, h, w, c = out.shape
    alpha, beta = factors[ALPHA], factors[BETA]
    for i in range(h):
        for j in range(w):
            for k in range(c):
                x0, x1 = _load(x[b, 2 * i, 2 * j, k]), _load(x[b, 2 * i, 2 * j + 1, k])
                x2, x3 = _load(x[b, 2 * i + 1, 2 * j, k]), _load(x[b, 2 * i + 1, 2 * j + 1, k])
                a0, a1 = _round(x0 * alpha[k] + beta[k]), _round(x1 * alpha[k] + beta[k])
                a2, a3 = _round(x2 * alpha[k] + beta[k]), _round(x3 * alpha[k] + beta[k])
                m01, m23 = (a0 if a0 >= a1 else a1), (a2 if a2 >= a3 else a3)
                m = m01 if m01 >= m23 else m23
                cell = np.int8(2) if a2 == m else np.int8(3)  # ties: the first cell wins
                cell = np.int8(1) if a1 == m else cell
                cell = np.int8(0) if a0 == m else cell
                xw = x2 if a2 == m else x3
                xw = x1 if a1 == m else xw
                xw = x0 if a0 == m else xw
                code[b, i, j, k] = cell if m > ZERO else DEAD
                out[b, i, j, k] = _store(m if m > ZERO else ZERO)
                winner[b, i, j, k] = xw


@kernels.inline
def _image_grad_sums(x, out, grad, factors, b, partial):
    """partial[b] = (sum of g, sum of g * xhat) per channel of image b, g the gradient where out > 0."""
    _, h, w, c = x.shape
    mean, invstd = factors[MEAN], factors[INVSTD]
    total, weighted = np.zeros(c), np.zeros(c)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                g = _load(grad[b, i, j, k])
                g = g if _load(out[b, i, j, k]) > ZERO else ZERO
                total[k] += g
                weighted[k] += g * ((_load(x[b, i, j, k]) - mean[k]) * invstd[k])
    partial[b, 0], partial[b, 1] = total, weighted


@kernels.inline
def _image_pooled_grad_sums(code, grad, winner, factors, b, partial):
    """The same over the windows' winners only (every other cell's gradient is 0)."""
    _, h, w, c = code.shape
    mean, invstd = factors[MEAN], factors[INVSTD]
    total, weighted = np.zeros(c), np.zeros(c)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                g = _load(grad[b, i, j, k])
                g = g if code[b, i, j, k] != DEAD else ZERO
                total[k] += g
                weighted[k] += g * ((winner[b, i, j, k] - mean[k]) * invstd[k])
    partial[b, 0], partial[b, 1] = total, weighted


@kernels.inline
def _image_grad_input(x, out, grad, factors, k1, k0, b, dx):
    """dx = x * k1 + k0 + g * alpha, g the gradient where out > 0."""
    _, h, w, c = x.shape
    alpha = factors[ALPHA]
    for i in range(h):
        for j in range(w):
            for k in range(c):
                g = _load(grad[b, i, j, k]) * alpha[k]  # loaded either way: the loop vectorizes
                g = g if _load(out[b, i, j, k]) > ZERO else ZERO
                dx[b, i, j, k] = _store(_load(x[b, i, j, k]) * k1[k] + k0[k] + g)


@kernels.inline
def _image_pooled_grad_input(x, code, grad, factors, k1, k0, b, dx):
    """The same with g the window's gradient at its winner, 0 at its other cells."""
    _, h, w, c = x.shape
    alpha = factors[ALPHA]
    for i in range(h):
        for j in range(w):
            cell = np.int8(i % 2 * 2 + j % 2)
            for k in range(c):
                g = _load(grad[b, i // 2, j // 2, k]) * alpha[k]
                g = g if code[b, i // 2, j // 2, k] == cell else ZERO
                dx[b, i, j, k] = _store(_load(x[b, i, j, k]) * k1[k] + k0[k] + g)


# ---------------------------------------------------------------------------------------------
# Per-channel arithmetic between the passes: shared with the plain form (`Reference`), so both compute it
# alike. `factors` rows: mean, 1/std, alpha, beta (float32).
MEAN, INVSTD, ALPHA, BETA = range(4)


@kernels.serial
def _image_order_sums(partial):
    """(2, C) float64: the images' partial sums added in image order (any thread count, same result)."""
    sums = np.zeros(partial.shape[1:])
    for b in range(partial.shape[0]):
        sums += partial[b]
    return sums


@kernels.serial
def normalise(sums, count, weight, bias, eps, momentum, running_mean, running_var, factors):
    """factors from (sum, sum of squares) over `count` cells; the running statistics updated in place as
    nn.BatchNorm2d updates them in training (unbiased variance)."""
    for k in range(sums.shape[1]):
        mean = sums[0, k] / count
        var = sums[1, k] / count - mean * mean
        invstd = np.float32(1 / np.sqrt(var + eps))
        alpha = invstd * weight[k]
        factors[MEAN, k], factors[INVSTD, k] = np.float32(mean), invstd
        factors[ALPHA, k], factors[BETA, k] = alpha, bias[k] - np.float32(mean) * alpha
        running_mean[k] = running_mean[k] * np.float32(1 - momentum) + np.float32(momentum) * np.float32(mean)
        unbiased = np.float32(var * count / (count - 1))
        running_var[k] = running_var[k] * np.float32(1 - momentum) + np.float32(momentum) * unbiased


@kernels.serial
def gradient_factors(sums, count, factors):
    """k1, k0 of dx = x * k1 + k0 + g * alpha from (sum of g, sum of g * xhat): BatchNorm's backward with
    batch statistics, float32."""
    total, weighted = sums[0].astype(np.float32), sums[1].astype(np.float32)
    k1 = -factors[ALPHA] * factors[INVSTD] * weighted / np.float32(count)
    return k1, -factors[ALPHA] * total / np.float32(count) - k1 * factors[MEAN]


# ---------------------------------------------------------------------------------------------
# The two drivers: one call (two parallel regions back to back) per block and direction
@kernels.kernel
def _forward(x, weight, bias, eps, momentum, running_mean, running_var, pool, out, winner, code, factors):
    n, h, w, c = x.shape
    partial = np.empty((n, 2, c))
    for b in kernels.prange(n):
        _image_statistics(x, b, partial)
    normalise(_image_order_sums(partial), n * h * w, weight, bias, eps, momentum, running_mean, running_var,
              factors)
    for b in kernels.prange(n):
        if pool:
            _image_norm_pool_relu(x, b, factors, out, winner, code)
        else:
            _image_norm_relu(x, b, factors, out)


@kernels.kernel
def _backward(x, out, code, winner, grad, factors, pool, dx, parameter_grads):
    n, h, w, c = x.shape
    partial = np.empty((n, 2, c))
    for b in kernels.prange(n):
        if pool:
            _image_pooled_grad_sums(code, grad, winner, factors, b, partial)
        else:
            _image_grad_sums(x, out, grad, factors, b, partial)
    sums = _image_order_sums(partial)
    k1, k0 = gradient_factors(sums, n * h * w, factors)
    for b in kernels.prange(n):
        if pool:
            _image_pooled_grad_input(x, code, grad, factors, k1, k0, b, dx)
        else:
            _image_grad_input(x, out, grad, factors, k1, k0, b, dx)
    parameter_grads[0], parameter_grads[1] = sums[1].astype(np.float32), sums[0].astype(np.float32)


def _bits(t: torch.Tensor) -> np.ndarray:
    """A bf16 (N, C, H, W) channels-last tensor as its (N, H, W, C) uint16 bits: a view, no copy."""
    return t.permute(0, 2, 3, 1).view(torch.int16).numpy().view(np.uint16)


def _parameters(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    c = bn.num_features
    return (bn.weight.detach().numpy() if bn.weight is not None else np.ones(c, np.float32),
            bn.bias.detach().numpy() if bn.bias is not None else np.zeros(c, np.float32))


def _statistics_args(bn: nn.BatchNorm2d) -> tuple:
    bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d counts
    return float(bn.eps), float(bn.momentum), bn.running_mean.numpy(), bn.running_var.numpy()  # updated in place


def _parameter_grads(ctx, grads: torch.Tensor) -> tuple:
    """BatchNorm's weight and bias gradients, where they are asked for."""
    return grads[0] if ctx.needs_input_grad[1] else None, grads[1] if ctx.needs_input_grad[2] else None


NO_WINNERS, NO_CODES = np.empty((0, 0, 0, 0), np.float32), np.empty((0, 0, 0, 0), np.int8)


class NormReLU(torch.autograd.Function):
    """relu([max_pool2d(] batch_norm(x) [, 2)]) on bf16 channels-last x; `bn` gives eps, momentum, the buffers."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn: nn.BatchNorm2d, pool: bool):
        n, c, h, w = x.shape
        side = (h // 2, w // 2) if pool else (h, w)
        out = torch.empty(n, c, *side, dtype=torch.bfloat16, memory_format=torch.channels_last)
        winner = np.empty((n, *side, c), np.float32) if pool else NO_WINNERS  # x at each window's winner
        code = np.empty((n, *side, c), np.int8) if pool else NO_CODES       # its cell: 1 byte, not int64 indices
        factors = np.empty((4, c), np.float32)
        kernels.use_torch_threads()
        _forward(_bits(x), *_parameters(bn), *_statistics_args(bn), pool, _bits(out), winner, code, factors)
        ctx.save_for_backward(x, out)
        ctx.saved = (pool, code, winner, factors)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x, out), (pool, code, winner, factors) = ctx.saved_tensors, ctx.saved
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        parameter_grads = torch.empty(2, x.shape[1])
        kernels.use_torch_threads()
        _backward(_bits(x), _bits(out), code, winner, _bits(grad), factors, pool, _bits(dx), parameter_grads.numpy())
        return dx, *_parameter_grads(ctx, parameter_grads), None, None


class Reference(torch.autograd.Function):
    """NormReLU's plain form: the same arithmetic in PyTorch operations (the tests hold the kernels to it)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn: nn.BatchNorm2d, pool: bool):
        n, c, h, w = x.shape
        wide = x.double()
        sums = torch.stack([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3))])
        factors = np.empty((4, c), np.float32)
        normalise(sums.numpy(), n * h * w, *_parameters(bn), *_statistics_args(bn), factors)
        mean, invstd, alpha, beta = torch.from_numpy(factors).view(4, 1, c, 1, 1)
        normed = (x.float() * alpha + beta).bfloat16()
        normed, indices = nn.functional.max_pool2d_with_indices(normed, 2) if pool else (normed, None)
        out = normed.relu()
        ctx.save_for_backward(x, out, indices)
        ctx.factors = factors
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out, indices = ctx.saved_tensors
        c = x.shape[1]
        mean, invstd, alpha, beta = torch.from_numpy(ctx.factors).view(4, 1, c, 1, 1)
        g = grad.float() * (out > 0)
        if indices is not None:  # to each window's winner, zero elsewhere
            g = torch.ops.aten.max_pool2d_with_indices_backward(g, x.float(), [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                                indices)
        xhat = (x.float() - mean) * invstd
        sums = torch.stack([g.double().sum((0, 2, 3)), (g * xhat).double().sum((0, 2, 3))])
        k1, k0 = (torch.from_numpy(v).view(1, c, 1, 1)
                  for v in gradient_factors(sums.numpy(), x.numel() // c, ctx.factors))
        dx = ((x.float() * k1 + k0) + g * alpha).bfloat16()
        return dx, *_parameter_grads(ctx, torch.stack([sums[1], sums[0]]).float()), None, None


def norm_relu(x: torch.Tensor, bn: nn.BatchNorm2d, pool: bool, plain: bool = False) -> torch.Tensor:
    """relu(max_pool2d(bn(x), 2)) with `pool`, else relu(bn(x)), for bn in training mode and x as `applicable`
    says: fused, or with `plain` its plain form."""
    return (Reference if plain else NormReLU).apply(x, bn.weight, bn.bias, bn, pool)


def applicable(x: torch.Tensor, bn: nn.Module, pool: nn.Module | None) -> bool:
    """Whether the fused block can replace `bn`, `pool` (a 2x2 stride-2 max pool, or None) and a ReLU on x: a
    BatchNorm2d in training with batch statistics and an exponential running average, bf16 channels-last x
    on the CPU (of even height and width for the pool), outside ONNX/JIT tracing, the kernels working here."""
    pooled = pool is None or (isinstance(pool, nn.MaxPool2d) and not pool.ceil_mode
                              and _pair(pool.kernel_size) == _pair(pool.stride) == (2, 2)
                              and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
                              and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0)
    return (isinstance(bn, nn.BatchNorm2d) and bn.training and bn.track_running_stats and bn.momentum is not None
            and pooled and x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export() and available())


@functools.cache
def available() -> bool:
    """Whether these kernels compile and run here (else PyTorch's layers run): once on a tiny block, gradients
    on (the first call may come from inside inference mode)."""
    if kernels.UNAVAILABLE:
        warnings.warn(f"fmnist: the fused BatchNorm kernels are unavailable ({kernels.UNAVAILABLE}); using "
                      f"PyTorch's layers", stacklevel=2)
        return False
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(2, 1, 2, 2, dtype=torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
            for pool in (False, True):
                norm_relu(x, nn.BatchNorm2d(1), pool).sum().backward()
        return True
    except Exception as exc:  # numba's errors have no common base; any failure means "use PyTorch"
        warnings.warn(f"fmnist: the fused BatchNorm kernels are unavailable ({exc}); using PyTorch's layers",
                      stacklevel=2)
        return False


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
