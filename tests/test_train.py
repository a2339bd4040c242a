"""Training: it learns, writes its run directory, is bit-reproducible, resumes exactly, fails clearly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from conftest import require_real_data
from fmnist import errors, model, runs, train

QUICK = dict(limit=3000, threads=2)  # 2,400 training / 600 validation images


def weights(run_dir):
    return safetensors.torch.load_file(str(run_dir / runs.WEIGHTS))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


def test_short_training_learns_writes_run_dir_and_is_reproducible(tmp_path):
    require_real_data()
    config = train.TrainConfig(epochs=2, seed=3, **QUICK)
    history = train.fit(config, tmp_path / "a")
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["val_accuracy"] > 0.6, "well above chance (0.1)"
    assert history[-1]["steps"] == 19  # ceil(2400 / 128)
    for name in (runs.CONFIG, runs.HISTORY, runs.WEIGHTS, runs.BEST_WEIGHTS, runs.CHECKPOINT):
        assert (tmp_path / "a" / name).is_file(), name
    assert not list((tmp_path / "a").glob("*.tmp")), "no temp files left behind"
    stored = json.loads((tmp_path / "a" / runs.CONFIG).read_text())
    assert stored["seed"] == 3 and stored["machine"]["torch"] == torch.__version__
    _, metadata = runs.load_weights(tmp_path / "a" / runs.WEIGHTS)
    assert json.loads(metadata["class_names"])[9] == "Ankle boot" and metadata["architecture"] == model.ARCHITECTURE
    train.fit(config, tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(errors.RunError, match="already holds a run"):  # a finished run is never overwritten
        train.fit(config, tmp_path / "a")
    train.fit(train.TrainConfig(epochs=2, seed=4, **QUICK), tmp_path / "c")
    assert not torch.equal(weights(tmp_path / "a")["dense1.kernel"], weights(tmp_path / "c")["dense1.kernel"])


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    require_real_data()
    config = train.TrainConfig(epochs=3, seed=1, **QUICK)
    train.fit(config, tmp_path / "straight")

    def interrupt_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(config, tmp_path / "resumed", on_epoch=interrupt_after_first_epoch)
    assert runs.load_checkpoint(tmp_path / "resumed" / runs.CHECKPOINT)["epoch"] == 1
    history = train.fit(train.load_config(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_ctrl_c_in_the_cli_saves_explains_and_resumes(tmp_path):
    require_real_data()
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fmnist", "train", "--epochs", "30", "--limit", "3000", "--threads", "2",
               "--quiet", "--out", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait for the first finished epoch, then press Ctrl-C
        if line.startswith("Epoch 1/30"):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "fmnist train --resume" in err
    done = runs.load_checkpoint(run_dir / runs.CHECKPOINT)["epoch"]
    assert done >= 1
    result = subprocess.run([sys.executable, "-m", "fmnist", "train", "--resume", str(run_dir), "--epochs",
                             str(done + 1), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"Epoch {done + 1}/{done + 1}" in result.stdout
    assert len(json.loads((run_dir / runs.HISTORY).read_text())) == done + 1


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    require_real_data()
    with pytest.raises(errors.FmnistError, match="training loss became"):
        train.fit(train.TrainConfig(epochs=2, learning_rate=1e6, **QUICK), tmp_path)
    assert runs.load_checkpoint(tmp_path / runs.CHECKPOINT)["epoch"] == 0


def test_keras_adam_matches_keras_update_rule():
    """Keras: w -= lr·sqrt(1-β2ᵗ)/(1-β1ᵗ) · m / (sqrt(v) + ε), computed here in float64 numpy."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=50)
    grads = [rng.normal(size=50) * 1e-4 for _ in range(5)]  # small: the ε placement matters
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = train.KerasAdam([param], lr=1e-3, fused=False)
    w, m, v = w0.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate(grads, start=1):
        param.grad = torch.tensor(g)
        optimizer.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= 1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-10)


def test_config_validation():
    with pytest.raises(ValueError, match="validation fraction"):
        train.TrainConfig(validation_fraction=1.5)
    with pytest.raises(ValueError, match="device"):
        train.TrainConfig(device="tpu")


def test_cuda_on_a_cpu_only_machine_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "fmnist", "train", "--device", "cuda", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no usable CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_missing_foreign_or_damaged_run_dir(tmp_path):
    with pytest.raises(errors.RunError, match="missing"):
        runs.load_model(tmp_path / "nothing")
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(tmp_path / runs.WEIGHTS))
    with pytest.raises(errors.RunError, match="architecture"):
        runs.load_model(tmp_path)
    (tmp_path / runs.WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(errors.RunError, match="not a readable safetensors file"):
        runs.load_model(tmp_path)
    state = model.SeedCNN().state_dict()
    state["dense1.kernel"] = torch.zeros(3136, 128)
    runs.save_weights(tmp_path / runs.WEIGHTS, state)
    with pytest.raises(errors.RunError, match="differs at dense1.kernel"):
        runs.load_model(tmp_path)
    (tmp_path / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(errors.RunError, match="damaged"):
        runs.load_checkpoint(tmp_path / runs.CHECKPOINT)
