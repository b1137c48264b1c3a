"""The one-pass batch-norm kernels (train_fused, backward_fused: each channel's passes one after
the other while its planes are in cache) give the bits of the separate C passes (stats, invstd,
affine; backward_sums, backward_dx) and agree with the pure-NumPy fallback."""

import os
import signal

import numpy as np
import pytest

from juicepy.backends import Workspace
from juicepy.backends.numpy import NumpyBackend
from juicepy.backends.numpy import spatial

C = NumpyBackend()
PLAIN = NumpyBackend(kernels="numpy")
needs_kernels = pytest.mark.skipif(C.norm_kernels is None,
                                   reason="juicepy.backends.numpy._norm_kernels was not built (no C compiler)")

# (N, C, H, W): one lane; channels over two lanes; 32x32 planes (fused or not by the L2 size)
SHAPES = [(3, 5, 4, 6), (32, 32, 16, 16), (32, 16, 32, 32)]
# planes with a tail past the 32 summing lanes, shorter than them, batch 1, one channel; more
# channels than the float sums' blocks of 16 (16, 16 and 5)
ODD_SHAPES = [(3, 5, 7, 9), (2, 3, 5, 5), (1, 4, 17, 17), (5, 1, 8, 8), (1, 1, 4, 4), (3, 37, 8, 8)]


