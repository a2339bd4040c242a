"""The Python API: everything the CLI does, as functions and a `Run` (the CLI parses, calls these, prints).

    import fmnist
    run = fmnist.train(model="fast-cnn", epochs=2, limit=6000, out="runs/quick")   # or fmnist.open_run(...)
    run.evaluate(); run.predict(["photo.jpg"]).names; run.report(); run.export("onnx")
    fmnist.pretrained(); fmnist.ensemble(["runs/a", "runs/b"], out="runs/ab")     # models with no training

This module imports no torch itself: each function loads the engine it needs, so that the CLI's help,
which reads the settings and defaults here, stays instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.core import errors, files
from fmnist.data import fashion, seed_report
from fmnist.nets import INFERENCE_PRECISIONS
from fmnist.training import configs
from fmnist.training.configs import Recipe, Runtime, TrainConfig

CLASS_NAMES = fashion.CLASS_NAMES
PUBLISHED = seed_report.PUBLISHED  # the original report's figures
DEFAULT_MODEL = Recipe().model  # the report's
OUT = {
    command: f"runs/{command}" for command in ("data", "train", "reproduce", "sweep", "keras", "bench", "ensemble")
}  # default outputs
__all__ = [
    "CLASS_NAMES",
    "INFERENCE_PRECISIONS",
    "PUBLISHED",
    "Predictions",
    "Recipe",
    "Run",
    "Runtime",
    "TrainConfig",
    "bench",
    "data_summary",
    "ensemble",
    "import_keras",
    "layer_table",
    "load_data",
    "models",
    "open_run",
    "pretrained",
    "reproduce",
    "sweep",
    "sweep_config",
    "train",
]


def prepare(threads: int | None = None) -> int:
    """Ready this process for work (machine.set_up: CPU modes, threads) and compile the CPU kernels where this
    machine has not yet (10-15 s once, then cached). Every command that computes calls it first."""
    from fmnist.core import machine
    from fmnist.nets.kernels import fused

    count = machine.set_up(threads)
    fused.available()
    return count


def load_data(data_dir: str | Path | None = None, show_progress: bool = True) -> fashion.Dataset:
    """Fashion-MNIST as uint8 arrays: train_images (60000, 28, 28), train_labels, test_images, test_labels.

    Examples:
        >>> dataset = fmnist.load_data()
        >>> fmnist.CLASS_NAMES[dataset.train_labels[0]]
        'Ankle boot'
    """
    return fashion.load(data_dir=data_dir, progress=show_progress)


def data_summary(data_dir: str | Path | None = None, out: str | Path = OUT["data"]) -> dict:
    """`fmnist data`: the dataset found (or downloaded) and verified, its parts' shapes, types and ranges, the
    images per class, and samples.png (the first 25 training images with their class) written into `out`."""
    from fmnist.results import figures

    dataset, seconds = fashion.timed_load(data_dir=data_dir)
    parts = {part: dataset.describe(part) for part in ("train", "test")}
    samples = figures.samples(dataset.train_images, dataset.train_labels, files.output_dir(Path(out)) / "samples.png")
    return {"source": dataset.source, "seconds": seconds, "parts": parts, "samples": samples}


def models() -> list[dict]:
    """`fmnist models`: per registered model its name, parameters, forward MFLOPs per image, architecture tag,
    description and recipe (one line); the default model first (training/registry.describe)."""
    from fmnist.training import registry

    return [registry.describe(name) for name in registry.REGISTRY]


def layer_table(model: str) -> tuple[list[tuple[str, str, int]], int]:
    """A model's layers as (layer, output shape, parameters) rows, Keras-style, and its parameter count."""
    from fmnist.nets import architectures
    from fmnist.training import registry

    network = registry.get(model).build(0.0)
    return architectures.layer_table(network), architectures.parameters(network)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What Run.predict returns, one row per image."""

    probabilities: np.ndarray  # (N, 10) float32, rows sum to 1
    classes: np.ndarray  # (N,) int64, the most probable class
    names: list[str]  # (N,) its name


class Run:
    """A run directory (its layout: runs.py): a trained or imported model with its history and results."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / runs.CONFIG).is_file():
            raise errors.RunError(f"{self.path} holds no run ({runs.CONFIG} is missing)")

    def __repr__(self) -> str:
        return f"fmnist.Run({str(self.path)!r})"

    @property
    def config(self) -> TrainConfig:
        return configs.load_config(self.path)

    @property
    def ensemble(self) -> dict | None:
        """An ensemble's members (model, seed, training seconds), how they are averaged and why; else None."""
        return runs.read_config(self.path).get("ensemble")

    @property
    def history(self) -> list[dict]:
        """One row per epoch: loss, accuracy, val_loss, val_accuracy, seconds, elapsed, ..."""
        return runs.read_history(self.path)

    def model(self, weights: str = "final", precision: str = "fp32"):
        """The network (torch.nn.Module, eval mode) as evaluation and prediction run it; "bf16": faster where
        bf16 is native, ~1 prediction in 1,000 changes."""
        from fmnist.nets import inference

        return inference.load_model(self.path, runs.weights_file(weights), precision=precision)

    def evaluate(
        self, weights: str = "final", device: str = "auto", data_dir: str | Path | None = None, precision: str = "fp32"
    ) -> dict:
        """Loss and accuracy on the training split and the test set, the per-class table and confusion
        matrix; also writes metrics.json, predictions.csv and the figures into the run."""
        from fmnist.results import evaluate

        return evaluate.evaluate_run(
            self.path, runs.weights_file(weights), data_dir=data_dir, device=device, precision=precision
        )

    def predict(self, images, weights: str = "final", precision: str = "fp32") -> Predictions:
        """Classes and probabilities for what users hold: image file paths, PIL images, numpy arrays or torch
        tensors, one image or a batch. Dataset-style arrays ((28, 28) or (N, 28, 28), uint8 0-255 or floats in
        [0, 1], light object on dark) are taken as they are; photos (files, PIL images, other-sized uint8
        arrays) are preprocessed as the dataset was made (`fmnist predict`). Anything else: a TypeError.

        Examples:
            >>> run.predict(dataset.test_images[:5]).names
            >>> run.predict(PIL.Image.open("shoe.jpg")).names
        """
        from fmnist.data import photos
        from fmnist.nets import inference

        pixels = photos.as_pixels(images)
        probabilities = inference.probabilities(self.model(weights, precision), pixels)
        classes = probabilities.argmax(1)
        return Predictions(probabilities, classes, [CLASS_NAMES[c] for c in classes])

    def report(self) -> tuple[Path, Path]:
        """report.html (self-contained) and report.md; evaluates first if that has not been done."""
        from fmnist.results import report

        if not (self.path / runs.METRICS).is_file():
            self.evaluate()
        return report.write_report(self.path)

    def export(
        self, format: str = "onnx", out: str | Path | None = None, weights: str = "final", verify: bool = True
    ) -> Path:
        """An ONNX file (with `verify`, checked with onnxruntime on 1,000 test images: an error if it differs
        from PyTorch by more than to_onnx.TOLERANCE) or a Keras 3 .keras file (seed-cnn only)."""
        out = files.output_file(Path(out), f"model.{format}") if out else None
        if format == "onnx":
            errors.require("ONNX export", "onnx")
            from fmnist.interop import to_onnx

            path = to_onnx.export_onnx(self.path, out, runs.weights_file(weights))
            if verify:
                self.verify_onnx(path, weights)
            return path
        if format == "keras":
            errors.require("Keras files", "keras")
            from fmnist.interop import to_keras

            return to_keras.export_keras(self.path, out, runs.weights_file(weights))
        raise ValueError(f"format must be 'onnx' or 'keras', got {format!r}")

    def verify_onnx(self, path: str | Path, weights: str = "final", data_dir: str | Path | None = None) -> float:
        """onnxruntime against PyTorch on 1,000 test images: the largest difference of probabilities (an
        error past to_onnx.TOLERANCE)."""
        errors.require("ONNX export", "onnx")
        from fmnist.interop import to_onnx

        images = load_data(data_dir or self.config.data_dir, False).test_images[:1000]
        return to_onnx.verify(self.path, Path(path), images, runs.weights_file(weights))

    def predict_files(
        self,
        paths: Sequence[str | Path],
        top: int = 3,
        weights: str = "final",
        save_preprocessed: str | Path | None = None,
        precision: str = "fp32",
    ) -> list[dict]:
        """`fmnist predict`: per image file (directories give their images) its top classes, or the error
        that file met (one bad file does not stop the others); with `save_preprocessed`, the 28x28 view."""
        from fmnist.data import photos
        from fmnist.nets import inference

        found = photos.expand_paths([Path(p) for p in paths])
        if not found:
            raise errors.InputError("no image files found in " + ", ".join(map(str, paths)))
        out_dir = files.output_dir(Path(save_preprocessed)) if save_preprocessed else None
        return inference.classify_files(self.model(weights, precision), found, top, out_dir)


