"""The generated sequence datasets: Mackey-Glass by the issue's recipe, the adding problem as tokens."""

import numpy as np
import pytest

from juicepy.data import load_adding, load_dataset, load_mackey_glass, mackey_glass_series
from juicepy.train.loop import previous_value_mse


def _mackey_glass_reference(samples):
    """The same recipe written independently: a delay line indexed by step number."""
    dt, delay, every, skip = 0.1, 170, 10, 10000
    x = np.full(delay + skip + samples * every + 1, 1.2)
    f = lambda v, lag: 0.2 * lag / (1 + lag ** 10) - 0.1 * v  # noqa: E731
    for n in range(delay, delay + skip + samples * every):
        lag0, lag1 = x[n - delay], x[n - delay + 1]
        k1 = f(x[n], lag0)
        k2 = f(x[n] + dt / 2 * k1, (lag0 + lag1) / 2)
        k3 = f(x[n] + dt / 2 * k2, (lag0 + lag1) / 2)
        k4 = f(x[n] + dt * k3, lag1)
        x[n + 1] = x[n] + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    out = x[delay + skip + every::every][:samples]
    return out


def test_mackey_glass_follows_the_recipe():
    raw_head = _mackey_glass_reference(300)
    series = mackey_glass_series()
    assert series.shape == (44000,) and series.min() == 0.0 and series.max() == 1.0
    # the scaled series is an affine image of the raw one: compare after the same scaling
    a, b = np.polyfit(raw_head, series[:300], 1)
    np.testing.assert_allclose(a * raw_head + b, series[:300], atol=1e-9)
    assert 0.2 < raw_head.min() and raw_head.max() < 1.5  # the attractor's known range


def test_split_and_baseline():
    train, test = load_mackey_glass()
    assert (len(train), len(test)) == (35192, 8798)
    assert train.x.shape == (35192, 10, 1) and train.y.shape == (35192, 1) and train.x.dtype == np.float32
    series = mackey_glass_series()
    np.testing.assert_allclose(train.x[5, :, 0], series[5:15], rtol=1e-6)
    np.testing.assert_allclose(test.y[0, 0], series[35192 + 10], rtol=1e-6)
    assert previous_value_mse(test) == pytest.approx(1.3e-3, rel=0.1)
    assert train.task == "regression" and train.outputs == 1


def test_adding_problem_tokens():
    train, test = load_dataset("adding")
    assert train.x.shape == (8192, 10) and train.x.dtype == np.int64 and len(test) == 2048
    marked = train.x >= 10
    assert (marked[:, :5].sum(axis=1) == 1).all() and (marked[:, 5:].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(train.y, np.where(marked, train.x - 10, 0).sum(axis=1))
    assert train.vocab == 20 and train.classes == 19 and train.x.max() < 20
    again, _ = load_adding()
    np.testing.assert_array_equal(again.x, train.x)


@pytest.mark.parametrize("options, needle", [
    ({"seed": -1}, "load_adding: seed must be an integer >= 0, got -1"),
    ({"length": 1}, "load_adding: length must be an integer >= 2, got 1"),
    ({"train": 0}, "load_adding: train must be an integer >= 1, got 0"),
    ({"test": 2.5}, "load_adding: test must be an integer >= 1, got float 2.5"),
])
def test_adding_options_are_checked_by_name(options, needle):
    with pytest.raises(ValueError, match=needle):
        load_adding(**options)
