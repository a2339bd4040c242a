"""Distillation's settings chosen on validation: a student trained without a teacher and with a few
temperatures and weights, one seed each, on the teacher's own split; then one epoch with the targets
computed by image and one with them computed on every augmented batch, timed one after the other.

    python benchmarks/distill_choice.py TEACHER [--model cnn94] [--seed 0] [--threads N] [--quick] [--out FILE]

TEACHER: a run or an ensemble that held out a validation split (e.g. `fmnist reproduce --model cnn94
--seeds 3 --ensemble` then OUT/ensemble). Each student's final validation accuracy and loss (its recipe's
TTA) and its own seconds (its elapsed time less the teacher's); the test set is not read. --quick:
seed-cnn, one epoch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fmnist import runs
from fmnist.results import records
from fmnist.training import configs, loop

CHOICES = [(1.0, 0.0), (4.0, 0.5), (2.0, 0.5), (4.0, 0.9)]  # (temperature, weight); weight 0: no teacher


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("teacher", help="the teacher run (its split is the students')")
    parser.add_argument("--model", default="cnn94", help="the student's model (default: cnn94)")
    parser.add_argument("--seed", type=int, default=0, help="the students' seed (default: 0)")
    args = parser.parse_args(argv)
    threads = records.start(args)
    stored = runs.read_config(Path(args.teacher))
    split = {key: stored.get(key) for key in ("validation_fraction", "limit")}
    members = stored["ensemble"]["members"] if isinstance(stored.get("ensemble"), dict) else None
    taught_by = f"an ensemble of {len(members)}" if members else stored.get("model", "one teacher")
    model, extra = ("seed-cnn", {"epochs": 1}) if args.quick else (args.model, {})
    rows, figures = [], {"threads": threads, "student": model, "split": split}
    with tempfile.TemporaryDirectory() as folder:
        for index, (temperature, weight) in enumerate(CHOICES[:2] if args.quick else CHOICES):
            taught = {"teacher": str(args.teacher), "distill_temperature": temperature, "distill_weight": weight}
            config = configs.TrainConfig.for_model(
                model, seed=args.seed, threads=threads, **split, **extra, **(taught if weight else {})
            )
            history = loop.fit(config, Path(folder) / f"student-{index}")
            last, own = history[-1], sum(row["seconds"] for row in history)
            name = f"T {temperature:g}, weight {weight:g}" if weight else "no teacher"
            figures[name] = {"val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"], "seconds": own}
            rows.append([name, f"{last['val_accuracy']:.4f}", f"{last['val_loss']:.4f}", f"{own:.0f} s"])
            print(" | ".join(rows[-1]), flush=True)
        for targets in ("image", "batch"):  # one epoch each: what the teacher costs per epoch either way
            config = configs.TrainConfig.for_model(
                model,
                seed=args.seed,
                threads=threads,
                epochs=1,
                teacher=str(args.teacher),
                distill_targets=targets,
                **split,
            )
            row = loop.fit(config, Path(folder) / f"epoch-by-{targets}")[0]
            figures[f"one epoch, targets by {targets}"] = {"seconds": row["seconds"], "elapsed": row["elapsed"]}
            before = row["elapsed"] - row["seconds"]  # the teacher's training, and by image its pass
            rows.append(
                [f"one epoch, targets by {targets}", "", "", f"{row['seconds']:.1f} s (+{before:.0f} s before)"]
            )
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
            f"Distillation's settings on validation: {model} students of {taught_by}, one seed each",
            figures,
            ["student", "validation accuracy", "validation loss", "seconds (the student's own)"],
            rows,
            notes=[f"chosen on validation: {best}"],
        ),
    )


if __name__ == "__main__":
    main()
