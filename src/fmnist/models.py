"""The model registry: every network fmnist can train, by name, with the training recipe it defaults to.

A model is
  name          what users type (`--model`) and config.json records;
  architecture  the tag recorded in the weights' metadata, checkpoints and ONNX files, from which
                `inference.load_model` rebuilds the network (bump it when a model's layout changes);
  network       its class: Class(dropout=...) takes (N, 28, 28, 1) floats in [0, 1] to (N, 10) logits;
  recipe        its training recipe (configs.Recipe's fields; the seed's are Recipe's defaults);
  summary       its layer table (layer, output shape, parameters), if not the generic one (`layer_table`).
The seed CNN (the report's network and settings) is the default model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fmnist import data, fastcnn, resnet, seedcnn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    network: type[nn.Module]
    description: str
    recipe: dict = dataclasses.field(default_factory=dict)
    summary: Callable[[nn.Module], list[tuple[str, str, int]]] | None = None
    bf16: bool = False  # measured to keep its accuracy in bf16: --precision auto uses it where bf16 is native
    plain: type[nn.Module] | None = None  # the same network written the plain eager way (`fmnist bench`'s baseline)
    variants: dict = dataclasses.field(default_factory=dict)  # other implementations bench times: label -> kwargs
    products: Callable[[int], list[tuple[int, int, int]]] | None = None  # its matrix products (rows, in, out) for
    # a batch, where its layers are not nn.Conv2d/nn.Linear: bench's floor (else timed layer by layer)

    def build(self, dropout: float) -> nn.Module:
        return self.network(dropout=dropout)


SEED = ModelSpec("seed-cnn", seedcnn.ARCHITECTURE, seedcnn.SeedCNN,
                 "the report's CNN: 2 conv (2x2, stride 2) + same-padded pooling, 3 dense, dropout",
                 recipe={  # the report's training (shared/SPEC.md): configs.Recipe's defaults are these
                     "epochs": 50, "batch_size": 128, "learning_rate": 1e-3, "validation_fraction": 0.2,
                     "dropout": seedcnn.DROPOUT, "optimizer": "adam", "weight_decay": 0.0, "schedule": "constant",
                     "warmup": 0.0, "label_smoothing": 0.0, "flip": False, "shift": 0, "tta": False},
                 summary=seedcnn.summary, plain=seedcnn.PlainCNN, products=seedcnn.products,
                 variants={"fmnist, PyTorch ops only": {"implementation": "torch"}})  # its kernels against torch's  # summary: Keras's names and order, as the report
FAST = ModelSpec("fast-cnn", fastcnn.ARCHITECTURE, fastcnn.FastCNN,
                 "a small BatchNorm CNN (five 3x3 convs, 16/32/64 channels at 28/14/7 px, flatten), for accuracy per CPU-second",
                 recipe={"epochs": 18, "batch_size": 128, "learning_rate": 0.1, "dropout": 0.0,
                         "optimizer": "sgd", "weight_decay": 5e-4, "schedule": "onecycle", "warmup": 0.2,
                         "label_smoothing": 0.1, "flip": True, "shift": 1, "tta": True}, plain=fastcnn.PlainFastCNN)
CNN94 = ModelSpec("cnn94", fastcnn.ARCHITECTURE, fastcnn.FastCNN,
                  "the speed tier: fast-cnn's network, the recipe that reaches 94 % soonest on a CPU "
                  "(chosen on validation, README's ablation)",
                  recipe={**FAST.recipe, "epochs": 24, "tta_shift": 1, "alternate_flip": True, "bn_weight": False,
                          "bn_momentum": 0.4, "batch_size": 256, "learning_rate": 0.15}, bf16=True, plain=fastcnn.PlainFastCNN,
                  variants={"fmnist, PyTorch's BatchNorm layers": {"fused_norm": False}})  # its bf16 kernels against torch's
WHITENED = ModelSpec("whitened-cnn", fastcnn.WHITENED_ARCHITECTURE, fastcnn.WhitenedCNN,
                     "fast-cnn behind a frozen patch-whitening stem (tried for the speed tier: no better on "
                     "validation, slower per epoch on a CPU; README's ablation)",
                     recipe=FAST.recipe, bf16=True, plain=fastcnn.PlainWhitenedCNN)
RES95 = ModelSpec("res95", resnet.ARCHITECTURE, resnet.ResCNN,
                  "the accuracy tier: a small residual network (32 channels at 28x28, 64 at 14x14, 128 at 7x7, "
                  "a residual block of two convs at each), for the best accuracy a CPU reaches in minutes",
                  recipe={**CNN94.recipe, "epochs": 36, "shift": 2, "cutout": 8, "bn_weight": True,
                          "bn_momentum": 0.1, "batch_size": FAST.recipe["batch_size"],
                          "learning_rate": FAST.recipe["learning_rate"]}, bf16=True, plain=resnet.PlainResCNN)
REGISTRY = {spec.name: spec for spec in (SEED, FAST, CNN94, RES95, WHITENED)}
DEFAULT = SEED.name


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}: fmnist has {', '.join(REGISTRY)} (see `fmnist models`)")
    return REGISTRY[name]


def for_architecture(architecture: str | None) -> ModelSpec | None:
    """The model whose weights carry this architecture tag; None for a foreign or unknown one."""
    return next((spec for spec in REGISTRY.values() if spec.architecture == architecture), None)


def unwrapped(network: nn.Module) -> nn.Module:
    """The registry's network inside a DDP (`.module`), bf16 inference or test-time-augmentation wrapper."""
    network = getattr(network, "module", network)
    while isinstance(network, Wrapper):
        network = network.network
    return network


