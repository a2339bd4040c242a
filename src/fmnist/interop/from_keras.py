"""Import a Keras model of the report's architecture (Keras 3 `.keras` or legacy HDF5 `.h5`).

Nothing from the file is executed, nothing outside it is read, and nothing is read before its size is known:
- the architecture is JSON (at most MAX_CONFIG_BYTES), compared layer by layer with the report's, and so
  is the wiring of a Functional model: each layer takes the previous layer's output, and only it;
- each weight array is reached through hard links only (no soft or external links), must be stored
  inside the file (no external storage, no virtual dataset, HDF5's own filters only), and must have the
  expected shape and a 4-byte float type before it is read; then its values must be finite;
- the HDF5 file (on disk, or inside the .keras archive) is at most MAX_WEIGHTS_BYTES, and a .keras archive
  at most MAX_ARCHIVE_BYTES on disk (zipfile parses the whole entry list on open: measured 122 MB for the
  206,000 empty entries 16 MiB can hold).
Keras's layouts (HWIO kernels, dense (in, out)) are fmnist's own, so the arrays are copied 1:1.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from fmnist import runs
from fmnist.core import errors, files
from fmnist.data import fashion, seed_report
from fmnist.nets import seedcnn
from fmnist.training import configs

MAX_CONFIG_BYTES = 1 << 20  # the report's model configuration is about 7 KB of JSON
MAX_WEIGHTS_BYTES = 32 << 20  # its weights are 3.4 MB; a trained model's file adds Adam's state (x3)
MAX_ARCHIVE_BYTES = 16 << 20  # a .keras holds config, metadata and those weights, compressed
BUILTIN_FILTERS = {
    h5py.h5z.FILTER_DEFLATE,
    h5py.h5z.FILTER_SHUFFLE,
    h5py.h5z.FILTER_FLETCHER32,
    h5py.h5z.FILTER_SZIP,
    h5py.h5z.FILTER_NBIT,
    h5py.h5z.FILTER_SCALEOFFSET,
    h5py.h5z.FILTER_LZF,
}


def conv(filters: int) -> tuple[str, dict]:
    return (
        "Conv2D",
        {
            "filters": filters,
            "kernel_size": [2, 2],
            "strides": [2, 2],
            "padding": "same",
            "activation": "relu",
            "dilation_rate": [1, 1],
            "groups": 1,
            "use_bias": True,
            "data_format": "channels_last",
        },
    )


def dense(units: int, activation: str) -> tuple[str, dict]:
    return ("Dense", {"units": units, "activation": activation, "use_bias": True})


POOL = ("MaxPooling2D", {"pool_size": [2, 2], "strides": [1, 1], "padding": "same", "data_format": "channels_last"})
DROPOUT = ("Dropout", {"rate": seed_report.DROPOUT})
# The report's layers after the Input, as (Keras class, the config values that define the network).
EXPECTED: tuple[tuple[str, dict], ...] = (
    conv(seed_report.CONV_FILTERS[0]),
    POOL,
    conv(seed_report.CONV_FILTERS[1]),
    POOL,
    ("Flatten", {"data_format": "channels_last"}),
    dense(seed_report.DENSE_UNITS[0], "relu"),
    DROPOUT,
    dense(seed_report.DENSE_UNITS[1], "relu"),
    DROPOUT,
    dense(fashion.NUM_CLASSES, "softmax"),
)
KERAS_DEFAULTS = {"dilation_rate": [1, 1], "groups": 1, "use_bias": True, "data_format": "channels_last"}
WEIGHTED = tuple(name for name, _, _ in seedcnn.LAYERS)  # fmnist's names of the layers with weights, in order
SHAPES = {f"{layer}.{part}": shape for layer, _, parts in seedcnn.LAYERS for part, shape in parts.items()}


# ---------------------------------------------------------------------------------------------
# The architecture: layer list and wiring
def normalise(key: str, value):
    """Compare sizes as lists: configs hold tuples, lists, or (Keras 2, sometimes) one int for both sides."""
    if key in ("kernel_size", "strides", "pool_size", "dilation_rate") and isinstance(value, int):
        return [value, value]
    return list(value) if isinstance(value, (list, tuple)) else value


def model_layers(config) -> list[dict]:
    """The layer list of a Keras model configuration, its JSON shape checked."""
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not all(
        isinstance(layer, dict) and isinstance(layer.get("config"), dict) for layer in layers
    ):
        raise errors.InputError(
            "the model configuration is not a Keras model's "
            "(expected {class_name, config: {layers: [{class_name, config}, ...]}})"
        )
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise errors.InputError(
            f"the model is a {config.get('class_name')!r}, expected a Sequential or Functional model"
        )
    return layers


def check_architecture(config: dict) -> list[str]:
    """The Keras names of the weighted layers; a clear error at the first layer that differs."""
    everything = model_layers(config)
    layers = [layer for layer in everything if layer.get("class_name") != "InputLayer"]
    if len(layers) != len(EXPECTED):
        raise errors.InputError(
            f"the model has {len(layers)} layers, the report's network has {len(EXPECTED)} "
            f"({', '.join(cls for cls, _ in EXPECTED)})"
        )
    names = []
    for index, (layer, (expected_class, expected_config)) in enumerate(zip(layers, EXPECTED), start=1):
        config_ = layer["config"]
        name = config_.get("name", "?")
        if layer.get("class_name") != expected_class:
            raise errors.InputError(f"layer {index} ({name}) is {layer.get('class_name')}, expected {expected_class}")
        for key, expected in expected_config.items():
            found = normalise(key, config_.get(key, KERAS_DEFAULTS.get(key)))
            if found != expected:
                raise errors.InputError(
                    f"layer {index} ({name}, {expected_class}): {key} is {found}, expected {expected}"
                )
        if expected_class in ("Conv2D", "Dense"):
            names.append(name)
    if config["class_name"] != "Sequential":  # a Sequential's list is its graph; a Functional's is not
        check_wiring(config, everything)
    return names


def sources(node) -> list:
    """Names of the layers whose outputs feed a node: Keras 3 writes {"keras_history": [name, 0, 0]},
    Keras 2 [name, 0, 0, {kwargs}]."""
    if isinstance(node, dict):
        if "keras_history" in node:
            return node["keras_history"][:1] if isinstance(node["keras_history"], list) else [None]
        return [name for value in node.values() for name in sources(value)]
    if isinstance(node, list):
        if len(node) in (3, 4) and isinstance(node[0], str) and all(isinstance(i, int) for i in node[1:3]):
            return [node[0]]
        return [name for value in node for name in sources(value)]
    return []


def check_wiring(config: dict, layers: list[dict]) -> None:
    """A Functional model must be the chain its layer list shows: Input -> layer 1 -> ... -> output."""
    names = [layer["config"].get("name") for layer in layers]
    if layers[0].get("class_name") != "InputLayer":
        raise errors.InputError("a Functional model whose first layer is not its Input")
    for previous, layer in zip(names, layers[1:]):
        nodes = layer.get("inbound_nodes")
        found = sources(nodes) if isinstance(nodes, list) and len(nodes) == 1 else None
        if found != [previous]:
            raise errors.InputError(
                f"layer {layer['config'].get('name')} takes its input from {found}, expected "
                f"[{previous!r}]: the report's network is a plain chain of its layers"
            )
    inputs, outputs = sources(config["config"].get("input_layers")), sources(config["config"].get("output_layers"))
    if inputs != names[:1] or outputs != names[-1:]:
        raise errors.InputError(
            f"the model's inputs {inputs} and outputs {outputs} are not "
            f"{names[:1]} and {names[-1:]}: the report's network is a plain chain"
        )


def parse_config(raw: bytes | str, where: str) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise errors.TooLarge(f"{where}: the model configuration is {len(raw):,} bytes, over {MAX_CONFIG_BYTES:,}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise errors.InputError(f"{where}: the model configuration is not JSON ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------------------------
# The weights: HDF5, read defensively
def reach(handle: h5py.File, path: str):
    """The object at `path` (names from the file itself), following hard links only, one step at a time."""
    item = handle
    for part in path.strip("/").split("/"):
        link = item.get(part, getlink=True) if isinstance(item, h5py.Group) else None
        if not isinstance(link, h5py.HardLink):
            what = "missing" if link is None else f"a {type(link).__name__} to elsewhere: links are refused"
            raise errors.InputError(f"{path}: {what}")
        item = item[part]
    return item


def stored_array(handle: h5py.File, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array at `path`, stored in this file, its shape and type checked before it is read."""
    item = reach(handle, path)
    if not isinstance(item, h5py.Dataset):
        raise errors.InputError(f"{path}: not an array")
    if item.is_virtual or item.external:
        raise errors.InputError(f"{path}: its data is stored outside the file (external or virtual): refused")
    plist = item.id.get_create_plist()
    if {plist.get_filter(i)[0] for i in range(plist.get_nfilters())} - BUILTIN_FILTERS:
        raise errors.InputError(f"{path}: compressed with a filter HDF5 does not ship: refused")
    if item.shape != shape or item.dtype.kind != "f" or item.dtype.itemsize != 4:
        raise errors.InputError(f"{path}: {item.dtype} {item.shape}, expected float32 {shape}")
    return item[()]


