"""The report: one self-contained HTML page (figures embedded) and a Markdown twin.

The content is built once as a list of blocks (heading, paragraph, table, image) and rendered twice,
so the two versions cannot drift apart.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import re
from pathlib import Path

from fmnist import runs
from fmnist.core import files
from fmnist.data import fashion, seed_report
from fmnist.nets import architectures, ensemble
from fmnist.results import evaluate
from fmnist.training import configs, registry


def h(text):
    return ("h2", text)


def p(text):
    return ("p", text)


def table(headers, rows):
    return ("table", headers, rows)


def image(name, alt):
    return ("img", name, alt)


# ---------------------------------------------------------------------------------------------
MIN_EPOCHS_TO_JUDGE = 3  # a validation curve needs a minimum and epochs after it


def generalisation_note(metrics: dict, history: list[dict]) -> str:
    """An honest reading of the gap between training and held-out figures."""
    train_m, test_m = metrics["train"], metrics["test"]
    text = (
        f"Training loss {train_m['loss']:.4f} against test loss {test_m['loss']:.4f} "
        f"({test_m['loss'] / max(train_m['loss'], 1e-12):.1f}x); training accuracy {train_m['accuracy']:.4f} "
        f"against test accuracy {test_m['accuracy']:.4f} "
        f"(a gap of {100 * (train_m['accuracy'] - test_m['accuracy']):.1f} points). "
    )
    history = runs.validated(history)  # a final fit on every image validates nothing
    if 0 < len(history) < MIN_EPOCHS_TO_JUDGE:
        return text + (
            f"Validated over {len(history)} epoch{'s' * (len(history) != 1)}: too short a run to judge over- or "
            f"underfitting (a curve of {MIN_EPOCHS_TO_JUDGE} epochs or more is needed); train longer to read one."
        )
    if history:
        best = min(history, key=lambda row: row["val_loss"])
        last = history[-1]
        text += (
            f"Validation loss was lowest at epoch {best['epoch']} ({best['val_loss']:.4f}) and ended at "
            f"{last['val_loss']:.4f} after epoch {last['epoch']}. "
        )
        if last["val_loss"] > 1.1 * best["val_loss"]:
            text += (
                "The network overfits after that epoch: it keeps fitting its training data while its "
                "held-out loss rises. The original report concluded that the model does not overfit; "
                "these figures (like its own: training loss 0.04, test loss 0.42) say otherwise. "
                "Early stopping near the lowest validation loss (best.safetensors) would give a lower test loss."
            )
        else:
            text += "Validation loss did not rise notably after its minimum: no clear sign of overfitting in this run."
    return text


def comparison_table(metrics: dict) -> tuple:
    test_m, train_m = metrics["test"], metrics["train"]
    rows = [
        (name, f"{ours:.4f}", f"{seed_report.PUBLISHED[key]:.4f}", f"{seed_report.TF_RERUN[key]:.4f}")
        for name, key, ours in (
            ("test loss", "test_loss", test_m["loss"]),
            ("test accuracy", "test_accuracy", test_m["accuracy"]),
            ("training loss", "train_loss", train_m["loss"]),
            ("training accuracy", "train_accuracy", train_m["accuracy"]),
        )
    ]
    rows.append(
        ("correct / wrong (test)", f"{test_m['correct']:,} / {test_m['wrong']:,}", seed_report.PUBLISHED_COUNTS, "")
    )
    return table(("figure", "this run", "original report", "TF-Keras rerun (2 cores)"), rows)


def per_class_table(metrics: dict) -> tuple:
    report, matrix = metrics["test"]["classification_report"], metrics["test"]["confusion_matrix"]
    rows = []
    for label, name in enumerate(fashion.CLASS_NAMES):
        r = report[name]
        published_precision, published_correct = seed_report.PUBLISHED_PER_CLASS[name]
        rows.append(
            (
                name,
                f"{r['precision']:.2f}",
                f"{r['recall']:.2f}",
                f"{r['f1-score']:.2f}",
                f"{int(r['support']):,}",
                f"{matrix[label][label]:,}",
                f"{published_precision:.2f}",
                f"{published_correct:,}",
            )
        )
    for average in ("macro avg", "weighted avg"):
        r = report[average]
        rows.append(
            (
                average,
                f"{r['precision']:.2f}",
                f"{r['recall']:.2f}",
                f"{r['f1-score']:.2f}",
                f"{int(r['support']):,}",
                "",
                "",
                "",
            )
        )
    return table(
        ("class", "precision", "recall", "F1", "support", "correct", "report: precision", "report: correct"), rows
    )


def training_blocks(config: dict, history: list[dict], recipe: str) -> list:
    if isinstance(config.get("ensemble"), dict):
        return ensemble_blocks(config["ensemble"])
    if not history:
        return [p("No training history: this run was imported, not trained here.")]
    machine = config.get("machine", {})
    total = sum(row["train_seconds"] for row in history)
    steps = sum(row["steps"] for row in history)
    rows = [
        ("model", config.get("model", registry.DEFAULT)),
        ("epochs", len(history)),
        ("steps per epoch", history[-1]["steps"]),
        ("recipe", recipe),
        ("loss", "categorical cross-entropy"),
        ("validation fraction", config["validation_fraction"]),
        ("seed", config["seed"]),
        ("device", f"{machine.get('device')} ({machine.get('device_name')}), {machine.get('threads')} threads"),
        ("versions", f"fmnist {machine.get('fmnist')}, torch {machine.get('torch')}"),
        (
            "training time",
            f"{total:.1f} s ({1000 * total / steps:.1f} ms/step); "
            f"with validation {sum(row['seconds'] for row in history):.1f} s",
        ),
    ]
    return [
        table(("setting", "value"), [(k, str(v)) for k, v in rows]),
        image("learning_curves.png", "learning curves"),
    ]


def ensemble_blocks(about: dict) -> list:
    """An ensemble's members (training/ensembles.py) in place of a training history."""
    listed = about.get("members")
    listed = listed if isinstance(listed, list) else []
    members = [m for m in listed[: ensemble.MAX_MEMBERS] if isinstance(m, dict)]
    rows = [(m.get("run"), m.get("model"), m.get("seed"), f"{m.get('seconds', 0):.1f} s") for m in members]
    said = (
        f"An ensemble of {len(members)} runs, their {about.get('combine')} averaged (chosen: {about.get('chosen')}), "
        f"{about.get('training_seconds', 0):.1f} s of training in all. The architecture below is the first member's."
    )
    return [p(html.escape(said)), table(("run", "model", "seed", "training time"), [tuple(map(str, r)) for r in rows])]


