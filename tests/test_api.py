"""The Python API as a user calls it, in a temp folder: data, training, evaluation, prediction, report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import fmnist
from fmnist.core import errors
from tests.helpers import require_real_data


@pytest.mark.slow
def test_the_api_end_to_end(tmp_path, monkeypatch):
    require_real_data()
    monkeypatch.chdir(tmp_path)
    dataset = fmnist.load_data(show_progress=False)
    assert dataset.train_images.shape == (60_000, 28, 28) and len(fmnist.CLASS_NAMES) == 10
    run = fmnist.train(model="seed-cnn", epochs=1, limit=3000, threads=2, out="runs/quick", show_progress=False)
    assert isinstance(run, fmnist.Run) and (tmp_path / "runs/quick/model.safetensors").is_file()
    assert run.config.epochs == 1 and len(run.history) == 1
    metrics = run.evaluate()
    assert metrics["test"]["count"] == 10_000 and metrics["test"]["accuracy"] > 0.5
    arrays = run.predict(dataset.test_images[:8])
    assert arrays.probabilities.shape == (8, 10) and np.allclose(arrays.probabilities.sum(1), 1, atol=1e-5)
    assert arrays.names == [fmnist.CLASS_NAMES[c] for c in arrays.classes]
    none = run.predict(dataset.test_images[:0])  # no images: no rows (was torch.cat's ValueError)
    assert none.probabilities.shape == (0, 10) and none.classes.shape == (0,) and none.names == []
    # An image file as a photo would be: dark item on a light background, larger than 28x28.
    PIL.Image.fromarray(255 - dataset.test_images[0]).resize((112, 112)).save("shoe.png")
    from_file = run.predict(["shoe.png"])
    assert from_file.classes.shape == (1,) and from_file.probabilities.shape == (1, 10)
    html, markdown = run.report()
    assert html.is_file() and markdown.is_file() and "Test accuracy" in html.read_text()
    again = fmnist.open_run("runs/quick")
    assert again.history == run.history and repr(again) == "fmnist.Run('runs/quick')"
    resumed = fmnist.train(out="runs/quick", resume=True, epochs=2, show_progress=False)
    assert [row["epoch"] for row in resumed.history] == [1, 2]


def test_api_errors_are_clear(tmp_path):
    with pytest.raises(errors.RunError, match="holds no run"):
        fmnist.open_run(tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        fmnist.train(model="resnet", out=tmp_path / "x")
    with pytest.raises(ValueError, match="either a TrainConfig or settings"):
        fmnist.train(fmnist.TrainConfig(), out=tmp_path / "y", epochs=2)


def test_the_api_is_documented_and_typed():
    import pathlib

    for name in fmnist.__all__:
        value = getattr(fmnist, name)
        assert name == "CLASS_NAMES" or value.__doc__, f"{name} has no docstring"
    assert (pathlib.Path(fmnist.__file__).parent / "py.typed").is_file()


@pytest.mark.slow
def test_completion_and_help_show_the_api():
    # In a new process: names load lazily, and dir() must list them before any is used (PEP 562 __dir__).
    code = (
        "import fmnist, pydoc; names = dir(fmnist); print(all(n in names for n in fmnist.__all__)); "
        "print('train(config' in pydoc.render_doc(fmnist, renderer=pydoc.plaintext))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_help_and_version_import_no_torch():
    """`fmnist --help`, every command's --help and --version answer at once: no torch (nor numba, FastAPI,
    onnx) is imported for them, in a fresh process as a user's shell starts one."""
    from fmnist.cli import flags
    from fmnist.cli.main import HANDLERS

    commands = [[], *([name.replace("_", "-")] for name in flags.COMMANDS)]
    assert len(commands) == len(HANDLERS) + 1
    probe = (
        "import sys, contextlib\n"
        "from fmnist import cli\n"
        "for argv in {argvs!r}:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
        "        cli.main(argv)\n"
        "heavy = ('torch', 'numba', 'fastapi', 'onnx', 'sklearn', 'matplotlib')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    ).format(argvs=[[*command, "--help"] for command in commands] + [["--version"]])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_missing_extra_is_refused_before_torch_loads(tmp_path):
    """Each command that needs an extra says which, in one line, before the machine set-up imports torch: in a
    fresh process where each extra's first module is blocked (as if not installed)."""
    cases = [
        (["export", "RUN"], "onnx"),
        (["export", "RUN", "--format", "keras"], "keras"),
        (["import-keras", "model.keras"], "keras"),
        (["serve", "RUN"], "serve"),
        (["serve", "RUN", "--replicas", "2"], "ray"),
        (["sweep", "--vary", "learning_rate=0.1"], "ray"),
        (["reproduce", "--workers", "2"], "ray"),
    ]
    probe = (
        "import contextlib, io, json, sys\n"
        "from fmnist import cli\n"
        "from fmnist.core import errors\n"
        "for argv, extra in json.loads(sys.argv[1]):\n"
        "    blocked = errors.EXTRAS[extra][0]\n"
        "    sys.modules[blocked] = None  # `import` fails: as if the extra were not installed\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = cli.main(argv)\n"
        "    del sys.modules[blocked]\n"
        "    print(code, 'torch' in sys.modules, err.getvalue().count(chr(10)), repr(err.getvalue()))\n"
    )
    argv = [sys.executable, "-c", probe, json.dumps(cases)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for (argv, extra), line in zip(cases, done.stdout.splitlines(), strict=True):
        code, torch_loaded, lines, message = line.split(" ", 3)
        assert (code, torch_loaded, lines) == ("2", "False", "1"), (argv, line)
        assert f"pip install 'fmnist[{extra}]'" in message and f"fmnist {argv[0]}" in message, (argv, line)


def test_predict_takes_what_users_hold(trained_run, real_dataset, tmp_path):
    """Paths, PIL images, uint8 and float arrays, torch tensors; one image or a batch; the same answers."""
    import torch

    run = fmnist.open_run(trained_run)
    images = real_dataset.test_images[:3]
    expected = run.predict(images).names
    photo = PIL.Image.fromarray(255 - images[0]).resize((112, 112))  # a product photo: dark item on white
    photo.save(tmp_path / "item.png")
    assert run.predict(images[0]).names == expected[:1]  # one image
    assert run.predict(images.astype(np.float32) / 255).names == expected  # floats in [0, 1]
    assert run.predict(torch.from_numpy(images)).names == expected  # a tensor
    assert run.predict(torch.from_numpy(images[..., None])).names == expected  # with a channel of one
    from_photo = run.predict(photo).names
    assert run.predict([photo, photo]).names == from_photo * 2  # PIL images
    assert run.predict(tmp_path / "item.png").names == from_photo  # a path
    assert run.predict([str(tmp_path / "item.png")]).names == from_photo  # paths
    assert run.predict(np.asarray(photo)).names == from_photo  # a photo's pixels
    with pytest.raises(TypeError, match="cannot predict dict: give image file paths, PIL images"):
        run.predict({"not": "images"})
    with pytest.raises(errors.InputError, match=r"values in \[0, 1\]"):
        run.predict(images.astype(np.float32))  # 0-255 in floats: the range is declared
    with pytest.raises(errors.InputError, match="an array of shape"):
        run.predict(np.zeros((2, 30, 30), np.float32))
