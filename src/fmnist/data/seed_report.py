"""The experiment report fmnist reproduces, as data: its network's shape, and the figures it published.

A short Keras report: a small CNN trained 50 epochs on Fashion-MNIST (its training settings are
configs.Recipe's defaults, the seed model's recipe), 90.59 % test accuracy. Its network, in Keras terms:
two 2x2 stride-2 "same" convolutions (CONV_FILTERS, ReLU) each followed by 2x2 stride-1 "same" max
pooling, a flatten, dense layers of DENSE_UNITS (ReLU, each followed by dropout DROPOUT) and a softmax
of 10. nets/seedcnn.py builds it; interop/ checks Keras files against it.
"""

from __future__ import annotations

CONV_FILTERS = (32, 64)
DENSE_UNITS = (256, 128)
DROPOUT = 0.5
KERNEL = 2  # both convolutions: 2x2, stride 2, "same"; each halves the image (28 -> 14 -> 7)

# The original report's published figures, and its program rerun with TF-Keras on a 2-core machine.
PUBLISHED = {
    "test_loss": 0.4215,
    "test_accuracy": 0.9059,
    "train_loss": 0.0406,
    "train_accuracy": 0.9854,
    "correct": 9059,
    "wrong": 941,
}
PUBLISHED_COUNTS = f"{PUBLISHED['correct']:,} / {PUBLISHED['wrong']:,}"  # right / wrong on the test set
PUBLISHED_PER_CLASS = {  # class: (precision, correct predictions)
    "T-shirt/top": (0.87, 822),
    "Trouser": (1.00, 980),
    "Pullover": (0.84, 864),
    "Dress": (0.89, 924),
    "Coat": (0.87, 840),
    "Sandal": (0.97, 980),
    "Shirt": (0.74, 752),
    "Sneaker": (0.94, 974),
    "Bag": (0.98, 972),
    "Ankle boot": (0.98, 951),
}
TF_RERUN = {
    "test_loss": 0.398,
    "test_accuracy": 0.9081,
    "train_loss": 0.044,
    "train_accuracy": 0.9847,
    "train_seconds": 210.0,
}
