"""What bounds cnn94's step besides BatchNorm: the step with the BatchNorm of some of its convolutions
removed (each such convolution gets a bias instead), timed against cnn94 and the floor (its convolutions
and matrix products alone) in the same interleaved rounds. A bound, not a model: these networks are not
trained here, and without BatchNorm the recipe would have to be found again on validation.

    python benchmarks/step_without_norm.py [--rounds 9] [--steps 25]

Convolutions are numbered 0-4 from the input; the pools stay where they are (PyTorch's, where no fused
BatchNorm block holds them).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist.core import machine, threads
from fmnist.data import fashion
from fmnist.nets import fastcnn
from fmnist.results import bench
from fmnist.training import configs, loop, recipe, registry

NAME = "cnn94"
VARIANTS = [(3, 4), (2, 3, 4), (0,), (0, 1, 2, 3, 4)]  # the convolutions that lose their BatchNorm


def without_norm(network: fastcnn.FastCNN, convolutions: tuple[int, ...]) -> fastcnn.FastCNN:
    """The network with the BatchNorm after each numbered convolution removed, that convolution biased."""
    kept, index = [], -1
    for layer in network.features:
        if isinstance(layer, nn.Conv2d):
            index += 1
            if index in convolutions:
                layer = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1, bias=True)
        if not (isinstance(layer, nn.BatchNorm2d) and index in convolutions):
            kept.append(layer)
    network.features = fastcnn.Features(*kept)
    return network.to(memory_format=torch.channels_last)


def recipe_step(convolutions: tuple[int, ...], x: torch.Tensor, y: torch.Tensor, precision: str):
    """A training step of cnn94's recipe on the network without those BatchNorms."""
    config = configs.TrainConfig.for_model(NAME)
    network = without_norm(registry.get(NAME).build(0.0), convolutions).train()
    recipe.set_up_network(network, config.dirac, config.bn_weight, config.bn_momentum)
    return bench.step_function(network, recipe.optimizer_for(network, config), x, y, precision, config.label_smoothing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=25, help="steps per timing")
    args = parser.parse_args()
    machine.set_cpu_modes()
    threads.use(2)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precision = loop.choose_precision("auto", NAME, cpu)
    x = torch.rand(128, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1)
    y = torch.randint(0, fashion.NUM_CLASSES, (128,))
    steps = {
        NAME: recipe_step((), x, y, precision),
        **{f"without BatchNorm after conv {', '.join(map(str, v))}": recipe_step(v, x, y, precision) for v in VARIANTS},
        bench.FLOOR: bench.floor_step(NAME, 128, cpu, precision),
    }
    for step in steps.values():
        bench.time_steps(step, 5, cpu)  # warm-up
    samples = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            samples[key].append(bench.time_steps(step, args.steps, cpu) * 1e3)
    ms = {key: statistics.median(values) for key, values in samples.items()}
    print(f"{precision}, batch 128, median of {args.rounds} interleaved rounds of {args.steps} steps")
    for key, value in ms.items():
        print(
            f"{key:40s} {value:6.2f} ms  {value / ms[bench.FLOOR]:.2f}x the floor  "
            f"{ms[NAME] / value:.3f}x as fast as {NAME}"
        )


if __name__ == "__main__":
    main()
