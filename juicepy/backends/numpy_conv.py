"""Convolution, pooling and batch-norm kernels of the NumPy backend.

Convolution is im2col + GEMM. The strided windows of the (padded) input are copied into a
workspace matrix laid out (groups, C/groups*kh*kw, N*Ho*Wo), so each group is ONE GEMM for the
whole batch (depthwise convolutions make G GEMMs, not N*G). col2im adds the column matrix back
with one strided add per kernel offset. Pooling loops over the kh*kw kernel offsets only.
Every temporary comes from the caller's Workspace, so a steady-state step allocates no arrays
beyond NumPy's own small index temporaries.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .numpy_workspace import scratch


def _view(arr, shape):
    """A reshaped view; raises instead of silently copying (an ``out=`` target must be a view)."""
    view = arr.view()
    view.shape = shape
    return view


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _padded(backend, x, padding, fill, ws, tag):
    """``x`` with ``padding`` rows/columns of ``fill`` around each plane (a workspace copy)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = scratch(ws, backend, tag, (n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    # only the borders: the interior is overwritten right below
    if ph:
        xp[:, :, :ph] = fill
        xp[:, :, h + ph:] = fill
    if pw:
        xp[:, :, ph:h + ph, :pw] = fill
        xp[:, :, ph:h + ph, w + pw:] = fill
    xp[:, :, ph:h + ph, pw:w + pw] = x
    return xp


def _offset_view(xp, i, j, stride, out_hw):
    """The (N, C, Ho, Wo) strided view of what kernel offset (i, j) (already dilated) reads."""
    sh, sw = stride
    ho, wo = out_hw
    return xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def _im2col(backend, x, kernel, stride, padding, dilation, groups, out_hw, ws):
    """Columns (G, C/G*kh*kw, N*Ho*Wo) of the input windows."""
    n, c = x.shape[:2]
    kh, kw = kernel
    ho, wo = out_hw
    xp = _padded(backend, x, padding, 0.0, ws, "conv_xpad")
    cols = scratch(ws, backend, "conv_cols", (groups, c // groups * kh * kw, n * ho * wo), x.dtype)
    sn, sc, srow, scol = xp.strides
    windows = as_strided(xp, (c, kh, kw, n, ho, wo),
                         (sc, srow * dilation[0], scol * dilation[1], sn, srow * stride[0], scol * stride[1]),
                         writeable=False)
    np.copyto(_view(cols, (c, kh, kw, n, ho, wo)), windows)
    return cols


def _channels_first(backend, dy, ws):
    """dy (N, O, Ho, Wo) as (O, N*Ho*Wo): the GEMM operand layout of the columns."""
    n, o = dy.shape[:2]
    plane = dy.size // (n * o)
    if n == 1:
        return _view(dy, (o, plane))
    dyt = scratch(ws, backend, "conv_dyT", (o, n, plane), dy.dtype)
    np.copyto(dyt, _view(dy, (n, o, plane)).transpose(1, 0, 2))
    return _view(dyt, (o, n * plane))


def conv2d(backend, x, w, out, stride, padding, dilation, groups, ws):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    ho, wo = out.shape[2:]
    og = o // groups
    cols = _im2col(backend, x, (kh, kw), stride, padding, dilation, groups, (ho, wo), ws)
    weights = _view(w, (groups, og, cg * kh * kw))
    if n == 1:  # (O, Ho*Wo) is already the NCHW layout of one sample
        np.matmul(weights, cols, out=_view(out, (groups, og, ho * wo)))
        return
    res = scratch(ws, backend, "conv_res", (groups, og, n * ho * wo), out.dtype)
    np.matmul(weights, cols, out=res)
    np.copyto(_view(out, (n, o, ho * wo)), _view(res, (o, n, ho * wo)).transpose(1, 0, 2))


def _col2im(backend, dcols, dx, kernel, stride, padding, dilation, accumulate, ws):
    """dx (+)= the column matrix (C, kh, kw, N, Ho, Wo) added back into the input planes."""
    n, c, h, w = dx.shape
    kh, kw = kernel
    ph, pw = padding
    ho, wo = dcols.shape[-2:]
    padded = bool(ph or pw)
    if padded:
        target = scratch(ws, backend, "conv_dxpad", (n, c, h + 2 * ph, w + 2 * pw), dx.dtype)
        target.fill(0.0)
    else:
        target = dx
        if not accumulate:
            target.fill(0.0)
    for i in range(kh):
        for j in range(kw):
            region = _offset_view(target, i * dilation[0], j * dilation[1], stride, (ho, wo))
            region += dcols[:, i, j].transpose(1, 0, 2, 3)
    if padded:
        interior = target[:, :, ph:ph + h, pw:pw + w]
        if accumulate:
            dx += interior
        else:
            np.copyto(dx, interior)


def conv2d_backward_data(backend, dy, w, dx, stride, padding, dilation, groups, accumulate, ws):
    n, c = dx.shape[:2]
    o, cg, kh, kw = w.shape
    ho, wo = dy.shape[2:]
    og = o // groups
    dyt = _channels_first(backend, dy, ws)
    dcols = scratch(ws, backend, "conv_cols", (groups, cg * kh * kw, n * ho * wo), dx.dtype)
    np.matmul(_view(w, (groups, og, cg * kh * kw)).transpose(0, 2, 1),
              _view(dyt, (groups, og, n * ho * wo)), out=dcols)
    _col2im(backend, _view(dcols, (c, kh, kw, n, ho, wo)), dx, (kh, kw), stride, padding,
            dilation, accumulate, ws)


def conv2d_backward_filter(backend, x, dy, dw, stride, padding, dilation, groups, accumulate, ws):
    n = x.shape[0]
    o, cg, kh, kw = dw.shape
    ho, wo = dy.shape[2:]
    og = o // groups
    cols = _im2col(backend, x, (kh, kw), stride, padding, dilation, groups, (ho, wo), ws)
    dyt = _channels_first(backend, dy, ws)
    target = scratch(ws, backend, "conv_dw", dw.shape, dw.dtype) if accumulate else dw
    np.matmul(_view(dyt, (groups, og, n * ho * wo)), cols.transpose(0, 2, 1),
              out=_view(target, (groups, og, cg * kh * kw)))
    if accumulate:
        dw += target


# ---------------------------------------------------------------- pooling
def _pool_index(backend, ws, in_hw, kernel, stride, padding, out_hw):
    """int32 (kh, kw, Ho, Wo): the flat h*W+w input index kernel offset (i, j) reads for each
    output pixel (negative or past the plane inside the padding)."""
    h, w = in_hw
    kh, kw = kernel
    ho, wo = out_hw
    table = scratch(ws, backend, "pool_index", (kh, kw, ho, wo), np.int32)
    rows = np.arange(kh)[:, None] + np.arange(ho)[None, :] * stride[0] - padding[0]  # (kh, Ho)
    cols = np.arange(kw)[:, None] + np.arange(wo)[None, :] * stride[1] - padding[1]  # (kw, Wo)
    np.add((rows * w)[:, None, :, None], cols[None, :, None, :], out=table, casting="unsafe")
    return table


def _is_global(x_hw, kernel, padding, out_hw):
    return tuple(kernel) == tuple(x_hw) and tuple(padding) == (0, 0) and tuple(out_hw) == (1, 1)


def max_pool2d(backend, x, out, argmax, kernel, stride, padding, ws):
    kh, kw = kernel
    out_hw = out.shape[2:]
    xp = _padded(backend, x, padding, -np.inf, ws, "pool_xpad")
    table = _pool_index(backend, ws, x.shape[2:], kernel, stride, padding, out_hw)
    mask = scratch(ws, backend, "pool_mask", out.shape, np.bool_)
    for i in range(kh):
        for j in range(kw):
            window = _offset_view(xp, i, j, stride, out_hw)
            if i == 0 and j == 0:
                np.copyto(out, window)
                np.copyto(argmax, table[0, 0])
                continue
            # strictly greater: the first maximum in scan order wins, as in PyTorch
            np.greater(window, out, out=mask)
            np.copyto(out, window, where=mask)
            np.copyto(argmax, table[i, j], where=mask)


def max_pool2d_backward(backend, dy, argmax, dx, accumulate, ws):
    n, c, h, w = dx.shape
    planes = n * c
    per_plane = dy.size // planes
    flat_index = scratch(ws, backend, "pool_flat", (planes, per_plane), np.intp)
    plane_start = scratch(ws, backend, "pool_base", (planes, 1), np.intp)
    plane_start[:, 0] = np.arange(0, planes * h * w, h * w)
    np.add(_view(argmax, (planes, per_plane)), plane_start, out=flat_index)
    if not accumulate:
        dx.fill(0.0)
    # windows may overlap (stride < kernel): add.at sums repeated indices
    np.add.at(_view(dx, (dx.size,)), _view(flat_index, (flat_index.size,)), _view(dy, (dy.size,)))


def _valid_counts(backend, ws, in_hw, kernel, stride, padding, out_hw, dtype):
    """(Ho, Wo): how many input pixels (padding excluded) each window covers."""
    per_axis = []
    for size, k, s, p, o in zip(in_hw, kernel, stride, padding, out_hw):
        start = np.arange(o) * s - p
        per_axis.append(np.minimum(start + k, size) - np.maximum(start, 0))
    counts = scratch(ws, backend, "pool_counts", tuple(out_hw), dtype)
    np.multiply(per_axis[0][:, None], per_axis[1][None, :], out=counts, casting="unsafe")
    return counts


def avg_pool2d(backend, x, out, kernel, stride, padding, count_include_pad, ws):
    kh, kw = kernel
    out_hw = out.shape[2:]
    if _is_global(x.shape[2:], kernel, padding, out_hw):
        np.mean(x, axis=(2, 3), out=_view(out, out.shape[:2]))
        return
    xp = _padded(backend, x, padding, 0.0, ws, "pool_xpad")
    for i in range(kh):
        for j in range(kw):
            window = _offset_view(xp, i, j, stride, out_hw)
            if i == 0 and j == 0:
                np.copyto(out, window)
            else:
                out += window
    if count_include_pad:  # floor mode: every window lies inside the padded input
        out *= 1.0 / (kh * kw)
    else:
        out /= _valid_counts(backend, ws, x.shape[2:], kernel, stride, padding, out_hw, out.dtype)


def avg_pool2d_backward(backend, dy, dx, kernel, stride, padding, count_include_pad, accumulate, ws):
    n, c, h, w = dx.shape
    kh, kw = kernel
    ph, pw = padding
    out_hw = dy.shape[2:]
    if _is_global((h, w), kernel, padding, out_hw):
        share = scratch(ws, backend, "pool_dy", dy.shape, dy.dtype)
        np.multiply(dy, 1.0 / (h * w), out=share)
        if accumulate:
            dx += share
        else:
            np.copyto(dx, share)
        return
    share = scratch(ws, backend, "pool_dy", dy.shape, dy.dtype)
    if count_include_pad:
        np.multiply(dy, 1.0 / (kh * kw), out=share)
    else:
        np.divide(dy, _valid_counts(backend, ws, (h, w), kernel, stride, padding, out_hw, dy.dtype), out=share)
    padded = bool(ph or pw)
    if padded:
        target = scratch(ws, backend, "pool_dxpad", (n, c, h + 2 * ph, w + 2 * pw), dx.dtype)
        target.fill(0.0)
    else:
        target = dx
        if not accumulate:
            target.fill(0.0)
    for i in range(kh):
        for j in range(kw):
            region = _offset_view(target, i, j, stride, out_hw)
            region += share
    if padded:
        interior = target[:, :, ph:ph + h, pw:pw + w]
        if accumulate:
            dx += interior
        else:
            np.copyto(dx, interior)


# ------------------------------------------------------------ batch norm
def _stat_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def batch_norm_train(backend, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                     momentum, eps, ws):
    axes = _stat_axes(x)
    shape = _channel_shape(x)
    count = x.size // x.shape[1]
    channels = (x.shape[1],)
    np.mean(x, axis=axes, out=mean)
    centered = scratch(ws, backend, "bn_centered", x.shape, x.dtype)
    np.subtract(x, _view(mean, shape), out=centered)
    squares = scratch(ws, backend, "bn_squares", x.shape, x.dtype)
    np.multiply(centered, centered, out=squares)
    var = scratch(ws, backend, "bn_var", channels, x.dtype)
    np.mean(squares, axis=axes, out=var)  # biased: what normalising uses
    if running_mean is not None:
        step = scratch(ws, backend, "bn_step", channels, x.dtype)
        np.multiply(mean, momentum, out=step)
        running_mean *= 1.0 - momentum
        running_mean += step
        # running_var tracks the unbiased estimate, as PyTorch
        np.multiply(var, momentum * count / max(count - 1, 1), out=step)
        running_var *= 1.0 - momentum
        running_var += step
    np.add(var, eps, out=invstd)
    np.sqrt(invstd, out=invstd)
    np.reciprocal(invstd, out=invstd)
    scale = scratch(ws, backend, "bn_scale", channels, x.dtype)
    np.multiply(gamma, invstd, out=scale)
    np.multiply(centered, _view(scale, shape), out=out)
    out += _view(beta, shape)


def batch_norm_infer(backend, x, gamma, beta, running_mean, running_var, eps, out, ws):
    shape = _channel_shape(x)
    channels = (x.shape[1],)
    scale = scratch(ws, backend, "bn_scale", channels, x.dtype)
    np.add(running_var, eps, out=scale)
    np.sqrt(scale, out=scale)
    np.divide(gamma, scale, out=scale)
    shift = scratch(ws, backend, "bn_shift", channels, x.dtype)
    np.multiply(running_mean, scale, out=shift)
    np.subtract(beta, shift, out=shift)
    np.multiply(x, _view(scale, shape), out=out)
    out += _view(shift, shape)


def batch_norm_backward(backend, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                        accumulate_dx, accumulate_params, ws):
    axes = _stat_axes(x)
    shape = _channel_shape(x)
    count = x.size // x.shape[1]
    channels = (x.shape[1],)
    xhat = scratch(ws, backend, "bn_centered", x.shape, x.dtype)
    np.subtract(x, _view(mean, shape), out=xhat)
    xhat *= _view(invstd, shape)
    sum_dy = scratch(ws, backend, "bn_sum_dy", channels, x.dtype)
    np.sum(dy, axis=axes, out=sum_dy)
    product = scratch(ws, backend, "bn_squares", x.shape, x.dtype)
    np.multiply(dy, xhat, out=product)
    sum_dy_xhat = scratch(ws, backend, "bn_sum_dy_xhat", channels, x.dtype)
    np.sum(product, axis=axes, out=sum_dy_xhat)
    for grad, value in ((dbeta, sum_dy), (dgamma, sum_dy_xhat)):
        if grad is None:
            continue
        if accumulate_params:
            grad += value
        else:
            np.copyto(grad, value)
    if dx is None:
        return
    # dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    coef = scratch(ws, backend, "bn_coef", channels, x.dtype)
    np.multiply(gamma, invstd, out=coef)
    coef *= 1.0 / count
    np.multiply(xhat, _view(sum_dy_xhat, shape), out=product)
    product += _view(sum_dy, shape)
    target = scratch(ws, backend, "bn_dx", x.shape, x.dtype) if accumulate_dx else dx
    np.multiply(dy, float(count), out=target)
    target -= product
    target *= _view(coef, shape)
    if accumulate_dx:
        dx += target
