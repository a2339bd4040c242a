"""Export a seed-cnn run as a Keras 3 `.keras` file: the report's network back where it came from.

A `.keras` file is a zip of config.json (the architecture, as Keras serialises a Sequential model),
metadata.json, and seedcnn.weights.h5 (each layer's arrays under layers/<name>/vars/<i>). fmnist's
parameters already have Keras's layouts (seedcnn.py), so the arrays are written 1:1. The architecture
is generated from the facts `keras_import` checks a file against (EXPECTED), so the two cannot drift;
no Keras is needed to write the file, and the tests load it with real Keras.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import h5py

from fmnist import runs
from fmnist.core import errors, files
from fmnist.data import fashion
from fmnist.interop import from_keras
from fmnist.nets import seedcnn
from fmnist.training import registry

KERAS_VERSION = "3.0.0"  # the oldest format version this layout follows (Keras 3 reads it)
STEMS = {
    "Conv2D": "conv2d",
    "MaxPooling2D": "max_pooling2d",
    "Flatten": "flatten",
    "Dense": "dense",
    "Dropout": "dropout",
}  # Keras's automatic layer names


def layer_entry(keras_class: str, name: str, values: dict, input_shape: list) -> dict:
    """One layer as Keras 3 serialises it: its class, its config, and the input shape it is built for."""
    return {
        "module": "keras.layers",
        "class_name": keras_class,
        "registered_name": None,
        "config": {"name": name, "trainable": True, "dtype": "float32", **values},
        "build_config": {"input_shape": input_shape},
    }


def output_shape(keras_class: str, values: dict, shape: list) -> list:
    """(None, H, W, C) or (None, F) after a layer of the report's network."""
    if keras_class == "Conv2D":
        return [None, shape[1] // values["strides"][0], shape[2] // values["strides"][1], values["filters"]]
    if keras_class == "Flatten":
        return [None, math.prod(shape[1:])]
    if keras_class == "Dense":
        return [None, values["units"]]
    return shape  # stride-1 "same" pooling and dropout keep the shape


def keras_config() -> dict:
    """The Sequential model's config.json for the report's architecture."""
    shape: list = [None, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1]
    counts: dict[str, int] = {}
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "registered_name": None,
            "config": {"batch_shape": list(shape), "dtype": "float32", "name": "input_layer"},
        }
    ]
    for keras_class, values in from_keras.EXPECTED:
        stem = STEMS[keras_class]
        name = stem + (f"_{counts[stem]}" if counts.get(stem) else "")
        counts[stem] = counts.get(stem, 0) + 1
        layers.append(layer_entry(keras_class, name, values, list(shape)))
        shape = output_shape(keras_class, values, shape)
    return {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {"name": "sequential", "trainable": True, "dtype": "float32", "layers": layers},
        "build_config": {"input_shape": [None, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1]},
    }


def weights_h5(state: dict) -> bytes:
    """model.weights.h5: each weighted layer's kernel and bias at Keras 3's paths (keras_import's, read back)."""
    arrays = [state[f"{layer}.{part}"].numpy() for layer, _, _ in seedcnn.LAYERS for part in ("kernel", "bias")]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for layer in keras_config()["config"]["layers"][1:]:  # layers without weights have empty groups
            handle.create_group(f"layers/{layer['config']['name']}/vars")
        handle.create_group("vars")
        for path, array in zip(from_keras.keras3_paths(), arrays):
            handle.create_dataset(path, data=array)
    return buffer.getvalue()


def export_keras(run_dir: Path, path: Path | None = None, weights: str = runs.WEIGHTS) -> Path:
    """RUN/model.keras (or `path`) for a seed-cnn run; other models have no Keras counterpart here."""
    run_dir = Path(run_dir)
    state, metadata = runs.load_weights(run_dir / weights)
    if metadata.get("architecture") != seedcnn.ARCHITECTURE:
        spec = registry.trained_as(metadata.get("architecture", ""), runs.recorded_model(run_dir))
        raise errors.RunError(
            f"{run_dir} holds a {spec.name if spec else metadata.get('architecture')!r} network: "
            f"Keras export writes the report's network (seed-cnn) only; use --format onnx"
        )
    state = runs.check_state(state, seedcnn.SeedCNN().state_dict(), str(run_dir / weights))
    path = Path(path) if path else run_dir / "model.keras"

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("metadata.json", json.dumps({"keras_version": KERAS_VERSION, "exported_by": "fmnist"}))
            archive.writestr("config.json", json.dumps(keras_config()))
            archive.writestr("model.weights.h5", weights_h5(state))

    return files.write_atomic(path, write)
