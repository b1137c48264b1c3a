"""Weight initialisers: ``init(rng, shape, fan_in, fan_out) -> host array``.

Layers take one by name (``"glorot_uniform"``) or as a callable; ``"torch"`` reproduces
PyTorch's defaults for Linear/Conv (kaiming_uniform with a=sqrt(5), bias U(+-1/sqrt(fan_in))).
:func:`apply` re-initialises a built network's params by path pattern (per layer or subgraph).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import zlib
from contextvars import ContextVar
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


class _Budget:
    """Elements that a network built from a file may still allocate (see :func:`values_from_file`)."""

    def __init__(self, elements: int, refuse):
        self.left = elements
        self.refuse = refuse

    def take(self, shape) -> None:
        size = math.prod(shape)
        if size > self.left:
            self.refuse(tuple(shape), size, self.left)
        self.left -= size


_FROM_FILE: ContextVar = ContextVar("juicepy_values_from_file", default=None)


@contextlib.contextmanager
def values_from_file(elements: int, refuse):
    """While a network is built whose every param a file will overwrite: initialisers do not
    run (params start as zeros), and a param beyond the ``elements`` the file holds calls
    ``refuse(shape, size, left)`` (which raises) before anything is allocated."""
    token = _FROM_FILE.set(_Budget(elements, refuse))
    try:
        yield
    finally:
        _FROM_FILE.reset(token)


def make(init, rng, shape, fan_in, fan_out, dtype) -> np.ndarray:
    budget = _FROM_FILE.get()
    if budget is not None:
        budget.take(shape)
        return np.zeros(shape, dtype)
    values = np.asarray(resolve(init)(rng, tuple(shape), fan_in, fan_out))
    if values.shape != tuple(shape):
        raise ValueError(f"initialiser returned shape {values.shape}, expected {tuple(shape)}")
    return values.astype(dtype)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight in PyTorch's layout: (out, in, *kernel); 1-D: (n, n)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _param_rng(seed: int, path: str) -> np.random.Generator:
    # one stream per (seed, path): a param's values do not depend on which other params are set;
    # the whole seed, so that seeds 2**32 apart differ (below 2**32 the streams are unchanged)
    return np.random.default_rng([seed, zlib.crc32(path.encode())])


def _matches(pattern: str, path: str, trainable: bool = True) -> bool:
    """Whether ``pattern`` selects the param at ``path``. A non-trained buffer (BatchNorm's
    running statistics) is selected only by a pattern that ends in its name ("bn.running_var",
    "*.running_var"): "*" or a layer path means the weights, never the statistics."""
    if not trainable:
        return fnmatch.fnmatchcase(path, pattern) and pattern.rsplit(".", 1)[-1] == path.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + ".")


def apply(network, rules: dict, seed: int = 0) -> list[str]:
    """Re-initialise params of ``network`` by dotted-path pattern; returns the paths it set.

    ``rules`` maps a pattern to an initialiser. A pattern is an fnmatch glob over param paths
    ("encoder.*", "*.bias") or a layer/subgraph path ("encoder" means every param under it);
    for each param the first matching rule wins. Non-trained buffers (BatchNorm's running
    statistics) are set only by a pattern ending in their name ("*.running_var"). An initialiser is a name from ``BY_NAME``,
    a callable ``(rng, shape, fan_in, fan_out)``, or an array (pretrained values, shape
    checked). Random values come from a generator seeded by ``(seed, param path)``, so the
    same call gives the same weights. Every check runs before any param is written; a pattern
    that matches no param is an error (a typo would otherwise pass silently).
    """
    from .errors import ArgumentError, WeightsError
    from .arguments import integer

    seed = integer("init.apply", "seed", seed, 0)
    if not isinstance(rules, dict):
        from .arguments import describe

        raise ArgumentError(f"init.apply: rules must be a dict of pattern -> initialiser, got {describe(rules)}")
    params = network.params
    staged, used = {}, set()
    for path, param in params.items():
        for pattern, rule in rules.items():
            if _matches(pattern, path, param.trainable):
                used.add(pattern)
                staged[path] = _values(rule, param, path, seed, WeightsError)
                break
    unused = [p for p in rules if p not in used]
    if unused:
        raise WeightsError(f"init.apply: pattern(s) {', '.join(map(repr, unused))} match no param "
                           f"(buffers are matched only by a pattern ending in their name); "
                           f"params: {', '.join(params)}")
    with network.lock:
        for path, values in staged.items():
            params[path].set(values)
    return list(staged)


def _values(rule, param, path, seed, error):
    if isinstance(rule, (str,)) or callable(rule):
        fan_in, fan_out = fans(param.shape)
        values = np.asarray(resolve(rule)(_param_rng(seed, path), param.shape, fan_in, fan_out))
    else:
        values = np.asarray(rule.detach().cpu().numpy() if hasattr(rule, "detach") else rule)
    if values.shape != param.shape:
        raise error(f"init.apply: {path!r} expects shape {param.shape}, got {values.shape}")
    try:
        return param.coerced(values)
    except ValueError as err:
        raise error(f"init.apply: {path!r} {err}") from None


def from_pretrained(network, arrays: dict, prefix: str = "", strict: bool = False) -> list[str]:
    """Load pretrained arrays into the params under ``prefix`` ("encoder" loads
    ``arrays["0.weight"]`` into "encoder.0.weight"); returns the paths it set."""
    weights = {(f"{prefix}.{k}" if prefix else k): v for k, v in arrays.items()}
    network.set_weights(weights, strict=strict)
    return list(weights)
