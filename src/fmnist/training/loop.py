"""Training: by default as the report did it (Adam, categorical cross-entropy, 50 epochs of 375 steps
of 128); other models' recipes add the pieces in recipe.py (optimizers, schedule, augmentation, TTA).

`fit` is the driver: given a TrainConfig (configs.py: the recipe, the runtime, the seed), it prepares
data and state, runs `train_one_epoch` and `validate` per epoch, keeps the run directory (runs.py) current
after every epoch, and hands each epoch's figures to an `on_epoch` callback, so that printing stays with
the caller (the CLI).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist import runs
from fmnist.core import errors, machine
from fmnist.core import threads as cpu_threads
from fmnist.data import fashion
from fmnist.nets import inference
from fmnist.training import checkpoint, configs, distill, logs, recipe, registry
from fmnist.training.configs import Recipe, TrainConfig


# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of every global batch under torchrun (rank r of world_size processes)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, start: int, end: int) -> tuple[int, int]:
        size = end - start
        return start + size * self.rank // self.world_size, start + size * (self.rank + 1) // self.world_size


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What the recipe decides for one epoch, computed once before it (nothing per step that can be per epoch)."""

    rates: Sequence[float] | None = None  # each step's learning rate (None: the optimizer's, unchanged)
    flips: torch.Tensor | None = None  # which images to mirror, by index (None: a random half, if flipping)
    lookahead: recipe.Lookahead | None = None  # weight averaging after each step
    first_step: int = 0  # global steps before this epoch (Lookahead's clock)


