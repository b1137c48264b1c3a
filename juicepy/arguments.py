"""Checks of settings given to constructors (optimizer hyper-parameters, layer options): each
failure names the owner, the argument, what it must be and what came."""

from __future__ import annotations

import math
import numbers

import numpy as np


def _shown(value) -> str:
    return f"{type(value).__name__} {value!r}"


def number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:
    """``value`` as a float: a real number (not a bool or a string), finite and within
    [low, high] (``low_open``/``high_open`` exclude the bound). TypeError or ValueError otherwise."""
    or_none = " or None" if none_ok else ""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number{or_none}, got {_shown(value)}")
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
        raise ValueError(f"{owner}: {name} must be a finite number{bounds}{or_none}, got {value!r}")
    return value


def flag(owner: str, name: str, value) -> bool:
    """``value`` as a bool: True, False (or a NumPy bool); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, got {_shown(value)}")
    return bool(value)

