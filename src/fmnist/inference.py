"""Inference: a trained network on images. The device, tensors in the report's preprocessing, batched
probabilities and evaluation, and a network loaded from a run directory in its evaluation form
(models.evaluation_form: BatchNorm folded, flip TTA where the run recorded it, bf16 if asked for).

Everything that runs a network without training it (evaluation, prediction, serving, export, the
training loop's validation) comes through here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fmnist import data, errors, models, runs, seedcnn

EVAL_BATCH_SIZE = 512  # measured: ~2.5x the images/s of 2048 on a 2-core CPU (cache-sized)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise errors.FmnistError("--device cuda asked for, but this machine has no usable CUDA GPU")
    return torch.device(name)


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], the report's preprocessing."""
    return torch.from_numpy(images).to(device).float().div_(255.0).unsqueeze(-1)


@torch.inference_mode()
def evaluate(network, images, labels, batch_size: int = EVAL_BATCH_SIZE):
    """(mean loss, accuracy) as floats, dropout off."""
    network.eval()
    loss_sum, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        logits = network(images[start:start + batch_size]).float()  # under bf16 autocast: the loss in fp32
        y = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)  # host sync: once per call


@torch.inference_mode()
def predict_probabilities(network, images, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    network.eval()
    if len(images) == 0:  # no images, no rows (torch.cat has nothing to join)
        return torch.empty(0, data.NUM_CLASSES, device=images.device)
    return torch.cat([F.softmax(network(images[i:i + batch_size]), dim=1)
                      for i in range(0, len(images), batch_size)])


def probabilities(network, images: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """Probabilities (N, 10) float32 for uint8 images (N, 28, 28)."""
    device = device or next(network.parameters()).device
    return predict_probabilities(network, to_tensor(images, device)).cpu().numpy()


def load_model(run_dir: Path, weights: str = runs.WEIGHTS, dropout: float = seedcnn.DROPOUT,
               precision: str = "fp32") -> torch.nn.Module:
    """The network a run recorded (its weights' architecture tag), in eval mode, computing in `precision`
    (models.INFERENCE_PRECISIONS); clear errors for foreign, mismatched or damaged weights."""
    where = Path(run_dir) / weights
    tensors, metadata = runs.load_weights(where)
    spec = models.for_architecture(metadata.get("architecture"))
    if spec is None:
        known = ", ".join(spec.architecture for spec in models.REGISTRY.values())
        raise errors.RunError(f"{where}: architecture {metadata.get('architecture')!r}, "
                              f"this version of fmnist reads {known}")
    network = spec.build(dropout)
    network.load_state_dict(runs.check_state(tensors, network.state_dict(), str(where)))
    return models.evaluation_form(network, *runs.tta_of(metadata, str(where)), precision=precision)
