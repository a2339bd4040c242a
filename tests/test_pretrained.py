"""The model that ships with fmnist: a run in the package, copied into the user cache, predicting with no training."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

import fmnist
from fmnist import runs
from fmnist.data import fashion
from tests.helpers import run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_the_shipped_weights_do_what_their_card_and_record_say(cache, real_dataset):
    run = fmnist.pretrained()
    assert run.path == cache / "pretrained" / runs.PRETRAINED and run.config.model == runs.PRETRAINED
    predicted = run.predict(real_dataset.test_images)
    correct = int((predicted.classes == real_dataset.test_labels).sum())
    published = json.loads((run.path / runs.METRICS).read_text())["test"]["correct"]
    assert abs(correct - published) <= 5, (correct, published)  # fp32 kernels differ by CPU: a borderline image
    card = (run.path / "README.md").read_text()
    assert f"value: {published / 10_000:.4f}" in card and "fmnist reproduce --model cnn94" in card


def test_the_copy_in_the_cache_is_renewed_when_its_weights_differ(cache):
    path = fmnist.pretrained().path
    shipped = (path / runs.WEIGHTS).read_bytes()
    (path / runs.WEIGHTS).write_bytes(shipped[:1000])  # a copy cut short, or another version's
    (path / runs.METRICS).write_text("{}")
    assert fmnist.pretrained().path == path and (path / runs.WEIGHTS).read_bytes() == shipped
    assert json.loads((path / runs.METRICS).read_text())["test"]["accuracy"] > 0.9


def test_predict_and_serve_take_pretrained_instead_of_a_run(cache, real_dataset, tmp_path, capsys):
    boot = int(np.flatnonzero(real_dataset.test_labels == fashion.CLASS_NAMES.index("Trouser"))[0])
    PIL.Image.fromarray(real_dataset.test_images[boot]).save(tmp_path / "trouser.png")
    code, out, err = run_cli(capsys, "predict", "--pretrained", tmp_path / "trouser.png")
    assert code == 0 and out.startswith(f"{tmp_path / 'trouser.png'}: Trouser"), out + err
    code, out, err = run_cli(capsys, "predict", tmp_path / "trouser.png")  # a run directory, then images: none
    assert code == 2 and "give a run directory and then images, or --pretrained" in err
    code, out, err = run_cli(capsys, "serve", "--pretrained", runs.PRETRAINED)
    assert code == 2 and "a run directory to serve, or --pretrained (not both)" in err
