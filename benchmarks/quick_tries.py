"""A user's first minute: every registered model trained one epoch on the first 6,000 training images
(`fmnist train --model M --epochs 1 --limit 6000`), with its quick settings (registry.ModelSpec.quick) and,
where it has some, with its recipe's own values instead, a few seeds each.

    python benchmarks/quick_tries.py [--seeds 3] [--threads N] [--quick] [--out FILE]

Each run's validation accuracy (its last fifth of the 6,000, what the quick settings were chosen on) and
its test accuracy (the 10,000 test images, final weights, as `fmnist evaluate` counts it), mean ± sd over
the seeds. --quick: seed-cnn on 600 images, one seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import fmnist
from fmnist.results import records
from fmnist.training import configs, loop, registry

EPOCHS, LIMIT = 1, 6000


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model and settings (default: 3)")
    args = parser.parse_args(argv)
    threads = records.start(args)
    names, limit, seeds = (["seed-cnn"], 600, 1) if args.quick else (list(registry.REGISTRY), LIMIT, args.seeds)
    test = fmnist.load_data(show_progress=False)
    figures: dict = {"threads": threads, "epochs": EPOCHS, "limit": limit, "seeds": seeds}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            spec = registry.get(name)
            own = {key: getattr(spec.recipe, key) for key in spec.quick}  # the quick settings undone
            for label, undo in [("quick settings", {}), ("recipe's own", own)] if own else [("recipe", {})]:
                val, tested = [], []
                for seed in range(seeds):
                    config = configs.TrainConfig.for_model(
                        name, epochs=EPOCHS, limit=limit, seed=seed, threads=threads, **undo
                    )
                    run_dir = Path(folder) / f"{name}-{len(rows)}-{seed}"
                    val.append(loop.fit(config, run_dir)[-1]["val_accuracy"])
                    predicted = fmnist.open_run(run_dir).predict(test.test_images).classes
                    tested.append(float((predicted == test.test_labels).mean()))
                settings = ", ".join(f"{key} {getattr(config, key):g}" for key in spec.quick)
                figures[f"{name}, {label}"] = {"settings": settings, "val_accuracy": val, "test_accuracy": tested}
                rows.append([name, label, settings, records.mean_sd_of(val), records.mean_sd_of(tested)])
                print(" | ".join(rows[-1]), flush=True)
    return records.publish(
        "quick_tries",
        args,
        records.record(
            "quick-tries",
            f"Quick tries: every model, {EPOCHS} epoch on the first {limit:,} training images, {seeds} seeds",
            figures,
            ["model", "settings", "values", "validation accuracy", "test accuracy"],
            rows,
            notes=[f"each run: fmnist train --model M --epochs {EPOCHS} --limit {limit} --seed S"],
        ),
    )


if __name__ == "__main__":
    main()
