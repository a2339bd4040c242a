"""Figures as PNG files: sample grids, learning curves, the confusion matrix.

Every function takes plain arrays and a path, writes one PNG atomically and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt
import numpy as np

from fmnist import runs
from fmnist.core import files
from fmnist.data import fashion
from fmnist.results import records

DPI = 100
WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#2e7d32"


def save(figure, path: Path) -> Path:
    """Write the figure as PNG atomically (files.write_atomic) and free it."""
    try:
        return files.write_atomic(Path(path), lambda tmp: figure.savefig(tmp, dpi=DPI, format="png"))
    finally:
        plt.close(figure)


def image_grid(
    images: np.ndarray,
    captions: list[str],
    path: Path,
    colors: list[str] | None = None,
    columns: int = 5,
    title: str | None = None,
) -> Path:
    """Images in a grid with a caption under each (the report's 5x5 view of the data), drawn as one mosaic in
    one axes: a subplot per image costs ~10x the time (measured: 0.7 s against 0.07 s a grid)."""
    rows, side = max(1, -(-len(images) // columns)), images.shape[1]
    gap = side // 2 + 6 if any("\n" in caption for caption in captions) else side // 3 + 2  # room for captions
    mosaic = np.zeros((rows * (side + gap), columns * (side + 4)))  # (rows of tiles and captions, columns)
    for index, image in enumerate(images):
        top, left = (index // columns) * (side + gap), (index % columns) * (side + 4) + 2
        mosaic[top : top + side, left : left + side] = image
    figure, axis = plt.subplots(figsize=(2 * columns, (2.2 + 0.25 * (gap > side // 2)) * rows))
    axis.imshow(mosaic, cmap="binary", interpolation="nearest", vmin=0, vmax=max(1, float(images.max(initial=1))))
    axis.set_axis_off()
    for index, caption in enumerate(captions):
        top, left = (index // columns) * (side + gap), (index % columns) * (side + 4) + 2
        axis.text(
            left + side / 2,
            top + side + 1,
            caption,
            ha="center",
            va="top",
            fontsize=9,
            color=colors[index] if colors else "black",
        )
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save(figure, path)


def samples(images: np.ndarray, labels: np.ndarray, path: Path, count: int = 25) -> Path:
    """The first `count` images with their class names."""
    return image_grid(images[:count], [fashion.CLASS_NAMES[int(k)] for k in labels[:count]], path)


def predictions(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, path: Path, title: str
) -> Path:
    """Images captioned 'predicted (p) / true', wrong ones in red."""
    captions = [
        f"{fashion.CLASS_NAMES[p]} {probabilities[i, p]:.0%}\ntrue: {fashion.CLASS_NAMES[t]}"
        for i, (p, t) in enumerate(zip(predicted, labels))
    ]
    colors = [RIGHT_COLOR if p == t else WRONG_COLOR for p, t in zip(predicted, labels)]
    return image_grid(images, captions, path, colors, title=title)


def learning_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, training vs validation, best validation epoch marked; and validation
    accuracy against elapsed seconds (time to accuracy)."""
    epochs, validated = [row["epoch"] for row in history], runs.validated(history)
    held_out = "validation" if validated else "training"  # a final fit on every image validates nothing
    figure, (loss_axis, accuracy_axis, time_axis) = plt.subplots(1, 3, figsize=(17, 4.5))
    time_axis.plot(
        runs.elapsed(history), [row["val_accuracy" if validated else "accuracy"] for row in history], marker="."
    )
    time_axis.set_xlabel("seconds of training and validation")
    time_axis.set_ylabel(f"{held_out} accuracy")
    time_axis.grid(alpha=0.3)
    for axis, key, label in ((loss_axis, "loss", "loss"), (accuracy_axis, "accuracy", "accuracy")):
        axis.plot(epochs, [row[key] for row in history], label=f"training {label}")
        if validated:
            best = min(validated, key=lambda row: row["val_loss"])["epoch"]
            axis.plot(
                [r["epoch"] for r in validated], [r["val_" + key] for r in validated], label=f"validation {label}"
            )
            axis.axvline(best, color="gray", linestyle="--", label=f"lowest validation loss (epoch {best})")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save(figure, path)


def confusion_matrix(matrix: np.ndarray, path: Path) -> Path:
    """Heatmap of counts, true classes as rows, predicted as columns."""
    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = np.arange(fashion.NUM_CLASSES)
    axis.set_xticks(ticks, fashion.CLASS_NAMES, rotation=45, ha="right")
    axis.set_yticks(ticks, fashion.CLASS_NAMES)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    threshold = matrix.max() / 2
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > threshold else "black",
        )
    axis.set_title("Confusion matrix (test set)")
    figure.tight_layout()
    return save(figure, path)


def sweep(configurations: list[dict], path: Path) -> Path:
    """Validation accuracy per configuration of a sweep (mean, with the seeds' standard deviation)."""
    names = [row["configuration"] for row in configurations]
    means = [row["val_accuracy_mean"] for row in configurations]
    errors = [0.0 if np.isnan(row["val_accuracy_std"]) else row["val_accuracy_std"] for row in configurations]
    figure, axis = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    axis.barh(np.arange(len(names)), means, xerr=errors, color="tab:blue")
    axis.set_yticks(np.arange(len(names)), names)
    axis.invert_yaxis()  # the chosen (best) configuration on top
    axis.set_xlim(min(means) - 0.02, min(1.0, max(means) + 0.01))
    axis.set_xlabel("validation accuracy (mean over seeds)")
    axis.set_title("Sweep: configurations, best first")
    figure.tight_layout()
    return save(figure, path)


def frontier(
    curves: dict[str, list[list[dict]]],
    finals: dict[str, tuple[float, float, float]],
    reference: float,
    path: Path,
    ensembles: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Accuracy against training time: validation per seed (thin lines), test mean ± sd (a point), the seeds as
    one ensemble (a star, at their summed time), the report's test accuracy (a line)."""
    ensembles = ensembles or {}
    figure, axis = plt.subplots(figsize=(9, 5.5))
    for index, (name, histories) in enumerate(curves.items()):
        color = f"C{index}"
        for seed, history in enumerate(histories):
            points = runs.validation_curve(history)  # none in a final fit on every image
            if points:
                axis.plot(
                    *zip(*points),
                    color=color,
                    alpha=0.35,
                    linewidth=1,
                    label=f"{name}: validation, per seed" if seed == 0 else None,
                )
        seconds, mean, sd = finals[name]
        label = f"{name}: test {records.mean_sd(mean, sd)}"
        axis.errorbar(
            [seconds], [mean], yerr=[0 if np.isnan(sd) else sd], color=color, marker="o", capsize=4, label=label
        )
        if name in ensembles:
            seconds, accuracy = ensembles[name]
            label = f"{name}: its seeds as one ensemble, test {accuracy:.4f}"
            axis.plot([seconds], [accuracy], color=color, marker="*", markersize=13, ls="none", label=label)
    axis.axhline(reference, color="gray", linestyle="--", label=f"the report: test {reference:.4f}")
    axis.set_xscale("log")
    axis.set_xlabel("seconds of training (validation included), log scale")
    axis.set_ylabel("accuracy")
    low = min([reference] + [mean for _, mean, _ in finals.values()] + [a for _, a in ensembles.values()]) - 0.02
    axis.set_ylim(max(0.5, low), None)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="upper left")
    axis.set_title("Fashion-MNIST: accuracy against training time")
    figure.tight_layout()
    return save(figure, path)
