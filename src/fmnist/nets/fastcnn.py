"""fast-cnn: a small BatchNorm CNN shaped for a 2-core CPU's budget, the way airbench shaped CIFAR-10's.

    image (N, 28, 28, 1)
    stage 1  3x3 conv -> (N, 28, 28, 16),            2x2 max pool -> (N, 14, 14, 16)
    stage 2  3x3 conv, 3x3 conv -> (N, 14, 14, 32),  2x2 max pool -> (N, 7, 7, 32)
    stage 3  3x3 conv, 3x3 conv -> (N, 7, 7, 64)
    head     flatten in (row, column, channel) order -> 10 logits
each conv followed by BatchNorm and ReLU (a pool after a ReLU goes first: `pool_first`); ~11 MFLOPs per
image, 4.4x the seed's.

Why this shape (chosen on the validation split at a fixed time budget, 2-core Zen 4; the candidates
and their figures are in the README): per CPU-second it learned faster than wider nets that leave
28x28 at once through a strided stem, and than deeper ones; a flattened head keeps where a feature
is. Tensors are channels-last throughout: the NHWC input is a free view of it, and so is the flatten.
In bf16 training on a CPU each BatchNorm -> [pool ->] ReLU runs as one fused block (`Features`,
`norm_kernels`): cnn94's step 1.22-1.29x faster, the same function.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fmnist.data import fashion
from fmnist.nets.kernels import norm_kernels

ARCHITECTURE = "fast-cnn-v1"  # recorded in weights, checkpoints and ONNX files; bump if the layout changes
STAGES = ((16,), (32, 32), (64, 64))  # 3x3 conv widths at 28x28, 14x14 and 7x7, a 2x2 max pool between stages


def pool_first(layers, first: bool = True) -> list[nn.Module]:
    """The layers with each adjacent ReLU and 2x2 max pool ordered pool, then ReLU (`first`; else ReLU, then
    pool: the plain order). Max commutes with ReLU, max(relu(a), relu(b)) = relu(max(a, b)), and so do their
    gradients: the same values bit for bit (tested), with the ReLU on a quarter of the elements."""
    layers, before = list(layers), (nn.ReLU, nn.MaxPool2d) if first else (nn.MaxPool2d, nn.ReLU)
    for index in range(len(layers) - 1):
        if isinstance(layers[index], before[0]) and isinstance(layers[index + 1], before[1]):
            layers[index], layers[index + 1] = layers[index + 1], layers[index]
    return layers


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # BatchNorm holds the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Features(nn.Sequential):
    """nn.Sequential whose BatchNorm -> [2x2 max pool ->] ReLU runs go through the fused kernels where they
    apply (training in bf16 on the CPU: `norm_kernels`) and `fused`; elsewhere, and in the state_dict, the
    same layers."""

    def __init__(self, *layers: nn.Module, fused: bool = True):
        super().__init__(*layers)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers, index = list(self), 0
        while index < len(layers):
            following = layers[index + 1] if index + 1 < len(layers) else None
            pool = following if isinstance(following, nn.MaxPool2d) else None
            relu = index + (2 if pool is not None else 1)  # where the block's ReLU must be
            if (
                self.fused
                and relu < len(layers)
                and isinstance(layers[relu], nn.ReLU)
                and norm_kernels.applicable(x, layers[index], pool)
            ):
                x, index = norm_kernels.norm_relu(x, layers[index], pool is not None), relu + 1
            else:
                x, index = layers[index](x), index + 1
        return x


class FlatHeadCNN(nn.Module):
    """A convolutional feature stack and a linear head over its flattened last map, channels-last
    throughout: the NHWC input is a free view of it, and so is the flatten (fast-cnn's, res95's)."""

    def __init__(self, features: nn.Sequential, channels: int, side: int, dropout: float, fused_norm: bool = True):
        super().__init__()
        self.features = Features(*features, fused=fused_norm)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(side * side * channels, fashion.NUM_CLASSES)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.permute(0, 3, 1, 2))  # NHWC -> NCHW view with channels-last memory: no copy
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, side*side*C) in (row, column, channel) order: no copy
        return self.head(self.dropout(x))


class FastCNN(FlatHeadCNN):
    """Input (N, 28, 28, 1) floats in [0, 1]; output (N, 10) logits."""

    def __init__(self, dropout: float = 0.0, stages: tuple[tuple[int, ...], ...] = STAGES, fused_norm: bool = True):
        layers, channels = [], 1
        for index, widths in enumerate(stages):
            layers += [nn.MaxPool2d(2)] if index else []
            for width in widths:
                layers += conv_bn_relu(channels, width)
                channels = width
        super().__init__(
            nn.Sequential(*pool_first(layers)),
            channels,
            fashion.IMAGE_SIZE // 2 ** (len(stages) - 1),
            dropout,
            fused_norm,
        )

    def for_inference(self) -> FastCNN:
        """A copy computing the same function in eval mode with each BatchNorm folded into the convolution
        before it (PyTorch's fuse_conv_bn_eval): one memory-bound pass fewer per layer, ~1.25x the
        images/s measured. Its state_dict is no longer the training layout: never save it."""
        folded = copy.deepcopy(self).eval()
        layers = list(folded.features)
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm2d):
                layers[index - 1], layers[index] = fuse_conv_bn_eval(layers[index - 1], layer), nn.Identity()
        folded.features = nn.Sequential(*layers)
        return folded


# ---------------------------------------------------------------------------------------------
# cnn94's network: fast-cnn with a frozen patch-whitening stem in place of its first learned convolution
WHITENED_ARCHITECTURE = "cnn94-v1"
PATCH = 3  # the whitening filters' size: 3x3 patches, 9 directions, each with both signs
WHITENING_EPSILON = 5e-4  # added to each eigenvalue: directions of almost no variance are not blown up
WHITENING_IMAGES = 5_000  # training images whose patches estimate the covariance


def patch_covariance(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(p², p²) covariance of every p x p patch of NHWC one-channel images (no padding)."""
    patches = nn.functional.unfold(images.permute(0, 3, 1, 2).double(), patch)  # (N, p², positions)
    patches = patches.transpose(1, 2).reshape(-1, patch * patch)  # (N * positions, p²)
    return torch.cov(patches.T)


def whitening_filters(images: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(2p², 1, p, p) conv filters: each eigenvector of the patch covariance scaled by 1/sqrt(its
    eigenvalue + ε), then the same negated, so that a ReLU after them keeps both signs."""
    eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(images, patch))  # ascending; columns
    scaled = (eigenvectors / torch.sqrt(eigenvalues + WHITENING_EPSILON)).T  # (p², p²): one filter a row
    filters = scaled.reshape(-1, 1, patch, patch).float()
    return torch.cat([filters, -filters])


class WhitenedCNN(FastCNN):
    """fast-cnn whose 28x28 stage is a frozen whitening convolution (filters from the training data's
    patch covariance, `init_whitening`; only its bias trains, and only for the recipe's first epochs)
    and a ReLU, with no BatchNorm: the learned network starts at 14x14 (airbench's whitening stem)."""

    def __init__(self, dropout: float = 0.0, fused_norm: bool = True):
        super().__init__(dropout, fused_norm=fused_norm)
        width = 2 * PATCH * PATCH
        whiten = nn.Conv2d(1, width, PATCH, padding=PATCH // 2, bias=True)
        whiten.weight.requires_grad_(False)
        later = list(self.features)[4:]  # from stage 2's first conv on (after the pool)
        later[0] = nn.Conv2d(width, later[0].out_channels, 3, padding=1, bias=False)
        self.features = Features(
            whiten, *pool_first([nn.ReLU(inplace=True), nn.MaxPool2d(2)]), *later, fused=fused_norm
        )
        self.to(memory_format=torch.channels_last)

    @property
    def whitening(self) -> nn.Conv2d:
        return self.features[0]

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the filters from NHWC training images in [0, 1] (the first WHITENING_IMAGES of them)."""
        self.whitening.weight.copy_(whitening_filters(images[:WHITENING_IMAGES].cpu()))
        self.whitening.bias.zero_()


class PlainFastCNN(nn.Module):
    """fast-cnn written the plain way: NCHW-contiguous tensors, ReLU then pool, nn.Flatten in PyTorch's
    (C, H, W) order."""

    network: type[FastCNN] = FastCNN

    def __init__(self):
        super().__init__()
        fast = self.network(0.0).to(memory_format=torch.contiguous_format)
        self.features = nn.Sequential(*pool_first(fast.features, first=False))
        self.head = nn.Linear(fast.head.in_features, fashion.NUM_CLASSES)

    def forward(self, x):  # x: (N, 1, 28, 28)
        return self.head(self.features(x).flatten(1))


class PlainWhitenedCNN(PlainFastCNN):
    """cnn94's network written the plain way."""

    network = WhitenedCNN
