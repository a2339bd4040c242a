"""fmnist against the original framework (TensorFlow-Keras), on the same machine, in one run.

TensorFlow is not a dependency of fmnist: install it in a virtual environment of its own
(`python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu`) and pass its Python:

    python benchmarks/compare_keras.py --tf-python /tmp/tfenv/bin/python --rounds 3 [--precision bf16]

Each round runs one training epoch of the report's network on 48,000 random images at batch 128,
first in TensorFlow-Keras (`model.fit`, as the report did), then in fmnist (`loop.train_one_epoch`),
each in a fresh process after a warm-up epoch on a few batches. The medians and their ratio go to the record.
The Keras network below is the report's, written out: the TensorFlow environment has no fmnist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from fmnist.results import records

IMAGES = 48_000
BATCH_SIZE = 128
WARMUP_IMAGES = 1_280


def keras_epoch_seconds(images: int) -> float:
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (2, 2), strides=(2, 2), padding="same", activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(64, (2, 2), strides=(2, 2), padding="same", activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(1, 1), padding="same"),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.random((images, 28, 28, 1), dtype=np.float32)
    y = tf.keras.utils.to_categorical(rng.integers(0, 10, images), 10)
    model.fit(x[:WARMUP_IMAGES], y[:WARMUP_IMAGES], batch_size=BATCH_SIZE, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    return time.perf_counter() - start


def fmnist_epoch_seconds(images: int, threads: int, precision: str) -> float:
    import torch

    from fmnist.core import machine
    from fmnist.nets import seedcnn
    from fmnist.training import configs, loop, recipe

    machine.set_cpu_modes()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = torch.rand(images, 28, 28, 1), torch.randint(0, 10, (images,))
    network = seedcnn.SeedCNN()
    optimizer = recipe.KerasAdam(network.parameters(), fused=True)
    generator = torch.Generator().manual_seed(0)
    config = configs.Recipe(batch_size=BATCH_SIZE)
    loop.train_one_epoch(
        network, optimizer, x[:WARMUP_IMAGES], y[:WARMUP_IMAGES], config, generator, precision=precision
    )
    start = time.perf_counter()
    loss, _ = loop.train_one_epoch(network, optimizer, x, y, config, generator, precision=precision)
    loss.item()
    return time.perf_counter() - start


def worker_seconds(python: str, worker: str, args) -> float:
    """One epoch in a fresh process (its own imports, allocator and thread pool); fmnist's in this one in the
    quick form (a check that it runs)."""
    if args.quick and worker == "fmnist":
        return fmnist_epoch_seconds(args.images, args.threads, args.precision)
    command = [
        python,
        __file__,
        "--worker",
        worker,
        "--images",
        str(args.images),
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=3)
    parser.add_argument("--tf-python", help="a Python with tensorflow installed (without it: fmnist's side only)")
    parser.add_argument("--images", type=int, default=IMAGES, help="images per epoch (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fmnist's precision; TensorFlow-Keras runs float32 as the report did (default: fp32)",
    )
    parser.add_argument("--worker", choices=("tensorflow", "fmnist"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or 2
    if args.worker == "tensorflow":
        print(json.dumps({"seconds": keras_epoch_seconds(args.images)}))
        return {}
    if args.worker == "fmnist":
        print(json.dumps({"seconds": fmnist_epoch_seconds(args.images, args.threads, args.precision)}))
        return {}
    if args.quick:
        args.images, args.rounds = 2 * WARMUP_IMAGES, 1
    pythons = {"TensorFlow-Keras": (args.tf_python, "tensorflow"), "fmnist": (sys.executable, "fmnist")}
    seconds: dict[str, list[float]] = {name: [] for name, (python, _) in pythons.items() if python}
    for round_number in range(1, args.rounds + 1):
        for name in seconds:
            seconds[name].append(worker_seconds(*pythons[name], args))
        print(f"round {round_number}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()), flush=True)
    steps = -(-args.images // BATCH_SIZE)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    rows = [[name, f"{value:.2f}", f"{1000 * value / steps:.2f}"] for name, value in medians.items()]
    figures: dict = {"seconds": medians, "images": args.images, "steps": steps}
    if len(medians) == 2:
        figures["speedup"] = medians["TensorFlow-Keras"] / medians["fmnist"]
        rows.append(["fmnist speed-up", f"{figures['speedup']:.2f}x", ""])
    for row in rows:
        print(" | ".join(row))
    return records.publish(
        "compare_keras",
        args,
        records.record(
            "speed",
            f"One training epoch of the report's network, {args.images:,} images at batch {BATCH_SIZE}: "
            f"TensorFlow-Keras against fmnist ({args.precision}), median of {args.rounds}",
            figures,
            ["framework", "s per epoch", "ms per step"],
            rows,
            rounds=seconds,
        ),
    )


if __name__ == "__main__":
    main()