def architecture_table(network) -> tuple:
    rows = [(name, shape, f"{count:,}") for name, shape, count in architectures.layer_table(network)]
    return table(
        ("layer (type)", "output shape", "params"), [*rows, ("total", "", f"{architectures.parameters(network):,}")]
    )


def results_table(train_m: dict, test_m: dict) -> tuple:
    rows = [
        (name, f"{m['count']:,}", f"{m['loss']:.4f}", f"{m['accuracy']:.4f}")
        for name, m in (("training split", train_m), ("test set", test_m))
    ]
    return table(("data", "images", "loss", "accuracy"), rows)


def build(run_dir: Path) -> list:
    """The report's blocks, from a run directory that `fmnist evaluate` has been through."""
    run_dir = Path(run_dir)
    metrics, config, history = evaluate.load_metrics(run_dir), runs.read_config(run_dir), runs.read_history(run_dir)
    test_m, train_m = metrics["test"], metrics["train"]
    network = registry.get(config.get("model", registry.DEFAULT)).build(0.0)  # runs before the registry: the seed
    return [
        p(
            f"Run <code>{html.escape(str(run_dir))}</code>, weights {metrics['weights']}, computed in "
            f"{html.escape(str(metrics.get('precision', 'fp32')))}, written {datetime.datetime.now():%Y-%m-%d %H:%M}."
        ),
        p(
            f"<b>Test accuracy {test_m['accuracy']:.4f}</b> ({test_m['correct']:,} right, {test_m['wrong']:,} wrong "
            f"of {test_m['count']:,}); the original report: {seed_report.PUBLISHED['test_accuracy']:.4f} "
            f"({seed_report.PUBLISHED_COUNTS})."
        ),
        h("Data"),
        p(
            f"Fashion-MNIST from {html.escape(metrics['data_source'])}: 60,000 training and 10,000 test images, "
            f"28x28 grayscale, 10 classes. The last {config['validation_fraction']:.0%} of the training images is held "
            f"out for validation, unshuffled, as Keras's validation_split does; training uses the other "
            f"{train_m['count']:,}. Pixels are scaled to [0, 1]."
        ),
        image("samples.png", "first 25 training images"),
        h("Architecture"),
        architecture_table(network),
        h("Training"),
        *training_blocks(config, history, configs.load_config(run_dir).describe()),
        h("Results"),
        results_table(train_m, test_m),
        h("Against the original report"),
        comparison_table(metrics),
        h("Per class (test set)"),
        per_class_table(metrics),
        image("confusion_matrix.png", "confusion matrix"),
        image("predictions.png", "first 25 test predictions"),
        image("mistakes.png", "most confident mistakes"),
        h("Generalisation"),
        p(generalisation_note(metrics, history)),
    ]


# ---------------------------------------------------------------------------------------------
def to_html(blocks: list, figures_dir: Path) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{block[1]}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img" and (figures_dir / block[1]).exists():
            encoded = base64.b64encode((figures_dir / block[1]).read_bytes()).decode()
            parts.append(
                f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(block[2])}">'
                f"<figcaption>{html.escape(block[2])}</figcaption></figure>"
            )
    return HTML_PAGE.format(body="\n".join(parts))


