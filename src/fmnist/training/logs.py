"""A run's logs where users' tools look, written after each finished epoch beside history.json (which stays
the record fmnist reads): `log.csv`, as Keras's CSVLogger writes it (epoch, then the metrics by name), and
TensorBoard event files under `tensorboard/` (tensorboardX: TensorBoard itself is needed only to view them;
`tensorboard --logdir RUN/tensorboard`). Scalars per epoch: losses, accuracies, the learning rate the epoch
ended at, its seconds and threads."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fmnist.core import files

CSV_LOG = "log.csv"
TENSORBOARD = "tensorboard"
SCALARS = {  # TensorBoard tag: the history row's field
    "loss/train": "loss",
    "loss/validation": "val_loss",
    "accuracy/train": "accuracy",
    "accuracy/validation": "val_accuracy",
    "learning_rate": "learning_rate",
    "time/epoch_seconds": "seconds",
    "time/threads": "threads",
}


def csv_log(history: list[dict]) -> str:
    """Keras's CSVLogger layout: epoch (0-based, as Keras counts), then the metrics in name order."""
    fields = sorted({key for row in history for key in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *fields])
    for row in history:
        writer.writerow([row["epoch"] - 1, *("" if row.get(key) is None else row[key] for key in fields)])
    return out.getvalue()


class EpochLogs:
    """The run's CSV log (rewritten whole, atomically: a resumed run's matches its history) and its event
    files (appended: a resumed run adds a file from its next epoch on, which TensorBoard reads as one run)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.writer: Any = None  # tensorboardX's SummaryWriter, opened at the first epoch

    def write(self, history: list[dict]) -> None:
        files.write_text(self.run_dir / CSV_LOG, csv_log(history))
        if self.writer is None:
            from tensorboardX import SummaryWriter  # imports protobuf: only where a run trains

            self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD))
        row = history[-1]
        for tag, key in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # each epoch readable at once: a crash loses nothing that was shown

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
