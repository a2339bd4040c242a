"""Models compared: one row per model (accuracy over seeds, times, size, inference speed) and the
accuracy-time frontier drawn, from the summaries `fmnist reproduce --model A --model B` wrote per model."""
from __future__ import annotations

from pathlib import Path

from fmnist.core import files, machine
from fmnist.data import seed_report
from fmnist.nets import architectures
from fmnist.results import bench, figures, report
from fmnist.training import registry


def write_comparison(summaries: dict[str, dict], curves: dict[str, list[list[dict]]], out: Path,
                     device: str) -> dict:
    """comparison.json, .md and .html, and frontier.png (every model's validation curves and final test
    accuracy, the report's as a line)."""
    rows: dict[str, dict] = {}
    for name, summary in summaries.items():
        network = registry.get(name).build(0.0)
        rows[name] = {"summary": summary, "parameters": architectures.parameters(network),
                      "mflops": architectures.mflops_per_image(network),
                      "images_per_second": bench.evaluation_throughputs(name, 10_000, machine.resolve_device(device))}
    finals = {name: (row["summary"]["stats"]["seconds"]["mean"], row["summary"]["stats"]["test_accuracy"]["mean"],
                     row["summary"]["stats"]["test_accuracy"]["std"]) for name, row in rows.items()}
    figures.frontier(curves, finals, seed_report.PUBLISHED["test_accuracy"], out / report.FRONTIER)
    files.write_json(out / "comparison.json", rows)
    files.write_text(out / "comparison.md", report.comparison_markdown(rows))
    files.write_text(out / "comparison.html", report.comparison_html(rows, out))
    return rows
