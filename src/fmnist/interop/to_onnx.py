"""Export a run's network to ONNX: input (N, 28, 28, 1) float32 in [0, 1], softmax probabilities out.

The exported graph is checked with onnx's checker and run with onnxruntime against PyTorch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from fmnist import runs
from fmnist.core import errors, files
from fmnist.data import fashion
from fmnist.nets import architectures, inference
from fmnist.training import registry

OPSET = 17
TOLERANCE = 1e-5  # onnxruntime against PyTorch, max absolute difference of probabilities
INPUT, OUTPUT = "images", "probabilities"


class WithSoftmax(torch.nn.Module):
    """The network as Keras outputs it: probabilities, not logits."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images):
        return torch.softmax(self.network(images), dim=1)


def model_name(run_dir: Path, architecture: str) -> str:
    """The registry name the run was trained as (models may share a network), else its network's."""
    spec = registry.trained_as(architecture, runs.recorded_model(run_dir))
    return spec.name if spec else architecture


def export_onnx(run_dir: Path, path: Path | None = None, weights: str = runs.WEIGHTS) -> Path:
    run_dir = Path(run_dir)
    path = Path(path) if path else run_dir / runs.ONNX
    loaded = inference.load_model(run_dir, weights)
    network, architecture = WithSoftmax(loaded).eval(), architectures.tag_of(loaded)
    name = model_name(run_dir, architecture)
    example = torch.rand(2, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                network,
                (example,),
                str(tmp),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        exported = onnx.load(str(tmp))
        for key, value in (
            ("class_names", json.dumps(list(fashion.CLASS_NAMES))),
            ("model", name),
            ("architecture", architecture),
            ("preprocessing", runs.PREPROCESSING),
            ("source_run", run_dir.resolve().name),  # its name only: no path of this disk in a shared file
        ):
            exported.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(exported, full_check=True)
        onnx.save(exported, str(tmp))

    return files.write_atomic(path, write)


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the exported model with onnxruntime on uint8 (N, 28, 28) images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = (images.astype(np.float32) / 255.0)[..., None]
    return session.run([OUTPUT], {INPUT: inputs})[0]


def verify(run_dir: Path, path: Path, images: np.ndarray, weights: str = runs.WEIGHTS) -> float:
    """Max absolute difference of probabilities between onnxruntime and PyTorch on `images`."""
    reference = inference.probabilities(inference.load_model(Path(run_dir), weights), images)
    difference = float(np.abs(onnx_probabilities(path, images) - reference).max())
    if not difference <= TOLERANCE:
        raise errors.FmnistError(f"{path}: onnxruntime differs from PyTorch by {difference:.2e} (limit {TOLERANCE:g})")
    return difference
