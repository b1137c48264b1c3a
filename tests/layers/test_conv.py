"""Conv2d / Conv1d: a plain-loop reference for a grid of configurations (forward and gradients),
finite-difference checks, shape errors, PyTorch parity and an allocation-free training step."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends.numpy import spatial as numpy_spatial
from juicepy.errors import ShapeError
from juicepy.testing import check_layer, forward_backward
from juicepy.train import Adam, Trainer


def out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def reference_conv2d(x, w, b, stride, padding, dilation, groups):
    """Plain loops: y[n, o, i, j] = b[o] + sum over the window of x * w[o]."""
    n_, c, h, wd = x.shape
    o_, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = out_len(h, kh, sh, ph, dh), out_len(wd, kw, sw, pw, dw)
    og = o_ // groups
    y = np.zeros((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            g = o // og
            for i in range(ho):
                for j in range(wo):
                    patch = xp[n, g * cg:(g + 1) * cg, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                               j * sw:j * sw + dw * (kw - 1) + 1:dw]
                    y[n, o, i, j] = np.sum(patch * w[o]) + (b[o] if b is not None else 0.0)
    return y


def reference_conv2d_grads(x, w, dy, stride, padding, dilation, groups):
    """Plain loops: every output pixel sends dy * w back to its window and dy * window to w."""
    n_, c, h, wd = x.shape
    o_, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dwt = np.zeros_like(w)
    og = o_ // groups
    for n in range(n_):
        for o in range(o_):
            g = o // og
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
                    cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
                    chans = slice(g * cg, (g + 1) * cg)
                    dwt[o] += dy[n, o, i, j] * xp[n, chans, rows, cols]
                    dxp[n, chans, rows, cols] += dy[n, o, i, j] * w[o]
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    return dx, dwt, dy.sum(axis=(0, 2, 3))


# (batch, C, H, W, out, kernel, stride, padding, dilation, groups)
GRID = [
    (2, 3, 7, 7, 4, 3, 1, 0, 1, 1),
    (1, 3, 7, 7, 4, 3, 1, 1, 1, 1),            # batch 1
    (2, 2, 9, 8, 3, 3, 2, 1, 1, 1),            # stride 2, odd/even sizes
    (2, 2, 11, 10, 3, 3, 3, 2, 1, 1),          # stride 3, padding 2
    (2, 2, 9, 9, 4, 3, 1, 2, 2, 1),            # dilation 2
    (2, 4, 7, 9, 6, 3, 1, "same", 1, 2),       # groups 2, "same"
    (2, 4, 8, 7, 4, 3, 1, 1, 1, 4),            # depthwise
    (2, 3, 8, 7, 6, 3, 2, 1, 1, 3),            # depthwise multiplier 2, strided
    (2, 3, 9, 7, 4, (3, 2), (2, 1), (1, 0), (1, 2), 1),   # non-square everything
    (1, 2, 5, 13, 2, (1, 5), 1, (0, 2), 1, 1),  # 1 x k kernel
    (2, 4, 10, 9, 4, (2, 3), (1, 3), 2, (2, 1), 2),
    (2, 3, 6, 6, 5, 1, 1, 0, 1, 1),            # 1x1
    (2, 2, 9, 9, 2, 5, 1, "same", 1, 1),       # 5x5 "same"
    (2, 2, 9, 9, 2, 3, 1, "same", 2, 2),       # dilated "same"
    (3, 1, 5, 5, 2, 5, 1, 0, 1, 1),            # kernel as large as the input
    (2, 2, 6, 5, 3, 2, 2, 0, 1, 1),            # even kernel, stride = kernel
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _resolved_padding(padding, kernel, dilation):
    if padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _pair(padding)


@pytest.mark.parametrize("layout", ["c-kernels", "c-kernels row bands", "per-sample", "batch-inner"])
@pytest.mark.parametrize("config", GRID, ids=[str(i) for i in range(len(GRID))])
def test_conv2d_matches_loop_reference(config, layout, monkeypatch):
    if layout.startswith("c-kernels"):
        if jp.backend("numpy").conv_kernels is None:
            pytest.skip("the C conv kernels are not loaded (not built for lack of a C compiler, "
                        "or JUICEPY_CPU_KERNELS=numpy)")
        # "c-kernels": Winograd or else the direct kernels wherever they apply; "row bands": im2col + GEMM on
        # chunks of one output row, so every sample is cut into row bands
        bands = layout.endswith("bands")
        monkeypatch.setattr(numpy_spatial, "COLUMN_CHUNK", 1 if bands else 1 << 18)
        monkeypatch.setattr(jp.backend("numpy").conv_kernels, "isa", 1)  # AVX2: every algorithm applies
        monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)  # Winograd wherever it applies
        monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1})  # F(4x4, r x r) too
        monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
        monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
        monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: 0 if bands else count - 1)
    else:
        # the NumPy kernels pick a column layout by kernel depth: force each one on every config
        monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
        monkeypatch.setattr(numpy_spatial, "BATCH_INNER_MIN_DEPTH", 1 if layout == "batch-inner" else 10**9)
    n, c, h, w, o, k, s, p, d, g = config
    layer = L.Conv2d(o, k, stride=s, padding=p, dilation=d, groups=g)
    net = jp.Network(layer, (c, h, w), dtype=np.float64, seed=3)
    kernel, stride, dilation = _pair(k), _pair(s), _pair(d)
    padding = _resolved_padding(p, kernel, dilation)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    weight, bias = net.get_weights()["weight"], net.get_weights()["bias"]
    assert weight.shape == (o, c // g) + kernel
    expected = reference_conv2d(x, weight, bias, stride, padding, dilation, g)
    assert net.output_shape == expected.shape[1:]
    dy = rng.standard_normal(expected.shape)
    (y,), (dx,), grads = forward_backward(net, jp.backend("numpy"), [x], [dy])
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    dx_ref, dw_ref, db_ref = reference_conv2d_grads(x, weight, dy, stride, padding, dilation, g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["weight"], dw_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads["bias"], db_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", GRID[::3], ids=[str(i) for i in range(0, len(GRID), 3)])
def test_conv2d_gradcheck_and_backend_parity(config):
    n, c, h, w, o, k, s, p, d, g = config
    layer = L.Conv2d(o, k, stride=s, padding=p, dilation=d, groups=g)
    report = check_layer(layer, (c, h, w), batch_size=n, max_coords=30)
    assert report.max_input_error < 1e-6 and report.max_param_error < 1e-6


def test_conv2d_without_bias_has_only_a_weight():
    net = jp.Network(L.Conv2d(3, 3, bias=False), (2, 5, 5))
    assert list(net.params) == ["weight"]
    check_layer(L.Conv2d(3, 3, bias=False), (2, 5, 5), max_coords=20)


def test_conv2d_torch_default_init_bounds():
    net = jp.Network(L.Conv2d(8, (3, 2), groups=2), (4, 6, 6), seed=0)
    fan_in = 2 * 3 * 2
    weights = net.get_weights()
    for name in ("weight", "bias"):
        assert np.abs(weights[name]).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(weights[name]).max() > 0.5 / np.sqrt(fan_in)  # spread over the range


def test_conv2d_is_linear_in_its_input():
    """Numerical property: conv(a*x1 + x2) - b = a*(conv(x1) - b) + (conv(x2) - b)."""
    net = jp.Network(L.Conv2d(3, 3, stride=2, padding=1, groups=1), (2, 8, 8), dtype=np.float64)
    bias = net.get_weights()["bias"].reshape(1, -1, 1, 1)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 2, 2, 8, 8))
    backend = jp.backend("numpy")
    lhs = net.transform(backend, 2.5 * x1 + x2) - bias
    rhs = 2.5 * (net.transform(backend, x1) - bias) + net.transform(backend, x2) - bias
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding", [(0, 0), (1, 2)])
def test_conv2d_backward_ops_accumulate(padding):
    """accumulate=True adds to what the gradient buffers hold (fan-out, shared weights)."""
    b = jp.backend("numpy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    geometry = ((1, 1), padding, (1, 1), 2)
    y = np.empty((2, 6, out_len(7, 3, 1, padding[0], 1), out_len(6, 3, 1, padding[1], 1)))
    b.conv2d(x, w, y, *geometry)
    dy = rng.standard_normal(y.shape)
    fresh_dx, fresh_dw = np.empty_like(x), np.empty_like(w)
    b.conv2d_backward_data(dy, w, fresh_dx, *geometry)
    b.conv2d_backward_filter(x, dy, fresh_dw, *geometry)
    start_dx, start_dw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    dx, dw = start_dx.copy(), start_dw.copy()
    b.conv2d_backward_data(dy, w, dx, *geometry, accumulate=True)
    b.conv2d_backward_filter(x, dy, dw, *geometry, accumulate=True)
    np.testing.assert_allclose(dx, start_dx + fresh_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, start_dw + fresh_dw, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("layer, shape, needle", [
    (L.Conv2d(4, 3), (3, 8), "expects unit shape (channels, height, width)"),
    (L.Conv2d(4, 3, in_channels=2), (3, 8, 8), "expects 2 input channels"),
    (L.Conv2d(4, 3, groups=2), (3, 8, 8), "not divisible by groups 2"),
    (L.Conv2d(4, 5), (3, 4, 4), "padded input of at least (5, 5)"),
    (L.Conv2d(4, 3, dilation=3, padding=1), (3, 4, 4), "padded input of at least (7, 7)"),
])
def test_conv2d_shape_errors_name_the_layer(layer, shape, needle):
    with pytest.raises(ShapeError) as info:
        jp.Network(L.Sequential({"stem": L.Sequential(layer)}), shape)
    assert "stem.0" in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(out_channels=4, kernel_size=3, padding="same", stride=2), "needs stride 1"),
    (dict(out_channels=4, kernel_size=2, padding="same"), "odd (dilated) kernel"),
    (dict(out_channels=4, kernel_size=3, padding="valid"), "an integer, a pair or 'same'"),
    (dict(out_channels=5, kernel_size=3, groups=2), "not divisible by groups"),
    (dict(out_channels=4, kernel_size=0), "kernel_size must be >= 1"),
    (dict(out_channels=4, kernel_size=(3, 3, 3)), "pair of integers"),
    (dict(out_channels=4, kernel_size=3, padding=-1), "padding must be >= 0"),
    # the kernels take geometry as 32-bit integers; a definition file once sent 2**63 to them
    (dict(out_channels=4, kernel_size=1, stride=(1, 2**63)), "Conv2d: stride must be <= 2147483647, got (1, "),
    (dict(out_channels=4, kernel_size=1, dilation=10**30), "Conv2d: dilation must be <= 2147483647"),
])
def test_conv2d_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError) as info:
        L.Conv2d(**kwargs)
    assert needle in str(info.value)


def test_conv2d_config_recreates_the_layer():
    layer = L.Conv2d(6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=3, bias=False)
    clone = L.Conv2d(**layer.config())
    assert clone.config() == layer.config()
    same = L.Conv2d(4, 3, padding="same")
    assert L.Conv2d(**same.config()).config()["padding"] == "same"


# ------------------------------------------------------------------ Conv1d
def test_conv1d_matches_conv2d_on_a_height_one_input():
    rng = np.random.default_rng(0)
    one = jp.Network(L.Conv1d(4, 3, stride=2, padding=1, dilation=2, groups=2), (2, 11), dtype=np.float64)
    two = jp.Network(L.Conv2d(4, (1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2), groups=2),
                     (2, 1, 11), dtype=np.float64)
    w = one.get_weights()
    assert w["weight"].shape == (4, 1, 3)
    two.set_weights({"weight": w["weight"][:, :, None, :], "bias": w["bias"]})
    x = rng.standard_normal((3, 2, 11))
    dy = rng.standard_normal((3,) + one.output_shape)
    b = jp.backend("numpy")
    y1, (dx1,), g1 = forward_backward(one, b, [x], [dy])
    y2, (dx2,), g2 = forward_backward(two, b, [x[:, :, None, :]], [dy[:, :, None, :]])
    np.testing.assert_allclose(y1[0], y2[0][:, :, 0, :], rtol=1e-12)
    np.testing.assert_allclose(dx1, dx2[:, :, 0, :], rtol=1e-12)
    np.testing.assert_allclose(g1["weight"], g2["weight"][:, :, 0, :], rtol=1e-12)


def test_conv1d_gradcheck_shapes_and_errors():
    check_layer(L.Conv1d(3, 3, padding="same"), (2, 9), expected_output_shape=(3, 9), max_coords=30)
    with pytest.raises(ShapeError, match="expects unit shape \\(channels, length\\)"):
        jp.Network(L.Conv1d(3, 3), (2, 9, 9))
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        L.Conv1d(3, (3, 3))
    assert L.Conv1d(**L.Conv1d(3, 5, stride=2, padding=2).config()).config()["kernel_size"] == 5


# ------------------------------------------------------------------ PyTorch
TORCH_CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, dilation=1, groups=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=1, groups=6),
    dict(in_channels=3, out_channels=4, kernel_size=5, stride=1, padding="same", dilation=1, groups=1),
]


@pytest.mark.parametrize("cfg", TORCH_CONFIGS, ids=["plain", "grouped-dilated", "depthwise", "same"])
def test_conv2d_matches_torch_forward_and_gradients(cfg):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tconv = torch.nn.Conv2d(**cfg)
    mine = {k: v for k, v in cfg.items() if k != "in_channels"}
    net = jp.Network(L.Sequential(L.Conv2d(**mine)), (cfg["in_channels"], 9, 10))
    net.set_weights({f"0.{k}": v for k, v in tconv.state_dict().items()}, strict=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, cfg["in_channels"], 9, 10)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tconv(xt)
    assert tuple(yt.shape[1:]) == net.output_shape
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    (y,), (dx,), grads = forward_backward(net, jp.backend("numpy"), [x], [dy])
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["0.weight"], tconv.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["0.bias"], tconv.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_conv1d_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    tconv = torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    net = jp.Network(L.Conv1d(6, 3, stride=2, padding=1, dilation=2, groups=2), (4, 15))
    net.set_weights(tconv.state_dict(), strict=True)
    x = np.random.default_rng(2).standard_normal((2, 4, 15)).astype(np.float32)
    np.testing.assert_allclose(net.transform("numpy", x), tconv(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ allocations
def test_conv_training_step_allocates_nothing_once_warmed(backend):
    net = jp.Network(L.Sequential(
        L.Conv2d(4, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(6, 3, stride=2, padding=1, groups=2), L.ReLU(), L.AvgPool2d(2, 1),
        L.Conv2d(6, 1, groups=6), L.GlobalAvgPool2d(), L.Linear(3)), (2, 12, 12))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    # warm-up: the first step makes the context and optimizer state; where the backend captures,
    # the second records the step as a graph
    first, _ = trainer.train_minibatch(backend, x, y)
    trainer.train_minibatch(backend, x, y)
    before = backend.allocations
    for _ in range(4):
        loss, _ = trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before
    assert loss < first  # it is learning the one batch
