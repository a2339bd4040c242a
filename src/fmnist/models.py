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
from torch import nn

from fmnist import data, fastcnn, seedcnn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    network: type[nn.Module]
    description: str
    recipe: dict = dataclasses.field(default_factory=dict)
    summary: Callable[[nn.Module], list[tuple[str, str, int]]] | None = None
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
REGISTRY = {spec.name: spec for spec in (SEED, FAST)}
DEFAULT = SEED.name


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}: fmnist has {', '.join(REGISTRY)} (see `fmnist models`)")
    return REGISTRY[name]


def for_architecture(architecture: str | None) -> ModelSpec | None:
    """The model whose weights carry this architecture tag; None for a foreign or unknown one."""
    return next((spec for spec in REGISTRY.values() if spec.architecture == architecture), None)


def unwrapped(network: nn.Module) -> nn.Module:
    """The registry's network inside a DDP (`.module`) or test-time-augmentation wrapper."""
    network = getattr(network, "module", network)
    return network.network if isinstance(network, FlipAveraged) else network


def architecture_of(network: nn.Module) -> str:
    """The tag to record for a network (its class names it; wrappers are looked through)."""
    network = unwrapped(network)
    return next(spec.architecture for spec in REGISTRY.values() if isinstance(network, spec.network))


def evaluation_form(network: nn.Module, tta: bool) -> nn.Module:
    """The network as evaluation, prediction, serving and export run it, in eval mode: its inference form
    (`for_inference`, where it has one: the same function, cheaper), with flip TTA if asked for."""
    network = network.eval()
    if hasattr(network, "for_inference"):
        network = network.for_inference()
    return (FlipAveraged(network) if tta else network).eval()


def layer_table(network: nn.Module) -> list[tuple[str, str, int]]:
    """(layer, output shape, parameters) rows: the model's own table, else one row per leaf module that runs."""
    network = unwrapped(network)
    spec = next((spec for spec in REGISTRY.values() if isinstance(network, spec.network)), None)
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


# Images per pass of flip TTA (2x that through the network): measured for fast-cnn on a 2-core Zen 4,
# 7,100 test images/s against 4,700 for whole 512-image batches, whose activations leave the caches.
TTA_CHUNK = 256


# ---------------------------------------------------------------------------------------------
# Test-time augmentation: the mean of the logits of an image and its mirror
class FlipAveraged(nn.Module):
    """In eval mode, the mean of the network's logits for each image and its mirror image, computed as
    one batch of 2N (one pass through the layers); in training mode, the network itself.

    The wrapped network's parameters keep their names (`state_dict` is the network's own)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.network(x)
        if x.shape[0] > TTA_CHUNK:
            return torch.cat([self(x[i:i + TTA_CHUNK]) for i in range(0, x.shape[0], TTA_CHUNK)])
        n = x.shape[0]
        logits = self.network(torch.cat([x, x.flip(2)]))  # (2N, 10): the images, then their mirrors
        return (logits[:n] + logits[n:]) / 2

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict, assign)


def flip_averaged_reference(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain form: two passes, averaged."""
    return (network(x) + network(x.flip(2))) / 2