def to_markdown(blocks: list, figures_dir: Path) -> str:
    lines = ["# Fashion-MNIST CNN: reproduction report", ""]
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [re.sub(r"</?(b|code)>", lambda m: "**" if m.group(1) == "b" else "`", block[1]), ""]
        elif kind == "table":
            lines += ["| " + " | ".join(block[1]) + " |", "|" + "---|" * len(block[1])]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in block[2]] + [""]
        elif kind == "img" and (figures_dir / block[1]).exists():
            lines += [f"![{block[2]}]({runs.FIGURES}/{block[1]})", ""]
    return html.unescape("\n".join(lines))


def write_report(run_dir: Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    blocks = build(run_dir)
    figures_dir = run_dir / runs.FIGURES
    return (
        files.write_text(run_dir / runs.REPORT_HTML, to_html(blocks, figures_dir)),
        files.write_text(run_dir / runs.REPORT_MD, to_markdown(blocks, figures_dir)),
    )


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fashion-MNIST CNN: reproduction report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
figcaption {{ color: #666; font-size: .9rem; }}
</style></head>
<body><h1>Fashion-MNIST CNN: reproduction report</h1>
{body}
</body></html>
"""


# ---------------------------------------------------------------------------------------------
TIME_TO = (0.91, 0.93, 0.94)  # validation accuracies whose time to reach the summary states (and any --target)


def seed_summary(results: dict[int, dict], histories: dict[int, list[dict]], targets=TIME_TO) -> dict:
    """Per-seed test/train figures, seconds, time to each target; mean, standard deviation, min and max over seeds."""
    import numpy as np

    keys = {
        "test_accuracy": ("test", "accuracy"),
        "test_loss": ("test", "loss"),
        "train_accuracy": ("train", "accuracy"),
        "train_loss": ("train", "loss"),
    }
    per_seed = {seed: {key: m[part][field] for key, (part, field) in keys.items()} for seed, m in results.items()}
    for seed, history in histories.items():
        per_seed[seed]["seconds"] = runs.elapsed(history)[-1] if history else None
        per_seed[seed].update({f"seconds_to_{a}": runs.time_to_accuracy(history, a) for a in targets})
    stats = {}
    for key in per_seed[next(iter(per_seed))]:
        values = np.array([row[key] for row in per_seed.values()], dtype=float)  # None (never reached): NaN
        # One seed has no spread: its standard deviation is undefined (NaN, printed "–"), not 0.
        stats[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    validated = any(runs.validated(history) for history in histories.values())  # a final fit validates nothing
    return {
        "seeds": per_seed,
        "stats": stats,
        "published": seed_report.PUBLISHED,
        "targets": list(targets),
        "validated": validated,
    }


def never_reached(summary: dict) -> str:
    """What a time to a validation accuracy that is not there means: never reached, or never validated."""
    return "never" if summary.get("validated", True) else "not validated"


UNDEFINED = "–"  # a spread over one seed, or over times never reached


def summary_markdown(summary: dict) -> str:
    never_text = never_reached(summary)

    def seconds(value, never: str = never_text) -> str:  # None or NaN: not reached (or not recorded)
        return never if value is None or math.isnan(value) else f"{value:.0f} s"

    def figure(value: float) -> str:
        return UNDEFINED if math.isnan(value) else f"{value:.4f}"

    targets = summary.get("targets", TIME_TO)

    def cells(row: dict, never: str = never_text) -> str:
        times = " / ".join(seconds(row.get(f"seconds_to_{a}"), never) for a in targets)
        return (
            f"{figure(row['test_accuracy'])} | {figure(row['test_loss'])} | {figure(row['train_accuracy'])} | "
            f"{figure(row['train_loss'])} | {seconds(row.get('seconds'), never if never == UNDEFINED else '')} | "
            f"{times} |"
        )

    lines = [
        "| seed | test accuracy | test loss | training accuracy | training loss | training time | "
        f"validation {' / '.join(map(str, targets))} reached after |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {seed} | {cells(row)}" for seed, row in summary["seeds"].items()]
    for stat in ("mean", "std", "min", "max"):
        row = {key: values[stat] for key, values in summary["stats"].items()}
        lines.append(f"| {stat} | {cells(row, UNDEFINED if stat == 'std' else never_text)}")
    lines.append(
        "| original report (1 run) | "
        + " | ".join(
            f"{seed_report.PUBLISHED[key]:.4f}"
            for key in ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
        )
        + " | | |"
    )
    lines += ["", ensemble_line(summary["ensemble"])] if "ensemble" in summary else []
    return "\n".join(lines) + "\n"


def ensemble_line(together: dict) -> str:
    """`reproduce --ensemble`'s figures (studies/seeds.ensemble_of_seeds), as summary.md says them."""
    return (
        f"The {together['members']} seeds as one ensemble ({together['combine']} averaged): test accuracy "
        f"{together['test_accuracy']:.4f}, test loss {together['test_loss']:.4f}; "
        f"{together['training_seconds']:.0f} s of training in all (its members')."
    )
