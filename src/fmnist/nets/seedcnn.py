"""The report's CNN with Keras semantics, laid out so that Keras weights map 1:1.

Tensors are channels-last (N, H, W, C) throughout, as in Keras, so Flatten yields features in
(row, column, channel) order. Parameters keep Keras's layouts: a convolution kernel is
(kernel_h, kernel_w, in_channels, out_channels) ("HWIO"), a dense kernel is (in, out).

Speed tricks, each a small function checked against its plain version in the tests:
- `conv2x2_stride2`: a 2x2 convolution with stride 2 on an even-sized input has non-overlapping
  windows and (with Keras's "same" padding) no padding, so it is a reshape plus one matmul.
- `max_pool_2x2_same`: stride-1 2x2 max pooling, Keras "same" padding (one row below and one
  column to the right, ignored by the max), kept in channels-last memory end to end: PyTorch's
  channels-last pooling kernel (and its backward) is several times faster than the NCHW one.
- `dropout`: a uniform draw compared in place instead of a Bernoulli sampler.
- on the CPU, each convolution block's bias + ReLU + pooling is one fused float32 pass forward and
  one backward (`fused.py`, numba), bit-identical to the forms above, which serve CUDA and ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.data import fashion
from fmnist.data.seed_report import CONV_FILTERS, DENSE_UNITS, DROPOUT, KERNEL
from fmnist.nets.kernels import fused

ARCHITECTURE = "seed-cnn-v1"  # recorded in every checkpoint; bump if the layout changes
FLAT = (fashion.IMAGE_SIZE // KERNEL ** len(CONV_FILTERS)) ** 2 * CONV_FILTERS[-1]  # 7 * 7 * 64 = 3136 features
_CHANNELS, _UNITS = (1, *CONV_FILTERS), (FLAT, *DENSE_UNITS, fashion.NUM_CLASSES)
# (name, keras class, parameter shapes) in Keras's order; the import and the summary read this.
LAYERS = (  # conv1, conv2, dense1..dense3: every shape from the constants above
    *(
        (
            f"conv{i + 1}",
            "Conv2D",
            {"kernel": (KERNEL, KERNEL, _CHANNELS[i], _CHANNELS[i + 1]), "bias": (_CHANNELS[i + 1],)},
        )
        for i in range(len(CONV_FILTERS))
    ),
    *(
        (f"dense{i + 1}", "Dense", {"kernel": (_UNITS[i], _UNITS[i + 1]), "bias": (_UNITS[i + 1],)})
        for i in range(len(_UNITS) - 1)
    ),
)


# ---------------------------------------------------------------------------------------------
# Layer functions: the fast forms and the plain ones they must equal.
def conv2x2_stride2(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Keras Conv2D(2x2, strides 2, padding same) on an even-sized NHWC input, as one matmul."""
    n, h, w, c = x.shape
    patches = x.reshape(n, h // 2, 2, w // 2, 2, c)  # (N, H/2, kh, W/2, kw, C)
    patches = patches.permute(0, 1, 3, 2, 4, 5)  # (N, H/2, W/2, kh, kw, C)
    patches = patches.reshape(n * (h // 2) * (w // 2), 4 * c)  # rows: windows, cols: (kh, kw, C)
    out = torch.addmm(bias, patches, kernel.reshape(4 * c, -1))  # HWIO kernel reshaped (4C, C_out)
    return out.reshape(n, h // 2, w // 2, -1)  # (N, H/2, W/2, C_out)


def conv2x2_stride2_reference(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The plain form: F.conv2d in NCHW, Keras same padding (bottom/right) made explicit."""
    h, w = x.shape[1:3]
    pad_h, pad_w = max((math.ceil(h / 2) - 1) * 2 + 2 - h, 0), max((math.ceil(w / 2) - 1) * 2 + 2 - w, 0)
    x = F.pad(x.permute(0, 3, 1, 2), (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    out = F.conv2d(x, kernel.permute(3, 2, 0, 1), bias, stride=2)  # HWIO -> OIHW
    return out.permute(0, 2, 3, 1)


def max_pool_2x2_same(x: torch.Tensor) -> torch.Tensor:
    """Keras MaxPooling2D(2x2, strides 1, padding same) on NHWC, via PyTorch's channels-last kernel."""
    nchw = x.permute(0, 3, 1, 2)  # a view: NHWC memory is NCHW in channels-last format
    padded = F.pad(nchw, (0, 1, 0, 1), value=float("-inf")).contiguous(memory_format=torch.channels_last)
    out = F.max_pool2d(padded, kernel_size=2, stride=1)  # (N, C, H, W), channels-last memory
    return out.permute(0, 2, 3, 1)  # back to NHWC: a view, no copy


def max_pool_2x2_same_reference(x: torch.Tensor) -> torch.Tensor:
    """The plain form: pad one row below and one column right with -inf, pool with stride 1."""
    padded = F.pad(x.permute(0, 3, 1, 2), (0, 1, 0, 1), value=float("-inf"))
    return F.max_pool2d(padded, kernel_size=2, stride=1).permute(0, 2, 3, 1)


def dropout(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Inverted dropout as Keras's: zero a `rate` fraction, scale the rest by 1/(1-rate); identity in eval.

    A uniform draw compared in place is about twice as fast on CPU as F.dropout's Bernoulli sampler.
    """
    if not training or rate == 0.0:
        return x
    mask = torch.rand_like(x).ge_(rate).mul_(1.0 / (1.0 - rate))  # 0 or 1/(1-rate), as float
    return x * mask


# ---------------------------------------------------------------------------------------------
class KerasLayer(nn.Module):
    """A layer holding a Keras-layout `kernel` and a `bias`, initialised as Keras does."""

    def __init__(self, kernel_shape: tuple[int, ...], bias_shape: tuple[int, ...]):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(kernel_shape))
        self.bias = nn.Parameter(torch.zeros(bias_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot uniform kernel, zero bias (Keras's defaults)."""
        receptive = math.prod(self.kernel.shape[:-2])  # 1 for Dense, kh*kw for Conv2D
        fan_in, fan_out = self.kernel.shape[-2] * receptive, self.kernel.shape[-1] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            self.kernel.uniform_(-limit, limit)
            self.bias.zero_()


IMPLEMENTATIONS = ("fused", "torch", "reference")


class SeedCNN(nn.Module):
    """Input (N, 28, 28, 1) floats in [0, 1]; output (N, 10) logits (softmax gives Keras's output).

    `implementation` picks how the convolution blocks run, all computing the same function:
    "fused" (default) uses the CPU kernels where they apply and the PyTorch fast forms elsewhere,
    "torch" the PyTorch fast forms only, "reference" the plain forms.
    """

    def __init__(self, dropout: float = DROPOUT, implementation: str = "fused"):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        for name, _, shapes in LAYERS:
            self.add_module(name, KerasLayer(shapes["kernel"], shapes["bias"]))
        self.dropout = dropout
        self.implementation = implementation
        plain = implementation == "reference"
        self.conv = conv2x2_stride2_reference if plain else conv2x2_stride2
        self.pool = max_pool_2x2_same_reference if plain else max_pool_2x2_same

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.implementation == "fused" and fused.applicable(x):
            # Under bf16 autocast the blocks stay float32 (the kernels' type); the dense layers,
            # where the arithmetic is, still run in bf16.
            with torch.autocast("cpu", enabled=False):
                return self.features_fused(x)
        x = self.pool(F.relu(self.conv(x, self.conv1.kernel, self.conv1.bias)))  # (N, 14, 14, 32)
        x = self.pool(F.relu(self.conv(x, self.conv2.kernel, self.conv2.bias)))  # (N, 7, 7, 64)
        return x.reshape(x.shape[0], -1)  # (N, 3136) in (row, column, channel) order, as Keras's Flatten

    def features_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same features with the CPU kernels: two matmuls and two fused passes."""
        n, size = x.shape[0], x.shape[1] // 2
        windows = fused.space_to_depth(x)  # (N*14*14, 4): conv1's 2x2 windows
        z = windows @ self.conv1.kernel.reshape(windows.shape[1], -1)  # (N*14*14, 32), bias not yet added
        windows = fused.bias_relu_pool(z.view(n, size, size, -1), self.conv1.bias, patches=True)  # (N*7*7, 128)
        z = windows @ self.conv2.kernel.reshape(windows.shape[1], -1)  # (N*7*7, 64)
        x = fused.bias_relu_pool(z.view(n, size // 2, size // 2, -1), self.conv2.bias)  # (N, 7, 7, 64)
        return x.reshape(n, -1)  # (N, 3136), Keras's Flatten order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = dropout(F.relu(torch.addmm(self.dense1.bias, x, self.dense1.kernel)), self.dropout, self.training)
        x = dropout(F.relu(torch.addmm(self.dense2.bias, x, self.dense2.kernel)), self.dropout, self.training)
        return torch.addmm(self.dense3.bias, x, self.dense3.kernel)  # (N, 10) logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(network: SeedCNN) -> list[tuple[str, str, int]]:
    """(layer, output shape, params) rows like Keras's model.summary(), traced with one blank image."""

    def conv(layer):
        return lambda x: F.relu(network.conv(x, layer.kernel, layer.bias))

    stages = (
        ("conv1 (Conv2D)", conv(network.conv1), network.conv1),
        ("pool1 (MaxPooling2D)", network.pool, None),
        ("conv2 (Conv2D)", conv(network.conv2), network.conv2),
        ("pool2 (MaxPooling2D)", network.pool, None),
        ("flatten (Flatten)", lambda x: x.reshape(1, -1), None),
        ("dense1 (Dense)", lambda x: x @ network.dense1.kernel, network.dense1),
        ("dropout1 (Dropout)", lambda x: x, None),
        ("dense2 (Dense)", lambda x: x @ network.dense2.kernel, network.dense2),
        ("dropout2 (Dropout)", lambda x: x, None),
        ("dense3 (Dense, softmax)", lambda x: x @ network.dense3.kernel, network.dense3),
    )
    x, rows = torch.zeros(1, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1), []
    with torch.no_grad():
        for label, stage, layer in stages:
            x = stage(x)
            rows.append((label, str((None, *x.shape[1:])), count_parameters(layer) if layer else 0))
    return rows


def products(batch_size: int) -> list[tuple[int, int, int]]:
    """(rows, fan_in, fan_out) of each layer's matrix product for a batch: a convolution is one product
    per output position, a dense layer one per image (`fmnist bench`'s floor under the step)."""
    side, shapes = fashion.IMAGE_SIZE, []
    for _, kind, layer in LAYERS:
        if kind == "Conv2D":
            side //= KERNEL  # 2x2 stride 2: 28 -> 14 -> 7 positions a side
        rows = batch_size * (side * side if kind == "Conv2D" else 1)
        shapes.append((rows, math.prod(layer["kernel"][:-1]), layer["kernel"][-1]))  # HWIO (or in, out) as a matrix
    return shapes


class PlainCNN(nn.Module):
    """The same network written the plain way, NCHW (the eager baseline `fmnist bench` times it against)."""

    def __init__(self):
        super().__init__()
        convs = [shapes["kernel"] for _, kind, shapes in LAYERS if kind == "Conv2D"]  # HWIO
        denses = [shapes["kernel"] for _, kind, shapes in LAYERS if kind == "Dense"]  # (in, out)
        self.conv1, self.conv2 = (nn.Conv2d(c_in, c_out, k, stride=k) for k, _, c_in, c_out in convs)
        self.dense1, self.dense2, self.dense3 = (nn.Linear(n_in, n_out) for n_in, n_out in denses)

    def forward(self, x):  # x: (N, 1, 28, 28)
        x = F.max_pool2d(F.pad(F.relu(self.conv1(x)), (0, 1, 0, 1), value=float("-inf")), 2, stride=1)
        x = F.max_pool2d(F.pad(F.relu(self.conv2(x)), (0, 1, 0, 1), value=float("-inf")), 2, stride=1)
        x = F.dropout(F.relu(self.dense1(x.flatten(1))), DROPOUT, self.training)
        x = F.dropout(F.relu(self.dense2(x)), DROPOUT, self.training)
        return self.dense3(x)
