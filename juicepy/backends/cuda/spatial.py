"""Convolution (im2col + cuBLAS GEMM), pooling and batch norm of the CUDA backend, as a mixin
of :class:`~juicepy.backends.cuda.backend.CudaBackend`."""

from __future__ import annotations

import abc

import numpy as np

from ..base import (channels_inner, check_argmax, check_batch_norm_sums, check_conv_epilogue, check_conv_shapes,
                    check_per_channel, check_pool_shapes, conv_epilogue, relu_masked_grad, scratch)
from .device import NULL, channel_chunks


class SpatialOps(abc.ABC):
    """The spatial ops. They rely on this plumbing of the backend class they are mixed into (and
    on its ``sm_count``, the device's SMs, which sizes the per-channel reductions' grids):"""

    @abc.abstractmethod
    def _launch(self, dtype, name, threads, args, block=None, grid=None):
        """Run kernel ``name`` of dtype's module over ``threads`` elements or ``grid`` blocks."""

    @abc.abstractmethod
    def _real(self, dtype, value):
        """``value`` as the kernel's real scalar type for ``dtype``."""

    @abc.abstractmethod
    def _same(self, op, *arrays):
        """Raise unless the arrays share one shape and dtype."""

    @abc.abstractmethod
    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        """cuBLAS GEMM (Backend.gemm)."""

    # ------------------------------------------------------------ convolution
    def _conv_geometry(self, x_shape, w_shape, out_hw, stride, padding, dilation):
        n, c, h, w = x_shape
        _, _, kh, kw = w_shape
        return tuple(np.int32(v) for v in (n, c, h, w, out_hw[0], out_hw[1], kh, kw, stride[0], stride[1],
                                           padding[0], padding[1], dilation[0], dilation[1]))

    def _im2col(self, x, kernel_hw, out_hw, stride, padding, dilation, ws, tag):
        n, c = x.shape[:2]
        rows, cols = c * kernel_hw[0] * kernel_hw[1], n * out_hw[0] * out_hw[1]
        col = scratch(ws, self, tag, (rows, cols), x.dtype)
        geom = self._conv_geometry(x.shape, (0, 0) + tuple(kernel_hw), out_hw, stride, padding, dilation)
        self._launch(x.dtype, "im2col", c * cols, (x, col) + geom)  # a thread per (channel, column)
        return col

    def _to_channel_major(self, y, ws, tag):
        """(N, C, *spatial) -> scratch (C, N * prod(spatial))."""
        n, c, inner = channels_inner(y)
        dst = scratch(ws, self, tag, (c, n * inner), y.dtype)
        self._launch(y.dtype, "batch_to_channel_major", y.size, (y, dst, np.int64(n), np.int64(c), np.int64(inner)))
        return dst

    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None, bias=None, norm=None, relu=False,
               residual=None):
        check_conv_epilogue("cuda", out, bias, norm, residual)
        self._conv2d(x, w, out, stride, padding, dilation, groups, ws)
        conv_epilogue(self, out, bias, norm, relu, ws, residual)

    def _conv2d(self, x, w, out, stride, padding, dilation, groups, ws):
        stride, dilation = check_conv_shapes("cuda", "conv2d", x.shape, w.shape, out.shape, stride, padding,
                                             dilation, groups)
        o, cg, kh, kw = w.shape
        out_hw = out.shape[2:]
        col = self._im2col(x, (kh, kw), out_hw, stride, padding, dilation, ws, "conv_col")
        n, _, inner = channels_inner(out)
        result = scratch(ws, self, "conv_result", (o, n * inner), out.dtype)
        w2 = w.reshape(o, cg * kh * kw)
        og, kg = o // groups, cg * kh * kw
        for g in range(groups):
            self.gemm(w2[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg], result[g * og:(g + 1) * og])
        self._launch(out.dtype, "channel_to_batch_major", out.size,
                     (result, out, np.int64(n), np.int64(o), np.int64(inner), np.int32(0)))

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        stride, dilation = check_conv_shapes("cuda", "conv2d_backward_data", dx.shape, w.shape, dy.shape, stride,
                                             padding, dilation, groups)
        o, cg, kh, kw = w.shape
        out_hw = dy.shape[2:]
        dy_cm = self._to_channel_major(dy, ws, "conv_dy")
        og, kg = o // groups, cg * kh * kw
        dcol = scratch(ws, self, "conv_col", (dx.shape[1] * kh * kw, dy_cm.shape[1]), dx.dtype)
        w2 = w.reshape(o, kg)
        for g in range(groups):
            self.gemm(w2[g * og:(g + 1) * og], dy_cm[g * og:(g + 1) * og], dcol[g * kg:(g + 1) * kg], trans_a=True)
        geom = self._conv_geometry(dx.shape, w.shape, out_hw, stride, padding, dilation)
        self._launch(dx.dtype, "col2im", dx.size, (dcol, dx) + geom + (np.int32(accumulate),))

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
        stride, dilation = check_conv_shapes("cuda", "conv2d_backward_filter", x.shape, dw.shape, dy.shape,
                                             stride, padding, dilation, groups)
        o, cg, kh, kw = dw.shape
        col = self._im2col(x, (kh, kw), dy.shape[2:], stride, padding, dilation, ws, "conv_col")
        dy_cm = self._to_channel_major(dy, ws, "conv_dy")
        og, kg = o // groups, cg * kh * kw
        dw2 = dw.reshape(o, kg)
        for g in range(groups):
            self.gemm(dy_cm[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg], dw2[g * og:(g + 1) * og],
                      trans_b=True, beta=1.0 if accumulate else 0.0)

    # ---------------------------------------------------------------- pooling
    @staticmethod
    def _pool_geometry(x_shape, out_hw, kernel, stride, padding):
        n, c, h, w = x_shape
        return tuple(np.int32(v) for v in (n * c, h, w, out_hw[0], out_hw[1], kernel[0], kernel[1],
                                           stride[0], stride[1], padding[0], padding[1]))

    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None):
        stride = check_pool_shapes("cuda", "max_pool2d", x.shape, out.shape, kernel, stride, padding)
        check_argmax("cuda", "max_pool2d", argmax, out.shape)
        geom = self._pool_geometry(x.shape, out.shape[2:], kernel, stride, padding)
        self._launch(x.dtype, "max_pool_forward", out.size, (x, out, argmax) + geom)

    def max_pool2d_backward(self, dy, argmax, dx, kernel, stride, padding, accumulate=False, ws=None):
        stride = check_pool_shapes("cuda", "max_pool2d_backward", dx.shape, dy.shape, kernel, stride, padding)
        check_argmax("cuda", "max_pool2d_backward", argmax, dy.shape)
        geom = self._pool_geometry(dx.shape, dy.shape[2:], kernel, stride, padding)
        self._launch(dx.dtype, "max_pool_backward", dx.size, (dy, argmax, dx) + geom + (np.int32(accumulate),))

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        stride = check_pool_shapes("cuda", "avg_pool2d", x.shape, out.shape, kernel, stride, padding)
        geom = self._pool_geometry(x.shape, out.shape[2:], kernel, stride, padding)
        self._launch(x.dtype, "avg_pool_forward", out.size, (x, out) + geom + (np.int32(count_include_pad),))

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        stride = check_pool_shapes("cuda", "avg_pool2d_backward", dx.shape, dy.shape, kernel, stride, padding)
        geom = self._pool_geometry(dx.shape, dy.shape[2:], kernel, stride, padding)
        self._launch(dx.dtype, "avg_pool_backward", dx.size,
                     (dy, dx) + geom + (np.int32(count_include_pad), np.int32(accumulate)))

    # ------------------------------------------------------------ batch norm
    def _chunks(self, x):
        """(n, c, inner, chunks, chunk) of the per-channel reductions over x (device.channel_chunks)."""
        n, c, inner = channels_inner(x)
        return (n, c, inner) + channel_chunks(n * inner, c, self.sm_count)

    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None, relu=False):
        self._same("batch_norm_train", x, out)
        check_per_channel("cuda", "batch_norm_train", x, gamma, beta, mean, invstd, running_mean, running_var)
        n, c, inner, chunks, chunk = self._chunks(x)
        count = n * inner
        r = lambda v: self._real(x.dtype, v)  # noqa: E731
        running = (NULL if running_mean is None else running_mean, NULL if running_var is None else running_var)
        sizes = (np.int64(n), np.int64(c), np.int64(inner))
        stats = (r(momentum), r(1.0 - momentum), r(momentum * count / max(count - 1, 1)), r(eps))
        if chunks == 1:
            self._launch(x.dtype, "batch_norm_train", 0, (x, gamma, beta, out, mean, invstd) + running + sizes + stats,
                         grid=c)
        else:
            partials = scratch(ws, self, "channel_partials", (2, c, chunks), x.dtype)
            split = (np.int64(chunks), np.int64(chunk))
            self._launch(x.dtype, "batch_norm_train_partials", 0, (x, partials) + sizes + split, grid=c * chunks)
            self._launch(x.dtype, "batch_norm_train_chunks", 0,
                         (x, gamma, beta, out, mean, invstd) + running + (partials,) + sizes + split + stats,
                         grid=c * chunks)
        if relu:  # the ReLU after it, as its own op
            self.relu(out, out)

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None, relu=False):
        self._same("batch_norm_infer", x, out)
        check_per_channel("cuda", "batch_norm_infer", x, gamma, beta, running_mean, running_var)
        n, c, inner = channels_inner(x)
        self._launch(x.dtype, "batch_norm_infer", x.size,
                     (x, gamma, beta, running_mean, running_var, self._real(x.dtype, eps), out,
                      np.int64(x.size), np.int64(c), np.int64(inner)))
        if relu:
            self.relu(out, out)

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None, relu_out=None):
        if relu_out is not None:
            dy = relu_masked_grad(self, "batch_norm_backward", dy, relu_out, ws)
        self._same("batch_norm_backward", x, dy, *([dx] if dx is not None else []))
        check_per_channel("cuda", "batch_norm_backward", x, gamma, mean, invstd, dgamma, dbeta)
        n, c, inner, chunks, chunk = self._chunks(x)
        opt = lambda a: NULL if a is None else a  # noqa: E731
        sizes = (np.int64(n), np.int64(c), np.int64(inner))
        flags = (np.int32(accumulate_dx), np.int32(accumulate_params))
        if chunks == 1:
            self._launch(x.dtype, "batch_norm_backward", 0,
                         (x, dy, gamma, mean, invstd, opt(dx), opt(dgamma), opt(dbeta)) + sizes + flags, grid=c)
            return
        partials = scratch(ws, self, "channel_partials", (2, c, chunks), x.dtype)
        split = (np.int64(chunks), np.int64(chunk))
        self._launch(x.dtype, "batch_norm_grad_partials", 0, (x, dy, mean, invstd, partials) + sizes + split,
                     grid=c * chunks)
        self._launch(x.dtype, "batch_norm_backward_chunks", 0,
                     (x, dy, gamma, mean, invstd, partials, opt(dx), opt(dgamma), opt(dbeta)) + sizes + split + flags,
                     grid=c * chunks)

    def batch_norm_sums(self, x, shift, sums, ws=None):
        check_per_channel("cuda", "batch_norm_sums", x, shift)
        check_batch_norm_sums("cuda", "batch_norm_sums", sums, x.shape[1])
        n, c, inner, chunks, chunk = self._chunks(x)
        # with one chunk a channel the partials are the sums: no second kernel
        partials = sums if chunks == 1 else scratch(ws, self, "channel_partials", (2, c, chunks), x.dtype)
        self._launch(x.dtype, "batch_norm_sums_partials", 0,
                     (x, shift, partials, np.int64(n), np.int64(c), np.int64(inner), np.int64(chunks), np.int64(chunk)),
                     grid=c * chunks)
        if chunks > 1:
            self._combine_sums(partials, sums, NULL, NULL, False)

    def _combine_sums(self, partials, sums, dgamma, dbeta, accumulate):
        """batch_norm_combine_sums: one warp per channel of partials (2, C, chunks)."""
        _, c, chunks = partials.shape
        self._launch(partials.dtype, "batch_norm_combine_sums", 32 * c,
                     (partials, sums, dgamma, dbeta, np.int64(c), np.int64(chunks), np.int32(accumulate)))

    def batch_norm_stats(self, sums, count, shift, mean, invstd, running_mean, running_var, momentum, eps,
                         ws=None):
        check_batch_norm_sums("cuda", "batch_norm_stats", sums, mean.shape[0], shift, invstd, running_mean,
                              running_var)
        r = lambda v: self._real(mean.dtype, v)  # noqa: E731
        self._launch(mean.dtype, "batch_norm_stats", mean.size,
                     (sums, shift, mean, invstd, NULL if running_mean is None else running_mean,
                      NULL if running_var is None else running_var, np.int64(mean.size), r(count), r(momentum),
                      r(1.0 - momentum), r(momentum * count / max(count - 1, 1)), r(eps)))

    def batch_norm_apply(self, x, gamma, beta, mean, invstd, out, ws=None):
        self._same("batch_norm_apply", x, out)
        check_per_channel("cuda", "batch_norm_apply", x, gamma, beta, mean, invstd)
        _, c, inner = channels_inner(x)
        self._launch(x.dtype, "batch_norm_apply", x.size,
                     (x, gamma, beta, mean, invstd, out, np.int64(x.size), np.int64(c), np.int64(inner)))

    def batch_norm_backward_reduce(self, x, dy, mean, invstd, sums, dgamma=None, dbeta=None,
                                   accumulate_params=False, ws=None):
        self._same("batch_norm_backward_reduce", x, dy)
        check_per_channel("cuda", "batch_norm_backward_reduce", x, mean, invstd, dgamma, dbeta)
        check_batch_norm_sums("cuda", "batch_norm_backward_reduce", sums, x.shape[1])
        n, c, inner, chunks, chunk = self._chunks(x)
        opt = lambda a: NULL if a is None else a  # noqa: E731
        sizes = (np.int64(n), np.int64(c), np.int64(inner))
        if chunks == 1:
            self._launch(x.dtype, "batch_norm_backward_reduce", 0,
                         (x, dy, mean, invstd, sums, opt(dgamma), opt(dbeta)) + sizes + (np.int32(accumulate_params),),
                         grid=c)
            return
        partials = scratch(ws, self, "channel_partials", (2, c, chunks), x.dtype)
        self._launch(x.dtype, "batch_norm_grad_partials", 0,
                     (x, dy, mean, invstd, partials) + sizes + (np.int64(chunks), np.int64(chunk)), grid=c * chunks)
        self._combine_sums(partials, sums, opt(dgamma), opt(dbeta), accumulate_params)

    def batch_norm_backward_data(self, x, dy, gamma, mean, invstd, sums, count, dx, accumulate=False, ws=None):
        self._same("batch_norm_backward_data", x, dy, dx)
        check_per_channel("cuda", "batch_norm_backward_data", x, gamma, mean, invstd)
        check_batch_norm_sums("cuda", "batch_norm_backward_data", sums, x.shape[1])
        _, c, inner = channels_inner(x)
        self._launch(x.dtype, "batch_norm_backward_data", x.size,
                     (x, dy, gamma, mean, invstd, sums, dx, np.int64(x.size), np.int64(c), np.int64(inner),
                      self._real(x.dtype, count), np.int32(accumulate)))
