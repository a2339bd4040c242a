"""Run as a script (KERAS_BACKEND=torch): three Adam steps of real Keras on the seed network.

usage: python keras_training_steps.py OUT.npz
Dropout is set to 0 so that both frameworks see the same function; the batches are fixed. Writes
the initial weights, the batches, and the weights after the three steps, in Keras's layouts.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
from make_keras_models import seed_cnn

if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    model = seed_cnn(dropout=0.0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
        loss="categorical_crossentropy",
    )
    initial = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    images = rng.random((3, 64, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, (3, 64))
    for x, y in zip(images, labels):
        model.train_on_batch(x, keras.utils.to_categorical(y, 10))
    np.savez(
        sys.argv[1],
        images=images,
        labels=labels,
        **{f"initial_{i}": w for i, w in enumerate(initial)},
        **{f"trained_{i}": w for i, w in enumerate(model.get_weights())},
    )
