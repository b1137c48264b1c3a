"""The CUDA backend's per-channel reductions split over several blocks a channel
(device.channel_chunks: batch norm, a convolution's bias gradient), bias_grad's column sums for
(N, C) and max_pool_backward's gather. The conformance suite reaches the split only with its
larger cases; here device.CHUNK_MIN is lowered so that small inputs take three chunks or more a
channel (odd sizes: the last chunk short, or exactly full), each result against a float64 NumPy
reference. On the emulator every launch also runs in two thread orders."""

import itertools
import math

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends import BackendUnavailable, Workspace
from juicepy.backends.cuda import device

# (shape, what it exercises); chunk counts for CHUNK_MIN = BLOCK and a GPU of 132 SMs
SPLIT_SHAPES = [
    ((3, 2, 7, 41), "4 chunks of 256, the last 93"),
    ((1000, 3), "inner 1 (BatchNorm1d): 4 chunks, the last 232"),
    ((4, 1, 16, 16), "exactly 4 full chunks"),
    ((2, 3, 5, 77), "4 chunks, the last 2 values"),
]
SHAPES = [s for s, _ in SPLIT_SHAPES]


@pytest.fixture
def cuda(monkeypatch):
    try:
        backend = jp.backend("cuda")
    except BackendUnavailable as exc:
        pytest.skip(f"no CUDA device and no emulator ({str(exc)[:160]})")
    monkeypatch.setattr(device, "CHUNK_MIN", device.BLOCK)
    monkeypatch.setattr(device, "SPLIT_MIN", device.BLOCK)
    return backend


@pytest.fixture
def launches(cuda, monkeypatch):
    """The names of the kernels the backend launches, in order."""
    names = []
    launch = cuda._launch

    def spy(dtype, name, threads, args, block=device.BLOCK, grid=None):
        names.append(name)
        return launch(dtype, name, threads, args, block=block, grid=grid)

    monkeypatch.setattr(cuda, "_launch", spy)
    return names


def _split(cuda, shape):
    n, c = shape[:2]
    chunks, chunk = device.channel_chunks(n * math.prod(shape[2:]), c, cuda.sm_count)
    assert chunks >= 3, f"{shape} must take several chunks a channel, got {chunks}"
    return chunks, chunk


def _axes(shape):
    return (0,) + tuple(range(2, len(shape))), (1, -1) + (1,) * (len(shape) - 2)


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def test_the_chunk_rule():
    for count, channels, sms in itertools.product([0, 1, 255, 1024, 1025, 2048, 4097, 32768, 10 ** 6],
                                                  [1, 3, 16, 64, 300], [1, 16, 132]):
        chunks, chunk = device.channel_chunks(count, channels, sms)
        if chunks == 1:
            assert chunk == count
            continue
        assert count > max(device.SPLIT_MIN, device.CHUNK_MIN) and 1 < chunks <= device.CHUNK_MAX
        assert chunk >= device.CHUNK_MIN
        assert chunk % device.BLOCK == 0 and (chunks - 1) * chunk < count <= chunks * chunk  # none empty
        assert channels * (chunks - 1) < device.CHUNK_BLOCKS_PER_SM * sms  # no more blocks than asked for
    # ResNet 16-32-64 b32's first stage on an H200: 16 blocks of 2048 values a channel, 256 in all
    assert device.channel_chunks(32 * 32 * 32, 16, 132) == (16, 2048)
    assert device.channel_chunks(10 ** 6, 300, 132) == (1, 10 ** 6)  # enough channels for every SM already
    assert device.channel_chunks(32 * 16 * 16, 32, 132) == (8, 1024)  # its second stage
    assert device.channel_chunks(32 * 8 * 8, 64, 132) == (1, 2048)  # its third: one block measured faster


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("running", [True, False])
def test_batch_norm_split_over_chunks(cuda, launches, rng, dtype, shape, accumulate, running):
    _split(cuda, shape)
    b, c = cuda, shape[1]
    axes, bshape = _axes(shape)
    count = math.prod(shape) // c
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype).astype(np.float64)
    gamma, beta, rm0, rv0 = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy, dx0, dg0, db0 = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    dev = dict(zip("x g b rm rv dy dx dg db".split(),
                   (b.from_host(np.asarray(a, dtype)) for a in (x, gamma, beta, rm0, rv0, dy, dx0, dg0, db0))))
    out, mean, invstd = b.zeros(shape, dtype), b.zeros((c,), dtype), b.zeros((c,), dtype)
    eps, momentum, ws = 1e-5, 0.1, Workspace()
    b.batch_norm_train(dev["x"], dev["g"], dev["b"], out, mean, invstd, dev["rm"] if running else None,
                       dev["rv"] if running else None, momentum, eps, ws=ws)
    assert launches == ["batch_norm_train_partials", "batch_norm_train_chunks"]
    b.batch_norm_backward(dev["x"], dev["dy"], dev["g"], mean, invstd, dev["dx"], dev["dg"], dev["db"], accumulate,
                          accumulate, ws=ws)
    assert launches[2:] == ["batch_norm_grad_partials", "batch_norm_backward_chunks"]

    mu, var = x.mean(axis=axes), x.var(axis=axes)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mu.reshape(bshape)) * inv.reshape(bshape)
    sum_dy, sum_dy_xhat = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dx_ref = (gamma * inv / count).reshape(bshape) * (count * dy - sum_dy.reshape(bshape)
                                                      - xhat * sum_dy_xhat.reshape(bshape))
    host = lambda a: b.to_host(a).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(host(out), xhat * gamma.reshape(bshape) + beta.reshape(bshape), **tol(dtype))
    np.testing.assert_allclose(host(mean), mu, **tol(dtype))
    np.testing.assert_allclose(host(invstd), inv, **tol(dtype))
    if running:
        np.testing.assert_allclose(host(dev["rm"]), 0.9 * rm0 + 0.1 * mu, **tol(dtype))
        np.testing.assert_allclose(host(dev["rv"]), 0.9 * rv0 + 0.1 * var * count / (count - 1), **tol(dtype))
    else:
        np.testing.assert_array_equal(host(dev["rm"]), rm0.astype(dtype))
    np.testing.assert_allclose(host(dev["dx"]), (dx0 if accumulate else 0) + dx_ref, **tol(dtype))
    np.testing.assert_allclose(host(dev["dg"]), (dg0 if accumulate else 0) + sum_dy_xhat, **tol(dtype))
    np.testing.assert_allclose(host(dev["db"]), (db0 if accumulate else 0) + sum_dy, **tol(dtype))

    # without dx: the parameter gradients alone, the same bits
    dg, db = b.zeros((c,), dtype), b.zeros((c,), dtype)
    b.batch_norm_backward(dev["x"], dev["dy"], dev["g"], mean, invstd, None, dg, db, ws=ws)
    if not accumulate:
        np.testing.assert_array_equal(b.to_host(dg), b.to_host(dev["dg"]))
        np.testing.assert_array_equal(b.to_host(db), b.to_host(dev["db"]))


