"""Accuracy against training time for a model's recipe at several budgets (epochs), each a separate run.

A one-cycle schedule ends at its last epoch, so a shorter budget is its own run, not an early row of a
longer one. Every run is an ordinary run directory under --runs (re-running continues, and finished
runs are kept); the table gives validation accuracy (what choices are made on), test accuracy (final
figures only), and training time with validation.

    python benchmarks/recipe_frontier.py --model fast-cnn --epochs 6 12 18 30 --seeds 1
"""

from __future__ import annotations

import statistics
from pathlib import Path

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist import runs
from fmnist.results import evaluate, records
from fmnist.training import configs, loop


def run_budget(model: str, epochs: int, seed: int, out: Path, threads: int | None, limit: int | None) -> dict:
    run_dir = out / (f"{model}-{epochs}ep-seed{seed}" + ("" if limit is None else f"-limit{limit}"))
    config = configs.TrainConfig.for_model(model, epochs=epochs, seed=seed, threads=threads, limit=limit)
    history = loop.fit_unless_finished(config, run_dir)
    metrics = evaluate.evaluate_run(run_dir)
    return {
        "seconds": runs.elapsed(history)[-1],
        "val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("--model", default="fast-cnn")
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12, 18, 30])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=Path("runs/frontier"), help="where the run directories go")
    args = parser.parse_args(argv)
    epochs_list, limit = ([1], 2000) if args.quick else (args.epochs, None)
    rows, figures = [], {}
    for epochs in epochs_list:
        seeds = [run_budget(args.model, epochs, seed, args.runs, args.threads, limit) for seed in range(args.seeds)]
        mean = {key: statistics.mean(seed[key] for seed in seeds) for key in seeds[0]}
        figures[str(epochs)] = {"mean": mean, "seeds": seeds}
        rows.append(
            [
                args.model,
                epochs,
                len(seeds),
                f"{mean['seconds']:.0f}",
                f"{mean['val_accuracy']:.4f}",
                f"{mean['test_accuracy']:.4f}",
            ]
        )
        print(" | ".join(map(str, rows[-1])), flush=True)
    return records.publish(
        f"frontier-{args.model}",
        args,
        records.record(
            "accuracy-tier",
            f"{args.model}: accuracy against training budget (means over seeds, final weights)",
            figures,
            ["model", "epochs", "seeds", "seconds (with validation)", "validation accuracy", "test accuracy"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
