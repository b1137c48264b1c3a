"""The CUDA backend: parity of every op with NumPy, the gradient kit on CUDA, graph replay ==
op by op, and (anywhere nvcc exists) a compile check of every kernel source.

Tests that need a GPU are skipped with the reason "no CUDA device" where none is present; the
checks of import behaviour, kernel names and kernel sources run everywhere.
"""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable
from juicepy.backends.cuda import CudaBackend
from juicepy.backends.cuda import device as cuda_device
from juicepy.backends.cuda import kernels
from juicepy.testing import check_layer, check_loss
from juicepy.train import SGD, Adam, AdamW, Trainer


def _cuda_or_reason():
    try:
        return jp.backend("cuda"), ""
    except BackendUnavailable as exc:
        return None, str(exc)


CUDA, WHY_NOT = _cuda_or_reason()
needs_gpu = pytest.mark.skipif(CUDA is None, reason=f"no CUDA device ({WHY_NOT[:160]})")


# ------------------------------------------------------------------ everywhere
def test_unavailable_cuda_is_a_clear_error_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'juicepy\[cuda12\]'.*'juicepy\[cuda13\]'"):
        CudaBackend()


def test_registered_even_where_it_cannot_start():
    assert "cuda" in jp.registered_backends()
    if CUDA is None:
        assert "cuda" not in jp.available_backends()
        with pytest.raises(BackendUnavailable, match="cuda backend"):
            jp.backend("cuda")


@pytest.mark.parametrize("value, message", [("x", "not a device number"), ("7", "has 2 CUDA device")])
def test_device_env_var_is_checked(monkeypatch, value, message):
    monkeypatch.setenv("JUICEPY_CUDA_DEVICE", value)
    with pytest.raises(BackendUnavailable, match=message):
        cuda_device.device_index(2)
    monkeypatch.setenv("JUICEPY_CUDA_DEVICE", "1")
    assert cuda_device.device_index(2) == 1


def _kernel_names_in_sources():
    return set(re.findall(r"__global__ void (\w+)\(", kernels.module_source()))


