"""The numba passes of the fused BatchNorm blocks (norm_kernels.py): each a parallel loop over a batch of
bf16 channels-last activations, seen as (N, H, W, C) uint16 bits, and the two drivers that chain them.

bf16 values are float32's upper 16 bits, so they load and store through bit casts (round to nearest even,
as PyTorch's bf16). Sums go down each (column, channel) lane of an image in float32 (h values: long
vectors, no chain through one accumulator), then across the columns in float64 (`_fold_rows`), then
across the images in image order (`image_order_sums`): the same bits at any thread count. The
per-channel arithmetic between the passes (`normalise`, `gradient_factors`) is shared with the blocks'
plain form, so both compute it alike.
"""

from __future__ import annotations

import numpy as np

from fmnist.nets.kernels import fused

if fused.numba:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _float_from_bits(typingctx, bits):  # the same 32 bits read as a float32: no conversion, no memory
        return types.float32(types.uint32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.FloatType())

    @intrinsic
    def _bits_from_float(typingctx, value):
        return types.uint32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


ZERO = np.float32(0.0)
DEAD = np.int8(4)  # a window whose maximum is <= 0: the ReLU passes no gradient to any of its cells


@fused.inline
def _load(bits):
    """bf16 bits (uint16) -> float32."""
    return _float_from_bits(np.uint32(bits) << np.uint32(16))


@fused.inline
def _store(value):
    """float32 -> bf16 bits, rounded to nearest even (as c10::BFloat16)."""
    bits = _bits_from_float(value)
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@fused.inline
def _round(value):
    """float32 -> the nearest bf16 value, as float32 (what PyTorch's BatchNorm would hand its pool)."""
    return _load(_store(value))


# ---------------------------------------------------------------------------------------------
# The passes, each a parallel loop over the batch's images written out in place (the same loops in an
# inlined per-image function ran up to 10x slower: numba then left the pooled ones unvectorized).
# `factors` rows: mean, 1/std, alpha, beta (float32).
MEAN, INVSTD, ALPHA, BETA = range(4)


