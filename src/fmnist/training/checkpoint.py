"""A run's state and its checkpoint: what a checkpoint holds (`TrainingState`: network, optimizer, shuffling
generator, RNG, epoch, Lookahead's slow weights), the state before epoch 1 (`new_state`), the start or resume of
a run from its directory (`start_or_resume`), and what each finished epoch writes (`save_epoch`). The run
directory's layout is runs.py's; the loop that moves the state on is loop.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fmnist import runs
from fmnist.core import errors, files, machine
from fmnist.nets import architectures, seedcnn
from fmnist.nets.kernels import norm_kernels
from fmnist.training import recipe, registry
from fmnist.training.configs import Recipe, TrainConfig

CHECKPOINT_FORMAT = "fmnist-checkpoint-v1"


@dataclasses.dataclass
class TrainingState:
    """Everything a checkpoint restores."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the shuffling RNG (dropout uses torch's global RNG)
    epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    lookahead: recipe.Lookahead | None = None  # its slow weights, where the recipe averages

    def checkpoint(self) -> dict:
        extra = {"lookahead": self.lookahead.slow} if self.lookahead is not None else {}
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "format": CHECKPOINT_FORMAT,
            "architecture": architectures.tag_of(self.network),
            **extra,
        }

    def restore(self, saved: dict, where: str) -> None:
        """Everything from a checkpoint, or one RunError naming what is damaged (nothing from it is trusted)."""
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise errors.RunError(f"{where} is not an fmnist checkpoint")
        ours = architectures.tag_of(self.network)
        if saved.get("architecture", seedcnn.ARCHITECTURE) != ours:  # older checkpoints: the seed's
            raise errors.RunError(f"{where} holds a {saved.get('architecture')!r} network, the run's config a {ours!r}")
        try:
            self.network.load_state_dict(runs.check_state(saved["model"], self.network.state_dict(), where))
            self.optimizer.load_state_dict(saved["optimizer"])
            self.generator.set_state(saved["shuffle_rng"])
            torch.set_rng_state(saved["torch_rng"])
            if self.lookahead is not None:
                self.lookahead.restore(saved["lookahead"])
        except errors.RunError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise errors.RunError(
                f"{where} is damaged ({type(exc).__name__}: {exc}); restore it, or start a new run in another directory"
            ) from None
        self.epoch = checkpoint_epoch(saved, where)


def checkpoint_epoch(saved, where: str) -> int:
    """The epochs a loaded checkpoint has finished, checked (a damaged one is a RunError)."""
    epoch = saved.get("epoch") if isinstance(saved, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise errors.RunError(f"{where} is damaged (epoch {epoch!r})")
    return epoch


def new_state(
    config: TrainConfig, device: torch.device, steps_per_epoch: int, images: torch.Tensor | None = None
) -> TrainingState:
    """The state before epoch 1: the network initialised (a whitening stem from the training `images`),
    the optimizer, the shuffling generator."""
    torch.manual_seed(config.seed)  # initial weights and dropout masks
    network = registry.get(config.model).build(config.dropout).to(device)
    if hasattr(network, "init_whitening") and images is not None:
        network.init_whitening(images)
    recipe.set_up_network(network, config.dirac, config.bn_weight, config.bn_momentum)
    generator = torch.Generator().manual_seed(config.seed + 1)
    lookahead = recipe.Lookahead(network, config.epochs * steps_per_epoch) if config.lookahead else None
    return TrainingState(network, recipe.optimizer_for(network, config), generator, lookahead=lookahead)


def save_epoch(run_dir: Path, state: TrainingState, best_val_loss: float, config: Recipe) -> float:
    """Write the epoch's weights, history and checkpoint (best weights when validation improved)."""
    row, architecture = state.history[-1], architectures.tag_of(state.network)
    extra = runs.tta_metadata(config.tta, config.tta_shift)
    runs.save_weights(run_dir / runs.WEIGHTS, state.network.state_dict(), architecture, epoch=state.epoch, **extra)
    if row["val_loss"] is not None and row["val_loss"] < best_val_loss:  # nothing held out: no best weights
        best_val_loss = row["val_loss"]
        runs.save_weights(
            run_dir / runs.BEST_WEIGHTS,
            state.network.state_dict(),
            architecture,
            epoch=state.epoch,
            val_loss=best_val_loss,
            **extra,
        )
    files.write_json(run_dir / runs.HISTORY, state.history)
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, state.checkpoint())  # last: it marks the epoch done
    return best_val_loss


def resume_epoch(run_dir: Path) -> int:
    """Epochs a run has finished, by its checkpoint; 0 where none was written yet."""
    path = Path(run_dir) / runs.CHECKPOINT
    return checkpoint_epoch(runs.load_checkpoint(path), str(path)) if path.is_file() else 0


def norm_kernels_run(config: TrainConfig, device: torch.device) -> bool | None:
    """Whether the fused bf16 BatchNorm blocks (norm_kernels) can run for this run: where it trains in bf16
    on the CPU, else None. Where they cannot, PyTorch's layers run, whose rounding differs."""
    return norm_kernels.available() if config.precision == "bf16" and device.type == "cpu" else None


def start_or_resume(
    config: TrainConfig, run_dir: Path, resume: bool, device: torch.device, train_images, write: bool = True
) -> TrainingState:
    """A new state (written as epoch 0 at once), or the checkpoint's; a run killed before its first
    checkpoint resumes from epoch 0, which its seed makes the same state."""
    state = new_state(config, device, config.steps_per_epoch(len(train_images)), train_images)
    checkpoint = run_dir / runs.CHECKPOINT
    if resume and checkpoint.is_file():
        state.restore(runs.load_checkpoint(checkpoint), str(checkpoint))
        state.history = runs.read_history(run_dir)[
            : state.epoch
        ]  # history may be one epoch ahead: the checkpoint counts
        if len(state.history) < state.epoch:
            raise errors.RunError(
                f"{run_dir / runs.HISTORY} holds {len(state.history)} epochs but the checkpoint "
                f"is at epoch {state.epoch}: restore history.json, or start a new run"
            )
    elif resume and runs.read_history(run_dir):  # finished epochs and no checkpoint: never train over them
        raise errors.RunError(
            f"{checkpoint} is missing but {run_dir / runs.HISTORY} holds "
            f"{len(runs.read_history(run_dir))} finished epochs: restore the checkpoint to "
            f"continue, or start a new run in another directory"
        )
    elif write:
        if not resume:
            files.write_json(
                run_dir / runs.CONFIG,
                {
                    **dataclasses.asdict(config),
                    "recipe_for": registry.recipe_for(config.model, config.precision, str(device)),
                    "machine": {**machine.describe_machine(device), "norm_kernels": norm_kernels_run(config, device)},
                },
            )
        runs.save_checkpoint(checkpoint, state.checkpoint())  # epoch 0: resumable at once
    return state
