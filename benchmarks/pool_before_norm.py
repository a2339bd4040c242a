"""An experiment the step's profile suggested: cnn94 with each 2x2 max pool moved before its BatchNorm
(conv, pool, BN, ReLU), so that BatchNorm and ReLU work on a quarter of the elements at the two pooled
stages (BatchNorm is ~18 % of cnn94's step). Unlike `fastcnn.pool_first` this is a different network:
BatchNorm's batch statistics are taken over the pooled map. Measured against cnn94 as it is, the
recipe unchanged:
  - speed, interleaved in one process: the training step (median of per-round ratios) and a whole
    epoch of 48,000 images with the recipe's augmentation;
  - validation accuracy of the final weights over seeds (cnn94's 24 epochs, `--validate-tta last`),
    the variant and cnn94 trained seed by seed, each pair on the same split.

    python benchmarks/pool_before_norm.py --seeds 5 --runs runs/pool-before-norm

The variant is registered in this process only (its runs' weights carry an architecture tag that fmnist
itself does not load). Model choices only: no test set here.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from pathlib import Path

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)

# isort: split
import torch
from torch import nn

from fmnist.data import fashion
from fmnist.nets import architectures, fastcnn
from fmnist.results import bench, records
from fmnist.training import configs, loop, recipe, registry

NAME = "cnn94-pool-bn"


class PoolBeforeNormCNN(fastcnn.FastCNN):
    """cnn94's network with each max pool moved before the BatchNorm (and ReLU) ahead of it."""

    def __init__(self, dropout: float = 0.0, **variant):
        super().__init__(dropout, **variant)
        layers, moved = list(self.features), []
        for layer in layers:  # [conv, BN, pool, ReLU] -> [conv, pool, BN, ReLU]
            if isinstance(layer, nn.MaxPool2d) and isinstance(moved[-1], nn.BatchNorm2d):
                moved.insert(len(moved) - 1, layer)
            else:
                moved.append(layer)
        self.features = nn.Sequential(*moved)
        self.to(memory_format=torch.channels_last)

    def for_inference(self) -> PoolBeforeNormCNN:
        return copy.deepcopy(self).eval()  # a BatchNorm after a pool is not folded into the conv here


def register() -> None:
    """The variant as an architecture and a model of this process only (cnn94's recipe, renamed)."""
    tag = "experiment-" + NAME
    architectures.ARCHITECTURES[tag] = architectures.Architecture(tag, PoolBeforeNormCNN, PoolBeforeNormCNN)
    recipe_of = dataclasses.replace(registry.CNN94.recipe, model=NAME)
    registry.REGISTRY[NAME] = dataclasses.replace(registry.CNN94, name=NAME, architecture=tag, recipe=recipe_of)


def step_ratio(rounds: int, precision: str, batch: int) -> dict:
    """cnn94's step time over the variant's: interleaved rounds of 10 steps, each ratio within its round."""
    x = torch.rand(batch, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1)
    y = torch.randint(0, fashion.NUM_CLASSES, (batch,))

    def step(name):
        config = configs.TrainConfig.for_model(name)
        network = registry.get(name).build(0.0).train()
        recipe.set_up_network(network, config.dirac, config.bn_weight, config.bn_momentum)
        return bench.step_function(
            network, recipe.optimizer_for(network, config), x, y, precision, config.label_smoothing
        )

    samples = records.interleaved({"cnn94": step("cnn94"), NAME: step(NAME)}, rounds, calls=10)
    return {"ratio": statistics.median(a / b for a, b in zip(samples["cnn94"], samples[NAME])), "rounds": samples}


def epoch_ratio(rounds: int, precision: str, images: int) -> float:
    """The same for a whole training epoch of random images with the recipe's augmentation."""
    cpu = torch.device("cpu")
    batch = registry.CNN94.recipe.batch_size
    return statistics.median(
        bench.time_epoch("cnn94", images, 0, batch, cpu, precision)[0]
        / bench.time_epoch(NAME, images, 0, batch, cpu, precision)[0]
        for _ in range(rounds)
    )


def validation_accuracy(name: str, seed: int, out: Path, **runtime) -> float:
    """The final weights' validation accuracy of one seed (trained, continued, or read where finished)."""
    config = configs.TrainConfig.for_model(name, seed=seed, validate_tta="last", **runtime)
    return loop.fit_unless_finished(config, out / f"{name}-seed{seed}")[-1]["val_accuracy"]


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--runs", type=Path, default=Path("runs/pool-before-norm"), help="the run directories")
    args = parser.parse_args(argv)
    threads = records.start(args)
    register()
    precision = loop.choose_precision("auto", "cnn94", torch.device("cpu"))
    quick = {"epochs": 1, "limit": 1200} if args.quick else {}
    step = step_ratio(
        1 if args.quick else args.rounds, precision, 16 if args.quick else registry.CNN94.recipe.batch_size
    )
    epoch = epoch_ratio(1 if args.quick else 6, precision, 512 if args.quick else 48_000)
    print(f"cnn94 / pool-before-BN: step {step['ratio']:.3f}, epoch {epoch:.3f} ({precision})", flush=True)
    seeds = 1 if args.quick else args.seeds
    pairs = [
        [validation_accuracy(name, seed, args.runs, threads=threads, **quick) for name in ("cnn94", NAME)]
        for seed in range(seeds)
    ]
    rows = [[f"seed {seed}", f"{plain:.4f}", f"{variant:.4f}"] for seed, (plain, variant) in enumerate(pairs)]
    columns = list(zip(*pairs))
    rows.append(["mean"] + [records.mean_sd_of(list(c)) for c in columns])
    paired = statistics.mean(v - p for p, v in pairs)
    rows.append(["paired difference", "", f"{paired:+.4f}"])
    for row in rows:
        print(" | ".join(row))
    return records.publish(
        "pool_before_norm",
        args,
        records.record(
            "speed-tier",
            "cnn94 with each max pool before its BatchNorm: speed and validation accuracy (final weights)",
            {
                "step_ratio": step["ratio"],
                "epoch_ratio": epoch,
                "precision": precision,
                "validation": {"cnn94": columns[0], NAME: columns[1]},
                "paired_difference": paired,
            },
            ["", "cnn94 validation", "pool-before-BN validation"],
            rows,
            rounds={"step": step["rounds"]},
        ),
    )


if __name__ == "__main__":
    main()
