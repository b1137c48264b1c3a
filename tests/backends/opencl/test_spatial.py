"""What only the OpenCL spatial ops do (their results on every backend are proven by
tests/backends/test_ops.py): no allocation in steady state, optional batch-norm parameters,
torch parity of a whole conv stack, and convolution through the GPU GEMM variant."""

import numpy as np
import pytest

from juicepy.backends import Workspace


# ------------------------------------------------------------------ loop references
def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_ref(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(wd, kw, sw, pw, dw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for ci in range(cg):
                    for ki in range(kh):
                        for kj in range(kw):
                            y[:, oc, i, j] += w[oc, ci, ki, kj] * xp[:, g * cg + ci, i * sh + ki * dh, j * sw + kj * dw]
    return y


def conv_grads_ref(x, w, dy, stride, padding, dilation, groups):
    """dx and dw of sum(conv(x, w) * dy), by the same loops run backwards."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    ho, wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for ci in range(cg):
                    for ki in range(kh):
                        for kj in range(kw):
                            hh, ww = i * sh + ki * dh, j * sw + kj * dw_
                            dxp[:, g * cg + ci, hh, ww] += w[oc, ci, ki, kj] * dy[:, oc, i, j]
                            dw[oc, ci, ki, kj] += np.sum(xp[:, g * cg + ci, hh, ww] * dy[:, oc, i, j])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw


# --------------------------------------------------------------------- convolution
def test_conv2d_steady_state_allocates_nothing(ocl, rng):
    x = ocl.from_host(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = ocl.from_host(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    y, dx, dw = ocl.empty((2, 4, 8, 8)), ocl.empty((2, 3, 8, 8)), ocl.empty((4, 3, 3, 3))
    ws = Workspace()
    args = ((1, 1), (1, 1), (1, 1), 1)

    def step():
        ocl.conv2d(x, w, y, *args, ws)
        ocl.conv2d_backward_data(y, w, dx, *args, False, ws)
        ocl.conv2d_backward_filter(x, y, dw, *args, False, ws)

    step()
    before = ocl.allocations
    step()
    step()
    assert ocl.allocations == before


# ---------------------------------------------------------------------- batch norm
def bn_ref(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    var = x64.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x64 - mean.reshape(shape)) * invstd.reshape(shape)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), mean, var, invstd, xhat


def test_batch_norm_without_affine_or_input_gradient(ocl, rng):
    shape = (3, 2, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, *_ = bn_ref(x, np.ones(2), np.zeros(2), 1e-5)
    out, mean, invstd = ocl.empty(shape), ocl.empty((2,)), ocl.empty((2,))
    dev_x = ocl.from_host(x)
    ocl.batch_norm_train(dev_x, None, None, out, mean, invstd, None, None, 0.1, 1e-5)
    np.testing.assert_allclose(ocl.to_host(out), y_ref, rtol=1e-4, atol=1e-5)
    dg = ocl.zeros((2,))
    dy = rng.standard_normal(shape).astype(np.float32)
    ocl.batch_norm_backward(dev_x, ocl.from_host(dy), None, mean, invstd, None, dg, None)
    np.testing.assert_allclose(ocl.to_host(dg), (dy * y_ref).sum(axis=(0, 2)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------- torch parity
def test_conv_pool_batch_norm_match_torch(ocl, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    F = torch.nn.functional
    x = rng.standard_normal((2, 4, 11, 9)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    stride, padding, dilation, groups = (2, 1), (1, 2), (2, 1), 2
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    ws = Workspace()
    y, dx, dw = ocl.empty(tuple(yt.shape)), ocl.empty(x.shape), ocl.empty(w.shape)
    dev_x, dev_w, dev_dy = ocl.from_host(x), ocl.from_host(w), ocl.from_host(dy)
    ocl.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws)
    ocl.conv2d_backward_data(dev_dy, dev_w, dx, stride, padding, dilation, groups, False, ws)
    ocl.conv2d_backward_filter(dev_x, dev_dy, dw, stride, padding, dilation, groups, False, ws)
    np.testing.assert_allclose(ocl.to_host(y), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ocl.to_host(dx), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ocl.to_host(dw), wt.grad.numpy(), rtol=1e-4, atol=1e-4)

    pooled, idx = F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    out, arg = ocl.empty(tuple(pooled.shape)), ocl.empty(tuple(pooled.shape), np.int32)
    ocl.max_pool2d(dev_x, out, arg, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(ocl.to_host(out), pooled.numpy())
    np.testing.assert_array_equal(ocl.to_host(arg), idx.numpy())
    for include in (True, False):
        avg = F.avg_pool2d(torch.tensor(x), 3, 2, 1, count_include_pad=include)
        got = ocl.empty(tuple(avg.shape))
        ocl.avg_pool2d(dev_x, got, (3, 3), (2, 2), (1, 1), include)
        np.testing.assert_allclose(ocl.to_host(got), avg.numpy(), rtol=1e-5, atol=1e-6)

    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    bn = F.batch_norm(torch.tensor(x), rmt, rvt, torch.tensor(gamma), torch.tensor(beta), training=True,
                      momentum=0.1, eps=1e-5)
    dev_rm, dev_rv = ocl.from_host(rm), ocl.from_host(rv)
    out, mean, invstd = ocl.empty(x.shape), ocl.empty((4,)), ocl.empty((4,))
    ocl.batch_norm_train(dev_x, ocl.from_host(gamma), ocl.from_host(beta), out, mean, invstd, dev_rm, dev_rv,
                         0.1, 1e-5, ws)
    np.testing.assert_allclose(ocl.to_host(out), bn.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ocl.to_host(dev_rm), rmt.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ocl.to_host(dev_rv), rvt.numpy(), rtol=1e-5, atol=1e-6)


def test_convolution_with_the_gpu_gemm(ocl, rng):
    """Convolutions on the cooperative GEMM GPUs get (run here on whatever device there is)."""
    from juicepy.backends.opencl import OpenCLBackend

    gpu_style = OpenCLBackend(ocl.device, gemm_variant="cooperative")
    stride, padding, dilation, groups = (2, 1), (1, 2), (1, 2), 2
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    y_ref = conv_ref(x, w, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref = conv_grads_ref(x, w, dy, stride, padding, dilation, groups)
    ws = Workspace()
    dev_x, dev_w, dev_dy = (gpu_style.from_host(a) for a in (x, w, dy))
    y, dx, dw = gpu_style.empty(y_ref.shape), gpu_style.empty(x.shape), gpu_style.empty(w.shape)
    gpu_style.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws)
    gpu_style.conv2d_backward_data(dev_dy, dev_w, dx, stride, padding, dilation, groups, False, ws)
    gpu_style.conv2d_backward_filter(dev_x, dev_dy, dw, stride, padding, dilation, groups, False, ws)
    np.testing.assert_allclose(gpu_style.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_style.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_style.to_host(dw), dw_ref, rtol=1e-4, atol=1e-4)
