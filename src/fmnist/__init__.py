"""fmnist: train, evaluate, understand and use Fashion-MNIST image classifiers.

The Python API (fmnist.api; the CLI is a thin layer over it):

    import fmnist
    dataset = fmnist.load_data()
    run = fmnist.train(model="fast-cnn", epochs=2, limit=6000, out="runs/quick")
    run.evaluate(); run.predict(dataset.test_images[:5]); run.report(); run.export("onnx")

Names load on first use, so that `import fmnist` (and the CLI's help) stays quick, without torch.
"""

import typing as _typing

from fmnist.core import threads as _threads
from fmnist.core.version import __version__

# Chosen as fmnist is imported, before torch loads (core/threads.py says why): where torch came first, they
# cannot take effect, and the machine set-up where work starts (core/machine.py) says what that costs.
_threads.configure_waiting()  # OpenMP reads it as it loads
_threads.configure_reproducibility()  # MKL reads it at its first matrix product

_API = (
    "CLASS_NAMES",
    "PUBLISHED",
    "Predictions",
    "Recipe",
    "Run",
    "Runtime",
    "TrainConfig",
    "bench",
    "data_summary",
    "ensemble",
    "import_keras",
    "layer_table",
    "load_data",
    "models",
    "open_run",
    "pretrained",
    "reproduce",
    "sweep",
    "sweep_config",
    "train",
)
__all__ = ["__version__", *_API]

if _typing.TYPE_CHECKING:
    from fmnist.api import CLASS_NAMES as CLASS_NAMES
    from fmnist.api import PUBLISHED as PUBLISHED
    from fmnist.api import Predictions as Predictions
    from fmnist.api import Recipe as Recipe
    from fmnist.api import Run as Run
    from fmnist.api import Runtime as Runtime
    from fmnist.api import TrainConfig as TrainConfig
    from fmnist.api import bench as bench
    from fmnist.api import data_summary as data_summary
    from fmnist.api import ensemble as ensemble
    from fmnist.api import import_keras as import_keras
    from fmnist.api import layer_table as layer_table
    from fmnist.api import load_data as load_data
    from fmnist.api import models as models
    from fmnist.api import open_run as open_run
    from fmnist.api import pretrained as pretrained
    from fmnist.api import reproduce as reproduce
    from fmnist.api import sweep as sweep
    from fmnist.api import sweep_config as sweep_config
    from fmnist.api import train as train


def __dir__() -> list[str]:
    """The API with the module's own names, so that completion and help() show what __getattr__ loads."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'fmnist' has no attribute {name!r}")
    from fmnist import api

    value = getattr(api, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
