"""fmnist: train, evaluate, understand and use Fashion-MNIST image classifiers."""
__version__ = "0.1.0"
