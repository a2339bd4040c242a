"""Models back to Keras: real Keras (torch backend) loads the exported file and predicts what fmnist
predicts; importing it back gives the same weights; other models are a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from fmnist import api, runs
from fmnist.interop import from_keras
from fmnist.training import configs, loop
from tests.helpers import run_cli


@pytest.mark.slow
def test_keras_loads_the_export_and_predicts_what_fmnist_predicts(tmp_path, capsys, trained_run, real_dataset):
    code, _out, err = run_cli(capsys, "export", trained_run, "--format", "keras", "--out", tmp_path / "seed.keras")
    assert code == 0, err
    images = real_dataset.test_images[:500]
    np.save(tmp_path / "images.npy", (images.astype(np.float32) / 255.0)[..., None])
    script = Path(__file__).with_name("keras_predict.py")
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "seed.keras"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "keras.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = api.open_run(trained_run).predict(images).probabilities
    assert np.abs(np.load(tmp_path / "keras.npy") - ours).max() <= 1e-5


def test_export_then_import_gives_identical_weights(tmp_path, trained_run):
    path = api.open_run(trained_run).export("keras", tmp_path / "round.keras")
    run_dir = from_keras.import_keras(path, tmp_path / "back")
    before = safetensors.torch.load_file(str(trained_run / runs.WEIGHTS))
    after = safetensors.torch.load_file(str(run_dir / runs.WEIGHTS))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_other_models_are_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "fast"
    loop.fit(configs.TrainConfig.for_model("fast-cnn", epochs=1, limit=300, threads=2), run_dir)
    code, _, err = run_cli(capsys, "export", run_dir, "--format", "keras")
    assert code == 2 and "'fast-cnn' network" in err and "--format onnx" in err
    assert not (run_dir / "model.keras").exists()
