"""The run directory: the unit of persistence. Its whole layout is documented here, and only here.

    RUN/
      config.json            the resolved training configuration, plus machine and versions
      history.json           one entry per finished epoch: loss, accuracy, val_loss, val_accuracy, seconds
      model.safetensors      final weights; header metadata: architecture, class names, preprocessing
      best.safetensors       weights of the epoch with the lowest validation loss
      checkpoint.pt          model + optimizer + RNG states + epoch, to resume (read with weights_only)
      metrics.json           `fmnist evaluate`: train and test loss/accuracy, per-class table, confusion
      predictions.csv        `fmnist evaluate`: index, true, predicted, ten probabilities per test image
      figures/*.png          samples, learning curves, confusion matrix, predictions, confident mistakes
      report.html, report.md `fmnist report`: the whole experiment on one page
      model.onnx             `fmnist export`

Every file is written to a temp file in the same directory and renamed: a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from fmnist import data, errors, model

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
PREPROCESSING = "grayscale uint8 28x28, light object on dark background, divided by 255; input (N, 28, 28, 1) float32"


def write_atomic(path: Path, write) -> Path:
    """Call write(temp_path), then rename the temp file onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json(path: Path, value) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise errors.RunError(f"{path} is missing: is {Path(path).parent} a run directory "
                              f"(made by `fmnist train` or `fmnist import-keras`)?") from None
    except (OSError, ValueError) as exc:
        raise errors.RunError(f"{path} is damaged ({exc})") from None


def save_weights(path: Path, state: dict[str, torch.Tensor], **extra) -> Path:
    metadata = {"format": "fmnist", "architecture": model.ARCHITECTURE,
                "class_names": json.dumps(list(data.CLASS_NAMES)), "preprocessing": PREPROCESSING,
                **{key: str(value) for key, value in extra.items()}}
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    return write_atomic(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file; safetensors never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise errors.RunError(f"{path} is missing: is {path.parent} a run directory?")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise errors.RunError(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors, metadata


def load_model(run_dir: Path, weights: str = WEIGHTS, dropout: float = model.DROPOUT) -> model.SeedCNN:
    """The network of a run directory, in eval mode; clear errors for foreign or mismatched weights."""
    tensors, metadata = load_weights(Path(run_dir) / weights)
    if metadata.get("architecture") != model.ARCHITECTURE:
        raise errors.RunError(f"{Path(run_dir) / weights}: architecture {metadata.get('architecture')!r}, "
                              f"this version of fmnist reads {model.ARCHITECTURE!r}")
    network = model.SeedCNN(dropout=dropout)
    expected = {name: tuple(p.shape) for name, p in network.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        wrong = sorted(set(expected.items()) ^ set(found.items()))
        raise errors.RunError(f"{Path(run_dir) / weights}: weights do not match the architecture "
                              f"(differs at {wrong[0][0]}: expected {expected.get(wrong[0][0])}, "
                              f"found {found.get(wrong[0][0])})")
    network.load_state_dict(tensors)
    return network.eval()


def save_checkpoint(path: Path, state: dict) -> Path:
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """weights_only=True: a checkpoint can hold tensors and plain values, never code to run."""
    if not Path(path).is_file():
        raise errors.RunError(f"{path} is missing: nothing to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise errors.RunError(f"{path} is damaged or not an fmnist checkpoint ({exc})") from None
