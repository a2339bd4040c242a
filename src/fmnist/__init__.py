"""fmnist: train, evaluate, understand and use Fashion-MNIST image classifiers.

The Python API (the CLI is a thin layer over it; examples in fmnist.api):

    import fmnist
    dataset = fmnist.load_data()
    run = fmnist.train(model="fast-cnn", epochs=2, limit=6000, out="runs/quick")
    run.evaluate(); run.predict(dataset.test_images[:5]); run.report(); run.export("onnx")

Names load on first use, so that `import fmnist` (and the CLI's help) stays quick without torch.
"""
import typing as _typing

from fmnist import threads as _threads
from fmnist.version import __version__  # noqa: F401

_threads.configure_waiting()  # before anything imports torch: OpenMP reads it as it loads
_threads.configure_reproducibility()  # before torch's first matrix product: MKL reads it then

_API = {"CLASS_NAMES": "fmnist.api", "Predictions": "fmnist.api", "Run": "fmnist.api", "load_data": "fmnist.api",
        "open_run": "fmnist.api", "reproduce": "fmnist.api", "train": "fmnist.api", "TrainConfig": "fmnist.configs"}
__all__ = sorted(_API)

if _typing.TYPE_CHECKING:
    from fmnist.api import CLASS_NAMES, Predictions, Run, load_data, open_run, reproduce, train
    from fmnist.configs import TrainConfig


def __dir__() -> list[str]:
    """The API with the module's own names, so that completion and help() show what __getattr__ loads."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'fmnist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
