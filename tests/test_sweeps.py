"""Sweeps and parallel seeds on Ray: on the session's two-node cluster (conftest.ray_cluster: in this process,
and commands that join it with --address), an interrupted sweep resumed, and a plain `fmnist sweep` that starts
its own local instance and is cut off by Ctrl-C. Trials train the seed network for one epoch on 1,200 images
at one thread, so results can be compared bit for bit across schedules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmnist import runs
from fmnist.core import errors, threads
from fmnist.results import compare
from fmnist.studies import sweeps
from fmnist.training import checkpoint
from tests.helpers import (
    DETERMINISM_RUN,
    assert_same_weights,
    command_line,
    descendants,
    require_real_data,
    run_cli,
    without_cluster,
)

# The tests on the session's cluster run in one pytest worker (pyproject: --dist loadgroup): one cluster.
CLUSTER = pytest.mark.xdist_group("ray-cluster")
TINY = {"epochs": 1, "limit": 1200}
SPACE = {"learning_rate": [0.001, 0.003]}


@pytest.mark.slow
@CLUSTER
def test_a_tiny_sweep_on_two_nodes_equals_the_same_trials_in_sequence(tmp_path, ray_cluster):
    require_real_data()
    config = sweeps.SweepConfig(model="seed-cnn", space=SPACE, fixed=TINY, seeds=2)
    parallel = sweeps.run(config, tmp_path / "parallel", threads_per_trial=1, workers=2, verbose=0)
    assert len(parallel) == 4 and len(list((tmp_path / "parallel").glob("trial-*"))) == 4
    # Trials ran on the cluster's nodes. Which node ran which is the scheduler's choice and depends on speed (a
    # warm worker may take every trial before the other node's has started), so it is not asserted.
    import ray

    cluster_nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(cluster_nodes) == 2 and {result["node"] for result in parallel} <= cluster_nodes
    sequential = sweeps.run_sequentially(config, tmp_path / "sequential", threads_per_trial=1)
    for a, b in zip(parallel, sequential):
        assert a["val_accuracy"] == b["val_accuracy"] and Path(a["run_dir"]).name == Path(b["run_dir"]).name
        assert_same_weights(a["run_dir"], b["run_dir"])
    summary = compare.summarise(parallel)
    means = {row["configuration"]: row["val_accuracy_mean"] for row in summary["configurations"]}
    assert summary["chosen"] == max(means, key=means.get)  # chosen on validation
    chosen = summary["configurations"][0]
    assert len(summary["test_accuracies"]) == 2 and "test_accuracy_mean" in chosen
    assert all("test_accuracy_mean" not in row for row in summary["configurations"][1:])  # only the chosen is tested
    paths = compare.write_summary(summary, tmp_path / "parallel")
    assert all(path.is_file() for path in paths)
    assert "(chosen)" in (tmp_path / "parallel" / "summary.md").read_text()


@pytest.mark.slow
@CLUSTER
def test_reproduce_with_workers_trains_seeds_on_ray_like_a_fresh_cli_run(tmp_path, capsys, ray_cluster, fresh_cli_run):
    require_real_data()
    code, _, err = run_cli(
        capsys,
        "reproduce",
        "--epochs",
        DETERMINISM_RUN["epochs"],
        "--limit",
        DETERMINISM_RUN["limit"],
        "--seeds",
        2,
        "--threads",
        DETERMINISM_RUN["threads"],
        "--quiet",
        "--workers",
        2,
        "--out",
        tmp_path / "parallel",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "parallel" / "summary.json").read_text())
    assert set(summary["seeds"]) == {"0", "1"} and (tmp_path / "parallel" / "seed-1" / runs.REPORT_HTML).is_file()
    # Seed 1 trained in a Ray worker equals the same run trained by `fmnist train` in a new process.
    assert runs.read_config(tmp_path / "parallel" / "seed-1")["seed"] == DETERMINISM_RUN["seed"]
    ray_trial, fresh = tmp_path / "parallel" / "seed-1", fresh_cli_run
    assert runs.read_history(ray_trial)[-1]["val_accuracy"] == runs.read_history(fresh)[-1]["val_accuracy"]
    assert_same_weights(ray_trial, fresh)
    # ...and both ran MKL alike: in its reproducible mode, where this torch has MKL.
    machines = [runs.read_config(run)["machine"] for run in (ray_trial, fresh)]
    assert machines[0]["mkl_cbwr"] == machines[1]["mkl_cbwr"] == threads.mkl_cnr_branch()


def sweep_command(out: Path, *extra, vary: str = "learning_rate=0.001,0.003", fixed: str = "epochs=1") -> list[str]:
    """Two trials (two configurations, one seed)."""
    return [
        sys.executable,
        "-m",
        "fmnist",
        "sweep",
        "--model",
        "seed-cnn",
        "--vary",
        vary,
        "--set",
        fixed,
        "--set",
        "limit=1200",
        "--seeds",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


LONG = 16  # epochs of the trial an interrupt must cut off (the other trial trains one)


def epochs_done(run_dir: Path) -> int:
    return len(runs.read_history(run_dir)) if (run_dir / runs.HISTORY).is_file() else 0


@pytest.mark.slow
@CLUSTER
def test_an_interrupted_sweep_finishes_only_the_missing_trials(tmp_path, ray_cluster):
    require_real_data()
    out = tmp_path / "sweep"
    short, long = out / "trial-epochs=1-seed0", out / f"trial-epochs={LONG}-seed0"
    process = subprocess.Popen(
        sweep_command(
            out, "--workers", "1", "--address", ray_cluster.address, vary=f"epochs=1,{LONG}", fixed="dropout=0.5"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while process.poll() is None and not (epochs_done(short) == 1 and 2 <= epochs_done(long) < LONG // 2):
        time.sleep(0.05)  # wait for a state: the short trial done, the long one under way
    assert epochs_done(short) == 1 and epochs_done(long) < LONG, process.communicate()
    # A lost worker: the long trial's process dies, then the command is interrupted. On the cluster, trials run
    # in its workers, not below the command: the one trial running anywhere here is this sweep's.
    workers = running_trials(ray_cluster)
    assert workers, "no trial process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the command's whole process group
    _, err = process.communicate(timeout=300)
    # Ray may see the lost worker before the Ctrl-C (a failed trial, exit 2) or not (interrupted, 130); either
    # way fmnist's last word is one line: what did not finish and how to continue (Tune logs above it).
    last = err.strip().splitlines()[-1]
    assert process.returncode in (2, 130) and last.startswith("error:"), err
    assert "1 of 2 trials did not finish" in last and "run the same command again" in last
    cut_at, counted = runs.read_history(long), checkpoint.resume_epoch(long)
    assert 2 <= len(cut_at) < LONG, "the long trial must have been cut off mid-training"
    # A kill between an epoch's history and its checkpoint leaves history one epoch ahead: the checkpoint
    # counts (runs.py), so that epoch is trained again, to the same figures with timings of its own.
    assert counted in (len(cut_at), len(cut_at) - 1)
    finished_at = (short / runs.HISTORY).stat().st_mtime_ns
    # The same command again: Tune restores the experiment the command left in OUT/tune, and this time it ends.
    again = subprocess.run(
        sweep_command(
            out, "--workers", "1", "--address", ray_cluster.address, vary=f"epochs=1,{LONG}", fixed="dropout=0.5"
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (short / runs.HISTORY).stat().st_mtime_ns == finished_at  # not trained again
    history, summary = runs.read_history(long), json.loads((out / "summary.json").read_text())
    assert len(summary["configurations"]) == 2 and len(history) == LONG
    assert history[:counted] == cut_at[:counted]  # continued from its checkpoint: the epochs it counts, as they were
    assert learned(history[: len(cut_at)]) == learned(cut_at)


@pytest.mark.slow
@CLUSTER
def test_a_failed_trial_is_one_line_that_says_why(tmp_path, ray_cluster):
    require_real_data()
    diverging = sweeps.SweepConfig(
        model="seed-cnn", space={"learning_rate": [1e30]}, fixed={**TINY, "optimizer": "sgd"}, seeds=1
    )
    with pytest.raises(errors.FmnistError) as failed:
        sweeps.run(diverging, tmp_path / "sweep", threads_per_trial=1, workers=1, verbose=0)
    assert not isinstance(failed.value, errors.Interrupted)
    message = str(failed.value)
    assert message.startswith("1 of 1 trials did not finish") and "\n" not in message
    assert "a trial failed: training loss became nan in epoch 1" in message  # the worker's own error, in its words


@pytest.mark.slow
def test_ctrl_c_cuts_a_running_trial_off_and_says_how_to_continue(tmp_path):
    require_real_data()
    out, epochs = tmp_path / "sweep", 5_000  # minutes of epochs: the trial is still running when the command ends
    trial = out / f"trial-epochs={epochs}-seed0"
    process = subprocess.Popen(
        sweep_command(out, "--workers", "1", vary=f"epochs={epochs}", fixed="dropout=0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=without_cluster(),
    )
    while process.poll() is None and epochs_done(trial) < 2:
        time.sleep(0.05)  # wait for a state: the trial under way
    workers = [pid for pid in descendants(process.pid) if "ImplicitFunc" in command_line(pid)]
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the command's whole process group
    _, err = process.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    assert process.returncode == 130 and last.startswith("error: interrupted: 1 of 1 trials did not finish"), err
    assert "run the same command again" in last
    assert "Tuner.restore" not in err  # Tune's own advice is not how fmnist continues
    assert workers and 2 <= checkpoint.resume_epoch(trial) < epochs  # cut off, its checkpoint kept for the next run
    deadline = time.monotonic() + 120
    while any(command_line(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # wait for a state: Ray stops the trial's process once the command has ended
    assert not any(command_line(pid) for pid in workers), "the trial kept training after the command ended"


def running_trials(cluster) -> list[int]:
    """The cluster's processes that run a trial now (Ray names a trial's process after its trainable)."""
    return [pid for pid in cluster.processes() if "ImplicitFunc" in command_line(pid)]


def learned(history: list[dict]) -> list[dict]:
    """A history's figures without its timings."""
    return [{key: row[key] for key in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")} for row in history]


@pytest.mark.slow
def test_without_ray_the_command_says_how_to_get_it(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from fmnist import cli; "  # as if Ray were not installed
        f"sys.exit(cli.main(['sweep', '--vary', 'learning_rate=0.1', '--out', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and "pip install 'fmnist[ray]'" in result.stderr


def test_bad_sweeps_are_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", "--vary", "colour=red", "--out", tmp_path)
    assert code == 2 and "not a training setting" in err
    (tmp_path / "bad.toml").write_text("model = 'seed-cnn'\n[space]\nlearning_rate = 0.1\n")
    code, _, err = run_cli(capsys, "sweep", "--file", tmp_path / "bad.toml", "--out", tmp_path)
    assert code == 2 and "non-empty list" in err
    (tmp_path / "broken.toml").write_text("model = \n")
    code, _, err = run_cli(capsys, "sweep", "--file", tmp_path / "broken.toml", "--out", tmp_path)
    assert code == 2 and "not valid TOML" in err
    code, _, err = run_cli(
        capsys, "sweep", "--vary", "learning_rate=0.1,0.2", "--set", "validation_fraction=0", "--out", tmp_path
    )
    assert code == 2 and "a sweep chooses on validation" in err
    code, _, err = run_cli(capsys, "sweep", "--vary", "epochs=1,2", "--set", "epochs=3", "--out", tmp_path)
    assert code == 2 and "epochs: both varied and held fixed" in err
    # a zero is a count given, not "the default": each used to run (--threads 0 ended in ZeroDivisionError)
    for flags, said in (
        (["--seeds", 0], "seeds must be >= 1, got 0"),
        (["--samples", 0], "samples must be >= 1, got 0"),
        (["--threads", 0], "--threads must be 1 or more, got 0"),
        (["--workers", 0], "--workers must be 1 or more, got 0"),
    ):
        code, _, err = run_cli(
            capsys, "sweep", "--vary", "epochs=1,2", "--search", "random", *flags, "--out", tmp_path / "zero"
        )
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "zero").exists()
