"""The `fmnist` command: parsing and printing over the API (main.py), its flags and examples (flags.py)."""

import sys

try:
    from fmnist.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command itself loads: one line, as at any other moment
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

__all__ = ["main"]
