"""Threads on a shared machine: the default thread count, OpenMP's waiting, and training beside another."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from fmnist import runs
from fmnist.core import threads
from tests.helpers import require_real_data, run_cli


@pytest.mark.parametrize(
    "cpus, quota, expected", [(4, None, 4), (4, 2.0, 2), (4, 1.5, 1), (4, 0.3, 1), (2, 8.0, 2), (1, None, 1)]
)
def test_thread_count_from_affinity_and_quota(cpus, quota, expected):
    count, why = threads.available_cpus(affinity=set(range(cpus)), quota=quota)
    assert count == expected
    assert ("quota" in why) == (quota is not None) and f"{cpus}" in why


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_quota(tmp_path) == quota


@pytest.mark.parametrize(
    "others, cpus, used, spin",
    [
        (0, 2, 2, threads.SPIN_QUIET),
        (1, 2, 2, threads.SPIN_SHARED),
        (1, 4, 2, threads.SPIN_QUIET),
        (3, 4, 2, threads.SPIN_SHARED),
        (0, 1, 1, threads.SPIN_QUIET),
    ],
)
def test_spin_is_short_where_others_threads_want_the_cpus(others, cpus, used, spin):
    assert threads.spin_count(others, cpus, used) == spin


@pytest.mark.parametrize(
    "counts, others", [([1, 1, 1], 0), ([3, 2, 4], 2), ([2, 1, 2], 1), ([1, 5, 1], 0), ([5, 5, 5, 1, 1], 4)]
)
def test_others_running_is_the_median_read_less_this_process(counts, others):
    for own in (1, 2):  # this thread; and an OpenMP thread of ours still spinning: not a neighbour either
        texts = iter(f"cpu  1 2 3 4\nctxt 99\nprocs_running {count + own - 1}\nprocs_blocked 0\n" for count in counts)
        assert threads.others_running(texts.__next__, reads=len(counts), own=own) == others


def test_own_running_threads_from_the_task_states(tmp_path):
    for task, state in ((1, "R"), (2, "S"), (3, "R"), (4, "D")):
        (tmp_path / str(task)).mkdir()
        (tmp_path / str(task) / "stat").write_text(f"{task} (a (name) with spaces) {state} 1 2 3\n")
    assert threads.own_running(tmp_path) == 2
    assert threads.own_running(tmp_path / "missing") == 1  # at least the thread asking
    assert threads.own_running() >= 1  # this process, read for real


@pytest.mark.parametrize(
    "others, cpus, chosen, expected",
    [(0, 2, 2, 2), (1, 2, 2, 1), (2, 2, 2, 1), (5, 2, 2, 1), (1, 4, 4, 3), (0, 4, 2, 2), (1, 4, 2, 2)],
)
def test_threads_beside_others_leave_their_cpus_alone(others, cpus, chosen, expected):
    assert threads.threads_beside(others, cpus, chosen) == expected


def test_following_the_load_sets_the_threads_and_gives_them_back(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: (2, "2 CPUs (a test)"))
    before = torch.get_num_threads()
    try:
        assert threads.follow_load(2, others=1) == 1 == torch.get_num_threads()  # a busy process arrived
        assert threads.follow_load(2, others=0) == 2 == torch.get_num_threads()  # and went
    finally:
        torch.set_num_threads(before)


def test_others_running_sees_a_busy_process():
    """The real /proc/stat: a busy loop beside this process is seen (polled: it must first be scheduled)."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert any(threads.others_running(reads=1) >= 1 for _ in range(2000))
    finally:
        loop.kill()
        loop.wait()


@pytest.mark.parametrize("text", ["cpu 1 2 3\n", "procs_running many\n", "procs_running\n"])
def test_others_running_unreadable_is_zero(text):
    assert threads.others_running(lambda: text, reads=2) == 0


def test_others_running_without_proc_is_zero(tmp_path):
    assert threads.others_running((tmp_path / "missing").read_text, reads=2) == 0


def test_spinning_is_set_only_where_the_user_chose_nothing():
    for others, spin in ((0, threads.SPIN_QUIET), (os.cpu_count(), threads.SPIN_SHARED)):  # more than could fit
        environ = {}
        assert threads.configure_waiting(environ, others) == str(spin) and environ == {"GOMP_SPINCOUNT": str(spin)}
    for chosen in ({"OMP_WAIT_POLICY": "passive"}, {"GOMP_SPINCOUNT": "5000"}):
        environ = dict(chosen)
        assert threads.configure_waiting(environ, 0) is None and environ == chosen


