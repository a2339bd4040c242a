"""fmnist's version: written here only (pyproject.toml reads it, runs record it)."""

__version__ = "0.1.0"
