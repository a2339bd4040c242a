"""The pieces of a modern training recipe, each a small function beside the plain form it must equal.

- `augment`: random horizontal flips and translations, drawn once per epoch for the whole (shuffled)
  training set from the run's shuffling generator, so a resumed run draws the same images.
- `KerasAdam`, `make_optimizer`: Keras's Adam (the seed's), SGD with Nesterov momentum, AdamW, or Muon for
  the conv filters beside SGD for the rest; weight decay applies to weights only (not to biases or
  BatchNorm's scale and shift).
- `train_step`: one step of any of them, the loop's and `fmnist bench`'s.
The schedule (constant, or one-cycle: a function of the global step, nothing to checkpoint) is the
recipe's own (configs.Recipe.epoch_rates).
Images are NHWC (N, 28, 28, 1) as everywhere in fmnist: width, the flipped axis, is dim 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.nets.kernels import fused
from fmnist.training import configs

MOMENTUM = 0.9  # SGD's; AdamW uses the seed's Adam betas
MUON_MOMENTUM = 0.6  # airbench94_muon's (Nesterov)
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # Muon's quintic: singular values to ~[0.7, 1.2] in 5 steps
BETA_1, BETA_2, EPSILON, ADAM_LEARNING_RATE = 0.9, 0.999, 1e-7, 1e-3  # Keras's Adam defaults


# ---------------------------------------------------------------------------------------------
# Augmentation
def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    flip: bool,
    shift: int,
    mirrored: torch.Tensor | None = None,
    cutout: int = 0,
) -> torch.Tensor:
    """Each image mirrored with probability 1/2 (if `flip`; or exactly where `mirrored` says), moved by
    up to `shift` pixels in each direction (uniform, zeros fill in), and with a `cutout`-pixel square
    zeroed, as new images. Nothing is drawn for what is not asked for."""
    mirrored, offsets, corners = draw_augmentation(images.shape[:2], generator, flip, shift, mirrored, cutout)
    if mirrored is not None:
        images = torch.where(mirrored.to(images.device)[:, None, None, None], images.flip(2), images)
    if shift:
        images = translate(images, offsets.to(images.device), shift)
    return cut_out(images, corners, cutout)


def draw_augmentation(
    shape: tuple[int, int],
    generator: torch.Generator,
    flip: bool,
    shift: int,
    mirrored: torch.Tensor | None,
    cutout: int,
) -> tuple:
    """For `shape` = (N images, side): (mirrored (N,) or None, offsets (N, 2): (dy, dx) + shift, or None, cutout
    corners (N, 2) or None), drawn in this order from `generator`: an epoch's augmentation, however applied."""
    n, side = shape
    if flip and mirrored is None:
        mirrored = torch.rand(n, generator=generator) < 0.5
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator) if shift else None
    corners = torch.randint(-(cutout - 1), side, (n, 2), generator=generator) if cutout else None  # may overhang
    return mirrored, offsets, corners


def cut_out(images: torch.Tensor, corners: torch.Tensor | None, cutout: int) -> torch.Tensor:
    if not cutout or corners is None:
        return images
    return images * ~cutout_masks(corners.to(images.device), cutout, images.shape[1])[..., None]


def shuffled_augmented(
    images: torch.Tensor,
    order: torch.Tensor,
    generator: torch.Generator,
    flip: bool,
    shift: int,
    mirrored: torch.Tensor | None = None,
    cutout: int = 0,
) -> torch.Tensor:
    """augment(images[order], ...): the same values and draws. On the CPU the gather, flip and shift are one
    pass (`fused.gather_flip_shift`) instead of the plain form's five over the whole training set, which
    each epoch makes before its first step (README, "The epoch around the steps")."""
    if not fused.gathers(images):
        return augment(images[order], generator, flip, shift, mirrored, cutout)
    n = len(order)
    mirrored, offsets, corners = draw_augmentation((n, images.shape[1]), generator, flip, shift, mirrored, cutout)
    moves = offsets - shift if offsets is not None else torch.zeros(n, 2, dtype=torch.long)  # (N, 2): dy, dx
    flips = mirrored if mirrored is not None else torch.zeros(n, dtype=torch.bool)
    return cut_out(fused.gather_flip_shift(images, order, flips, moves), corners, cutout)