@fused.inline
def _fold_rows(sums, weighted, c, b, partial):
    """partial[b] = the lanes' sums (w * c, float32) added column by column into channels, in float64."""
    total, products = np.zeros(c), np.zeros(c)
    for j in range(len(sums) // c):
        for k in range(c):
            total[k] += np.float64(sums[j * c + k])
            products[k] += np.float64(weighted[j * c + k])
    partial[b, 0], partial[b, 1] = total, products


@fused.kernel
def _statistics(x, partial):
    """partial[b] = (sum, sum of squares) per channel of image b."""
    n, h, w, c = x.shape
    rows = x.reshape(n, h, w * c)  # (N, H, W * C): a row of an image, channels innermost
    for b in fused.prange(n):
        sums, squares = np.zeros(w * c, np.float32), np.zeros(w * c, np.float32)
        for i in range(h):
            for e in range(w * c):
                v = _load(rows[b, i, e])
                sums[e] += v
                squares[e] += v * v  # exact: a bf16 square fits float32
        _fold_rows(sums, squares, c, b, partial)


@fused.kernel
def _norm_relu(x, factors, out):
    """out = relu(bf16(x * alpha + beta))."""
    n, h, w, c = x.shape
    alpha, beta = factors[ALPHA], factors[BETA]
    for b in fused.prange(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    a = _load(x[b, i, j, k]) * alpha[k] + beta[k]
                    out[b, i, j, k] = _store(a if a > ZERO else ZERO)


@fused.kernel
def _norm_pool_relu(x, factors, out, winner, code):
    """out = relu(max of each 2x2 window of bf16(x * alpha + beta)); code = its first maximum's cell (0-3,
    row-major) or DEAD; winner = that cell's x (bf16 bits). No tuples in the selects: the loop stays vectorized."""
    n, h, w, c = out.shape
    alpha, beta = factors[ALPHA], factors[BETA]
    for b in fused.prange(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    x0, x1 = x[b, 2 * i, 2 * j, k], x[b, 2 * i, 2 * j + 1, k]  # bf16 bits
                    x2, x3 = x[b, 2 * i + 1, 2 * j, k], x[b, 2 * i + 1, 2 * j + 1, k]
                    a0, a1 = _round(_load(x0) * alpha[k] + beta[k]), _round(_load(x1) * alpha[k] + beta[k])
                    a2, a3 = _round(_load(x2) * alpha[k] + beta[k]), _round(_load(x3) * alpha[k] + beta[k])
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


@fused.kernel
def _grad_sums(x, out, grad, factors, partial):
    """partial[b] = (sum of g, sum of g * xhat) per channel of image b, g the gradient where out > 0."""
    n, h, w, c = x.shape
    mean, invstd = factors[MEAN], factors[INVSTD]
    for b in fused.prange(n):
        sums, weighted = np.zeros(w * c, np.float32), np.zeros(w * c, np.float32)
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    g = _load(grad[b, i, j, k])
                    g = g if _load(out[b, i, j, k]) > ZERO else ZERO
                    sums[j * c + k] += g
                    weighted[j * c + k] += g * ((_load(x[b, i, j, k]) - mean[k]) * invstd[k])
        _fold_rows(sums, weighted, c, b, partial)


@fused.kernel
def _pooled_grad_sums(code, grad, winner, factors, partial):
    """The same over the windows' winners only (every other cell's gradient is 0), down the pooled rows."""
    n, h, w, c = code.shape
    mean, invstd = factors[MEAN], factors[INVSTD]
    for b in fused.prange(n):
        sums, weighted = np.zeros(w * c, np.float32), np.zeros(w * c, np.float32)
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    g = _load(grad[b, i, j, k])
                    g = g if code[b, i, j, k] != DEAD else ZERO
                    sums[j * c + k] += g
                    weighted[j * c + k] += g * ((_load(winner[b, i, j, k]) - mean[k]) * invstd[k])
        _fold_rows(sums, weighted, c, b, partial)


@fused.kernel
def _grad_input(x, out, grad, factors, k1, k0, dx):
    """dx = x * k1 + k0 + g * alpha, g the gradient where out > 0."""
    n, h, w, c = x.shape
    alpha = factors[ALPHA]
    for b in fused.prange(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    g = _load(grad[b, i, j, k]) * alpha[k]  # loaded either way: the loop vectorizes
                    g = g if _load(out[b, i, j, k]) > ZERO else ZERO
                    dx[b, i, j, k] = _store(_load(x[b, i, j, k]) * k1[k] + k0[k] + g)


@fused.kernel
def _pooled_grad_input(x, code, grad, factors, k1, k0, dx):
    """The same with g the window's gradient at its winner, 0 at its other cells: window by window, its
    gradient and code read once for its four cells."""
    n, h, w, c = code.shape
    alpha = factors[ALPHA]
    for b in fused.prange(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    g = _load(grad[b, i, j, k]) * alpha[k]
                    cell = code[b, i, j, k]
                    top, bottom, left, right = 2 * i, 2 * i + 1, 2 * j, 2 * j + 1
                    dx[b, top, left, k] = _store(_load(x[b, top, left, k]) * k1[k] + k0[k] + (g if cell == 0 else ZERO))
                    dx[b, top, right, k] = _store(
                        _load(x[b, top, right, k]) * k1[k] + k0[k] + (g if cell == 1 else ZERO)
                    )
                    dx[b, bottom, left, k] = _store(
                        _load(x[b, bottom, left, k]) * k1[k] + k0[k] + (g if cell == 2 else ZERO)
                    )
                    dx[b, bottom, right, k] = _store(
                        _load(x[b, bottom, right, k]) * k1[k] + k0[k] + (g if cell == 3 else ZERO)
                    )


# ---------------------------------------------------------------------------------------------
# Per-channel arithmetic between the passes: shared with the plain form (`Reference`), so both compute it alike
@fused.serial
def image_order_sums(partial):
    """(2, C) float64: the images' partial sums added in image order (any thread count, same result)."""
    sums = np.zeros(partial.shape[1:])
    for b in range(partial.shape[0]):
        sums += partial[b]
    return sums


@fused.serial
def normalise(sums, count, weight, bias, eps, momentum, running_mean, running_var, factors):
    """factors from (sum, sum of squares) over `count` cells; the running statistics updated in place as
    nn.BatchNorm2d updates them in training (unbiased variance)."""
    for k in range(sums.shape[1]):
        mean = sums[0, k] / count
        var = max(sums[1, k] / count - mean * mean, 0.0)  # float32 lanes: a constant channel may round below 0
        invstd = np.float32(1 / np.sqrt(var + eps))
        alpha = invstd * weight[k]
        factors[MEAN, k], factors[INVSTD, k] = np.float32(mean), invstd
        factors[ALPHA, k], factors[BETA, k] = alpha, bias[k] - np.float32(mean) * alpha
        running_mean[k] = running_mean[k] * np.float32(1 - momentum) + np.float32(momentum) * np.float32(mean)
        unbiased = np.float32(var * count / (count - 1))
        running_var[k] = running_var[k] * np.float32(1 - momentum) + np.float32(momentum) * unbiased


@fused.serial
def gradient_factors(sums, count, factors):
    """k1, k0 of dx = x * k1 + k0 + g * alpha from (sum of g, sum of g * xhat): BatchNorm's backward with
    batch statistics, float32."""
    total, weighted = sums[0].astype(np.float32), sums[1].astype(np.float32)
    k1 = -factors[ALPHA] * factors[INVSTD] * weighted / np.float32(count)
    return k1, -factors[ALPHA] * total / np.float32(count) - k1 * factors[MEAN]


# ---------------------------------------------------------------------------------------------
# The two drivers: one call (two parallel passes back to back) per block and direction
@fused.serial
def forward(x, weight, bias, eps, momentum, running_mean, running_var, pool, out, winner, code, factors):
    n, h, w, c = x.shape
    partial = np.empty((n, 2, c))
    _statistics(x, partial)
    normalise(image_order_sums(partial), n * h * w, weight, bias, eps, momentum, running_mean, running_var, factors)
    if pool:
        _norm_pool_relu(x, factors, out, winner, code)
    else:
        _norm_relu(x, factors, out)


@fused.serial
def backward(x, out, code, winner, grad, factors, pool, dx, parameter_grads):
    n, h, w, c = x.shape
    partial = np.empty((n, 2, c))
    if pool:
        _pooled_grad_sums(code, grad, winner, factors, partial)
    else:
        _grad_sums(x, out, grad, factors, partial)
    sums = image_order_sums(partial)
    k1, k0 = gradient_factors(sums, n * h * w, factors)
    if pool:
        _pooled_grad_input(x, code, grad, factors, k1, k0, dx)
    else:
        _grad_input(x, out, grad, factors, k1, k0, dx)
    parameter_grads[0], parameter_grads[1] = sums[1].astype(np.float32), sums[0].astype(np.float32)
