"""A run's settings, in two parts (as litgpt keeps them apart):

- `Recipe`  — what is learned and how: the model and its training recipe. Each model's registry entry
  (models.py) holds its recipe; explicit values (flags) override parts of it.
- `Runtime` — where and with what this process runs it: threads, device, the data at hand, precision.
  No model's registry entry sets these; they belong to the machine and the moment.

`TrainConfig` is both plus the seed: one frozen record, stored flat as a run's config.json (runs.py),
so that every field reads as `config.epochs` and every run written before this split still loads.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Callable

import torch

from fmnist import data, errors, machine, models, recipe, runs

REPORT = models.SEED.recipe  # the report's settings: the seed model's recipe, Recipe's defaults
PRECISIONS = ("auto", "fp32", "bf16")  # bf16: autocast, weights and optimizer stay float32; auto: choose_precision
DEVICES = ("auto", "cpu", "cuda")  # or cuda:N
VALIDATE_TTA = ("every", "last")  # per-epoch validation through the model's TTA every epoch, or only after the last


def check_types(settings) -> None:
    """Each field of its annotated type (a config.json may hold anything); an int is a fine float."""
    for name, kind in typing.get_type_hints(type(settings)).items():
        value = getattr(settings, name)
        allowed = typing.get_args(kind) or (kind,)
        if float in allowed:
            allowed += (int,)
        if isinstance(value, bool) != (bool in allowed) or not isinstance(value, allowed):
            raise ValueError(f"{name} must be {' or '.join(t.__name__ for t in allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What is learned: the network and its training. The defaults are the seed's (the report's)."""
    model: str = models.DEFAULT
    epochs: int = REPORT["epochs"]
    batch_size: int = REPORT["batch_size"]
    learning_rate: float = REPORT["learning_rate"]
    validation_fraction: float = REPORT["validation_fraction"]
    dropout: float = REPORT["dropout"]
    optimizer: str = REPORT["optimizer"]          # adam (Keras's) | sgd (Nesterov momentum) | adamw | muon
    weight_decay: float = REPORT["weight_decay"]  # on weights only, not biases or BatchNorm
    schedule: str = REPORT["schedule"]  # constant | onecycle (linear warm-up to learning_rate, linear decay to 0)
    warmup: float = REPORT["warmup"]    # one-cycle: the fraction of all steps spent warming up
    label_smoothing: float = REPORT["label_smoothing"]
    flip: bool = REPORT["flip"]         # augmentation: mirror half the training images, drawn anew each epoch
    shift: int = REPORT["shift"]        # augmentation: move each training image up to this many pixels
    cutout: int = 0                     # augmentation: zero a square of this side at a random place
    tta: bool = REPORT["tta"]           # evaluate and predict on the mean of each image and its mirror
    tta_shift: int = 0                  # TTA: also both moved diagonally by -N and +N pixels (6 views)
    alternate_flip: bool = False        # flip: each image mirrored on every other epoch (from a random start)
    bn_bias_lr: float = 1.0             # BatchNorm biases learn at this multiple of the learning rate
    muon_lr: float = 1.0                # --optimizer muon: the conv filters learn at this multiple of it
    bn_weight: bool = True              # False: BatchNorm scales stay frozen at 1
    dirac: bool = False                 # initialise each conv's first in-channels filters as the identity
    bn_momentum: float = recipe.BN_MOMENTUM  # BatchNorm's running statistics: the weight of each new batch
    lookahead: bool = False             # average the weights along the way (recipe.Lookahead)
    whiten_bias_epochs: int = 3         # a whitening stem's bias (cnn94) trains this many epochs, then stays

    @classmethod
    def for_model(cls, name: str = models.DEFAULT, **overrides):
        """The model's recipe, with `overrides` (those that are not None) on top."""
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return cls(model=name, **{**models.get(name).recipe, **chosen})

    def __post_init__(self):
        check_types(self)
        self.check_recipe()

    def check_recipe(self) -> None:
        models.get(self.model)  # ValueError naming the models there are
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        data.check_validation_fraction(self.validation_fraction)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in recipe.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(recipe.OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in recipe.SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(recipe.SCHEDULES)}, got {self.schedule!r}")
        if self.optimizer == "adam" and self.weight_decay:
            raise ValueError("Keras's Adam takes no weight decay: choose --optimizer adamw or sgd")
        if not (0 <= self.weight_decay < 1 and 0 <= self.warmup < 1 and 0 <= self.label_smoothing < 1):
            raise ValueError("weight decay, warm-up and label smoothing must be in [0, 1)")
        if not (0 <= self.shift <= data.MAX_SHIFT and 0 <= self.tta_shift <= data.MAX_SHIFT):
            raise ValueError(f"shift and tta_shift must be 0..{data.MAX_SHIFT} pixels, got {self.shift}, {self.tta_shift}")
        if not 0 <= self.cutout <= data.IMAGE_SIZE // 2:
            raise ValueError(f"cutout must be 0..{data.IMAGE_SIZE // 2} pixels, got {self.cutout}")
        if self.whiten_bias_epochs < 0:
            raise ValueError(f"whiten_bias_epochs must be >= 0, got {self.whiten_bias_epochs}")
        if not 0 < self.muon_lr <= 1000:
            raise ValueError(f"muon_lr must be in (0, 1000], got {self.muon_lr}")
        if not 0 < self.bn_bias_lr <= 1000 or not 0 < self.bn_momentum <= 1:
            raise ValueError(f"bn_bias_lr must be in (0, 1000] and bn_momentum in (0, 1], "
                             f"got {self.bn_bias_lr}, {self.bn_momentum}")

    def describe(self) -> str:
        """The main settings, in one line (`fmnist models`, the report)."""
        optimizer = {"adam": "Adam (Keras)", "sgd": "SGD Nesterov", "adamw": "AdamW",
                     "muon": f"Muon (conv filters, {self.muon_lr:g}x the rate) + SGD Nesterov"}[self.optimizer]
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
        parts += [f"BatchNorm momentum {self.bn_momentum:g}"] if self.bn_momentum != recipe.BN_MOMENTUM else []
        parts += ["Lookahead"] if self.lookahead else []
        parts += ([f"6-view TTA (flip x ±{self.tta_shift} px)"] if self.tta_shift else ["flip TTA"]) if self.tta else []
        return ", ".join(parts)

    def build_optimizer(self, network) -> torch.optim.Optimizer:
        return recipe.make_optimizer(network, self.optimizer, self.learning_rate, self.weight_decay, self.bn_bias_lr,
                                     self.muon_lr)

    def schedule_of(self, steps_per_epoch: int) -> Callable[[int], float] | None:
        """Global step -> learning rate; None for a constant rate (nothing to set per step)."""
        if self.schedule == "constant":
            return None
        total = self.epochs * steps_per_epoch
        return lambda step: recipe.learning_rate(step, total, self.learning_rate, self.schedule, self.warmup)

    def epoch_rates(self, epoch: int, steps_per_epoch: int) -> list[float] | None:
        """Each step's learning rate in epoch `epoch` (0-based), computed once per epoch; None if constant."""
        schedule = self.schedule_of(steps_per_epoch)
        return None if schedule is None else [schedule(epoch * steps_per_epoch + s) for s in range(steps_per_epoch)]


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and with what a run is computed. None of it is part of any model's recipe."""
    threads: int | None = None   # None: the CPUs this process may use (threads.available_cpus)
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    limit: int | None = None     # use only the first `limit` training images (quick runs, tests)
    data_dir: str | None = None  # None: data.load's search (FMNIST_DATA, Debian's package, the cache)
    precision: str = "auto"      # auto | fp32 | bf16: see choose_precision; config.json records the choice
    validate_tta: str = "every"  # every | last: epochs before the last validate the network alone (one view:
    # cnn94's 6 views cost a third of its epoch); the weights learned are the same either way

    def __post_init__(self):
        check_types(self)
        self.check_runtime()

    def check_runtime(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.validate_tta not in VALIDATE_TTA:
            raise ValueError(f"validate_tta must be one of {', '.join(VALIDATE_TTA)}, got {self.validate_tta!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2, got {self.limit}")


def choose_precision(precision: str, model: str, device: torch.device, cpu_flags: set[str] | None = None) -> str:
    """"auto" is bf16 where the model is measured to keep its accuracy in bf16 (its registry entry says so)
    and the device computes bf16 natively (AMX, AVX512-BF16, a CUDA GPU with bf16), else fp32; an explicit
    fp32 or bf16 is kept. `cpu_flags`: injected feature flags (tests); default this machine's."""
    if precision != "auto":
        return precision
    return "bf16" if models.get(model).bf16 and machine.computes_bf16(device, cpu_flags) else "fp32"


RECIPE_FIELDS = tuple(field.name for field in dataclasses.fields(Recipe))
RUNTIME_FIELDS = tuple(field.name for field in dataclasses.fields(Runtime))


@dataclasses.dataclass(frozen=True)
class TrainConfig(Recipe, Runtime):
    """A run's settings: its recipe, its runtime and its seed, as one flat frozen record (config.json).
    `TrainConfig(epochs=2, threads=1)` and `TrainConfig.for_model("fast-cnn", limit=6000)` both work."""
    seed: int = 0

    def __post_init__(self):
        check_types(self)
        self.check_recipe()
        self.check_runtime()

    @property
    def recipe(self) -> Recipe:
        return Recipe(**{name: getattr(self, name) for name in RECIPE_FIELDS})

    @property
    def runtime(self) -> Runtime:
        return Runtime(**{name: getattr(self, name) for name in RUNTIME_FIELDS})


def load_config(run_dir: Path, **overrides) -> TrainConfig:
    """The TrainConfig stored in a run directory (for --resume), with `overrides` applied."""
    stored = runs.read_config(run_dir)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{**{k: v for k, v in stored.items() if k in fields}, **overrides})
    except (TypeError, ValueError) as exc:
        raise errors.RunError(f"{Path(run_dir) / runs.CONFIG}: not a usable training configuration ({exc})") from None