def keras3_paths() -> list[str]:
    """Keras 3 stores a model's layers as layers/<snake-case class><_k>/vars, numbered per class in order."""
    counts: dict[str, int] = {}
    paths = []
    for _, keras_class, _ in seedcnn.LAYERS:
        stem = keras_class.lower()  # Conv2D -> conv2d, Dense -> dense
        paths.append(f"layers/{stem}" + (f"_{counts[stem]}" if counts.get(stem) else "") + "/vars")
        counts[stem] = counts.get(stem, 0) + 1
    return [f"{path}/{i}" for path in paths for i in (0, 1)]


def legacy_paths(handle: h5py.File, names: list[str]) -> list[str]:
    """A legacy .h5 lists each layer's arrays in its group's weight_names attribute (kernel, bias)."""
    root = "model_weights/" if "model_weights" in handle.keys() else ""  # keys(): names only, no link followed
    paths = []
    for name in names:
        weight_names = list(reach(handle, f"{root}{name}").attrs.get("weight_names", []))
        if len(weight_names) != 2:
            raise errors.InputError(f"layer {name} has {len(weight_names)} weight arrays, expected kernel and bias")
        paths += [f"{root}{name}/" + (n.decode() if isinstance(n, bytes) else str(n)) for n in weight_names]
    return paths


