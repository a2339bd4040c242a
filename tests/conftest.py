"""Shared test fixtures (plain helpers are in helpers.py): a real HTTP mirror on loopback, an isolated
download cache, the real dataset, and runs trained once per session."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fmnist.data import fashion
from tests.helpers import DETERMINISM_RUN, TRAINED_RUN, MirrorHandler, fresh_environment, once, require_real_data


@pytest.fixture
def http_mirror(tmp_path):
    """(base URL, directory it serves): a real HTTP server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (MirrorHandler,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty download cache, no explicit data dir and no system package: only what a test provides."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(cache))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "no-system-package")
    return cache / "fashion-mnist"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small run trained once per test session on real data (helpers.TRAINED_RUN)."""
    require_real_data()
    from fmnist.training import configs, loop

    def train(path: Path) -> None:
        loop.fit(configs.TrainConfig(**TRAINED_RUN), path / "run")

    return once(tmp_path_factory, "trained", train) / "run"


@pytest.fixture(scope="session")
def real_dataset():
    require_real_data()
    return fashion.load()


@pytest.fixture(scope="session")
def fresh_cli_run(tmp_path_factory):
    """DETERMINISM_RUN trained by `fmnist train` in a new process (the reference every other process must equal)."""
    require_real_data()
    flags = [f"--{name}={value}" for name, value in DETERMINISM_RUN.items()]

    def train(path: Path) -> None:
        command = [sys.executable, "-m", "fmnist", "train", *flags, "--quiet", "--out", str(path / "run")]
        result = subprocess.run(command, capture_output=True, text=True, env=fresh_environment())
        assert result.returncode == 0, result.stderr[-3000:]

    return once(tmp_path_factory, "fresh", train) / "run"


RAY_AUTH = Path(tempfile.mkdtemp(prefix="fmnist-ray-auth-")) / "token"


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker for each CPU this process may use, and one more for the whole
    suite, whose servers, subprocesses and Ray start-ups leave a core idle while they wait; the fast tier
    (`-m "not slow"`) has few such waits, and each worker pays its own collection (~9 s of CPU). The figures
    behind the choice: results/zen4/determinism--test-suite-duration.json. PYTEST_XDIST_AUTO_NUM_WORKERS, if
    set, wins (as it does in pytest-xdist)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    fast_tier = "not slow" in (config.option.markexpr or "")
    return len(os.sched_getaffinity(0)) + (0 if fast_tier else 1)


def pytest_configure(config):
    """The session cluster's token authentication (ray_cluster), set before anything imports Ray: Ray reads it
    as it loads. With pytest workers (-n), the CPU kernels are compiled once here, before they start, instead
    of by each of them at once."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        # Workers outnumber the cores and most train with 2 threads: OpenMP's waiting threads sleep at once
        # (a user's own setting wins, as it does for fmnist) rather than spin through each other's time slices:
        # less CPU than fmnist's own choice for a shared machine, threads.SPIN_SHARED (measured: the suite's
        # record, results/zen4/determinism--test-suite-duration.json).
        os.environ.setdefault("GOMP_SPINCOUNT", "0")
        compile_kernels = (
            "from fmnist.nets.kernels import fused, norm_kernels; fused.available(); norm_kernels.available()"
        )
        subprocess.run([sys.executable, "-c", compile_kernels], capture_output=True, timeout=600)
    RAY_AUTH.write_text(secrets.token_hex(32))
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(RAY_AUTH)})


def pytest_unconfigure(config):
    shutil.rmtree(RAY_AUTH.parent, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class RayCluster:
    address: str
    sessions: tuple[int, ...]  # the sessions of its `ray start` commands: its daemons and workers stay in them

    def processes(self) -> list[int]:
        """This cluster's processes now (no other test's Ray)."""
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.name.isdigit() and os.getsid(int(entry.name)) in self.sessions:
                    found.append(int(entry.name))
        return found


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One Ray cluster of two nodes on this machine (1 CPU each), shared by the Ray tests (starting one costs
    seconds), with token authentication as on a real cluster (pytest_configure); this process is a driver
    connected to it, and a command started by a test joins it with `--address`. Yields a RayCluster."""
    ray = pytest.importorskip("ray")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cluster a session: its tests share a worker (xdist_group)
        try:
            (tmp_path_factory.getbasetemp().parent / "ray-cluster").touch(exist_ok=False)  # the first worker asking
        except FileExistsError:
            pytest.fail(
                "a second pytest worker asked for the Ray cluster: --dist loadgroup did not keep the Ray tests in "
                "one worker (pytest 9.2 with pytest-xdist 3.8 ignores xdist_group: pytest-xdist#1386)"
            )
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    port = 6390 + os.getpid() % 500
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = [
        ray_cli,
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=1",
        "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
    ]
    second = [
        ray_cli,
        "start",
        f"--address=127.0.0.1:{port}",
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
    ]
    sessions = []  # each `ray start` in a session of its own: its daemons and workers stay in it
    try:
        for command in (head, second):
            started = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            sessions.append(started.pid)
            assert started.wait(timeout=180) == 0, started.communicate()[1][-3000:]
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False, configure_logging=False)
        # `ray start` returns before the cluster's scheduler counts its node: wait for that state (two alive
        # nodes, a CPU each), or a first sweep may find one node and run every trial there
        deadline = time.monotonic() + 180  # a guard against a node that never comes, as `ray start`'s above
        while sum(node["Alive"] and node["Resources"].get("CPU", 0) >= 1 for node in ray.nodes()) < 2:
            assert time.monotonic() < deadline, f"the cluster counts {len(ray.nodes())} nodes, not 2"
            time.sleep(0.1)
        yield RayCluster(f"127.0.0.1:{port}", tuple(sessions))
    finally:
        ray.shutdown()
        for pid in RayCluster("", tuple(sessions)).processes():  # this cluster only: `ray stop` would end
            with contextlib.suppress(ProcessLookupError):  # every Ray process here, other tests' too
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
