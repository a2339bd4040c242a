"""Ensembles as one model: made from real runs, read by everything that reads a run."""

from __future__ import annotations

import contextlib
import json
import shutil

import httpx
import numpy as np
import PIL.Image
import pytest
import torch

import fmnist
from fmnist import runs
from fmnist.core import errors
from fmnist.nets import ensemble, inference
from fmnist.serving import server
from fmnist.training import configs, loop
from tests.helpers import TRAINED_RUN, once, png, require_real_data, run_cli, running

pytestmark = pytest.mark.slow  # each needs a second trained run (seconds)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A fast-cnn run (another architecture, with its flip TTA) on the split trained_run uses."""
    require_real_data()

    def train(path):
        config = configs.TrainConfig.for_model(
            "fast-cnn", epochs=1, limit=TRAINED_RUN["limit"], threads=2, precision="fp32"
        )
        loop.fit(config, path / "run")

    return once(tmp_path_factory, "fast-member", train) / "run"


@pytest.fixture(scope="module")
def pair(trained_run, other_run, tmp_path_factory):
    return fmnist.ensemble([trained_run, other_run], tmp_path_factory.mktemp("ensembles") / "pair")


def test_an_ensemble_predicts_the_mean_of_its_members_computed_one_by_one(trained_run, other_run, pair, tmp_path):
    about = pair.ensemble
    assert [m["model"] for m in about["members"]] == ["seed-cnn", "fast-cnn"]
    assert about["combine"] == min(about["validation"], key=lambda c: about["validation"][c]["loss"])
    assert about["chosen"].startswith("on validation") and set(about["validation"]) == set(ensemble.COMBINES)
    alone = [runs.elapsed(runs.read_history(run))[-1] for run in (trained_run, other_run)]
    assert about["training_seconds"] == pytest.approx(sum(alone))
    members = [inference.load_model(run) for run in (trained_run, other_run)]
    images = torch.rand(64, 28, 28, 1)
    for combine in ensemble.COMBINES:
        run = fmnist.ensemble([trained_run, other_run], tmp_path / combine, combine=combine)
        assert run.ensemble["combine"] == combine and run.ensemble["chosen"] == "given"
        with torch.inference_mode():
            together = torch.softmax(run.model()(images), dim=1)
            one_by_one = ensemble.reference_probabilities(members, images, combine)
        assert torch.allclose(together, one_by_one, atol=1e-6), (together - one_by_one).abs().max()


def test_evaluate_report_predict_export_and_serve_an_ensemble(pair, real_dataset, tmp_path, capsys):
    metrics = pair.evaluate()
    assert 0.5 < metrics["test"]["accuracy"] <= 1 and (pair.path / runs.METRICS).is_file()
    html, _ = pair.report()
    assert html.is_file() and "An ensemble of 2 runs" in html.read_text()
    PIL.Image.fromarray(real_dataset.test_images[0]).save(tmp_path / "boot.png")
    code, out, err = run_cli(capsys, "predict", pair.path, tmp_path / "boot.png")
    assert code == 0 and "boot.png: " in out, err
    path = pair.export("onnx", tmp_path / "pair.onnx")  # verified on 1,000 test images, or an error
    assert pair.verify_onnx(path) <= 1e-5
    with contextlib.contextmanager(running)(server.create_app(pair.path), log_level="warning") as url:
        health = httpx.get(f"{url}/health").json()
        assert health["model"] == "ensemble of seed-cnn, fast-cnn"
        reply = httpx.post(
            f"{url}/predict", content=png(PIL.Image.open(tmp_path / "boot.png")), headers={"Content-Type": "image/png"}
        )
        assert reply.status_code == 200 and len(reply.json()["predictions"][0]["top"]) == 3


def test_the_cli_makes_an_ensemble_and_refuses_bad_members_in_one_line(trained_run, other_run, pair, tmp_path, capsys):
    code, out, err = run_cli(capsys, "ensemble", trained_run, other_run, "--out", tmp_path / "ens")
    assert code == 0 and "2 members" in out and (tmp_path / "ens" / runs.WEIGHTS).is_file(), err
    damaged = tmp_path / "damaged"
    shutil.copytree(other_run, damaged)
    (damaged / runs.WEIGHTS).write_bytes((damaged / runs.WEIGHTS).read_bytes()[:5000])
    cases = [
        ([trained_run, tmp_path / "nowhere"], "nowhere: no run there"),
        ([trained_run, damaged], "is not a readable safetensors file"),
        ([trained_run, pair.path], "is itself an ensemble"),
        ([trained_run], "an ensemble takes 2 to"),
    ]
    for members, said in cases:
        code, out, err = run_cli(capsys, "ensemble", *members, "--out", tmp_path / "refused")
        assert code == 2 and said in err and err.count("\n") == 1, err
    other_split = tmp_path / "other-split"
    shutil.copytree(other_run, other_split)
    config = json.loads((other_split / runs.CONFIG).read_text())
    (other_split / runs.CONFIG).write_text(json.dumps({**config, "validation_fraction": 0.1}))
    code, out, err = run_cli(capsys, "ensemble", trained_run, other_split, "--out", tmp_path / "refused")
    assert code == 2 and "different validation_fraction" in err


def test_an_ensemble_file_claiming_too_much_is_refused(pair, tmp_path):
    tensors, metadata = runs.load_weights(pair.path / runs.WEIGHTS)
    kept = {key: metadata[key] for key in ("members", "combine")}
    shutil.copytree(pair.path, tmp_path / "hostile")
    claims = {
        "members": json.dumps([{"architecture": "seed-cnn-v1"}] * (ensemble.MAX_MEMBERS + 1)),
        "combine": "median",
    }
    for key, value in claims.items():
        runs.save_weights(tmp_path / "hostile" / runs.WEIGHTS, tensors, ensemble.ARCHITECTURE, **{**kept, key: value})
        with pytest.raises(errors.RunError, match="not a readable ensemble"):
            inference.load_model(tmp_path / "hostile")
    stray = {**tensors, f"{ensemble.MAX_MEMBERS}.weight": torch.zeros(1)}  # a tensor of no member
    runs.save_weights(tmp_path / "hostile" / runs.WEIGHTS, stray, ensemble.ARCHITECTURE, **kept)
    with pytest.raises(errors.RunError, match="not a readable ensemble"):
        inference.load_model(tmp_path / "hostile")
    assert np.isfinite(fmnist.open_run(pair.path).predict(np.zeros((1, 28, 28), np.uint8)).probabilities).all()
