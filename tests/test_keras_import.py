"""Importing real Keras files (written by Keras itself, torch backend) and matching Keras's predictions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist import errors, evaluate, keras_import, model, runs, train


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, real_dataset):
    out = tmp_path_factory.mktemp("keras")
    images = (real_dataset.test_images[:500].astype(np.float32) / 255.0)[..., None]
    np.save(out / "images.npy", images)
    script = Path(__file__).with_name("make_keras_models.py")
    result = subprocess.run([sys.executable, str(script), str(out), str(out / "images.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["seed.keras", "seed.h5"])
def test_imported_model_predicts_what_keras_predicts(tmp_path, keras_files, real_dataset, name):
    run_dir = keras_import.import_keras(keras_files / name, tmp_path / "run")
    ours = evaluate.predict(runs.load_model(run_dir), real_dataset.test_images[:500])
    expected = np.load(keras_files / "expected.npy")
    assert np.abs(ours - expected).max() <= 1e-5
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_wrong_architecture_names_the_layer(tmp_path, keras_files):
    with pytest.raises(errors.InputError, match=r"layer 3 \(conv2d_\d+, Conv2D\): filters is 48, expected 64"):
        keras_import.import_keras(keras_files / "wrong.keras", tmp_path / "a")
    with pytest.raises(errors.InputError, match=r"layer 3 .*padding is valid, expected same"):
        keras_import.import_keras(keras_files / "wrong.h5", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_import_then_evaluate(tmp_path, keras_files):
    run_dir = tmp_path / "imported"
    result = subprocess.run([sys.executable, "-m", "fmnist", "import-keras", str(keras_files / "seed.h5"),
                             "--out", str(run_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    evaluated = subprocess.run([sys.executable, "-m", "fmnist", "evaluate", str(run_dir)], capture_output=True,
                               text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (run_dir / runs.METRICS).is_file() and (run_dir / runs.FIGURES / "confusion_matrix.png").is_file()
    reported = subprocess.run([sys.executable, "-m", "fmnist", "report", str(run_dir)], capture_output=True, text=True)
    assert reported.returncode == 0, reported.stderr
    assert "imported, not trained here" in (run_dir / runs.REPORT_HTML).read_text()


def test_not_a_keras_file(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(errors.InputError):
        keras_import.import_keras(tmp_path / "model.keras", tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "fmnist", "import-keras", str(tmp_path / "missing.h5")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_training_steps_match_keras(tmp_path):
    """Three Adam steps from the same weights on the same batches: loss, gradients and Keras's Adam
    (epsilon placement included) give the same weights as real Keras's train_on_batch."""
    script = Path(__file__).with_name("keras_training_steps.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "steps.npz")], capture_output=True,
                            text=True, timeout=300, cwd=script.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(tmp_path / "steps.npz")
    network = model.SeedCNN(dropout=0.0)
    names = [f"{layer}.{part}" for layer in keras_import.WEIGHTED for part in ("kernel", "bias")]
    network.load_state_dict({name: torch.from_numpy(saved[f"initial_{i}"]) for i, name in enumerate(names)})
    optimizer = train.KerasAdam(network.parameters(), fused=True)
    for x, y in zip(saved["images"], saved["labels"]):
        loss = torch.nn.functional.cross_entropy(network(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for i, name in enumerate(names):
        ours = network.state_dict()[name].numpy()
        moved = np.abs(saved[f"trained_{i}"] - saved[f"initial_{i}"]).max()
        assert moved > 1e-4, f"{name} did not train"
        # Measured: 1e-6 with KerasAdam; PyTorch's own Adam (epsilon after bias correction) is off by 3e-3.
        assert np.abs(ours - saved[f"trained_{i}"]).max() <= 1e-5, name