def pretrained() -> Run:
    """The model that ships with fmnist (cnn94 trained on all 60,000 training images; its record and model card
    beside the weights), ready to predict, evaluate, serve or export with no training.

    Examples:
        >>> fmnist.pretrained().predict(PIL.Image.open("shoe.jpg")).names
    """
    return Run(runs.pretrained_run())


def open_run(path: str | Path) -> Run:
    """A run directory written by train, reproduce or import-keras.

    Examples:
        >>> run = fmnist.open_run("runs/reproduce/seed-0")
        >>> run.history[-1]["val_accuracy"]
    """
    return Run(path)


def ensemble(members: Sequence[str | Path], out: str | Path = OUT["ensemble"], combine: str = "auto") -> Run:
    """The runs `members` (2 or more; any architectures) averaged as one model, a new run directory: their
    logits or their probabilities ("auto": chosen on their shared validation split), their times recorded.

    Examples:
        >>> fmnist.ensemble(["runs/reproduce/seed-0", "runs/reproduce/seed-1"], out="runs/pair").evaluate()
    """
    from fmnist.training import ensembles

    return Run(ensembles.make(members, out, combine))


def import_keras(model: str | Path, out: str | Path = OUT["keras"]) -> Run:
    """A Keras .keras or .h5 model of the report's network as a new run directory (nothing from the file runs)."""
    errors.require("Keras files", "keras")
    from fmnist.interop import from_keras

    return Run(from_keras.import_keras(Path(model), Path(out)))


