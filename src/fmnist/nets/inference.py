"""Inference: a trained network on images, in its evaluation form. Everything that runs a network without
training it (evaluation, prediction, serving, export, the training loop's validation) comes through here.

- `evaluation_form`: the network as inference runs it: BatchNorm folded (`for_inference`), flip TTA (and
  the views moved by ±N pixels) where the run recorded it, bf16 if asked for. Each form is a `Wrapper`
  whose state_dict is the network's own, beside the plain form it must equal (`flip_averaged_reference`).
- `load_model`: a network rebuilt from a run's weights (their architecture tag) in that form; an ensemble's
  members each so (nets/ensemble.py).
- tensors in the report's preprocessing, batched probabilities, evaluation, and the top classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmnist import runs
from fmnist.core import errors, machine
from fmnist.data import fashion, photos
from fmnist.nets import INFERENCE_PRECISIONS, architectures, ensemble, seedcnn

CPU = torch.device("cpu")

EVAL_BATCH_SIZE = 512  # measured: ~2.5x the images/s of 2048 on a 2-core CPU (cache-sized)


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], the report's preprocessing."""
    return torch.from_numpy(images).to(device).float().div_(255.0).unsqueeze(-1)


@torch.inference_mode()
def evaluate(network, images, labels, batch_size: int = EVAL_BATCH_SIZE):
    """(mean loss, accuracy) as floats, dropout off."""
    network.eval()
    loss_sum, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for start in range(0, len(images), batch_size):
        logits = network(images[start : start + batch_size]).float()  # under bf16 autocast: the loss in fp32
        y = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)  # host sync: once per call


