"""Shared test fixtures: tiny IDX files written to temp dirs, and a real HTTP server on loopback."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fmnist import cli, data

REAL_DATA = data.SYSTEM_DIR


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, data.IDX_UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_tiny_dataset(directory: Path, num_train: int = 12, num_test: int = 6, seed: int = 0,
                       compress: bool = True) -> dict[str, data.IdxFile]:
    """Four small IDX files like Fashion-MNIST's, and the file specs (with checksums) that match them."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(num_test) % 10).astype(np.uint8),
    }
    specs = {}
    for key, array in arrays.items():
        raw = idx_bytes(array)
        name = data.FILES[key].filename
        if compress:
            (directory / name).write_bytes(gzip.compress(raw))
        else:
            (directory / name.removesuffix(".gz")).write_bytes(raw)
        specs[key] = data.IdxFile(name, hashlib.sha256(raw).hexdigest(), len(array), array.ndim)
    return specs


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`. Hostile paths, each bounded in bytes and time so the server stops by itself:
    /drop/   announces the full length, sends half, hangs up;
    /trickle/ announces the full length, then sends one byte every 0.2 s (at most 60 s);
    /endless/ sends zeros with no length, until the client stops reading (at most 64 MB);
    /huge/   announces 300 MB, then sends zeros the same way."""
    root: Path

    def do_GET(self):  # noqa: N802 (http.server's naming)
        kind = self.path.split("/")[1]
        if kind in ("trickle", "endless", "huge"):
            return self.send_hostile(kind)
        dropping = self.path.startswith("/drop/")
        path = self.root / self.path.removeprefix("/drop/").lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if dropping else body)
        if dropping:
            self.close_connection = True

    def send_hostile(self, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "300000000" if kind == "huge" else "1000")
        if kind == "endless":
            self.send_header("Connection", "close")
        if kind != "endless":
            self.end_headers()
        else:  # no Content-Length: the body ends when the connection does
            self._headers_buffer = [h for h in self._headers_buffer if not h.startswith(b"Content-Length")]
            self.end_headers()
        try:
            if kind == "trickle":
                for _ in range(300):
                    self.wfile.write(b"\x1f")
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                for _ in range(1024):
                    self.wfile.write(bytes(1 << 16))
        except OSError:  # the client gave up: what the test waits for
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


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
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-package")
    return cache / "fashion-mnist"


def require_real_data():
    """The real dataset: CI installs it, so there a missing copy is a failure, not a skip."""
    if not (REAL_DATA / data.FILES["train_images"].filename).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_DATA} is missing: CI must install dataset-fashion-mnist")
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    return REAL_DATA


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small run trained once per test session on real data (3 epochs on 12,000 images, ~87 %)."""
    require_real_data()
    from fmnist import configs, training

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    training.fit(configs.TrainConfig(epochs=3, limit=12_000, threads=2, seed=0), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def real_dataset():
    require_real_data()
    return data.load()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`fmnist ARGS...` in this process (the real CLI code; no interpreter start-up): (exit code, stdout, stderr).
    An exception escaping the CLI fails the calling test, as a traceback would."""
    try:
        code = cli.main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse refuses bad arguments this way
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# The reference for "same seed, same weights in any process": one epoch of the seed network on 1,200 images.
DETERMINISM_RUN = {"epochs": 1, "limit": 1200, "threads": 1, "seed": 1}


def fresh_environment() -> dict:
    """This environment without what `import fmnist` set in it: a new process starts as a user's would."""
    return {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "GOMP_SPINCOUNT")}


@pytest.fixture(scope="session")
def fresh_cli_run(tmp_path_factory):
    """DETERMINISM_RUN trained by `fmnist train` in a new process (the reference every other process must equal)."""
    require_real_data()
    out = tmp_path_factory.mktemp("fresh") / "run"
    flags = [f"--{name}={value}" for name, value in DETERMINISM_RUN.items()]
    result = subprocess.run([sys.executable, "-m", "fmnist", "train", *flags, "--quiet", "--out", str(out)],
                            capture_output=True, text=True, env=fresh_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def weights_of(run_dir) -> dict:
    import safetensors.torch

    from fmnist import runs

    return safetensors.torch.load_file(str(Path(run_dir) / runs.WEIGHTS))


def assert_same_weights(run_a, run_b) -> None:
    """Bit for bit, tensor for tensor."""
    import torch

    a, b = weights_of(run_a), weights_of(run_b)
    assert a.keys() == b.keys()
    different = {k: (a[k] - b[k]).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not different, f"weights differ (largest difference per tensor): {different}"
