"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback.

Each type carries its kind: `http_status` is what the server answers when one reaches a request.
Nothing downstream looks at an error's wording.
"""


class FmnistError(Exception):
    """Base of every user-facing error: its message says what is wrong and how to fix it."""

    http_status = 500


class Interrupted(FmnistError):
    """Ctrl-C or SIGTERM: the message says what was kept and how to continue; the exit status is the
    signal's (130 for Ctrl-C, 143 for SIGTERM), taken from the interruption that `cause` names."""

    exit_code = 130

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.exit_code = getattr(cause, "exit_code", Interrupted.exit_code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, which Kubernetes, Slurm and Ray send before they kill: the CLI raises it where the signal
    arrives, so that it stops as Ctrl-C does (what was kept, how to continue), with exit status 143."""

    exit_code = 143


class DataError(FmnistError):
    """A dataset file is missing, damaged, or not the one expected."""


class RunError(FmnistError):
    """A run directory is missing, foreign, damaged, or does not match the architecture."""


class AddressError(FmnistError):
    """The server cannot listen where asked: the port is taken, or the address is not this machine's."""


class OutputError(FmnistError):
    """An output location cannot be written: a file where a directory belongs, or the reverse."""


class InputError(FmnistError):
    """An image or model file given by the user cannot be used (damaged, empty, wrong contents)."""

    http_status = 400


class UnsupportedInput(InputError):
    """Not a format fmnist reads (e.g. not an image at all)."""

    http_status = 415


class TooLarge(InputError):
    """Over a size limit: bytes, pixels, files per request, declared array sizes."""

    http_status = 413


class Busy(FmnistError):
    """The server's work queue is full: nothing was done; try again after `retry_after` seconds."""

    http_status = 503
    retry_after = 1


class MissingExtra(FmnistError):
    """A command needs a package of one of fmnist's extras that is not installed: the message names the extra."""


# The modules each extra of pyproject.toml brings, by the extra's name: what `require` looks for.
EXTRAS = {
    "onnx": ("onnx", "onnxruntime"),
    "serve": ("fastapi", "uvicorn", "multipart", "prometheus_client"),
    "keras": ("h5py",),
    "ray": ("ray", "ray.tune", "ray.serve"),
}


def require(what: str, extra: str) -> None:
    """MissingExtra naming `pip install 'fmnist[EXTRA]'` where a module of EXTRAS[extra] cannot be imported here;
    `what`: the feature that needs them, as the message starts."""
    import importlib.util

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError, AttributeError):  # its parent missing, or blocked (sys.modules[n] = None)
            return True

    missing = [name for name in EXTRAS[extra] if absent(name)]
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, which fmnist's core leaves out: pip install 'fmnist[{extra}]'"
        )
