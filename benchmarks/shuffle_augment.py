"""An epoch's shuffle and augmentation, before its first step: the plain form (gather, then
`recipe.augment`'s flip and shift) against the one-pass kernel (`recipe.shuffled_augmented`), on the
60,000 training images with cnn94's flips and 1-pixel shifts, interleaved, median of the rounds.

    python benchmarks/shuffle_augment.py [--rounds 9]
"""

from __future__ import annotations

import fmnist

# isort: split
import torch

from fmnist.nets import inference
from fmnist.results import records
from fmnist.training import configs, recipe


def main(argv: list[str] | None = None) -> dict:
    args = records.benchmark_parser(__doc__, rounds=9).parse_args(argv)
    threads = records.start(args)
    images = fmnist.load_data(show_progress=False).train_images[: 2_000 if args.quick else None]
    images = inference.to_tensor(images, torch.device("cpu"))
    config = configs.Recipe.for_model("cnn94")
    order, outputs = torch.randperm(len(images)), {}

    def form(name, augment):
        def run():  # the same draws for both forms: their outputs must be equal
            outputs[name] = augment(order, torch.Generator().manual_seed(0))

        return run

    samples = records.interleaved(
        {
            "plain": form("plain", lambda o, g: recipe.augment(images[o], g, config.flip, config.shift)),
            "one pass": form(
                "one pass", lambda o, g: recipe.shuffled_augmented(images, o, g, config.flip, config.shift)
            ),
        },
        rounds=1 if args.quick else args.rounds,
    )
    assert torch.equal(outputs["plain"], outputs["one pass"]), "the two forms differ"
    plain, fused = (1e3 * records.spread(samples[name])["median"] for name in samples)
    print(
        f"{len(images)} images, {threads} threads: plain {plain:.0f} ms, one pass {fused:.0f} ms ({plain / fused:.1f}x)"
    )
    figures = {"images": len(images), "plain_ms": plain, "one_pass_ms": fused, "speedup": plain / fused}
    return records.publish(
        "shuffle_augment",
        args,
        records.record(
            "speed",
            "An epoch's shuffle and augmentation: one pass against the plain form",
            figures,
            ["form", "ms per epoch (median)"],
            [["plain", f"{plain:.0f}"], ["one pass", f"{fused:.0f}"]],
            rounds=samples,
        ),
    )


if __name__ == "__main__":
    main()