def cutout_masks(corners: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """(N, side, side) bools: True inside each image's size x size square whose top-left corner is
    corners[i] (row, column; it may lie off the image, so that edges are cut as often as the middle)."""
    positions = torch.arange(side, device=corners.device)
    rows = (positions >= corners[:, :1]) & (positions < corners[:, :1] + size)  # (N, side)
    columns = (positions >= corners[:, 1:]) & (positions < corners[:, 1:] + size)
    return rows[:, :, None] & columns[:, None, :]


def cutout_reference(images: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """The plain form: each image's square zeroed pixel by pixel."""
    out = images.clone()
    for i, (top, left) in enumerate(corners.tolist()):
        for row in range(max(0, top), min(images.shape[1], top + size)):
            for column in range(max(0, left), min(images.shape[2], left + size)):
                out[i, row, column] = 0
    return out


def translate(images: torch.Tensor, offsets: torch.Tensor, shift: int) -> torch.Tensor:
    """Image i moved by offsets[i] - shift pixels (rows, columns), zero-filled: one slice copy per
    distinct offset ((2*shift+1)^2 of them, each over all its images) instead of one per image."""
    _n, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, shift, shift, shift, shift))  # (N, H+2s, W+2s, C)
    side = 2 * shift + 1
    codes = offsets[:, 0] * side + offsets[:, 1]  # (N,): which offset each image drew
    out = torch.empty_like(images)
    for code in range(side * side):
        chosen = (codes == code).nonzero().squeeze(1)
        dy, dx = divmod(code, side)
        # a window of the padded image starting at (2s - dy', ...) moves the content by dy' = dy - s
        out[chosen] = padded[chosen, 2 * shift - dy : 2 * shift - dy + h, 2 * shift - dx : 2 * shift - dx + w]
    return out


