"""The speed tier's ablation table, as airbench's: fast-cnn's recipe, then each technique added in turn,
validation accuracy (final weights) at a fixed budget of epochs and seconds per epoch, same machine, one
sitting. A technique stays in the recipe for the rows below it only if its row beat the best so far
(precision: if it kept validation accuracy within `--tolerance`, since it buys time, not accuracy);
rows that did not help are kept in the table.

    python benchmarks/ablation.py --epochs 12 --seeds 1 --out runs/ablation

Each row is an ordinary `fmnist train` run directory (re-running continues where it stopped); the table
goes to OUT/ablation.md and the figures to OUT/ablation.json. Model choices only: no test set here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# (label, flags added on top of the rows kept above); the first row is fast-cnn's recipe as it is.
ROWS = [
    ("fast-cnn's recipe (fp32)", {"precision": "fp32"}),
    ("bf16 autocast", {"precision": "bf16"}),
    ("6-view TTA (flip x ±1 px)", {"tta-shift": 1}),
    ("alternating flip", {"alternate-flip": True}),
    ("label smoothing 0.2", {"label-smoothing": 0.2}),
    ("BatchNorm biases at 64x the rate", {"bn-bias-lr": 64}),
    ("BatchNorm scales frozen", {"bn-weight": False}),
    ("identity init of the convs", {"dirac": True}),
    ("batch 256, rate 0.2", {"batch-size": 256, "learning-rate": 0.2}),
    ("shifts of 2 px", {"shift": 2}),
    ("whitening stem", {"model": "whitened-cnn"}),
    ("BatchNorm momentum 0.4", {"bn-momentum": 0.4}),
    ("Lookahead", {"lookahead": True}),
    ("Muon for the conv filters, 0.5x the rate", {"optimizer": "muon", "muon-lr": 0.5}),
    ("Muon for the conv filters, 0.2x the rate", {"optimizer": "muon", "muon-lr": 0.2}),
    ("Muon for the conv filters, 1x the rate", {"optimizer": "muon", "muon-lr": 1.0}),
]
BASE = "fast-cnn"  # every row starts from this model's recipe, each setting passed explicitly


def flag_list(flags: dict) -> list[str]:
    out = []
    for name, value in flags.items():
        if value is True or value is False:
            out.append(f"--{name}" if value else f"--no-{name}")
        else:
            out += [f"--{name}", str(value)]
    return out


def base_flags() -> dict:
    """The base model's whole recipe as flags: a row on another network changes only the network."""
    from fmnist.training import configs

    recipe = configs.Recipe.for_model(BASE)
    return {name.replace("_", "-"): getattr(recipe, name) for name in configs.RECIPE_FIELDS if name != "epochs"}


def train(out: Path, flags: dict, epochs: int, seed: int) -> list[dict]:
    """One run (or the rest of it); its history."""
    command = [
        sys.executable,
        "-m",
        "fmnist",
        "train",
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--quiet",
        *flag_list({**base_flags(), **flags}),
    ]
    history = out / "history.json"
    if history.is_file() and len(json.loads(history.read_text())) >= epochs:
        return json.loads(history.read_text())
    command += ["--resume", str(out)] if (out / "config.json").is_file() else ["--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(history.read_text())


def run_row(out: Path, index: int, flags: dict, epochs: int, seeds: int) -> dict:
    try:
        histories = [train(out / f"row{index}-seed{seed}", flags, epochs, seed) for seed in range(seeds)]
    except subprocess.CalledProcessError:  # e.g. the loss diverged: the row failed, the table goes on
        return {"val_accuracy": float("nan"), "seconds_per_epoch": float("nan"), "seeds": seeds}
    return {
        "val_accuracy": statistics.mean(h[-1]["val_accuracy"] for h in histories),
        # the median epoch (validation included): a moment of other work on the machine moves it least
        "seconds_per_epoch": statistics.mean(statistics.median(r["seconds"] for r in h) for h in histories),
        "seeds": seeds,
    }


def retime(out: Path, rows: list[dict], epochs: int = 3) -> None:
    """Seconds per epoch again, each row's recipe trained `epochs` epochs in turn on a quiet machine
    (the accuracy runs may have shared it): the median epoch of each replaces the row's figure."""
    for index, row in enumerate(rows):
        history = train(out / f"row{index}-timing", row["recipe"], epochs, seed=0)
        row["seconds_per_epoch"] = statistics.median(r["seconds"] for r in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.002, help="bf16's allowance in validation accuracy")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument(
        "--retime",
        action="store_true",
        help="then time each row again in turn (3 epochs each): run it on a quiet machine",
    )
    args = parser.parse_args()
    kept, best, rows = {}, None, []
    for index, (label, flags) in enumerate(ROWS):
        result = run_row(args.out, index, {**kept, **flags}, args.epochs, args.seeds)
        allowance = args.tolerance if "precision" in flags and best is not None else 0.0
        helped = best is None or result["val_accuracy"] > best - allowance  # False for NaN
        if helped:
            kept, best = {**kept, **flags}, result["val_accuracy"]
        rows.append({"technique": label, "flags": flags, "recipe": {**kept, **flags}, **result, "kept": helped})
        print(
            f"{label}: val {result['val_accuracy']:.4f}, {result['seconds_per_epoch']:.2f} s/epoch, "
            f"{'kept' if helped else 'dropped'}",
            flush=True,
        )
    if args.retime:
        retime(args.out, rows)
    lines = [
        f"| technique (added in turn) | validation accuracy, {args.epochs} epochs | s/epoch | kept |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['technique']} | {r['val_accuracy']:.4f} | {r['seconds_per_epoch']:.2f} | "
        f"{'yes' if r['kept'] else 'no'} |"
        for r in rows
    ]
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "ablation.json").write_text(json.dumps({"epochs": args.epochs, "rows": rows, "recipe": kept}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
