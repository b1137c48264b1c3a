"""MaxPool2d, AvgPool2d, GlobalAvgPool2d: plain-loop references (forward and gradients) over a
grid of windows, finite differences, errors and PyTorch parity."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer, forward_backward, random_inputs


@pytest.fixture(autouse=True, params=["c-kernels", "numpy"])
def max_pool_path(request, monkeypatch):
    """Every test runs on both NumPy-backend max-pool paths: the C kernels and the ufuncs."""
    shared = jp.backend("numpy")
    if request.param == "numpy":
        monkeypatch.setattr(shared, "pool_kernels", None)
    elif shared.pool_kernels is None:
        pytest.skip("the C pool kernels are not loaded (not built for lack of a C compiler, or JUICEPY_CPU_KERNELS=numpy)")
    return request.param


def out_len(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def windows(shape, kernel, stride, padding):
    """Yield (ho, wo, rows, cols): the input rows/columns (inside the plane) of each window."""
    h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    for i in range(out_len(h, kh, sh, ph)):
        for j in range(out_len(w, kw, sw, pw)):
            r0, c0 = i * sh - ph, j * sw - pw
            rows = [r for r in range(r0, r0 + kh) if 0 <= r < h]
            cols = [c for c in range(c0, c0 + kw) if 0 <= c < w]
            yield i, j, rows, cols


def reference_max_pool(x, dy, kernel, stride, padding):
    n_, c_, h, w = x.shape
    y = np.zeros((n_, c_, out_len(h, kernel[0], stride[0], padding[0]), out_len(w, kernel[1], stride[1], padding[1])))
    dx = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i, j, rows, cols in windows((h, w), kernel, stride, padding):
                best = None
                for r in rows:  # first maximum in scan order
                    for q in cols:
                        if best is None or x[n, c, r, q] > x[n, c, best[0], best[1]]:
                            best = (r, q)
                y[n, c, i, j] = x[n, c, best[0], best[1]]
                if dy is not None:
                    dx[n, c, best[0], best[1]] += dy[n, c, i, j]
    return y, dx


def reference_avg_pool(x, dy, kernel, stride, padding, count_include_pad):
    n_, c_, h, w = x.shape
    y = np.zeros((n_, c_, out_len(h, kernel[0], stride[0], padding[0]), out_len(w, kernel[1], stride[1], padding[1])))
    dx = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i, j, rows, cols in windows((h, w), kernel, stride, padding):
                count = kernel[0] * kernel[1] if count_include_pad else len(rows) * len(cols)
                y[n, c, i, j] = sum(x[n, c, r, q] for r in rows for q in cols) / count
                for r in rows:
                    for q in cols:
                        dx[n, c, r, q] += dy[n, c, i, j] / count
    return y, dx


# (batch, C, H, W, kernel, stride, padding)
GRID = [
    (2, 3, 8, 8, 2, None, 0),
    (1, 2, 7, 9, 2, None, 0),          # batch 1, odd sizes: the last row/column is dropped
    (2, 2, 7, 7, 3, 2, 1),             # overlapping windows with padding
    (2, 2, 9, 8, 3, 1, 1),             # stride 1: every pixel in up to 9 windows
    (2, 2, 10, 9, (3, 2), (2, 1), (1, 0)),
    (2, 1, 11, 11, 4, 3, 2),
    (2, 2, 5, 6, (1, 3), (1, 3), (0, 1)),
    (2, 3, 6, 6, 6, None, 0),          # one window: the whole plane
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _distinct(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0)


@pytest.mark.parametrize("config", GRID, ids=[str(i) for i in range(len(GRID))])
def test_max_pool_matches_loop_reference(config):
    n, c, h, w, k, s, p = config
    kernel, padding = _pair(k), _pair(p)
    stride = kernel if s is None else _pair(s)
    net = jp.Network(L.MaxPool2d(k, s, p), (c, h, w), dtype=np.float64)
    x = _distinct((n, c, h, w), 0)
    dy = np.random.default_rng(1).standard_normal((n,) + net.output_shape)
    y_ref, dx_ref = reference_max_pool(x, dy, kernel, stride, padding)
    (y,), (dx,), _ = forward_backward(net, jp.backend("numpy"), [x], [dy])
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


def test_max_pool_ties_pick_the_first_maximum_and_record_flat_indices():
    b = jp.backend("numpy")
    x = np.array([[[[1., 5., 5., 0.],
                    [5., 2., 1., 5.],
                    [0., 0., 3., 3.],
                    [0., 0., 3., 3.]]]])
    out = np.empty((1, 1, 2, 2))
    argmax = np.empty((1, 1, 2, 2), np.int32)
    b.max_pool2d(x, out, argmax, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(out[0, 0], [[5, 5], [0, 3]])
    np.testing.assert_array_equal(argmax[0, 0], [[1, 2], [8, 10]])  # flat h*W+w in the plane
    dx = np.empty_like(x)
    b.max_pool2d_backward(np.ones_like(out), argmax, dx, (2, 2), (2, 2), (0, 0))
    assert dx.sum() == 4 and dx[0, 0, 0, 1] == 1 and dx[0, 0, 0, 2] == 1


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("config", GRID, ids=[str(i) for i in range(len(GRID))])
def test_avg_pool_matches_loop_reference(config, count_include_pad):
    n, c, h, w, k, s, p = config
    kernel, padding = _pair(k), _pair(p)
    stride = kernel if s is None else _pair(s)
    net = jp.Network(L.AvgPool2d(k, s, p, count_include_pad=count_include_pad), (c, h, w), dtype=np.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n,) + net.output_shape)
    y_ref, dx_ref = reference_avg_pool(x, dy, kernel, stride, padding, count_include_pad)
    (y,), (dx,), _ = forward_backward(net, jp.backend("numpy"), [x], [dy])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [L.MaxPool2d(3, 2, 1), L.MaxPool2d((2, 3), (1, 2)), L.AvgPool2d(3, 2, 1),
                                   L.AvgPool2d(2, 1, 1, count_include_pad=False), L.GlobalAvgPool2d()],
                         ids=["max-pad", "max-rect", "avg-pad", "avg-exclude-pad", "global"])
def test_pool_gradcheck_and_backend_parity(layer):
    check_layer(layer, (2, 7, 6), batch_size=2, distinct_inputs=True, max_coords=40)


def test_pool_numerical_properties():
    """Max pooling commutes with adding a constant; average pooling of a constant is it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float64)
    maxnet = jp.Network(L.MaxPool2d(3, 2, 1), (3, 8, 8), dtype=np.float64)
    np.testing.assert_allclose(maxnet.transform("numpy", x + 4.0), maxnet.transform("numpy", x) + 4.0)
    avgnet = jp.Network(L.AvgPool2d(3, 2), (3, 8, 8), dtype=np.float64)
    np.testing.assert_allclose(avgnet.transform("numpy", np.full_like(x, 2.5)), 2.5)
    gap = jp.Network(L.GlobalAvgPool2d(), (3, 8, 8), dtype=np.float64)
    np.testing.assert_allclose(gap.transform("numpy", x), x.mean(axis=(2, 3)))
    assert gap.output_shape == (3,)


