"""The optional fused C optimizer kernels agree with the pure-NumPy fallback, variant by variant."""

import numpy as np
import pytest

import juicepy.backends.numpy.backend as nb
from juicepy.backends import Workspace

needs_kernels = pytest.mark.skipif(nb._cpu_kernels is None,
                                   reason="juicepy.backends.numpy._cpu_kernels is not loaded (not built for lack of a C compiler, or JUICEPY_CPU_KERNELS=numpy)")

ADAM = [dict(weight_decay=0.0, decoupled=False), dict(weight_decay=0.1, decoupled=False),
        dict(weight_decay=0.1, decoupled=True), dict(weight_decay=0.0, decoupled=False, amsgrad=True)]
SGD = [dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
       dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-2),
       dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.0),
       dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-3)]


def _adam_run(kernels, dtype, n, amsgrad=False, **kw):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    vmax = np.zeros(n, dtype) if amsgrad else None
    backend, ws = nb.NumpyBackend(), Workspace()
    saved, nb._cpu_kernels = nb._cpu_kernels, kernels
    try:
        for step in range(1, 4):
            g = rng.standard_normal(n).astype(dtype)
            backend.adam_update(p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step,
                                max_exp_avg_sq=vmax, ws=ws, **kw)
    finally:
        nb._cpu_kernels = saved
    return p, m, v


def _sgd_run(kernels, dtype, n, **kw):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype) if kw["momentum"] else None
    backend, ws = nb.NumpyBackend(), Workspace()
    saved, nb._cpu_kernels = nb._cpu_kernels, kernels
    try:
        for step in range(1, 4):
            g = rng.standard_normal(n).astype(dtype)
            backend.sgd_update(p, g, buf, lr=0.05, first_step=step == 1, ws=ws, **kw)
    finally:
        nb._cpu_kernels = saved
    return p, buf


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", ADAM, ids=["adam", "adam_l2", "adamw", "amsgrad"])
@pytest.mark.parametrize("n", [1, 1000, 3 * nb.CHUNK + 17])  # one lane and several threaded lanes
def test_fused_adam_matches_numpy(dtype, kw, n):
    fused, plain = _adam_run(nb._cpu_kernels, dtype, n, **kw), _adam_run(None, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", SGD, ids=["plain", "momentum_wd", "dampening", "nesterov"])
@pytest.mark.parametrize("n", [5, 3 * nb.CHUNK + 17])
def test_fused_sgd_matches_numpy(dtype, kw, n):
    fused, plain = _sgd_run(nb._cpu_kernels, dtype, n, **kw), _sgd_run(None, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
def test_kernels_refuse_mismatched_buffers():
    k = nb._cpu_kernels
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
    for kernels in (nb._cpu_kernels, None):
        dx = start.copy()
        saved, nb._cpu_kernels = nb._cpu_kernels, kernels
        try:
            nb.NumpyBackend().relu_backward(y, dy, dx, accumulate, Workspace())
        finally:
            nb._cpu_kernels = saved
        results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], (start if accumulate else 0) + np.where(y > 0, dy, 0))