def architecture_of(network: nn.Module) -> str:
    """The tag to record for a network (its class names it; wrappers are looked through)."""
    network = unwrapped(network)
    return next(spec.architecture for spec in REGISTRY.values() if type(network) is spec.network)


INFERENCE_PRECISIONS = ("fp32", "bf16")  # evaluation, prediction and serving: fp32 unless bf16 is asked for


def evaluation_form(network: nn.Module, tta: bool, tta_shift: int = 0, precision: str = "fp32") -> nn.Module:
    """The network as evaluation, prediction, serving and export run it, in eval mode: its inference form
    (`for_inference`, where it has one: the same function, cheaper), with flip TTA if asked for (and the
    views moved by ±tta_shift pixels), computed in bf16 if asked for (Bf16Inference)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    network = network.eval()
    if hasattr(network, "for_inference"):
        network = network.for_inference()
    network = FlipAveraged(network, tta_shift) if tta else network
    return (Bf16Inference(network) if precision == "bf16" else network).eval()


def layer_table(network: nn.Module) -> list[tuple[str, str, int]]:
    """(layer, output shape, parameters) rows: the model's own table, else one row per leaf module that runs."""
    network = unwrapped(network)
    spec = next((spec for spec in REGISTRY.values() if type(network) is spec.network), None)
    if spec is not None and spec.summary is not None:
        return spec.summary(network)
    rows = []

    def record(name):
        return lambda module, inputs, output: rows.append(
            (f"{name} ({type(module).__name__})", str((None, *output.shape[1:])),  # Keras-style: batch None
             sum(p.numel() for p in module.parameters(recurse=False))))

    hooks = [module.register_forward_hook(record(name)) for name, module in network.named_modules()
             if not list(module.children())]
    with torch.no_grad():
        network.eval()(torch.zeros(1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1))  # one blank image traces the shapes
    for hook in hooks:
        hook.remove()
    return rows


parameters = seedcnn.count_parameters  # one implementation, offered beside the registry


def mflops_per_image(network: nn.Module) -> float:
    """Forward MFLOPs for one image (multiply-adds count 2), by PyTorch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter, training = FlopCounterMode(display=False), network.training
    with torch.no_grad(), counter:
        network.eval()(torch.zeros(1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1))
    network.train(training)  # the caller's mode, as it was
    return counter.get_total_flops() / 1e6


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
            return torch.cat([self(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        logits = self.network(self.views(x))                      # (V*N, 10), view-major
        return logits.reshape(count, x.shape[0], -1).mean(0)      # (V, N, 10) -> (N, 10)


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
    padded = F.pad(x, (0, 0, s, s, s, s))                     # (N, H+2s, W+2s, C)
    h, w = x.shape[1:3]
    return padded[:, s - dy:s - dy + h, s - dx:s - dx + w]


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