def check_new_run(out: str | Path) -> None:
    """What train() checks first (a RunError where `out` holds a run or is a file), for callers that print."""
    runs.require_new(Path(out), f"continue it with --resume {out}")


def train(
    config: TrainConfig | None = None,
    out: str | Path = OUT["train"],
    *,
    resume: bool = False,
    show_progress: bool = True,
    **settings,
) -> Run:
    """Train a model into the run directory `out` (a bar per epoch and one line each, in a terminal or a
    notebook) and return the Run. `settings` go to TrainConfig.for_model when no config is given.

    Examples:
        >>> run = fmnist.train(model="fast-cnn", epochs=2, limit=6000, out="runs/quick")
        >>> run = fmnist.train(out="runs/quick", resume=True, epochs=4)  # continue, to 4 epochs

    Ctrl-C keeps the last finished epoch's checkpoint; resume=True continues from it.
    """
    run_dir = Path(out)
    if resume:
        config = configs.load_config(run_dir, **settings)
    elif config is None:
        config = TrainConfig.for_model(settings.pop("model", None), **settings)
    elif settings:
        raise ValueError("give either a TrainConfig or settings, not both")
    from fmnist.training import watch

    watch.fit(config, run_dir, resume, show_progress)
    return Run(run_dir)


def reproduce(
    model_names: Iterable[str] = (DEFAULT_MODEL,),
    seeds: int | None = None,
    out: str | Path = OUT["reproduce"],
    first_seed: int = 0,
    show_progress: bool = True,
    on_seed: Callable[[str, int, dict, Path], None] | None = None,
    workers: int | None = None,
    address: str | None = None,
    targets: Iterable[float] = (),
    on_start: Callable[[], object] | None = None,
    ensemble: bool = False,
    **settings,
) -> dict:
    """Per model and seed: train (finished runs are kept, others continued), evaluate, report; a summary over
    seeds per model (summary.md, summary.json: time to validation accuracies 0.91, 0.93, 0.94 and `targets`),
    and with several models a comparison (comparison.md, frontier.png). Returns the summaries.

    `seeds`: default one for one model (the report's reproduction), five for a comparison. Everything is checked
    first (one InputError), then `on_start()` is called; `on_seed(model, seed, metrics, report_html)` after each
    seed. With `workers` (or a Ray `address`), seeds train in parallel on Ray (`fmnist[ray]`), `threads` each.
    `ensemble`: also each model's seeds as one ensemble (fmnist.ensemble), evaluated beside them."""
    from fmnist.studies import seeds as study

    checked = study.plan(model_names, seeds, first_seed, targets, workers, address, ensemble, **settings)
    if on_start is not None:
        on_start()
    return study.reproduce(checked, Path(out), show_progress, on_seed)


