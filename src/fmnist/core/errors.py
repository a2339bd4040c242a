"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback.

Each type carries its kind: `http_status` is what the server answers when one reaches a request.
Nothing downstream looks at an error's wording.
"""


class FmnistError(Exception):
    """Base of every user-facing error: its message says what is wrong and how to fix it."""

    http_status = 500


class Interrupted(FmnistError):
    """Ctrl-C: the message says what was kept and how to continue."""

    exit_code = 130


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
