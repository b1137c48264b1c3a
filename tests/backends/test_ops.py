"""The conformance suite: every op of juicepy/backends/base.py on every backend of the
``ops_backend`` fixture (tests/conftest.py), each checked against a float64 NumPy reference written
here (never against another backend): accumulate on and off, odd sizes, operands that are views at
offsets inside one flat buffer, float32 and float64 where the backend computes in them, and bad
arguments (a ValueError or TypeError whose message starts "<backend> backend <op>:").

Backend-specific behaviour (device choice, program cache, graph capture, GEMM variants) is tested
beside this file, under tests/backends/<backend>/.
"""

import inspect
import math

import numpy as np
import pytest

from juicepy.backends import CaptureError, Workspace
from juicepy.backends.base import Backend, ConvNorm
from juicepy.backends.rng import keep_threshold, uniform_hash

SENTINEL = 7.25  # what view layouts leave between and around the operands; must survive every op


@pytest.fixture(params=["float32", "float64"])
def dtype(request, ops_backend):
    dt = np.dtype(request.param)
    if dt not in [np.dtype(d) for d in ops_backend.dtypes]:
        pytest.skip(f"{ops_backend.name} computes in {', '.join(np.dtype(d).name for d in ops_backend.dtypes)} only")
    return dt


def tolerance(dtype, scale=1.0):
    """assert_allclose tolerances for a result computed in ``dtype`` (``scale`` for long sums)."""
    return dict(rtol=2e-5 * scale, atol=2e-5 * scale) if dtype == np.float32 else dict(rtol=1e-11 * scale, atol=1e-11 * scale)


class Placed:
    """Host arrays put on a backend, each its own array ("fresh") or views at odd offsets into one
    flat buffer filled with SENTINEL around them ("view")."""

    def __init__(self, backend, arrays, dtype, layout):
        self.backend = backend
        host = [np.asarray(a, dtype) for a in arrays]
        if layout == "fresh":
            self.flat, self.devs = None, [backend.from_host(a) for a in host]
            return
        offsets, at = [], 5
        for a in host:
            offsets.append(at)
            at += a.size + 3
        self.flat = backend.from_host(np.full(at + 2, SENTINEL, dtype))
        self.spans = [(o, o + a.size) for o, a in zip(offsets, host)]
        self.devs = []
        for a, o in zip(host, offsets):
            view = backend.flat_view(self.flat, o, a.shape)
            backend.write(view, a)
            self.devs.append(view)

    def host(self, i):
        return self.backend.to_host(self.devs[i]).astype(np.float64)

    def check_sentinels(self):
        if self.flat is None:
            return
        flat = self.backend.to_host(self.flat)
        outside = np.ones(flat.size, bool)
        for lo, hi in self.spans:
            outside[lo:hi] = False
        np.testing.assert_array_equal(flat[outside], SENTINEL, err_msg="an op wrote outside its operands")


def upload(backend, *arrays, dtype):
    return [backend.from_host(np.asarray(a, dtype)) for a in arrays]


def bad_argument(backend, op):
    """pytest.raises for a refused argument of ``op``: the message starts with the convention."""
    return pytest.raises((ValueError, TypeError), match=rf"^{backend.name} backend {op}:")


LAYOUTS = ["fresh", "view"]
SHAPES = [(1,), (7, 33), (3, 4, 5, 6), (1000,)]


# ========================================================================== memory
def test_memory_round_trip(ops_backend, dtype, rng):
    b = ops_backend
    host = rng.standard_normal((3, 5)).astype(dtype)
    a = b.from_host(host)
    assert b.is_array(a) and not b.is_array(host.tolist())
    np.testing.assert_array_equal(b.to_host(a), host)
    b.write(a, host * 2)
    np.testing.assert_array_equal(b.to_host(a), host * 2)
    c = b.empty((3, 5), dtype)
    assert tuple(c.shape) == (3, 5) and np.dtype(c.dtype) == dtype
    b.copy(a, c)
    np.testing.assert_array_equal(b.to_host(c), host * 2)
    b.fill(c, 1.5)
    np.testing.assert_array_equal(b.to_host(c), np.full((3, 5), 1.5, dtype))
    np.testing.assert_array_equal(b.to_host(b.zeros((4,), dtype)), np.zeros(4))
    ints = b.zeros((7,), np.int32)
    b.fill(ints, 3)
    np.testing.assert_array_equal(b.to_host(ints), np.full(7, 3, np.int32))
    b.synchronize()
    b.release()  # gives cached memory back; live arrays stay intact
    np.testing.assert_array_equal(b.to_host(a), host * 2)


def test_allocations_are_counted_and_views_are_free(ops_backend):
    b = ops_backend
    before = b.allocations
    flat = b.zeros((256,))
    b.empty((4, 4))
    b.from_host(np.ones(3, np.float32))
    assert b.allocations == before + 3
    views = [b.flat_view(flat, 64, (8, 8)), b.reshape(flat, (16, 16))]
    assert b.allocations == before + 3 and tuple(views[0].shape) == (8, 8)


def test_reshape_and_flat_view_share_storage(ops_backend, dtype):
    b = ops_backend
    flat = b.from_host(np.arange(200, dtype=dtype))
    view = b.flat_view(flat, 61, (4, 8))
    np.testing.assert_array_equal(b.to_host(view), np.arange(61, 93).reshape(4, 8))
    b.fill(view, -1.0)
    host = b.to_host(flat)
    assert np.all(host[61:93] == -1) and np.all(host[:61] == np.arange(61)) and np.all(host[93:] == np.arange(93, 200))
    again = b.reshape(view, (32,))
    b.write(again, np.zeros(32, dtype))
    assert np.all(b.to_host(flat)[61:93] == 0)


def test_memory_ops_refuse_bad_arguments(ops_backend):
    b = ops_backend
    flat = b.zeros((200,))
    with bad_argument(b, "flat_view"):
        b.flat_view(flat, 190, (4, 8))
    with bad_argument(b, "reshape"):
        b.reshape(b.zeros((4, 8)), (5, 7))
    with bad_argument(b, "write"):
        b.write(b.zeros((3,)), np.ones(4, np.float32))
    with bad_argument(b, "copy"):
        b.copy(b.zeros((3,)), b.zeros((4,)))


# ======================================================================= arithmetic
# (101, 37, 48): whole vectors of K with partial tiles of rows and columns, and an A of over 96
# rows; (9, 13, 1040): K long enough to be split, into a whole and a partial slice; (40, 300, 400)
# and (300, 100, 200): products the NumPy backend splits over its lanes, by columns and by rows
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 3), (33, 17, 65), (101, 37, 48), (9, 13, 1040), (40, 300, 400),
                                   (300, 100, 200)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, -1.5)])
def test_gemm(ops_backend, dtype, rng, m, n, k, trans_a, trans_b, alpha, beta):
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b_ = rng.standard_normal((n, k) if trans_b else (k, n))
    out0 = rng.standard_normal((m, n))
    want = alpha * ((a.T if trans_a else a) @ (b_.T if trans_b else b_)) + beta * out0
    placed = Placed(ops_backend, [a, b_, out0], dtype, "view")
    ops_backend.gemm(*placed.devs, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, ws=Workspace())
    np.testing.assert_allclose(placed.host(2), want, **tolerance(dtype, scale=math.sqrt(k)))
    placed.check_sentinels()


def test_gemm_beta_zero_ignores_nan_in_out(ops_backend, rng):
    a, b_ = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))
    da, db, out = upload(ops_backend, a, b_, np.full((4, 5), np.nan), dtype=np.float32)
    ops_backend.gemm(da, db, out)
    np.testing.assert_allclose(ops_backend.to_host(out), a @ b_, **tolerance(np.float32))


