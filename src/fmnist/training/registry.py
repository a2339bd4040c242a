"""The model registry: every model fmnist trains, by name (`--model`), with the recipe it defaults to.

A model is
  name          what users type (`--model`) and config.json records;
  architecture  the tag of its network (nets/architectures.py), recorded in weights, checkpoints and ONNX;
  recipe        its training recipe, a configs.Recipe (the seed's is Recipe's defaults: the report's);
  bf16          measured to keep its accuracy in bf16: `--precision auto` uses it where bf16 is native;
  fp32          where such a model trains in fp32 after all (a CPU without native bf16, or --precision fp32):
                the settings that replace its recipe's there, chosen on such a machine (the machine's
                recipe: `recipe_for` says which a run gets, config.json records it);
  quick         settings that replace its recipe's in a quick try (a run of fewer than configs.FULL_PEAK_STEPS
                steps in all, e.g. `--epochs 1 --limit 6000`), chosen on validation: a recipe made for thousands
                of steps must still give a sensible model in a few dozen;
  variants      other implementations of its network that `fmnist bench` times beside it: label -> the
                network's keyword arguments (the seed's kernels against PyTorch's ops, cnn94's bf16 blocks
                against PyTorch's BatchNorm layers).
Models may share a network (fast-cnn and cnn94 do) and differ in their recipes. The seed CNN (the report's
network and training) is the default model. How each recipe was chosen: docs, "Models and recipes".
"""

from __future__ import annotations

import dataclasses

from torch import nn

from fmnist.nets import architectures, fastcnn, resnet, seedcnn
from fmnist.training.configs import Recipe


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    description: str
    recipe: Recipe
    bf16: bool = False
    fp32: dict = dataclasses.field(default_factory=dict)
    quick: dict = dataclasses.field(default_factory=dict)
    variants: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.recipe.model != self.name or self.architecture not in architectures.ARCHITECTURES:
            raise ValueError(f"{self.name}: its recipe must name it and its architecture must exist")

    @property
    def network(self) -> type[nn.Module]:
        return architectures.ARCHITECTURES[self.architecture].network

    def build(self, dropout: float, **variant) -> nn.Module:
        """A new network, initialised; `variant`: one of its architecture's other implementations (bench)."""
        return self.network(dropout=dropout, **variant)


SEED = ModelSpec(
    Recipe().model,
    seedcnn.ARCHITECTURE,
    "the report's CNN: 2 conv (2x2, stride 2) + same-padded pooling, 3 dense, dropout",
    Recipe(),
    # No quick settings: the report's recipe at any length, step for step as Keras trains it (a quick try is
    # the report's first 38 steps: validation 0.65, 3 seeds; Adam at 3e-3 would give 0.73).
    variants={"fmnist, PyTorch ops only": {"implementation": "torch"}},
)
FAST = ModelSpec(
    "fast-cnn",
    fastcnn.ARCHITECTURE,
    "a small BatchNorm CNN (five 3x3 convs, 16/32/64 channels at 28/14/7 px, flatten), for accuracy per CPU-second",
    Recipe(
        model="fast-cnn",
        epochs=18,
        batch_size=128,
        learning_rate=0.1,
        dropout=0.0,
        optimizer="sgd",
        weight_decay=5e-4,
        schedule="onecycle",
        warmup=0.2,
        label_smoothing=0.1,
        flip=True,
        shift=1,
        tta=True,
    ),
    # A quick try's BatchNorm statistics, averaged over the last ~10 of its 38 steps at 0.1, lag its weights
    # (validation 0.72 ± 0.05, 3 seeds); at cnn94's 0.4: 0.81 ± 0.01.
    quick={"bn_momentum": 0.4},
)
CNN94 = ModelSpec(
    "cnn94",
    fastcnn.ARCHITECTURE,
    "the speed tier: fast-cnn's network, the recipe that reaches 94 % soonest on a CPU (chosen on validation)",
    dataclasses.replace(
        FAST.recipe,
        model="cnn94",
        epochs=24,
        tta_shift=1,
        alternate_flip=True,
        bn_weight=False,
        bn_momentum=0.4,
        batch_size=256,
        learning_rate=0.15,
    ),
    bf16=True,
    # In fp32 the 6-view validation of each epoch costs ~40 % of its training (a Zen 4 held to AVX2: 5.0 s
    # against 11.9): validate through the network alone, the TTA after the last epoch; the same weights.
    fp32={"validate_tta": "last"},
    variants={"fmnist, PyTorch's BatchNorm layers": {"fused_norm": False}},
)
WHITENED = ModelSpec(
    "whitened-cnn",
    fastcnn.WHITENED_ARCHITECTURE,
    "fast-cnn behind a frozen patch-whitening stem (tried for the speed tier: no better on "
    "validation, slower per epoch on a CPU)",
    dataclasses.replace(FAST.recipe, model="whitened-cnn"),
    bf16=True,
)
RES95 = ModelSpec(
    "res95",
    resnet.ARCHITECTURE,
    "the accuracy tier: a small residual network (32 channels at 28x28, 64 at 14x14, 128 at 7x7, a "
    "residual block of two convs at each), for the best accuracy a CPU reaches in minutes",
    dataclasses.replace(
        CNN94.recipe,
        model="res95",
        epochs=36,
        shift=2,
        cutout=8,
        bn_weight=True,
        bn_momentum=0.1,
        batch_size=FAST.recipe.batch_size,
        learning_rate=FAST.recipe.learning_rate,
    ),
    bf16=True,
    # A quick try at a fifth of the peak (configs.short_run_scale) still diverges in its first steps (training
    # loss 5.5, validation 0.54): the 6,272-wide head's logits jump; a quarter of that peak learns, and its
    # BatchNorm statistics, averaged over the last ~10 steps at 0.1, lag the weights (0.70 -> 0.77 at 0.5).
    quick={"learning_rate": 0.025, "bn_momentum": 0.5},
)
REGISTRY = {spec.name: spec for spec in (SEED, FAST, CNN94, RES95, WHITENED)}
DEFAULT = SEED.name


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}: fmnist has {', '.join(REGISTRY)} (see `fmnist models`)")
    return REGISTRY[name]


