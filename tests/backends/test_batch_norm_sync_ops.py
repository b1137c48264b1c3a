"""The ops of synchronised batch norm (batch_norm_sums / _stats / _apply / _backward_reduce /
_backward_data) on every available backend, against float64 NumPy references written here."""

import numpy as np
import pytest

SHAPES = [(6, 3), (4, 3, 5, 2), (2, 4, 3)]


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _ch(v, x):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def _data(rng, shape, offset=0.0):
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(np.float32)
    c = shape[1]
    return x, rng.standard_normal(c).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_sums_are_shifted_sums_and_squares(backend, rng, shape):
    x, shift = _data(rng, shape, offset=3.0)
    sums = backend.zeros((2 * shape[1],))
    backend.batch_norm_sums(backend.from_host(x), backend.from_host(shift), sums)
    d = x.astype(np.float64) - _ch(shift, x)
    expected = np.concatenate([d.sum(axis=_axes(x)), (d * d).sum(axis=_axes(x))])
    np.testing.assert_allclose(backend.to_host(sums), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("running, alias", [(True, "none"), (True, "mean"), (True, "running_mean"),
                                            (False, "none"), (False, "mean")])
def test_batch_norm_stats_from_sums(backend, rng, running, alias):
    c, count, momentum, eps = 5, 37, 0.3, 1e-3
    values = rng.standard_normal((count, c)) * 1.5 + 0.25
    shift = rng.standard_normal(c).astype(np.float32) * 0.1
    d = values - shift
    sums = np.concatenate([d.sum(axis=0), (d * d).sum(axis=0)]).astype(np.float32)
    run_mean0, run_var0 = shift.copy(), rng.uniform(0.5, 2, c).astype(np.float32)
    mean, invstd = backend.zeros((c,)), backend.zeros((c,))
    run_mean, run_var = backend.from_host(run_mean0), backend.from_host(run_var0)
    shift_arr = {"none": backend.from_host(shift), "mean": mean, "running_mean": run_mean}[alias]
    if alias == "mean":
        backend.write(mean, shift)
    backend.batch_norm_stats(backend.from_host(sums), count, shift_arr, mean, invstd,
                             run_mean if running else None, run_var if running else None, momentum, eps)
    mu = values.mean(axis=0)
    var = values.var(axis=0)
    np.testing.assert_allclose(backend.to_host(mean), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_host(invstd), 1 / np.sqrt(var + eps), rtol=1e-5)
    if running:
        np.testing.assert_allclose(backend.to_host(run_mean), (1 - momentum) * run_mean0 + momentum * mu,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(backend.to_host(run_var),
                                   (1 - momentum) * run_var0 + momentum * values.var(axis=0, ddof=1), rtol=1e-5)
    else:
        np.testing.assert_array_equal(backend.to_host(run_mean), run_mean0)


def test_batch_norm_stats_clamps_a_negative_variance_from_rounding(backend):
    sums = backend.from_host(np.array([4.0, 3.9999], np.float32))  # 4 values, all ~1: var < 0 by rounding
    mean, invstd = backend.zeros((1,)), backend.zeros((1,))
    backend.batch_norm_stats(sums, 4, backend.zeros((1,)), mean, invstd, None, None, 0.1, 1e-5)
    np.testing.assert_allclose(backend.to_host(invstd), [1 / np.sqrt(1e-5)], rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_apply(backend, rng, shape):
    x, mean = _data(rng, shape)
    c = shape[1]
    invstd, gamma, beta = (rng.uniform(0.5, 2, c).astype(np.float32) for _ in range(3))
    out = backend.zeros(shape)
    backend.batch_norm_apply(*(backend.from_host(a) for a in (x, gamma, beta, mean, invstd)), out)
    expected = (x - _ch(mean, x)) * _ch(invstd, x) * _ch(gamma, x) + _ch(beta, x)
    np.testing.assert_allclose(backend.to_host(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("params", ["none", "set", "accumulate"])
def test_batch_norm_backward_reduce(backend, rng, shape, params):
    x, mean = _data(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    invstd = rng.uniform(0.5, 2, c).astype(np.float32)
    dgamma0, dbeta0 = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    dgamma, dbeta = backend.from_host(dgamma0), backend.from_host(dbeta0)
    sums = backend.zeros((2 * c,))
    given = params != "none"
    backend.batch_norm_backward_reduce(*(backend.from_host(a) for a in (x, dy, mean, invstd)), sums,
                                       dgamma if given else None, dbeta if given else None,
                                       accumulate_params=params == "accumulate")
    xhat = (x - _ch(mean, x)) * _ch(invstd, x)
    sum_dy, sum_dy_xhat = dy.astype(np.float64).sum(axis=_axes(x)), (dy * xhat).sum(axis=_axes(x))
    np.testing.assert_allclose(backend.to_host(sums), np.concatenate([sum_dy, sum_dy_xhat]), rtol=1e-5, atol=1e-4)
    base = (dgamma0, dbeta0) if params == "accumulate" else (0.0, 0.0)
    want = (base[0] + sum_dy_xhat, base[1] + sum_dy) if given else (dgamma0, dbeta0)
    np.testing.assert_allclose(backend.to_host(dgamma), want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(backend.to_host(dbeta), want[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_batch_norm_backward_data(backend, rng, shape, accumulate):
    x, mean = _data(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    invstd, gamma = rng.uniform(0.5, 2, c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    sums = rng.standard_normal(2 * c).astype(np.float32) * 3
    count = 3 * x.size // c  # sums over three ranks' shares
    dx0 = rng.standard_normal(shape).astype(np.float32)
    dx = backend.from_host(dx0)
    backend.batch_norm_backward_data(*(backend.from_host(a) for a in (x, dy, gamma, mean, invstd, sums)), count,
                                     dx, accumulate=accumulate)
    xhat = (x - _ch(mean, x)) * _ch(invstd, x)
    grad = _ch(gamma, x) * _ch(invstd, x) * (dy - _ch(sums[:c], x) / count - xhat * _ch(sums[c:], x) / count)
    np.testing.assert_allclose(backend.to_host(dx), grad + (dx0 if accumulate else 0), rtol=1e-4, atol=1e-5)


def test_the_ops_compose_to_batch_norm_training(backend, rng):
    """sums about zero -> mean; sums about the mean -> stats; apply: the fused op's result."""
    shape = (8, 3, 4, 4)
    x, _ = _data(rng, shape, offset=50.0)  # |mean| >> std: the second pass keeps the variance exact
    c = shape[1]
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    xd, zero = backend.from_host(x), backend.zeros((c,))
    sums, mean, invstd, out = backend.zeros((2 * c,)), backend.zeros((c,)), backend.zeros((c,)), backend.zeros(shape)
    count = x.size // c
    backend.batch_norm_sums(xd, zero, sums)
    backend.batch_norm_stats(sums, count, zero, mean, invstd, None, None, 0.0, 1e-5)
    backend.batch_norm_sums(xd, mean, sums)
    backend.batch_norm_stats(sums, count, mean, mean, invstd, None, None, 0.0, 1e-5)
    backend.batch_norm_apply(xd, backend.from_host(gamma), backend.from_host(beta), mean, invstd, out)
    x64 = x.astype(np.float64)
    expected = (x64 - _ch(x64.mean(axis=_axes(x)), x)) / np.sqrt(_ch(x64.var(axis=_axes(x)), x) + 1e-5) \
        * _ch(gamma, x) + _ch(beta, x)
    np.testing.assert_allclose(backend.to_host(out), expected, rtol=1e-4, atol=1e-4)
