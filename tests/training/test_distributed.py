"""Data-parallel training with torchrun: 2 CPU processes (gloo on loopback) equal one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import safetensors.torch
import torch

from fmnist import runs
from fmnist.training import configs, loop
from tests.helpers import require_real_data


@pytest.mark.slow
def test_two_gloo_processes_match_single_process_training(tmp_path):
    require_real_data()
    # No dropout: with it, each process would draw masks for its half only, unlike a single process.
    common = ["--epochs", "1", "--limit", "2000", "--dropout", "0", "--threads", "1", "--seed", "5", "--quiet"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "fmnist",
            "train",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Epoch 1/1") == 1, "only rank 0 reports"
    single = loop.fit(configs.TrainConfig(epochs=1, limit=2000, dropout=0.0, threads=1, seed=5), tmp_path / "one")
    ddp_history = runs.read_json(tmp_path / "ddp" / runs.HISTORY)
    assert abs(ddp_history[0]["loss"] - single[0]["loss"]) < 1e-4
    distributed = safetensors.torch.load_file(str(tmp_path / "ddp" / runs.WEIGHTS))
    alone = safetensors.torch.load_file(str(tmp_path / "one" / runs.WEIGHTS))
    for name in alone:
        torch.testing.assert_close(distributed[name], alone[name], rtol=1e-4, atol=2e-5)