def read_state(handle: h5py.File, paths: list[str], where: str) -> dict[str, torch.Tensor]:
    state = {
        name: torch.from_numpy(stored_array(handle, path, SHAPES[name]).astype(np.float32))
        for name, path in zip(SHAPES, paths)
    }  # SHAPES are in seedcnn.LAYERS order: kernel, bias per layer
    return runs.check_state(state, seedcnn.SeedCNN().state_dict(), where, errors.InputError)


def read_member(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    """One file of the archive, refused by its declared size before anything is decompressed."""
    info = archive.getinfo(name)
    if info.file_size > max_bytes:
        raise errors.TooLarge(f"{name} in the archive is {info.file_size:,} bytes, over the limit of {max_bytes:,}")
    with archive.open(info) as member:
        return member.read(max_bytes + 1)  # zipfile stops at the declared size and checks the CRC


def check_size(path: Path, max_bytes: int) -> None:
    if path.stat().st_size > max_bytes:
        raise errors.TooLarge(f"{path}: {path.stat().st_size:,} bytes, over the limit of {max_bytes:,}")


def read_keras_v3(path: Path) -> dict[str, torch.Tensor]:
    check_size(path, MAX_ARCHIVE_BYTES)
    with zipfile.ZipFile(path) as archive:
        check_architecture(parse_config(read_member(archive, "config.json", MAX_CONFIG_BYTES), str(path)))
        weights = io.BytesIO(read_member(archive, "model.weights.h5", MAX_WEIGHTS_BYTES))
    with h5py.File(weights, "r") as handle:
        return read_state(handle, keras3_paths(), str(path))


def read_keras_h5(path: Path) -> dict[str, torch.Tensor]:
    check_size(path, MAX_WEIGHTS_BYTES)  # bounds every attribute read from it too
    with h5py.File(path, "r") as handle:
        if "model_config" not in handle.attrs:
            raise errors.InputError(f"{path}: an HDF5 file without a model configuration (weights only?)")
        names = check_architecture(parse_config(handle.attrs["model_config"], str(path)))
        return read_state(handle, legacy_paths(handle, names), str(path))


def read_keras(path: Path) -> dict[str, torch.Tensor]:
    """The weights of the Keras model at `path`, as fmnist's state dict, after every check above."""
    path = Path(path)
    if not path.is_file():
        raise errors.InputError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return read_keras_v3(path)
        if h5py.is_hdf5(path):
            return read_keras_h5(path)
    except errors.FmnistError:
        raise
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise errors.InputError(f"{path}: not a readable Keras model file ({type(exc).__name__}: {exc})") from None
    raise errors.InputError(f"{path}: neither a Keras 3 .keras archive nor an HDF5 .h5 file")


def import_keras(path: Path, run_dir: Path) -> Path:
    """Write a new run directory whose weights are those of the Keras model at `path`."""
    run_dir = runs.require_new(run_dir, "import into another directory")
    state = read_keras(path)
    files.write_json(run_dir / runs.CONFIG, {**dataclasses.asdict(configs.TrainConfig()), "imported_from": str(path)})
    runs.save_weights(run_dir / runs.WEIGHTS, state, seedcnn.ARCHITECTURE, imported_from=str(path))
    return run_dir
