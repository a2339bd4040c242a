"""A run's settings, in two parts (as litgpt keeps them apart), each field declared once with its help:

- `Recipe`  — what is learned and how: the model and its training. Its defaults are the report's training
  (the seed model's recipe); each registered model's recipe is a `Recipe` (registry.py), and settings given
  explicitly (flags) override parts of it.
- `Runtime` — where and with what this process runs it: threads, device, the data at hand, precision. No
  model's recipe sets these; they belong to the machine and the moment.

`TrainConfig` is both plus the seed: one frozen record, stored flat as a run's config.json (runs.py), so that
every field reads as `config.epochs` and every run written before this split still loads. The CLI's
training flags are generated from these fields (cli/flags.py), and so are the docs' tables: a field's help,
unit and choices are written here only. This module imports no torch (`fmnist --help` stays instant).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist.core import errors
from fmnist.data import fashion, seed_report
from fmnist.nets import INFERENCE_PRECISIONS

OPTIMIZERS = ("adam", "sgd", "adamw", "muon")
SCHEDULES = ("constant", "onecycle")
PRECISIONS = (
    "auto",
    *INFERENCE_PRECISIONS,
)  # bf16: autocast, weights and optimizer stay float32; auto: loop.choose_precision
DEVICES = ("auto", "cpu", "cuda")  # or cuda:N
VALIDATE_TTA = ("every", "last")
DISTILL_TARGETS = ("image", "batch")
SPLIT_FIELDS = ("validation_fraction", "limit")  # which images are held out: an ensemble's members, a teacher
# and its student must agree (training/ensembles.py, training/distill.py)
BN_MOMENTUM = 0.1  # PyTorch's BatchNorm default: what a recipe's bn_momentum leaves as it is


def setting(default: Any, help: str, unit: str = "", choices: tuple | None = None, none: str = "") -> Any:
    """A field with its documentation: `help` (what it does), `unit`, `choices`, and `none`: what a default
    of None means. The CLI's flags and the docs read these."""
    return dataclasses.field(default=default, metadata={"help": help, "unit": unit, "choices": choices, "none": none})


