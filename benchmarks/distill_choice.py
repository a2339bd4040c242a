"""Distillation's settings chosen on validation: a student trained without a teacher and with a few
temperatures, weights and ways of computing the targets, one seed each, on the teacher's own split.

    python benchmarks/distill_choice.py TEACHER [--model cnn94] [--seed 0] [--threads N] [--quick] [--out FILE]

TEACHER: a run or an ensemble that held out a validation split (e.g. `fmnist reproduce --model cnn94
--seeds 3 --ensemble` then OUT/ensemble). Each student's final validation accuracy and loss (its recipe's
TTA) and its seconds, the teacher's pass included; the test set is not read. --quick: seed-cnn, one epoch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fmnist import runs
from fmnist.results import records
from fmnist.training import configs, loop

CHOICES = [  # (temperature, weight, targets); weight 0: no teacher at all
    (1.0, 0.0, "image"),
    (4.0, 0.5, "image"),
    (2.0, 0.5, "image"),
    (4.0, 0.9, "image"),
    (4.0, 0.5, "batch"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("teacher", help="the teacher run (its split is the students')")
    parser.add_argument("--model", default="cnn94", help="the student's model (default: cnn94)")
    parser.add_argument("--seed", type=int, default=0, help="the students' seed (default: 0)")
    args = parser.parse_args(argv)
    threads = records.start(args)
    split = {key: runs.read_config(Path(args.teacher)).get(key) for key in ("validation_fraction", "limit")}
    model, extra = ("seed-cnn", {"epochs": 1}) if args.quick else (args.model, {})
    rows, figures = [], {"threads": threads, "student": model, "split": split}
    with tempfile.TemporaryDirectory() as folder:
        for index, (temperature, weight, targets) in enumerate(CHOICES[:2] if args.quick else CHOICES):
            taught = {"teacher": str(args.teacher), "distill_temperature": temperature, "distill_weight": weight}
            settings = {**split, **extra, **(taught | {"distill_targets": targets} if weight else {})}
            config = configs.TrainConfig.for_model(model, seed=args.seed, threads=threads, **settings)
            last = loop.fit(config, Path(folder) / f"student-{index}")[-1]
            name = f"T {temperature:g}, weight {weight:g}, by {targets}" if weight else "no teacher"
            figures[name] = {key: last[key] for key in ("val_accuracy", "val_loss", "elapsed")}
            rows.append([name, f"{last['val_accuracy']:.4f}", f"{last['val_loss']:.4f}", f"{last['elapsed']:.0f} s"])
            print(" | ".join(rows[-1]), flush=True)
    best = max(
        (name for name in figures if isinstance(figures[name], dict) and "val_accuracy" in figures[name]),
        key=lambda name: figures[name]["val_accuracy"],
    )
    figures["chosen"] = best
    return records.publish(
        "distill_choice",
        args,
        records.record(
            "accuracy-tier",
            f"Distillation's settings on validation: {model} students of one teacher, one seed each",
            figures,
            ["student", "validation accuracy", "validation loss", "seconds (teacher's pass included)"],
            rows,
            notes=[f"chosen on validation: {best}"],
        ),
    )


if __name__ == "__main__":
    main()
