"""Distillation (Hinton et al. 2015): a network learns a teacher's softened probabilities beside the labels.

    loss = (1 - w) * CE(student, labels) + w * T² * KL(softmax(teacher / T) || softmax(student / T))

T² keeps the soft term's gradients at the scale of the hard one's as T grows. The teacher (any run, an
ensemble among them) is computed once per training image, un-augmented, before the first epoch: its
targets then cost one inference pass over the training split (counted in the run's time, `targets`),
not a teacher's forward on every augmented batch. They are recomputed identically on resume.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist import runs
from fmnist.core import errors
from fmnist.nets import inference
from fmnist.training.configs import TrainConfig

SHARED = ("validation_fraction", "limit")  # the teacher must not have trained on the student's validation images


def loss(logits, labels, soft, temperature: float, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """The distillation loss above; `soft`: the teacher's probabilities at `temperature` (N, 10)."""
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    student = F.log_softmax(logits / temperature, dim=1)
    return (1 - weight) * hard + weight * temperature**2 * F.kl_div(student, soft, reduction="batchmean")


@torch.inference_mode()
def targets(config: TrainConfig, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(N, 10) the teacher's probabilities at the temperature for each training image, and the seconds they
    took; errors where the teacher is no run or held out another split."""
    teacher = Path(str(config.teacher))
    if not runs.holds_run(teacher):
        raise errors.RunError(f"teacher {teacher}: no run there ({runs.CONFIG} is missing)")
    stored = runs.read_config(teacher)
    for name in SHARED:
        if stored.get(name) != getattr(config, name):
            raise errors.InputError(
                f"teacher {teacher} was trained with {name} {stored.get(name)}, this run has {getattr(config, name)}: "
                "the same split, or the teacher's targets would carry the validation images"
            )
    start = time.perf_counter()
    network = inference.load_model(teacher, device=images.device)
    batch = inference.EVAL_BATCH_SIZE
    logits = torch.cat([network(images[i : i + batch]).float() for i in range(0, len(images), batch)])
    return F.softmax(logits / config.distill_temperature, dim=1), time.perf_counter() - start
