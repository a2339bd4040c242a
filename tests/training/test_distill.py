"""Distillation: the loss against its formula, and real trainings with a real teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmnist import runs
from fmnist.nets import inference
from fmnist.training import configs, distill, loop
from tests.helpers import TRAINED_RUN, assert_same_weights, require_real_data, run_cli, weights_of


def test_the_loss_is_its_formula_on_a_tiny_batch():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    temperature, weight = 2.0, 0.25

    def by_hand(row: int) -> tuple[float, float]:
        z = logits[row].tolist()
        log_p = [v - math.log(sum(math.exp(u) for u in z)) for v in z]
        zt = [v / temperature for v in z]
        log_q = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
        kl = sum(t * (math.log(t) - q) for t, q in zip(soft[row].tolist(), log_q))
        return -log_p[labels[row]], kl

    terms = [by_hand(row) for row in range(2)]
    hard, kl = (sum(term[i] for term in terms) / 2 for i in range(2))
    expected = (1 - weight) * hard + weight * temperature**2 * kl
    assert distill.loss(logits, labels, soft, temperature, weight).item() == pytest.approx(expected, rel=1e-6)
    assert distill.loss(logits, labels, soft, temperature, 0.0).item() == pytest.approx(hard, rel=1e-6)


def test_the_teachers_targets_by_batch_equal_those_by_image_on_the_same_images(trained_run, real_dataset):
    network = inference.load_model(trained_run)
    images = inference.to_tensor(real_dataset.train_images[:600], inference.CPU)
    by_image, by_batch = distill.Teacher(network, 4.0, images), distill.Teacher(network, 4.0, None)
    rows = torch.arange(100, 356)
    once, each = by_image.targets(images[rows], rows), by_batch.targets(images[rows], rows)
    assert torch.allclose(once, each, atol=1e-6) and torch.allclose(once.sum(1), torch.ones(len(rows)))
    assert not torch.allclose(each, by_batch.targets(images[rows].flip(2), rows))  # by batch: what it is shown


@pytest.mark.slow
def test_distilling_resumes_exactly_and_a_zero_weight_is_plain_training(trained_run, tmp_path):
    require_real_data()
    quick = dict(epochs=2, limit=TRAINED_RUN["limit"], threads=2, seed=3)  # the teacher's split
    config = configs.TrainConfig(teacher=str(trained_run), **quick)
    straight = loop.fit(config, tmp_path / "straight")
    taught_for = runs.elapsed(runs.read_history(trained_run))[-1]  # the teacher's training, then its targets
    assert straight[0]["elapsed"] > straight[0]["seconds"] + taught_for

    def interrupt_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.fit(config, tmp_path / "resumed", on_epoch=interrupt_after_first_epoch)
    taught = weights_of(tmp_path / "resumed")  # its first epoch
    loop.fit(configs.load_config(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    one_epoch = {**quick, "epochs": 1}
    loop.fit(configs.TrainConfig(**one_epoch), tmp_path / "labels")
    loop.fit(configs.TrainConfig(teacher=str(trained_run), distill_weight=0.0, **one_epoch), tmp_path / "weightless")
    assert_same_weights(tmp_path / "labels", tmp_path / "weightless")
    alone = weights_of(tmp_path / "labels")
    assert any(not np.array_equal(taught[key], alone[key]) for key in taught)  # the teacher changed what was learned


@pytest.mark.slow
def test_the_cli_trains_with_a_teacher_and_refuses_a_wrong_one_in_one_line(trained_run, tmp_path, capsys):
    flags = ["--epochs", 1, "--limit", TRAINED_RUN["limit"], "--threads", 2, "--quiet"]
    code, _, err = run_cli(capsys, "train", "--teacher", trained_run, *flags, "--out", tmp_path / "student")
    assert code == 0 and runs.read_config(tmp_path / "student")["teacher"] == str(trained_run), err
    batch = ["--distill-targets", "batch", "--out", tmp_path / "by-batch"]  # the teacher on every augmented batch
    code, _, err = run_cli(capsys, "train", "--teacher", trained_run, *flags, *batch)
    assert code == 0 and runs.read_config(tmp_path / "by-batch")["distill_targets"] == "batch", err
    for teacher, said in ((tmp_path / "nowhere", "no run there"), (trained_run, "the same split")):
        extra = ["--limit", 2 * TRAINED_RUN["limit"]] if teacher == trained_run else []
        code, _, err = run_cli(capsys, "train", "--teacher", teacher, *flags, *extra, "--out", tmp_path / "refused")
        assert code == 2 and said in err and err.count("\n") == 1, err