def test_headers_are_inlined_once():
    source = kernels.module_source()
    assert "#include" not in source
    assert source.count("__device__ real block_sum(") == 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_sources_compile_with_nvcc(tmp_path, dtype):
    """The exact text NVRTC gets, and every .cu file on its own, compile to PTX."""
    assembled = tmp_path / "juicepy_kernels.cu"
    assembled.write_text(kernels.module_source())
    files = [assembled] + [kernels.KERNEL_DIR / name for name in kernels.SOURCE_FILES]
    for source in files:
        ptx = tmp_path / (source.stem + ".ptx")
        cmd = ["nvcc", "-ptx", "-arch=sm_80", *kernels.compile_options(dtype), "-o", str(ptx), str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"
        entries = set(re.findall(r"\.entry (\w+)\(", ptx.read_text()))
        if source == assembled:
            assert entries == _kernel_names_in_sources()


def test_dtype_outside_the_kernels_is_refused():
    with pytest.raises(TypeError, match="float16"):
        kernels.real_type(np.float16)


# --------------------------------------------------------------- op parity
def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _both(op, host_args, outs, accumulate_base=None, tol=1e-5, **kwargs):
    """Run backend op ``op`` on NumPy and CUDA with the same host inputs; compare the outputs."""
    results = []
    for backend in (jp.backend("numpy"), CUDA):
        args = [backend.from_host(a) if isinstance(a, np.ndarray) else a for a in host_args]
        getattr(backend, op)(*args, **kwargs)
        results.append([backend.to_host(args[i]) for i in outs])
    for i, (ref, got) in enumerate(zip(*results)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=f"{op} output {outs[i]}")
    return results[1]


@needs_gpu
@pytest.mark.parametrize("trans_a, trans_b, alpha, beta", [(False, False, 1.0, 0.0), (True, False, 0.5, 1.0),
                                                           (False, True, 2.0, 0.25), (True, True, 1.0, 1.0)])
def test_gemm(rng, trans_a, trans_b, alpha, beta):
    a = _rand(rng, 7, 5) if not trans_a else _rand(rng, 5, 7)
    b = _rand(rng, 5, 9) if not trans_b else _rand(rng, 9, 5)
    _both("gemm", [a, b, _rand(rng, 7, 9)], [2], trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)


@needs_gpu
@pytest.mark.parametrize("acc", [False, True])
def test_elementwise_and_activations(rng, acc):
    x, y, d, o = (_rand(rng, 6, 33) for _ in range(4))
    _both("add", [x, y, o], [2])
    _both("scale", [x, -1.5, o], [2])
    _both("mul", [x, y, o], [2], accumulate=acc)
    for fwd in ("relu", "sigmoid", "tanh"):
        _both(fwd, [x, o], [1])
        yv = _both(fwd, [x, o.copy()], [1])[0]
        _both(f"{fwd}_backward", [yv, d, o], [2], accumulate=acc)
    _both("leaky_relu", [x, o, 0.1], [1])
    _both("leaky_relu_backward", [x, d, o, 0.1], [2], accumulate=acc)
    for fwd in ("softmax", "log_softmax"):
        yv = _both(fwd, [x, o], [1])[0]
        _both(f"{fwd}_backward", [yv, d, o], [2], accumulate=acc)


@needs_gpu
def test_bias_reductions_and_finiteness(rng):
    out = _rand(rng, 4, 3, 5, 2)
    _both("add_bias", [out, _rand(rng, 3)], [0])
    _both("bias_grad", [out, _rand(rng, 3)], [1], accumulate=True)
    _both("bias_grad", [_rand(rng, 300, 7), _rand(rng, 7)], [1], tol=1e-4)
    _both("sum_all", [_rand(rng, 5000), np.zeros(1, np.float32)], [1], tol=1e-4)
    x = _rand(rng, 1000)
    assert CUDA.all_finite(CUDA.from_host(x))
    x[777] = np.inf
    assert not CUDA.all_finite(CUDA.from_host(x))
    x[777] = np.nan
    assert not CUDA.all_finite(CUDA.from_host(x))


@needs_gpu
@pytest.mark.parametrize("cols", [3, 10, 1000])
def test_losses(rng, cols):
    logits = _rand(rng, 17, cols) * 3
    labels = rng.integers(0, cols, 17).astype(np.int32)
    losses, dx = np.zeros(17, np.float32), np.zeros((17, cols), np.float32)
    _both("softmax_cross_entropy", [logits, labels, losses, dx, 0.25], [2, 3])
    _both("nll_loss", [logits, labels, losses, dx, 0.25], [2, 3])
    _both("mse_loss", [logits, _rand(rng, 17, cols), losses, dx, 0.5], [2, 3], tol=1e-4)


@needs_gpu
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
def test_dropout_masks_are_bit_identical_to_numpy(rng, p):
    x = _rand(rng, 8, 1000)
    o, m = np.zeros_like(x), np.zeros_like(x)
    results = []
    for backend in (jp.backend("numpy"), CUDA):
        args = [backend.from_host(a) for a in (x, o, m)]
        backend.dropout(*args, p, 12345, 42)
        results.append([backend.to_host(a) for a in args[1:]])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    np.testing.assert_array_equal(results[1][0], results[0][0])


@needs_gpu
@pytest.mark.parametrize("kw", [dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
                                dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2),
                                dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0)])
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_update(rng, kw, first_step):
    p, g, b = _rand(rng, 1000), _rand(rng, 1000), _rand(rng, 1000)
    _both("sgd_update", [p, g, b], [0, 2], lr=0.05, first_step=first_step, **kw)


@needs_gpu
@pytest.mark.parametrize("decoupled, amsgrad, wd", [(False, False, 0.0), (False, True, 1e-2), (True, False, 1e-2)])
def test_adam_update(rng, decoupled, amsgrad, wd):
    p, g, m = _rand(rng, 1000), _rand(rng, 1000), _rand(rng, 1000)
    v = np.abs(_rand(rng, 1000))
    extra = [np.abs(_rand(rng, 1000))] if amsgrad else []
    outs = [0, 2, 3] + ([4] if amsgrad else [])
    host = [p, g, m, v] + extra
    results = []
    for backend in (jp.backend("numpy"), CUDA):
        args = [backend.from_host(a) for a in host]
        backend.adam_update(*args[:4], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd,
                            decoupled=decoupled, step=7, max_exp_avg_sq=args[4] if amsgrad else None)
        results.append([backend.to_host(args[i]) for i in outs])
    for ref, got in zip(*results):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@needs_gpu
def test_optimizer_guard_skips_the_update_on_non_finite_loss(rng):
    p = CUDA.from_host(_rand(rng, 100))
    before = CUDA.to_host(p)
    for bad in (np.nan, np.inf):
        guard = CUDA.from_host(np.array([bad], np.float32))
        CUDA.sgd_update(p, CUDA.from_host(_rand(rng, 100)), None, lr=0.1, momentum=0.0, dampening=0.0,
                        nesterov=False, weight_decay=0.0, first_step=True, guard=guard)
        np.testing.assert_array_equal(CUDA.to_host(p), before)
    CUDA.sgd_update(p, CUDA.from_host(np.ones(100, np.float32)), None, lr=0.1, momentum=0.0, dampening=0.0,
                    nesterov=False, weight_decay=0.0, first_step=True, guard=CUDA.from_host(np.ones(1, np.float32)))
    np.testing.assert_allclose(CUDA.to_host(p), before - np.float32(0.1))


