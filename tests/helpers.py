"""Helpers shared by test modules (fixtures are in conftest.py): the dataset's file format, a hostile HTTP
mirror, the CLI in this process, weights compared, images, a served app, ports, processes."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from fmnist import cli
from fmnist.data import fashion
from fmnist.nets import inference

REAL_DATA = fashion.SYSTEM_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running(app, **options):
    """A real uvicorn server with fmnist's settings on a free loopback port, in a thread; yields its URL.

    log_config=None: uvicorn's loggers propagate, so tests read what the server logs (caplog).
    """
    import uvicorn

    from fmnist.serving import transport

    port = free_port()
    instance = uvicorn.Server(transport.server_config(app, "127.0.0.1", port, log_config=None, **options))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not instance.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


def as_product_photo(item: np.ndarray, size: int = 300) -> PIL.Image.Image:
    """A Fashion-MNIST item as a product photo: dark object, large, on a white page with margins."""
    big = PIL.Image.fromarray(255 - item).resize((size, size), PIL.Image.Resampling.BICUBIC)
    page = PIL.Image.new("L", (size + 160, size + 100), 255)
    page.paste(big, (90, 40))
    return page.convert("RGB")


def confident_correct(trained_run, dataset, count=5):
    network = inference.load_model(trained_run)
    tops = inference.classify(network, dataset.test_images[:200])
    chosen = [
        i for i, top in enumerate(tops) if top[0]["label"] == dataset.test_labels[i] and top[0]["probability"] > 0.9
    ]
    return network, chosen[:count]


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims absurd dimensions (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def without_cluster() -> dict:
    """This environment without the session cluster's authentication (conftest.ray_cluster): a command started
    with it starts a local Ray instance of its own, as a user's does."""
    return {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH")}


def descendants(root: int) -> list[int]:
    """Every process below `root` (Linux /proc): Ray's raylet and its workers are children of the command."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, fashion.IDX_UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_tiny_dataset(
    directory: Path, num_train: int = 12, num_test: int = 6, seed: int = 0, compress: bool = True
) -> dict[str, fashion.IdxFile]:
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
        name = fashion.FILES[key].filename
        if compress:
            (directory / name).write_bytes(gzip.compress(raw))
        else:
            (directory / name.removesuffix(".gz")).write_bytes(raw)
        specs[key] = fashion.IdxFile(name, hashlib.sha256(raw).hexdigest(), len(array), array.ndim)
    return specs


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`. Hostile paths, each bounded in bytes and time so the server stops by itself:
    /drop/   announces the full length, sends half, hangs up;
    /trickle/ announces the full length, then sends one byte every 0.2 s (at most 60 s);
    /endless/ sends zeros with no length, until the client stops reading (at most 64 MB);
    /huge/   announces 300 MB, then sends zeros the same way."""

    root: Path

    def do_GET(self):
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


def require_real_data():
    """The real dataset: CI installs it, so there a missing copy is a failure, not a skip."""
    if not (REAL_DATA / fashion.FILES["train_images"].filename).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_DATA} is missing: CI must install dataset-fashion-mnist")
        pytest.skip("the Debian package dataset-fashion-mnist is not installed")
    return REAL_DATA


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`fmnist ARGS...` in this process (the real CLI code; no interpreter start-up): (exit code, stdout, stderr).
    An exception escaping the CLI fails the calling test, as a traceback would."""
    try:
        code = cli.main([str(arg) for arg in args])
    except SystemExit as exit_:  # argparse refuses bad arguments this way
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# The session's trained run (conftest.trained_run): small, yet sure of many test images (0.70 on validation).
# Runs that join it in an ensemble, or learn from it, train on its split: the same limit.
TRAINED_RUN = {"epochs": 3, "limit": 3000, "threads": 2, "seed": 0}

# The reference for "same seed, same weights in any process": one epoch of the seed network on 1,200 images.
DETERMINISM_RUN = {"epochs": 1, "limit": 1200, "threads": 1, "seed": 1}


def fresh_environment() -> dict:
    """This environment without what `import fmnist` set in it: a new process starts as a user's would."""
    return {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "GOMP_SPINCOUNT")}


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


def once(tmp_path_factory, name: str, make) -> Path:
    """A directory made by `make(path)` once for the whole session, however many pytest workers share it
    (-n: the first to ask makes it, the others wait for it), then only read."""
    import filelock

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # every worker's common parent
    done = shared / name
    with filelock.FileLock(str(shared / f"{name}.lock")):
        if not done.is_dir():
            making = shared / f"{name}.making"
            shutil.rmtree(making, ignore_errors=True)
            make(making)
            making.rename(done)
    return done
