"""The package as people install it: a wheel, built from the sdist, installed in a fresh venv outside the
source tree, runs the CLI, serves its page (static files included) and imports the API.

The venv holds the wheel and exactly the distributions its metadata asks for (with theirs), linked from
the environment this suite runs in — never the base interpreter's packages, nothing downloaded — so a
runtime dependency missing from pyproject.toml fails here, and `pip check` proves the metadata consistent."""

from __future__ import annotations

import email.parser
import importlib.metadata
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import PIL.Image
import pytest
from packaging.requirements import Requirement

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    """Poll /health until the server answers (a state, not a time); fail if the process dies."""
    while server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"the server exited: {server.stderr.read()}")


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        fields = email.parser.Parser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in fields.get_all("Requires-Dist") or []]


def runtime_closure(requirements: list[Requirement], extra: str = "") -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions these requirements need at run time (with fmnist's `extra`, else none), and
    theirs, recursively."""
    needed: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        if requirement.name == "fmnist":  # an extra naming others (all = onnx, serve, ...): theirs
            todo += [
                r for r in requirements if r.marker and any(r.marker.evaluate({"extra": e}) for e in requirement.extras)
            ]
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in needed:
            continue
        distribution = importlib.metadata.distribution(requirement.name)  # not installed: this test fails
        assert distribution.version in requirement.specifier or not requirement.specifier, (
            requirement,
            distribution.version,
        )
        needed[key] = distribution
        todo += [
            r for r in map(Requirement, distribution.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})
        ]
    return needed


def link_distributions(distributions, site_packages: Path) -> None:
    """Each distribution's top-level files and folders (by its RECORD), linked into site_packages."""
    for distribution in distributions.values():
        assert distribution.files is not None, f"{distribution.metadata['Name']} has no RECORD"
        tops = {file.parts[0] for file in distribution.files if file.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            target = site_packages / top
            if not target.exists():
                target.symlink_to(Path(distribution.locate_file(top)))


@pytest.mark.slow
def test_the_wheel_installs_and_works_outside_the_source_tree(tmp_path, trained_run, real_dataset, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the venv sees only its own site-packages
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))  # the pretrained run's copy goes there
    # sdist first, then the wheel from the unpacked sdist: what the sdist leaves out, the wheel lacks too.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("fmnist-*.whl"))
    assert wheel.stat().st_size < 2_000_000  # small, the pretrained weights included (docs/getting-started.md)
    # A bare venv; the wheel's own requirements linked in from this environment; fmnist from the wheel.
    # (pip runs from this environment into the venv with --python: the venv needs no pip of its own)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python, fmnist_cli = tmp_path / "venv/bin/python", tmp_path / "venv/bin/fmnist"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    link_distributions(runtime_closure(wheel_requirements(wheel)), site_packages)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "check"], capture_output=True, text=True, cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import fmnist, pathlib; print(pathlib.Path(fmnist.__file__).parent);"
            "print(sorted(fmnist.__all__)); print(fmnist.train.__doc__ is not None)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    package = Path(where.stdout.splitlines()[0])
    assert package.is_relative_to(tmp_path / "venv") and (package / "py.typed").is_file()
    assert "'train'" in where.stdout and where.stdout.splitlines()[-1] == "True"
    helped = subprocess.run([str(fmnist_cli), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "reproduce" in helped.stdout
    # The core alone: none of the extras' packages, the main job runs, an extra's command says what to install.
    extras = ("onnx", "onnxruntime", "fastapi", "uvicorn", "h5py", "ray")
    probe = f"import importlib.util as u; print([m for m in {extras!r} if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    study = subprocess.run(
        [
            str(fmnist_cli),
            "reproduce",
            "--epochs",
            "1",
            "--limit",
            "1200",
            "--threads",
            "2",
            "--quiet",
            "--out",
            "study",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert study.returncode == 0 and (tmp_path / "study" / "record.json").is_file(), study.stderr[-2000:]
    PIL.Image.fromarray(real_dataset.test_images[0]).save(tmp_path / "item.png")  # an ankle boot
    predicted = subprocess.run(
        [str(fmnist_cli), "predict", "--pretrained", "item.png"], capture_output=True, text=True, cwd=tmp_path
    )
    assert predicted.returncode == 0 and predicted.stdout.startswith("item.png: Ankle boot"), predicted.stderr
    for command, extra in ((["export", str(trained_run)], "onnx"), (["serve", str(trained_run)], "serve")):
        refused = subprocess.run([str(fmnist_cli), *command], capture_output=True, text=True, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"pip install 'fmnist[{extra}]'" in refused.stderr
    # With the serve extra: the page and its static files, from the installed package.
    link_distributions(runtime_closure(wheel_requirements(wheel), extra="serve"), site_packages)
    port = free_port()
    server = subprocess.Popen(
        [str(fmnist_cli), "serve", "--pretrained", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["model"] == "cnn94"
        assert "fmnist_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        server.terminate()
        server.wait(timeout=60)
