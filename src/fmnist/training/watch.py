"""A run watched: a live bar per epoch and one Keras-style line per epoch (core/progress.py), and Ctrl-C
answered with what was kept and how to continue (the API's and the CLI's training)."""

from __future__ import annotations

from pathlib import Path

from fmnist import runs
from fmnist.core import errors, machine, progress
from fmnist.training import checkpoint, loop
from fmnist.training.configs import TrainConfig


def fit(config: TrainConfig, run_dir: Path, resume: bool | None = False, show_progress: bool = True) -> list[dict]:
    """loop.fit with a bar per epoch and one line per epoch; Ctrl-C says how to resume. `resume=None`:
    whatever the run directory holds (loop.fit_unless_finished)."""
    on_cpu = machine.resolve_device(config.device).type == "cpu"
    with progress.EpochProgress(config.epochs, config.steps, show_values=on_cpu, enabled=show_progress) as bar:
        if resume or resume is None:
            bar.epoch = checkpoint.resume_epoch(run_dir)
        try:
            if resume is None:
                return loop.fit_unless_finished(config, run_dir, on_epoch=bar.on_epoch, on_step=bar.on_step)
            return loop.fit(config, run_dir, resume=resume, on_epoch=bar.on_epoch, on_step=bar.on_step)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM where the CLI runs (errors.Terminated)
            said = "terminated" if isinstance(stop, errors.Terminated) else "interrupted"
            if not (run_dir / runs.CONFIG).is_file():
                raise errors.Interrupted(f"{said} before the run started: nothing was written", stop) from None
            raise errors.Interrupted(
                f"{said}: the checkpoint of epoch {checkpoint.resume_epoch(run_dir)} is in "
                f"{run_dir}; continue with: fmnist train --resume {run_dir}",
                stop,
            ) from None
