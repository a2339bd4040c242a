"""A direct numpy computation of the report's Keras network, from weights in Keras's layouts.

Written from Keras's documented semantics, independently of fmnist.seedcnn: "same" padding with an
even window pads bottom/right only, max pooling ignores padded cells, Flatten is (row, col, channel).
"""

from __future__ import annotations

import numpy as np


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2  # (before, after): the extra cell goes after


def conv2d_same(x, kernel, bias, stride):
    """x (H, W, C_in), kernel (kh, kw, C_in, C_out) -> (H', W', C_out), one window at a time."""
    kh, kw, _, c_out = kernel.shape
    (top, bottom), (left, right) = same_padding(x.shape[0], kh, stride), same_padding(x.shape[1], kw, stride)
    x = np.pad(x, ((top, bottom), (left, right), (0, 0)))
    rows, cols = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.zeros((rows, cols, c_out))
    for i in range(rows):
        for j in range(cols):
            window = x[i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[i, j] = np.tensordot(window, kernel, axes=3) + bias
    return out


def max_pool_same(x, pool=2, stride=1):
    (top, bottom), (left, right) = same_padding(x.shape[0], pool, stride), same_padding(x.shape[1], pool, stride)
    x = np.pad(x, ((top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    rows, cols = (x.shape[0] - pool) // stride + 1, (x.shape[1] - pool) // stride + 1
    return np.array(
        [
            [x[i * stride : i * stride + pool, j * stride : j * stride + pool].max(axis=(0, 1)) for j in range(cols)]
            for i in range(rows)
        ]
    )


def relu(x):
    return np.maximum(x, 0)


def seed_cnn(image, weights):
    """image (28, 28, 1) in [0, 1]; weights: [(kernel, bias)] for conv, conv, dense, dense, dense."""
    (k1, b1), (k2, b2), (d1, c1), (d2, c2), (d3, c3) = weights
    x = max_pool_same(relu(conv2d_same(image, k1, b1, 2)))
    x = max_pool_same(relu(conv2d_same(x, k2, b2, 2)))
    x = x.reshape(-1)  # Keras Flatten of (7, 7, 64): row, column, channel
    x = relu(relu(x @ d1 + c1) @ d2 + c2) @ d3 + c3
    e = np.exp(x - x.max())
    return e / e.sum()
