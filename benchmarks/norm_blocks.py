"""cnn94's BatchNorm blocks, fused (norm_kernels.py) against PyTorch's layers: forward + backward of each
block alone at its real shape, bf16 channels-last, timings interleaved round by round (median).

    python benchmarks/norm_blocks.py [--rounds 30] [--threads 2]

The whole step, fused against unfused, is `fmnist bench --model cnn94` (its "PyTorch's BatchNorm layers" row).
"""

from __future__ import annotations

import copy

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from fmnist.nets.kernels import norm_kernels
from fmnist.results import records

BLOCKS = [  # (label, (N, C, H, W) of the conv output, pooled), cnn94 at batch 128
    ("stage 1: BN, pool, ReLU", (128, 16, 28, 28), True),
    ("stage 2, conv 1: BN, ReLU", (128, 32, 14, 14), False),
    ("stage 2, conv 2: BN, pool, ReLU", (128, 32, 14, 14), True),
    ("stage 3, each conv: BN, ReLU", (128, 64, 7, 7), False),
]


def pytorch_block(x, bn, pool):
    out = bn(x)
    return (F.max_pool2d(out, 2) if pool else out).relu_()


def backward_of(block, x, bn, pool, grad):
    def step():
        x.grad = None
        block(x, bn, pool).backward(grad)

    return step


def main(argv: list[str] | None = None) -> dict:
    args = records.benchmark_parser(__doc__, rounds=30).parse_args(argv)
    records.start(args)
    rows, figures, rounds = [], {}, {}
    for label, shape, pool in BLOCKS[:1] if args.quick else BLOCKS:
        shape = (8, *shape[1:]) if args.quick else shape
        x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
        bn = nn.BatchNorm2d(shape[1], momentum=0.4)
        bn.weight.requires_grad_(False)  # cnn94's frozen BatchNorm scales
        grad = torch.randn(pytorch_block(x, bn, pool).shape).bfloat16().contiguous(memory_format=torch.channels_last)
        samples = records.interleaved(
            {
                "pytorch": backward_of(pytorch_block, x, bn, pool, grad),
                "fused": backward_of(norm_kernels.norm_relu, x, copy.deepcopy(bn), pool, grad),
            },
            rounds=1 if args.quick else args.rounds,
            calls=5,
        )
        plain, fused = (records.spread(samples[name])["median"] for name in ("pytorch", "fused"))
        rows.append([label, f"{plain * 1e3:.3f}", f"{fused * 1e3:.3f}", f"{plain / fused:.2f}x"])
        figures[label] = plain / fused
        rounds[label] = samples
        print(" | ".join(rows[-1]))
    return records.publish(
        "norm_blocks",
        args,
        records.record(
            "speed",
            "cnn94's BatchNorm blocks, fused against PyTorch's layers (forward + backward, bf16)",
            figures,
            ["block", "PyTorch ms", "fused ms", "speed-up"],
            rows,
            rounds=rounds,
        ),
    )


if __name__ == "__main__":
    main()
