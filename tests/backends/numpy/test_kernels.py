"""The optional fused C optimizer kernels agree with the pure-NumPy fallback, variant by variant."""

import numpy as np
import pytest

from juicepy.backends import Workspace
from juicepy.backends.numpy import NumpyBackend
from juicepy.backends.numpy.threads import CHUNK

FUSED, PLAIN = NumpyBackend(kernels="c"), NumpyBackend(kernels="numpy")
needs_kernels = pytest.mark.skipif(FUSED.cpu_kernels is None,
                                   reason="juicepy.backends.numpy._cpu_kernels was not built (no C compiler)")

ADAM = [dict(weight_decay=0.0, decoupled=False), dict(weight_decay=0.1, decoupled=False),
        dict(weight_decay=0.1, decoupled=True), dict(weight_decay=0.0, decoupled=False, amsgrad=True)]
SGD = [dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
       dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-2),
       dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.0),
       dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-3)]


def _adam_run(backend, dtype, n, amsgrad=False, **kw):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    vmax = np.zeros(n, dtype) if amsgrad else None
    ws = Workspace()
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        backend.adam_update(p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step,
                            max_exp_avg_sq=vmax, ws=ws, **kw)
    return p, m, v


def _sgd_run(backend, dtype, n, **kw):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype) if kw["momentum"] else None
    ws = Workspace()
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        backend.sgd_update(p, g, buf, lr=0.05, first_step=step == 1, ws=ws, **kw)
    return p, buf


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", ADAM, ids=["adam", "adam_l2", "adamw", "amsgrad"])
@pytest.mark.parametrize("n", [1, 1000, 3 * CHUNK + 17])  # one lane and several threaded lanes
def test_fused_adam_matches_numpy(dtype, kw, n):
    fused, plain = _adam_run(FUSED, dtype, n, **kw), _adam_run(PLAIN, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", SGD, ids=["plain", "momentum_wd", "dampening", "nesterov"])
@pytest.mark.parametrize("n", [5, 3 * CHUNK + 17])
def test_fused_sgd_matches_numpy(dtype, kw, n):
    fused, plain = _sgd_run(FUSED, dtype, n, **kw), _sgd_run(PLAIN, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
def test_kernels_refuse_mismatched_buffers():
    k = FUSED.cpu_kernels
    p, g = np.zeros(4, np.float32), np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="grad: dtype or length differs"):
        k.sgd(p, g, None, 0.1, 0.0, 1.0, 0.0, False, True)
    with pytest.raises(TypeError, match="expected float32 or float64"):
        k.sgd(np.zeros(4, np.int32), np.zeros(4, np.int32), None, 0.1, 0.0, 1.0, 0.0, False, True)
    with pytest.raises(TypeError, match="param: expected a contiguous writable"):
        k.adam(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32), np.zeros(4, np.float32),
               np.zeros(4, np.float32), None, 0.1, 0.999, 0.001, 0.1, 1e-8, 0.0, 1.0)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_fused_relu_backward_matches_numpy(dtype, accumulate):
    rng = np.random.default_rng(2)
    y = np.maximum(rng.standard_normal((7, 33)), 0).astype(dtype)
    dy = rng.standard_normal((7, 33)).astype(dtype)
    start = rng.standard_normal((7, 33)).astype(dtype)
    results = []
    for backend in (FUSED, PLAIN):
        dx = start.copy()
        backend.relu_backward(y, dy, dx, accumulate, Workspace())
        results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], (start if accumulate else 0) + np.where(y > 0, dy, 0))
