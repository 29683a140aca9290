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


def one_line(e: BaseException | str) -> str:
    """A message on one line, whitespace collapsed (a YAML parser's message spans lines): what the CLI prints."""
    return " ".join(str(e).split())


def first_line(e: BaseException | str, limit: int = 200, empty: str = "no detail") -> str:
    """The first line of another library's message, cut to ``limit`` characters (its later lines are often a
    traceback or advice that does not apply); ``empty`` when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else empty


def check_number(v, what: str, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                 integer: bool = False):
    """``v`` as a finite number (a whole one with ``integer``) in range, or a :class:`ConfigError` naming
    ``what`` (a CLI flag, a config entry)."""
    import math

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{what} expects a number, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{what} must be a finite number, got {v}")
    if integer and float(v) != int(v):
        raise ConfigError(f"{what} expects a whole number, got {v}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        rng = f"in {lo_s}, {hi_s}" if lo is not None and hi is not None else (
            f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
        raise ConfigError(f"{what} must be {rng}, got {v}")
    return int(v) if integer else v