def check_types(settings) -> None:
    """Each field of its annotated type (a config.json may hold anything); an int is a fine float."""
    for name, kind in typing.get_type_hints(type(settings)).items():
        value = getattr(settings, name)
        allowed = typing.get_args(kind) or (kind,)
        if float in allowed:
            allowed += (int,)
        if isinstance(value, bool) != (bool in allowed) or not isinstance(value, allowed):
            raise ValueError(f"{name} must be {' or '.join(t.__name__ for t in allowed)}, got {value!r}")


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What is learned: the network and its training. The defaults are the report's (the seed model's)."""

    model: str = setting("seed-cnn", "the network to train (see `fmnist models`)")
    epochs: int = setting(50, "epochs")
    batch_size: int = setting(128, "batch size", "images")
    learning_rate: float = setting(1e-3, "learning rate (the peak, with a one-cycle schedule)")
    validation_fraction: float = setting(
        0.2,
        "last fraction of the training images held out, as Keras's "
        "validation_split; 0: a final fit on all 60,000, nothing validated",
    )
    dropout: float = setting(seed_report.DROPOUT, "dropout rate")
    optimizer: str = setting(
        "adam",
        "adam (Keras's, the report's), sgd (Nesterov momentum), adamw, or muon "
        "(orthogonalised updates for the conv filters, sgd for the rest)",
        choices=OPTIMIZERS,
    )
    weight_decay: float = setting(0.0, "weight decay, on weights, not biases or BatchNorm")
    schedule: str = setting(
        "constant",
        "constant, or onecycle: linear warm-up to --learning-rate, then linear decay to 0",
        choices=SCHEDULES,
    )
    warmup: float = setting(0.0, "one-cycle: the fraction of all steps spent warming up")
    label_smoothing: float = setting(0.0, "label smoothing, e.g. 0.1")
    flip: bool = setting(False, "mirror a random half of the training images each epoch")
    shift: int = setting(0, "move each training image up to N pixels", "pixels")
    cutout: int = setting(0, "zero an N x N square of each training image at a random place, e.g. 8", "pixels")
    tta: bool = setting(False, "evaluate and predict on the mean of each image and its mirror")
    tta_shift: int = setting(0, "TTA also on both moved diagonally by -N and +N pixels (6 views), e.g. 1", "pixels")
    alternate_flip: bool = setting(False, "with --flip: mirror each image on every other epoch instead of at random")
    bn_bias_lr: float = setting(1.0, "BatchNorm biases learn at this multiple of the learning rate, e.g. 64")
    muon_lr: float = setting(1.0, "--optimizer muon: the conv filters learn at this multiple of the learning rate")
    bn_weight: bool = setting(True, "train BatchNorm scales (--no-bn-weight: frozen at 1)")
    dirac: bool = setting(False, "initialise each conv's first in-channels filters as the identity")
    bn_momentum: float = setting(
        BN_MOMENTUM, "BatchNorm's running statistics: each batch's weight (PyTorch's default 0.1)"
    )
    lookahead: bool = setting(False, "average the weights along the way (airbench's Lookahead, every 5 steps)")
    whiten_bias_epochs: int = setting(3, "a whitening stem's bias trains this many epochs, then stays", "epochs")
    teacher: str | None = setting(
        None,
        "distillation: a run (or an ensemble) whose softened probabilities the network learns beside the labels",
        none="none: the labels alone",
    )
    distill_temperature: float = setting(4.0, "distillation: the temperature softening teacher and student")
    distill_weight: float = setting(0.5, "distillation: the teacher's share of the loss (the labels' is 1 - it)")
    distill_targets: str = setting(
        "image",
        "distillation: the teacher's targets computed once per training image (un-augmented), or on every "
        "augmented batch (a teacher's forward pass per step)",
        choices=DISTILL_TARGETS,
    )

    @classmethod
    def for_model(cls, name: str | None = None, **overrides):
        """The model's recipe (the registry's; ValueError naming the models there are), with `overrides` (those
        that are not None) on top; a TrainConfig's runtime settings and seed among them."""
        from fmnist.training import registry  # the registry's recipes are Recipes: it imports this module

        spec = registry.get(name or registry.DEFAULT)
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return cls(**{**recipe_fields(spec.recipe), **chosen})

    def __post_init__(self):
        check_types(self)
        self.check_recipe()

    def check_recipe(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        fashion.check_validation_fraction(self.validation_fraction)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.optimizer == "adam" and self.weight_decay:
            raise ValueError("Keras's Adam takes no weight decay: choose --optimizer adamw or sgd")
        if not (0 <= self.weight_decay < 1 and 0 <= self.warmup < 1 and 0 <= self.label_smoothing < 1):
            raise ValueError("weight decay, warm-up and label smoothing must be in [0, 1)")
        if not (0 <= self.shift <= fashion.MAX_SHIFT and 0 <= self.tta_shift <= fashion.MAX_SHIFT):
            raise ValueError(
                f"shift and tta_shift must be 0..{fashion.MAX_SHIFT} pixels, got {self.shift}, {self.tta_shift}"
            )
        if not 0 <= self.cutout <= fashion.IMAGE_SIZE // 2:
            raise ValueError(f"cutout must be 0..{fashion.IMAGE_SIZE // 2} pixels, got {self.cutout}")
        if not (self.distill_temperature > 0 and 0 <= self.distill_weight <= 1):
            raise ValueError("distill_temperature must be > 0 and distill_weight in [0, 1]")
        check_choice("distill_targets", self.distill_targets, DISTILL_TARGETS)
        if self.whiten_bias_epochs < 0:
            raise ValueError(f"whiten_bias_epochs must be >= 0, got {self.whiten_bias_epochs}")
        if not 0 < self.muon_lr <= 1000:
            raise ValueError(f"muon_lr must be in (0, 1000], got {self.muon_lr}")
        if not 0 < self.bn_bias_lr <= 1000 or not 0 < self.bn_momentum <= 1:
            raise ValueError(
                f"bn_bias_lr must be in (0, 1000] and bn_momentum in (0, 1], got {self.bn_bias_lr}, {self.bn_momentum}"
            )

    def describe(self) -> str:
        """The main settings, in one line (`fmnist models`, the report)."""
        optimizer = {
            "adam": "Adam (Keras)",
            "sgd": "SGD Nesterov",
            "adamw": "AdamW",
            "muon": f"Muon (conv filters, {self.muon_lr:g}x the rate) + SGD Nesterov",
        }[self.optimizer]
        parts = [f"{self.epochs} epochs", f"batch {self.batch_size}", f"{optimizer} lr {self.learning_rate:g}"]
        parts += [f"weight decay {self.weight_decay:g}"] if self.weight_decay else []
        parts += [f"one-cycle ({self.warmup:.0%} warm-up)"] if self.schedule == "onecycle" else []
        parts += [f"label smoothing {self.label_smoothing:g}"] if self.label_smoothing else []
        parts += [f"dropout {self.dropout:g}"] if self.dropout else []
        augmentation = ["flips"] * self.flip + [f"shifts ±{self.shift} px"] * bool(self.shift)
        augmentation += [f"cutout {self.cutout}x{self.cutout}"] * bool(self.cutout)
        parts += [" + ".join(augmentation)] if augmentation else []
        parts += [f"BatchNorm biases at {self.bn_bias_lr:g}x the rate"] if self.bn_bias_lr != 1 else []
        parts += ["BatchNorm scales frozen"] if not self.bn_weight else []
        parts += ["identity-initialised convs"] if self.dirac else []
        parts += ["alternating flips"] if self.alternate_flip else []
        parts += [f"BatchNorm momentum {self.bn_momentum:g}"] if self.bn_momentum != BN_MOMENTUM else []
        parts += ["Lookahead"] if self.lookahead else []
        parts += [f"distilled (T {self.distill_temperature:g}, weight {self.distill_weight:g})"] if self.teacher else []
        parts += ([f"6-view TTA (flip x ±{self.tta_shift} px)"] if self.tta_shift else ["flip TTA"]) if self.tta else []
        return ", ".join(parts)

    def steps_per_epoch(self, images: int) -> int:
        """Steps of an epoch over `images` training images (the last batch may be short)."""
        return math.ceil(images / self.batch_size)

    def schedule_of(self, steps_per_epoch: int) -> Callable[[int], float] | None:
        """Global step -> learning rate; None for a constant rate (nothing to set per step)."""
        if self.schedule == "constant":
            return None
        total = self.epochs * steps_per_epoch
        peak = self.learning_rate * short_run_scale(total)
        return lambda step: learning_rate(step, total, peak, self.schedule, self.warmup)

    def epoch_rates(self, epoch: int, steps_per_epoch: int) -> list[float] | None:
        """Each step's learning rate in epoch `epoch` (0-based), computed once per epoch; None if constant."""
        schedule = self.schedule_of(steps_per_epoch)
        return None if schedule is None else [schedule(epoch * steps_per_epoch + s) for s in range(steps_per_epoch)]


FULL_PEAK_STEPS = 1000  # runs this long or longer train at their recipe's peak rate; shorter ones are quick tries


def short_run_scale(total_steps: int) -> float:
    """A one-cycle recipe shortened by --epochs or --limit keeps its shape, but not its peak: a few dozen steps
    whose warm-up lasts a handful cannot take a peak rate chosen for thousands (cnn94's 0.15 over 19 steps:
    training loss 5.4, validation 0.27). The peak scales by sqrt(steps / FULL_PEAK_STEPS) below that length
    (0.15 -> 0.021 for those 19 steps: validation 0.78); every recipe's own length is far above it."""
    return min(1.0, (total_steps / FULL_PEAK_STEPS) ** 0.5)


def learning_rate(step: int, total_steps: int, peak: float, schedule: str, warmup: float) -> float:
    """The rate for global step `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return peak
    warm = max(1, round(warmup * total_steps))
    if step < warm:
        return peak * (step + 1) / warm  # reaches the peak at step warm-1
    return peak * max(0.0, (total_steps - 1 - step) / max(1, total_steps - warm))  # 0 at the last step


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and with what a run is computed. None of it is part of any model's recipe."""

    threads: int | None = setting(
        None, "CPU threads", none="the CPUs this process may use, by affinity and cgroup quota"
    )
    device: str = setting("auto", "cpu, cuda (or cuda:N) or auto")
    limit: int | None = setting(
        None, "use only the first N training images, for quick runs", "images", none="all 60,000"
    )
    data_dir: str | None = setting(
        None, "directory with the four IDX files", none="$FMNIST_DATA_DIR, the Debian package, the cache, else download"
    )
    precision: str = setting(
        "auto",
        "bf16 autocast, fp32, or auto: bf16 for models measured to hold their "
        "accuracy in it, where the CPU (AMX, AVX512-BF16) or GPU computes it natively "
        "(config.json records the choice)",
        choices=PRECISIONS,
    )
    validate_tta: str = setting(
        "every",
        "validate through the model's test-time augmentation every epoch, or only "
        "after the last (the network alone before it: cnn94's 6 views cost a third "
        "of its epoch; the weights are the same)",
        choices=VALIDATE_TTA,
    )

    def __post_init__(self):
        check_types(self)
        self.check_runtime()

    def check_runtime(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("validate_tta", self.validate_tta, VALIDATE_TTA)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2, got {self.limit}")


RECIPE_FIELDS = tuple(field.name for field in dataclasses.fields(Recipe))
RUNTIME_FIELDS = tuple(field.name for field in dataclasses.fields(Runtime))


def recipe_fields(recipe: Recipe) -> dict:
    return {name: getattr(recipe, name) for name in RECIPE_FIELDS}


@dataclasses.dataclass(frozen=True)
class TrainConfig(Recipe, Runtime):
    """A run's settings: its recipe, its runtime and its seed, as one flat frozen record (config.json).
    `TrainConfig(epochs=2, threads=1)` and `TrainConfig.for_model("fast-cnn", limit=6000)` both work."""

    seed: int = setting(0, "random seed")

    @classmethod
    def for_model(cls, name: str | None = None, cpu_flags: set[str] | None = None, **overrides):
        """The model's recipe for this machine (where it trains in fp32, its registry's fp32 settings on top:
        registry.recipe_for), in a quick try its registry's quick settings on top, with `overrides` (those that
        are not None) on top of that. `cpu_flags`: the CPU's feature flags, injected (tests); default this
        machine's."""
        from fmnist.training import registry

        name = name or registry.DEFAULT
        chosen = {key: value for key, value in overrides.items() if value is not None}
        spec = registry.get(name)
        machine = registry.recipe_for(name, chosen.get("precision", "auto"), chosen.get("device", "auto"), cpu_flags)
        settings = {**(spec.fp32 if machine == "fp32" else {}), **chosen}
        config = super().for_model(name, **settings)
        return super().for_model(name, **{**spec.quick, **settings}) if spec.quick and config.quick_try else config

    def __post_init__(self):
        check_types(self)
        self.check_recipe()
        self.check_runtime()
        from fmnist.training import registry

        registry.get(self.model)  # ValueError naming the models there are

    @property
    def recipe(self) -> Recipe:
        return Recipe(**recipe_fields(self))

    @property
    def runtime(self) -> Runtime:
        return Runtime(**{name: getattr(self, name) for name in RUNTIME_FIELDS})

    @property
    def train_images(self) -> int:
        """The images an epoch trains on: the first `limit` (or all) training images, less the held-out part."""
        return fashion.split_index(self.limit or fashion.FILES["train_images"].count, self.validation_fraction)

    @property
    def steps(self) -> int:
        """Steps per epoch of this run."""
        return self.steps_per_epoch(self.train_images)

    @property
    def quick_try(self) -> bool:
        """Shorter than a recipe is made for (FULL_PEAK_STEPS in all): for_model gives it its model's quick settings."""
        return self.epochs * self.steps < FULL_PEAK_STEPS

    def quick_settings(self) -> dict:
        """The model's quick settings (registry.ModelSpec.quick) this run trains with: {} unless a quick try."""
        from fmnist.training import registry

        quick = registry.get(self.model).quick if self.quick_try else {}
        return {key: value for key, value in quick.items() if getattr(self, key) == value}


def load_config(run_dir: Path, **overrides) -> TrainConfig:
    """The TrainConfig stored in a run directory (for --resume), with `overrides` (those not None) applied."""
    from fmnist import runs  # imports torch: only where a run is read

    stored = runs.read_config(run_dir)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        given = {key: value for key, value in overrides.items() if value is not None}
        return TrainConfig(**{**{k: v for k, v in stored.items() if k in fields}, **given})
    except (TypeError, ValueError) as exc:
        raise errors.RunError(f"{Path(run_dir) / runs.CONFIG}: not a usable training configuration ({exc})") from None
