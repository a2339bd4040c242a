"""The package as people install it: a wheel, built from the sdist, installed in a fresh venv outside the
source tree, runs the CLI, serves its page (static files included) and imports the API."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    """Poll /health until the server answers (a state, not a time); fail if the process dies."""
    while server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"the server exited: {server.stderr.read()}")


def test_the_wheel_installs_and_works_outside_the_source_tree(tmp_path, trained_run):
    # sdist first, then the wheel from the unpacked sdist: what the sdist leaves out, the wheel lacks too.
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("fmnist-*.whl"))
    # The venv reuses this environment's torch and friends (no download); fmnist itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    python, fmnist_cli = tmp_path / "venv/bin/python", tmp_path / "venv/bin/fmnist"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run([str(python), "-c", "import fmnist, pathlib; print(pathlib.Path(fmnist.__file__).parent);"
                            "print(sorted(fmnist.__all__)); print(fmnist.train.__doc__ is not None)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    package = Path(where.stdout.splitlines()[0])
    assert package.is_relative_to(tmp_path / "venv") and (package / "py.typed").is_file()
    assert "'train'" in where.stdout and where.stdout.splitlines()[-1] == "True"
    helped = subprocess.run([str(fmnist_cli), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "reproduce" in helped.stdout
    port = free_port()
    server = subprocess.Popen([str(fmnist_cli), "serve", str(trained_run), "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=60)
