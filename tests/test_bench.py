"""The benchmark runs (quick mode) so it cannot rot, and its baseline is the same network."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from fmnist import bench, model


def test_bench_quick_runs_and_reports_ratios():
    result = subprocess.run([sys.executable, "-m", "fmnist", "bench", "--quick", "--threads", "2", "--json"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    steps = report["step_seconds"]
    assert set(steps) == {"fmnist", "fmnist, PyTorch ops only", "plain eager PyTorch"}
    assert all(s > 0 for s in steps.values()) and 0 < report["matmul_seconds"]
    assert abs(report["speedup"] - steps["plain eager PyTorch"] / steps["fmnist"]) < 1e-9
    assert report["eval_images_per_second"] > 0 and report["epoch_seconds"] > 0
    assert report["machine"]["threads"] == 2 and report["machine"]["torch"] == torch.__version__


def test_bench_table_output():
    result = subprocess.run([sys.executable, "-m", "fmnist", "bench", "--quick"], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    assert "ms/step" in result.stdout and "plain eager PyTorch" in result.stdout and "images/s" in result.stdout
    assert "matrix products alone" in result.stdout


def test_baseline_is_the_same_network():
    assert model.count_parameters(bench.PlainCNN()) == model.count_parameters(model.SeedCNN()) == 845_674
    assert bench.PlainCNN()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
