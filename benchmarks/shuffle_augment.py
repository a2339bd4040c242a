"""An epoch's shuffle and augmentation, before its first step: the plain form (gather, then
`recipe.augment`'s flip and shift) against the one-pass kernel (`recipe.shuffled_augmented`), on the
60,000 training images with cnn94's flips and 1-pixel shifts, interleaved, median of the rounds.

    python benchmarks/shuffle_augment.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist import api
from fmnist.core import machine, threads
from fmnist.nets import inference
from fmnist.training import configs, recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    machine.set_cpu_modes()
    threads.use(None)
    images = inference.to_tensor(api.load_data(show_progress=False).train_images, torch.device("cpu"))
    config = configs.Recipe.for_model("cnn94")
    forms = {
        "plain": lambda order, g: recipe.augment(images[order], g, config.flip, config.shift),
        "one pass": lambda order, g: recipe.shuffled_augmented(images, order, g, config.flip, config.shift),
    }
    seconds = {name: [] for name in forms}
    for round_ in range(args.rounds + 1):  # the first round warms up (and compiles)
        order = torch.randperm(len(images))
        outputs = []
        for name, form in forms.items():
            start = time.perf_counter()
            outputs.append(form(order, torch.Generator().manual_seed(round_)))
            seconds[name].append(time.perf_counter() - start)
        assert torch.equal(*outputs), "the two forms differ"
    plain, fused = (statistics.median(values[1:]) * 1e3 for values in seconds.values())
    print(
        f"{len(images)} images, {torch.get_num_threads()} threads: plain {plain:.0f} ms, one pass {fused:.0f} ms "
        f"({plain / fused:.1f}x)"
    )


if __name__ == "__main__":
    main()