PROBE = "import os, fmnist, torch; print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())"


@pytest.mark.slow
def test_import_fmnist_sets_waiting_before_torch_loads():
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=clean)
    assert result.stdout.split()[0] in (str(threads.SPIN_QUIET), str(threads.SPIN_SHARED)), result.stderr
    passive = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, "OMP_WAIT_POLICY": "passive"}
    )
    assert passive.stdout.split()[0] == "None", passive.stderr


WHERE_GOMP_PARALLEL_BINDS = """
import ctypes, os, sys, fmnist, torch, numba
from fmnist.nets.kernels import norm_kernels
norm_kernels.available()  # numba's OpenMP layer loaded, its kernels run


class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


process = ctypes.CDLL(None)  # dlsym(RTLD_DEFAULT): the global scope, where an undefined symbol is looked up first
info = DlInfo()
process.dladdr(ctypes.cast(process.GOMP_parallel, ctypes.c_void_p), ctypes.byref(info))
deep = bool(sys.getdlopenflags() & os.RTLD_DEEPBIND)  # a module's own libraries first: not how Python loads them
print(numba.threading_layer(), info.fname.decode(), deep)
"""


@pytest.mark.slow
def test_numba_runs_on_torchs_openmp_pool():
    """One pool for both, as threads.py says: numba's OpenMP layer binds its GOMP_parallel to torch's libgomp.
    Its extension is loaded without RTLD_DEEPBIND, so an undefined symbol of it binds to the global scope's
    definition first, and that one is torch's (asked of the loader itself, dlsym and dladdr, once numba's layer
    is loaded and has run)."""
    result = subprocess.run([sys.executable, "-c", WHERE_GOMP_PARALLEL_BINDS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    layer, library, deep = result.stdout.split()
    if layer != "omp":
        pytest.skip(f"numba's threading layer here is not OpenMP: {layer}")
    assert f"{os.sep}torch{os.sep}lib{os.sep}libgomp" in library and deep == "False", result.stdout


def test_run_records_the_cpus_it_may_use(trained_run):
    machine = json.loads((trained_run / runs.CONFIG).read_text())["machine"]
    assert machine["available_cpus"] == threads.available_cpus()[0] and machine["cpu_limit"]
    assert machine["threads"] == 2  # the fixture asked for 2
    assert machine["malloc_keeps_freed"] == (platform.libc_ver()[0] == "glibc")  # set as training set up


@pytest.mark.slow
def test_two_trainings_at_once_give_the_weights_of_one_alone(tmp_path, capsys):
    """Contention changes timing only: two runs sharing the CPUs end with the weights of a run alone (trained
    in this process: any process gives the same weights, tests/training/test_determinism.py)."""
    require_real_data()
    command = ["train", "--epochs", "1", "--limit", "3000", "--seed", "7", "--threads", "2", "--quiet"]

    def start(name):
        return subprocess.Popen(
            [sys.executable, "-m", "fmnist", *command, "--out", str(tmp_path / name)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    assert run_cli(capsys, *command, "--out", tmp_path / "alone")[0] == 0
    together = [start("first"), start("second")]
    assert [process.wait() for process in together] == [0, 0]
    reference = safetensors.torch.load_file(str(tmp_path / "alone" / runs.WEIGHTS))
    for name in ("first", "second"):
        weights = safetensors.torch.load_file(str(tmp_path / name / runs.WEIGHTS))
        assert all(torch.equal(weights[key], reference[key]) for key in reference), name


def test_work_starts_on_the_cpus_others_leave_free_unless_the_count_was_chosen(monkeypatch):
    from fmnist.core import machine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: (2, "2 CPUs (a test)"))
    monkeypatch.setattr(threads, "others_running", lambda **_: 1)  # a busy process, there before us
    before = torch.get_num_threads()
    try:
        assert machine.set_up() == 2 and torch.get_num_threads() == 1  # asked for 2, started on 1
        assert machine.set_up(2) == 2 and torch.get_num_threads() == 2  # --threads 2: as asked
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun's or Ray's choice: as asked
        assert machine.set_up() == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
