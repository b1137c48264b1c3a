"""Every non-convolution op of the OpenCL backend against the NumPy backend
(juicepy/backends/opencl/backend.py, elementwise.cl, rows.cl)."""

import math

import numpy as np
import pytest

from juicepy.backends import Workspace
from juicepy.backends.rng import keep_threshold, uniform_hash


def run_on(backend, fn, arrays):
    """Upload ``arrays`` (host), call ``fn(backend, *device_arrays)``, return them all on the host."""
    dev = [backend.from_host(a) for a in arrays]
    fn(backend, *dev)
    return [backend.to_host(d) for d in dev]


def assert_same_as_numpy(ocl, npb, fn, arrays, rtol=1e-5, atol=1e-6):
    want = run_on(npb, fn, [a.copy() for a in arrays])
    got = run_on(ocl, fn, [a.copy() for a in arrays])
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"array {i}")


# --------------------------------------------------------------------------- memory
def test_round_trip_write_copy_fill(ocl, rng):
    host = rng.standard_normal((3, 5)).astype(np.float32)
    a = ocl.from_host(host)
    np.testing.assert_array_equal(ocl.to_host(a), host)
    ocl.write(a, host * 2)
    np.testing.assert_array_equal(ocl.to_host(a), host * 2)
    b = ocl.empty((3, 5))
    ocl.copy(a, b)
    np.testing.assert_array_equal(ocl.to_host(b), host * 2)
    ocl.fill(b, 1.5)
    np.testing.assert_array_equal(ocl.to_host(b), np.full((3, 5), 1.5, np.float32))
    z = ocl.zeros((7,), np.int32)
    np.testing.assert_array_equal(ocl.to_host(z), np.zeros(7, np.int32))
    ocl.fill(z, 3)
    np.testing.assert_array_equal(ocl.to_host(z), np.full(7, 3, np.int32))


def test_allocations_are_counted(ocl):
    before = ocl.allocations
    flat = ocl.zeros((256,))
    ocl.empty((4, 4))
    ocl.from_host(np.ones(3, np.float32))
    views = [ocl.flat_view(flat, 64, (8, 8)), ocl.reshape(flat, (16, 16))]
    assert ocl.allocations == before + 3
    assert views[0].shape == (8, 8)


def test_float64_storage_is_refused_with_a_clear_error(ocl):
    with pytest.raises(TypeError, match="float32"):
        ocl.empty((3,), np.float64)


def test_reshape_and_flat_view_share_storage(ocl):
    flat = ocl.from_host(np.arange(200, dtype=np.float32))
    view = ocl.flat_view(flat, 64, (4, 8))
    np.testing.assert_array_equal(ocl.to_host(view), np.arange(64, 96, dtype=np.float32).reshape(4, 8))
    ocl.fill(view, -1.0)
    host = ocl.to_host(flat)
    assert np.all(host[64:96] == -1) and np.all(host[:64] == np.arange(64)) and np.all(host[96:] == np.arange(96, 200))
    again = ocl.reshape(view, (32,))
    ocl.write(again, np.zeros(32, np.float32))
    assert np.all(ocl.to_host(flat)[64:96] == 0)
    with pytest.raises(ValueError):
        ocl.flat_view(flat, 190, (4, 8))
    with pytest.raises(ValueError):
        ocl.reshape(view, (5, 7))


def test_kernels_honour_view_offsets(ocl, npb, rng):
    """Ops on views at offsets inside one flat buffer touch exactly their own elements."""
    host = rng.standard_normal(448).astype(np.float32)
    flat = ocl.from_host(host)
    x = ocl.flat_view(flat, 64, (6, 10))
    y = ocl.flat_view(flat, 128, (6, 10))
    w = ocl.flat_view(flat, 192, (10, 10))
    b = ocl.flat_view(flat, 320, (10,))
    out = ocl.flat_view(flat, 384, (6, 10))
    ocl.relu(x, y)
    ocl.gemm(y, w, out, trans_b=True)
    ocl.add_bias(out, b)
    want = host.copy()
    want[128:188] = np.maximum(host[64:124], 0)
    want[384:444] = (want[128:188].reshape(6, 10) @ host[192:292].reshape(10, 10).T + host[320:330]).reshape(-1)
    got = ocl.to_host(flat)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_copy_refuses_mismatched_arrays(ocl):
    with pytest.raises(ValueError, match="copy"):
        ocl.copy(ocl.empty((3,)), ocl.empty((4,)))


