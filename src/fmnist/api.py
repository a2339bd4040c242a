"""The Python API: everything the CLI does, as functions and a `Run` (the CLI prints what these return).

    import fmnist                                   # first: it sets how OpenMP threads wait
    dataset = fmnist.load_data()                    # arrays + fmnist.CLASS_NAMES, checked as the CLI does
    run = fmnist.train(fmnist.TrainConfig.for_model("fast-cnn", epochs=2, limit=6000), "runs/quick")
    run.evaluate()["test"]["accuracy"]
    run.predict(dataset.test_images[:5]).names      # arrays, or image files: ["photo.jpg"]
    run.report()                                    # report.html and report.md
    run.export("onnx")                              # or "keras" (the seed network)
    fmnist.open_run("runs/quick")                   # any run directory, later
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from fmnist import configs, data, errors, inference, models, progress, runs, training

CLASS_NAMES = data.CLASS_NAMES
OUT = {command: f"runs/{command}" for command in ("data", "train", "reproduce", "sweep", "keras")}  # default outputs
WEIGHTS = {"final": runs.WEIGHTS, "best": runs.BEST_WEIGHTS}


def load_data(data_dir: str | Path | None = None, show_progress: bool = True) -> data.Dataset:
    """Fashion-MNIST as uint8 arrays: train_images (60000, 28, 28), train_labels, test_images, test_labels.

    >>> dataset = fmnist.load_data()
    >>> fmnist.CLASS_NAMES[dataset.train_labels[0]]
    'Ankle boot'
    """
    return data.load(data_dir=data_dir, progress=show_progress)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What Run.predict returns, one row per image."""
    probabilities: np.ndarray  # (N, 10) float32, rows sum to 1
    classes: np.ndarray        # (N,) int64, the most probable class
    names: list[str]           # (N,) its name


