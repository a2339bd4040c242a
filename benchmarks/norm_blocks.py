"""cnn94's BatchNorm blocks, fused (norm_kernels.py) against PyTorch's layers: forward + backward of each
block alone at its real shape, bf16 channels-last, timings interleaved round by round (median).

    python benchmarks/norm_blocks.py [--rounds 30] [--threads 2]

The whole step, fused against unfused, is `fmnist bench --model cnn94` (its "PyTorch's BatchNorm layers" row).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist.core import threads
from fmnist.nets.kernels import norm_kernels

BLOCKS = [  # (label, (N, C, H, W) of the conv output, pooled), cnn94 at batch 128
    ("stage 1: BN, pool, ReLU", (128, 16, 28, 28), True),
    ("stage 2, conv 1: BN, ReLU", (128, 32, 14, 14), False),
    ("stage 2, conv 2: BN, pool, ReLU", (128, 32, 14, 14), True),
    ("stage 3, each conv: BN, ReLU", (128, 64, 7, 7), False),
]


def pytorch_block(x, bn, pool):
    out = bn(x)
    return (F.max_pool2d(out, 2) if pool else out).relu_()


def seconds(block, x, bn, pool, grad, repeats: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        x.grad = None
        block(x, bn, pool).backward(grad)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads.use(args.threads)
    print(f"{'block':34s} {'PyTorch ms':>10s} {'fused ms':>9s} {'speed-up':>9s}")
    for label, shape, pool in BLOCKS:
        x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
        bn = nn.BatchNorm2d(shape[1], momentum=0.4)
        bn.weight.requires_grad_(False)  # cnn94's frozen BatchNorm scales
        forms = {"pytorch": (pytorch_block, bn), "fused": (norm_kernels.norm_relu, copy.deepcopy(bn))}
        grad = torch.randn(pytorch_block(x, bn, pool).shape).bfloat16().contiguous(memory_format=torch.channels_last)
        samples = {name: [] for name in forms}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, (block, layer) in forms.items():
                samples[name].append(seconds(block, x, layer, pool, grad))
        plain, fused = (statistics.median(samples[name][1:]) for name in forms)
        print(f"{label:34s} {plain * 1e3:10.3f} {fused * 1e3:9.3f} {plain / fused:8.2f}x")


if __name__ == "__main__":
    main()
