"""ONNX export: a valid graph, a dynamic batch, class names in metadata, onnxruntime equal to PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fmnist.data import fashion
from fmnist.interop import to_onnx
from fmnist.nets import inference
from tests.helpers import run_cli


def test_onnx_matches_pytorch_on_1000_test_images(tmp_path, trained_run, real_dataset):
    path = to_onnx.export_onnx(trained_run, tmp_path / "model.onnx")
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    metadata = {prop.key: prop.value for prop in exported.metadata_props}
    assert json.loads(metadata["class_names"]) == list(fashion.CLASS_NAMES)
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    images = real_dataset.test_images[:1000]
    ours = inference.probabilities(inference.load_model(trained_run), images)
    theirs = to_onnx.onnx_probabilities(path, images)
    assert theirs.shape == (1000, 10)
    assert np.abs(theirs - ours).max() <= 1e-5
    for batch in (1, 7):  # the batch dimension is dynamic
        assert to_onnx.onnx_probabilities(path, images[:batch]).shape == (batch, 10)


@pytest.mark.slow
def test_cli_export_verifies(tmp_path, capsys, trained_run):
    out = tmp_path / "exported.onnx"
    code, stdout, err = run_cli(capsys, "export", trained_run, "--format", "onnx", "--out", out)
    assert code == 0, err
    assert out.is_file() and "max abs difference" in stdout


def test_a_place_that_takes_no_files_is_named_as_asked(trained_run, capsys):
    """/proc takes no new files: the error names the file asked for, not the temp file written first."""
    code, _, err = run_cli(capsys, "export", trained_run, "--out", "/proc/fmnist-model.onnx")
    assert code == 2 and err == "error: /proc/fmnist-model.onnx: No such file or directory\n", err
