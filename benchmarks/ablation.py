"""The speed tier's ablation table, as airbench's: fast-cnn's recipe, then each technique added in turn,
validation accuracy (final weights) at a fixed budget of epochs and seconds per epoch, same machine, one
sitting. A technique stays in the recipe for the rows below it only if its row beat the best so far
(precision: if it kept validation accuracy within `--tolerance`, since it buys time, not accuracy);
rows that did not help are kept in the table.

    python benchmarks/ablation.py --epochs 12 --seeds 1 --runs runs/ablation

Each row is an ordinary run directory under --runs (re-running continues where it stopped); the table and
its figures go to the record. Model choices only: no test set here.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist.results import records
from fmnist.training import configs, loop

# (label, settings added on top of the rows kept above); the first row is fast-cnn's recipe as it is.
ROWS = [
    ("fast-cnn's recipe (fp32)", {"precision": "fp32"}),
    ("bf16 autocast", {"precision": "bf16"}),
    ("6-view TTA (flip x ±1 px)", {"tta_shift": 1}),
    ("alternating flip", {"alternate_flip": True}),
    ("label smoothing 0.2", {"label_smoothing": 0.2}),
    ("BatchNorm biases at 64x the rate", {"bn_bias_lr": 64}),
    ("BatchNorm scales frozen", {"bn_weight": False}),
    ("identity init of the convs", {"dirac": True}),
    ("batch 256, rate 0.2", {"batch_size": 256, "learning_rate": 0.2}),
    ("shifts of 2 px", {"shift": 2}),
    ("whitening stem", {"model": "whitened-cnn"}),
    ("BatchNorm momentum 0.4", {"bn_momentum": 0.4}),
    ("Lookahead", {"lookahead": True}),
    ("Muon for the conv filters, 0.5x the rate", {"optimizer": "muon", "muon_lr": 0.5}),
    ("Muon for the conv filters, 0.2x the rate", {"optimizer": "muon", "muon_lr": 0.2}),
    ("Muon for the conv filters, 1x the rate", {"optimizer": "muon", "muon_lr": 1.0}),
]
BASE = "fast-cnn"  # every row starts from this model's recipe; a row on another network changes only the network


def train(out: Path, settings: dict, epochs: int, seed: int, threads: int | None, limit: int | None) -> list[dict]:
    """One run (or the rest of it, or only read where finished); its history."""
    recipe = configs.recipe_fields(configs.Recipe.for_model(BASE))
    config = configs.TrainConfig(
        **{**recipe, **settings, "epochs": epochs, "seed": seed, "threads": threads, "limit": limit}
    )
    return loop.fit_unless_finished(config, out)


def run_row(out: Path, index: int, settings: dict, epochs: int, seeds: int, **runtime) -> dict:
    try:
        histories = [train(out / f"row{index}-seed{seed}", settings, epochs, seed, **runtime) for seed in range(seeds)]
    except (ArithmeticError, RuntimeError, ValueError) as error:  # e.g. the loss diverged: the table goes on
        print(f"  failed: {error}")
        return {"val_accuracy": math.nan, "seconds_per_epoch": math.nan, "seeds": seeds}
    return {
        "val_accuracy": statistics.mean(h[-1]["val_accuracy"] for h in histories),
        # the median epoch (validation included): a moment of other work on the machine moves it least
        "seconds_per_epoch": statistics.mean(statistics.median(r["seconds"] for r in h) for h in histories),
        "seeds": seeds,
    }


def retime(out: Path, rows: list[dict], epochs: int = 3, **runtime) -> None:
    """Seconds per epoch again, each row's recipe trained `epochs` epochs in turn on a quiet machine
    (the accuracy runs may have shared it): the median epoch of each replaces the row's figure."""
    for index, row in enumerate(rows):
        history = train(out / f"row{index}-timing", row["recipe"], epochs, seed=0, **runtime)
        row["seconds_per_epoch"] = statistics.median(r["seconds"] for r in history)


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.002, help="bf16's allowance in validation accuracy")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="where the run directories go")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="then time each row again in turn (3 epochs each): run it on a quiet machine",
    )
    args = parser.parse_args(argv)
    table, epochs = (ROWS[:2], 1) if args.quick else (ROWS, args.epochs)
    runtime = {"threads": args.threads, "limit": 1200 if args.quick else None}
    kept: dict = {}
    best, rows = None, []
    for index, (label, settings) in enumerate(table):
        result = run_row(args.runs, index, {**kept, **settings}, epochs, args.seeds, **runtime)
        allowance = args.tolerance if "precision" in settings and best is not None else 0.0
        helped = best is None or result["val_accuracy"] > best - allowance  # False for NaN
        if helped:
            kept, best = {**kept, **settings}, result["val_accuracy"]
        rows.append(
            {"technique": label, "settings": settings, "recipe": {**kept, **settings}, **result, "kept": helped}
        )
        print(
            f"{label}: val {result['val_accuracy']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch, "
            f"{'kept' if helped else 'dropped'}",
            flush=True,
        )
    if args.retime:
        retime(args.runs, rows, **runtime)
    return records.publish(
        "ablation",
        args,
        records.record(
            "speed-tier",
            f"The speed tier's ablation: fast-cnn's recipe, each technique added in turn ({epochs} epochs, validation)",
            {"epochs": epochs, "rows": rows, "recipe": kept},
            ["technique (added in turn)", f"validation accuracy, {epochs} epochs", "s/epoch", "kept"],
            [
                [
                    r["technique"],
                    f"{r['val_accuracy']:.4f}",
                    f"{r['seconds_per_epoch']:.2f}",
                    "yes" if r["kept"] else "no",
                ]
                for r in rows
            ],
        ),
    )


if __name__ == "__main__":
    main()