def test_batch_norm_split_keeps_the_variance_of_a_large_mean(cuda, rng):
    """mean 1000, std 0.01 in float32: sum(x^2) / M - mean^2 would lose every digit of the
    variance (x^2 ~ 1e6, float32's spacing there 0.06); per-chunk M2 combined by Chan's formula
    keeps it."""
    shape = (8, 2, 9, 13)
    _split(cuda, shape)
    x = (1000 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    ones, zeros = cuda.from_host(np.ones(2, np.float32)), cuda.zeros((2,))
    out, mean, invstd = cuda.zeros(shape), cuda.zeros((2,)), cuda.zeros((2,))
    cuda.batch_norm_train(cuda.from_host(x), ones, zeros, out, mean, invstd, None, None, 0.1, 1e-8)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(cuda.to_host(invstd), 1 / np.sqrt(var + 1e-8), rtol=1e-3)


def test_batch_norm_split_is_deterministic(cuda, rng):
    shape = (3, 2, 7, 41)
    _split(cuda, shape)
    x, dy = (cuda.from_host(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
    g, bt = cuda.from_host(rng.standard_normal(2).astype(np.float32)), cuda.zeros((2,))
    runs = []
    for _ in range(2):
        out, mean, invstd, dx, dg, db = (cuda.zeros(a) for a in (shape, (2,), (2,), shape, (2,), (2,)))
        cuda.batch_norm_train(x, g, bt, out, mean, invstd, None, None, 0.1, 1e-5)
        cuda.batch_norm_backward(x, dy, g, mean, invstd, dx, dg, db)
        runs.append([cuda.to_host(a) for a in (out, mean, invstd, dx, dg, db)])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_synchronised_batch_norm_sums_split_over_chunks(cuda, launches, rng, dtype, shape, accumulate):
    _split(cuda, shape)
    b, c = cuda, shape[1]
    axes, bshape = _axes(shape)
    x, dy = rng.standard_normal(shape) + 3, rng.standard_normal(shape)
    shift, mean, invstd = rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dg0, db0 = rng.standard_normal(c), rng.standard_normal(c)
    dev_x, dev_dy, dev_shift, dev_mean, dev_inv, dg, db = (b.from_host(np.asarray(a, dtype)) for a in
                                                           (x, dy, shift, mean, invstd, dg0, db0))
    sums, grad_sums, ws = b.zeros((2 * c,), dtype), b.zeros((2 * c,), dtype), Workspace()
    b.batch_norm_sums(dev_x, dev_shift, sums, ws=ws)
    assert launches == ["batch_norm_sums_partials", "batch_norm_combine_sums"]
    b.batch_norm_backward_reduce(dev_x, dev_dy, dev_mean, dev_inv, grad_sums, dg, db, accumulate, ws=ws)
    assert launches[2:] == ["batch_norm_grad_partials", "batch_norm_combine_sums"]
    d = x - shift.reshape(bshape)
    xhat = (x - mean.reshape(bshape)) * invstd.reshape(bshape)
    local = np.concatenate([dy.sum(axis=axes), (dy * xhat).sum(axis=axes)])
    np.testing.assert_allclose(b.to_host(sums), np.concatenate([d.sum(axis=axes), (d * d).sum(axis=axes)]),
                               **tol(dtype))
    np.testing.assert_allclose(b.to_host(grad_sums), local, **tol(dtype))
    np.testing.assert_allclose(b.to_host(dg), (dg0 if accumulate else 0) + local[c:], **tol(dtype))
    np.testing.assert_allclose(b.to_host(db), (db0 if accumulate else 0) + local[:c], **tol(dtype))
    b.batch_norm_backward_reduce(dev_x, dev_dy, dev_mean, dev_inv, grad_sums, ws=ws)  # no parameter gradients
    np.testing.assert_allclose(b.to_host(grad_sums), local, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernels", [
    ((3, 2, 7, 41), ["bias_grad_partials", "bias_grad_combine"]),   # a convolution's, split
    ((2, 3, 5, 77), ["bias_grad_partials", "bias_grad_combine"]),
    ((1000, 3), ["bias_grad_columns"]),                               # Linear: column sums, rows past 32 warps
    ((37, 70), ["bias_grad_columns"]),                                # three tiles of columns, the last 6 wide
    ((1, 33), ["bias_grad_columns"]),
    ((5, 40, 1, 1), ["bias_grad_columns"]),                           # inner 1 with spatial axes
    ((3, 300, 2, 2), ["bias_grad"]),                                  # few values a channel: one block each
    ((2, 3, 0), ["bias_grad"]),                                       # no values: zeros
], ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_bias_grad_forms(cuda, launches, rng, dtype, shape, kernels, accumulate):
    axes, _ = _axes(shape)
    dy, db0 = rng.standard_normal(shape), rng.standard_normal(shape[1])
    dev_db = cuda.from_host(db0.astype(dtype))
    cuda.bias_grad(cuda.from_host(dy.astype(dtype)), dev_db, accumulate, Workspace())
    assert launches == kernels
    np.testing.assert_allclose(cuda.to_host(dev_db), (db0 if accumulate else 0) + dy.sum(axis=axes), **tol(dtype))


def test_split_ops_allocate_nothing_and_replay_as_a_graph(cuda, rng):
    """The partials live in the workspace: a second step allocates nothing, and the step
    captured as a CUDA graph gives the eager step's bits."""
    shape, pooled_shape = (3, 2, 8, 42), (3, 2, 4, 21)
    _split(cuda, shape)
    f = lambda *s: cuda.from_host(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    x, dy, g, bt, sums = f(*shape), f(*shape), f(2), f(2), f(4)
    out, mean, invstd, dx, dg, db, dbias = (cuda.zeros(s) for s in (shape, (2,), (2,), shape, (2,), (2,), (2,)))
    pooled, argmax, dpooled = cuda.zeros(pooled_shape), cuda.zeros(pooled_shape, np.int32), f(*pooled_shape)
    ws = Workspace()
    results = (out, mean, invstd, dx, dg, db, dbias, sums)

    def step():
        cuda.batch_norm_train(x, g, bt, out, mean, invstd, None, None, 0.1, 1e-5, ws=ws)
        cuda.batch_norm_backward(x, dy, g, mean, invstd, dx, dg, db, ws=ws)
        cuda.batch_norm_sums(x, mean, sums, ws=ws)
        cuda.bias_grad(dy, dbias, ws=ws)
        cuda.max_pool2d(out, pooled, argmax, (3, 3), (2, 2), (1, 1), ws=ws)
        cuda.max_pool2d_backward(dpooled, argmax, dx, (3, 3), (2, 2), (1, 1), accumulate=True, ws=ws)

    step()
    before = cuda.allocations
    step()
    assert cuda.allocations == before
    eager = [cuda.to_host(a) for a in results]
    for a in results:
        cuda.fill(a, 0.0)
    graph = cuda.capture(step)
    graph.replay(0)
    cuda.synchronize()
    for want, got in zip(eager, results):
        np.testing.assert_array_equal(cuda.to_host(got), want)