def translate_reference(images: torch.Tensor, offsets: torch.Tensor, shift: int) -> torch.Tensor:
    """The plain form: each image rolled and its wrapped-around edge zeroed, one at a time."""
    out = torch.zeros_like(images)
    h, w = images.shape[1:3]
    for i, (dy, dx) in enumerate((offsets - shift).tolist()):
        source = images[i, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        out[i, max(0, dy) : max(0, dy) + source.shape[0], max(0, dx) : max(0, dx) + source.shape[1]] = source
    return out


def alternating_flips(count: int, seed: int, epoch: int) -> torch.Tensor:
    """(count,) bools, by image index: which images epoch `epoch` (0-based) mirrors. A random half in
    epoch 0 (from the seed alone: nothing to checkpoint), then each image flips on every other epoch, so
    that every two epochs show each image both ways (airbench's alternating flip)."""
    first = torch.rand(count, generator=torch.Generator().manual_seed(seed + 2)) < 0.5
    return first ^ bool(epoch % 2)


# ---------------------------------------------------------------------------------------------
# Initialisation and BatchNorm settings
def set_up_network(network: nn.Module, dirac: bool, bn_weight: bool, bn_momentum: float) -> None:
    """A new network as the recipe wants it before training: initialisation and BatchNorm settings."""
    if dirac:
        dirac_init(network)
    if not bn_weight:
        freeze_bn_weights(network)
    for layer in network.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = bn_momentum  # PyTorch's convention: the weight of the new batch's statistics


def train_whitening_bias(network: nn.Module, trains: bool) -> None:
    """A whitening stem's bias learns in the first epochs only (its filters never): set per epoch."""
    if hasattr(network, "whitening"):
        network.whitening.bias.requires_grad_(trains)


def dirac_init(network: nn.Module) -> None:
    """Each learned convolution's first in-channels filters become the identity (the input passes through):
    a deep stack starts near the function of a shallow one (airbench's identity initialisation)."""
    with torch.no_grad():
        for conv in network.modules():
            if isinstance(conv, nn.Conv2d) and conv.out_channels >= conv.in_channels and conv.weight.requires_grad:
                nn.init.dirac_(conv.weight[: conv.in_channels])


def freeze_bn_weights(network: nn.Module) -> None:
    """BatchNorm scales stay at 1 (not trained): the next layer's weights carry the scale anyway."""
    for layer in network.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.weight is not None:
            layer.weight.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
class KerasAdam(torch.optim.Adam):
    """Adam with Keras's epsilon: Keras adds ε to sqrt(v) *before* bias correction, PyTorch after.

    Keras:   w -= lr·sqrt(1-β2ᵗ)/(1-β1ᵗ) · m / (sqrt(v) + ε)
    PyTorch: w -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + ε')   — equal when ε' = ε / sqrt(1-β2ᵗ).
    """

    def __init__(self, params, lr: float = ADAM_LEARNING_RATE, **kwargs):
        super().__init__(params, lr=lr, betas=(BETA_1, BETA_2), eps=EPSILON, **kwargs)
        for group in self.param_groups:
            group.setdefault("keras_step", 0)  # a Python int: no device sync to read it

    def step(self, closure=None):
        for group in self.param_groups:
            group["keras_step"] += 1
            group["eps"] = EPSILON / math.sqrt(1.0 - group["betas"][1] ** group["keras_step"])
        return super().step(closure)


def parameter_groups(network: nn.Module, weight_decay: float, bn_bias_lr: float = 1.0) -> list[dict]:
    """Weight decay on weights (matrices, kernels) only: decaying BatchNorm's scale or a bias only hurts.
    BatchNorm biases in a group of their own at `bn_bias_lr` times the rate ("lr_scale": the loop sets each
    group's rate as the schedule's times its scale). Frozen parameters (requires_grad off) are left out."""
    batchnorm_biases = {
        id(layer.bias)
        for layer in network.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.bias is not None
    }
    trained = [p for p in network.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": 1.0},
        {
            "params": [p for p in trained if p.ndim <= 1 and id(p) not in batchnorm_biases],
            "weight_decay": 0.0,
            "lr_scale": 1.0,
        },
    ]
    if bn_bias_lr == 1.0:  # as before this setting existed: one group for every one-dimensional parameter
        groups[1]["params"] = [p for p in trained if p.ndim <= 1]
        return groups
    biases = [p for p in trained if id(p) in batchnorm_biases]
    return [*groups, {"params": biases, "weight_decay": 0.0, "lr_scale": bn_bias_lr}]


def optimizer_for(network: nn.Module, recipe: configs.Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over the network's parameters."""
    return make_optimizer(
        network, recipe.optimizer, recipe.learning_rate, recipe.weight_decay, recipe.bn_bias_lr, recipe.muon_lr
    )


def make_optimizer(
    network: nn.Module,
    name: str,
    learning_rate: float,
    weight_decay: float,
    bn_bias_lr: float = 1.0,
    muon_lr: float = 1.0,
) -> torch.optim.Optimizer:
    """Adam is the seed's (Keras's, one group, as the report); the others group the parameters (Muon: the
    conv filters in a group of their own at `muon_lr` times the rate, without weight decay)."""
    if name == "adam":
        if weight_decay or bn_bias_lr != 1.0:
            raise ValueError("Keras's Adam takes no weight decay or BatchNorm rate: use --optimizer adamw or sgd")
        return KerasAdam(network.parameters(), lr=learning_rate, fused=True)  # fused: one kernel for all parameters
    groups = parameter_groups(network, weight_decay, bn_bias_lr)
    if name == "muon":
        filters = [p for p in groups[0]["params"] if p.ndim == 4]
        groups[0]["params"] = [p for p in groups[0]["params"] if p.ndim != 4]
        groups.append({"params": filters, "weight_decay": 0.0, "lr_scale": muon_lr, "muon": True})
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    if name in ("sgd", "muon"):
        return (Muon if name == "muon" else torch.optim.SGD)(groups, lr=learning_rate, momentum=MOMENTUM, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    raise ValueError(f"optimizer must be one of {', '.join(configs.OPTIMIZERS)}, got {name!r}")


def orthogonalised(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """≈ U Vᵀ of the matrix's SVD U S Vᵀ (every singular value pushed to ~[0.7, 1.2]), by Muon's quintic
    Newton-Schulz iteration: x ← a·x + (b·xxᵀ + c·(xxᵀ)²)·x, from x scaled to norm 1, on the wide side."""
    a, b, c = NEWTON_SCHULZ
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix  # (rows <= columns): the Gram matrix is the small one
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.SGD):
    """SGD with Nesterov momentum, except in groups marked "muon" (conv filters; airbench94_muon's Muon):
    there buf = m·buf + g, d = g + m·buf (m = MUON_MOMENTUM), the filter bank is rescaled to norm
    sqrt(out channels) (the BatchNorm after it makes its scale irrelevant: this replaces weight decay), and
    w -= lr · orthogonalised(d as (out, in·kh·kw)). Their gradients are used up (set to None) before SGD
    steps the other groups."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group.get("muon"):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].setdefault("muon_buffer", torch.zeros_like(p))
                buffer.mul_(MUON_MOMENTUM).add_(p.grad)
                direction = p.grad.add(buffer, alpha=MUON_MOMENTUM)
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(orthogonalised(direction.reshape(len(p), -1)).view_as(p), alpha=-group["lr"])
                p.grad = None
        return super().step(closure)


class Lookahead:
    """airbench's Lookahead: every `every` steps a slow copy of the weights (parameters and BatchNorm's
    running statistics) moves toward the network's, slow = d·slow + (1-d)·fast, and the network takes the
    slow weights; d rises as (step/total)³ to `peak`, and the last step hands the slow weights over
    whole (d = 1). The network's weights are then an average of its recent trajectory."""

    EVERY, PEAK = 5, 0.95**5

    def __init__(self, network: nn.Module, total_steps: int):
        self.total_steps = total_steps
        self.slow = [t.detach().clone() for t in averaged_tensors(network)]

    def decay(self, step: int) -> float | None:
        """d after global step `step` (1-based), or None where this step does not average."""
        if step == self.total_steps:
            return 1.0
        return self.PEAK * (step / self.total_steps) ** 3 if step % self.EVERY == 0 else None

    def restore(self, saved: list) -> None:
        if (
            not isinstance(saved, list)
            or len(saved) != len(self.slow)
            or any(not isinstance(t, torch.Tensor) or t.shape != s.shape for t, s in zip(saved, self.slow))
        ):
            raise ValueError("its Lookahead weights do not match the network")
        for slow, tensor in zip(self.slow, saved):
            slow.copy_(tensor)

    @torch.no_grad()
    def after_step(self, network: nn.Module, step: int) -> None:
        decay = self.decay(step)
        if decay is None:
            return
        for slow, fast in zip(self.slow, averaged_tensors(network)):
            slow.lerp_(fast, 1.0 - decay)  # slow + (1-d)(fast - slow) = d·slow + (1-d)·fast
            fast.copy_(slow)


def averaged_tensors(network: nn.Module) -> list[torch.Tensor]:
    """The floating-point state Lookahead averages: parameters and running statistics (not counters)."""
    return [t for t in network.state_dict(keep_vars=True).values() if t.is_floating_point()]