@torch.inference_mode()
def predict_probabilities(network, images, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    network.eval()
    if len(images) == 0:  # no images, no rows (torch.cat has nothing to join)
        return torch.empty(0, fashion.NUM_CLASSES, device=images.device)
    return torch.cat([F.softmax(network(images[i : i + batch_size]), dim=1) for i in range(0, len(images), batch_size)])


def probabilities(network, images: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """Probabilities (N, 10) float32 for uint8 images (N, 28, 28)."""
    device = device or next(network.parameters()).device
    return predict_probabilities(network, to_tensor(images, device)).cpu().numpy()


def load_model(
    run_dir: Path,
    weights: str = runs.WEIGHTS,
    dropout: float = seedcnn.DROPOUT,
    precision: str = "fp32",
    device: torch.device = CPU,
) -> torch.nn.Module:
    """The network a run recorded (its weights' architecture tag; an ensemble's members each by theirs), in
    eval mode on `device`, computing in `precision` (INFERENCE_PRECISIONS; a warning where the device only
    emulates bf16); clear errors for foreign, mismatched or damaged weights."""
    where = Path(run_dir) / weights
    tensors, metadata = runs.load_weights(where)
    if metadata.get("architecture") == ensemble.ARCHITECTURE:
        network = ensemble_from(tensors, metadata, str(where), dropout)
    else:
        network = network_from(tensors, metadata, str(where), dropout)
    machine.check_bf16(precision, device)
    return in_precision(network, precision).to(device)


def network_from(tensors: dict, metadata: dict[str, str], where: str, dropout: float) -> nn.Module:
    """One network of a registered architecture from its weights, in its evaluation form (fp32)."""
    architecture = architectures.get(metadata.get("architecture"))
    if architecture is None:
        raise errors.RunError(
            f"{where}: architecture {metadata.get('architecture')!r}, "
            f"this version of fmnist reads {', '.join([*architectures.ARCHITECTURES, ensemble.ARCHITECTURE])}"
        )
    network = architecture.network(dropout=dropout)
    network.load_state_dict(runs.check_state(tensors, network.state_dict(), where))
    return evaluation_form(network, *runs.tta_of(metadata, where))


def ensemble_from(tensors: dict, metadata: dict[str, str], where: str, dropout: float) -> ensemble.Ensemble:
    """An ensemble's members (nets/ensemble.py), each checked as a network alone is."""
    try:
        members, combine = ensemble.read_metadata(metadata)
        states = ensemble.unpacked(tensors, len(members))
    except (ValueError, KeyError) as exc:
        raise errors.RunError(f"{where}: not a readable ensemble ({exc})") from None
    built = [
        network_from(state, meta, f"{where}, member {i}", dropout)
        for i, (state, meta) in enumerate(zip(states, members))
    ]
    return ensemble.Ensemble(built, combine)


def top_classes(probabilities: np.ndarray, k: int = 3) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": int(i), "class": fashion.CLASS_NAMES[i], "probability": float(probabilities[i])} for i in order]


def checked_probabilities(network, images: np.ndarray) -> np.ndarray:
    """(N, 10) float32 class probabilities for (N, 28, 28) uint8 images, refused where not finite."""
    rows = probabilities(network, images)
    if not np.isfinite(rows).all():  # JSON cannot hold NaN; weights are checked on load, but say so
        raise errors.RunError("the model's output is not finite: its weights are damaged")
    return rows


def top_rows(rows: np.ndarray, k: int = 3) -> list[list[dict]]:
    return [top_classes(row, k) for row in rows]


def classify(network, images: np.ndarray, k: int = 3) -> list[list[dict]]:
    """Top-k classes for preprocessed (N, 28, 28) uint8 images."""
    return top_rows(checked_probabilities(network, images), k)


def classify_files(network, paths: list[Path], k: int = 3, save_dir: Path | None = None) -> list[dict]:
    """Per image file its top-k classes, or the error that file met (one bad file does not stop the others);
    with `save_dir`, the 28x28 view the network saw, saved there."""
    names, results = photos.preprocessed_names(paths), list[dict]()
    for path in paths:
        try:
            pixels = photos.preprocess(photos.open_image(path, str(path)))
        except errors.InputError as exc:
            results.append({"file": str(path), "error": str(exc)})
            continue
        results.append({"file": str(path), "top": classify(network, pixels[None], k)[0]})
        if photos.blank(pixels):
            results[-1]["warning"] = photos.BLANK_WARNING
        if save_dir:
            results[-1]["preprocessed"] = str(photos.save_view(pixels, save_dir / names[path]))
    return results


# ---------------------------------------------------------------------------------------------
# Evaluation forms


def evaluation_form(network: nn.Module, tta: bool, tta_shift: int = 0, precision: str = "fp32") -> nn.Module:
    """The network as evaluation, prediction, serving and export run it, in eval mode: its inference form
    (`for_inference`, where it has one: the same function, cheaper), with flip TTA if asked for (and the
    views moved by ±tta_shift pixels), computed in bf16 if asked for (Bf16Inference)."""
    network = network.eval()
    if hasattr(network, "for_inference"):
        network = network.for_inference()
    return in_precision(FlipAveraged(network, tta_shift) if tta else network, precision)


def in_precision(network: nn.Module, precision: str) -> nn.Module:
    """The network computed in `precision` (bf16: Bf16Inference), in eval mode."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    return (Bf16Inference(network) if precision == "bf16" else network).eval()


# Views per pass of TTA through the network: a pass's activations should stay in the caches (2-core Zen 4,
# fast-cnn's flip TTA: 512 views 7,100 test images/s, whole 512-image batches 4,700). On a
# 2-core Zen 5, 10,000 images in fp32 (median of 5 interleaved rounds): 256 views gave res95 804 images/s and
# cnn94 3,668, against 653 and 3,313 at 512 views (128: 779 and 3,693); in bf16 all three were alike.
TTA_ROWS = 256


# ---------------------------------------------------------------------------------------------
class Wrapper(nn.Module):
    """A network computed differently (TTA, bf16), its parameters under their own names: `state_dict` is
    the wrapped network's, so weights save and load as the network's own."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict, assign)


# Test-time augmentation: the mean of the logits of an image and its mirror (and both moved by ±shift px)
class FlipAveraged(Wrapper):
    """In eval mode, the mean of the network's logits over each image's views — itself and its mirror,
    and with `shift`, both moved diagonally by -shift and +shift pixels (6 views) — computed as one batch
    of views (one pass through the layers); in training mode, the network itself."""

    def __init__(self, network: nn.Module, shift: int = 0):
        super().__init__(network)
        self.shift = shift
        self.offsets = (0, -shift, shift) if shift else (0,)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """(V*N, 28, 28, 1): the images moved by each offset (zeros fill in), then all of that mirrored."""
        moved = [x] + [shift_image(x, offset, offset) for offset in self.offsets[1:]]
        both = torch.cat(moved)
        return torch.cat([both, both.flip(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.network(x)
        count = 2 * len(self.offsets)
        chunk = max(1, TTA_ROWS // count)
        if x.shape[0] > chunk:
            return torch.cat([self(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        logits = self.network(self.views(x))  # (V*N, 10), view-major
        return logits.reshape(count, x.shape[0], -1).mean(0)  # (V, N, 10) -> (N, 10)


# bf16 inference: `--precision bf16` on evaluate, predict and serve
class Bf16Inference(Wrapper):
    """The network under bf16 autocast, its logits returned as float32. The weights stay float32;
    convolutions and matrix products run in bf16, which CPUs with AVX512-BF16 or AMX and GPUs compute
    natively (1.4-1.9x the images/s in batches, measured; README) and other CPUs emulate, slower than
    fp32. About 1 test prediction in 1,000 changes (measured; README)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.network(x).float()


def shift_image(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """NHWC images moved dy rows down and dx columns right, zeros filling in (a pad and a crop: ONNX-able)."""
    s = max(abs(dy), abs(dx))
    padded = F.pad(x, (0, 0, s, s, s, s))  # (N, H+2s, W+2s, C)
    h, w = x.shape[1:3]
    return padded[:, s - dy : s - dy + h, s - dx : s - dx + w]


def flip_averaged_reference(network: nn.Module, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """The plain form: one pass per view, averaged; a moved image written pixel by pixel with a loop."""

    def moved(d):
        out = torch.zeros_like(x)
        for row in range(x.shape[1]):
            for col in range(x.shape[2]):
                if 0 <= row - d < x.shape[1] and 0 <= col - d < x.shape[2]:
                    out[:, row, col] = x[:, row - d, col - d]
        return out

    images = [x] + ([moved(-shift), moved(shift)] if shift else [])
    views = [view for image in images for view in (image, image.flip(2))]
    return sum(network(view) for view in views) / len(views)
