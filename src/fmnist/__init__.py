"""fmnist: train, evaluate, understand and use Fashion-MNIST image classifiers."""
from fmnist import threads as _threads

_threads.SET_BY_FMNIST = _threads.configure_waiting()  # before anything imports torch: OpenMP reads it as it loads
__version__ = "0.1.0"
