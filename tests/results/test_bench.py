"""The benchmark runs (quick mode) so it cannot rot, and its baseline is the same network."""

from __future__ import annotations

import ast
import json
import os

import pytest
import torch

from fmnist.nets import architectures, fastcnn, seedcnn
from fmnist.results import bench, records
from fmnist.training import registry
from tests.helpers import run_cli


@pytest.mark.slow
def test_bench_quick_runs_and_reports_ratios(tmp_path, capsys):
    code, out, err = run_cli(capsys, "bench", "--quick", "--threads", "2", "--json", "--out", tmp_path)
    assert code == 0, err
    report = json.loads(out)
    steps = report["step_seconds"]
    assert set(steps) == {"fmnist", "fmnist, PyTorch ops only", "plain eager PyTorch"}
    assert all(s > 0 for s in steps.values()) and report["floor_seconds"] > 0
    assert report["speedup"] > 0 and set(report["eval_images_per_second"]) == {"fp32", "bf16"}
    assert all(rate > 0 for rate in report["eval_images_per_second"].values()) and report["epoch_seconds"] > 0
    assert report["epoch_images"] == bench.epoch_sizes(quick=True)[0]
    # A full epoch is the report's: 48,000 training and 12,000 validation images, 10,000 test (shared/SPEC.md).
    assert bench.epoch_sizes(quick=False) == (48_000, 12_000, 10_000)
    assert report["machine"]["threads"] == 2 and report["machine"]["torch"] == torch.__version__


def test_bench_table_output_and_record(capsys, tmp_path):
    code, out, err = run_cli(capsys, "bench", "--quick", "--threads", 2, "--out", tmp_path)
    assert code == 0, err
    assert "ms/step" in out and "plain eager PyTorch" in out and "images/s" in out
    assert "matrix products alone" in out
    path = tmp_path / f"{registry.DEFAULT}.json"
    assert f"record: {path}" in out
    record = records.check(json.loads(path.read_text()))  # what the results pages would read
    assert record["command"] == f"fmnist bench --model {registry.DEFAULT} --quick --threads 2" and record["notes"]
    assert [row[0] for row in record["rows"][:-1]] == list(record["figures"]["step_seconds"])
    assert record["machine"]["cores"] == os.cpu_count()


def test_bench_of_another_model_in_process(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "bench", "--quick", "--threads", "2", "--model", "fast-cnn", "--json", "--out", tmp_path
    )
    report = json.loads(out)
    assert code == 0 and report["model"] == "fast-cnn"
    assert set(report["step_seconds"]) == {"fmnist", "plain eager PyTorch"} and report["floor_seconds"] > 0
    for flag in ("--threads", "--batch-size"):  # 0 used to run as "the default"
        code, _, err = run_cli(capsys, "bench", "--quick", flag, 0)
        assert code == 2 and err == f"error: {flag[2:].replace('-', ' ')} must be >= 1, got 0\n"
    code, _, err = run_cli(capsys, "bench", "--quick", "--model", "resnet")
    assert code == 2 and err.startswith("error: unknown model 'resnet'")


def test_baselines_are_the_same_networks():
    assert seedcnn.count_parameters(seedcnn.PlainCNN()) == seedcnn.count_parameters(seedcnn.SeedCNN()) == 845_674
    assert seedcnn.PlainCNN()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    fast, plain = registry.FAST.build(0.0).eval(), fastcnn.PlainFastCNN().eval()
    # fast-cnn's head reads (row, column, channel); nn.Flatten gives (channel, row, column).
    head = fast.head.weight.reshape(10, 7, 7, -1).permute(0, 3, 1, 2).reshape(10, -1)  # (10, 7*7*C) in CHW order
    plain.load_state_dict({**fast.state_dict(), "head.weight": head})
    x = torch.rand(4, 28, 28, 1)
    torch.testing.assert_close(plain(x.permute(0, 3, 1, 2).contiguous()), fast(x), rtol=0, atol=1e-5)


def test_the_seeds_floor_products_are_its_layers_at_their_real_sizes():
    """Each product's rows are the positions the network's layer really outputs, per image of the batch."""
    rows = [row for row in seedcnn.summary(seedcnn.SeedCNN()) if "Conv2D" in row[0] or "Dense" in row[0]]
    for (label, shape, params), (rows_, fan_in, fan_out) in zip(rows, seedcnn.products(batch_size=3), strict=True):
        positions = ast.literal_eval(shape)[1:-1]  # "(None, 14, 14, 32)" -> (14, 14); a dense layer has none
        assert rows_ == 3 * (positions[0] * positions[1] if positions else 1), label
        assert params == fan_in * fan_out + fan_out, label  # the product's matrix and the bias


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_every_models_floor_runs_and_adds_nothing_into_grad(name):
    """The floor is the products' work alone: its gradients are returned, never added into .grad (an extra
    pass over each activation that a training step does not make); frozen weights get none."""
    bench.floor_step(name, 2, torch.device("cpu"))()  # each model's, as `bench` builds it
    if architectures.ARCHITECTURES[registry.get(name).architecture].products is None:
        network = registry.get(name).build(0.0)
        step = bench.layer_step(network, 2, torch.device("cpu"))
        step()
        step()
        assert all(parameter.grad is None for parameter in network.parameters())
