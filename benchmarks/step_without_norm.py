"""What bounds cnn94's step besides BatchNorm: the step with the BatchNorm of some of its convolutions
removed (each such convolution gets a bias instead), timed against cnn94 and the floor (its convolutions
and matrix products alone) in the same interleaved rounds. A bound, not a model: these networks are not
trained here, and without BatchNorm the recipe would have to be found again on validation.

    python benchmarks/step_without_norm.py [--rounds 9] [--steps 25]

Convolutions are numbered 0-4 from the input; the pools stay where they are (PyTorch's, where no fused
BatchNorm block holds them).
"""

from __future__ import annotations

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)

# isort: split
import torch
from torch import nn

from fmnist.data import fashion
from fmnist.nets import fastcnn
from fmnist.results import bench, records
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


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=9)
    parser.add_argument("--steps", type=int, default=25, help="steps per timing (default: %(default)s)")
    args = parser.parse_args(argv)
    records.start(args)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precision = loop.choose_precision("auto", NAME, cpu)
    batch = 16 if args.quick else 128
    x = torch.rand(batch, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1)
    y = torch.randint(0, fashion.NUM_CLASSES, (batch,))
    steps = {
        NAME: recipe_step((), x, y, precision),
        **{
            f"without BatchNorm after conv {', '.join(map(str, v))}": recipe_step(v, x, y, precision)
            for v in VARIANTS[: 1 if args.quick else None]
        },
        bench.FLOOR: bench.floor_step(NAME, batch, cpu, precision),
    }
    samples = records.interleaved(
        steps,
        rounds=1 if args.quick else args.rounds,
        calls=1 if args.quick else args.steps,
        warmup=1 if args.quick else 5,
    )
    ms = {key: 1e3 * records.spread(values)["median"] for key, values in samples.items()}
    print(f"{precision}, batch {batch}, median of interleaved rounds of {args.steps} steps")
    rows = [
        [key, f"{value:.2f}", f"{value / ms[bench.FLOOR]:.2f}x", f"{ms[NAME] / value:.3f}x"]
        for key, value in ms.items()
    ]
    print("\n".join(" | ".join(row) for row in rows))
    return records.publish(
        "step_without_norm",
        args,
        records.record(
            "speed",
            f"What bounds {NAME}'s step besides BatchNorm ({precision}, batch {batch})",
            ms,
            ["step", "ms", "x the floor", f"x as fast as {NAME}"],
            rows,
            rounds=samples,
        ),
    )


if __name__ == "__main__":
    main()
