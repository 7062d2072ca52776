"""Exceptions that mean "the user gave us something wrong".

The CLI prints any `DeepLenseError` as one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class DeepLenseError(Exception):
    """Base class for user-facing errors (bad input, bad config, missing files)."""


class DataError(DeepLenseError):
    """A data file or data set is unreadable, malformed or does not fit."""


class ConfigError(DeepLenseError):
    """An experiment config, preset name, search space or option is invalid."""


class RunError(DeepLenseError):
    """A run folder is missing, incomplete, or from an incompatible version."""


class ExportError(DeepLenseError):
    """A model cannot be exported as asked."""
