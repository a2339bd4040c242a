"""Same seed, same weights in any process: a fresh `fmnist train`, this process after other work, a new
thread, a Ray worker (test_sweep.py) — compared bit for bit — and the settings that make it so."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from fmnist import api, runs
from fmnist.core import threads
from fmnist.training import configs, loop
from tests.helpers import DETERMINISM_RUN, assert_same_weights, fresh_environment, require_real_data


@pytest.mark.slow
def test_a_run_after_other_work_in_this_process_equals_a_fresh_cli_run(tmp_path, fresh_cli_run):
    require_real_data()
    # Deliberately different work first: another network, two threads, training, evaluation and prediction.
    other = api.train(
        model="fast-cnn", epochs=1, limit=600, threads=2, seed=7, out=tmp_path / "other", show_progress=False
    )
    other.predict(api.load_data(show_progress=False).test_images[:300])
    loop.fit(configs.TrainConfig(**DETERMINISM_RUN), tmp_path / "here")
    assert_same_weights(tmp_path / "here", fresh_cli_run)
    # On a new thread, as a notebook's executor or Ray Tune's runner thread trains.
    worker = threading.Thread(target=loop.fit, args=(configs.TrainConfig(**DETERMINISM_RUN), tmp_path / "thread"))
    worker.start()
    worker.join()
    assert_same_weights(tmp_path / "thread", fresh_cli_run)
    assert (
        runs.read_config(tmp_path / "here")["machine"]["mkl_cbwr"]
        == runs.read_config(fresh_cli_run)["machine"]["mkl_cbwr"]
    )


def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**fresh_environment(), **env}
    )


@pytest.mark.slow
def test_import_fmnist_puts_mkl_in_its_reproducible_mode_unless_the_user_chose():
    if threads.mkl_cnr_branch() is None:
        pytest.skip("this torch has no MKL")
    ask = (
        "import fmnist, torch; from fmnist.core import threads; torch.ones(64, 64) @ torch.ones(64, 64); "
        "print(threads.mkl_cnr_branch())"
    )
    assert python(ask).stdout.split() == [threads.MKL_BRANCH]
    assert python(ask, MKL_CBWR="COMPATIBLE").stdout.split() == ["COMPATIBLE"]  # the user's choice wins
    # torch computing before fmnist is imported: too late for MKL; training says so instead of differing silently.
    late = python(
        "import torch; torch.ones(64, 64) @ torch.ones(64, 64); import fmnist; "
        "from fmnist.core import machine, threads; print(threads.mkl_cnr_branch()); "
        "machine.check_reproducible_mode()"
    )
    assert late.returncode == 0 and late.stdout.split() == ["OFF"]
    assert "import fmnist before torch" in late.stderr


def test_configure_reproducibility_sets_mkl_cbwr_only_where_the_user_did_not():
    environ = {}
    assert threads.configure_reproducibility(environ) and environ == {"MKL_CBWR": threads.MKL_BRANCH}
    chosen = {"MKL_CBWR": "AVX2"}
    assert not threads.configure_reproducibility(chosen) and chosen == {"MKL_CBWR": "AVX2"}
