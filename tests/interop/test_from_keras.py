"""Importing real Keras files (written by Keras itself, torch backend) and matching Keras's predictions;
hostile variants of those files (links, external storage, bombs, other wiring, bad weights) refused."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fmnist import runs
from fmnist.core import errors
from fmnist.interop import from_keras
from fmnist.nets import inference, seedcnn
from fmnist.training import recipe
from tests.helpers import once, run_cli


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, real_dataset):
    """Keras files written by real Keras (once for the session: a Keras start costs seconds)."""

    def make(out: Path) -> None:
        out.mkdir(parents=True)
        images = (real_dataset.test_images[:500].astype(np.float32) / 255.0)[..., None]
        np.save(out / "images.npy", images)
        script = Path(__file__).with_name("make_keras_models.py")
        command = [sys.executable, str(script), str(out), str(out / "images.npy")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    return once(tmp_path_factory, "keras", make)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed.keras", "seed.h5", "functional.keras", "functional.h5"])
def test_imported_model_predicts_what_keras_predicts(tmp_path, keras_files, real_dataset, name):
    run_dir = from_keras.import_keras(keras_files / name, tmp_path / "run")
    ours = inference.probabilities(inference.load_model(run_dir), real_dataset.test_images[:500])
    expected = np.load(keras_files / "expected.npy")
    assert np.abs(ours - expected).max() <= 1e-5
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_wrong_architecture_names_the_layer(tmp_path, keras_files):
    with pytest.raises(errors.InputError, match=r"layer 3 \(conv2d_\d+, Conv2D\): filters is 48, expected 64"):
        from_keras.import_keras(keras_files / "wrong.keras", tmp_path / "a")
    with pytest.raises(errors.InputError, match=r"layer 3 .*padding is valid, expected same"):
        from_keras.import_keras(keras_files / "wrong.h5", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_cli_import_then_evaluate(tmp_path, capsys, keras_files):
    run_dir = tmp_path / "imported"
    code, _, err = run_cli(capsys, "import-keras", keras_files / "seed.h5", "--out", run_dir)
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", run_dir)
    assert code == 0, err
    assert (run_dir / runs.METRICS).is_file() and (run_dir / runs.FIGURES / "confusion_matrix.png").is_file()
    code, _, err = run_cli(capsys, "report", run_dir)
    assert code == 0, err
    assert "imported, not trained here" in (run_dir / runs.REPORT_HTML).read_text()


@pytest.mark.slow
def test_not_a_keras_file(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(errors.InputError, match=r"neither a Keras 3 .keras archive nor an HDF5 .h5 file"):
        from_keras.import_keras(tmp_path / "model.keras", tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "fmnist", "import-keras", str(tmp_path / "missing.h5")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_training_steps_match_keras(tmp_path):
    """Three Adam steps from the same weights on the same batches: loss, gradients and Keras's Adam
    (epsilon placement included) give the same weights as real Keras's train_on_batch."""
    script = Path(__file__).with_name("keras_training_steps.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "steps.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(tmp_path / "steps.npz")
    network = seedcnn.SeedCNN(dropout=0.0)
    names = [f"{layer}.{part}" for layer in from_keras.WEIGHTED for part in ("kernel", "bias")]
    network.load_state_dict({name: torch.from_numpy(saved[f"initial_{i}"]) for i, name in enumerate(names)})
    optimizer = recipe.KerasAdam(network.parameters(), fused=True)
    for x, y in zip(saved["images"], saved["labels"]):
        loss = torch.nn.functional.cross_entropy(network(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for i, name in enumerate(names):
        ours = network.state_dict()[name].numpy()
        moved = np.abs(saved[f"trained_{i}"] - saved[f"initial_{i}"]).max()
        assert moved > 1e-4, f"{name} did not train"
        # Measured: 1e-6 with KerasAdam; PyTorch's own Adam (epsilon after bias correction) is off by 3e-3.
        assert np.abs(ours - saved[f"trained_{i}"]).max() <= 1e-5, name


# ---------------------------------------------------------------------------------------------
# Hostile and damaged Keras files, each made from a real one
KERNEL = from_keras.SHAPES["dense1.kernel"]


def dense_kernel_path(handle: h5py.File) -> str:
    """Where the first Dense kernel lives in a Keras HDF5 file (legacy .h5 or a .keras's weights)."""
    found = []
    handle.visititems(lambda name, item: found.append(name) if getattr(item, "shape", None) == KERNEL else None)
    return found[0]


def edited(source: Path, target: Path, edit) -> Path:
    """A copy of a .h5 file, or of a .keras archive whose weights file is, edited with h5py."""
    if source.suffix == ".h5":
        shutil.copy(source, target)
        with h5py.File(target, "r+") as handle:
            edit(handle, dense_kernel_path(handle))
        return target
    with zipfile.ZipFile(source) as archive:
        buffer = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(buffer, "r+") as handle:
        edit(handle, dense_kernel_path(handle))
    return rezipped(source, target, {"model.weights.h5": buffer.getvalue()})


def rezipped(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, replace.get(info.filename, archive.read(info)))
    return target


@pytest.fixture
def secret(tmp_path):
    """Another local file's data, shaped like the kernel: an import must never pull it in."""
    values = np.full(KERNEL, 7.0, np.float32)
    with h5py.File(tmp_path / "secret.h5", "w") as handle:
        handle["stolen"] = values
    (tmp_path / "secret.bin").write_bytes(values.tobytes())
    return tmp_path


def external_link(secret):
    def edit(handle, path):
        del handle[path]
        handle[path] = h5py.ExternalLink(str(secret / "secret.h5"), "stolen")

    return edit


def soft_link(secret):
    def edit(handle, path):
        handle["elsewhere"] = handle[path][()]
        del handle[path]
        handle[path] = h5py.SoftLink("/elsewhere")

    return edit


def external_storage(secret):
    def edit(handle, path):
        del handle[path]
        handle.create_dataset(path, KERNEL, "<f4", external=[(str(secret / "secret.bin"), 0, 4 * np.prod(KERNEL))])

    return edit


def virtual_dataset(secret):
    def edit(handle, path):
        del handle[path]
        layout = h5py.VirtualLayout(KERNEL, "<f4")
        layout[:] = h5py.VirtualSource(str(secret / "secret.h5"), "stolen", KERNEL)
        handle.create_virtual_dataset(path, layout)

    return edit


@pytest.mark.parametrize("name", ["seed.h5", "seed.keras"])
@pytest.mark.parametrize(
    "make, message",
    [
        (external_link, "ExternalLink to elsewhere: links are refused"),
        (soft_link, "SoftLink to elsewhere: links are refused"),
        (external_storage, "stored outside the file"),
        (virtual_dataset, "stored outside the file"),
    ],
)
def test_nothing_is_read_from_other_files(tmp_path, keras_files, secret, name, make, message):
    hostile = edited(keras_files / name, tmp_path / f"hostile-{name}", make(secret))
    with pytest.raises(errors.InputError, match=message):
        from_keras.import_keras(hostile, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def huge_dataset(handle, path):
    del handle[path]
    handle.create_dataset(path, (10**12,), "<f4", chunks=(4096,))  # 4 TB declared, nothing written


def with_value(value, dtype="<f4"):
    def edit(handle, path):
        data = handle[path][()].astype(dtype)
        data[0, 0] = value
        del handle[path]
        handle[path] = data

    return edit


@pytest.mark.parametrize("name", ["seed.h5", "seed.keras"])
@pytest.mark.parametrize(
    "edit, message",
    [
        (huge_dataset, r"float32 \(1000000000000,\), expected float32 \(3136, 256\)"),
        (with_value(np.nan), "dense1.kernel holds NaN or infinite values"),
        (with_value(np.inf), "dense1.kernel holds NaN or infinite values"),
        (with_value(1, np.int8), "int8 .*expected float32"),
        (with_value(0.5, np.float64), "float64 .*expected float32"),
    ],
)
def test_declared_sizes_types_and_values_are_checked_before_use(tmp_path, keras_files, name, edit, message):
    hostile = edited(keras_files / name, tmp_path / f"bad-{name}", edit)
    with pytest.raises(errors.InputError, match=message):
        from_keras.import_keras(hostile, tmp_path / "run")


def test_zip_bomb_and_oversized_files_are_refused_before_reading(tmp_path, keras_files):
    bomb = rezipped(
        keras_files / "seed.keras",
        tmp_path / "bomb.keras",
        {"model.weights.h5": bytes(from_keras.MAX_WEIGHTS_BYTES + 1)},
    )  # zeros: ~33 MB in ~33 KB
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(errors.TooLarge, match=r"model.weights.h5 in the archive is"):
        from_keras.import_keras(bomb, tmp_path / "a")
    config = json.dumps({"padding": " " * from_keras.MAX_CONFIG_BYTES}).encode()
    with pytest.raises(errors.TooLarge, match=r"config.json in the archive is"):
        from_keras.import_keras(
            rezipped(keras_files / "seed.keras", tmp_path / "c.keras", {"config.json": config}), tmp_path / "b"
        )
    big = shutil.copy(keras_files / "seed.h5", tmp_path / "big.h5")
    with open(big, "ab") as handle:
        handle.truncate(from_keras.MAX_WEIGHTS_BYTES + 1)
    with pytest.raises(errors.TooLarge, match="over the limit"):
        from_keras.import_keras(big, tmp_path / "c")


def keras_config(keras_file: Path) -> dict:
    with zipfile.ZipFile(keras_file) as archive:
        return json.loads(archive.read("config.json"))


def rewired(config: dict, layer: int, source: int) -> dict:
    """A copy of a Functional config where layer `layer` takes its input from layer `source`."""
    config = copy.deepcopy(config)
    layers = config["config"]["layers"]
    layers[layer]["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = layers[source]["config"]["name"]
    return config


def as_keras2_nodes(config: dict) -> dict:
    """The same graph in Keras 2's JSON: inbound_nodes [[[name, 0, 0, {}]]]."""
    config = copy.deepcopy(config)
    for layer in config["config"]["layers"]:
        if layer.get("inbound_nodes"):
            source = from_keras.sources(layer["inbound_nodes"])[0]
            layer["inbound_nodes"] = [[[source, 0, 0, {}]]]
    return config


def test_graph_wiring_is_checked_not_only_the_layer_list(tmp_path, keras_files):
    config = keras_config(keras_files / "functional.keras")
    assert len(from_keras.check_architecture(config)) == 5
    assert len(from_keras.check_architecture(as_keras2_nodes(config))) == 5
    skip_pool = rewired(config, 3, 1)  # conv2 fed by conv1: the first pooling layer skipped
    for variant in (skip_pool, as_keras2_nodes(skip_pool)):
        with pytest.raises(
            errors.InputError, match=r"takes its input from \['conv2d_f'\], expected \['max_pooling2d_f'\]"
        ):
            from_keras.check_architecture(variant)
    early_output = copy.deepcopy(config)
    early_output["config"]["output_layers"] = [config["config"]["layers"][6]["config"]["name"], 0, 0]
    with pytest.raises(errors.InputError, match="outputs"):
        from_keras.check_architecture(early_output)
    hostile = rezipped(
        keras_files / "functional.keras", tmp_path / "skip.keras", {"config.json": json.dumps(skip_pool).encode()}
    )
    with pytest.raises(errors.InputError, match="takes its input from"):
        from_keras.import_keras(hostile, tmp_path / "run")


@pytest.mark.parametrize(
    "config",
    [
        b"[1, 2]",
        b'{"class_name": "Sequential", "config": {"layers": 5}}',
        b'{"class_name": "Sequential", "config": {"layers": [1, 2]}}',
        b'{"class_name": "Lambda", "config": {"layers": []}}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not JSON",
    ],
    ids=["list", "layers-int", "layers-of-ints", "not-a-model", "deep-nesting", "not-json"],
)
def test_keras_json_of_the_wrong_shape_is_one_clear_error(tmp_path, capsys, keras_files, config):
    hostile = rezipped(keras_files / "seed.keras", tmp_path / "odd.keras", {"config.json": config})
    code, _, err = run_cli(capsys, "import-keras", hostile, "--out", tmp_path / "run")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err


def test_import_never_replaces_an_existing_run(tmp_path, capsys, keras_files):
    run_dir = from_keras.import_keras(keras_files / "seed.keras", tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    for name in ("seed.h5", "functional.keras"):
        with pytest.raises(errors.RunError, match="already holds a run"):
            from_keras.import_keras(keras_files / name, run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "import-keras", keras_files / "seed.h5", "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err
