"""Run as a script (its own process, KERAS_BACKEND=torch): save real Keras models and Keras's predictions.

usage: python make_keras_models.py OUT_DIR IMAGES.npy
Writes seed.keras, seed.h5 (the report's architecture, random Glorot weights), expected.npy (Keras's
own predictions on IMAGES), functional.keras / functional.h5 (the same network and weights as a
Functional model whose layers have other names), and wrong.keras / wrong.h5 (one layer differs).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
from keras import layers


def seed_cnn(second_filters=64, padding="same", dropout=0.5):
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (2, 2), strides=(2, 2), padding="same", activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(second_filters, (2, 2), strides=(2, 2), padding=padding, activation="relu"),
            layers.MaxPooling2D((2, 2), strides=(1, 1), padding="same"),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dropout(dropout),
            layers.Dense(128, activation="relu"),
            layers.Dropout(dropout),
            layers.Dense(10, activation="softmax"),
        ]
    )


def as_functional(sequential):
    """The same layers and weights, rebuilt as a Functional model (new layers, so other names)."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for layer in sequential.layers:
        x = layer.__class__.from_config({**layer.get_config(), "name": layer.name + "_f"})(x)
    functional = keras.Model(inputs, x)
    functional.set_weights(sequential.get_weights())
    return functional


if __name__ == "__main__":
    out, images = sys.argv[1], np.load(sys.argv[2])
    keras.utils.set_random_seed(0)
    model = seed_cnn()
    # Non-zero biases, so that a bias mapped to the wrong place would show.
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, np.random.default_rng(1).normal(0, 0.05, bias.shape).astype("float32")])
    model.save(os.path.join(out, "seed.keras"))
    model.save(os.path.join(out, "seed.h5"))
    np.save(os.path.join(out, "expected.npy"), model.predict(images, verbose=0))
    functional = as_functional(model)
    functional.save(os.path.join(out, "functional.keras"))
    functional.save(os.path.join(out, "functional.h5"))
    seed_cnn(second_filters=48).save(os.path.join(out, "wrong.keras"))
    seed_cnn(padding="valid").save(os.path.join(out, "wrong.h5"))
