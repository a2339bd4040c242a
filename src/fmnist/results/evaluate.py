"""Evaluation as the report's second half: loss and accuracy on training and test data, predictions,
per-class precision/recall/F1 (scikit-learn's own numbers), the confusion matrix, and the figures.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import sklearn.metrics

from fmnist import runs
from fmnist.core import errors, files, machine
from fmnist.data import fashion
from fmnist.nets import inference
from fmnist.results import figures
from fmnist.training import configs

GRID = 25  # images in the prediction and mistake grids


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Per-class and averaged precision/recall/F1/support, confusion matrix, right and wrong counts."""
    labels = list(range(fashion.NUM_CLASSES))  # every class, even one that is never predicted
    report = sklearn.metrics.classification_report(
        y_true, y_pred, labels=labels, target_names=fashion.CLASS_NAMES, output_dict=True, zero_division=0
    )
    matrix = sklearn.metrics.confusion_matrix(y_true, y_pred, labels=labels)
    correct = int(np.trace(matrix))
    return {
        "classification_report": report,
        "confusion_matrix": matrix.tolist(),
        "correct": correct,
        "wrong": int(len(y_true) - correct),
        "count": len(y_true),
    }


def loss_and_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Categorical cross-entropy and accuracy from probabilities (float64: exact means)."""
    picked = np.clip(probabilities[np.arange(len(labels)), labels].astype(np.float64), 1e-12, None)
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((probabilities.argmax(1) == labels).mean()),
        "count": len(labels),
    }


def predictions_csv(probabilities: np.ndarray, labels: np.ndarray) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "true", "predicted", *[f"p_{name}" for name in fashion.CLASS_NAMES]])
    for index, (row, label) in enumerate(zip(probabilities, labels)):
        writer.writerow([index, int(label), int(row.argmax()), *[f"{p:.6g}" for p in row]])
    return out.getvalue()


def confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int = GRID) -> np.ndarray:
    """Indices of the wrong predictions, most confident first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]


def write_figures(run_dir: Path, dataset: fashion.Dataset, probabilities: np.ndarray, matrix) -> None:
    out = Path(run_dir) / runs.FIGURES
    figures.samples(dataset.train_images, dataset.train_labels, out / "samples.png")
    figures.confusion_matrix(np.asarray(matrix), out / "confusion_matrix.png")
    predicted, labels = probabilities.argmax(1), dataset.test_labels
    first = np.arange(GRID)
    figures.predictions(
        dataset.test_images[first],
        labels[first],
        predicted[first],
        probabilities[first],
        out / "predictions.png",
        "First 25 test images: predicted (probability) / true",
    )
    worst = confident_mistakes(probabilities, labels)
    figures.predictions(
        dataset.test_images[worst],
        labels[worst],
        predicted[worst],
        probabilities[worst],
        out / "mistakes.png",
        "Most confident mistakes: predicted (probability) / true",
    )
    history = runs.read_history(run_dir)
    if history:
        figures.learning_curves(history, out / "learning_curves.png")


def evaluate_run(
    run_dir: Path,
    weights: str = runs.WEIGHTS,
    data_dir: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Evaluate a run directory on its training split and the test set, computing in `precision` (recorded
    in metrics.json); write metrics, predictions, figures."""
    run_dir = Path(run_dir)
    config = configs.load_config(run_dir)
    network = inference.load_model(run_dir, weights, precision=precision, device=machine.resolve_device(device))
    dataset = fashion.load(data_dir=data_dir or config.data_dir)
    images, labels = dataset.train_images, dataset.train_labels
    if config.limit:
        images, labels = images[: config.limit], labels[: config.limit]
    (train_x, train_y), _ = fashion.split(images, labels, config.validation_fraction)
    test_probabilities = inference.probabilities(network, dataset.test_images)
    test = {
        **loss_and_accuracy(test_probabilities, dataset.test_labels),
        **classification_metrics(dataset.test_labels, test_probabilities.argmax(1)),
    }
    metrics = {
        "weights": weights,
        "precision": precision,
        "data_source": dataset.source,
        "train": loss_and_accuracy(inference.probabilities(network, train_x), train_y),
        "test": test,
    }
    files.write_text(run_dir / runs.PREDICTIONS, predictions_csv(test_probabilities, dataset.test_labels))
    write_figures(run_dir, dataset, test_probabilities, test["confusion_matrix"])
    files.write_json(run_dir / runs.METRICS, metrics)
    return metrics


def load_metrics(run_dir: Path) -> dict:
    path = Path(run_dir) / runs.METRICS
    if not path.exists():
        raise errors.RunError(f"{path} is missing: run `fmnist evaluate {run_dir}` first")
    return runs.read_json(path)