# ---------------------------------------------------------------------- elementwise
SHAPES = [(1,), (7, 33), (3, 4, 5, 6), (1000,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("op", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations_forward_and_backward(ocl, npb, rng, op, shape, accumulate):
    x = rng.standard_normal(shape).astype(np.float32) * 3
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = rng.standard_normal(shape).astype(np.float32)
    y = np.empty_like(x)

    def fn(b, x, y, dy, dx):
        ws = Workspace()
        if op == "leaky_relu":
            b.leaky_relu(x, y, 0.1)
            b.leaky_relu_backward(x, dy, dx, 0.1, accumulate, ws)
        else:
            getattr(b, op)(x, y)
            getattr(b, op + "_backward")(y, dy, dx, accumulate, ws)

    assert_same_as_numpy(ocl, npb, fn, [x, y, dy, dx])


def test_leaky_relu_slope_above_one(ocl, npb, rng):
    x = rng.standard_normal((5, 9)).astype(np.float32)
    assert_same_as_numpy(ocl, npb, lambda b, x, y: b.leaky_relu(x, y, 1.5), [x, np.empty_like(x)])


@pytest.mark.parametrize("accumulate", [False, True])
def test_add_scale_mul(ocl, npb, rng, accumulate):
    a, c = (rng.standard_normal((17, 5)).astype(np.float32) for _ in range(2))
    out = rng.standard_normal((17, 5)).astype(np.float32)

    def fn(b, a, c, out, tmp1, tmp2):
        b.add(a, c, tmp1)
        b.scale(a, -0.75, tmp2)
        b.mul(a, c, out, accumulate, Workspace())

    assert_same_as_numpy(ocl, npb, fn, [a, c, out, np.empty_like(a), np.empty_like(a)])


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3, 3), (1, 1), (130, 64)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_bias_add_and_grad(ocl, npb, rng, shape, accumulate):
    out = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    db = rng.standard_normal(shape[1]).astype(np.float32)

    def fn(b, out, bias, db):
        b.add_bias(out, bias)
        b.bias_grad(out, db, accumulate, Workspace())

    assert_same_as_numpy(ocl, npb, fn, [out, bias, db], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 255, 256, 257, 100_003])
def test_sum_all(ocl, rng, n):
    x = rng.standard_normal(n).astype(np.float32)
    out = ocl.empty((1,))
    ocl.sum_all(ocl.from_host(x), out)
    assert math.isclose(float(ocl.to_host(out)[0]), float(x.astype(np.float64).sum()), rel_tol=1e-5, abs_tol=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite(ocl, rng, bad):
    x = rng.standard_normal(1001).astype(np.float32)
    dev = ocl.from_host(x)
    assert ocl.all_finite(dev)
    x[777] = bad
    assert not ocl.all_finite(ocl.from_host(x))
    view = ocl.flat_view(ocl.from_host(x), 0, (700,))  # the bad element lies outside the view
    assert ocl.all_finite(view)
    assert ocl.all_finite(ocl.empty((0,)))


# ------------------------------------------------------------------------ row ops
@pytest.mark.parametrize("shape", [(1, 1), (4, 10), (33, 7), (3, 1000)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_family(ocl, npb, rng, op, shape, accumulate):
    x = (rng.standard_normal(shape) * 5 + 40).astype(np.float32)  # large logits: needs the max shift
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = rng.standard_normal(shape).astype(np.float32)

    def fn(b, x, y, dy, dx):
        ws = Workspace()
        getattr(b, op)(x, y, ws)
        getattr(b, op + "_backward")(y, dy, dx, accumulate, ws)

    assert_same_as_numpy(ocl, npb, fn, [x, np.empty_like(x), dy, dx], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,classes", [(1, 1), (8, 10), (33, 7), (5, 1000)])
def test_softmax_cross_entropy_and_nll(ocl, npb, rng, rows, classes):
    logits = (rng.standard_normal((rows, classes)) * 4).astype(np.float32)
    labels = rng.integers(0, classes, rows).astype(np.int32)

    def fn(b, logits, labels, losses, dx, losses2, dx2):
        ws = Workspace()
        b.softmax_cross_entropy(logits, labels, losses, dx, 1.0 / rows, ws)
        b.nll_loss(logits, labels, losses2, dx2, 0.5, ws)

    empty = [np.zeros(rows, np.float32), np.full((rows, classes), 9, np.float32)]
    assert_same_as_numpy(ocl, npb, fn, [logits, labels] + empty + [e.copy() for e in empty],
                         rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (6, 3), (4, 2, 3, 5)])
def test_mse(ocl, npb, rng, shape):
    pred, target = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    fn = lambda b, p, t, losses, dx: b.mse_loss(p, t, losses, dx, 0.25, Workspace())  # noqa: E731
    assert_same_as_numpy(ocl, npb, fn, [pred, target, np.zeros(shape[0], np.float32), np.empty_like(pred)])


def test_loss_ops_refuse_wrong_label_dtype(ocl):
    with pytest.raises(ValueError, match="int32"):
        ocl.softmax_cross_entropy(ocl.empty((2, 3)), ocl.zeros((2,), np.int64), ocl.empty((2,)),
                                  ocl.empty((2, 3)), 1.0)


# ------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("n", [1, 255, 1000, 4099])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed,counter", [(0, 0), (12345, 7), (2**32 - 1, 2**31)])
def test_dropout_masks_are_bit_identical_to_numpy(ocl, npb, rng, n, p, seed, counter):
    x = rng.standard_normal(n).astype(np.float32)

    def fn(b, x, out, mask):
        b.dropout(x, out, mask, p, seed, counter, Workspace())

    want = run_on(npb, fn, [x, np.empty_like(x), np.empty_like(x)])
    got = run_on(ocl, fn, [x, np.empty_like(x), np.empty_like(x)])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[1], want[1])
    # the mask follows the documented stream: kept where the 24 random bits pass the threshold
    kept = uniform_hash(seed, counter, n) * 16777216.0 >= keep_threshold(p)
    np.testing.assert_array_equal(got[2] != 0, kept if p < 1.0 else np.zeros(n, bool))


# ---------------------------------------------------------------------- optimizers
SGD_CASES = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
    dict(lr=0.05, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2),
    dict(lr=0.01, momentum=0.8, dampening=0.0, nesterov=True, weight_decay=5e-3),
]


@pytest.mark.parametrize("hp", SGD_CASES)
def test_sgd_steps_match_numpy(ocl, npb, rng, hp):
    n = 1001
    p0, buf = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(5)]
    results = []
    for b in (npb, ocl):
        p, m = b.from_host(p0), b.from_host(buf)
        g = b.empty((n,))
        ws = Workspace()
        for step, gh in enumerate(grads):
            b.write(g, gh)
            b.sgd_update(p, g, m, first_step=step == 0, ws=ws, **hp)
        results.append((b.to_host(p), b.to_host(m)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6, atol=1e-7)
    if hp["momentum"] != 0.0:  # without momentum the buffer is not part of the update
        np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("decoupled,weight_decay,amsgrad", [(False, 0.0, False), (False, 1e-2, False),
                                                            (True, 1e-2, False), (True, 1e-2, True),
                                                            (False, 0.0, True)])
def test_adam_steps_match_numpy(ocl, npb, rng, decoupled, weight_decay, amsgrad):
    n = 777
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) * 10 ** rng.uniform(-3, 1) for _ in range(6)]
    results = []
    for b in (npb, ocl):
        p, m, v = b.from_host(p0), b.zeros((n,)), b.zeros((n,))
        vmax = b.zeros((n,)) if amsgrad else None
        g = b.empty((n,))
        ws = Workspace()
        for step, gh in enumerate(grads, start=1):
            b.write(g, gh)
            b.adam_update(p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay,
                          decoupled=decoupled, step=step, max_exp_avg_sq=vmax, ws=ws)
        results.append([b.to_host(a) for a in (p, m, v)])
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert not np.allclose(results[1][0], p0)  # the steps moved the params


# ------------------------------------------------------------------------ channels
@pytest.mark.parametrize("accumulate", [False, True])
def test_copy_and_slice_channels(ocl, npb, rng, accumulate):
    src = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
    dst = rng.standard_normal((3, 9, 2, 5)).astype(np.float32)
    part = rng.standard_normal((3, 2, 2, 5)).astype(np.float32)

    def fn(b, src, dst, part):
        b.copy_channels(src, dst, 3, accumulate)
        b.slice_channels(dst, part, 6, accumulate)

    assert_same_as_numpy(ocl, npb, fn, [src, dst, part])
    with pytest.raises(ValueError, match="copy_channels"):
        ocl.copy_channels(ocl.from_host(src), ocl.from_host(dst), 7)
