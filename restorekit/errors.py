"""Exceptions with messages meant for people, not tracebacks.

The CLI catches :class:`RestoreKitError` and prints its message; everything
else is a bug and keeps its traceback.
"""


class RestoreKitError(Exception):
    """Base class for errors caused by user input or the environment."""


class ImageReadError(RestoreKitError):
    """An input image could not be read or has an unsupported layout."""


class WeightsError(RestoreKitError):
    """Weights are missing, unreachable, corrupt or do not fit the network."""


class TaskError(RestoreKitError):
    """A method was asked for a task (or option) it does not support."""


class ConfigError(RestoreKitError):
    """A configuration file or option is invalid."""
