"""Run as a script (its own process, KERAS_BACKEND=torch): load a .keras file with real Keras, predict.

usage: python keras_predict.py MODEL.keras IMAGES.npy OUT.npy
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np

if __name__ == "__main__":
    loaded = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], loaded.predict(np.load(sys.argv[2]), verbose=0))