def test_gemm_refuses_bad_shapes(ops_backend):
    b = ops_backend
    with bad_argument(b, "gemm"):
        b.gemm(b.zeros((3, 4)), b.zeros((5, 2)), b.zeros((3, 2)))
    with bad_argument(b, "gemm"):
        b.gemm(b.zeros((3, 4)), b.zeros((4, 2)), b.zeros((2, 3)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_add_scale_mul(ops_backend, dtype, rng, shape, layout, accumulate):
    a, c, out0 = (rng.standard_normal(shape) for _ in range(3))
    placed = Placed(ops_backend, [a, c, out0, np.zeros(shape), np.zeros(shape)], dtype, layout)
    da, dc, dout, s1, s2 = placed.devs
    ops_backend.add(da, dc, s1)
    ops_backend.scale(da, -0.75, s2)
    ops_backend.mul(da, dc, dout, accumulate, Workspace())
    tol = tolerance(dtype)
    np.testing.assert_allclose(placed.host(3), a + c, **tol)
    np.testing.assert_allclose(placed.host(4), -0.75 * a, **tol)
    np.testing.assert_allclose(placed.host(2), (out0 if accumulate else 0) + a * c, **tol)
    placed.check_sentinels()


@pytest.mark.parametrize("shape", SHAPES + [(32, 16, 8, 8)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_place", [False, True])
def test_add_with_relu(ops_backend, dtype, rng, shape, layout, in_place):
    """add(a, b, out, relu=True) is max(a + b, 0) in one op: NaN kept (as relu), exact zeros
    where the sum is negative, out may be a (Add sums more than two inputs in place); relu=False
    (spelled out) is the plain sum."""
    a, c = rng.standard_normal(shape), rng.standard_normal(shape)
    a.reshape(-1)[::7] = np.nan
    c.reshape(-1)[1::5] = -a.reshape(-1)[1::5]  # sums of exactly zero
    placed = Placed(ops_backend, [a, c, np.zeros(shape), np.zeros(shape)], dtype, layout)
    da, dc, dout, dplain = placed.devs
    out = da if in_place else dout
    ops_backend.add(da, dc, dplain, relu=False)
    ops_backend.add(da, dc, out, relu=True)
    total = a.astype(dtype).astype(np.float64) + c.astype(dtype).astype(np.float64)
    want = np.where(np.isnan(total), np.nan, np.maximum(total, 0.0))
    got = placed.host(0 if in_place else 2)
    np.testing.assert_allclose(got, want, **tolerance(dtype))
    assert np.array_equal(np.isnan(got), np.isnan(a)) and (got[~np.isnan(got)] >= 0).all()
    np.testing.assert_allclose(placed.host(3), total, **tolerance(dtype))
    placed.check_sentinels()


# (3, 70): columns past one tile of 32 and fewer rows than a block's warps; (5000, 3) and
# (10, 2, 21, 22): more values a channel than CUDA gives one block (device.channel_chunks: 5 chunks
# of 1024, the last shorter, on a GPU of 132 SMs); (3, 5, 9, 13) and (70, 3, 8, 8): planes of 117 and
# 64 floats (OpenCL's plane_sums_v: runs of 64, of 16 and single floats; 15 planes one a work-item,
# 210 four a work-item with the last item's two)
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3, 4), (1, 1), (130, 64), (3, 4, 5, 6), (3, 70), (5000, 3),
                                   (10, 2, 21, 22), (3, 5, 9, 13), (70, 3, 8, 8)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_add_bias_and_bias_grad(ops_backend, dtype, rng, shape, accumulate):
    out0, bias, db0 = rng.standard_normal(shape), rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    placed = Placed(ops_backend, [out0, bias, db0], dtype, "view")
    out, dbias, db = placed.devs
    ops_backend.add_bias(out, dbias)
    ops_backend.bias_grad(out, db, accumulate, Workspace())
    with_bias = out0 + bias.reshape(bshape)
    axes = (0,) + tuple(range(2, len(shape)))
    np.testing.assert_allclose(placed.host(0), with_bias, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(2), (db0 if accumulate else 0) + with_bias.sum(axis=axes),
                               **tolerance(dtype, scale=10))
    placed.check_sentinels()


def test_bias_ops_refuse_a_wrong_channel_count(ops_backend):
    b = ops_backend
    with bad_argument(b, "add_bias"):
        b.add_bias(b.zeros((4, 3)), b.zeros((4,)))
    with bad_argument(b, "bias_grad"):
        b.bias_grad(b.zeros((4, 3, 2)), b.zeros((2,)))


@pytest.mark.parametrize("n", [1, 255, 256, 257, 100_003])
def test_sum_all(ops_backend, dtype, rng, n):
    x = rng.standard_normal(n)
    dx, out = upload(ops_backend, x, np.zeros(1), dtype=dtype)
    ops_backend.sum_all(dx, out)
    assert math.isclose(float(ops_backend.to_host(out)[0]), float(x.sum()),
                        rel_tol=1e-5 if dtype == np.float32 else 1e-12, abs_tol=1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite(ops_backend, dtype, rng, bad):
    b = ops_backend
    x = rng.standard_normal(1001).astype(dtype)
    assert b.all_finite(b.from_host(x))
    assert b.all_finite(b.from_host(np.full(3, np.finfo(dtype).max, dtype)))  # huge but finite
    x[777] = bad
    dev = b.from_host(x)
    assert not b.all_finite(dev)
    assert b.all_finite(b.flat_view(dev, 0, (700,)))  # the bad element lies outside the view
    assert b.all_finite(b.empty((0,), dtype))


@pytest.mark.parametrize("accumulate", [False, True])
def test_store(ops_backend, dtype, rng, accumulate):
    src, dst0 = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    placed = Placed(ops_backend, [src, dst0], dtype, "view")
    ops_backend.store(*placed.devs, accumulate=accumulate)
    np.testing.assert_allclose(placed.host(1), src + (dst0 if accumulate else 0), **tolerance(dtype))
    placed.check_sentinels()


def test_elementwise_ops_refuse_mismatched_arrays(ops_backend):
    b = ops_backend
    x, y, wrong = b.zeros((4, 5)), b.zeros((4, 5)), b.zeros((5, 4))
    with bad_argument(b, "add"):
        b.add(x, y, wrong)
    with bad_argument(b, "add"):
        b.add(x, wrong, y, relu=True)
    with bad_argument(b, "scale"):
        b.scale(x, 2.0, b.zeros((20,)))
    with bad_argument(b, "mul"):
        b.mul(x, wrong, y)
    with bad_argument(b, "relu"):
        b.relu(x, wrong)
    with bad_argument(b, "tanh_backward"):
        b.tanh_backward(x, y, wrong)


# ====================================================================== activations
def _activation_reference(op, x, dy, slope):
    if op == "relu":
        y = np.maximum(x, 0)
        return y, np.where(y > 0, dy, 0.0)
    if op == "leaky_relu":
        return np.where(x > 0, x, slope * x), np.where(x > 0, dy, slope * dy)
    if op == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-x))
        return y, dy * y * (1 - y)
    y = np.tanh(x)
    return y, dy * (1 - y * y)


@pytest.mark.parametrize("op,slope", [("relu", None), ("leaky_relu", 0.1), ("leaky_relu", 1.5),
                                      ("sigmoid", None), ("tanh", None)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_activation_forward_and_backward(ops_backend, dtype, rng, op, slope, shape, layout, accumulate):
    x = rng.standard_normal(shape) * 3
    if op == "sigmoid":
        x.reshape(-1)[0] = -200.0  # 1 / (1 + exp(200)) must not overflow
    x = x.astype(dtype).astype(np.float64)  # the reference sees the values the backend sees
    dy, dx0 = rng.standard_normal(shape), rng.standard_normal(shape)
    placed = Placed(ops_backend, [x, np.zeros(shape), dy, dx0], dtype, layout)
    dev_x, dev_y, dev_dy, dev_dx = placed.devs
    ws = Workspace()
    if op == "leaky_relu":
        ops_backend.leaky_relu(dev_x, dev_y, slope)
        ops_backend.leaky_relu_backward(dev_x, dev_dy, dev_dx, slope, accumulate, ws)
    else:
        getattr(ops_backend, op)(dev_x, dev_y)
        getattr(ops_backend, op + "_backward")(dev_y, dev_dy, dev_dx, accumulate, ws)
    y_ref, dx_ref = _activation_reference(op, x, dy, slope)
    tol = tolerance(dtype)
    np.testing.assert_allclose(placed.host(1), y_ref, **tol)
    np.testing.assert_allclose(placed.host(3), (dx0 if accumulate else 0) + dx_ref, **tol)
    placed.check_sentinels()


# ================================================================= row-wise (softmax)
ROWS = [(1, 1), (4, 10), (33, 7), (3, 1000)]


def _softmax_reference(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", ROWS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_softmax_family(ops_backend, dtype, rng, op, shape, layout, accumulate):
    x = (rng.standard_normal(shape) * 5 + 40).astype(dtype).astype(np.float64)  # large: needs the max shift
    dy, dx0 = rng.standard_normal(shape), rng.standard_normal(shape)
    placed = Placed(ops_backend, [x, np.zeros(shape), dy, dx0], dtype, layout)
    ws = Workspace()
    getattr(ops_backend, op)(placed.devs[0], placed.devs[1], ws)
    getattr(ops_backend, op + "_backward")(placed.devs[1], placed.devs[2], placed.devs[3], accumulate, ws)
    p = _softmax_reference(x)
    if op == "softmax":
        y_ref, dx_ref = p, p * (dy - (dy * p).sum(axis=1, keepdims=True))
    else:
        y_ref, dx_ref = np.log(p), dy - p * dy.sum(axis=1, keepdims=True)
    tol = tolerance(dtype, scale=5)
    np.testing.assert_allclose(placed.host(1), y_ref, **tol)
    np.testing.assert_allclose(placed.host(3), (dx0 if accumulate else 0) + dx_ref, **tol)
    placed.check_sentinels()


def test_row_ops_refuse_mismatched_arrays(ops_backend):
    b = ops_backend
    with bad_argument(b, "softmax"):
        b.softmax(b.zeros((4, 5)), b.zeros((4, 6)))
    with bad_argument(b, "log_softmax_backward"):
        b.log_softmax_backward(b.zeros((4, 5)), b.zeros((4, 5)), b.zeros((5, 4)))


# =========================================================================== losses
@pytest.mark.parametrize("rows,classes", [(1, 1), (8, 10), (33, 7), (5, 1000)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_cross_entropy_and_nll(ops_backend, dtype, rng, rows, classes, layout):
    logits = (rng.standard_normal((rows, classes)) * 4).astype(dtype).astype(np.float64)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    placed = Placed(ops_backend, [logits, np.zeros(rows), np.full((rows, classes), 9.0), np.zeros(rows),
                                  np.full((rows, classes), 9.0)], dtype, layout)
    dev_logits, losses, dx, losses2, dx2 = placed.devs
    dev_labels = ops_backend.from_host(labels)
    ws = Workspace()
    ops_backend.softmax_cross_entropy(dev_logits, dev_labels, losses, dx, 1.0 / rows, ws)
    ops_backend.nll_loss(dev_logits, dev_labels, losses2, dx2, 0.5, ws)
    onehot = np.eye(classes)[labels]
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1)) + logits.max(axis=1)
    tol = tolerance(dtype, scale=5)
    np.testing.assert_allclose(placed.host(1), lse - logits[np.arange(rows), labels], **tol)
    np.testing.assert_allclose(placed.host(2), (_softmax_reference(logits) - onehot) / rows, **tol)
    np.testing.assert_allclose(placed.host(3), -logits[np.arange(rows), labels], **tol)
    np.testing.assert_allclose(placed.host(4), -0.5 * onehot, **tol)
    placed.check_sentinels()


@pytest.mark.parametrize("shape", [(1, 1), (6, 3), (4, 2, 3, 5)])
def test_mse_loss(ops_backend, dtype, rng, shape):
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    placed = Placed(ops_backend, [pred, target, np.zeros(shape[0]), np.zeros(shape)], dtype, "view")
    ops_backend.mse_loss(*placed.devs, 0.25, Workspace())
    diff = pred - target
    tol = tolerance(dtype, scale=5)
    np.testing.assert_allclose(placed.host(2), (diff ** 2).reshape(shape[0], -1).sum(axis=1), **tol)
    np.testing.assert_allclose(placed.host(3), 2 * 0.25 * diff, **tol)
    placed.check_sentinels()


def test_losses_refuse_bad_labels_and_shapes(ops_backend):
    b = ops_backend
    with bad_argument(b, "softmax_cross_entropy"):
        b.softmax_cross_entropy(b.zeros((2, 3)), b.zeros((2,), np.int64), b.zeros((2,)), b.zeros((2, 3)), 1.0)
    with bad_argument(b, "nll_loss"):
        b.nll_loss(b.zeros((2, 3)), b.zeros((3,), np.int32), b.zeros((2,)), b.zeros((2, 3)), 1.0)
    with bad_argument(b, "mse_loss"):
        b.mse_loss(b.zeros((2, 3)), b.zeros((2, 3)), b.zeros((3,)), b.zeros((2, 3)), 1.0)


# ========================================================================== dropout
@pytest.mark.parametrize("n", [1, 255, 4099])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("seed,counter", [(0, 0), (12345, 7), (2**32 - 1, 2**31)])
def test_dropout_follows_the_documented_stream(ops_backend, dtype, rng, n, p, seed, counter):
    x = rng.standard_normal(n)
    placed = Placed(ops_backend, [x, np.zeros(n), np.zeros(n)], dtype, "view")
    ops_backend.dropout(*placed.devs, p, seed, counter, Workspace())
    # kept where the element's 24 random bits reach the threshold (juicepy/backends/rng.py)
    kept = uniform_hash(seed, counter, n) * 16777216.0 >= keep_threshold(p) if p < 1.0 else np.zeros(n, bool)
    scale = np.asarray(1.0 / (1.0 - p), dtype) if p < 1.0 else 0.0
    np.testing.assert_array_equal(placed.host(2), np.where(kept, scale, 0.0))
    np.testing.assert_allclose(placed.host(1), np.where(kept, x.astype(dtype) * scale, 0.0), **tolerance(dtype))
    placed.check_sentinels()


def test_dropout_refuses_mismatched_arrays(ops_backend):
    b = ops_backend
    with bad_argument(b, "dropout"):
        b.dropout(b.zeros((10,)), b.zeros((10,)), b.zeros((9,)), 0.5, 0, 0)


# ======================================================================= optimizers
def _sgd_reference(p, grads, buf, lr, momentum, dampening, nesterov, weight_decay):
    p = p.copy()
    for step, g in enumerate(grads):
        g = g + weight_decay * p
        if momentum != 0.0:
            buf = g.copy() if step == 0 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p, buf


SGD_CASES = [dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
             dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
             dict(lr=0.05, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2),
             dict(lr=0.01, momentum=0.8, dampening=0.0, nesterov=True, weight_decay=5e-3)]


@pytest.mark.parametrize("hp", SGD_CASES, ids=["plain", "momentum", "dampening_wd", "nesterov_wd"])
@pytest.mark.parametrize("n", [1, 1001])
def test_sgd_update(ops_backend, dtype, rng, hp, n):
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(4)]
    placed = Placed(ops_backend, [p0, np.zeros(n), np.zeros(n)], dtype, "view")
    p, g, buf = placed.devs
    ws = Workspace()
    for step, gh in enumerate(grads):
        ops_backend.write(g, gh.astype(dtype))
        ops_backend.sgd_update(p, g, buf if hp["momentum"] else None, first_step=step == 0, ws=ws, **hp)
    want_p, want_buf = _sgd_reference(p0, grads, None, **hp)
    np.testing.assert_allclose(placed.host(0), want_p, **tolerance(dtype))
    if hp["momentum"]:
        np.testing.assert_allclose(placed.host(2), want_buf, **tolerance(dtype))
    else:  # without momentum the buffer is not part of the update
        np.testing.assert_array_equal(placed.host(2), 0.0)
    placed.check_sentinels()


def _adam_reference(p, grads, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    vmax = np.zeros_like(p)
    for step, g in enumerate(grads, start=1):
        if weight_decay:
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax if amsgrad else v) / math.sqrt(1 - beta2 ** step) + eps
        p = p - lr / (1 - beta1 ** step) * m / denom
    return p, m, v, vmax


@pytest.mark.parametrize("decoupled,weight_decay,amsgrad", [(False, 0.0, False), (False, 1e-2, False),
                                                            (True, 1e-2, False), (True, 1e-2, True),
                                                            (False, 0.0, True)],
                         ids=["adam", "adam_l2", "adamw", "adamw_amsgrad", "amsgrad"])
@pytest.mark.parametrize("n", [1, 777])
def test_adam_update(ops_backend, dtype, rng, decoupled, weight_decay, amsgrad, n):
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) * 10 ** rng.uniform(-3, 1) for _ in range(5)]
    placed = Placed(ops_backend, [p0, np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)], dtype, "view")
    p, g, m, v, vmax = placed.devs
    ws = Workspace()
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
    for step, gh in enumerate(grads, start=1):
        ops_backend.write(g, gh.astype(dtype))
        ops_backend.adam_update(p, g, m, v, step=step, max_exp_avg_sq=vmax if amsgrad else None, ws=ws, **hp)
    want = _adam_reference(p0, grads, amsgrad=amsgrad, **hp)
    tol = tolerance(dtype, scale=5)
    for i, ref in zip((0, 2, 3), want[:3]):
        np.testing.assert_allclose(placed.host(i), ref, **tol)
    np.testing.assert_allclose(placed.host(4), want[3] if amsgrad else 0.0, **tol)
    placed.check_sentinels()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_optimizer_guard_skips_the_update_on_a_non_finite_loss(ops_backend, dtype, rng, bad):
    b = ops_backend
    p0, g0 = rng.standard_normal(100), rng.standard_normal(100)
    p, g, buf, m, v = upload(b, p0, g0, np.zeros(100), np.zeros(100), np.zeros(100), dtype=dtype)
    sgd = dict(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, first_step=True)
    adam = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, step=1)
    refused = b.from_host(np.array([bad], dtype))
    b.sgd_update(p, g, buf, guard=refused, **sgd)
    b.adam_update(p, g, m, v, guard=refused, **adam)
    for arr, want in ((p, p0), (buf, 0.0), (m, 0.0), (v, 0.0)):
        np.testing.assert_array_equal(b.to_host(arr), np.asarray(want, dtype) + np.zeros(100, dtype))
    b.sgd_update(p, g, buf, guard=b.from_host(np.array([3.0], dtype)), **sgd)
    np.testing.assert_allclose(b.to_host(p).astype(np.float64), p0 - 0.1 * g0.astype(dtype), **tolerance(dtype))