def train_step(
    network,
    optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
    label_smoothing: float = 0.0,
    soft: torch.Tensor | None = None,
    distilling: tuple[float, float] = (1.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on the batch (x, y): the forward pass (under bf16 autocast for "bf16"), the loss in
    float32 (with a teacher's `soft` targets: distill.loss at (temperature, weight) `distilling`), backward,
    the optimizer's step. Returns the (detached) loss and logits. The loop's step and `fmnist bench`'s."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = network(x)
    if soft is None:  # = categorical cross-entropy of softmax on (smoothed) one-hot labels
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    else:
        loss = distill.loss(logits.float(), y, soft, *distilling, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP: gradients averaged over ranks = the global batch's mean gradient
    optimizer.step()
    return loss.detach(), logits.detach()


def train_one_epoch(
    network,
    optimizer,
    images,
    labels,
    config: Recipe,
    generator: torch.Generator,
    *,
    precision: str = "fp32",
    plan: EpochPlan = EpochPlan(),
    on_step=None,
    shard: Shard = Shard(),
    teacher: distill.Teacher | None = None,
):
    """One pass over the training part, reshuffled and augmented as the recipe says (batch size, flips,
    shifts, label smoothing; a `teacher`'s targets) and `plan` details, computed in `precision`; returns
    (mean loss, accuracy) as device tensors."""
    network.train()
    order = torch.randperm(len(images), generator=generator).to(images.device)  # same order on every rank
    mirrored = plan.flips[order] if plan.flips is not None else None  # flips are by image, before the shuffle
    # one gather per epoch (augmented as it goes, on all ranks alike), then contiguous slices
    images = recipe.shuffled_augmented(images, order, generator, config.flip, config.shift, mirrored, config.cutout)
    labels = labels[order]
    batch_size, label_smoothing = config.batch_size, config.label_smoothing
    distilling = (config.distill_temperature, config.distill_weight)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    seen = 0
    for step, start in enumerate(range(0, len(images), batch_size)):
        low, high = shard.part(start, min(start + batch_size, len(images)))
        x, y = images[low:high], labels[low:high]
        if plan.rates is not None:
            for group in optimizer.param_groups:
                group["lr"] = plan.rates[step] * group.get("lr_scale", 1.0)
        targets = teacher.targets(x, order[low:high]) if teacher is not None else None
        loss, logits = train_step(network, optimizer, x, y, precision, label_smoothing, targets, distilling)
        if plan.lookahead is not None:
            plan.lookahead.after_step(network, plan.first_step + step + 1)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step + 1, loss_sum, correct, seen)
    if shard.world_size > 1:
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(correct)
    return loss_sum / len(images), correct / len(images)


def prepare_data(config: TrainConfig, device: torch.device):
    """((train_x, train_y), (val_x, val_y)) on the device: data resident where it is used."""
    dataset = fashion.load(data_dir=config.data_dir, progress=True)
    images, labels = dataset.train_images, dataset.train_labels
    if config.limit:
        images, labels = images[: config.limit], labels[: config.limit]
    (train_x, train_y), (val_x, val_y) = fashion.split(images, labels, config.validation_fraction)
    return (
        (inference.to_tensor(train_x, device), torch.from_numpy(train_y).to(device)),
        (inference.to_tensor(val_x, device), torch.from_numpy(val_y).to(device)),
    )


def choose_precision(precision: str, model: str, device: torch.device, cpu_flags: set[str] | None = None) -> str:
    """The precision training computes in (registry.precision_for)."""
    return registry.precision_for(model, precision, device, cpu_flags)


def setup(runtime: configs.Runtime) -> tuple[Shard, torch.device]:
    """Threads, determinism, and (under torchrun) the process group: gloo on CPU, NCCL on GPU."""
    machine.set_up(runtime.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ...but without its debugging aid of filling every new tensor with NaN: nothing here reads memory
    # before writing it, and the fills cost ~10 % of a BatchNorm network's step (measured, fast-cnn).
    torch.utils.deterministic.fill_uninitialized_memory = False
    device = machine.resolve_device(runtime.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Shard(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(torch.distributed.get_rank(), world_size), device


def distributed(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network under DDP. On CUDA its BatchNorm layers become SyncBatchNorm (statistics over the
    global batch). PyTorch's SyncBatchNorm runs on GPUs only, so on CPU each process normalises its
    part of the batch, and DDP sends rank 0's running statistics to every rank with each forward
    (broadcast_buffers), so that all ranks hold the same model."""
    if device.type == "cuda":
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)  # in place below the top module
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=[device])
    return torch.nn.parallel.DistributedDataParallel(network)


def plan_epoch(config: TrainConfig, epoch: int, images: torch.Tensor, lookahead: recipe.Lookahead | None) -> EpochPlan:
    """Epoch `epoch`'s (0-based) rates, flips (where the recipe alternates them) and averaging."""
    steps = config.steps_per_epoch(len(images))
    flips = None
    if config.flip and config.alternate_flip:
        flips = recipe.alternating_flips(len(images), config.seed, epoch).to(images.device)
    return EpochPlan(config.epoch_rates(epoch, steps), flips, lookahead, epoch * steps)


def validate(network, config: TrainConfig, images, labels, tta: bool = True) -> tuple[float | None, float | None]:
    """(loss, accuracy) of the network's evaluation form (with its TTA unless `tta` is False), in the
    training's precision: bf16 evaluates cnn94's 6 views ~1.8x faster where it is native (measured), and
    validation only watches the curve (`fmnist evaluate` runs in fp32). (None, None): nothing held out."""
    if len(images) == 0:
        return None, None
    form = inference.evaluation_form(network, config.tta and tta, config.tta_shift)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        return inference.evaluate(form, images, labels)


def run_epoch(
    state: checkpoint.TrainingState,
    network,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    shard: Shard,
    on_step=None,
    teacher: distill.Teacher | None = None,
    elapsed: float = 0.0,
) -> dict:
    """Train one epoch (taught by `teacher`, if any), validate, and return its history row; `elapsed`: the
    run's seconds before it."""
    start = time.perf_counter()
    steps = config.steps_per_epoch(len(train_data[0]))
    plan = plan_epoch(config, state.epoch, train_data[0], state.lookahead)
    recipe.train_whitening_bias(state.network, state.epoch < config.whiten_bias_epochs)
    loss, accuracy = train_one_epoch(
        network,
        state.optimizer,
        *train_data,
        config,
        state.generator,
        precision=config.precision,
        plan=plan,
        on_step=on_step,
        shard=shard,
        teacher=teacher,
    )
    loss, accuracy = loss.item(), accuracy.item()  # host sync: once per epoch
    if not math.isfinite(loss):
        raise errors.FmnistError(
            f"training loss became {loss} in epoch {state.epoch + 1}; the run stops. "
            f"The checkpoint of epoch {state.epoch} is kept; try a lower --learning-rate"
        )
    train_seconds = time.perf_counter() - start
    last = state.epoch + 1 == config.epochs
    val_loss, val_accuracy = validate(state.network, config, *val_data, tta=last or config.validate_tta == "every")
    state.epoch += 1
    return {
        "epoch": state.epoch,
        "learning_rate": plan.rates[-1] if plan.rates else config.learning_rate,  # where the epoch ended
        "loss": loss,
        "accuracy": accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "train_seconds": train_seconds,
        "seconds": (seconds := time.perf_counter() - start),
        "elapsed": elapsed + seconds,
        "steps": steps,
    }


def fit(
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    on_step=None,
) -> list[dict]:
    """Train (or continue) a run; returns its history. Interrupt-safe: see runs.CHECKPOINT.

    Under torchrun every process trains its shard of each global batch; only rank 0 writes or reports.
    """
    shard, device = setup(config)
    config = dataclasses.replace(config, precision=choose_precision(config.precision, config.model, device))
    run_dir = runs.require_target(Path(run_dir), resume)
    if shard.world_size > 1:
        torch.distributed.barrier()  # every rank has looked before rank 0 writes anything
    if shard.is_main:
        runs.remove_stale_temp_files(run_dir)
    train_data, val_data = prepare_data(config, device)
    # Before the state: building the teacher draws from torch's RNG, which the state sets (or restores) after.
    fresh = not runs.read_history(run_dir)  # a distilled run's clock counts its teacher's training from epoch 0
    teacher, targets_seconds = distill.teacher(config, train_data[0], fresh) if config.teacher else (None, 0.0)
    state = checkpoint.start_or_resume(config, run_dir, resume, device, train_data[0], write=shard.is_main)
    network = distributed(state.network, device) if shard.world_size > 1 else state.network
    # The best weights may be better than any row of a shortened history: never replace them with worse.
    best = min([row["val_loss"] for row in runs.validated(state.history)] + [runs.best_val_loss(run_dir)])
    # Threads the user did not fix follow the machine's load, epoch by epoch (threads.follow_load says why);
    # the weights then depend on the thread counts (the history's "threads"), as they do on --threads.
    chosen = cpu_threads.chosen_count(config.threads)
    follow = cpu_threads.follows_load(config.threads) and device.type == "cpu" and shard.world_size == 1
    epoch_logs, hook = logs.EpochLogs(run_dir), on_step if shard.is_main else None
    try:
        while state.epoch < config.epochs:
            count = cpu_threads.follow_load(chosen) if follow else torch.get_num_threads()
            before = (runs.elapsed(state.history)[-1] if state.history else 0.0) + targets_seconds
            row = run_epoch(state, network, train_data, val_data, config, shard, hook, teacher, before)
            row["threads"] = count
            targets_seconds = 0.0  # the teacher's cost: counted once, in the first epoch this process trains
            state.history.append(row)
            if shard.is_main:
                best = checkpoint.save_epoch(run_dir, state, best, config)
                epoch_logs.write(state.history)
                if on_epoch is not None:
                    on_epoch(state.history[-1])
    finally:
        epoch_logs.close()
    return state.history


def fit_unless_finished(config: TrainConfig, run_dir: Path, on_epoch=None, on_step=None) -> list[dict]:
    """A run brought to config.epochs: trained, continued from its checkpoint, or, already there, only read
    (no data loaded). What reproduce, sweeps and benchmarks call for a run that may exist."""
    run_dir = Path(run_dir)
    history = runs.read_history(run_dir)
    if len(history) >= config.epochs:
        return history
    return fit(config, run_dir, resume=(run_dir / runs.CONFIG).is_file(), on_epoch=on_epoch, on_step=on_step)
