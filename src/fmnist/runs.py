"""The run directory, the unit of persistence: its whole layout is documented here, and only here.

    RUN/
      config.json            the resolved training configuration, plus machine and versions
      history.json           one entry per finished epoch: loss, accuracy, val_loss, val_accuracy, seconds,
                             learning_rate (where the epoch ended),
                             elapsed (cumulative seconds of training and validation, across resumes; a
                             distilled run's also its teacher's training and targets); val_*
                             through the model's TTA (config validate_tta "last": only the last epoch's);
                             null where nothing was held out (config validation_fraction 0); threads (the
                             count the epoch trained on: without --threads it follows the machine's load)
      model.safetensors      final weights; header metadata: architecture, class names, preprocessing,
                             tta ("flip": predictions average each image and its mirror; absent: none),
                             tta_shift (N: and both moved diagonally by ±N pixels; absent: 0)
      best.safetensors       weights of the epoch with the lowest validation loss (none without validation)
      log.csv                the history as Keras's CSVLogger writes it (training/logs.py)
      tensorboard/           TensorBoard event files: losses, accuracies, learning rate, seconds per epoch
      checkpoint.pt          model + optimizer + RNG states + epoch, to resume (read with weights_only)
      metrics.json           `fmnist evaluate`: train and test loss/accuracy, per-class table, confusion
                             matrix, the weights used, precision (fp32, or bf16 with --precision bf16)
      predictions.csv        `fmnist evaluate`: index, true, predicted, ten probabilities per test image
      figures/*.png          samples, learning curves, confusion matrix, predictions, confident mistakes
      report.html, report.md `fmnist report`: the whole experiment on one page
      model.onnx             `fmnist export`
      README.md              the pretrained run's alone: its model card (the command that made it, the
                             machine, the test accuracy; generated from its record by docs/hooks.py)

The pretrained run ships in the package (fmnist/pretrained/MODEL/: a finished run less its checkpoint,
logs and figures) and is copied into the user cache on first use (`pretrained_run`).

Every file is written atomically (core/files.py: a temp file `.NAME.*.tmp` renamed; a crash never
leaves half a file), and the temp files a kill leaves behind are removed when the run is next written.
A run is resumable from every state a kill can leave it in: config.json alone (from epoch 0), a
checkpoint without history (killed in epoch 1), history one epoch ahead of the checkpoint (killed
between the two writes; the checkpoint counts).

Torch is imported by the functions that read or write tensors only: reading a run's JSON needs none.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.core import errors, files

if TYPE_CHECKING:
    import torch
from fmnist.data import fashion

CONFIG = "config.json"
HISTORY = "history.json"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
FIGURES = "figures"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
ONNX = "model.onnx"
MAX_FILE_BYTES = 256 << 20  # weights or checkpoint; the seed's checkpoint (weights and Adam's moments) is ~10 MB
MAX_JSON_BYTES = 16 << 20  # config, history, metrics: a 1,000-epoch history is ~250 KB
PRETRAINED = "cnn94"  # the model whose weights ship in the package
PRETRAINED_FILES = (CONFIG, HISTORY, METRICS, "README.md", WEIGHTS)  # the weights last
PREPROCESSING = "grayscale uint8 28x28, light object on dark background, divided by 255; input (N, 28, 28, 1) float32"


def weights_file(weights: str) -> str:
    """The file of a run's "final" or "best" weights."""
    files_by_name = {"final": WEIGHTS, "best": BEST_WEIGHTS}
    if weights not in files_by_name:
        raise ValueError(f"weights must be 'final' or 'best', got {weights!r}")
    return files_by_name[weights]


