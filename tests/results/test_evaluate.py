"""Evaluation, figures, report and the one-command reproduction."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import sklearn.metrics
import torch
from PIL import Image

from fmnist import runs
from fmnist.core import files
from fmnist.data import fashion
from fmnist.nets import seedcnn
from fmnist.results import compare, evaluate, figures, report
from tests.helpers import require_real_data, run_cli


def test_metrics_equal_scikit_learn_including_a_never_predicted_class():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 500)
    y_pred = y_true.copy()
    noisy = rng.random(500) < 0.3
    y_pred[noisy] = rng.integers(0, 10, noisy.sum())
    y_pred[y_pred == 4] = 6  # class 4 (Coat) is never predicted
    metrics = evaluate.classification_metrics(y_true, y_pred)
    precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=range(10), zero_division=0
    )
    for label, name in enumerate(fashion.CLASS_NAMES):
        row = metrics["classification_report"][name]
        assert (row["precision"], row["recall"], row["f1-score"], row["support"]) == pytest.approx(
            (precision[label], recall[label], f1[label], support[label])
        )
    assert metrics["classification_report"]["Coat"]["precision"] == 0.0
    counted = np.zeros((10, 10), dtype=int)
    np.add.at(counted, (y_true, y_pred), 1)
    assert metrics["confusion_matrix"] == counted.tolist()
    assert metrics["correct"] == int((y_true == y_pred).sum()) and metrics["wrong"] == 500 - metrics["correct"]
    macro = sklearn.metrics.precision_score(y_true, y_pred, labels=range(10), average="macro", zero_division=0)
    assert metrics["classification_report"]["macro avg"]["precision"] == pytest.approx(macro)


def test_loss_and_accuracy_match_torch_cross_entropy():
    logits = torch.randn(64, 10, dtype=torch.float64)
    labels = torch.randint(0, 10, (64,))
    result = evaluate.loss_and_accuracy(torch.softmax(logits, 1).numpy(), labels.numpy())
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())


def test_confident_mistakes_are_wrong_and_sorted():
    probabilities = np.full((4, 10), 0.01)
    probabilities[[0, 1, 2, 3], [1, 2, 3, 4]] = [0.9, 0.5, 0.99, 0.7]
    assert evaluate.confident_mistakes(probabilities, np.array([0, 2, 0, 0])).tolist() == [2, 0, 3]


def test_generalisation_note_names_overfitting():
    metrics = {"train": {"loss": 0.04, "accuracy": 0.985}, "test": {"loss": 0.42, "accuracy": 0.906}}
    history = [{"epoch": 1, "val_loss": 0.4}, {"epoch": 2, "val_loss": 0.25}, {"epoch": 3, "val_loss": 0.35}]
    note = report.generalisation_note(metrics, history)
    assert "lowest at epoch 2" in note and "overfits" in note
    short = report.generalisation_note(metrics, history[:1])  # one epoch: nothing to read in a curve of one point
    assert "too short a run to judge" in short and "overfit" not in short.replace("overfitting", "")
    assert "no clear sign" not in short


def image_is_real(path, min_size=(300, 200)):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


@pytest.mark.slow
def test_reproduce_end_to_end(tmp_path, capsys):
    require_real_data()
    out = tmp_path / "repro"
    code, stdout, err = run_cli(
        capsys, "reproduce", "--epochs", 1, "--limit", 3000, "--threads", 2, "--seeds", 2, "--quiet", "--out", out
    )
    assert code == 0, err
    assert "report.html" in stdout and "mean" in stdout
    image_is_real(out / "samples.png")
    for seed in (0, 1):
        run_dir = out / f"seed-{seed}"
        for name in ("samples", "confusion_matrix", "learning_curves", "predictions", "mistakes"):
            image_is_real(run_dir / runs.FIGURES / f"{name}.png")
        metrics = json.loads((run_dir / runs.METRICS).read_text())
        assert metrics["test"]["count"] == 10_000 and metrics["train"]["count"] == 2_400
        assert metrics["test"]["correct"] + metrics["test"]["wrong"] == 10_000
        assert metrics["test"]["accuracy"] > 0.5
        predictions = (run_dir / runs.PREDICTIONS).read_text().splitlines()
        assert len(predictions) == 10_001 and predictions[0].startswith("index,true,predicted,p_T-shirt/top")
        page = (run_dir / runs.REPORT_HTML).read_text()
        sources = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
        assert "Against the original report" in page and "0.9059" in page and "Generalisation" in page
        markdown = (run_dir / runs.REPORT_MD).read_text()
        for target in re.findall(r"\]\(([^)]+)\)", markdown):
            assert (run_dir / target).is_file(), f"report.md references missing {target}"
    summary = json.loads((out / "summary.json").read_text())
    accuracies = [summary["seeds"][s]["test_accuracy"] for s in ("0", "1")]
    assert summary["stats"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["stats"]["test_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    # Re-running keeps finished runs: no epoch is trained again.
    code, stdout, _ = run_cli(
        capsys, "reproduce", "--epochs", 1, "--limit", 3000, "--seeds", 1, "--quiet", "--out", out
    )
    assert code == 0 and "Epoch 1/1" not in stdout
    # --ensemble: the two seeds, kept, averaged as one model and evaluated beside them.
    flags = ["--epochs", 1, "--limit", 3000, "--quiet", "--out", out, "--ensemble"]
    code, stdout, err = run_cli(capsys, "reproduce", "--seeds", 2, *flags)
    assert code == 0 and "Epoch 1/1" not in stdout and "The 2 seeds as one ensemble" in stdout, err
    together = json.loads((out / "summary.json").read_text())["ensemble"]
    assert together["members"] == 2 and together["test_accuracy"] == pytest.approx(
        json.loads((out / "ensemble" / runs.METRICS).read_text())["test"]["accuracy"]
    )
    record = json.loads((out / "record.json").read_text())
    assert "--ensemble" in record["command"] and any("ensemble" in str(row[0]) for row in record["rows"])
    code, _, err = run_cli(capsys, "reproduce", "--seeds", 1, *flags)
    assert code == 2 and "--seeds 2 or more" in err and err.count("\n") == 1


@pytest.mark.slow
def test_evaluate_weights_of_another_architecture_fail_clearly(tmp_path, capsys):
    state = seedcnn.SeedCNN().state_dict()
    state["conv2.kernel"] = torch.zeros(3, 3, 32, 64)
    runs.save_weights(tmp_path / runs.WEIGHTS, state, seedcnn.ARCHITECTURE)
    files.write_json(tmp_path / runs.CONFIG, {"validation_fraction": 0.2})
    code, _, err = run_cli(capsys, "evaluate", tmp_path)  # an exception escaping fails the test
    assert code == 2 and "do not match the architecture" in err and "conv2.kernel" in err


def test_time_to_accuracy_and_the_seed_summary():
    rows = [
        {
            "epoch": e,
            "seconds": 10.0,
            "val_accuracy": a,
            "loss": 0.5,
            "accuracy": a,
            "val_loss": 0.4,
            "train_seconds": 9.0,
            "steps": 375,
        }
        for e, a in ((1, 0.90), (2, 0.915), (3, 0.92))
    ]
    assert runs.elapsed(rows) == [10.0, 20.0, 30.0]  # rows without "elapsed": summed
    rows[2]["elapsed"] = 35.0  # recorded (a resumed run's own clock) wins
    assert runs.elapsed(rows) == [10.0, 20.0, 35.0]
    assert runs.time_to_accuracy(rows, 0.91) == 20.0 and runs.time_to_accuracy(rows, 0.93) is None
    metrics = {"test": {"accuracy": 0.91, "loss": 0.3}, "train": {"accuracy": 0.95, "loss": 0.1}}
    summary = report.seed_summary({0: metrics, 1: metrics}, {0: rows, 1: rows[:2]})
    assert summary["seeds"][1]["seconds"] == 20.0 and summary["stats"]["seconds"]["mean"] == 27.5
    table = report.summary_markdown(summary)
    assert "| 0 | 0.9100 | 0.3000 | 0.9500 | 0.1000 | 35 s | 20 s / never / never |" in table
    assert "| std | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 11 s | 0 s / – / – |" in table  # never reached: no spread
    assert "validation 0.91 / 0.93 / 0.94 reached after" in table
    final_fit = [{**row, "val_loss": None, "val_accuracy": None} for row in rows]  # validation_fraction 0
    unvalidated = report.summary_markdown(report.seed_summary({0: metrics}, {0: final_fit}))
    assert (
        "| 0 | 0.9100 | 0.3000 | 0.9500 | 0.1000 | 35 s | not validated / not validated / not validated |"
        in unvalidated
    )
    targeted = report.seed_summary({0: metrics}, {0: rows}, targets=[0.905, 0.91])
    assert targeted["seeds"][0][
        "seconds_to_0.905"
    ] == 20.0 and "validation 0.905 / 0.91 reached" in report.summary_markdown(targeted)
    # One seed: every spread is undefined, not 0.
    single = report.summary_markdown(report.seed_summary({0: metrics}, {0: rows}))
    assert "| std | – | – | – | – | – | – / – / – |" in single and "| mean | 0.9100 |" in single
    assert math.isnan(report.seed_summary({0: metrics}, {0: rows})["stats"]["test_accuracy"]["std"])


def test_an_ensemble_is_a_row_of_the_comparison_and_a_star_on_the_frontier(tmp_path):
    rows = [{"epoch": 1, "seconds": 10.0, "val_accuracy": 0.9, "val_loss": 0.3, "loss": 0.4, "accuracy": 0.9}]
    metrics = {"test": {"accuracy": 0.91, "loss": 0.3}, "train": {"accuracy": 0.95, "loss": 0.1}}
    summary = report.seed_summary({0: metrics, 1: metrics}, {0: rows, 1: rows})
    summary["ensemble"] = {
        "members": 2,
        "combine": "logits",
        "test_accuracy": 0.925,
        "test_loss": 0.25,
        "training_seconds": 20.0,
    }
    assert "The 2 seeds as one ensemble (logits averaged): test accuracy 0.9250" in report.summary_markdown(summary)
    row = {"summary": summary, "parameters": 1_000, "mflops": 1.5, "images_per_second": {"fp32": 10.0, "bf16": 20.0}}
    table = compare.comparison_markdown({"fast-cnn": row}).splitlines()
    assert (
        table[3]
        == "| fast-cnn: the seeds as one ensemble | 2 | 0.9250 | 20 (its members') | – | – | – | 2,000 | 3.0 | – |"
    )
    path = figures.frontier(
        {"fast-cnn": [rows, rows]},
        {"fast-cnn": (10.0, 0.91, 0.0)},
        0.9059,
        tmp_path / "f.png",
        {"fast-cnn": (20.0, 0.925)},
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