def weights_file(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be 'final' or 'best', got {weights!r}")
    return WEIGHTS[weights]


class Run:
    """A run directory (its layout: runs.py): a trained or imported model with its history and results."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / runs.CONFIG).is_file():
            raise errors.RunError(f"{self.path} holds no run ({runs.CONFIG} is missing)")

    def __repr__(self) -> str:
        return f"fmnist.Run({str(self.path)!r})"

    @property
    def config(self) -> configs.TrainConfig:
        return configs.load_config(self.path)

    @property
    def history(self) -> list[dict]:
        """One row per epoch: loss, accuracy, val_loss, val_accuracy, seconds, elapsed, ..."""
        return runs.read_history(self.path)

    def model(self, weights: str = "final", precision: str = "fp32"):
        """The network (torch.nn.Module, eval mode) as evaluation and prediction run it; `precision` "bf16"
        computes it in bf16 (models.Bf16Inference: faster where bf16 is native, ~1 prediction in 1,000 changes)."""
        return inference.load_model(self.path, weights_file(weights), precision=precision)

    def evaluate(self, weights: str = "final", device: str = "auto", data_dir: str | Path | None = None,
                 precision: str = "fp32") -> dict:
        """Loss and accuracy on the training split and the test set, the per-class table and confusion
        matrix; also writes metrics.json, predictions.csv and the figures into the run."""
        from fmnist import evaluate

        return evaluate.evaluate_run(self.path, weights_file(weights), data_dir=data_dir, device=device,
                                     precision=precision)

    def predict(self, images: np.ndarray | Sequence[str | Path], weights: str = "final",
                precision: str = "fp32") -> Predictions:
        """Classes and probabilities for dataset-style arrays ((N, 28, 28) uint8, light object on dark) or
        for image files, which are preprocessed as the dataset was made (`fmnist predict`)."""
        pixels = as_pixels(images)
        network = self.model(weights, precision)
        device = next(network.parameters()).device
        probabilities = inference.predict_probabilities(network, inference.to_tensor(pixels, device)).cpu().numpy()
        classes = probabilities.argmax(1)
        return Predictions(probabilities, classes, [CLASS_NAMES[c] for c in classes])

    def report(self) -> tuple[Path, Path]:
        """report.html (self-contained) and report.md; evaluates first if that has not been done."""
        from fmnist import report

        if not (self.path / runs.METRICS).is_file():
            self.evaluate()
        return report.write_report(self.path)

    def export(self, format: str = "onnx", out: str | Path | None = None, weights: str = "final",
               verify: bool = True) -> Path:
        """An ONNX file (with `verify`, checked with onnxruntime on 1,000 test images: an error if it differs
        from PyTorch by more than export.TOLERANCE) or a Keras 3 .keras file (seed-cnn only)."""
        from fmnist import export

        if format == "onnx":
            path = export.export_onnx(self.path, Path(out) if out else None, weights_file(weights))
            if verify:
                self.verify_onnx(path, weights)
            return path
        if format == "keras":
            from fmnist import keras_export

            return keras_export.export_keras(self.path, Path(out) if out else None, weights_file(weights))
        raise ValueError(f"format must be 'onnx' or 'keras', got {format!r}")

    def verify_onnx(self, path: str | Path, weights: str = "final", data_dir: str | Path | None = None) -> float:
        """onnxruntime against PyTorch on 1,000 test images: the largest difference of probabilities (an
        error past export.TOLERANCE)."""
        from fmnist import export

        images = load_data(data_dir or self.config.data_dir, False).test_images[:1000]
        return export.verify(self.path, Path(path), images, weights_file(weights))

    def predict_files(self, paths: Sequence[str | Path], top: int = 3, weights: str = "final",
                      save_preprocessed: str | Path | None = None, precision: str = "fp32") -> list[dict]:
        """`fmnist predict`: per image file (directories give their images) its top classes, or the error
        that file met (one bad file does not stop the others); with `save_preprocessed`, the 28x28 view."""
        from fmnist import files, predict

        found = predict.expand_paths([Path(p) for p in paths])
        if not found:
            raise errors.InputError("no image files found in " + ", ".join(map(str, paths)))
        network = self.model(weights, precision)
        out_dir = files.output_dir(save_preprocessed) if save_preprocessed else None
        names, results = predict.preprocessed_names(found), []
        for path in found:
            try:
                pixels = predict.preprocess(predict.open_image(path, str(path)))
            except errors.InputError as exc:
                results.append({"file": str(path), "error": str(exc)})
                continue
            results.append({"file": str(path), "top": predict.classify(network, pixels[None], k=top)[0]})
            if out_dir:
                results[-1]["preprocessed"] = str(predict.save_view(pixels, out_dir / names[path]))
        return results


def as_pixels(images) -> np.ndarray:
    """(N, 28, 28) uint8 from dataset-style arrays or from image files."""
    from fmnist import predict

    if isinstance(images, np.ndarray):
        if images.shape[-2:] != (data.IMAGE_SIZE, data.IMAGE_SIZE) or images.dtype != np.uint8:
            raise errors.InputError(f"images must be (N, 28, 28) uint8 arrays as load_data gives, got "
                                    f"{images.shape} {images.dtype}")
        return images.reshape(-1, data.IMAGE_SIZE, data.IMAGE_SIZE)
    paths = [Path(p) for p in ([images] if isinstance(images, (str, Path)) else images)]
    return np.stack([predict.preprocess(predict.open_image(path, str(path))) for path in paths])


def open_run(path: str | Path) -> Run:
    """A run directory written by train, reproduce or import-keras.

    >>> run = fmnist.open_run("runs/reproduce/seed-0")
    >>> run.history[-1]["val_accuracy"]
    """
    return Run(path)


def train(config: configs.TrainConfig | None = None, out: str | Path = OUT["train"], *, resume: bool = False,
          show_progress: bool = True, **settings) -> Run:
    """Train a model into the run directory `out` (a bar per epoch and one line each, in a terminal or a
    notebook) and return the Run. `settings` go to TrainConfig.for_model when no config is given:

    >>> run = fmnist.train(model="fast-cnn", epochs=2, limit=6000, out="runs/quick")
    >>> run = fmnist.train(out="runs/quick", resume=True, epochs=4)   # continue, to 4 epochs

    Ctrl-C keeps the last finished epoch's checkpoint; resume=True continues from it.
    """
    run_dir = Path(out)
    if resume:
        config = configs.load_config(run_dir, **settings)
    elif config is None:
        config = configs.TrainConfig.for_model(settings.pop("model", models.DEFAULT), **settings)
    elif settings:
        raise ValueError("give either a TrainConfig or settings, not both")
    fit_with_progress(config, run_dir, resume, show_progress)
    return Run(run_dir)


def fit_with_progress(config: configs.TrainConfig, run_dir: Path, resume: bool | None = False,
                      show_progress: bool = True) -> list[dict]:
    """training.fit with a bar per epoch and one line per epoch; Ctrl-C says how to resume. `resume=None`:
    whatever the run directory holds (training.fit_unless_finished)."""
    images = config.limit or data.FILES["train_images"].count
    steps = math.ceil(data.split_index(images, config.validation_fraction) / config.batch_size)
    on_cpu = inference.resolve_device(config.device).type == "cpu"
    with progress.EpochProgress(config.epochs, steps, show_values=on_cpu, enabled=show_progress) as bar:
        if resume or resume is None:
            bar.epoch = training.resume_epoch(run_dir)
        try:
            if resume is None:
                return training.fit_unless_finished(config, run_dir, on_epoch=bar.on_epoch, on_step=bar.on_step)
            return training.fit(config, run_dir, resume=resume, on_epoch=bar.on_epoch, on_step=bar.on_step)
        except KeyboardInterrupt:
            if not (run_dir / runs.CONFIG).is_file():
                raise errors.Interrupted("interrupted before the run started: nothing was written") from None
            raise errors.Interrupted(f"interrupted: the checkpoint of epoch {training.resume_epoch(run_dir)} is in "
                              f"{run_dir}; continue with: fmnist train --resume {run_dir}") from None


def reproduce(model_names: Iterable[str] = (models.DEFAULT,), seeds: int | None = None,
              out: str | Path = OUT["reproduce"], first_seed: int = 0, show_progress: bool = True,
              on_seed: Callable[[str, int, dict, Path], None] | None = None, workers: int | None = None,
              address: str | None = None, targets: Iterable[float] = (), **settings) -> dict:
    """Per model and seed: train (finished runs are kept, others continued), evaluate, report; a summary
    over seeds per model (time to each validation accuracy in report.TIME_TO and `targets`), and with
    several models a comparison (comparison.md). Returns the summaries. `seeds`: default one for one
    model (the report's reproduction), HEADLINE_SEEDS for a comparison. `on_seed(model, seed, metrics,
    report_html)` is called after each seed. With `workers` (or a Ray `address`), each model's seeds
    train in parallel on Ray (`fmnist[sweep]`), `threads` each."""
    from fmnist import evaluate, report

    out, names = Path(out), list(dict.fromkeys(model_names))
    seeds = default_seeds(names, seeds)
    check_counts(workers=workers)
    targets = sorted(set(report.TIME_TO) | set(check_targets(targets)))
    configs = reproduce_configs(names, seeds, first_seed, **settings)  # all checked first
    summaries, curves, parallel = {}, {}, bool(workers or address)
    for name in names:
        model_out = out / name if len(names) > 1 else out
        results, histories = {}, {}
        if parallel:  # training, evaluation and report of each seed, as trials on Ray
            train_in_parallel([configs[name, s] for s in range(first_seed, first_seed + seeds)], model_out,
                              workers, address)
        for seed in range(first_seed, first_seed + seeds):
            run = reproduce_seed(configs[name, seed], model_out / f"seed-{seed}", show_progress)
            if parallel:
                results[seed], html_path = evaluate.load_metrics(run.path), run.path / runs.REPORT_HTML
            else:
                results[seed] = run.evaluate(device=configs[name, seed].device)
                html_path, _ = run.report()
            histories[seed] = run.history
            if on_seed is not None:
                on_seed(name, seed, results[seed], html_path)
        summaries[name], curves[name] = report.seed_summary(results, histories, targets), list(histories.values())
        runs.write_json(model_out / "summary.json", summaries[name])
        runs.write_text(model_out / "summary.md", report.summary_markdown(summaries[name]))
    if len(names) > 1:
        write_comparison(summaries, curves, out, configs[names[0], first_seed].device)
    return summaries


HEADLINE_SEEDS = 5  # a comparison of models is a headline claim: a mean over five runs, as airbench reports


def default_seeds(model_names: Iterable[str], seeds: int | None) -> int:
    """`seeds`, or by default one for one model (the report's reproduction), HEADLINE_SEEDS for a comparison."""
    check_counts(seeds=seeds)
    return seeds or (1 if len(list(dict.fromkeys(model_names))) == 1 else HEADLINE_SEEDS)


def check_counts(**counts: int | None) -> None:
    """Seeds, runs at once, threads per run, where given, are counts: 0 is refused, not taken for the default."""
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise errors.InputError(f"--{flag} must be 1 or more, got {value}")


def check_targets(targets: Iterable[float]) -> list[float]:
    targets = list(targets)
    if any(not 0 < target < 1 for target in targets):
        raise errors.InputError(f"a target is a validation accuracy in (0, 1), got {targets}")
    return targets


def reproduce_configs(model_names: Iterable[str], seeds: int = 1, first_seed: int = 0,
                      **settings) -> dict[tuple[str, int], configs.TrainConfig]:
    """Each model's recipe with `settings` on top, per seed, all checked (an InputError names what is wrong)."""
    try:
        return {(name, seed): configs.TrainConfig.for_model(name, seed=seed, **settings)
                for name in dict.fromkeys(model_names) for seed in range(first_seed, first_seed + seeds)}
    except (TypeError, ValueError) as exc:
        raise errors.InputError(str(exc)) from None


def train_in_parallel(configs: list[configs.TrainConfig], out: Path, workers: int | None,
                      address: str | None) -> None:
    """Seeds as trials of the sweep engine (Ray Tune), each trained, evaluated and reported in its worker:
    run directories out/seed-N, Tune's state in out/tune."""
    from fmnist import sweep

    per_trial = configs[0].threads or 1
    todo = [sweep.Trial(c.model, {k: v for k, v in dataclasses.asdict(c).items() if k not in sweep.FIXED_BY_TRIAL},
                        {}, c.seed, per_trial, str((out / f"seed-{c.seed}").resolve()), evaluate_and_report=True)
            for c in configs]
    sweep.run_trials(todo, out.resolve(), per_trial, workers, address)


def reproduce_seed(config: configs.TrainConfig, run_dir: Path, show_progress: bool) -> Run:
    progress.console.rule(f"{config.model}, seed {config.seed}: {run_dir}")
    if len(runs.read_history(run_dir)) < config.epochs:  # finished: no bar for epochs that are not trained
        fit_with_progress(config, run_dir, resume=None, show_progress=show_progress)
    return Run(run_dir)


def write_comparison(summaries: dict[str, dict], curves: dict[str, list[list[dict]]], out: Path,
                     device: str) -> dict:
    """One row per model (accuracy, times, size, inference speed) in comparison.json, .md and .html,
    and the frontier drawn (frontier.png: every model's validation curves and final test accuracy)."""
    from fmnist import bench, figures, report

    rows = {}
    for name, summary in summaries.items():
        network = models.get(name).build(0.0)
        rows[name] = {"summary": summary, "parameters": models.parameters(network),
                      "mflops": models.mflops_per_image(network),
                      "images_per_second": bench.evaluation_throughputs(name, 10_000, inference.resolve_device(device))}
    finals = {name: (row["summary"]["stats"]["seconds"]["mean"], row["summary"]["stats"]["test_accuracy"]["mean"],
                     row["summary"]["stats"]["test_accuracy"]["std"]) for name, row in rows.items()}
    figures.frontier(curves, finals, report.PUBLISHED["test_accuracy"], out / report.FRONTIER)
    runs.write_json(out / "comparison.json", rows)
    runs.write_text(out / "comparison.md", report.comparison_markdown(rows))
    runs.write_text(out / "comparison.html", report.comparison_html(rows, out))
    return rows


def sweep_config(file: str | Path | None = None, model: str | None = None, vary: list[str] | None = None,
                 fixed: list[str] | None = None, seeds: int | None = None, search: str | None = None,
                 samples: int | None = None):
    """A sweep's configuration from a sweep file (TOML) and NAME=V1,V2 / NAME=V flags on top of it."""
    from fmnist import sweep as engine

    loaded = engine.load_file(Path(file)) if file else {}
    try:
        return engine.SweepConfig(
            model=model or loaded.get("model", models.DEFAULT),
            space={**loaded.get("space", {}), **engine.parse_assignments(vary, several=True)},
            fixed={**loaded.get("fixed", {}), **engine.parse_assignments(fixed, several=False)},
            seeds=loaded.get("seeds", 1) if seeds is None else seeds, search=search or loaded.get("search", "grid"),
            samples=loaded.get("samples", 8) if samples is None else samples)
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"sweep: {exc}") from None


def sweep(config, out: str | Path, threads: int = 1, workers: int | None = None, address: str | None = None,
          verbose: int = 1) -> tuple[dict, list[Path]]:
    """Every trial of the sweep on Ray (resuming an interrupted one), then the summary, chosen on validation
    and tested only for the chosen configuration: (summary, the files written)."""
    from fmnist import sweep as engine

    check_counts(workers=workers, threads=threads)
    results = engine.run(config, Path(out), threads, workers, address, verbose)
    summary = engine.summarise(results)
    return summary, engine.write_summary(summary, Path(out))