def precision_for(name: str, precision: str, device, cpu_flags: set[str] | None = None) -> str:
    """ "auto" is bf16 where the model is measured to keep its accuracy in bf16 and the device computes bf16
    natively (AMX, AVX512-BF16, a CUDA GPU with bf16), else fp32; an explicit fp32 or bf16 is kept (a
    warning where bf16 is only emulated). `device`: a torch.device; `cpu_flags`: injected (tests)."""
    from fmnist.core import machine

    if precision != "auto":
        machine.check_bf16(precision, device, cpu_flags)
        return precision
    return "bf16" if get(name).bf16 and machine.computes_bf16(device, cpu_flags) else "fp32"


def recipe_for(name: str, precision: str = "auto", device: str = "auto", cpu_flags: set[str] | None = None) -> str:
    """Which of the model's recipes a run gets on this machine: "fp32" (its fp32 settings applied) or "default"."""
    from fmnist.core import machine

    spec = get(name)
    if not spec.fp32 or precision == "bf16":
        return "default"
    trains = (
        precision if precision != "auto" else precision_for(name, "auto", machine.resolve_device(device), cpu_flags)
    )
    return "fp32" if trains == "fp32" else "default"


def trained_as(architecture: str, recorded: str | None) -> ModelSpec | None:
    """The model a run was trained as: the name its config recorded where that model has this network
    (models may share one), else the first model with the network; None for an unknown network."""
    if recorded in REGISTRY and REGISTRY[recorded].architecture == architecture:
        return REGISTRY[recorded]
    return next((spec for spec in REGISTRY.values() if spec.architecture == architecture), None)


def describe(name: str) -> dict:
    """`fmnist models`' row: name, parameters, forward MFLOPs per image, architecture tag, description, recipe
    (one line), its fp32 settings (which replace the recipe's where it trains in fp32) and which this machine gets."""
    spec = get(name)
    network = spec.build(0.0)
    return {
        "name": name,
        "default": name == DEFAULT,
        "architecture": spec.architecture,
        "parameters": architectures.parameters(network),
        "mflops": architectures.mflops_per_image(network),
        "description": spec.description,
        "recipe": spec.recipe.describe(),
        "fp32": spec.fp32,
        "quick": spec.quick,
        "recipe_here": recipe_for(name),
    }
