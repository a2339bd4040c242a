"""Errors a user can cause and fix. The CLI prints them as one line, never as a traceback."""


class FmnistError(Exception):
    """Base of every user-facing error: its message says what is wrong and how to fix it."""


class DataError(FmnistError):
    """A dataset file is missing, damaged, or not the one expected."""


class RunError(FmnistError):
    """A run directory is missing, foreign, damaged, or does not match the architecture."""


class InputError(FmnistError):
    """An image or model file given by the user cannot be used."""