def read_json(path: Path):
    """A run's JSON file: a regular file of at most MAX_JSON_BYTES, parsed; RunError otherwise."""
    if not Path(path).exists():
        raise errors.RunError(
            f"{path} is missing: is {Path(path).parent} a run directory "
            f"(made by `fmnist train` or `fmnist import-keras`)?"
        )
    try:
        return json.loads(files.read_regular(Path(path), MAX_JSON_BYTES))
    except errors.InputError as exc:  # not a regular file, unreadable, or too large
        raise errors.RunError(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise errors.RunError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise errors.RunError(f"{path} is damaged: it holds a JSON {type(config).__name__}, not an object")
    return config


def recorded_model(run_dir: Path) -> str | None:
    """The model name a run's config.json records; None where it has none (or no config)."""
    model = read_config(run_dir).get("model") if (Path(run_dir) / CONFIG).is_file() else None
    return model if isinstance(model, str) else None


HISTORY_FIELDS = {
    "epoch": int,
    "loss": float,
    "accuracy": float,
    "val_loss": float,
    "val_accuracy": float,
    "train_seconds": float,
    "seconds": float,
    "steps": int,
}
UNVALIDATED = ("val_loss", "val_accuracy")  # null in a run that held nothing out (validation_fraction 0)


def read_history(run_dir: Path) -> list[dict]:
    """One row per finished epoch; [] where none was written (imported, or stopped in epoch 1)."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    history = read_json(path)
    if not isinstance(history, list) or not all(valid_row(row, epoch) for epoch, row in enumerate(history, 1)):
        raise errors.RunError(
            f"{path} is damaged: expected a list of rows for epochs 1, 2, ... with "
            f"{', '.join(HISTORY_FIELDS)} as numbers"
        )
    return history


def elapsed(history: list[dict]) -> list[float]:
    """Cumulative seconds of training and validation at the end of each epoch (rows written before
    `elapsed` was recorded: summed from their own seconds)."""
    total, out = 0.0, []
    for row in history:
        total = row.get("elapsed", total + row["seconds"])
        out.append(total)
    return out


def validated(history: list[dict]) -> list[dict]:
    """The rows that hold validation figures (none in a run that held nothing out)."""
    return [row for row in history if row["val_loss"] is not None]


def validation_curve(history: list[dict]) -> list[tuple[float, float]]:
    """(elapsed seconds, validation accuracy) of each validated epoch ([] for a final fit on every image)."""
    return [
        (seconds, row["val_accuracy"])
        for row, seconds in zip(history, elapsed(history))
        if row["val_accuracy"] is not None
    ]


def time_to_accuracy(history: list[dict], accuracy: float) -> float | None:
    """Elapsed seconds when validation accuracy first reached `accuracy`; None if it never did (or nothing
    was validated)."""
    return next((seconds for seconds, reached in validation_curve(history) if reached >= accuracy), None)


def valid_row(row, epoch: int) -> bool:
    def fits(key, value, kind) -> bool:  # JSON writes 1.0 as 1.0, but accept an int where a float belongs
        if value is None:  # both validation figures null, never one alone
            return key in UNVALIDATED and all(k in row and row[k] is None for k in UNVALIDATED)
        return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind)

    return (
        isinstance(row, dict)
        and row.get("epoch") == epoch
        and all(fits(key, row.get(key), kind) for key, kind in HISTORY_FIELDS.items())
    )


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in (CONFIG, WEIGHTS, BEST_WEIGHTS, CHECKPOINT, HISTORY))


def require_new(run_dir: Path, how_to_continue: str) -> Path:
    """A directory for a new run: refused if it is a file or already holds a run (never overwritten)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise errors.OutputError(f"{run_dir} is a file: give a directory for the run")
    if holds_run(run_dir):
        raise errors.RunError(f"{run_dir} already holds a run: {how_to_continue}, or write to another directory")
    return run_dir


def require_target(run_dir: Path, resume: bool) -> Path:
    """Where training writes: a new run's directory (require_new), or, to resume, one that holds a run."""
    run_dir = Path(run_dir)
    if not resume:
        return require_new(run_dir, f"continue it with --resume {run_dir}")
    if not (run_dir / CONFIG).is_file():
        raise errors.RunError(f"{run_dir / CONFIG} is missing: {run_dir} holds no run to resume")
    return run_dir


def pretrained_run() -> Path:
    """The pretrained run, copied from the package into the user cache where it is not there yet or its weights
    differ (another version): evaluate and report write into a run, and an installed package may be read-only."""
    source = importlib.resources.files("fmnist").joinpath("pretrained", PRETRAINED)
    target = files.user_cache() / "pretrained" / PRETRAINED
    weights = source.joinpath(WEIGHTS).read_bytes()
    if not (target / WEIGHTS).is_file() or (target / WEIGHTS).read_bytes() != weights:
        for name in PRETRAINED_FILES:  # a copy cut short has old or no weights: copied again
            content = weights if name == WEIGHTS else source.joinpath(name).read_bytes()
            files.write_atomic(files.output_dir(target) / name, lambda tmp, data=content: tmp.write_bytes(data))
    return target


def remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of writes that a kill interrupted. Call only as the run's one writer."""
    for name in (CONFIG, HISTORY, WEIGHTS, BEST_WEIGHTS, CHECKPOINT):
        for stale in Path(run_dir).glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def check_state(
    state: dict, reference: dict[str, torch.Tensor], where: str, error: type[errors.FmnistError] = errors.RunError
) -> dict:
    """Exactly the tensors of `reference` (a network's state_dict): every name, shape and dtype, and
    finite values. Anything else is refused before it is used."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise error(f"{where}: the weights are not a set of named tensors")
    expected, found = ({name: tuple(t.shape) for name, t in tensors.items()} for tensors in (reference, state))
    if expected != found:
        wrong = sorted(set(expected.items()) ^ set(found.items()))[0][0]
        raise error(
            f"{where}: weights do not match the architecture (differs at {wrong}: "
            f"expected {expected.get(wrong)}, found {found.get(wrong)})"
        )
    for name, tensor in state.items():
        if tensor.dtype != reference[name].dtype:
            raise error(f"{where}: {name} is {tensor.dtype}, expected {reference[name].dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise error(f"{where}: {name} holds NaN or infinite values")
    return state


def save_weights(path: Path, state: dict[str, torch.Tensor], architecture: str, **extra) -> Path:
    """Tensors plus readable metadata: the architecture tag `load_model` rebuilds from, classes, preprocessing."""
    import safetensors.torch

    metadata = {
        "format": "fmnist",
        "architecture": architecture,
        "class_names": json.dumps(list(fashion.CLASS_NAMES)),
        "preprocessing": PREPROCESSING,
        **{key: str(value) for key, value in extra.items()},
    }
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    return files.write_atomic(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def tta_metadata(tta: bool, shift: int) -> dict[str, str]:
    """The weights' TTA fields (layout above)."""
    return {"tta": "flip", **({"tta_shift": str(shift)} if shift else {})} if tta else {}


def tta_of(metadata: dict[str, str], where: str) -> tuple[bool, int]:
    """(flip TTA?, its shift) from weights' metadata, checked: a file may hold anything."""
    shift = metadata.get("tta_shift", "0")
    if not shift.isdigit() or int(shift) > fashion.MAX_SHIFT:
        raise errors.RunError(f"{where}: tta_shift {shift!r} is not a shift of 0..8 pixels")
    return metadata.get("tta") == "flip", int(shift)


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file; safetensors never executes code from the file."""
    import safetensors

    path = Path(path)
    if not path.is_file() and path.name == BEST_WEIGHTS and (path.parent / WEIGHTS).is_file():
        raise errors.RunError(
            f"{path} is missing: this run has no best epoch (it validated nothing, with "
            f"validation_fraction 0, or it was imported); use its final weights ({WEIGHTS})"
        )
    if not path.is_file():
        raise errors.RunError(f"{path} is missing: is {path.parent} a run directory?")
    check_size(path, path.stat().st_size)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise errors.RunError(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors, metadata


def best_val_loss(run_dir: Path) -> float:
    """The validation loss best.safetensors was saved at (inf where there is none, or an older run's)."""
    import safetensors

    path = Path(run_dir) / BEST_WEIGHTS
    if not path.is_file():
        return math.inf
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return float((handle.metadata() or {}).get("val_loss", "inf"))
    except Exception:  # a damaged file: the next better epoch replaces it
        return math.inf


def check_size(path: Path, size: int, what: str = "is") -> None:
    if size > MAX_FILE_BYTES:
        raise errors.RunError(f"{path} {what} {size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a run's file")


def save_checkpoint(path: Path, state: dict) -> Path:
    import torch

    return files.write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """weights_only=True: a checkpoint can hold tensors and plain values, never code to run."""
    import torch

    if not Path(path).is_file():
        raise errors.RunError(f"{path} is missing: nothing to resume")
    check_size(path, Path(path).stat().st_size)
    try:  # torch.save writes a zip, and torch.load allocates what its entries declare
        with zipfile.ZipFile(path) as archive:
            check_size(path, sum(info.file_size for info in archive.infolist()), "unpacks to")
    except zipfile.BadZipFile:
        pass  # not a zip: torch.load says it is damaged
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise errors.RunError(f"{path} is damaged or not an fmnist checkpoint ({exc})") from None
