"""The networks fmnist builds, by architecture tag: the tag recorded in weights, checkpoints and ONNX files,
from which a run's network is rebuilt (bump a tag when its network's layout changes).

An architecture is
  tag       what the weights' metadata records;
  network   its class: Class(dropout=...) takes (N, 28, 28, 1) floats in [0, 1] to (N, 10) logits;
  plain     the same network written the plain eager way (`fmnist bench`'s baseline);
  summary   its layer table (layer, output shape, parameters), where not the generic one (`layer_table`);
  products  its matrix products (rows, in, out) for a batch, where its layers are not nn.Conv2d/nn.Linear
            (bench's floor; else timed layer by layer).
Which recipe trains which network, under which name, is the registry's (training/registry.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from fmnist.data import fashion
from fmnist.nets import ensemble, fastcnn, resnet, seedcnn


@dataclasses.dataclass(frozen=True)
class Architecture:
    tag: str
    network: type[nn.Module]
    plain: type[nn.Module]
    summary: Callable[[nn.Module], list[tuple[str, str, int]]] | None = None
    products: Callable[[int], list[tuple[int, int, int]]] | None = None


ARCHITECTURES = {
    a.tag: a
    for a in (
        Architecture(seedcnn.ARCHITECTURE, seedcnn.SeedCNN, seedcnn.PlainCNN, seedcnn.summary, seedcnn.products),
        Architecture(fastcnn.ARCHITECTURE, fastcnn.FastCNN, fastcnn.PlainFastCNN),
        Architecture(fastcnn.WHITENED_ARCHITECTURE, fastcnn.WhitenedCNN, fastcnn.PlainWhitenedCNN),
        Architecture(resnet.ARCHITECTURE, resnet.ResCNN, resnet.PlainResCNN),
    )
}


def get(tag: str | None) -> Architecture | None:
    """The architecture of this tag; None for a foreign or unknown one."""
    return ARCHITECTURES.get(tag) if isinstance(tag, str) else None


def unwrapped(network: nn.Module) -> nn.Module:
    """The network inside a DDP (`.module`) or inference wrappers (their `.network`)."""
    network = getattr(network, "module", network)
    while type(network) not in [a.network for a in ARCHITECTURES.values()] and hasattr(network, "network"):
        network = network.network
    return network


def tag_of(network: nn.Module) -> str:
    """The tag to record for a network (its class names it; wrappers are looked through)."""
    network = unwrapped(network)
    if isinstance(network, ensemble.Ensemble):
        return ensemble.ARCHITECTURE
    return next(a.tag for a in ARCHITECTURES.values() if type(network) is a.network)


def layer_table(network: nn.Module) -> list[tuple[str, str, int]]:
    """(layer, output shape, parameters) rows: the architecture's own table, else one row per leaf module that runs."""
    network = unwrapped(network)
    own = next((a.summary for a in ARCHITECTURES.values() if type(network) is a.network), None)
    if own is not None:
        return own(network)
    rows = []

    def record(name):
        return lambda module, inputs, output: rows.append(
            (
                f"{name} ({type(module).__name__})",
                str((None, *output.shape[1:])),  # Keras-style: batch None
                sum(p.numel() for p in module.parameters(recurse=False)),
            )
        )

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in network.named_modules()
        if not list(module.children())
    ]
    with torch.no_grad():
        network.eval()(torch.zeros(1, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1))  # one blank image traces shapes
    for hook in hooks:
        hook.remove()
    return rows


parameters = seedcnn.count_parameters  # one implementation, offered beside the table


def mflops_per_image(network: nn.Module) -> float:
    """Forward MFLOPs for one image (multiply-adds count 2), by PyTorch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter, training = FlopCounterMode(display=False), network.training
    with torch.no_grad(), counter:
        network.eval()(torch.zeros(1, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1))
    network.train(training)  # the caller's mode, as it was
    return counter.get_total_flops() / 1e6
