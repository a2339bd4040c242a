"""Distillation (Hinton et al. 2015): a network learns a teacher's softened probabilities beside the labels.

    loss = (1 - w) * CE(student, labels) + w * T² * KL(softmax(teacher / T) || softmax(student / T))

T² keeps the soft term's gradients at the scale of the hard one's as T grows. The teacher is any run, an
ensemble among them. Its targets come one of two ways (recipe setting distill_targets):
  image  once per training image, un-augmented, before the first epoch: one inference pass over the
         training split, then a lookup per step;
  batch  on every augmented batch: the teacher sees what the student sees, at a teacher's forward pass
         per step (an ensemble's: all its members' TTA views).
Either is recomputed identically on resume. The student's clock (its history's elapsed) counts the
teacher's cost: its training (an ensemble's: its members') from epoch 0, and that pass.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist import runs
from fmnist.core import errors
from fmnist.nets import inference
from fmnist.training import configs
from fmnist.training.configs import TrainConfig


def loss(logits, labels, soft, temperature: float, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """The distillation loss above; `soft`: the teacher's probabilities at `temperature` (N, 10)."""
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    student = F.log_softmax(logits / temperature, dim=1)
    return (1 - weight) * hard + weight * temperature**2 * F.kl_div(student, soft, reduction="batchmean")


class Teacher:
    """The teacher's targets for a batch: `targets(x, rows)`, x the augmented batch, rows its images' indices."""

    def __init__(self, network, temperature: float, images: torch.Tensor | None):
        self.network, self.temperature = network, temperature
        self.by_image = self.soft(images) if images is not None else None  # (N, 10), or None: per batch

    @torch.no_grad()  # not inference_mode: the targets are saved for the student's backward pass
    def soft(self, images: torch.Tensor) -> torch.Tensor:
        batch = inference.EVAL_BATCH_SIZE
        logits = torch.cat([self.network(images[i : i + batch]).float() for i in range(0, len(images), batch)])
        return F.softmax(logits / self.temperature, dim=1)

    def targets(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.by_image[rows] if self.by_image is not None else self.soft(x)


def teacher(config: TrainConfig, images: torch.Tensor, fresh: bool) -> tuple[Teacher, float]:
    """The run's teacher (its targets per image computed here, where the recipe says so) and the seconds the
    student's clock counts for it: that pass, and for a `fresh` run (epoch 0) the teacher's own training (an
    ensemble's: its members'); errors where the teacher is no run or held out another split."""
    path = Path(str(config.teacher))
    if not runs.holds_run(path):
        raise errors.RunError(f"teacher {path}: no run there ({runs.CONFIG} is missing)")
    stored = runs.read_config(path)
    for name in configs.SPLIT_FIELDS:  # else the teacher trained on the student's validation images
        if stored.get(name) != getattr(config, name):
            raise errors.InputError(
                f"teacher {path} was trained with {name} {stored.get(name)}, this run has {getattr(config, name)}: "
                "the same split, or the teacher's targets would carry the validation images"
            )
    start = time.perf_counter()
    network = inference.load_model(path, device=images.device)
    by_image = images if config.distill_targets == "image" else None
    taught = Teacher(network, config.distill_temperature, by_image)
    trained = stored["ensemble"].get("training_seconds", 0.0) if isinstance(stored.get("ensemble"), dict) else None
    if trained is None:
        elapsed = runs.elapsed(runs.read_history(path))
        trained = elapsed[-1] if elapsed else 0.0
    return taught, time.perf_counter() - start + (float(trained) if fresh else 0.0)
