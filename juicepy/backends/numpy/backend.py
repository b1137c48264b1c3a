"""The NumPy backend: every op with ``out=`` buffers, so a steady-state step makes no arrays."""

from __future__ import annotations

import math

import numpy as np

from .. import rng
from ..base import Backend, host_all_finite
from ..base import scratch as _scratch
from . import kernels, recurrent, spatial
from .threads import CHUNK, chunked as _chunked, split as _split

_cpu_kernels = kernels.load("_cpu_kernels")  # fused optimizers, ReLU backward


def _fill_arange(buf) -> None:
    buf[...] = np.arange(buf.size, dtype=buf.dtype).reshape(buf.shape)


class NumpyBackend(Backend):
    name = "numpy"
    dtypes = (np.float32, np.float64)

    # ---------------------------------------------------------------- memory
    def empty(self, shape, dtype=np.float32):
        self.allocations += 1
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        self.allocations += 1
        return np.zeros(shape, dtype)

    def from_host(self, host):
        self.allocations += 1
        return np.array(host, copy=True, order="C")

    def write(self, dst, host):
        np.copyto(dst, np.asarray(host).reshape(dst.shape), casting="same_kind")

    def to_host(self, src):
        return np.array(src, copy=True)

    def copy(self, src, dst):
        np.copyto(dst, src)

    def fill(self, dst, value):
        dst.fill(value)

    def reshape(self, arr, shape):
        view = arr.view()
        view.shape = shape  # raises rather than copying when a view is impossible
        return view

    def flat_view(self, flat, offset, shape):
        size = math.prod(shape)
        return self.reshape(flat[offset:offset + size], shape)

    def is_array(self, x):
        return isinstance(x, np.ndarray)

    # ------------------------------------------------------------ arithmetic
    def _into(self, out, accumulate, ws, tag="acc"):
        """Where an op writes its result: ``out`` itself, or a scratch to add afterwards."""
        return _scratch(ws, self, tag, out.shape, out.dtype) if accumulate else out

    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        if beta == 0.0:
            np.matmul(a, b, out=out)
            if alpha != 1.0:
                out *= alpha
            return
        tmp = _scratch(ws, self, "gemm", out.shape, out.dtype)
        np.matmul(a, b, out=tmp)
        if alpha != 1.0:
            tmp *= alpha
        if beta != 1.0:
            out *= beta
        out += tmp

    def add(self, a, b, out):
        np.add(a, b, out=out)

    def scale(self, x, alpha, out):
        np.multiply(x, alpha, out=out)

    def mul(self, a, b, out, accumulate=False, ws=None):
        if accumulate:
            tmp = _scratch(ws, self, "mul", out.shape, out.dtype)
            np.multiply(a, b, out=tmp)
            out += tmp
        else:
            np.multiply(a, b, out=out)

    @staticmethod
    def _channel_shape(arr):
        return (1, arr.shape[1]) + (1,) * (arr.ndim - 2)

    def add_bias(self, out, bias):
        out += bias.reshape(self._channel_shape(out))

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        axes = (0,) + tuple(range(2, dy.ndim))
        target = self._into(dbias, accumulate, ws)
        np.sum(dy, axis=axes, out=target)
        if accumulate:
            dbias += target

    def sum_all(self, x, out):
        out[0] = np.sum(x)

    def all_finite(self, x):
        return host_all_finite(x)

    # ------------------------------------------------------------ activations
    def _mask_product(self, cond_into, dy, dx, accumulate, ws, scale_false=0.0):
        """dx (+)= dy where the condition holds, dy * scale_false elsewhere."""
        mask = _scratch(ws, self, "mask", dy.shape, np.bool_)
        cond_into(mask)
        target = self._into(dx, accumulate, ws)
        if scale_false == 0.0:
            np.multiply(dy, mask, out=target)
        else:
            np.multiply(dy, scale_false, out=target)
            np.copyto(target, dy, where=mask)
        if accumulate:
            dx += target

    def relu(self, x, out):
        np.maximum(x, 0, out=out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        if _cpu_kernels is not None and y.flags.c_contiguous and dy.flags.c_contiguous and dx.flags.c_contiguous:
            _cpu_kernels.relu_backward(y, dy, dx, accumulate)
            return
        self._mask_product(lambda m: np.greater(y, 0, out=m), dy, dx, accumulate, ws)

    def leaky_relu(self, x, out, slope):
        np.multiply(x, slope, out=out)
        # slope * x is the smaller of the two for x < 0 exactly when slope <= 1
        (np.maximum if slope <= 1 else np.minimum)(x, out, out=out)

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._mask_product(lambda m: np.greater(x, 0, out=m), dy, dx, accumulate, ws, slope)

    def sigmoid(self, x, out):
        # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x))
        np.multiply(x, 0.5, out=out)
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        target = self._into(dx, accumulate, ws)
        np.subtract(1.0, y, out=target)
        target *= y
        target *= dy
        if accumulate:
            dx += target

    def tanh(self, x, out):
        np.tanh(x, out=out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        target = self._into(dx, accumulate, ws)
        np.multiply(y, y, out=target)
        np.subtract(1.0, target, out=target)
        target *= dy
        if accumulate:
            dx += target

    def _row_scratch(self, ws, tag, x):
        return _scratch(ws, self, tag, (x.shape[0], 1), x.dtype)

    def softmax(self, x, out, ws=None):
        rowmax = self._row_scratch(ws, "rowmax", x)
        np.max(x, axis=1, keepdims=True, out=rowmax)
        np.subtract(x, rowmax, out=out)
        np.exp(out, out=out)
        rowsum = self._row_scratch(ws, "rowsum", x)
        np.sum(out, axis=1, keepdims=True, out=rowsum)
        out /= rowsum

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        target = self._into(dx, accumulate, ws)
        np.multiply(dy, y, out=target)
        dot = self._row_scratch(ws, "rowsum", y)
        np.sum(target, axis=1, keepdims=True, out=dot)
        np.subtract(dy, dot, out=target)
        target *= y
        if accumulate:
            dx += target

    def log_softmax(self, x, out, ws=None):
        rowmax = self._row_scratch(ws, "rowmax", x)
        np.max(x, axis=1, keepdims=True, out=rowmax)
        np.subtract(x, rowmax, out=out)
        expd = _scratch(ws, self, "exp", x.shape, x.dtype)
        np.exp(out, out=expd)
        rowsum = self._row_scratch(ws, "rowsum", x)
        np.sum(expd, axis=1, keepdims=True, out=rowsum)
        np.log(rowsum, out=rowsum)
        out -= rowsum

    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        target = self._into(dx, accumulate, ws)
        np.exp(y, out=target)
        total = self._row_scratch(ws, "rowsum", y)
        np.sum(dy, axis=1, keepdims=True, out=total)
        target *= total
        np.subtract(dy, target, out=target)
        if accumulate:
            dx += target

    # ----------------------------------------------------------------- losses
    def _label_index(self, ws, labels, classes):
        """Flat indices i*C + labels[i] of the labelled entries (a cached int buffer)."""
        n = labels.shape[0]
        index = _scratch(ws, self, "label_index", (n,), np.intp)
        offsets = _scratch(ws, self, "row_offsets", (n,), np.intp,
                           lambda buf: np.multiply(np.arange(n), classes, out=buf))
        np.add(offsets, labels, out=index)
        return index

    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale, ws=None):
        rowmax = self._row_scratch(ws, "rowmax", logits)
        np.max(logits, axis=1, keepdims=True, out=rowmax)
        np.subtract(logits, rowmax, out=dx)
        np.exp(dx, out=dx)
        rowsum = self._row_scratch(ws, "rowsum", logits)
        np.sum(dx, axis=1, keepdims=True, out=rowsum)
        dx /= rowsum
        index = self._label_index(ws, labels, logits.shape[1])
        picked = _scratch(ws, self, "picked", losses.shape, losses.dtype)
        np.log(rowsum[:, 0], out=losses)
        losses += rowmax[:, 0]
        np.take(logits.reshape(-1), index, out=picked)
        losses -= picked
        flat_dx = dx.reshape(-1)
        np.take(flat_dx, index, out=picked)
        picked -= 1.0
        np.put(flat_dx, index, picked)
        dx *= grad_scale

    def nll_loss(self, logp, labels, losses, dx, grad_scale, ws=None):
        index = self._label_index(ws, labels, logp.shape[1])
        np.take(logp.reshape(-1), index, out=losses)
        np.negative(losses, out=losses)
        dx.fill(0.0)
        np.put(dx.reshape(-1), index, -grad_scale)

    def mse_loss(self, pred, target, losses, dx, grad_scale, ws=None):
        np.subtract(pred, target, out=dx)
        sq = _scratch(ws, self, "sq", dx.shape, dx.dtype)
        np.multiply(dx, dx, out=sq)
        np.sum(sq.reshape(sq.shape[0], -1), axis=1, out=losses)
        dx *= 2.0 * grad_scale

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        n = x.size
        index = _scratch(ws, self, "rng_index", (n,), np.uint32, _fill_arange)
        bits = _scratch(ws, self, "rng_bits", (n,), np.uint32)
        tmp = _scratch(ws, self, "rng_tmp", (n,), np.uint32)
        np.copyto(bits, index)
        rng.element_bits(bits, rng.stream_key(seed, counter), tmp)
        np.right_shift(bits, 8, out=bits)
        keep = _scratch(ws, self, "rng_keep", (n,), np.bool_)
        np.greater_equal(bits, np.uint32(rng.keep_threshold(p)), out=keep)
        flat_mask = mask.reshape(-1)
        np.copyto(flat_mask, keep)
        flat_mask *= 1.0 / (1.0 - p) if p < 1.0 else 0.0
        np.multiply(x, mask, out=out)

    # -------------------------------------------------------------- optimizers
    def _lane_scratch(self, ws, tag, lane, n, dtype):
        return _scratch(ws, self, f"{tag}{lane}", (CHUNK,), dtype)[:n]

    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None):
        p_all, g_all = param.reshape(-1), grad.reshape(-1)
        b_all = buf.reshape(-1) if buf is not None else None
        if _cpu_kernels is not None:
            _split(p_all.size, lambda lo, hi: _cpu_kernels.sgd(
                p_all[lo:hi], g_all[lo:hi], b_all[lo:hi] if b_all is not None else None, lr,
                momentum, 1.0 - dampening, weight_decay, nesterov, first_step))
            return

        def work(lo, hi, lane):
            p, g = p_all[lo:hi], g_all[lo:hi]
            tmp = self._lane_scratch(ws, "sgd_tmp", lane, hi - lo, p.dtype)
            if weight_decay != 0.0:
                d = self._lane_scratch(ws, "sgd_g", lane, hi - lo, p.dtype)
                np.multiply(p, weight_decay, out=d)
                d += g
                g = d
            if momentum != 0.0:
                b = b_all[lo:hi]
                if first_step:
                    np.copyto(b, g)
                else:
                    b *= momentum
                    if dampening == 0.0:
                        b += g
                    else:
                        np.multiply(g, 1.0 - dampening, out=tmp)
                        b += tmp
                if nesterov:
                    np.multiply(b, momentum, out=tmp)
                    tmp += g
                    g = tmp
                else:
                    g = b
            np.multiply(g, lr, out=tmp)
            p -= tmp

        _chunked(p_all.size, work)

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None):
        p_all, g_all = param.reshape(-1), grad.reshape(-1)
        m_all, v_all = exp_avg.reshape(-1), exp_avg_sq.reshape(-1)
        vmax_all = max_exp_avg_sq.reshape(-1) if max_exp_avg_sq is not None else None
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        # torch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps); the same with one pass fewer:
        step_size = lr / bias_correction1 * bias_correction2_sqrt
        eps_scaled = eps * bias_correction2_sqrt
        if _cpu_kernels is not None:
            l2 = 0.0 if decoupled else weight_decay
            shrink = 1.0 - lr * weight_decay if decoupled else 1.0
            _split(p_all.size, lambda lo, hi: _cpu_kernels.adam(
                p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi],
                vmax_all[lo:hi] if vmax_all is not None else None, 1.0 - beta1, beta2, 1.0 - beta2,
                step_size, eps_scaled, l2, shrink))
            return

        def work(lo, hi, lane):
            p, g, m, v = p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi]
            tmp = self._lane_scratch(ws, "adam_tmp", lane, hi - lo, p.dtype)
            if weight_decay != 0.0:
                if decoupled:
                    p *= 1.0 - lr * weight_decay
                else:
                    d = self._lane_scratch(ws, "adam_g", lane, hi - lo, p.dtype)
                    np.multiply(p, weight_decay, out=d)
                    d += g
                    g = d
            # exp_avg.lerp_(g, 1 - beta1)
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - beta1
            m += tmp
            # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            v *= beta2
            np.multiply(g, 1.0 - beta2, out=tmp)
            tmp *= g
            v += tmp
            second = v
            if vmax_all is not None:
                second = vmax_all[lo:hi]
                np.maximum(second, v, out=second)
            np.sqrt(second, out=tmp)
            tmp += eps_scaled
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

        _chunked(p_all.size, work)

    # ------------------------------------------------------------ convolution
    # The kernels live in spatial.py; these methods only pass the workspace through.
    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None):
        spatial.conv2d(self, x, w, out, stride, padding, dilation, groups, ws)

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        spatial.conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups, accumulate, ws)

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
        spatial.conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups, accumulate, ws)

    # ---------------------------------------------------------------- pooling
    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None):
        spatial.max_pool2d(self, x, out, argmax, kernel, stride, padding, ws)

    def max_pool2d_backward(self, dy, argmax, dx, accumulate=False, ws=None):
        spatial.max_pool2d_backward(self, dy, argmax, dx, accumulate, ws)

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        spatial.avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad, ws)

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        spatial.avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad,
                                       accumulate, ws)

    # ------------------------------------------------------------ batch norm
    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None):
        spatial.batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean,
                                    running_var, momentum, eps, ws)

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None):
        spatial.batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws)

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None):
        spatial.batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                                       accumulate_dx, accumulate_params, ws)

    # ------------------------------------------------------------ sequences
    # The kernels live in recurrent.py.
    def swap_leading_axes(self, src, dst, accumulate=False):
        recurrent.swap_leading_axes(self, src, dst, accumulate)

    def embedding(self, indices, weight, out):
        recurrent.embedding(self, indices, weight, out)

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None):
        recurrent.embedding_backward(self, indices, dy, dweight, padding_idx, accumulate, ws)

    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity):
        recurrent.rnn_cell(self, xw, hw, bias_hh, h, nonlinearity)

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None):
        recurrent.lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws)

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None):
        recurrent.lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws)

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None):
        recurrent.gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws)

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None):
        recurrent.gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws)

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        region = dst[:, offset:offset + src.shape[1]]
        if accumulate:
            region += src
        else:
            region[...] = src

    def slice_channels(self, src, dst, offset, accumulate=False):
        region = src[:, offset:offset + dst.shape[1]]
        if accumulate:
            dst += region
        else:
            dst[...] = region
