"""Accuracy against training time for a model's recipe at several budgets (epochs), each a separate run.

A one-cycle schedule ends at its last epoch, so a shorter budget is its own run, not an early row of a
longer one. Every run is an ordinary run directory under --out (re-running continues, and finished
runs are kept); the table gives validation accuracy (what choices are made on), test accuracy (final
figures only), and training time with validation.

    python benchmarks/recipe_frontier.py --model fast-cnn --epochs 6 12 18 30 --seeds 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist import runs
from fmnist.core import files, machine
from fmnist.results import evaluate
from fmnist.training import configs, loop


def run_budget(model: str, epochs: int, seed: int, out: Path) -> dict:
    run_dir = out / f"{model}-{epochs}ep-seed{seed}"
    config = configs.TrainConfig.for_model(model, epochs=epochs, seed=seed)
    history = loop.fit_unless_finished(config, run_dir)
    metrics = evaluate.evaluate_run(run_dir)
    return {
        "model": model,
        "epochs": epochs,
        "seed": seed,
        "seconds": runs.elapsed(history)[-1],
        "train_seconds": sum(row["train_seconds"] for row in history),
        "val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast-cnn")
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12, 18, 30])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/frontier"))
    args = parser.parse_args()
    rows = []
    print("| model | epochs | seed | seconds (with validation) | validation accuracy | test accuracy |")
    print("|---|---|---|---|---|---|")
    for epochs in args.epochs:
        for seed in range(args.seeds):
            row = run_budget(args.model, epochs, seed, args.out)
            rows.append(row)
            print(
                f"| {row['model']} | {epochs} | {seed} | {row['seconds']:.0f} | {row['val_accuracy']:.4f} | "
                f"{row['test_accuracy']:.4f} |",
                flush=True,
            )
    files.write_json(args.out / f"frontier-{args.model}.json", rows)
    print(json.dumps({"machine": machine.describe_machine(machine.resolve_device("cpu"))}))


if __name__ == "__main__":
    main()
