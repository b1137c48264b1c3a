"""Argument checks shared by every layer constructor, optimizer and public entry point.

Each returns the value in its canonical type or raises :class:`~juicepy.errors.ArgumentError`
(both a TypeError and a ValueError) naming the owner and argument, what it must be and what
came: ``Linear: out_features must be an integer >= 1, got float 2.7``. Python's int() and
float() would silently truncate 2.7, turn True into 1 and accept "0.5"; these do none of that.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ArgumentError


def describe(value) -> str:
    """A short, one-line description of a value for error messages: ``float 2.7``; a list
    holding lists, ``a list of 3 lists`` (rows where arrays were expected)."""
    if isinstance(value, (list, tuple)) and value and not all(is_integer(v) for v in value):
        kinds = sorted({type(v).__name__ for v in value})
        if any(k in ("list", "tuple", "dict", "ndarray") for k in kinds):
            return f"a {type(value).__name__} of {len(value)} {'/'.join(kinds)}s"
    text = " ".join(repr(value).split())
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _name(owner: str, name: str) -> str:
    return f"{owner}: {name}" if owner else name


def is_integer(value) -> bool:
    """A Python or NumPy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def integer(owner: str, name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int: an integer (not a bool, not a float such as 2.7 or 3.0) within
    [minimum, maximum]."""
    bound = " and ".join(b for b in ("" if minimum is None else f">= {minimum}",
                                     "" if maximum is None else f"<= {maximum}") if b)
    bound = f" {bound}" if bound else ""
    if not is_integer(value):
        raise ArgumentError(f"{_name(owner, name)} must be an integer{bound}, got {describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ArgumentError(f"{_name(owner, name)} must be an integer{bound}, got {value}")
    return value


def optional_integer(owner: str, name: str, value, minimum: int | None = None) -> int | None:
    return None if value is None else integer(owner, name, value, minimum)


def number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:
    """``value`` as a float: a real number (not a bool or a string), finite and within
    [low, high] (``low_open``/``high_open`` exclude the bound); None too where ``none_ok``."""
    or_none = " or None" if none_ok else ""
    if value is None and none_ok:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{_name(owner, name)} must be a number{or_none}, got {describe(value)}")
    value = float(value)
    inside = math.isfinite(value) and (low is None or value > low or (value == low and not low_open)) \
        and (high is None or value < high or (value == high and not high_open))
    if not inside:
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            bounds = f" {'<' if high_open else '<='} {high:g}"
        else:
            bounds = ""
        raise ArgumentError(f"{_name(owner, name)} must be a finite number{bounds}{or_none}, got {value!r}")
    return value


def flag(owner: str, name: str, value) -> bool:
    """``value`` as a bool: True or False (a NumPy bool too), not 0, 1 or "yes"."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"{_name(owner, name)} must be True or False, got {describe(value)}")
    return bool(value)


def instance(owner: str, name: str, value, cls: type, expected: str):
    """``value`` when it is a ``cls``, else an error saying it must be ``expected``."""
    if not isinstance(value, cls):
        raise ArgumentError(f"{_name(owner, name)} must be {expected}, got {describe(value)}")
    return value


def pair(owner: str, name: str, value, minimum: int, maximum: int | None = None) -> tuple[int, int]:
    """An integer or a pair of integers (each within [minimum, maximum]) as a pair."""
    if is_integer(value):
        values = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(is_integer(v) for v in value):
        values = tuple(value)
    else:
        raise ArgumentError(f"{_name(owner, name)} must be an integer or a pair of integers >= {minimum}, "
                            f"got {describe(value)}")
    if min(values) < minimum:
        raise ArgumentError(f"{_name(owner, name)} must be >= {minimum}, got {value!r}")
    if maximum is not None and max(values) > maximum:
        raise ArgumentError(f"{_name(owner, name)} must be <= {maximum}, got {value!r}")
    return int(values[0]), int(values[1])


def shape(owner: str, name: str, value) -> tuple[int, ...]:
    """A unit shape: a tuple or list of integers >= 1 (an int for a 1-D shape)."""
    if is_integer(value):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(is_integer(d) and d >= 1 for d in value):
        raise ArgumentError(f"{_name(owner, name)} must be a tuple of integers >= 1, got {describe(value)}")
    return tuple(int(d) for d in value)


def initializer(owner: str, name: str, value):
    """An initialiser name known to juicepy.init, or a callable."""
    from . import init

    if callable(value):
        return value
    if not isinstance(value, str) or value not in init.BY_NAME:
        raise ArgumentError(f"{_name(owner, name)} must be a callable or one of {', '.join(init.BY_NAME)}, "
                            f"got {describe(value)}")
    return value
