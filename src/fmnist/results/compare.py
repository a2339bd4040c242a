"""Comparisons, each chosen on validation and tested last:
- models (`fmnist reproduce --model A --model B`): one row per model (accuracy over seeds, times, size,
  inference speed) and the accuracy-time frontier drawn, from the summaries reproduce wrote per model;
- a sweep's configurations (`fmnist sweep`): validation accuracy over seeds per configuration, the best
  chosen, and only its runs evaluated on the test set."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np

from fmnist.core import files, machine
from fmnist.data import seed_report
from fmnist.nets import architectures
from fmnist.results import bench, evaluate, figures, records, report
from fmnist.training import registry


def write_comparison(summaries: dict[str, dict], curves: dict[str, list[list[dict]]], out: Path, device: str) -> dict:
    """comparison.json, .md and .html, and frontier.png (every model's validation curves and final test
    accuracy, the report's as a line)."""
    rows: dict[str, dict] = {}
    for name, summary in summaries.items():
        network = registry.get(name).build(0.0)
        rows[name] = {
            "summary": summary,
            "parameters": architectures.parameters(network),
            "mflops": architectures.mflops_per_image(network),
            "images_per_second": bench.evaluation_throughputs(name, 10_000, machine.resolve_device(device)),
        }
    finals = {
        name: (
            row["summary"]["stats"]["seconds"]["mean"],
            row["summary"]["stats"]["test_accuracy"]["mean"],
            row["summary"]["stats"]["test_accuracy"]["std"],
        )
        for name, row in rows.items()
    }
    ensembles = {
        name: (summary["ensemble"]["training_seconds"], summary["ensemble"]["test_accuracy"])
        for name, summary in summaries.items()
        if "ensemble" in summary
    }
    figures.frontier(curves, finals, seed_report.PUBLISHED["test_accuracy"], out / FRONTIER, ensembles)
    files.write_json(out / "comparison.json", rows)
    files.write_text(out / "comparison.md", comparison_markdown(rows))
    files.write_text(out / "comparison.html", comparison_html(rows, out))
    return rows


def comparison_markdown(rows: dict[str, dict]) -> str:
    """One row per model: test accuracy mean ± sd over seeds, training time, time to report.TIME_TO, size, speed."""

    def mean_sd(stats: dict, scale: float = 1.0, digits: int = 4, never: str = "never") -> str:
        return (
            never if math.isnan(stats["mean"]) else records.mean_sd(stats["mean"] * scale, stats["std"] * scale, digits)
        )

    targets = next(iter(rows.values()))["summary"].get("targets", report.TIME_TO)
    lines = [
        "| model | seeds | test accuracy | training time (s) | "
        + " | ".join(f"time to {a} validation accuracy (s)" for a in targets)
        + " | parameters | MFLOPs/image | inference images/s (fp32 / bf16) |",
        "|---" * (7 + len(targets)) + "|",
    ]
    for name, row in rows.items():
        stats = row["summary"]["stats"]
        times = " | ".join(
            mean_sd(stats[f"seconds_to_{a}"], digits=0, never=report.never_reached(row["summary"])) for a in targets
        )
        rates = " / ".join(f"{rate:,.0f}" for rate in row["images_per_second"].values())  # fp32 / bf16
        lines.append(
            f"| {name} | {len(row['summary']['seeds'])} | {mean_sd(stats['test_accuracy'])} | "
            f"{mean_sd(stats['seconds'], digits=0)} | {times} | {row['parameters']:,} | "
            f"{row['mflops']:.1f} | {rates} |"
        )
        together = row["summary"].get("ensemble")
        if together:  # one model of `members` networks: their parameters and FLOPs, their training time summed
            members, dashes = together["members"], " | ".join("–" for _ in targets)
            lines.append(
                f"| {name}: the seeds as one ensemble | {members} | {together['test_accuracy']:.4f} | "
                f"{together['training_seconds']:.0f} (its members') | {dashes} | {members * row['parameters']:,} | "
                f"{members * row['mflops']:.1f} | – |"
            )
    return "\n".join(lines) + f"\n\n![accuracy against training time]({FRONTIER})\n"


FRONTIER = "frontier.png"  # beside comparison.md


def comparison_html(rows: dict[str, dict], out: Path) -> str:
    """The comparison table and the frontier figure as one page (comparison.html)."""
    lines = comparison_markdown(rows).split("\n\n")[0].splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    blocks = [
        report.h("Models compared, mean ± sd over seeds"),
        report.table(cells[0], cells[2:]),
        report.image(
            FRONTIER,
            "Accuracy against training time: validation curves per seed, final test accuracy "
            f"(mean ± sd), the report's {seed_report.PUBLISHED['test_accuracy']:.4f} as a line",
        ),
    ]
    return report.to_html(blocks, Path(out))


def configuration_label(configuration: dict) -> str:
    """What a configuration sets, as a name (and a directory name's part): learning_rate=0.05,shift=1."""
    parts = ",".join(f"{k}={v}" for k, v in sorted(configuration.items())) or "recipe"
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", parts)


# ---------------------------------------------------------------------------------------------
# A sweep's configurations compared: chosen on validation, then tested
def summarise(results: list[dict], data_dir: str | None = None) -> dict:
    """Per configuration: validation accuracy mean ± sd over seeds. The best mean is chosen, and only the
    chosen configuration's runs are evaluated on the test set."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(configuration_label(result["configuration"]), []).append(result)
    rows = []
    for name, members in groups.items():
        accuracies = np.array([m["val_accuracy"] for m in members])
        rows.append(
            {
                "configuration": name,
                "settings": members[0]["configuration"],
                "seeds": len(members),
                "val_accuracy_mean": float(accuracies.mean()),
                "val_accuracy_std": float(accuracies.std(ddof=1)) if len(members) > 1 else math.nan,
                "seconds_mean": float(np.mean([m["seconds"] for m in members])),
                "run_dirs": [m["run_dir"] for m in members],
            }
        )
    rows.sort(key=lambda row: -row["val_accuracy_mean"])
    chosen = rows[0]
    tests = [evaluate.evaluate_run(Path(d), data_dir=data_dir)["test"]["accuracy"] for d in chosen["run_dirs"]]
    chosen["test_accuracy_mean"] = float(np.mean(tests))
    chosen["test_accuracy_std"] = float(np.std(tests, ddof=1)) if len(tests) > 1 else math.nan
    return {
        "configurations": rows,
        "chosen": chosen["configuration"],
        "test_accuracies": tests,
        "nodes": sorted({r["node"] for r in results}),
    }


HEADERS = ("configuration", "seeds", "validation accuracy", "seconds per run", "test accuracy")
NOTE = "Chosen on validation accuracy; only the chosen configuration was evaluated on the test set."


def summary_rows(summary: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for row in summary["configurations"]:
        chosen = row["configuration"] == summary["chosen"]
        rows.append(
            (
                row["configuration"] + (" (chosen)" if chosen else ""),
                str(row["seeds"]),
                records.mean_sd(row["val_accuracy_mean"], row["val_accuracy_std"]),
                f"{row['seconds_mean']:.0f}",
                records.mean_sd(row["test_accuracy_mean"], row["test_accuracy_std"]) if chosen else "",
            )
        )
    return rows


def summary_markdown(summary: dict) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|---" * len(HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summary)]
    return "\n".join(lines) + f"\n\n{NOTE}\n"


def write_summary(summary: dict, out: Path) -> list[Path]:
    """summary.json, summary.md, summary.html (the table) and summary.png (validation accuracy per configuration)."""
    out = Path(out)
    cells = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS) + "</tr>"]
    cells += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in summary_rows(summary)]
    page = (
        f"<!doctype html><meta charset='utf-8'><title>fmnist sweep</title><h1>fmnist sweep</h1>"
        f"<table border=1 cellpadding=4>{''.join(cells)}</table><p>{NOTE}</p><img src='summary.png'>"
    )
    return [
        files.write_json(out / "summary.json", summary),
        files.write_text(out / "summary.md", summary_markdown(summary)),
        files.write_text(out / "summary.html", page),
        figures.sweep(summary["configurations"], out / "summary.png"),
    ]
