"""The `fmnist` command: parsing and printing over the API (main.py), its flags and examples (flags.py)."""

from fmnist.cli.main import main

__all__ = ["main"]