def _inputs(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    return x, dy, gamma, beta


def _train(backend, x, gamma, beta, relu):
    c = x.shape[1]
    out = np.empty_like(x)
    mean, invstd = np.empty(c, x.dtype), np.empty(c, x.dtype)
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    backend.batch_norm_train(x, gamma, beta, out, mean, invstd, rm, rv, 0.1, 1e-5, ws=Workspace(), relu=relu)
    return out, mean, invstd, rm, rv


def _train_passes(x, gamma, beta, relu):
    """The separate C passes the fused kernel replaces, in their old order."""
    n, c, inner = spatial.channels_inner(x)
    out = np.empty_like(x)
    mean, var, invstd = np.empty(c, x.dtype), np.empty(c, x.dtype), np.empty(c, x.dtype)
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    C.norm_kernels.stats(x, mean, var, n, c, inner, 0, c)
    spatial._update_running_and_invstd(C, mean, var, x.size // c, invstd, rm, rv, 0.1, 1e-5, None)
    scale = gamma * invstd
    C.norm_kernels.affine(x, mean, scale, beta, out, n, c, inner, 0, c, relu)
    return out, mean, invstd, rm, rv


def _backward(backend, x, dy, gamma, mean, invstd, relu_out, accumulate):
    c = x.shape[1]
    dx = np.full_like(x, 0.25)
    dgamma, dbeta = np.full(c, 0.5, x.dtype), np.full(c, -0.5, x.dtype)
    backend.batch_norm_backward(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, accumulate_dx=accumulate,
                                accumulate_params=accumulate, ws=Workspace(), relu_out=relu_out)
    return dx, dgamma, dbeta


def _backward_passes(x, dy, gamma, mean, invstd, relu_out, accumulate):
    n, c, inner = spatial.channels_inner(x)
    dx = np.full_like(x, 0.25)
    dgamma, dbeta = np.full(c, 0.5, x.dtype), np.full(c, -0.5, x.dtype)
    sums = np.empty(2 * c, x.dtype)
    C.norm_kernels.backward_sums(x, dy, mean, invstd, sums[:c], sums[c:], n, c, inner, 0, c, relu_out)
    coef = gamma * invstd
    coef *= 1.0 / (x.size // c)
    C.norm_kernels.backward_dx(x, dy, mean, invstd, coef, sums[:c], sums[c:], dx, float(x.size // c), n, c,
                               inner, 0, c, accumulate, relu_out)
    for grad, value in ((dbeta, sums[:c]), (dgamma, sums[c:])):
        if accumulate:
            grad += value
        else:
            grad[...] = value
    return dx, dgamma, dbeta


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_fused_train_gives_the_bits_of_the_separate_passes(dtype, shape, relu):
    x, _, gamma, beta = _inputs(dtype, shape)
    for a, b in zip(_train(C, x, gamma, beta, relu), _train_passes(x, gamma, beta, relu)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("text, size", [("1024K\n", 1 << 20), ("2M", 2 << 20), ("1G", 1 << 30), ("524288", 1 << 19),
                                        ("", 7), ("12Q", 7), ("K", 7), (None, 7)])
def test_the_l2_size_is_read_from_sysfs_or_falls_back(tmp_path, text, size):
    """sysfs's cache size with its unit suffix; a missing or unreadable file gives the default."""
    path = tmp_path / "size"
    if text is not None:
        path.write_text(text)
    assert spatial._l2_bytes(default=7, path=str(path)) == size


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + ODD_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("l2", [0, 1 << 30], ids=["separate", "fused"])
def test_fused_backward_gives_the_bits_of_the_separate_passes(dtype, shape, relu, accumulate, l2, monkeypatch):
    monkeypatch.setattr(spatial, "BN_FUSED_L2", l2)
    assert spatial._fused_backward_fits(np.empty(shape, dtype)) == bool(l2)
    x, dy, gamma, beta = _inputs(dtype, shape)
    out, mean, invstd, _, _ = _train(C, x, gamma, beta, relu)
    relu_out = out if relu else None
    fused = _backward(C, x, dy, gamma, mean, invstd, relu_out, accumulate)
    for a, b in zip(fused, _backward_passes(x, dy, gamma, mean, invstd, relu_out, accumulate)):
        np.testing.assert_array_equal(a, b)


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_fused_passes_agree_with_the_numpy_fallback(shape, relu):
    x, dy, gamma, beta = _inputs(np.float32, shape, seed=1)
    fused, plain = _train(C, x, gamma, beta, relu), _train(PLAIN, x, gamma, beta, relu)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    out, mean, invstd = fused[:3]
    for a, b in zip(_backward(C, x, dy, gamma, mean, invstd, out if relu else None, True),
                    _backward(PLAIN, x, dy, gamma, mean, invstd, out if relu else None, True)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def _reference(x, dy, gamma, beta, relu):
    """float64 batch norm (+ ReLU) forward and backward, biased variance, eps 1e-5"""
    x, dy, gamma, beta = (a.astype(np.float64) for a in (x, dy, gamma, beta))
    axes, shape = (0, 2, 3), (1, -1, 1, 1)
    mean, var = x.mean(axes), x.var(axes)
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    out = xhat * gamma.reshape(shape) + beta.reshape(shape)
    if relu:
        dy = np.where(out > 0, dy, 0)
        out = np.maximum(out, 0)
    sum_dy, sum_dy_xhat = dy.sum(axes), (dy * xhat).sum(axes)
    m = x.size // x.shape[1]
    dx = (gamma * invstd / m).reshape(shape) * (m * dy - sum_dy.reshape(shape) - xhat * sum_dy_xhat.reshape(shape))
    return out, mean, invstd, dx, sum_dy_xhat, sum_dy


@pytest.mark.parametrize("backend", [C, PLAIN], ids=["c", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ODD_SHAPES + [(32, 16, 32, 32), (2, 3, 1, 1)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("l2", [0, 1 << 30], ids=["separate", "fused"])
def test_batch_norm_step_matches_a_float64_reference(backend, dtype, shape, relu, l2, monkeypatch):
    """The per-lane double sums (a plane's lanes widened, added across planes, totalled once per
    channel) on planes with tails, shorter than the lanes, of 1x1 (the NumPy path), batch 1"""
    monkeypatch.setattr(spatial, "BN_FUSED_L2", l2)
    x, dy, gamma, beta = _inputs(dtype, shape, seed=2)
    out, mean, invstd, _, _ = _train(backend, x, gamma, beta, relu)
    dx, dgamma, dbeta = _backward(backend, x, dy, gamma, mean, invstd, out if relu else None, False)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want in zip((out, mean, invstd, dx, dgamma, dbeta), _reference(x, dy, gamma, beta, relu)):
        np.testing.assert_allclose(got, want, **tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 37, 8, 8), (2, 5, 7, 9)])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_backward_blocks_give_the_bits_of_the_separate_passes(dtype, shape, relu):
    """backward_fused's channel blocks (the sums of a block sample by sample, then its dx): one
    channel, blocks that split the channels unevenly, the kernel's cap of 16, more than it
    (clamped), and none (0: one channel), each over two lanes too"""
    x, dy, gamma, beta = _inputs(dtype, shape, seed=7)
    out, mean, invstd, _, _ = _train(C, x, gamma, beta, relu)
    relu_out = out if relu else None
    n, c, inner = spatial.channels_inner(x)
    coef = (gamma * invstd / (n * inner)).astype(dtype)
    want_sums = np.empty(2 * c, dtype)
    want_dx = np.empty_like(x)
    C.norm_kernels.backward_sums(x, dy, mean, invstd, want_sums[:c], want_sums[c:], n, c, inner, 0, c, relu_out)
    C.norm_kernels.backward_dx(x, dy, mean, invstd, coef, want_sums[:c], want_sums[c:], want_dx, float(n * inner),
                               n, c, inner, 0, c, False, relu_out)
    for block in (1, 3, 16, 100, 0):
        for lanes in (1, 2):
            sums, dx = np.full(2 * c, np.nan, dtype), np.full_like(x, np.nan)
            C.norm_kernels.backward_fused(x, dy, mean, invstd, coef, sums[:c], sums[c:], dx, float(n * inner), n, c,
                                          inner, 0, c, False, relu_out, lanes, block)
            np.testing.assert_array_equal(sums, want_sums)
            np.testing.assert_array_equal(dx, want_dx)


@pytest.mark.parametrize("shape, l2, block", [((32, 64, 8, 8), 512 << 10, 16), ((32, 16, 32, 32), 512 << 10, 1),
                                              ((32, 32, 16, 16), 512 << 10, 4), ((2, 3, 4, 4), 0, 0)])
def test_the_fused_block_is_what_fits_in_the_l2_budget(shape, l2, block, monkeypatch):
    """Four arrays (x, dy, the ReLU output, dx) of a block's planes fit in BN_FUSED_L2; with none
    the backward runs its passes apart"""
    monkeypatch.setattr(spatial, "BN_FUSED_L2", l2)
    x = np.empty(shape, np.float32)
    assert spatial._fused_channels(x) == block
    assert spatial._fused_backward_fits(x) == (block > 0)


def _kernel_calls(x, dy, gamma, beta, lanes):
    """Every C kernel over all channels with ``lanes`` threads inside the call; their outputs"""
    n, c, inner = spatial.channels_inner(x)
    k = C.norm_kernels
    out, dx, dx2, aff = (np.empty_like(x) for _ in range(4))
    mean, var, invstd, scale, m2, v2 = (np.empty(c, x.dtype) for _ in range(6))
    sums, sums2 = np.empty(2 * c, x.dtype), np.empty(2 * c, x.dtype)
    coef = (gamma / (n * inner)).astype(x.dtype)
    k.train_fused(x, gamma, beta, out, mean, var, invstd, scale, 1e-5, n, c, inner, 0, c, True, lanes)
    k.stats(x, m2, v2, n, c, inner, 0, c, lanes)
    k.affine(x, mean, scale, beta, aff, n, c, inner, 0, c, False, lanes)
    k.backward_fused(x, dy, mean, invstd, coef, sums[:c], sums[c:], dx, float(n * inner), n, c, inner, 0, c,
                     False, out, lanes)
    k.backward_sums(x, dy, mean, invstd, sums2[:c], sums2[c:], n, c, inner, 0, c, None, lanes)
    k.backward_dx(x, dy, mean, invstd, coef, sums2[:c], sums2[c:], dx2, float(n * inner), n, c, inner, 0, c,
                  False, None, lanes)
    return out, mean, var, invstd, scale, m2, v2, aff, sums, dx, sums2, dx2


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (32, 16, 32, 32), (1, 1, 4, 4)])
def test_channel_lanes_inside_the_kernels_give_the_bits_of_one_lane(dtype, shape):
    """lanes > 1 splits the channels over threads inside the call (more lanes than channels too)"""
    x, dy, gamma, beta = _inputs(dtype, shape, seed=3)
    one = _kernel_calls(x, dy, gamma, beta, 1)
    for lanes in (2, 3, 100):
        for a, b in zip(_kernel_calls(x, dy, gamma, beta, lanes), one):
            np.testing.assert_array_equal(a, b)


@needs_kernels
def test_channel_lanes_from_two_threads_at_once():
    """Two callers at once: one gets the pool's threads, the other runs its lanes itself"""
    import threading
    inputs = [_inputs(np.float32, (8, 12, 16, 16), seed=s) for s in (4, 5)]
    want = [_kernel_calls(*i, 1) for i in inputs]
    got = [[] for _ in inputs]

    def caller(k):
        for _ in range(20):
            got[k].append(_kernel_calls(*inputs[k], 2))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert len(got[k]) == 20
        for outputs in got[k]:
            for a, b in zip(outputs, want[k]):
                np.testing.assert_array_equal(a, b)


def _wake_python_lanes(count):
    """A parallel region of ``count`` calls: its lanes then poll for their next call (threads.LANE_SPIN)."""
    from juicepy.backends.numpy import threads

    threads.parallel([(lambda: None, ())] * count)


@needs_kernels
@pytest.mark.parametrize("lanes", [2, 3])
def test_channel_lanes_run_on_the_polling_python_lanes(monkeypatch, lanes):
    """While threads.py's lanes poll, the kernels hand their other parts to them (_side_lanes.h)
    instead of to workers of their own; the bits are the one-lane call's either way, and with the
    lanes away (none polling) the module's own workers take the parts."""
    from juicepy.backends.numpy import kernels, threads

    cpu = kernels.load("_cpu_kernels", "c")
    if threads._spin_while() is None or not hasattr(cpu, "side_tasks_done"):
        pytest.skip("the C polling lanes are not built")
    monkeypatch.setenv("JUICEPY_NUM_THREADS", str(lanes))
    x, dy, gamma, beta = _inputs(np.float32, (8, 6, 16, 16), seed=9)
    want = _kernel_calls(x, dy, gamma, beta, 1)
    handed = 0
    for _ in range(100):  # a lane polls again a moment after the region (sooner on a quiet machine)
        _wake_python_lanes(lanes)
        before = cpu.side_tasks_done()
        got = _kernel_calls(x, dy, gamma, beta, lanes)
        handed += cpu.side_tasks_done() > before
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        if handed == 5:
            break
    assert handed == 5
    monkeypatch.setattr(threads, "LANE_SPIN", 0.0)  # the lanes block at once after their next call
    _wake_python_lanes(lanes)
    import time

    time.sleep(0.1)  # long enough for the lanes to leave their poll on a loaded machine
    before = cpu.side_tasks_done()
    for a, b in zip(_kernel_calls(x, dy, gamma, beta, lanes), want):
        np.testing.assert_array_equal(a, b)
    assert cpu.side_tasks_done() == before
    _wake_python_lanes(lanes)  # back to polling with the default LANE_SPIN for later tests


@needs_kernels
def test_channel_lanes_from_two_threads_while_the_python_lanes_poll():
    """Two threads' calls at once: each claims what polling lanes it can (none twice), the rest
    of each runs on its own thread; every result is the one-lane call's."""
    import threading

    x, dy, gamma, beta = _inputs(np.float32, (8, 6, 16, 16), seed=10)
    want = _kernel_calls(x, dy, gamma, beta, 1)
    bad = []

    def run():
        for _ in range(40):
            _wake_python_lanes(2)
            if not all(np.array_equal(a, b) for a, b in zip(_kernel_calls(x, dy, gamma, beta, 2), want)):
                bad.append(1)

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert bad == []


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_channel_lanes_in_a_forked_child():
    """A forked child has none of the parent's pool threads or Python lanes: it starts its own"""
    x, dy, gamma, beta = _inputs(np.float32, (4, 6, 8, 8), seed=6)
    want = _kernel_calls(x, dy, gamma, beta, 2)  # the parent's pool is started
    _wake_python_lanes(2)  # and its Python lanes poll as it forks: the child has neither
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        signal.alarm(30)
        ok = all(np.array_equal(a, b) for a, b in zip(_kernel_calls(x, dy, gamma, beta, 2), want))
        _wake_python_lanes(2)  # the child's own lanes, polling, take the parts
        ok = ok and all(np.array_equal(a, b) for a, b in zip(_kernel_calls(x, dy, gamma, beta, 2), want))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _lane_sums(values, lanes=32):
    """The kernels' summing order, in NumPy: per plane, lane l adds values l, l + 32, ... of the
    whole 32-value rows in float (np.cumsum adds in order), then widens into the channel's double
    lane l; the tail's values go into their lanes in double; the lanes are totalled in order."""
    n, c, inner = values.shape
    full = inner - inner % lanes
    totals = np.empty(c)
    for ch in range(c):
        acc = np.zeros(lanes)
        for s in range(n):
            plane = values[s, ch]
            if full:
                acc += np.cumsum(plane[:full].reshape(-1, lanes), axis=0, dtype=values.dtype)[-1].astype(np.float64)
            for k in range(full, inner):
                acc[k % lanes] += float(plane[k])
        total = 0.0
        for lane in acc:
            total += lane
        totals[ch] = total
    return totals


@needs_kernels
@pytest.mark.parametrize("shape", ODD_SHAPES + [(4, 3, 8, 8), (2, 2, 16, 16)])
@pytest.mark.parametrize("relu", [False, True])
def test_float_backward_sums_add_in_the_documented_lane_order(shape, relu):
    """backward_sums in float32 keeps its lanes in vectors; its bits are those of the lane order
    written out in NumPy (a reordering, e.g. of the widened lanes or of the tail, shows here)."""
    x, dy, _, _ = _inputs(np.float32, shape, seed=3)
    n, c, inner = spatial.channels_inner(x)
    relu_out = np.maximum(_inputs(np.float32, shape, seed=4)[0], 0) if relu else None
    mean = x.mean((0, 2, 3)).astype(np.float32)
    invstd = (1 / x.std((0, 2, 3))).astype(np.float32)
    sum_dy, sum_dy_xhat = np.empty(c, np.float32), np.empty(c, np.float32)
    C.norm_kernels.backward_sums(x, dy, mean, invstd, sum_dy, sum_dy_xhat, n, c, inner, 0, c, relu_out)
    grad = (np.where(relu_out > 0, dy, np.float32(0)) if relu else dy).reshape(n, c, inner)
    centered = x.reshape(n, c, inner) - mean[:, None]
    np.testing.assert_array_equal(sum_dy, _lane_sums(grad).astype(np.float32))
    np.testing.assert_array_equal(sum_dy_xhat, (_lane_sums(grad * centered) * invstd).astype(np.float32))


@needs_kernels
@pytest.mark.parametrize("shape", ODD_SHAPES + [(4, 3, 8, 8), (2, 2, 16, 16)])
def test_statistics_add_in_the_documented_lane_order(shape):
    """stats gives the bits of the lane order written out in NumPy: the mean from the plain sums,
    the variance from the squares of the values less that float mean."""
    x = _inputs(np.float32, shape, seed=5)[0]
    n, c, inner = spatial.channels_inner(x)
    mean, var = np.empty(c, np.float32), np.empty(c, np.float32)
    C.norm_kernels.stats(x, mean, var, n, c, inner, 0, c)
    values = x.reshape(n, c, inner)
    want_mean = (_lane_sums(values) / (n * inner)).astype(np.float32)
    centered = values - want_mean[:, None]
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(var, (_lane_sums(centered * centered) / (n * inner)).astype(np.float32))
