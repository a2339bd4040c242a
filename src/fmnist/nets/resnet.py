"""res95: a small residual network for the accuracy tier, shaped for a CPU's budget at 28x28.

    image (N, 28, 28, 1)
    stem     3x3 conv -> (N, 28, 28, C0),                          2x2 max pool -> (N, 14, 14, C0)
    stage 1  3x3 conv -> (N, 14, 14, C1), residual block of two,   2x2 max pool -> (N, 7, 7, C1)
    stage 2  3x3 conv -> (N, 7, 7, C2),   residual block of two
    head     flatten in (row, column, channel) order -> 10 logits
each conv followed by BatchNorm and ReLU (a block's second ReLU after its sum; the stem pools before its
ReLU: fastcnn.pool_first). What runs at 28x28 is narrow (the stem): a 3x3 conv costs its input's area,
and the learning happens at 14x14 and 7x7.
Tensors are channels-last throughout, as in fast-cnn; BatchNorm folds into the convs for inference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fmnist.data import fashion
from fmnist.nets.fastcnn import FlatHeadCNN, pool_first

ARCHITECTURE = "res95-v1"  # recorded in weights, checkpoints and ONNX files; bump if the layout changes
WIDTHS = (32, 64, 128)  # C0 (stem, 28x28), C1 (14x14), C2 (7x7)


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))


class Residual(nn.Module):
    """x + f(x), f = conv-BN-ReLU-conv-BN, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.first, self.second = conv_bn(channels, channels), conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.second(torch.relu(self.first(x))))


class ResCNN(FlatHeadCNN):
    """Input (N, 28, 28, 1) floats in [0, 1]; output (N, 10) logits."""

    def __init__(self, dropout: float = 0.0, widths: tuple[int, int, int] = WIDTHS):
        c0, c1, c2 = widths
        features = nn.Sequential(
            *pool_first(
                [
                    conv_bn(1, c0),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                    conv_bn(c0, c1),
                    nn.ReLU(inplace=True),
                    Residual(c1),
                    nn.MaxPool2d(2),
                    conv_bn(c1, c2),
                    nn.ReLU(inplace=True),
                    Residual(c2),
                ]
            )
        )
        super().__init__(features, c2, fashion.IMAGE_SIZE // 4, dropout)

    def for_inference(self) -> ResCNN:
        """A copy computing the same function in eval mode with every BatchNorm folded into its conv
        (its state_dict is no longer the training layout: never save it)."""
        folded = copy.deepcopy(self).eval()
        for module in folded.modules():
            if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], nn.BatchNorm2d):
                module[0], module[1] = fuse_conv_bn_eval(module[0], module[1]), nn.Identity()
        return folded


class PlainResCNN(nn.Module):
    """res95 written the plain way: NCHW-contiguous tensors, ReLU then pool, nn.Flatten in PyTorch's
    (C, H, W) order."""

    def __init__(self):
        super().__init__()
        network = ResCNN(0.0).to(memory_format=torch.contiguous_format)
        self.features = nn.Sequential(*pool_first(network.features, first=False))
        self.head = nn.Linear(network.head.in_features, fashion.NUM_CLASSES)

    def forward(self, x):  # x: (N, 1, 28, 28)
        return self.head(self.features(x).flatten(1))
