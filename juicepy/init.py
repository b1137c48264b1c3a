"""Weight initialisers: ``init(rng, shape, fan_in, fan_out) -> host array``.

Layers take one by name (``"glorot_uniform"``) or as a callable; ``"torch"`` reproduces
PyTorch's defaults for Linear/Conv (kaiming_uniform with a=sqrt(5), bias U(+-1/sqrt(fan_in))).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, tuple, int, int], np.ndarray]


def zeros(rng, shape, fan_in, fan_out):
    return np.zeros(shape)


def ones(rng, shape, fan_in, fan_out):
    return np.ones(shape)


def uniform(low: float = -0.05, high: float = 0.05) -> Initializer:
    return lambda rng, shape, fan_in, fan_out: rng.uniform(low, high, shape)


def normal(std: float = 0.01, mean: float = 0.0) -> Initializer:
    return lambda rng, shape, fan_in, fan_out: rng.normal(mean, std, shape)


def constant(value: float) -> Initializer:
    return lambda rng, shape, fan_in, fan_out: np.full(shape, value, dtype=np.float64)


def glorot_uniform(rng, shape, fan_in, fan_out):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


def glorot_normal(rng, shape, fan_in, fan_out):
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)


def he_uniform(rng, shape, fan_in, fan_out):
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, shape)


def he_normal(rng, shape, fan_in, fan_out):
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)


def torch_default(rng, shape, fan_in, fan_out):
    """PyTorch's Linear/Conv weight and bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, shape)


BY_NAME: dict[str, Initializer] = {
    "zeros": zeros,
    "ones": ones,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "torch": torch_default,
}


def resolve(init) -> Initializer:
    if callable(init):
        return init
    try:
        return BY_NAME[init]
    except KeyError:
        raise ValueError(f"unknown initialiser {init!r}; known: {', '.join(BY_NAME)}") from None


def make(init, rng, shape, fan_in, fan_out, dtype) -> np.ndarray:
    values = np.asarray(resolve(init)(rng, tuple(shape), fan_in, fan_out))
    if values.shape != tuple(shape):
        raise ValueError(f"initialiser returned shape {values.shape}, expected {tuple(shape)}")
    return values.astype(dtype)
