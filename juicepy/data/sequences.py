"""Generated sequence datasets (no download): the Mackey-Glass series for next-value
regression, and the adding problem as a token classification task."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import arguments
from .datasets import Dataset


@lru_cache(maxsize=4)
def mackey_glass_series(samples: int = 44000, tau: float = 17.0, dt: float = 0.1, history: float = 1.2,
                        burn_in: float = 1000.0, interval: float = 1.0) -> np.ndarray:
    """dx/dt = 0.2 x(t - tau) / (1 + x(t - tau)^10) - 0.1 x(t), integrated with RK4 at step ``dt``
    from the constant history ``history``; after ``burn_in`` time units, ``samples`` values at
    ``interval`` apart, scaled to [0, 1]. The delayed value at RK4's half steps is the mean of
    its two grid neighbours. (A read-only float64 array, cached.)"""
    delay = int(round(tau / dt))
    every = int(round(interval / dt))
    skip = int(round(burn_in / dt))
    steps = skip + samples * every
    xs = [history] * (delay + 1)  # xs[-1] is x(t), xs[-1 - delay] is x(t - tau)

    def f(x, lagged):
        return 0.2 * lagged / (1.0 + lagged ** 10) - 0.1 * x

    out = np.empty(samples)
    for step in range(steps):
        x, lag0, lag1 = xs[-1], xs[-1 - delay], xs[-delay]
        lag_half = 0.5 * (lag0 + lag1)
        k1 = f(x, lag0)
        k2 = f(x + 0.5 * dt * k1, lag_half)
        k3 = f(x + 0.5 * dt * k2, lag_half)
        k4 = f(x + dt * k3, lag1)
        xs.append(x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4))
        if len(xs) > 4 * delay:
            del xs[:2 * delay]
        done = step + 1 - skip
        if done > 0 and done % every == 0:
            out[done // every - 1] = xs[-1]
    out = (out - out.min()) / (out.max() - out.min())
    out.flags.writeable = False
    return out


def load_mackey_glass(window: int = 10, train_fraction: float = 0.8) -> tuple[Dataset, Dataset]:
    """(train, test): each example is ``window`` consecutive values, x (N, window, 1) float32,
    predicting the next one, y (N, 1); the first 80% of the examples train, the rest test
    (35192 / 8798 for the default 44000 samples)."""
    series = mackey_glass_series().astype(np.float32)
    examples = len(series) - window
    x = np.lib.stride_tricks.sliding_window_view(series[:-1], window)[:examples].copy()[:, :, None]
    y = series[window:, None].copy()
    cut = int(round(examples * train_fraction))
    return (Dataset(x[:cut], y[:cut], "mackey-glass-train", task="regression"),
            Dataset(x[cut:], y[cut:], "mackey-glass-test", task="regression"))


def load_adding(length: int = 10, train: int = 8192, test: int = 2048, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The adding problem as tokens: ``length`` digits, two of them marked (one in each half);
    the label is the sum of the two marked digits (19 classes). Token = digit + 10 * marked, so
    the vocabulary is 20. The answer needs the first marked digit kept until the second comes."""
    length = arguments.integer("load_adding", "length", length, 2)  # one marked digit in each half
    train = arguments.integer("load_adding", "train", train, 1)
    test = arguments.integer("load_adding", "test", test, 1)
    rng = np.random.default_rng(arguments.integer("load_adding", "seed", seed, 0))
    n = train + test
    digits = rng.integers(0, 10, (n, length))
    rows = np.arange(n)
    first, second = rng.integers(0, length // 2, n), rng.integers(length // 2, length, n)
    marked = np.zeros((n, length), np.int64)
    marked[rows, first] = marked[rows, second] = 1
    x = digits + 10 * marked
    y = digits[rows, first] + digits[rows, second]
    return (Dataset(x[:train], y[:train], "adding-train", 19, vocab=20),
            Dataset(x[train:], y[train:], "adding-test", 19, vocab=20))