def check_counts(**counts: int | None) -> None:
    """Seeds, runs at once, threads per run, where given, are counts: 0 is refused (an InputError)."""
    from fmnist.studies import seeds as study

    study.check_counts(**counts)


def sweep_config(
    file: str | Path | None = None,
    model: str | None = None,
    vary: list[str] | None = None,
    fixed: list[str] | None = None,
    seeds: int | None = None,
    search: str | None = None,
    samples: int | None = None,
):
    """A sweep's configuration from a sweep file (TOML) and NAME=V1,V2 / NAME=V flags on top of it."""
    from fmnist.studies import sweeps

    return sweeps.configure(file, model, vary, fixed, seeds, search, samples)


def sweep(
    config, out: str | Path, threads: int = 1, workers: int | None = None, address: str | None = None, verbose: int = 1
) -> tuple[dict, list[Path]]:
    """Every trial of the sweep on Ray (resuming an interrupted one), then the summary, chosen on validation
    and tested only for the chosen configuration: (summary, the files written: summary.md among them)."""
    from fmnist.results import compare
    from fmnist.studies import sweeps

    check_counts(workers=workers, threads=threads)
    results = sweeps.run(config, Path(out), threads, workers, address, verbose)
    summary = compare.summarise(results)
    return summary, compare.write_summary(summary, Path(out))


def bench(
    model: str = DEFAULT_MODEL,
    quick: bool = False,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    out: str | Path | None = None,
) -> dict:
    """`fmnist bench`: the model's training step against plain eager PyTorch and against its floor (its
    convolutions and matrix products alone), interleaved; one epoch; evaluation images/s (results/bench.py).
    With `out` (a directory), its record is written there as MODEL.json and named in the result's "record"."""
    from fmnist.results import bench as timing

    try:
        result = timing.run(
            quick=quick, device=device, threads=threads, batch_size=batch_size, precision=precision, name=model
        )
    except ValueError as exc:
        raise errors.InputError(str(exc)) from None
    if out is not None:
        given = {"--threads": threads, "--batch-size": batch_size, "--device": device, "--precision": precision}
        result["record"] = str(timing.write_record(result, Path(out) / f"{model}.json", given))
    return result
