"""Training: it learns, writes its run directory, is bit-reproducible, resumes exactly, fails clearly."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch

from fmnist import runs
from fmnist.core import errors, files
from fmnist.core import threads as cpu_threads
from fmnist.nets import inference, seedcnn
from fmnist.training import configs, loop, recipe, registry
from tests.helpers import TRAINED_RUN, assert_same_weights, require_real_data, run_cli
from tests.helpers import weights_of as weights

QUICK = dict(limit=3000, threads=2)  # 2,400 training / 600 validation images


@pytest.mark.slow
def test_short_training_learns_writes_run_dir_and_is_reproducible(tmp_path):
    require_real_data()
    config = configs.TrainConfig(epochs=2, seed=3, **QUICK)
    history = loop.fit(config, tmp_path / "a")
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["val_accuracy"] > 0.6, "well above chance (0.1)"
    assert history[-1]["steps"] == 19  # ceil(2400 / 128)
    for name in (runs.CONFIG, runs.HISTORY, runs.WEIGHTS, runs.BEST_WEIGHTS, runs.CHECKPOINT):
        assert (tmp_path / "a" / name).is_file(), name
    assert not list((tmp_path / "a").glob("*.tmp")), "no temp files left behind"
    stored = json.loads((tmp_path / "a" / runs.CONFIG).read_text())
    assert stored["seed"] == 3 and stored["machine"]["torch"] == torch.__version__
    _, metadata = runs.load_weights(tmp_path / "a" / runs.WEIGHTS)
    assert json.loads(metadata["class_names"])[9] == "Ankle boot" and metadata["architecture"] == seedcnn.ARCHITECTURE
    loop.fit(config, tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(errors.RunError, match="already holds a run"):  # a finished run is never overwritten
        loop.fit(config, tmp_path / "a")
    loop.fit(configs.TrainConfig(epochs=2, seed=4, **QUICK), tmp_path / "c")
    assert not torch.equal(weights(tmp_path / "a")["dense1.kernel"], weights(tmp_path / "c")["dense1.kernel"])


EVERY_SETTING = dict(
    lookahead=True,
    cutout=6,
    alternate_flip=True,
    bn_bias_lr=8.0,
    dirac=True,
    bn_weight=False,
    optimizer="muon",
    muon_lr=0.5,
    bn_momentum=0.4,
    tta_shift=1,
)  # every recipe setting that keeps state or draws


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, settings",
    [(name, {"whiten_bias_epochs": 2} if name == "whitened-cnn" else {}) for name in registry.REGISTRY]
    + [("fast-cnn", EVERY_SETTING)]
    + [(name, {"precision": "fp32"}) for name, spec in registry.REGISTRY.items() if spec.fp32],  # fp32 machines'
)
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, name, settings):
    """Every model's recipe: its augmentation draws, schedule, averaged weights and optimizer state continue
    exactly."""
    require_real_data()
    config = configs.TrainConfig.for_model(
        name, epochs=3, seed=1, limit=600, threads=2, **settings
    )  # 2-4 steps an epoch (batches of 128 or 256)
    loop.fit(config, tmp_path / "straight")

    def interrupt_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.fit(config, tmp_path / "resumed", on_epoch=interrupt_after_first_epoch)
    assert runs.load_checkpoint(tmp_path / "resumed" / runs.CHECKPOINT)["epoch"] == 1
    history = loop.fit(configs.load_config(tmp_path / "resumed"), tmp_path / "resumed", resume=True)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.slow
@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_in_the_cli_save_explain_and_resume(tmp_path, capsys, stop, status):
    """Ctrl-C, or SIGTERM (what Kubernetes, Slurm and Ray send before they kill): the same clean stop, the
    resume command said, the signal's exit status; resumed, the weights of a run never stopped."""
    require_real_data()
    run_dir = tmp_path / "run"
    # 10,000 epochs: however busy the machine, the run cannot finish before Ctrl-C arrives.
    command = [
        sys.executable,
        "-m",
        "fmnist",
        "train",
        "--epochs",
        "10000",
        "--limit",
        "3000",
        "--threads",
        "2",
        "--quiet",
        "--out",
        str(run_dir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait for the first finished epoch, then press Ctrl-C
        if line.startswith("Epoch 1/10000"):
            break
    process.send_signal(stop)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "Traceback" not in err and "fmnist train --resume" in err
    done = runs.load_checkpoint(run_dir / runs.CHECKPOINT)["epoch"]
    assert done >= 1
    # the resume command it said, in this process (the CLI's code; the stop above needed a process of its own)
    code, out, err = run_cli(capsys, "train", "--resume", run_dir, "--epochs", done + 1, "--quiet")
    assert code == 0, err
    assert f"Epoch {done + 1}/{done + 1}" in out
    assert len(json.loads((run_dir / runs.HISTORY).read_text())) == done + 1
    loop.fit(configs.load_config(run_dir, epochs=done + 1), tmp_path / "straight")  # the same run, never stopped
    assert_same_weights(run_dir, tmp_path / "straight")  # the report's constant rate: the stop changed nothing


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    require_real_data()
    with pytest.raises(errors.FmnistError, match="training loss became"):
        loop.fit(configs.TrainConfig(epochs=2, learning_rate=1e6, **QUICK), tmp_path)
    assert runs.load_checkpoint(tmp_path / runs.CHECKPOINT)["epoch"] == 0


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_get_the_permissions_open_would_give(tmp_path, umask, mode):
    """Written through a temp file (mkstemp's are 0o600) yet readable as any new file is: the umask decides."""
    previous = os.umask(umask)
    try:
        path = files.write_json(tmp_path / "run" / runs.CONFIG, {"seed": 0})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_keras_adam_matches_keras_update_rule():
    """Keras: w -= lr·sqrt(1-β2ᵗ)/(1-β1ᵗ) · m / (sqrt(v) + ε), computed here in float64 numpy."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=50)
    grads = [rng.normal(size=50) * 1e-4 for _ in range(5)]  # small: the ε placement matters
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = recipe.KerasAdam([param], lr=1e-3, fused=False)
    w, m, v = w0.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate(grads, start=1):
        param.grad = torch.tensor(g)
        optimizer.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-10)


def test_config_validation():
    for fraction in (1.5, 1.0, -0.1):
        with pytest.raises(ValueError, match="validation fraction"):
            configs.TrainConfig(validation_fraction=fraction)
    with pytest.raises(ValueError, match="device"):
        configs.TrainConfig(device="tpu")


@pytest.mark.slow
def test_validation_fraction_zero_trains_on_every_image_and_validates_nothing(tmp_path, capsys):
    """A final fit: the same weights as a run whose training part is those very images, nothing validated
    (null figures, no best weights), and every command still works on it."""
    require_real_data()
    final = tmp_path / "final"
    code, out, _ = run_cli(
        capsys,
        "train",
        "--model",
        "cnn94",
        "--epochs",
        2,
        "--limit",
        600,
        "--threads",
        2,
        "--validation-fraction",
        0,
        "--no-tta",  # one view where the model has six: evaluate below is about the run, not the TTA
        "--quiet",
        "--out",
        final,
    )
    assert code == 0 and "val_accuracy" not in out and "nothing validated" in out
    history = runs.read_history(final)
    steps = math.ceil(600 / configs.TrainConfig.for_model("cnn94").batch_size)  # every image trained on
    assert [row["steps"] for row in history] == [steps, steps]
    assert all(row["val_loss"] is None and row["val_accuracy"] is None for row in history)
    assert runs.validated(history) == [] and runs.time_to_accuracy(history, 0.1) is None
    assert not (final / runs.BEST_WEIGHTS).exists()
    held_out = configs.TrainConfig.for_model("cnn94", epochs=2, limit=750, threads=2)  # trains on the first 600
    loop.fit(held_out, tmp_path / "held-out")
    assert_same_weights(final, tmp_path / "held-out")
    code, out, _ = run_cli(capsys, "evaluate", final)
    assert code == 0 and json.loads((final / runs.METRICS).read_text())["test"]["accuracy"] > 0.1
    assert run_cli(capsys, "report", final)[0] == 0 and (final / "figures" / "learning_curves.png").is_file()
    code, _, err = run_cli(capsys, "evaluate", final, "--weights", "best")
    assert code != 0 and "use its final weights" in err
    half = [{**history[0], "val_loss": None, "val_accuracy": 0.5}]  # one figure null, the other not: damaged
    files.write_json(final / runs.HISTORY, half)
    with pytest.raises(errors.RunError, match="damaged"):
        runs.read_history(final)


@pytest.mark.slow
def test_cuda_on_a_cpu_only_machine_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, "-m", "fmnist", "train", "--device", "cuda", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no usable CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_missing_foreign_or_damaged_run_dir(tmp_path):
    with pytest.raises(errors.RunError, match="missing"):
        inference.load_model(tmp_path / "nothing")
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(tmp_path / runs.WEIGHTS))
    with pytest.raises(errors.RunError, match="architecture"):
        inference.load_model(tmp_path)
    (tmp_path / runs.WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(errors.RunError, match="not a readable safetensors file"):
        inference.load_model(tmp_path)
    state = seedcnn.SeedCNN().state_dict()
    state["dense1.kernel"] = torch.zeros(3136, 128)
    runs.save_weights(tmp_path / runs.WEIGHTS, state, seedcnn.ARCHITECTURE)
    with pytest.raises(errors.RunError, match=r"differs at dense1.kernel"):
        inference.load_model(tmp_path)
    (tmp_path / runs.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(errors.RunError, match="damaged"):
        runs.load_checkpoint(tmp_path / runs.CHECKPOINT)


# ---------------------------------------------------------------------------------------------
# Every state a kill can leave a run in is resumable, and the best weights are never lost
def interrupt_at_step(step):
    def on_step(done, *_):
        if done == step:
            raise KeyboardInterrupt

    return on_step


@pytest.mark.slow
def test_ctrl_c_during_epoch_one_resumes_from_the_cli_and_from_reproduce(tmp_path, capsys):
    require_real_data()
    config = configs.TrainConfig(epochs=2, seed=5, **QUICK)
    loop.fit(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        loop.fit(config, tmp_path / "run", on_step=interrupt_at_step(3))
    assert not (tmp_path / "run" / runs.HISTORY).exists()  # the state the CLI could not resume
    code, _, err = run_cli(capsys, "train", "--epochs", 2, "--limit", 3000, "--seed", 5, "--out", tmp_path / "run")
    assert code == 2 and f"--resume {tmp_path / 'run'}" in err
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "run", "--quiet")
    assert code == 0, err
    assert_same_weights(tmp_path / "straight", tmp_path / "run")
    # reproduce, re-run over a seed interrupted in its first epoch, continues it
    with pytest.raises(KeyboardInterrupt):
        loop.fit(
            configs.TrainConfig(epochs=1, seed=0, **QUICK), tmp_path / "study" / "seed-0", on_step=interrupt_at_step(2)
        )
    code, _, err = run_cli(
        capsys, "reproduce", "--epochs", 1, "--limit", 3000, "--threads", 2, "--quiet", "--out", tmp_path / "study"
    )
    assert code == 0, err
    assert len(runs.read_history(tmp_path / "study" / "seed-0")) == 1


KILLED = configs.TrainConfig(epochs=2, seed=2, **QUICK)  # the run every kill below interrupts


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """One epoch of the seed network (QUICK, seed 0), trained once for the tests that copy it."""
    require_real_data()
    run_dir = tmp_path_factory.mktemp("one-epoch") / "run"
    loop.fit(configs.TrainConfig(epochs=1, seed=0, **QUICK), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """KILLED trained straight through, once: what every resumed kill must equal."""
    require_real_data()
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    loop.fit(KILLED, run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("state", ["config only", "history one epoch ahead", "stale temp files"])
def test_every_state_a_kill_leaves_is_resumable(tmp_path, state, uninterrupted):
    config = KILLED
    run_dir = tmp_path / "run"
    if state == "config only":  # killed between writing config.json and the epoch-0 checkpoint
        with pytest.raises(KeyboardInterrupt):
            loop.fit(config, run_dir, on_step=interrupt_at_step(1))
        (run_dir / runs.CHECKPOINT).unlink()
    else:  # killed after epoch 2's history row, before its checkpoint; a write cut short left temp files
        saved = {}
        loop.fit(
            config,
            run_dir,
            on_epoch=lambda row: saved.setdefault(row["epoch"], runs.load_checkpoint(run_dir / runs.CHECKPOINT)),
        )
        runs.save_checkpoint(run_dir / runs.CHECKPOINT, saved[1])
        if state == "stale temp files":
            (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
            (run_dir / ".history.json.a9.tmp").write_text("[")
    history = loop.fit(configs.load_config(run_dir), run_dir, resume=True)
    assert [row["epoch"] for row in history] == [1, 2]
    assert_same_weights(uninterrupted, run_dir)
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_never_replaces_the_best_weights_with_worse(tmp_path, one_epoch_run):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    older = (run_dir / runs.CHECKPOINT).read_bytes()
    history = loop.fit(configs.load_config(run_dir, epochs=3), run_dir, resume=True)
    best = (run_dir / runs.BEST_WEIGHTS).read_bytes()
    assert history[1]["val_loss"] > min(row["val_loss"] for row in history)
    (run_dir / runs.CHECKPOINT).write_bytes(older)  # an older checkpoint restored: history is ahead of it
    loop.fit(configs.load_config(run_dir, epochs=2), run_dir, resume=True)  # epoch 2 again, not the best
    assert (run_dir / runs.BEST_WEIGHTS).read_bytes() == best


def damage_checkpoint(change):
    def damage(saved):
        change(saved)
        return saved

    return damage


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("optimizer"), "damaged \\(KeyError"),
        (lambda s: s.update(model="weights"), "not a set of named tensors"),
        (lambda s: s["model"].update({"dense1.kernel": torch.zeros(3, 3)}), "differs at dense1.kernel"),
        (lambda s: s["model"]["conv1.bias"].fill_(float("nan")), "conv1.bias holds NaN"),
        (lambda s: s.update(shuffle_rng=torch.zeros(3)), "damaged"),
        (lambda s: s.update(epoch="two"), "damaged \\(epoch 'two'\\)"),
        (lambda s: s.update(format="other"), "not an fmnist checkpoint"),
    ],
)
@pytest.mark.slow
def test_damaged_checkpoint_is_one_clear_error(tmp_path, change, message, one_epoch_run):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    saved = runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, damage_checkpoint(change)(saved))
    with pytest.raises(errors.RunError, match=message):
        loop.fit(configs.load_config(run_dir, epochs=2), run_dir, resume=True)


def test_damaged_checkpoint_epoch_is_one_line_from_the_cli(tmp_path, capsys, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    saved = runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    saved["epoch"] = "two"
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, saved)
    code, _, err = run_cli(capsys, "train", "--resume", run_dir, "--epochs", 4)
    assert code == 2 and err.startswith("error:") and "damaged (epoch 'two')" in err, err


def test_a_finished_run_without_its_checkpoint_is_refused_never_trained_over(tmp_path, capsys, trained_run):
    run_dir = tmp_path / "seed-0"  # where reproduce keeps seed 0
    shutil.copytree(trained_run, run_dir)
    (run_dir / runs.CHECKPOINT).unlink()
    kept = {name: (run_dir / name).read_bytes() for name in (runs.HISTORY, runs.WEIGHTS, runs.BEST_WEIGHTS)}
    for args in (
        ["train", "--resume", run_dir, "--epochs", 4],
        ["reproduce", "--epochs", 4, "--limit", TRAINED_RUN["limit"], "--threads", 2, "--quiet", "--out", tmp_path],
    ):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and err.startswith("error:") and "holds 3 finished epochs" in err, err
        assert "restore the checkpoint" in err and len(err.strip().splitlines()) == 1
        assert all((run_dir / name).read_bytes() == content for name, content in kept.items()), "run replaced"
        assert not (run_dir / runs.CHECKPOINT).exists()


@pytest.mark.parametrize(
    "name, content, command",
    [
        (runs.CONFIG, "[]", "train"),
        (runs.CONFIG, '{"batch_size": "128"}', "train"),
        (runs.CONFIG, '{"seed": 1.5}', "evaluate"),
        (runs.HISTORY, '{"epoch": 1}', "train"),
        (runs.HISTORY, '[{"epoch": 1, "loss": "low"}]', "evaluate"),
        (runs.CONFIG, "{not json", "evaluate"),
    ],
)
@pytest.mark.slow
def test_damaged_run_files_are_one_line_errors(tmp_path, capsys, trained_run, name, content, command):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / name).write_text(content)
    args = ["train", "--resume", run_dir, "--epochs", 4] if command == "train" else [command, run_dir]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith("error:") and str(run_dir / name) in err, err


def test_outputs_of_the_wrong_kind_are_one_line_errors(tmp_path, capsys, trained_run):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    image = tmp_path / "img.png"
    PIL.Image.new("L", (40, 40), 200).save(image)
    for args in (
        ["train", "--epochs", 1, "--limit", 3000, "--out", a_file],
        ["data", "--out", a_file],
        ["predict", trained_run, image, "--save-preprocessed", a_file],
        ["export", trained_run, "--out", tmp_path, "--no-verify"],
    ):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and err.startswith("error:") and ("is a file" in err or "is a directory" in err), (args, err)


STARTUP_INTERRUPT = """
import os, signal, sys
from fmnist import cli
from fmnist.data import fashion
from fmnist.nets.kernels import fused
ctrl_c = lambda *args, **kwargs: signal.raise_signal(signal.SIGINT)  # a real SIGINT, at a known moment
if sys.argv[1] == "kernels":
    fused.available = ctrl_c
else:
    fashion.load = ctrl_c
sys.exit(cli.main(["train", "--limit", "3000", "--out", sys.argv[2]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["kernels", "data"])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, moment):
    result = subprocess.run(
        [sys.executable, "-c", STARTUP_INTERRUPT, moment, str(tmp_path / "run")], capture_output=True, text=True
    )
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: interrupted") and result.stderr.count("\n") == 1, result.stderr
    assert not runs.holds_run(tmp_path / "run")


def test_oversized_run_files_are_refused_unread(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    with open(run_dir / runs.HISTORY, "r+b") as handle:
        handle.truncate(runs.MAX_JSON_BYTES + 1)
    with pytest.raises(errors.RunError, match="over the limit"):
        runs.read_history(run_dir)
    (run_dir / runs.CONFIG).unlink()
    os.mkfifo(run_dir / runs.CONFIG)  # reading it would wait for a writer forever
    with pytest.raises(errors.RunError, match="not a regular file"):
        runs.read_config(run_dir)
    with open(run_dir / runs.WEIGHTS, "r+b") as handle:
        handle.truncate(runs.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(errors.RunError, match="is 268,435,457 bytes, over the limit"):
        inference.load_model(run_dir)
    with zipfile.ZipFile(run_dir / runs.CHECKPOINT, "w", zipfile.ZIP_DEFLATED) as bomb, bomb.open("data", "w") as entry:
        for _ in range(runs.MAX_FILE_BYTES // (1 << 20) + 1):
            entry.write(bytes(1 << 20))  # 257 MB of zeros in ~0.3 MB
    assert (run_dir / runs.CHECKPOINT).stat().st_size < 1_000_000
    with pytest.raises(errors.RunError, match="unpacks to 269,484,032 bytes, over the limit"):
        runs.load_checkpoint(run_dir / runs.CHECKPOINT)


def test_threads_follow_load_that_arrives_and_leaves_unless_fixed(tmp_path, monkeypatch):
    """A busy process starts after epoch 1 and ends after epoch 2 (the machine's readings injected, as the
    spin chooser's are): epoch 2 trains on the one CPU left free, epoch 3 on both again. --threads fixes it."""
    require_real_data()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "available_cpus", lambda: (2, "2 CPUs (a test)"))
    readings = iter([0, 0, 1, 0])  # at set-up, then before each epoch
    monkeypatch.setattr(cpu_threads, "others_running", lambda **_: next(readings))
    before = torch.get_num_threads()
    try:
        history = loop.fit(configs.TrainConfig(epochs=3, limit=1200, seed=1), tmp_path / "following")
        assert [row["threads"] for row in history] == [2, 1, 2]
        assert json.loads((tmp_path / "following" / runs.HISTORY).read_text())[1]["threads"] == 1  # recorded

        def unread(**_):
            raise AssertionError("the load was read although --threads fixed the count")

        monkeypatch.setattr(cpu_threads, "others_running", unread)
        history = loop.fit(configs.TrainConfig(epochs=2, limit=1200, seed=1, threads=2), tmp_path / "fixed")
        assert [row["threads"] for row in history] == [2, 2]
    finally:
        torch.set_num_threads(before)


def test_a_run_logs_where_tensorboard_and_keras_users_look(tmp_path):
    """TensorBoard's own reader reads each epoch's scalars; log.csv is Keras's CSVLogger layout; a resumed
    run goes on in both."""
    from tensorboard.backend.event_processing import event_accumulator

    require_real_data()
    run_dir = tmp_path / "run"
    loop.fit(configs.TrainConfig.for_model("fast-cnn", epochs=2, **QUICK), run_dir)
    loop.fit(configs.TrainConfig.for_model("fast-cnn", epochs=3, **QUICK), run_dir, resume=True)
    history = runs.read_history(run_dir)
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for tag, key in (
        ("loss/train", "loss"),
        ("accuracy/validation", "val_accuracy"),
        ("learning_rate", "learning_rate"),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in history], rel=1e-6)
    assert history[-1]["learning_rate"] == 0  # the one-cycle ends at 0
    lines = (run_dir / "log.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["epoch", "accuracy", "elapsed", "learning_rate"] and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]  # Keras counts epochs from 0
