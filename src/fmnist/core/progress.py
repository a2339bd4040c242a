"""What a person watches while fmnist trains: a live bar per epoch, then one Keras-style line per epoch.

rich draws the bar in a terminal and in a Jupyter notebook alike; `console` is the one the CLI and the
Python API print to (the CLI quiets it on torchrun's other ranks).
"""

from __future__ import annotations

import rich.console
import rich.progress

console = rich.console.Console(highlight=False, soft_wrap=True)  # never break a path across lines


def keras_line(row: dict, epochs: int) -> str:
    """One fixed-format line per epoch, as Keras's fit(verbose=2) prints it."""
    line = (
        f"Epoch {row['epoch']}/{epochs} - {row['seconds']:.1f}s - "
        f"{1000 * row['train_seconds'] / row['steps']:.1f}ms/step - accuracy: {row['accuracy']:.4f} - "
        f"loss: {row['loss']:.4f}"
    )
    if row["val_loss"] is None:  # nothing held out: Keras's line has no val_* either
        return line
    return line + f" - val_accuracy: {row['val_accuracy']:.4f} - val_loss: {row['val_loss']:.4f}"


class EpochProgress:
    """A live bar per epoch with running loss and accuracy, then the epoch's line."""

    def __init__(self, epochs: int, steps: int, show_values: bool, enabled: bool = True):
        self.epochs, self.steps, self.show_values = epochs, steps, show_values
        self.epoch = 0  # epochs finished so far
        self.bar = rich.progress.Progress(
            rich.progress.TextColumn("{task.description}"),
            rich.progress.BarColumn(),
            rich.progress.MofNCompleteColumn(),
            rich.progress.TextColumn("{task.fields[values]}"),
            rich.progress.TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task: rich.progress.TaskID | None = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def on_step(self, step: int, loss_sum, correct, seen: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(f"epoch {self.epoch + 1}/{self.epochs}", total=self.steps, values="")
        if step % 25 == 0 or step == self.steps:
            # .item() syncs with the device: only on the CPU, where it costs nothing.
            values = f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.4f}" if self.show_values else ""
            self.bar.update(self.task, completed=step, values=values)

    def on_epoch(self, row: dict) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.epoch = row["epoch"]
        console.print(keras_line(row, self.epochs))