@needs_gpu
def test_channels_and_memory_ops(rng):
    src, dst = _rand(rng, 2, 3, 4, 4), _rand(rng, 2, 7, 4, 4)
    for acc in (False, True):
        _both("copy_channels", [src, dst, 2], [1], accumulate=acc)
        _both("slice_channels", [dst, src, 3], [1], accumulate=acc)
    flat = CUDA.zeros((256,))
    view = CUDA.flat_view(flat, 64, (8, 8))
    CUDA.fill(view, 2.0)
    host = CUDA.to_host(flat)
    assert host[64:128].sum() == 128.0 and host[:64].sum() == 0 and host[128:].sum() == 0
    with pytest.raises(ValueError, match="strides"):
        CUDA.reshape(CUDA.zeros((4, 4))[:, :2], (8,))


# ------------------------------------------------------- convolution and pooling
def _conv_reference(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    og = o // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dilation[0]:i * dilation[0] + stride[0] * oh:stride[0],
                           j * dilation[1]:j * dilation[1] + stride[1] * ow:stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return out


CONV_CASES = [((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
              ((2, 4, 10, 9), (6, 2, 3, 2), (2, 1), (0, 1), (1, 2), 2),
              ((1, 2, 7, 7), (2, 1, 5, 5), (2, 2), (2, 2), (1, 1), 2)]


@needs_gpu
@pytest.mark.parametrize("xs, ws_, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_matches_a_direct_reference_and_its_adjoints(rng, xs, ws_, stride, padding, dilation, groups):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws_)
    ref = _conv_reference(x, w, stride, padding, dilation, groups)
    dy = rng.standard_normal(ref.shape)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        dx_, w_, dy_ = CUDA.from_host(x.astype(dtype)), CUDA.from_host(w.astype(dtype)), CUDA.from_host(dy.astype(dtype))
        out = CUDA.zeros(ref.shape, dtype)
        CUDA.conv2d(dx_, w_, out, stride, padding, dilation, groups)
        np.testing.assert_allclose(CUDA.to_host(out), ref, rtol=tol, atol=tol)
        # adjoint identities: <conv(x), dy> = <x, conv_bwd_data(dy)> = <w, conv_bwd_filter(x, dy)>
        gx, gw = CUDA.zeros(x.shape, dtype), CUDA.zeros(w.shape, dtype)
        CUDA.conv2d_backward_data(dy_, w_, gx, stride, padding, dilation, groups)
        CUDA.conv2d_backward_filter(dx_, dy_, gw, stride, padding, dilation, groups)
        inner = float(np.sum(ref * dy))
        assert float(np.sum(CUDA.to_host(gx) * x)) == pytest.approx(inner, rel=tol * 10)
        assert float(np.sum(CUDA.to_host(gw) * w)) == pytest.approx(inner, rel=tol * 10)
        # accumulate adds
        CUDA.conv2d_backward_data(dy_, w_, gx, stride, padding, dilation, groups, accumulate=True)
        CUDA.conv2d_backward_filter(dx_, dy_, gw, stride, padding, dilation, groups, accumulate=True)
        assert float(np.sum(CUDA.to_host(gx) * x)) == pytest.approx(2 * inner, rel=tol * 10)
        assert float(np.sum(CUDA.to_host(gw) * w)) == pytest.approx(2 * inner, rel=tol * 10)


def _pool_reference(x, kernel, stride, padding, mode, include_pad=True):
    n, c, h, w = x.shape
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    out = np.zeros((n, c, oh, ow))
    arg = np.zeros((n, c, oh, ow), np.int32)
    for a in range(oh):
        for b in range(ow):
            y0, x0 = a * stride[0] - padding[0], b * stride[1] - padding[1]
            ys = [y for y in range(y0, y0 + kernel[0]) if 0 <= y < h]
            xs = [xx for xx in range(x0, x0 + kernel[1]) if 0 <= xx < w]
            win = x[:, :, ys][:, :, :, xs].reshape(n, c, -1)
            if mode == "max":
                k = np.argmax(win, axis=2)
                out[:, :, a, b] = np.max(win, axis=2)
                arg[:, :, a, b] = np.array(ys)[k // len(xs)] * w + np.array(xs)[k % len(xs)]
            else:
                out[:, :, a, b] = win.sum(axis=2) / (kernel[0] * kernel[1] if include_pad else win.shape[2])
    return out, arg


@needs_gpu
@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                                     ((3, 2), (1, 2), (1, 0))])
def test_pooling(rng, kernel, stride, padding):
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    ref, arg = _pool_reference(x, kernel, stride, padding, "max")
    dx_ = CUDA.from_host(x)
    out, am = CUDA.zeros(ref.shape), CUDA.zeros(ref.shape, np.int32)
    CUDA.max_pool2d(dx_, out, am, kernel, stride, padding)
    np.testing.assert_array_equal(CUDA.to_host(out), ref.astype(np.float32))
    np.testing.assert_array_equal(CUDA.to_host(am), arg)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    gx = CUDA.zeros(x.shape)
    CUDA.max_pool2d_backward(CUDA.from_host(dy), am, gx)
    expected = np.zeros(x.shape)
    for idx in np.ndindex(*ref.shape):
        expected[idx[0], idx[1]].reshape(-1)[arg[idx]] += dy[idx]
    np.testing.assert_allclose(CUDA.to_host(gx), expected, rtol=1e-5, atol=1e-6)
    for include in (True, False):
        ref_avg, _ = _pool_reference(x, kernel, stride, padding, "avg", include)
        CUDA.avg_pool2d(dx_, out, kernel, stride, padding, count_include_pad=include)
        np.testing.assert_allclose(CUDA.to_host(out), ref_avg, rtol=1e-5, atol=1e-6)
        # adjoint: <avg(x), dy> = <x, avg_backward(dy)>
        CUDA.avg_pool2d_backward(CUDA.from_host(dy), gx, kernel, stride, padding, count_include_pad=include)
        assert float(np.sum(CUDA.to_host(gx) * x)) == pytest.approx(float(np.sum(ref_avg * dy)), rel=1e-4)


@needs_gpu
def test_batch_norm(rng):
    x = rng.standard_normal((6, 3, 4, 5)).astype(np.float32) * 2 + 1
    gamma, beta = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    args = [CUDA.from_host(a) for a in (x, gamma, beta)]
    out, mean, invstd = CUDA.zeros(x.shape), CUDA.zeros((3,)), CUDA.zeros((3,))
    rm, rv = CUDA.zeros((3,)), CUDA.from_host(np.ones(3, np.float32))
    CUDA.batch_norm_train(*args, out, mean, invstd, rm, rv, 0.1, 1e-5)
    mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    expected = (x - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) * gamma[None, :, None, None] \
        + beta[None, :, None, None]
    np.testing.assert_allclose(CUDA.to_host(out), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(CUDA.to_host(rm), 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(CUDA.to_host(rv), 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    CUDA.batch_norm_infer(*args, rm, rv, 1e-5, out)
    np.testing.assert_allclose(CUDA.to_host(out), (x - CUDA.to_host(rm)[None, :, None, None])
                               / np.sqrt(CUDA.to_host(rv)[None, :, None, None] + 1e-5) * gamma[None, :, None, None]
                               + beta[None, :, None, None], rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    gx, dgamma, dbeta = CUDA.zeros(x.shape), CUDA.zeros((3,)), CUDA.zeros((3,))
    CUDA.batch_norm_backward(args[0], CUDA.from_host(dy), args[1], mean, invstd, gx, dgamma, dbeta)
    c = lambda v: v[None, :, None, None]  # noqa: E731
    xhat = (x - c(mu)) / np.sqrt(c(var) + 1e-5)
    m = x.size // 3
    sum_dy, sum_dy_xhat = dy.sum(axis=(0, 2, 3)), (dy * xhat).sum(axis=(0, 2, 3))
    expected_dx = c(gamma / np.sqrt(var + 1e-5)) / m * (m * dy - c(sum_dy) - xhat * c(sum_dy_xhat))
    np.testing.assert_allclose(CUDA.to_host(dbeta), sum_dy, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(CUDA.to_host(dgamma), sum_dy_xhat, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(CUDA.to_host(gx), expected_dx, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------- the gradient kit on CUDA
LAYERS = [(L.Linear(7), (5,)), (L.ReLU(), (6,)), (L.LeakyReLU(0.2), (6,)), (L.Sigmoid(), (6,)), (L.Tanh(), (6,)),
          (L.Softmax(), (6,)), (L.LogSoftmax(), (6,)), (L.Dropout(0.4), (30,)), (L.Flatten(), (2, 3, 4))]


@needs_gpu
@pytest.mark.parametrize("layer, shape", LAYERS, ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else "")
def test_gradient_kit_on_cuda(layer, shape):
    report = check_layer(layer, shape, backends=["cuda"], batch_size=4)
    assert "cuda" in report.parity


@needs_gpu
@pytest.mark.parametrize("loss, targets", [(L.SoftmaxCrossEntropy(), np.array([0, 2, 1, 2])),
                                           (L.NegativeLogLikelihood(), np.array([1, 0, 0, 2])),
                                           (L.MSE(), np.arange(12, dtype=np.float64).reshape(4, 3) / 10)])
def test_losses_with_the_gradient_kit(loss, targets):
    check_loss(loss, (3,), targets, backends=["cuda"])


# ------------------------------------------------------------- graph replay
def _trainer(optimizer, graphs, check_finite=True):
    net = jp.Network(L.Sequential(L.Linear(64), L.ReLU(), L.Dropout(0.2), L.Linear(64), L.Tanh(), L.Linear(10)),
                     input_shape=(20,), seed=3)
    return Trainer(net, L.SoftmaxCrossEntropy(), optimizer, batch_size=32, graphs=graphs, check_finite=check_finite)


def _batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((32, 20)).astype(np.float32), rng.integers(0, 10, 32)) for _ in range(steps)]


@needs_gpu
@pytest.mark.parametrize("make_opt", [lambda: Adam(lr=1e-3), lambda: AdamW(lr=1e-3, amsgrad=True),
                                      lambda: SGD(lr=0.05, momentum=0.9, nesterov=True)])
def test_graph_replay_equals_op_by_op(make_opt):
    eager, replayed = _trainer(make_opt(), graphs=False), _trainer(make_opt(), graphs=True)
    data = _batches(8)
    eager_losses = [eager.train_minibatch(CUDA, x, y)[0] for x, y in data]
    replay_losses = [replayed.train_minibatch(CUDA, x, y)[0] for x, y in data]
    st = replayed.state(CUDA)
    assert st.replay.graph is not None, st.replay.failure
    np.testing.assert_allclose(replay_losses, eager_losses, rtol=1e-6)
    for k, v in eager.network.get_weights().items():
        np.testing.assert_allclose(replayed.network.get_weights()[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    numpy_run = _trainer(make_opt(), graphs=False)
    numpy_losses = [numpy_run.train_minibatch(jp.backend("numpy"), x, y)[0] for x, y in data]
    np.testing.assert_allclose(replay_losses, numpy_losses, rtol=1e-4)


@needs_gpu
def test_replayed_steps_allocate_nothing():
    trainer = _trainer(Adam(), graphs=True)
    data = _batches(6)
    for x, y in data[:3]:
        trainer.train_minibatch(CUDA, x, y)
    import cupy

    pool = cupy.get_default_memory_pool()
    CUDA.synchronize()
    before = (CUDA.allocations, pool.total_bytes())
    for x, y in data[3:]:
        trainer.train_minibatch(CUDA, x, y)
    CUDA.synchronize()
    assert (CUDA.allocations, pool.total_bytes()) == before


@needs_gpu
def test_non_finite_loss_in_a_replayed_step_leaves_state_unchanged():
    trainer = _trainer(Adam(lr=1e-2), graphs=True)
    for x, y in _batches(3):
        trainer.train_minibatch(CUDA, x, y)
    st = trainer.state(CUDA)
    assert st.replay.graph is not None, st.replay.failure
    weights = trainer.network.get_weights()
    moments = [{k: CUDA.to_host(v) for k, v in b.items()} for b in st.optimizer.buffers]
    with pytest.raises(jp.errors.NonFiniteError):
        trainer.train_minibatch(CUDA, np.full((32, 20), 3e38, np.float32), np.zeros(32, np.int64))
    for k, v in weights.items():
        np.testing.assert_array_equal(trainer.network.get_weights()[k], v, err_msg=k)
    for before, bufs in zip(moments, st.optimizer.buffers):
        for k in before:
            np.testing.assert_array_equal(CUDA.to_host(bufs[k]), before[k], err_msg=k)


@needs_gpu
def test_transform_replay_equals_eager():
    net = _trainer(Adam(), graphs=True).network
    x = np.random.default_rng(5).standard_normal((100, 20)).astype(np.float32)
    expected = net.transform(jp.backend("numpy"), x)
    first, second = net.transform(CUDA, x), net.transform(CUDA, x)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second, first)


@needs_gpu
def test_release_frees_cached_blocks():
    import cupy

    pool = cupy.get_default_memory_pool()
    a = CUDA.empty((1 << 20,))
    del a
    assert pool.total_bytes() > pool.used_bytes()
    CUDA.release()
    assert pool.total_bytes() == pool.used_bytes()