def test_pool_shapes():
    assert jp.Network(L.MaxPool2d(2), (3, 9, 7)).output_shape == (3, 4, 3)
    assert jp.Network(L.AvgPool2d(3, 2, 1), (1, 7, 8)).output_shape == (1, 4, 4)
    assert L.MaxPool2d(3).stride == (3, 3)


@pytest.mark.parametrize("layer, shape, needle", [
    (L.MaxPool2d(2), (3, 8), "expects unit shape (channels, height, width)"),
    (L.AvgPool2d(5), (3, 4, 4), "larger than the padded input"),
    (L.GlobalAvgPool2d(), (3,), "expects unit shape (channels, height, width)"),
])
def test_pool_shape_errors_name_the_layer(layer, shape, needle):
    with pytest.raises(ShapeError) as info:
        jp.Network(L.Sequential({"pool": layer}), shape)
    assert str(info.value).startswith("pool:")
    assert needle in str(info.value)


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match="at most half the kernel"):
        L.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        L.AvgPool2d(0)
    with pytest.raises(ValueError, match=r"MaxPool2d: stride must be <= 2147483647, got 2147483648"):
        L.MaxPool2d(2, stride=2**31)


def test_pool_config_recreates_the_layer():
    for layer in (L.MaxPool2d((3, 2), 1, (1, 0)), L.AvgPool2d(3, None, 1, count_include_pad=False), L.MaxPool2d(2)):
        assert type(layer)(**layer.config()).config() == layer.config()


@pytest.mark.parametrize("kind", ["max", "avg", "avg-exclude"])
def test_pool_matches_torch(kind):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = random_inputs(jp.Network(L.ReLU(), (3, 9, 8)), 2, seed=4, distinct=True)[0]
    xt = torch.from_numpy(x).requires_grad_(True)
    if kind == "max":
        layer, yt = L.MaxPool2d(3, 2, 1), F.max_pool2d(xt, 3, 2, 1)
    else:
        include = kind == "avg"
        layer, yt = L.AvgPool2d(3, 2, 1, count_include_pad=include), F.avg_pool2d(xt, 3, 2, 1, count_include_pad=include)
    net = jp.Network(layer, (3, 9, 8))
    dy = np.random.default_rng(5).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    (y,), (dx,), _ = forward_backward(net, jp.backend("numpy"), [x], [dy])
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_global_avg_pool_matches_torch_adaptive_pool():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 7)).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1).flatten(1).numpy()
    np.testing.assert_allclose(jp.Network(L.GlobalAvgPool2d(), (4, 5, 7)).transform("numpy", x), ref,
                               rtol=1e-5, atol=1e-6)


def test_max_pool_follows_torch_on_nan_and_all_minus_infinity(backend):
    dtype = np.float64 if np.float64 in backend.dtypes else np.float32
    x = np.full((1, 1, 3, 3), -np.inf, dtype)
    x[0, 0, 2, 2] = np.nan
    out = backend.zeros((1, 1, 2, 2), dtype)
    argmax = backend.zeros((1, 1, 2, 2), np.int32)
    backend.max_pool2d(backend.from_host(x), out, argmax, (2, 2), (2, 2), (1, 1))
    # windows of padding and -inf keep their first position inside the plane; NaN wins
    np.testing.assert_array_equal(backend.to_host(argmax)[0, 0], [[0, 1], [3, 8]])
    host = backend.to_host(out)
    assert np.isnan(host[0, 0, 1, 1]) and np.all(host[0, 0].ravel()[:3] == -np.inf)
    dx = backend.zeros(x.shape, dtype)
    backend.max_pool2d_backward(backend.from_host(np.ones(out.shape, dtype)), argmax, dx, (2, 2), (2, 2), (1, 1))
    dx = backend.to_host(dx)
    assert dx.sum() == 4 and dx[0, 0, 2, 2] == 1


def test_max_pool_nan_matches_torch(backend):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[0, 1, 4, 4] = np.nan
    out = backend.zeros((1, 2, 3, 3), np.float32)
    argmax = backend.zeros(out.shape, np.int32)
    backend.max_pool2d(backend.from_host(x), out, argmax, (3, 3), (2, 2), (1, 1))
    ref, ref_idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(backend.to_host(out), ref.numpy())
    np.testing.assert_array_equal(backend.to_host(argmax), ref_idx.numpy())