def test_optimizer_updates_refuse_mismatched_arrays(ops_backend):
    b = ops_backend
    with bad_argument(b, "sgd_update"):
        b.sgd_update(b.zeros((4,)), b.zeros((5,)), None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                     weight_decay=0.0, first_step=True)
    with bad_argument(b, "adam_update"):
        b.adam_update(b.zeros((4,)), b.zeros((4,)), b.zeros((3,)), b.zeros((4,)), lr=0.1, beta1=0.9,
                      beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, step=1)


# =========================================================================== graphs
def test_capture(ops_backend):
    b = ops_backend
    x = b.from_host(np.arange(6, dtype=np.float32))
    y = b.zeros((6,))
    if not b.can_capture:
        with pytest.raises(CaptureError, match=rf"^{b.name} backend capture:"):
            b.capture(lambda: b.scale(x, 2.0, y))
        return
    graph = b.capture(lambda: b.scale(x, 2.0, y))
    np.testing.assert_array_equal(b.to_host(y), 0.0)  # recording runs nothing
    graph.replay(0)
    b.synchronize()
    np.testing.assert_array_equal(b.to_host(y), 2.0 * np.arange(6))


# ====================================================================== convolution
def _out(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_reference(x, w, stride, padding, dilation, groups):
    """y[n, o, i, j] = sum over c, ki, kj of w[o, c, ki, kj] * padded x[n, g*cg + c, i*s + ki*d, j*s + kj*d]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = _out(h, kh, sh, ph, dh), _out(wd, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        for ki in range(kh):
            for kj in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, ki * dh:ki * dh + sh * (ho - 1) + 1:sh,
                           kj * dw:kj * dw + sw * (wo - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, ki, kj])
    return y


def conv_grads_reference(x, w, dy, stride, padding, dilation, groups):
    """dx and dw of sum(conv(x, w) * dy): the same windows, run backwards."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    ho, wo = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    og = o // groups
    for g in range(groups):
        for ki in range(kh):
            for kj in range(kw):
                rows = slice(ki * dh, ki * dh + sh * (ho - 1) + 1, sh)
                cols = slice(kj * dw_, kj * dw_ + sw * (wo - 1) + 1, sw)
                dyg = dy[:, g * og:(g + 1) * og]
                dxp[:, g * cg:(g + 1) * cg, rows, cols] += np.einsum("nohw,oc->nchw", dyg, w[g * og:(g + 1) * og, :, ki, kj])
                dw[g * og:(g + 1) * og, :, ki, kj] += np.einsum("nohw,nchw->oc", dyg, xp[:, g * cg:(g + 1) * cg, rows, cols])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw


CONV_CASES = [
    # (N, C, H, W), (O, kh, kw), stride, padding, dilation, groups
    ((2, 3, 8, 8), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((1, 1, 5, 7), (2, 2, 3), (2, 1), (0, 1), (1, 1), 1),
    ((2, 4, 9, 6), (6, 3, 3), (2, 2), (1, 2), (2, 1), 2),
    ((3, 6, 7, 7), (6, 3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((2, 6, 9, 8), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6),  # depthwise, strided (NumPy: on phase planes)
    ((2, 4, 11, 10), (4, 3, 3), (2, 3), (2, 0), (2, 1), 4),  # depthwise, strided, dilated, one side unpadded
    # depthwise 3x3 stride 2 on 2 Ho x 2 Wo planes: rows in registers where a backend has such kernels
    # (rows of whole vectors; NumPy also a tail of each lane count)
    ((2, 6, 8, 32), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6),
    ((2, 6, 8, 42), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6),
    # ...and a last vector of under half a vector's outputs (10 and 18 a row: 2 past 8 and 16)
    ((2, 6, 20, 20), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6),
    ((2, 6, 8, 36), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6),
    ((2, 2, 6, 5), (3, 1, 1), (1, 2), (0, 0), (1, 1), 1),  # 1x1
    ((1, 3, 11, 10), (5, 5, 4), (3, 2), (2, 1), (1, 2), 1),
    ((2, 8, 6, 6), (16, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # depth 72: NumPy's batch-innermost layout
    # 64 channels and planes of 256 pixels or more: Winograd F(2x2, 3x3) where a backend picks it
    ((2, 64, 16, 16), (64, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((1, 64, 18, 17), (64, 3, 3), (1, 1), (2, 2), (2, 2), 1),  # dilated, tiles past the plane's edges
    # 32 channels, 5x5, planes of 256 pixels or more: Winograd F(2x2, 5x5) where a backend picks it
    ((2, 32, 16, 16), (32, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    # planes of 512+ outputs: the direct weight gradient where a backend picks it, rows ending inside a vector
    ((2, 3, 23, 29), (5, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    # 8x8 planes of 12 channels: NumPy's AVX2 direct kernel in blocks of 6 channels x 2 vectors (both ways)
    ((2, 12, 8, 8), (12, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    # 32 channels, 3x3 stride 2, an odd plane: the phase Winograd forward and weight gradient
    # where a backend picks them
    ((2, 32, 17, 16), (32, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    # the ResNet's 32 -> 64 stride-2 layer: NumPy's phase Winograd forward in one tile_conv call,
    # its input gradient on 8x8 dy planes (s2d's shuffle kernels) where it picks them
    ((2, 32, 16, 16), (64, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    # strided 1x1 (a ResNet shortcut; padded, uneven strides): NumPy's gathered pointwise kernel
    # and its scatter input gradient where it picks them
    ((2, 32, 16, 16), (64, 1, 1), (2, 2), (0, 0), (1, 1), 1),
    ((2, 5, 9, 8), (7, 1, 1), (2, 3), (1, 1), (1, 1), 1),
    # strides past the padded plane (one output along that axis) and a one-tap axis's dilation:
    # nothing a backend sizes by them may grow with them (2**20 once ran NumPy out of memory)
    ((2, 3, 5, 4), (4, 3, 3), (2**31 - 1, 1), (1, 1), (1, 2), 1),
    ((2, 3, 5, 4), (4, 1, 3), (2**20, 2**20), (0, 1), (2**31 - 1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("accumulate", [False, True])
def test_conv2d_and_its_gradients(ops_backend, dtype, rng, case, accumulate):
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rng.standard_normal(xs)
    w = rng.standard_normal((o, xs[1] // groups, kh, kw))
    y_ref = conv_reference(x, w, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape)
    dx0, dw0 = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    dx_ref, dw_ref = conv_grads_reference(x, w, dy, stride, padding, dilation, groups)
    placed = Placed(ops_backend, [x, w, np.zeros(y_ref.shape), dy, dx0, dw0], dtype, "view")
    dev_x, dev_w, y, dev_dy, dx, dw = placed.devs
    ws = Workspace()
    ops_backend.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws=ws)
    ops_backend.conv2d_backward_filter(dev_x, dev_dy, dw, stride, padding, dilation, groups, accumulate, ws=ws)
    ops_backend.conv2d_backward_data(dev_dy, dev_w, dx, stride, padding, dilation, groups, accumulate, ws=ws)
    tol = tolerance(dtype, scale=10)
    np.testing.assert_allclose(placed.host(2), y_ref, **tol)
    np.testing.assert_allclose(placed.host(4), (dx0 if accumulate else 0) + dx_ref, **tol)
    np.testing.assert_allclose(placed.host(5), (dw0 if accumulate else 0) + dw_ref, **tol)
    placed.check_sentinels()


def random_conv_geometry(rng):
    """One convolution drawn the way layers come (session 61's random runs): depthwise 3x3 at
    stride 1 or 2 on planes of any width (MobileNet's and odd ones), wide 3x3 and 5x5 layers
    (Winograd's sizes), grouped, dilated, pointwise (strided too) and small arbitrary ones; the
    output at least one pixel. (input shape, (O, kh, kw), stride, padding, dilation, groups)."""
    while True:
        kind = rng.choice(["any", "depthwise", "depthwise-s2", "wide-3x3", "wide-5x5", "wide-s2", "grouped",
                           "pointwise"])
        n, groups, stride, dilation, padding = int(rng.integers(1, 4)), 1, (1, 1), (1, 1), None
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        if kind == "any":
            c, o, kh, kw = (int(v) for v in rng.integers(1, [20, 20, 6, 6]))
            stride, dilation = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 3, 2))
        elif kind.startswith("depthwise"):
            c = o = groups = int(rng.choice([1, 3, 8, 16, 24, 64]))
            kh = kw = 3
            stride = (2, 2) if kind == "depthwise-s2" else (1, 1)
            h = int(rng.choice([7, 14, 16, 18, 20, 28, 32, 36])) if rng.random() < 0.6 else h
            w = h if rng.random() < 0.7 else w
            if kind == "depthwise-s2" and rng.random() < 0.8:   # MobileNet's: padding 1 on even planes
                h, w, padding = h + h % 2, w + w % 2, (1, 1)
        elif kind.startswith("wide"):
            c, o = (int(v) for v in rng.integers(24, 72, 2))
            kh = kw = 5 if kind == "wide-5x5" else 3
            stride = (2, 2) if kind == "wide-s2" else (1, 1)
            dilation = (2, 2) if kind == "wide-3x3" and rng.random() < 0.3 else (1, 1)
            n, h, w = int(rng.integers(1, 3)), int(rng.integers(8, 36)), int(rng.integers(8, 36))
        elif kind == "grouped":
            groups = int(rng.choice([2, 3, 4]))
            c, o = (groups * int(v) for v in rng.integers(1, 16, 2))
            kh = kw = 3
        else:
            c, o, kh, kw = int(rng.integers(1, 130)), int(rng.integers(1, 130)), 1, 1
            stride = (2, 2) if rng.random() < 0.4 else (1, 1)
            padding = (0, 0)
        if padding is None:
            padding = ((kh // 2) * dilation[0], (kw // 2) * dilation[1]) if rng.random() < 0.6 else \
                (int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1)))
        if min(_out(h, kh, stride[0], padding[0], dilation[0]), _out(w, kw, stride[1], padding[1], dilation[1])) >= 1:
            return (n, c, h, w), (o, kh, kw), stride, padding, dilation, groups


@pytest.mark.parametrize("seed", range(48))
def test_conv2d_on_random_geometries(ops_backend, seed):
    """Forward (with a random epilogue), weight and input gradient (stored or added) of drawn
    geometries, float32, the operands views in one buffer: each value within 1e-4 of the sum of
    its terms' magnitudes of the float64 loops, nothing written outside the operands. The OpenCL
    stride-2 depthwise input gradient ran past dx on rows of 10 and 18 outputs (session 61): with
    that bug back, the draw of seed 44 (34x34 planes, rows of 17) fails."""
    rng = np.random.default_rng(1000 + seed)
    xs, (o, kh, kw), stride, padding, dilation, groups = random_conv_geometry(rng)
    x, w = rng.standard_normal(xs), rng.standard_normal((o, xs[1] // groups, kh, kw))
    args = (stride, padding, dilation, groups)
    y_ref = conv_reference(x, w, *args)
    y_bound = conv_reference(np.abs(x), np.abs(w), *args)
    dy, dx0, dw0 = rng.standard_normal(y_ref.shape), rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    bias, residual = rng.standard_normal(o), rng.standard_normal(y_ref.shape)
    parts, accumulate = rng.choice(["", "bias", "bias+relu", "bias+residual+relu"]), bool(rng.random() < 0.4)
    if "bias" in parts:
        y_ref, y_bound = y_ref + bias.reshape(1, o, 1, 1), y_bound + np.abs(bias).reshape(1, o, 1, 1)
    if "residual" in parts:
        y_ref, y_bound = y_ref + residual, y_bound + np.abs(residual)
    if "relu" in parts:
        y_ref = np.maximum(y_ref, 0.0)
    dx_ref, dw_ref = conv_grads_reference(x, w, dy, *args)
    dx_bound, dw_bound = conv_grads_reference(np.abs(x), np.abs(w), np.abs(dy), *args)
    if accumulate:
        dx_ref, dw_ref = dx_ref + dx0, dw_ref + dw0
        dx_bound, dw_bound = dx_bound + np.abs(dx0), dw_bound + np.abs(dw0)
    placed = Placed(ops_backend, [x, w, np.full(y_ref.shape, 3.0), dy, dx0, dw0, bias, residual], np.float32, "view")
    dev_x, dev_w, y, dev_dy, dx, dw, dev_bias, dev_residual = placed.devs
    ws = Workspace()
    ops_backend.conv2d(dev_x, dev_w, y, *args, ws=ws, bias=dev_bias if "bias" in parts else None,
                       relu="relu" in parts, residual=dev_residual if "residual" in parts else None)
    ops_backend.conv2d_backward_filter(dev_x, dev_dy, dw, *args, accumulate, ws=ws)
    ops_backend.conv2d_backward_data(dev_dy, dev_w, dx, *args, accumulate, ws=ws)
    for what, i, want, bound in (("forward", 2, y_ref, y_bound), ("dx", 4, dx_ref, dx_bound), ("dw", 5, dw_ref, dw_bound)):
        err = np.abs(placed.host(i) - want)
        assert (err <= 1e-4 * (bound + 1e-3 * bound.max())).all(), \
            f"{what} of {xs} {w.shape} {args} {parts!r} accumulate={accumulate}: off by up to {err.max():.3g}"
    placed.check_sentinels()


EPILOGUE_CASES = CONV_CASES + [((2, 8, 5, 6), (6, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # pointwise: a plain GEMM
                               # strided 16x16 planes: NumPy's AVX-512 direct kernel in blocks of 8 x 2 vectors
                               ((1, 5, 32, 32), (9, 3, 3), (2, 2), (1, 1), (1, 1), 1)]


@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("parts", ["bias+relu", "norm", "bias+norm+relu", "norm+residual+relu", "bias+residual"])
def test_conv2d_epilogue(ops_backend, dtype, rng, case, parts):
    """conv2d's bias, inference batch norm, residual and ReLU (what an inference Conv2d +
    BatchNorm2d (+ Add of a skip input) + ReLU runs as one op) on every geometry the forward
    paths split on; half the outputs are negative, so the ReLU zeroes many, and the ReLU reads
    the sum with the residual."""
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rng.standard_normal(xs)
    w = rng.standard_normal((o, xs[1] // groups, kh, kw))
    bias, gamma, beta = rng.standard_normal(o), rng.uniform(0.5, 2.0, o), rng.standard_normal(o)
    mean, var, eps = rng.standard_normal(o), rng.uniform(0.5, 3.0, o), 1e-3
    want = conv_reference(x, w, stride, padding, dilation, groups)
    per_channel = (1, o, 1, 1)
    if "bias" in parts:
        want += bias.reshape(per_channel)
    if "norm" in parts:
        want = (want - mean.reshape(per_channel)) / np.sqrt(var + eps).reshape(per_channel) * gamma.reshape(
            per_channel) + beta.reshape(per_channel)
    residual = rng.standard_normal(want.shape)
    if "residual" in parts:
        want = want + residual
    if "relu" in parts:
        want = np.maximum(want, 0.0)
    placed = Placed(ops_backend, [x, w, np.full(want.shape, 3.0), bias, residual, gamma, beta, mean, var], dtype,
                    "view")
    dev_x, dev_w, y, dev_bias, dev_residual, *norm = placed.devs
    ops_backend.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws=Workspace(),
                       bias=dev_bias if "bias" in parts else None,
                       norm=ConvNorm(*norm, eps) if "norm" in parts else None, relu="relu" in parts,
                       residual=dev_residual if "residual" in parts else None)
    np.testing.assert_allclose(placed.host(2), want, **tolerance(dtype, scale=10))
    np.testing.assert_array_equal(placed.host(4), residual.astype(dtype))  # only read
    placed.check_sentinels()


def test_conv2d_refuses_a_wrong_epilogue_and_writes_nothing(ops_backend):
    b = ops_backend
    x, w, y = b.zeros((2, 3, 8, 8)), b.zeros((4, 3, 3, 3)), b.from_host(np.full((2, 4, 8, 8), 5.0, np.float32))
    one = b.zeros((4,))
    with bad_argument(b, "conv2d"):
        b.conv2d(x, w, y, (1, 1), (1, 1), (1, 1), 1, bias=b.zeros((3,)))
    with bad_argument(b, "conv2d"):
        b.conv2d(x, w, y, (1, 1), (1, 1), (1, 1), 1, norm=ConvNorm(one, one, b.zeros((5,)), one, 1e-5))
    with bad_argument(b, "conv2d"):
        b.conv2d(x, w, y, (1, 1), (1, 1), (1, 1), 1, residual=b.zeros((2, 4, 8, 7)))
    with bad_argument(b, "conv2d"):
        b.conv2d(x, w, y, (1, 1), (1, 1), (1, 1), 1, residual=y)
    np.testing.assert_array_equal(b.to_host(y), 5.0)


def test_conv2d_refuses_a_wrong_geometry(ops_backend):
    b = ops_backend
    x, w = b.zeros((2, 3, 8, 8)), b.zeros((4, 3, 3, 3))
    with bad_argument(b, "conv2d"):
        b.conv2d(x, w, b.zeros((2, 4, 8, 8)), (1, 1), (0, 0), (1, 1), 1)
    with bad_argument(b, "conv2d_backward_data"):
        b.conv2d_backward_data(b.zeros((2, 4, 6, 6)), w, b.zeros((2, 3, 8, 8)), (1, 1), (0, 0), (1, 1), 3)
    with bad_argument(b, "conv2d_backward_filter"):
        b.conv2d_backward_filter(x, b.zeros((2, 4, 5, 6)), w, (1, 1), (0, 0), (1, 1), 1)
    # positions past 32 bits: the kernels compute them in 32-bit integers
    with bad_argument(b, "conv2d"):
        b.conv2d(x, b.zeros((4, 3, 1, 1)), b.zeros((2, 4, 1, 1)), (2**31, 1), (0, 0), (1, 1), 1)
    with bad_argument(b, "conv2d_backward_data"):
        b.conv2d_backward_data(b.zeros((2, 4, 3, 3)), w, x, (2**30, 2**30), (2**30, 2**30), (1, 1), 1)


# ========================================================================== pooling
def pool_reference(x, kernel, stride, padding, mode, count_include_pad=True):
    """Windows clipped to the plane; max: the first maximum in scan order and its flat h*W+w index."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    y, arg = np.zeros((n, c, ho, wo)), np.zeros((n, c, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * sh - ph, j * sw - pw
            hs, ws = range(max(h0, 0), min(h0 + kh, h)), range(max(w0, 0), min(w0 + kw, w))
            window = x[:, :, hs.start:hs.stop, ws.start:ws.stop].reshape(n, c, -1)
            if mode == "max":
                k = window.argmax(axis=2)
                y[:, :, i, j] = window.max(axis=2)
                arg[:, :, i, j] = (hs.start + k // len(ws)) * w + ws.start + k % len(ws)
            else:
                y[:, :, i, j] = window.sum(axis=2) / (kh * kw if count_include_pad else window.shape[2])
    return y, arg


def avg_pool_grad_reference(dy, x_shape, kernel, stride, padding, count_include_pad):
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = np.zeros(x_shape)
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            h0, w0 = i * sh - ph, j * sw - pw
            hs, ws = slice(max(h0, 0), min(h0 + kh, h)), slice(max(w0, 0), min(w0 + kw, w))
            div = kh * kw if count_include_pad else (hs.stop - hs.start) * (ws.stop - ws.start)
            dx[:, :, hs, ws] += dy[:, :, i:i + 1, j:j + 1] / div
    return dx


POOL_CASES = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 7, 9), (3, 3), (2, 2), (1, 1)),
    ((2, 1, 6, 5), (3, 2), (1, 2), (1, 0)),
    ((1, 4, 5, 5), (5, 5), (1, 1), (2, 2)),
    ((2, 3, 4, 6), (4, 6), (4, 6), (0, 0)),  # global: one window per plane
    ((5, 60, 3, 5), (3, 5), (1, 1), (0, 0)),  # global, 300 planes: past one work-group of OpenCL's, stride 1
    ((1, 1, 7, 3), (7, 3), (7, 3), (0, 0)),   # global, one plane
    ((2, 2, 6, 38), (2, 2), (2, 2), (0, 0)),  # 2x2 windows tiling the plane, 19 outputs a row
    ((2, 3, 4, 28), (2, 2), (2, 2), (0, 0)),  # ... 14 outputs a row (LeNet's first pooling)
    ((1, 2, 9, 7), (2, 2), (2, 2), (0, 0)),   # 2x2 windows, the last row and column left out
    ((2, 3, 6, 32), (2, 2), (2, 2), (0, 0)),  # 2x2 windows, rows of whole vectors (16 outputs), 6 planes
    ((2, 4, 4, 16), (2, 2), (2, 2), (0, 0)),  # ... 8 outputs a row, 8 planes (4 to a work-item on OpenCL)
    ((1, 16, 10, 10), (2, 2), (2, 2), (0, 0)),  # 5 outputs a row (LeNet's second pooling), batch 1
    ((3, 5, 8, 8), (2, 2), (2, 2), (0, 0)),    # 4 a row (the CIFAR CNN's last), 15 planes (1 to a work-item)
    ((1, 1, 2, 6), (2, 2), (2, 2), (0, 0)),    # 3 a row, one output row: the last-row path alone
    ((2, 2, 6, 18), (2, 2), (2, 2), (0, 0)),   # 9 a row: one 16-lane vector of 9 live lanes
    ((1, 3, 10, 24), (2, 2), (2, 2), (0, 0)),  # 12 a row, 3 planes
    ((2, 3, 5, 4), (3, 2), (2**31 - 1, 2), (1, 0)),  # a stride past the padded plane: one output row
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_max_pool2d(ops_backend, dtype, rng, case, accumulate):
    shape, kernel, stride, padding = case
    x = rng.permutation(np.arange(math.prod(shape), dtype=np.float64)).reshape(shape) / 7  # no ties
    y_ref, arg_ref = pool_reference(x, kernel, stride, padding, "max")
    dy, dx0 = rng.standard_normal(y_ref.shape), rng.standard_normal(shape)
    dx_ref = dx0.copy() if accumulate else np.zeros(shape)
    planes = dx_ref.reshape(shape[0] * shape[1], -1)
    for plane, grads, where in zip(planes, dy.reshape(len(planes), -1), arg_ref.reshape(len(planes), -1)):
        np.add.at(plane, where, grads)
    placed = Placed(ops_backend, [x, np.zeros(y_ref.shape), dy, dx0], dtype, "view")
    argmax = ops_backend.zeros(y_ref.shape, np.int32)
    ops_backend.max_pool2d(placed.devs[0], placed.devs[1], argmax, kernel, stride, padding, ws=Workspace())
    ops_backend.max_pool2d_backward(placed.devs[2], argmax, placed.devs[3], kernel, stride, padding, accumulate,
                                    ws=Workspace())
    np.testing.assert_array_equal(placed.host(1), y_ref.astype(dtype))
    np.testing.assert_array_equal(ops_backend.to_host(argmax), arg_ref)
    np.testing.assert_allclose(placed.host(3), dx_ref, **tolerance(dtype))
    placed.check_sentinels()


@pytest.mark.parametrize("case", [((2, 3, 7, 9), (3, 3), (1, 1), (1, 1)), ((1, 2, 9, 8), (3, 3), (2, 2), (1, 1)),
                                  ((1, 1, 6, 7), (3, 2), (1, 2), (1, 0))], ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_max_pool2d_backward_adds_in_scan_order(ops_backend, dtype, rng, case, accumulate):
    """Overlapping windows: an input position that is the maximum of several windows gets their
    dy added in the windows' scan order, in the dtype, starting from dx (accumulate) or zero:
    the serial walk's sums, bit for bit, whatever order a backend's threads run in."""
    shape, kernel, stride, padding = case
    x = rng.permutation(np.arange(math.prod(shape), dtype=np.float64)).reshape(shape) / 7  # no ties
    _, arg = pool_reference(x, kernel, stride, padding, "max")
    dy = (rng.standard_normal(arg.shape) * 10.0 ** rng.integers(-3, 4, arg.shape)).astype(dtype)
    dx0 = rng.standard_normal(shape).astype(dtype)
    want = dx0.copy() if accumulate else np.zeros(shape, dtype)
    planes = want.reshape(shape[0] * shape[1], -1)
    for plane, grads, where in zip(planes, dy.reshape(len(planes), -1), arg.reshape(len(planes), -1)):
        for g, k in zip(grads, where):
            plane[k] = plane[k] + g  # rounded to the dtype at every step
    assert (np.bincount(arg.reshape(-1) + shape[2] * shape[3] * np.repeat(np.arange(len(planes)), arg[0, 0].size))
            .max() >= 3), "the case must have positions that several windows pick"
    dev_x, dev_dy, dx = upload(ops_backend, x, dy, dx0, dtype=dtype)
    y, argmax = ops_backend.zeros(arg.shape, dtype), ops_backend.zeros(arg.shape, np.int32)
    ops_backend.max_pool2d(dev_x, y, argmax, kernel, stride, padding)
    ops_backend.max_pool2d_backward(dev_dy, argmax, dx, kernel, stride, padding, accumulate)
    np.testing.assert_array_equal(ops_backend.to_host(dx), want)


def test_max_pool2d_ties_pick_the_first_maximum(ops_backend):
    b = ops_backend
    y, arg = b.empty((1, 1, 2, 2)), b.empty((1, 1, 2, 2), np.int32)
    b.max_pool2d(b.zeros((1, 1, 4, 4)), y, arg, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(b.to_host(arg).reshape(-1), [0, 2, 8, 10])


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("accumulate", [False, True])
def test_avg_pool2d(ops_backend, dtype, rng, case, count_include_pad, accumulate):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape)
    y_ref, _ = pool_reference(x, kernel, stride, padding, "avg", count_include_pad)
    dy, dx0 = rng.standard_normal(y_ref.shape), rng.standard_normal(shape)
    dx_ref = avg_pool_grad_reference(dy, shape, kernel, stride, padding, count_include_pad)
    placed = Placed(ops_backend, [x, np.zeros(y_ref.shape), dy, dx0], dtype, "view")
    ops_backend.avg_pool2d(placed.devs[0], placed.devs[1], kernel, stride, padding, count_include_pad, ws=Workspace())
    ops_backend.avg_pool2d_backward(placed.devs[2], placed.devs[3], kernel, stride, padding, count_include_pad,
                                    accumulate, ws=Workspace())
    tol = tolerance(dtype)
    np.testing.assert_allclose(placed.host(1), y_ref, **tol)
    np.testing.assert_allclose(placed.host(3), (dx0 if accumulate else 0) + dx_ref, **tol)
    placed.check_sentinels()


def test_pooling_refuses_bad_arguments(ops_backend):
    b = ops_backend
    x = b.zeros((1, 2, 6, 6))
    with bad_argument(b, "max_pool2d"):
        b.max_pool2d(x, b.zeros((1, 2, 3, 3)), b.zeros((1, 2, 3, 3), np.float32), (2, 2), (2, 2), (0, 0))
    with bad_argument(b, "max_pool2d_backward"):  # argmax of another shape than dy
        b.max_pool2d_backward(b.zeros((1, 2, 3, 3)), b.zeros((1, 2, 2, 2), np.int32), x, (2, 2), (2, 2), (0, 0))
    with bad_argument(b, "max_pool2d_backward"):  # a geometry that does not give dy's shape
        b.max_pool2d_backward(b.zeros((1, 2, 3, 3)), b.zeros((1, 2, 3, 3), np.int32), x, (3, 3), (2, 2), (0, 0))
    with bad_argument(b, "avg_pool2d"):
        b.avg_pool2d(x, b.zeros((1, 2, 2, 2)), (2, 2), (2, 2), (0, 0))
    with bad_argument(b, "avg_pool2d_backward"):
        b.avg_pool2d_backward(b.zeros((1, 2, 2, 2)), x, (2, 2), (2, 2), (0, 0))
    with bad_argument(b, "max_pool2d"):  # a stride past 32 bits
        b.max_pool2d(x, b.zeros((1, 2, 1, 1)), b.zeros((1, 2, 1, 1), np.int32), (6, 6), (2**31, 2**31), (0, 0))


# ======================================================================= batch norm
# (5000, 3) and (10, 2, 21, 22): channels of more values than CUDA gives one block (see
# test_add_bias_and_bias_grad)
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3, 4), (1, 2, 3, 3), (8, 1, 2, 2), (3, 2, 7), (5000, 3),
                                   (10, 2, 21, 22)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_batch_norm(ops_backend, dtype, rng, shape, accumulate):
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    count = math.prod(shape) // c
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy, dx0, dg0, db0 = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    eps, momentum = 1e-5, 0.1
    placed = Placed(ops_backend, [x, gamma, beta, rm0, rv0, np.zeros(shape), np.zeros(c), np.zeros(c),
                                  np.zeros(shape), dy, dx0, dg0, db0], dtype, "view")
    dev_x, dev_g, dev_b, rm, rv, out, mean, invstd, inferred, dev_dy, dx, dg, db = placed.devs
    ws = Workspace()
    ops_backend.batch_norm_train(dev_x, dev_g, dev_b, out, mean, invstd, rm, rv, momentum, eps, ws=ws)
    ops_backend.batch_norm_infer(dev_x, dev_g, dev_b, rm, rv, eps, inferred, ws=ws)
    ops_backend.batch_norm_backward(dev_x, dev_dy, dev_g, mean, invstd, dx, dg, db, accumulate, accumulate, ws=ws)

    mu, var = x.mean(axis=axes), x.var(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu.reshape(bshape)) * inv.reshape(bshape)
    rm_ref = (1 - momentum) * rm0 + momentum * mu
    rv_ref = (1 - momentum) * rv0 + momentum * var * count / max(count - 1, 1)  # unbiased, as torch
    sum_dy, sum_dy_xhat = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dx_ref = (gamma * inv / count).reshape(bshape) * (count * dy - sum_dy.reshape(bshape) - xhat * sum_dy_xhat.reshape(bshape))
    tol = tolerance(dtype, scale=10)
    np.testing.assert_allclose(placed.host(5), xhat * gamma.reshape(bshape) + beta.reshape(bshape), **tol)
    np.testing.assert_allclose(placed.host(6), mu, **tol)
    np.testing.assert_allclose(placed.host(7), inv, **tol)
    np.testing.assert_allclose(placed.host(3), rm_ref, **tol)
    np.testing.assert_allclose(placed.host(4), rv_ref, **tol)
    np.testing.assert_allclose(placed.host(8), (x - rm_ref.reshape(bshape)) / np.sqrt(rv_ref.reshape(bshape) + eps)
                               * gamma.reshape(bshape) + beta.reshape(bshape), **tol)
    np.testing.assert_allclose(placed.host(10), (dx0 if accumulate else 0) + dx_ref, **tol)
    np.testing.assert_allclose(placed.host(11), (dg0 if accumulate else 0) + sum_dy_xhat, **tol)
    np.testing.assert_allclose(placed.host(12), (db0 if accumulate else 0) + sum_dy, **tol)
    placed.check_sentinels()


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3, 4), (8, 1, 2, 2), (3, 2, 33), (10, 2, 21, 22)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_batch_norm_with_a_fused_relu(ops_backend, dtype, rng, shape, accumulate):
    """relu=True: out = max(batch norm, 0) (NaN kept); relu_out: dy is a following ReLU's output
    gradient, the batch norm's backward reads it masked where that output is <= 0."""
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    count = math.prod(shape) // c
    x = rng.standard_normal(shape) * 2 + 1
    first = (0, 0) + (0,) * (len(shape) - 2)
    x_clean = x.copy()
    x[first] = np.nan  # channel 0's statistics turn NaN: the ReLU must keep them NaN
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy, dx0, dg0, db0 = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    eps = 1e-5
    placed = Placed(ops_backend, [x, x_clean, gamma, beta, rm0, rv0, np.zeros(shape), np.zeros(shape), np.zeros(c),
                                  np.zeros(c), np.zeros(shape), dy, dx0, dg0, db0], dtype, "view")
    dev_x, dev_clean, dev_g, dev_b, rm, rv, out, out_clean, mean, invstd, inferred, dev_dy, dx, dg, db = placed.devs
    ws = Workspace()
    ops_backend.batch_norm_infer(dev_x, dev_g, dev_b, rm, rv, eps, inferred, ws=ws, relu=True)
    ops_backend.batch_norm_train(dev_x, dev_g, dev_b, out, mean, invstd, None, None, 0.1, eps, ws=ws, relu=True)
    ops_backend.batch_norm_train(dev_clean, dev_g, dev_b, out_clean, mean, invstd, None, None, 0.1, eps, ws=ws,
                                 relu=True)
    ops_backend.batch_norm_backward(dev_clean, dev_dy, dev_g, mean, invstd, dx, dg, db, accumulate, accumulate,
                                    ws=ws, relu_out=out_clean)

    infer_ref = (x - rm0.reshape(bshape)) / np.sqrt(rv0.reshape(bshape) + eps) * gamma.reshape(bshape) + beta.reshape(bshape)
    mu, var = x_clean.mean(axis=axes), x_clean.var(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x_clean - mu.reshape(bshape)) * inv.reshape(bshape)
    y = xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    g = np.where(y > 0, dy, 0.0)  # the ReLU's backward
    sum_g, sum_g_xhat = g.sum(axis=axes), (g * xhat).sum(axis=axes)
    dx_ref = (gamma * inv / count).reshape(bshape) * (count * g - sum_g.reshape(bshape) - xhat * sum_g_xhat.reshape(bshape))
    tol = tolerance(dtype, scale=10)
    np.testing.assert_allclose(placed.host(10), np.maximum(infer_ref, 0), **tol)  # NaN where x is, compared as NaN
    assert np.isnan(placed.host(6)[:, 0]).all() and not np.isnan(placed.host(6)[:, 1:]).any()
    np.testing.assert_allclose(placed.host(7), np.maximum(y, 0), **tol)
    np.testing.assert_allclose(placed.host(12), (dx0 if accumulate else 0) + dx_ref, **tol)
    np.testing.assert_allclose(placed.host(13), (dg0 if accumulate else 0) + sum_g_xhat, **tol)
    np.testing.assert_allclose(placed.host(14), (db0 if accumulate else 0) + sum_g, **tol)
    placed.check_sentinels()


def test_batch_norm_backward_without_the_input_gradient(ops_backend, rng):
    b = ops_backend
    x, dy = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    dev_x, gamma, beta, out, mean, invstd = upload(b, x, np.ones(3), np.zeros(3), np.zeros(x.shape), np.zeros(3),
                                                   np.zeros(3), dtype=np.float32)
    b.batch_norm_train(dev_x, gamma, beta, out, mean, invstd, None, None, 0.1, 1e-5)
    dg, db = b.zeros((3,)), b.zeros((3,))
    b.batch_norm_backward(dev_x, b.from_host(dy.astype(np.float32)), gamma, mean, invstd, None, dg, db)
    xhat = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(b.to_host(db), dy.sum(axis=(0, 2, 3)), **tolerance(np.float32, scale=10))
    np.testing.assert_allclose(b.to_host(dg), (dy * xhat).sum(axis=(0, 2, 3)), **tolerance(np.float32, scale=10))


def test_batch_norm_refuses_a_wrong_channel_count(ops_backend):
    b = ops_backend
    x, c, wrong = b.zeros((2, 3, 4)), b.zeros((3,)), b.zeros((4,))
    with bad_argument(b, "batch_norm_train"):
        b.batch_norm_train(x, c, c, b.zeros((2, 3, 4)), c, c, wrong, c, 0.1, 1e-5)
    with bad_argument(b, "batch_norm_infer"):
        b.batch_norm_infer(x, wrong, c, c, c, 1e-5, b.zeros((2, 3, 4)))
    with bad_argument(b, "batch_norm_backward"):
        b.batch_norm_backward(x, b.zeros((2, 3, 5)), c, c, c, None, c, c)


# ============================================================ synchronised batch norm
# The layer runs: sums about zero -> stats (the mean) -> sums about the mean -> stats (+ running)
# -> apply; each ``sums`` would be summed over ranks in between. Here count is what the sums cover.
SYNC_SHAPES = [(4, 3), (2, 5, 3, 4), (8, 1, 2, 2), (3, 2, 7), (5000, 3), (10, 2, 21, 22)]


@pytest.mark.parametrize("shape", SYNC_SHAPES)
def test_batch_norm_sums_stats_and_apply(ops_backend, dtype, rng, shape):
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    count = math.prod(shape) // c
    x = rng.standard_normal(shape) * 2 + 50  # |mean| >> std: the second pass keeps the variance exact
    gamma, beta, rm0, rv0 = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)
    eps, momentum = 1e-5, 0.3
    placed = Placed(ops_backend, [x, np.zeros(c), np.zeros(2 * c), np.zeros(2 * c), np.zeros(c), np.zeros(c),
                                  rm0, rv0, gamma, beta, np.zeros(shape)], dtype, "view")
    dev_x, zero, first, second, mean, invstd, rm, rv, dev_g, dev_b, out = placed.devs
    ws = Workspace()
    ops_backend.batch_norm_sums(dev_x, zero, first, ws=ws)
    first_host = placed.host(2)
    ops_backend.batch_norm_stats(first, count, zero, mean, invstd, None, None, 0.0, eps, ws=ws)
    ops_backend.batch_norm_sums(dev_x, mean, second, ws=ws)
    ops_backend.batch_norm_stats(second, count, mean, mean, invstd, rm, rv, momentum, eps, ws=ws)
    ops_backend.batch_norm_apply(dev_x, dev_g, dev_b, mean, invstd, out, ws=ws)

    mu, var = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(first_host, np.concatenate([x.sum(axis=axes), (x * x).sum(axis=axes)]),
                               **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(4), mu, **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(5), 1 / np.sqrt(var + eps), **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(6), (1 - momentum) * rm0 + momentum * mu, **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(7), (1 - momentum) * rv0 + momentum * var * count / max(count - 1, 1),
                               **tolerance(dtype, scale=10))
    xhat = (x - mu.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    np.testing.assert_allclose(placed.host(10), xhat * gamma.reshape(bshape) + beta.reshape(bshape),
                               **tolerance(dtype, scale=50))
    placed.check_sentinels()


def test_batch_norm_stats_shifts_reads_before_writing_and_clamps(ops_backend, dtype, rng):
    c, count, momentum, eps = 5, 37, 0.3, 1e-3
    values = rng.standard_normal((count, c)) * 1.5 + 0.25
    shift = rng.standard_normal(c) * 0.1
    d = values - shift
    sums = np.concatenate([d.sum(axis=0), (d * d).sum(axis=0)])
    rv0 = rng.uniform(0.5, 2, c)
    # the shift is the running mean itself: read before it moves
    dev_sums, rm, rv, mean, invstd = upload(ops_backend, sums, shift, rv0, np.zeros(c), np.zeros(c), dtype=dtype)
    ops_backend.batch_norm_stats(dev_sums, count, rm, mean, invstd, rm, rv, momentum, eps)
    mu = values.mean(axis=0)
    np.testing.assert_allclose(ops_backend.to_host(mean), mu, **tolerance(dtype, scale=10))
    np.testing.assert_allclose(ops_backend.to_host(invstd), 1 / np.sqrt(values.var(axis=0) + eps), **tolerance(dtype, scale=10))
    np.testing.assert_allclose(ops_backend.to_host(rm), (1 - momentum) * shift + momentum * mu, **tolerance(dtype, scale=10))
    np.testing.assert_allclose(ops_backend.to_host(rv), (1 - momentum) * rv0 + momentum * values.var(axis=0, ddof=1),
                               **tolerance(dtype, scale=10))
    # rounding can make E[d^2] - E[d]^2 negative: the variance is clamped at zero
    dev_sums, zero, mean, invstd = upload(ops_backend, [4.0, 3.99], np.zeros(1), np.zeros(1), np.zeros(1), dtype=dtype)
    ops_backend.batch_norm_stats(dev_sums, 4, zero, mean, invstd, None, None, 0.1, 1e-5)
    np.testing.assert_allclose(ops_backend.to_host(invstd), [1 / np.sqrt(1e-5)], rtol=1e-5)


@pytest.mark.parametrize("shape", SYNC_SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_batch_norm_backward_reduce_and_data(ops_backend, dtype, rng, shape, accumulate):
    c = shape[1]
    axes = (0,) + tuple(range(2, len(shape)))
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    x, dy, dx0 = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(shape)
    mean, invstd, gamma = rng.standard_normal(c), rng.uniform(0.5, 2, c), rng.uniform(0.5, 2, c)
    dg0, db0, other = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(2 * c) * 3
    placed = Placed(ops_backend, [x, dy, mean, invstd, np.zeros(2 * c), dg0, db0, gamma, dx0], dtype, "view")
    dev_x, dev_dy, dev_mean, dev_inv, sums, dg, db, dev_g, dx = placed.devs
    ws = Workspace()
    ops_backend.batch_norm_backward_reduce(dev_x, dev_dy, dev_mean, dev_inv, sums, dg, db,
                                           accumulate_params=accumulate, ws=ws)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    local = np.concatenate([dy.sum(axis=axes), (dy * xhat).sum(axis=axes)])
    np.testing.assert_allclose(placed.host(4), local, **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(5), (dg0 if accumulate else 0) + local[c:], **tolerance(dtype, scale=10))
    np.testing.assert_allclose(placed.host(6), (db0 if accumulate else 0) + local[:c], **tolerance(dtype, scale=10))
    # as if another rank had added its sums: the input gradient uses the global ones
    total = local + other
    ops_backend.write(sums, total.astype(dtype))
    count = 2 * math.prod(shape) // c
    ops_backend.batch_norm_backward_data(dev_x, dev_dy, dev_g, dev_mean, dev_inv, sums, count, dx,
                                         accumulate=accumulate, ws=ws)
    grad = (gamma * invstd).reshape(bshape) * (dy - total[:c].reshape(bshape) / count
                                               - xhat * total[c:].reshape(bshape) / count)
    np.testing.assert_allclose(placed.host(8), (dx0 if accumulate else 0) + grad, **tolerance(dtype, scale=10))
    placed.check_sentinels()


def test_batch_norm_backward_reduce_without_param_gradients(ops_backend, rng):
    b = ops_backend
    x, dy = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    dev_x, dev_dy, mean, invstd = upload(b, x, dy, np.zeros(2), np.ones(2), dtype=np.float32)
    sums = b.zeros((4,))
    b.batch_norm_backward_reduce(dev_x, dev_dy, mean, invstd, sums)
    np.testing.assert_allclose(b.to_host(sums), np.concatenate([dy.sum(axis=(0, 2)), (dy * x).sum(axis=(0, 2))]),
                               **tolerance(np.float32, scale=10))


def test_synchronised_batch_norm_ops_refuse_bad_arguments(ops_backend):
    b = ops_backend
    x, c, wrong, sums, short = b.zeros((2, 3, 4)), b.zeros((3,)), b.zeros((4,)), b.zeros((6,)), b.zeros((5,))
    with bad_argument(b, "batch_norm_sums"):
        b.batch_norm_sums(x, c, short)
    with bad_argument(b, "batch_norm_sums"):
        b.batch_norm_sums(x, wrong, sums)
    with bad_argument(b, "batch_norm_stats"):
        b.batch_norm_stats(short, 8, c, c, c, None, None, 0.1, 1e-5)
    with bad_argument(b, "batch_norm_stats"):
        b.batch_norm_stats(sums, 8, c, c, c, wrong, c, 0.1, 1e-5)
    with bad_argument(b, "batch_norm_apply"):
        b.batch_norm_apply(x, c, c, c, c, b.zeros((2, 3, 5)))
    with bad_argument(b, "batch_norm_backward_reduce"):
        b.batch_norm_backward_reduce(x, x, c, c, short)
    with bad_argument(b, "batch_norm_backward_data"):
        b.batch_norm_backward_data(x, x, wrong, c, c, sums, 8, b.zeros((2, 3, 4)))


# ====================================================================== composition
@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 3, 4)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_copy_and_slice_channels(ops_backend, dtype, rng, shape, accumulate):
    part = (shape[0], 2) + shape[2:]
    dst0, src, whole, piece0 = (rng.standard_normal(s) for s in (shape, part, shape, part))
    placed = Placed(ops_backend, [dst0, src, whole, piece0], dtype, "view")
    ops_backend.copy_channels(placed.devs[1], placed.devs[0], 3, accumulate=accumulate)
    ops_backend.slice_channels(placed.devs[2], placed.devs[3], 3, accumulate=accumulate)
    want = dst0.copy()
    want[:, 3:5] = (want[:, 3:5] if accumulate else 0) + src
    np.testing.assert_allclose(placed.host(0), want, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(3), (piece0 if accumulate else 0) + whole[:, 3:5], **tolerance(dtype))
    placed.check_sentinels()


def test_channel_ops_refuse_an_out_of_range_offset(ops_backend):
    b = ops_backend
    with bad_argument(b, "copy_channels"):
        b.copy_channels(b.zeros((3, 2, 4)), b.zeros((3, 7, 4)), 6)
    with bad_argument(b, "slice_channels"):
        b.slice_channels(b.zeros((3, 7, 4)), b.zeros((3, 2, 5)), 0)


# ======================================================================== sequences
def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


@pytest.mark.parametrize("shape", [(3, 5, 4), (4, 2, 1, 3), (1, 7, 6), (5, 3)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_swap_leading_axes(ops_backend, dtype, rng, shape, accumulate, layout):
    src = rng.standard_normal(shape)
    dst0 = rng.standard_normal((shape[1], shape[0]) + shape[2:])
    placed = Placed(ops_backend, [src, dst0], dtype, layout)
    ops_backend.swap_leading_axes(placed.devs[0], placed.devs[1], accumulate=accumulate)
    np.testing.assert_allclose(placed.host(1), np.swapaxes(src, 0, 1) + (dst0 if accumulate else 0), **tolerance(dtype))
    placed.check_sentinels()


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_embedding_gather_and_scatter(ops_backend, dtype, rng, padding_idx, accumulate, layout):
    idx = np.array([2, 0, 2, 5, 5, 5, 1, 2, 8], np.int32)  # repeats add up; rows 3, 4, 6, 7 unused
    weight, dy, dw0 = rng.standard_normal((9, 4)), rng.standard_normal((idx.size, 4)), rng.standard_normal((9, 4))
    out0 = rng.standard_normal((idx.size, 4))
    placed = Placed(ops_backend, [weight, out0, dy, dw0], dtype, layout)
    indices = ops_backend.from_host(idx)
    ops_backend.embedding(indices, placed.devs[0], placed.devs[1])
    np.testing.assert_array_equal(placed.host(1), weight.astype(dtype)[idx])
    ops_backend.embedding_backward(indices, placed.devs[2], placed.devs[3], padding_idx, accumulate)
    want = dw0.copy() if accumulate else np.zeros((9, 4))
    for k, i in enumerate(idx):
        if i != padding_idx:
            want[i] += dy[k]
    np.testing.assert_allclose(placed.host(3), want, **tolerance(dtype))
    placed.check_sentinels()


def _cell_inputs(rng, n, hid, blocks):
    """xw (spread wider, so some gates sit near their flat ends), hw and b_hh of a cell with
    ``blocks`` gate blocks."""
    return (rng.standard_normal((n, blocks * hid)) * 2, rng.standard_normal((n, blocks * hid)),
            rng.standard_normal(blocks * hid))


def _lstm_reference(xw, hw, b, c_prev, dh, dc):
    hid = c_prev.shape[1]
    a = xw + hw + (0.0 if b is None else b)
    i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
    i, f, g, o = _sig(i), _sig(f), np.tanh(g), _sig(o)
    c = f * c_prev + i * g
    tc = np.tanh(c)
    dct = dc + dh * o * (1 - tc ** 2)
    dgates = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - g ** 2),
                             dh * tc * o * (1 - o)], axis=1)
    return np.concatenate([i, f, g, o], axis=1), c, o * tc, dgates, dct * f


def _gru_reference(xw, hw, b, h_prev, dh):
    hid = h_prev.shape[1]
    b = np.zeros(3 * hid) if b is None else b
    r = _sig(xw[:, :hid] + hw[:, :hid] + b[:hid])
    z = _sig(xw[:, hid:2 * hid] + hw[:, hid:2 * hid] + b[hid:2 * hid])
    hn = hw[:, 2 * hid:] + b[2 * hid:]
    n = np.tanh(xw[:, 2 * hid:] + r * hn)  # torch: the reset gate multiplies W_hn h + b_hn
    dn = dh * (1 - z) * (1 - n ** 2)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    return (np.concatenate([r, z, n, hn], axis=1), (1 - z) * n + z * h_prev,
            np.concatenate([dr, dz, dn], axis=1), np.concatenate([dr, dz, dn * r], axis=1), dh * z)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rnn_cell(ops_backend, dtype, rng, nonlinearity, with_bias, layout):
    n, hid = 5, 7
    xw, hw, b, h0 = (rng.standard_normal(s) for s in ((n, hid), (n, hid), (hid,), (n, hid)))
    placed = Placed(ops_backend, [xw, hw, b, h0], dtype, layout)
    ops_backend.rnn_cell(placed.devs[0], placed.devs[1], placed.devs[2] if with_bias else None, placed.devs[3],
                         nonlinearity)
    a = xw + hw + (b if with_bias else 0.0)
    np.testing.assert_allclose(placed.host(3), np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0),
                               **tolerance(dtype))
    placed.check_sentinels()


#: the cases of every fused cell: with and without the hidden bias, fresh arrays and views
CELL_CASES = pytest.mark.parametrize("with_bias, layout", [(b, lay) for b in (True, False) for lay in LAYOUTS])


@CELL_CASES
def test_lstm_cell_and_backward(ops_backend, dtype, rng, with_bias, layout):
    n, hid = 6, 5
    xw, hw, b = _cell_inputs(rng, n, hid, 4)
    c_prev, dh, dc = (rng.standard_normal((n, hid)) for _ in range(3))
    gates_ref, c_ref, h_ref, dg_ref, dcp_ref = _lstm_reference(xw, hw, b if with_bias else None, c_prev, dh, dc)
    junk = rng.standard_normal((n, 4 * hid)), rng.standard_normal((n, hid))
    placed = Placed(ops_backend, [xw, hw, b, c_prev, junk[0], junk[1], junk[1], gates_ref, c_ref, dh, dc, junk[0]],
                    dtype, layout)
    d = placed.devs
    ops_backend.lstm_cell(d[0], d[1], d[2] if with_bias else None, d[3], d[4], d[5], d[6])
    for i, want in ((4, gates_ref), (5, c_ref), (6, h_ref)):
        np.testing.assert_allclose(placed.host(i), want, **tolerance(dtype))
    ops_backend.lstm_cell_backward(d[7], d[3], d[8], d[9], d[10], d[11], d[10])  # dc_prev over dc, in place
    np.testing.assert_allclose(placed.host(11), dg_ref, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(10), dcp_ref, **tolerance(dtype))
    placed.check_sentinels()


@CELL_CASES
def test_gru_cell_and_backward(ops_backend, dtype, rng, with_bias, layout):
    n, hid = 4, 6
    xw, hw, b = _cell_inputs(rng, n, hid, 3)
    h_prev, dh = rng.standard_normal((n, hid)), rng.standard_normal((n, hid))
    gates_ref, h_ref, dxw_ref, dhw_ref, dhp_ref = _gru_reference(xw, hw, b if with_bias else None, h_prev, dh)
    junk = rng.standard_normal((n, 4 * hid)), rng.standard_normal((n, hid)), rng.standard_normal((n, 3 * hid))
    placed = Placed(ops_backend, [xw, hw, b, h_prev, junk[0], junk[1], gates_ref, dh, junk[2], junk[2]], dtype, layout)
    d = placed.devs
    ops_backend.gru_cell(d[0], d[1], d[2] if with_bias else None, d[3], d[4], d[5])
    np.testing.assert_allclose(placed.host(4), gates_ref, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(5), h_ref, **tolerance(dtype))
    ops_backend.gru_cell_backward(d[6], d[3], d[7], d[8], d[9], d[7])  # dh_prev over dh, in place
    np.testing.assert_allclose(placed.host(8), dxw_ref, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(9), dhw_ref, **tolerance(dtype))
    np.testing.assert_allclose(placed.host(7), dhp_ref, **tolerance(dtype))
    placed.check_sentinels()


def _sequence_reference(gru, xw, w, b, dout, offset, reverse):
    """Every step of one LSTM/GRU direction from zero states, and its backward from dout's
    columns [offset, offset + H), by the cell references above: (h, c, gates, dx_pre, dh_pre)."""
    steps, rows = xw.shape[:2]
    hid = w.shape[1]
    h, c = np.zeros((steps + 1, rows, hid)), np.zeros((steps + 1, rows, hid))
    gates, order = np.zeros((steps, rows, 4 * hid)), []
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        prev, cur = (t + 1, t) if reverse else (t, t + 1)
        order.append((t, prev, cur))
        hw = h[prev] @ w.T
        if gru:
            gates[t], h[cur] = _gru_reference(xw[t], hw, b, h[prev], np.zeros((rows, hid)))[:2]
        else:
            gates[t], c[cur], h[cur] = _lstm_reference(xw[t], hw, b, c[prev], np.zeros((rows, hid)),
                                                       np.zeros((rows, hid)))[:3]
    blocks = 3 if gru else 4
    dx_pre, dh_pre = np.zeros((steps, rows, blocks * hid)), np.zeros((steps, rows, blocks * hid))
    dh, dc = np.zeros((rows, hid)), np.zeros((rows, hid))
    for t, prev, cur in reversed(order):
        dh = dh + dout[t][:, offset:offset + hid]
        hw = h[prev] @ w.T
        if gru:
            _, _, dx_pre[t], dh_pre[t], direct = _gru_reference(xw[t], hw, b, h[prev], dh)
            dh = direct + dh_pre[t] @ w
        else:
            dx_pre[t], dc = _lstm_reference(xw[t], hw, b, c[prev], dh, dc)[3:]
            dh_pre[t] = dx_pre[t]
            dh = dx_pre[t] @ w
    return h, c, gates, dx_pre, dh_pre


@pytest.mark.parametrize("gru", [False, True], ids=["lstm", "gru"])
# H a multiple of 16 takes OpenCL's fused per-step kernels (recurrent.cl), with rows split
# across work-groups and partial row panels
@pytest.mark.parametrize("steps, rows, hid, reverse, with_bias", [(4, 5, 7, False, True), (3, 7, 37, True, False),
                                                                 (1, 2, 3, True, True), (4, 13, 16, False, True),
                                                                 (3, 9, 48, True, False), (1, 4, 32, False, True)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lstm_and_gru_sequences(ops_backend, dtype, rng, gru, steps, rows, hid, reverse, with_bias, layout):
    blocks = 3 if gru else 4
    xw = rng.standard_normal((steps, rows, blocks * hid)) * 2
    w = rng.standard_normal((blocks * hid, hid)) / np.sqrt(hid) * 1.5
    b = rng.standard_normal(blocks * hid)
    offset = hid  # this direction's columns of a bidirectional layer's output gradient
    dout = rng.standard_normal((steps, rows, 2 * hid + 1))
    h_ref, c_ref, g_ref, dx_ref, dh_ref = _sequence_reference(gru, xw, w, b if with_bias else None, dout, offset,
                                                              reverse)
    junk = lambda *shape: rng.standard_normal(shape)  # noqa: E731  (the ops overwrite, or zero, all of it)
    arrays = [xw, w, b, junk(steps + 1, rows, hid), junk(steps + 1, rows, hid), junk(steps, rows, 4 * hid), dout,
              junk(steps, rows, blocks * hid), junk(steps, rows, blocks * hid)]
    placed = Placed(ops_backend, arrays, dtype, layout)
    d = placed.devs
    bias = d[2] if with_bias else None
    tol = tolerance(dtype, scale=20)
    if gru:
        ops_backend.gru_sequence(d[0], d[1], bias, d[3], d[5], reverse=reverse)
        ops_backend.gru_sequence_backward(d[1], d[5], d[3], d[6], offset, d[7], d[8], reverse=reverse)
        np.testing.assert_allclose(placed.host(8), dh_ref, **tol)
    else:
        ops_backend.lstm_sequence(d[0], d[1], bias, d[3], d[4], d[5], reverse=reverse)
        ops_backend.lstm_sequence_backward(d[1], d[5], d[4], d[6], offset, d[7], reverse=reverse)
        np.testing.assert_allclose(placed.host(4), c_ref, **tol)
    np.testing.assert_allclose(placed.host(3), h_ref, **tol)
    np.testing.assert_allclose(placed.host(5), g_ref, **tol)
    np.testing.assert_allclose(placed.host(7), dx_ref, **tol)
    placed.check_sentinels()


@pytest.mark.parametrize("gru", [False, True], ids=["lstm", "gru"])
# H a multiple of 16: OpenCL's fused steps multiply [h_prev | x_t] themselves (rows split across
# work-groups, partial row panels)
@pytest.mark.parametrize("steps, rows, features, hid, reverse, with_bias", [(4, 5, 6, 7, False, True),
                                                                           (3, 7, 1, 37, True, False),
                                                                           (2, 13, 9, 20, True, True),
                                                                           (3, 9, 5, 16, False, True),
                                                                           (2, 13, 3, 32, True, False),
                                                                           (3, 4, 7, 48, True, True)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_lstm_and_gru_input_sequences(ops_backend, dtype, rng, gru, steps, rows, features, hid, reverse, with_bias,
                                      layout, batch_first):
    """The *_input_sequence ops and their backward against the sequence reference on
    xw = x @ w_ih^T (+ b_ih for the GRU, the LSTM taking b_ih + b_hh as one bias): the kept gates
    and states, the same h without them (inference), and the weight and bias gradients with and
    without the pre-activation gradients coming out; x and dout time-major or (N, T, .)."""
    blocks = 3 if gru else 4
    x = rng.standard_normal((steps, rows, features))
    w_ih = rng.standard_normal((blocks * hid, features)) / np.sqrt(features) * 2
    w = rng.standard_normal((blocks * hid, hid)) / np.sqrt(hid) * 1.5
    b_ih, b_hh = rng.standard_normal(blocks * hid), rng.standard_normal(blocks * hid)
    dout = rng.standard_normal((steps, rows, 2 * hid + 1))
    offset = hid
    xw = x @ w_ih.T + (b_ih if with_bias and gru else 0.0)
    b_ref = (b_hh if gru else b_ih + b_hh) if with_bias else None
    h_ref, c_ref, g_ref, dx_ref, dh_ref = _sequence_reference(gru, xw, w, b_ref, dout, offset, reverse)
    h_prev = h_ref[1:] if reverse else h_ref[:steps]
    dw_ih_ref = np.einsum("tng,tni->gi", dx_ref, x)
    dw_hh_ref = np.einsum("tng,tnh->gh", dh_ref, h_prev)
    db_ih_ref, db_hh_ref = dx_ref.sum(axis=(0, 1)), dh_ref.sum(axis=(0, 1))
    junk = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    g_shape, grads = (steps, rows, blocks * hid), [junk(blocks * hid, features), junk(blocks * hid, hid),
                                                   junk(blocks * hid), junk(blocks * hid)]
    given = (lambda a: np.swapaxes(a, 0, 1)) if batch_first else (lambda a: a)  # noqa: E731
    arrays = [given(x), w_ih, w, b_ih, b_hh, b_ih + b_hh, junk(steps + 1, rows, hid), junk(steps + 1, rows, hid),
              junk(steps, rows, 4 * hid), junk(steps + 1, rows, hid), given(dout), junk(*g_shape), *grads, *grads]
    kw = dict(reverse=reverse, batch_first=batch_first)
    placed = Placed(ops_backend, arrays, dtype, layout)
    d = placed.devs
    tol = tolerance(dtype, scale=20)
    first, second = d[12:16], d[16:20]
    if gru:
        bias_ih, bias_hh = (d[3], d[4]) if with_bias else (None, None)
        ops_backend.gru_input_sequence(d[0], d[1], bias_ih, d[2], bias_hh, d[6], d[8], **kw)
        ops_backend.gru_input_sequence(d[0], d[1], bias_ih, d[2], bias_hh, d[9], None, **kw)
        for out, pre in ((first, d[11]), (second, None)):
            ops_backend.gru_input_sequence_backward(d[0], d[2], d[8], d[6], d[10], offset, out[0], out[1], out[2],
                                                    out[3], pre, **kw)
        bias_refs = (db_ih_ref, db_hh_ref)
    else:
        bias = d[5] if with_bias else None
        ops_backend.lstm_input_sequence(d[0], d[1], d[2], bias, d[6], d[7], d[8], **kw)
        ops_backend.lstm_input_sequence(d[0], d[1], d[2], bias, d[9], None, None, **kw)
        np.testing.assert_allclose(placed.host(7), c_ref, **tol)
        for out, pre in ((first, d[11]), (second, None)):
            ops_backend.lstm_input_sequence_backward(d[0], d[2], d[8], d[6], d[7], d[10], offset, out[0], out[1],
                                                     out[2], pre, **kw)
        bias_refs = (db_ih_ref, grads[3])  # the LSTM's one bias gradient; the last buffer stays untouched
    np.testing.assert_allclose(placed.host(6), h_ref, **tol)
    np.testing.assert_allclose(placed.host(8), g_ref, **tol)
    np.testing.assert_array_equal(placed.host(9), placed.host(6))  # inference: the same h, nothing else kept
    np.testing.assert_allclose(placed.host(11), dx_ref, **tol)
    for at in (12, 16):
        for k, ref in enumerate((dw_ih_ref, dw_hh_ref) + bias_refs):
            np.testing.assert_allclose(placed.host(at + k), ref, **tolerance(dtype, scale=100))
    placed.check_sentinels()


def test_sequence_ops_refuse_bad_arguments(ops_backend):
    b = ops_backend
    z = lambda *s: b.zeros(s)  # noqa: E731
    with bad_argument(b, "swap_leading_axes"):
        b.swap_leading_axes(z(2, 3, 4), z(2, 3, 4))
    with bad_argument(b, "embedding"):
        b.embedding(b.zeros((5,), np.int32), z(7, 3), z(4, 3))
    with bad_argument(b, "embedding_backward"):
        b.embedding_backward(z(5), z(5, 3), z(7, 3))  # float indices
    with bad_argument(b, "rnn_cell"):
        b.rnn_cell(z(2, 3), z(2, 3), None, z(2, 3), "gelu")
    with bad_argument(b, "rnn_cell"):
        b.rnn_cell(z(2, 3), z(2, 3), z(4), z(2, 3), "tanh")
    with bad_argument(b, "lstm_cell"):
        b.lstm_cell(z(2, 12), z(2, 12), None, z(2, 3), z(2, 9), z(2, 3), z(2, 3))
    with bad_argument(b, "lstm_cell_backward"):
        b.lstm_cell_backward(z(2, 12), z(2, 3), z(2, 3), z(2, 4), z(2, 3), z(2, 12), z(2, 3))
    with bad_argument(b, "gru_cell"):
        b.gru_cell(z(2, 9), z(2, 9), None, z(2, 3), z(2, 9), z(2, 3))  # gates need 4 blocks
    with bad_argument(b, "gru_cell_backward"):
        b.gru_cell_backward(z(2, 12), z(2, 3), z(2, 3), z(2, 12), z(2, 9), z(2, 3))
    with bad_argument(b, "lstm_sequence"):
        b.lstm_sequence(z(4, 2, 12), z(12, 3), None, z(5, 2, 3), z(5, 2, 3), z(4, 2, 9))  # gates need 4 blocks
    with bad_argument(b, "lstm_sequence_backward"):
        b.lstm_sequence_backward(z(12, 3), z(4, 2, 12), z(5, 2, 3), z(4, 2, 3), 1, z(4, 2, 12))  # offset + H > C
    with bad_argument(b, "gru_sequence"):
        b.gru_sequence(z(4, 2, 9), z(9, 3), z(12), z(5, 2, 3), z(4, 2, 12))  # bias of 4 blocks
    with bad_argument(b, "gru_sequence_backward"):
        b.gru_sequence_backward(z(9, 4), z(4, 2, 12), z(5, 2, 3), z(4, 2, 3), 0, z(4, 2, 9), z(4, 2, 9))
    with bad_argument(b, "lstm_input_sequence"):  # c without gates
        b.lstm_input_sequence(z(4, 2, 5), z(12, 5), z(12, 3), None, z(5, 2, 3), z(5, 2, 3), None)
    with bad_argument(b, "lstm_input_sequence"):  # w_ih of another width than x
        b.lstm_input_sequence(z(4, 2, 5), z(12, 6), z(12, 3), None, z(5, 2, 3), z(5, 2, 3), z(4, 2, 12))
    with bad_argument(b, "gru_input_sequence"):  # x of another step count
        b.gru_input_sequence(z(3, 2, 5), z(9, 5), None, z(9, 3), None, z(5, 2, 3), None)
    with bad_argument(b, "gru_input_sequence"):  # bias_ih of 4 blocks
        b.gru_input_sequence(z(4, 2, 5), z(9, 5), z(12), z(9, 3), None, z(5, 2, 3), z(4, 2, 12))
    with bad_argument(b, "lstm_input_sequence_backward"):  # dw_hh of W_ih's shape
        b.lstm_input_sequence_backward(z(4, 2, 5), z(12, 3), z(4, 2, 12), z(5, 2, 3), z(5, 2, 3), z(4, 2, 3), 0,
                                       z(12, 5), z(12, 5), None)
    with bad_argument(b, "lstm_input_sequence"):  # batch-first x of time-major shape
        b.lstm_input_sequence(z(4, 2, 5), z(12, 5), z(12, 3), None, z(5, 2, 3), None, None, batch_first=True)
    with bad_argument(b, "gru_input_sequence_backward"):  # batch-first dout of time-major shape
        b.gru_input_sequence_backward(z(2, 4, 5), z(9, 3), z(4, 2, 12), z(5, 2, 3), z(4, 2, 3), 0, z(9, 5), z(9, 3),
                                      None, None, batch_first=True)
    with bad_argument(b, "gru_input_sequence_backward"):  # dbias_hh of 4 blocks
        b.gru_input_sequence_backward(z(4, 2, 5), z(9, 3), z(4, 2, 12), z(5, 2, 3), z(4, 2, 3), 0, z(9, 5), z(9, 3),
                                      None, z(12))


@pytest.mark.parametrize("hid", [3, 16])  # 16: OpenCL's fused steps (inference: no gates, a pair of cell states)
def test_sequence_ops_allocate_nothing_once_the_workspace_is_warm(ops_backend, rng, hid):
    b = ops_backend
    f = lambda *shape: b.from_host(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    n, ws = 4, Workspace()
    lstm = (f(n, 4 * hid), f(n, 4 * hid), f(4 * hid), f(n, hid), f(n, 4 * hid), f(n, hid), f(n, hid))
    gru = (f(n, 3 * hid), f(n, 3 * hid), f(3 * hid), f(n, hid), f(n, 4 * hid), f(n, hid))
    dxw, dhw, dh, dc, dg = f(n, 3 * hid), f(n, 3 * hid), f(n, hid), f(n, hid), f(n, 4 * hid)
    idx, emb, dy, dw = b.from_host(np.array([1, 0, 1], np.int32)), f(3, 5), f(3, 5), f(4, 5)
    tm, bm = f(2, 3, 4), f(3, 2, 4)
    t = 3
    seq_lstm = (f(t, n, 4 * hid), f(4 * hid, hid), f(4 * hid), f(t + 1, n, hid), f(t + 1, n, hid), f(t, n, 4 * hid))
    seq_gru = (f(t, n, 3 * hid), f(3 * hid, hid), f(3 * hid), f(t + 1, n, hid), f(t, n, 4 * hid))
    seq_dout, seq_d1, seq_d2, seq_d4 = f(t, n, hid), f(t, n, 3 * hid), f(t, n, 3 * hid), f(t, n, 4 * hid)
    seq_x, w_ih4, w_ih3 = f(t, n, 5), f(4 * hid, 5), f(3 * hid, 5)
    dw4, dw3, db3 = f(4 * hid, hid), f(3 * hid, hid), f(3 * hid)

    def step():
        b.lstm_cell(*lstm, ws=ws)
        b.lstm_cell_backward(lstm[4], lstm[3], lstm[5], dh, dc, dg, dc, ws=ws)
        b.gru_cell(*gru, ws=ws)
        b.gru_cell_backward(gru[4], gru[3], dh, dxw, dhw, dh, ws=ws)
        b.rnn_cell(dh, dh, None, dc, "tanh")
        b.embedding(idx, dw, emb)
        b.embedding_backward(idx, dy, dw, padding_idx=1, accumulate=True, ws=ws)
        b.swap_leading_axes(tm, bm, accumulate=True)
        b.lstm_sequence(*seq_lstm, reverse=True, ws=ws)
        b.lstm_sequence_backward(seq_lstm[1], seq_lstm[5], seq_lstm[4], seq_dout, 0, seq_d4, reverse=True, ws=ws)
        b.gru_sequence(*seq_gru, ws=ws)
        b.gru_sequence_backward(seq_gru[1], seq_gru[4], seq_gru[3], seq_dout, 0, seq_d1, seq_d2, ws=ws)
        b.lstm_input_sequence(seq_x, w_ih4, *seq_lstm[1:], reverse=True, ws=ws)
        b.lstm_input_sequence(seq_x, w_ih4, *seq_lstm[1:4], None, None, ws=ws)
        b.gru_input_sequence(seq_x, w_ih3, seq_gru[2], *seq_gru[1:], ws=ws)
        b.gru_input_sequence(seq_x, w_ih3, None, *seq_gru[1:4], None, reverse=True, ws=ws)
        b.lstm_input_sequence_backward(seq_x, seq_lstm[1], seq_lstm[5], seq_lstm[3], seq_lstm[4], seq_dout, 0, w_ih4,
                                       dw4, seq_lstm[2], None, reverse=True, ws=ws)
        b.lstm_input_sequence_backward(seq_x, seq_lstm[1], seq_lstm[5], seq_lstm[3], seq_lstm[4], seq_dout, 0, w_ih4,
                                       dw4, None, seq_d4, ws=ws)
        b.gru_input_sequence_backward(seq_x, seq_gru[1], seq_gru[4], seq_gru[3], seq_dout, 0, w_ih3, dw3, seq_gru[2],
                                      db3, None, ws=ws)
        b.gru_input_sequence_backward(seq_x, seq_gru[1], seq_gru[4], seq_gru[3], seq_dout, 0, w_ih3, dw3, None, None,
                                      seq_d1, reverse=True, ws=ws)

    step()
    before = b.allocations
    step()
    assert b.allocations == before


# ====================================================================== allocations
def test_ops_allocate_nothing_once_the_workspace_is_warm(ops_backend, rng):
    """A training step reuses its workspace: the second run of every op through it allocates nothing."""
    b = ops_backend
    f = lambda *shape: b.from_host(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    x, w, y, dx, dw = f(2, 4, 6, 6), f(6, 2, 3, 3), f(2, 6, 6, 6), f(2, 4, 6, 6), f(6, 2, 3, 3)
    pooled, argmax = f(2, 6, 3, 3), b.zeros((2, 6, 3, 3), np.int32)
    rows, labels, losses = f(5, 7), b.from_host(np.arange(5, dtype=np.int32)), f(5)
    c, mean, invstd, rm, rv, bn_out = f(4), f(4), f(4), f(4), b.from_host(np.ones(4, np.float32)), f(2, 4, 6, 6)
    sums = f(8)
    p, g, m1, m2 = f(50), f(50), f(50), b.from_host(np.ones(50, np.float32))  # exp_avg_sq >= 0
    pooled_rows, bias6, rows_dx, rows_dx2, part, dg, db = f(5, 5), f(6), f(5, 7), f(5, 7), f(2, 2, 6, 6), f(4), f(4)
    ws = Workspace()

    def step():
        b.gemm(rows, rows, pooled_rows, trans_b=True, alpha=0.5, beta=1.0, ws=ws)
        b.conv2d(x, w, y, (1, 1), (1, 1), (1, 1), 2, ws=ws)
        b.conv2d_backward_filter(x, y, dw, (1, 1), (1, 1), (1, 1), 2, True, ws=ws)
        b.conv2d_backward_data(y, w, dx, (1, 1), (1, 1), (1, 1), 2, True, ws=ws)
        b.bias_grad(y, bias6, True, ws=ws)
        b.max_pool2d(y, pooled, argmax, (2, 2), (2, 2), (0, 0), ws=ws)
        b.max_pool2d_backward(pooled, argmax, y, (2, 2), (2, 2), (0, 0), True, ws=ws)
        b.avg_pool2d(y, pooled, (2, 2), (2, 2), (0, 0), False, ws=ws)
        b.avg_pool2d_backward(pooled, y, (2, 2), (2, 2), (0, 0), False, True, ws=ws)
        b.batch_norm_train(dx, c, c, bn_out, mean, invstd, rm, rv, 0.1, 1e-5, ws=ws)
        b.batch_norm_backward(dx, bn_out, c, mean, invstd, x, dg, db, True, True, ws=ws)
        b.batch_norm_sums(dx, mean, sums, ws=ws)
        b.batch_norm_stats(sums, 72, mean, mean, invstd, rm, rv, 0.1, 1e-5, ws=ws)
        b.batch_norm_apply(dx, c, c, mean, invstd, bn_out, ws=ws)
        b.batch_norm_backward_reduce(dx, bn_out, mean, invstd, sums, dg, db, True, ws=ws)
        b.batch_norm_backward_data(dx, bn_out, c, mean, invstd, sums, 72, x, True, ws=ws)
        b.softmax_cross_entropy(rows, labels, losses, rows_dx, 0.2, ws=ws)
        b.log_softmax(rows, rows_dx, ws=ws)
        b.log_softmax_backward(rows_dx, rows, rows_dx2, True, ws=ws)
        b.mse_loss(rows, rows_dx, losses, rows_dx2, 0.1, ws=ws)
        b.dropout(p, g, m1, 0.3, 1, 2, ws=ws)
        b.mul(p, g, m1, True, ws=ws)
        b.relu_backward(p, g, m1, True, ws=ws)
        b.sigmoid_backward(p, g, m1, True, ws=ws)
        b.sgd_update(p, g, m1, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.1,
                     first_step=False, ws=ws)
        b.adam_update(p, g, m1, m2, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, decoupled=False,
                      step=2, ws=ws)
        b.copy_channels(part, y, 1, True)
        b.slice_channels(y, part, 3, True)
        b.store(p, g, True)

    step()
    before = b.allocations
    step()
    assert b.allocations == before


# ========================================================================= coverage
#: every public op of base.py -> the tests above that check it
COVERAGE = {
    "empty": "test_memory_round_trip", "zeros": "test_memory_round_trip", "from_host": "test_memory_round_trip",
    "write": "test_memory_round_trip", "to_host": "test_memory_round_trip", "copy": "test_memory_round_trip",
    "fill": "test_memory_round_trip", "is_array": "test_memory_round_trip", "synchronize": "test_memory_round_trip",
    "release": "test_memory_round_trip", "reshape": "test_reshape_and_flat_view_share_storage",
    "flat_view": "test_reshape_and_flat_view_share_storage", "gemm": "test_gemm", "add": "test_add_scale_mul",
    "scale": "test_add_scale_mul", "mul": "test_add_scale_mul", "add_bias": "test_add_bias_and_bias_grad",
    "bias_grad": "test_add_bias_and_bias_grad", "sum_all": "test_sum_all", "all_finite": "test_all_finite",
    "store": "test_store",
    **{op: "test_activation_forward_and_backward"
       for op in ("relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
                  "tanh", "tanh_backward")},
    **{op: "test_softmax_family" for op in ("softmax", "softmax_backward", "log_softmax", "log_softmax_backward")},
    "softmax_cross_entropy": "test_softmax_cross_entropy_and_nll", "nll_loss": "test_softmax_cross_entropy_and_nll",
    "mse_loss": "test_mse_loss", "dropout": "test_dropout_follows_the_documented_stream",
    "sgd_update": "test_sgd_update", "adam_update": "test_adam_update", "capture": "test_capture",
    **{op: "test_conv2d_and_its_gradients" for op in ("conv2d", "conv2d_backward_data", "conv2d_backward_filter")},
    "max_pool2d": "test_max_pool2d", "max_pool2d_backward": "test_max_pool2d", "avg_pool2d": "test_avg_pool2d",
    "avg_pool2d_backward": "test_avg_pool2d", **{op: "test_batch_norm" for op in
                                                 ("batch_norm_train", "batch_norm_infer", "batch_norm_backward")},
    **{op: "test_batch_norm_sums_stats_and_apply" for op in ("batch_norm_sums", "batch_norm_stats", "batch_norm_apply")},
    "batch_norm_backward_reduce": "test_batch_norm_backward_reduce_and_data",
    "batch_norm_backward_data": "test_batch_norm_backward_reduce_and_data",
    "copy_channels": "test_copy_and_slice_channels", "slice_channels": "test_copy_and_slice_channels",
    "swap_leading_axes": "test_swap_leading_axes", "embedding": "test_embedding_gather_and_scatter",
    "embedding_backward": "test_embedding_gather_and_scatter", "rnn_cell": "test_rnn_cell",
    "lstm_cell": "test_lstm_cell_and_backward", "lstm_cell_backward": "test_lstm_cell_and_backward",
    "gru_cell": "test_gru_cell_and_backward", "gru_cell_backward": "test_gru_cell_and_backward",
    **{op: "test_lstm_and_gru_sequences" for op in ("lstm_sequence", "lstm_sequence_backward", "gru_sequence",
                                                   "gru_sequence_backward")},
    **{op: "test_lstm_and_gru_input_sequences" for op in ("lstm_input_sequence", "gru_input_sequence",
                                                         "lstm_input_sequence_backward",
                                                         "gru_input_sequence_backward")},
}


def test_every_op_of_the_contract_has_a_case():
    ops = {name for name, member in inspect.getmembers(Backend, callable) if not name.startswith("_")}
    assert sorted(ops - set(COVERAGE)) == [], "ops of base.py without a conformance case"
    assert sorted(set(COVERAGE) - ops) == [], "cases for ops base.py no longer declares"
    assert all(callable(globals().get(test)) for test in COVERAGE.values())
