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
    if integer and not isinstance(v, int) and not float(v).is_integer():  # float(2**63 - 1) != 2**63 - 1
        raise ConfigError(f"{what} expects a whole number, got {v}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        rng = f"in {lo_s}, {hi_s}" if lo is not None and hi is not None else (
            f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
        raise ConfigError(f"{what} must be {rng}, got {v}")
    return int(v) if integer else v


def check_api_number(v, what: str, *, error: type = ConfigError, **limits):
    """:func:`check_number` for a value given to the Python API: a numpy scalar or a one-element 0-d array / tensor
    counts as the number it holds; the error is ``error`` (a :class:`RestoreKitError` subclass) with the same
    one-line message. ``limits`` are :func:`check_number`'s (``lo``, ``hi``, ``lo_open``, ``hi_open``, ``integer``)."""
    if not isinstance(v, (bool, int, float, str)) and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        try:
            v = v.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    try:
        return check_number(v, what, **limits)
    except ConfigError as e:
        if error is ConfigError:
            raise
        raise error(str(e)) from None


def coerce_option(key: str, value, default, *, error: type = ConfigError, **limits):
    """``value`` read as option ``key``, whose default gives the type: a bool from True / False (numpy's, 0 / 1) or
    the text true / yes / on / 1 / false / no / off / 0; a number from a number or its text ("1e3"), finite, whole
    where the default is an int, in ``limits`` (:func:`check_number`'s); text from anything but a container; with
    another default (None), the value as it is. The CLI reads ``--opt`` values so, and DiffBIR its options, with
    the same one-line messages (``error``)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
        elif isinstance(value, bool) or type(value).__name__ == "bool_" or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise error(f"option {key} expects true or false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise error(f"option {key} expects a number, got {value!r}") from None
        value = check_api_number(value, f"option {key}", error=error, integer=isinstance(default, int), **limits)
        return value if isinstance(default, int) else float(value)
    if isinstance(default, str):
        if isinstance(value, (dict, list, tuple, set)):
            raise error(f"option {key} expects text, got {value!r}")
        return str(value)
    return value


def check_flag(v, what: str, *, error: type = ConfigError) -> bool:
    """``v`` as a bool (``True`` / ``False``, numpy's, or the whole numbers 0 / 1), or ``error`` naming ``what``: a
    text such as ``"false"`` would otherwise be read as true."""
    if isinstance(v, bool):
        return v
    if type(v).__name__ == "bool_" or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise error(f"{what} expects True or False, got {v!r}")
