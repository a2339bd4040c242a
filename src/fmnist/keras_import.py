"""Import a Keras model of the report's architecture (Keras 3 `.keras` or legacy HDF5 `.h5`).

Nothing from the file is executed: the architecture is read as JSON and compared layer by layer with
the report's, and the weights are read as arrays with h5py. Keras's layouts (HWIO kernels, dense
(in, out)) are fmnist's own, so the arrays are copied 1:1.
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

from fmnist import errors, model, runs, train

# The report's layers after the Input, as (Keras class, the config values that define the network).
EXPECTED = (
    ("Conv2D", {"filters": 32, "kernel_size": [2, 2], "strides": [2, 2], "padding": "same", "activation": "relu"}),
    ("MaxPooling2D", {"pool_size": [2, 2], "strides": [1, 1], "padding": "same"}),
    ("Conv2D", {"filters": 64, "kernel_size": [2, 2], "strides": [2, 2], "padding": "same", "activation": "relu"}),
    ("MaxPooling2D", {"pool_size": [2, 2], "strides": [1, 1], "padding": "same"}),
    ("Flatten", {}),
    ("Dense", {"units": 256, "activation": "relu"}),
    ("Dropout", {"rate": 0.5}),
    ("Dense", {"units": 128, "activation": "relu"}),
    ("Dropout", {"rate": 0.5}),
    ("Dense", {"units": 10, "activation": "softmax"}),
)
WEIGHTED = ("conv1", "conv2", "dense1", "dense2", "dense3")  # fmnist's names for the layers with weights


def normalise(key: str, value):
    """Compare sizes as lists: configs hold tuples, lists, or (Keras 2, sometimes) one int for both sides."""
    if key in ("kernel_size", "strides", "pool_size") and isinstance(value, int):
        return [value, value]
    return list(value) if isinstance(value, (list, tuple)) else value


def check_architecture(layers: list[dict]) -> list[str]:
    """The Keras names of the weighted layers; a clear error at the first layer that differs."""
    layers = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    if len(layers) != len(EXPECTED):
        raise errors.InputError(f"the model has {len(layers)} layers, the report's network has {len(EXPECTED)} "
                                f"({', '.join(cls for cls, _ in EXPECTED)})")
    names = []
    for index, (layer, (expected_class, expected_config)) in enumerate(zip(layers, EXPECTED), start=1):
        config = layer.get("config", {})
        name = config.get("name", "?")
        if layer.get("class_name") != expected_class:
            raise errors.InputError(f"layer {index} ({name}) is {layer.get('class_name')}, "
                                    f"expected {expected_class}")
        for key, expected in expected_config.items():
            found = normalise(key, config.get(key))
            if found != expected:
                raise errors.InputError(f"layer {index} ({name}, {expected_class}): {key} is {found}, "
                                        f"expected {expected}")
        if config.get("data_format", "channels_last") != "channels_last":
            raise errors.InputError(f"layer {index} ({name}): data_format {config['data_format']}, "
                                    f"expected channels_last")
        if expected_class in ("Conv2D", "Dense"):
            names.append(name)
    return names


def read_keras_v3(path: Path) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights_file = io.BytesIO(archive.read("model.weights.h5"))
    arrays = {}
    with h5py.File(weights_file, "r") as handle:
        def collect(name, item):
            if isinstance(item, h5py.Group) and name.endswith("/vars"):
                layer = name.split("/")[-2]
                arrays[layer] = [np.asarray(item[key]) for key in sorted(item.keys(), key=int)]
        handle.visititems(collect)
    return config["config"]["layers"], arrays


def read_keras_h5(path: Path) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    with h5py.File(path, "r") as handle:
        if "model_config" not in handle.attrs:
            raise errors.InputError(f"{path}: an HDF5 file without a model configuration (weights only?)")
        config = json.loads(handle.attrs["model_config"])
        root = handle["model_weights"] if "model_weights" in handle else handle
        arrays = {}
        for layer in root.keys():
            weight_names = [n.decode() if isinstance(n, bytes) else str(n)
                            for n in root[layer].attrs.get("weight_names", [])]
            arrays[layer] = [np.asarray(root[layer][n]) for n in weight_names]
    return config["config"]["layers"], arrays


def read_keras(path: Path) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    path = Path(path)
    if not path.is_file():
        raise errors.InputError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return read_keras_v3(path)
        if h5py.is_hdf5(path):
            return read_keras_h5(path)
    except errors.InputError:
        raise
    except (KeyError, ValueError, OSError) as exc:
        raise errors.InputError(f"{path}: not a readable Keras model file ({exc})") from None
    raise errors.InputError(f"{path}: neither a Keras 3 .keras archive nor an HDF5 .h5 file")


def import_keras(path: Path, run_dir: Path) -> Path:
    """Write a run directory whose weights are those of the Keras model at `path`."""
    layers, arrays = read_keras(path)
    keras_names = check_architecture(layers)
    network = model.SeedCNN()
    state = {}
    for ours, theirs in zip(WEIGHTED, keras_names):
        found = arrays.get(theirs, [])
        if len(found) != 2:
            raise errors.InputError(f"{path}: layer {theirs} has {len(found)} weight arrays, expected kernel and bias")
        for key, array in zip(("kernel", "bias"), found):
            expected = tuple(getattr(network, ours).state_dict()[key].shape)
            if array.shape != expected or array.dtype.kind != "f":
                raise errors.InputError(f"{path}: layer {theirs} {key} is {array.dtype} {array.shape}, "
                                        f"expected float {expected}")
            state[f"{ours}.{key}"] = torch.from_numpy(array.astype(np.float32))
    run_dir = Path(run_dir)
    runs.write_json(run_dir / runs.CONFIG, {**dataclasses.asdict(train.TrainConfig()), "imported_from": str(path)})
    runs.save_weights(run_dir / runs.WEIGHTS, state, imported_from=str(path))
    return run_dir
