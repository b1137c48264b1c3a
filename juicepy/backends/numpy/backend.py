"""The NumPy backend: every op with ``out=`` buffers, so a steady-state step makes no arrays."""

from __future__ import annotations

import math

import numpy as np

from .. import rng
from ..base import (Backend, check_argmax, check_cell, check_embedding, check_nonlinearity, check_swap, check_batch_norm_sums, check_channel_range, check_conv_epilogue, check_conv_shapes, check_gemm,
                    check_per_channel, check_pool_shapes, check_same, check_sequence, check_input_sequence,
                    check_input_sequence_backward, check_view, host_all_finite)
from ..base import scratch as _scratch
from . import kernels as _kernels, recurrent, spatial
from .blas import batch_entry as _batch_entry, gemm_entry as _gemm_entry, positions_entry as _positions_entry
from .blas import sum_entry as _sum_entry
from .threads import (CHUNK, SMALL_GEMM, chunked as _chunked, gemm_lanes as _gemm_lanes, gemm_threads as _gemm_threads,
                      in_lane as _in_lane, run_gemm_pieces as _run_gemm_pieces, run_lanes as _run_lanes,
                      single_threaded_blas as _single_threaded_blas, split as _split)

#: multiply-adds from which a GEMM splits its rows over the lanes (below it BLAS's own threads are
#: faster: measured in docs/numpy.md), and the fewest rows per piece
GEMM_SPLIT_MIN = 1 << 26
GEMM_SPLIT_ROWS = 16

#: multiply-adds past which the C GEMM entry's products split over the lanes (as small ones run
#: on one BLAS thread: threads.SMALL_GEMM), rows of a up to which they split by columns of b, and
#: the columns of b each lane takes at least
LANE_GEMM_MIN = SMALL_GEMM
GEMM_COLUMN_SPLIT_MAX_ROWS = 128
GEMM_SPLIT_COLS = 64


def _matmul_into(a, b, out, alpha, beta) -> None:
    """out = alpha a @ b + beta out on np.matmul, for what the C entry does not take (layouts)."""
    if beta == 0.0:
        np.matmul(a, b, out=out)
        if alpha != 1.0:
            out *= alpha
        return
    product = np.matmul(a, b)
    product *= alpha
    out *= beta
    out += product


def _fill_arange(buf) -> None:
    buf[...] = np.arange(buf.size, dtype=buf.dtype).reshape(buf.shape)


#: byte alignment of the backend's arrays: a cache line, where NumPy gives 16 bytes, so that the C
#: kernels' 64-byte vector loads and stores of rows read in place never straddle two lines (such
#: an access costs two; measured in docs/numpy.md)
ALIGNMENT = 64


def _aligned(allocate, shape, dtype) -> np.ndarray:
    """A C-ordered array of ``shape`` whose data starts on an ALIGNMENT boundary: a view into
    ``allocate``'s (np.empty or np.zeros) byte buffer a line longer."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(size < 0 for size in shape):
        raise ValueError(f"numpy backend: negative dimensions in shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    raw = allocate(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _copy_over_lanes(src, dst) -> None:
    """dst = src (same shape); a large contiguous copy split over the lanes (threads.split's
    threshold): one core does not draw the memory throughput of two (docs/numpy.md). Overlapping
    arrays keep np.copyto's one pass, which handles the overlap."""
    if src.flags.c_contiguous and dst.flags.c_contiguous and dst.size >= CHUNK \
            and not np.may_share_memory(src, dst):
        flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
        _split(dst.size, lambda lo, hi: np.copyto(flat_dst[lo:hi], flat_src[lo:hi], casting="same_kind"))
    else:
        np.copyto(dst, src, casting="same_kind")


class NumpyBackend(Backend):
    name = "numpy"
    dtypes = (np.float32, np.float64)

    def __init__(self, kernels: str | None = None):
        """``kernels``: "c" runs the optional C extensions where they were built (fused
        optimizers, ReLU backward, max pooling, convolution, batch norm, recurrent cells), "numpy" the pure-NumPy
        paths; default ``$JUICEPY_CPU_KERNELS``, else "c"."""
        super().__init__()
        self.kernels = _kernels.choice(kernels)
        self.cpu_kernels = _kernels.load("_cpu_kernels", self.kernels)  # None: not built or not wanted
        self.pool_kernels = _kernels.load("_pool_kernels", self.kernels)
        self.conv_kernels = _kernels.load("_conv_kernels", self.kernels)
        self.norm_kernels = _kernels.load("_norm_kernels", self.kernels)
        self.rnn_kernels = _kernels.load("_rnn_kernels", self.kernels)
        self.blas_gemm = _gemm_entry(self.kernels)  # None: np.matmul
        self.blas_positions = _positions_entry(self.kernels)  # None: np.matmul
        self.blas_batch = _batch_entry(self.kernels)  # None: np.matmul
        self.blas_sum = _sum_entry(self.kernels)  # None: np.matmul

    def __repr__(self) -> str:
        loaded = (self.cpu_kernels, self.pool_kernels, self.conv_kernels, self.norm_kernels, self.rnn_kernels)
        c_paths = "C kernels" if any(k is not None for k in loaded) else "pure NumPy"
        return f"<juicepy backend 'numpy' ({c_paths})>"

    def _same(self, op, *arrays):
        check_same(self.name, op, *arrays)

    # ---------------------------------------------------------------- memory
    def empty(self, shape, dtype=np.float32):
        self.allocations += 1
        return _aligned(np.empty, shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        self.allocations += 1
        return _aligned(np.zeros, shape, dtype)

    def from_host(self, host):
        self.allocations += 1
        host = np.asarray(host)
        out = _aligned(np.empty, host.shape, host.dtype)
        np.copyto(out, host)
        return out

    def write(self, dst, host):
        host = np.asarray(host)
        if host.size != dst.size:
            raise ValueError(f"numpy backend write: {host.size} values for an array of {dst.size}")
        if not np.can_cast(host.dtype, dst.dtype, "same_kind"):
            raise TypeError(f"numpy backend write: {host.dtype} values into a {dst.dtype} array")
        _copy_over_lanes(host.reshape(dst.shape), dst)

    def to_host(self, src):
        return np.array(src, copy=True)

    def copy(self, src, dst):
        if src.size != dst.size:
            raise ValueError(f"numpy backend copy: {src.shape} into {dst.shape}")
        _copy_over_lanes(src if src.shape == dst.shape else src.reshape(dst.shape), dst)

    def fill(self, dst, value):
        dst.fill(value)

    def reshape(self, arr, shape):
        try:
            return spatial._view(arr, shape)  # raises rather than copying when a view is impossible
        except ValueError as exc:
            raise ValueError(f"numpy backend reshape: no view of {arr.shape} (strides {arr.strides}) "
                             f"as {tuple(shape)}: {exc}") from None

    def flat_view(self, flat, offset, shape):
        check_view(self.name, flat, offset, shape)
        return self.reshape(flat[offset:offset + math.prod(shape)], shape)

    def is_array(self, x):
        return isinstance(x, np.ndarray)

    # ------------------------------------------------------------ arithmetic
    def _into(self, out, accumulate, ws, tag="acc"):
        """Where an op writes its result: ``out`` itself, or a scratch to add afterwards."""
        return _scratch(ws, self, tag, out.shape, out.dtype) if accumulate else out

    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        m, n, k = check_gemm(self.name, a, b, out, trans_a, trans_b)
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        if self.blas_gemm is not None:
            self._gemm_on_entry(a, b, out, alpha, beta, m, n, k)
            return
        tmp = None if beta == 0.0 else _scratch(ws, self, "gemm", out.shape, out.dtype)

        def rows(lo, hi, lane=0):
            dst = out[lo:hi] if tmp is None else tmp[lo:hi]
            np.matmul(a[lo:hi], b, out=dst)
            if alpha != 1.0:
                dst *= alpha
            if tmp is not None:
                if beta != 1.0:
                    out[lo:hi] *= beta
                out[lo:hi] += dst

        if m * n * k < GEMM_SPLIT_MIN or m < 2 * GEMM_SPLIT_ROWS:
            with _gemm_threads(m, n, k):  # one BLAS thread for a small product
                rows(0, m)
            return
        # Big products run as row ranges on the backend's own lanes, each with a single-threaded
        # BLAS: BLAS's own worker threads keep spinning for a long while after each call and
        # would take a core from the fused kernels that split over the lanes (the recurrent
        # sequences), which then run at a fraction of their speed.
        pieces = max(1, m // GEMM_SPLIT_ROWS)
        _run_gemm_pieces(pieces, lambda lo, hi, lane: rows(m * lo // pieces, m * hi // pieces))

    def _gemm_on_entry(self, a, b, out, alpha, beta, m, n, k):
        """gemm through the C entry (blas.py). A product past LANE_GEMM_MIN splits inside the C
        call over the lanes (_lane_pool.h), each on a single-threaded BLAS: OpenBLAS's threads
        would spin on after it and take a core from the next ops' lanes (docs/numpy.md, session
        40). It splits by
        columns of b where a has few rows or b has many more columns (each lane then packs all
        of a, the smaller operand), else by rows (each lane packs all of b); inside a lane it runs
        on this thread alone (the other lanes have the cores). A product whose layout BLAS
        cannot take runs on np.matmul."""
        lanes = 1 if _in_lane() else _gemm_lanes()
        if m * n * k <= LANE_GEMM_MIN or lanes == 1:
            with _gemm_threads(m, n, k):
                if not self.blas_gemm(a, b, out, alpha, beta):
                    _matmul_into(a, b, out, alpha, beta)
            return
        by_columns = n >= 2 * GEMM_SPLIT_COLS and (m <= GEMM_COLUMN_SPLIT_MAX_ROWS or n >= 4 * m)
        with _single_threaded_blas():
            # one piece per lane: smaller dealt pieces (2 or 4 per lane) repacked the operands
            # for no gain (docs/numpy.md, session 40)
            if not self.blas_gemm(a, b, out, alpha, beta, lanes, by_columns):
                _matmul_into(a, b, out, alpha, beta)

    def add(self, a, b, out, relu=False):
        self._same("add", a, b, out)
        c = self.cpu_kernels
        # one thread: a memory-bound pass split over lanes ran slower at a ResNet's sizes (docs/numpy.md)
        if relu and c is not None and a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous:
            c.add(a.reshape(-1), b.reshape(-1), out.reshape(-1), True)
            return
        np.add(a, b, out=out)
        if relu:
            np.maximum(out, 0, out=out)

    def scale(self, x, alpha, out):
        self._same("scale", x, out)
        np.multiply(x, alpha, out=out)

    def mul(self, a, b, out, accumulate=False, ws=None):
        self._same("mul", a, b, out)
        if accumulate:
            tmp = _scratch(ws, self, "mul", out.shape, out.dtype)
            np.multiply(a, b, out=tmp)
            out += tmp
        else:
            np.multiply(a, b, out=out)

    def add_bias(self, out, bias):
        if bias.shape != (out.shape[1],):
            raise ValueError(f"numpy backend add_bias: bias must have shape ({out.shape[1]},), got {bias.shape}")
        if not spatial.add_bias(self, out, bias):
            out += bias.reshape(spatial.channel_shape(out))

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        if dbias.shape != (dy.shape[1],):
            raise ValueError(f"numpy backend bias_grad: dbias must have shape ({dy.shape[1]},), got {dbias.shape}")
        if spatial.bias_grad(self, dy, dbias, accumulate):
            return
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
        self._same("relu", x, out)
        c = self.cpu_kernels
        if c is not None and x.flags.c_contiguous and out.flags.c_contiguous:
            xs, outs = x.reshape(-1), out.reshape(-1)
            _run_lanes(xs.size, 1, lambda lo, hi, k: c.relu(xs[lo:hi], outs[lo:hi]))
            return
        np.maximum(x, 0, out=out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("relu_backward", y, dy, dx)
        c = self.cpu_kernels
        if c is not None and y.flags.c_contiguous and dy.flags.c_contiguous and dx.flags.c_contiguous:
            ys, dys, dxs = y.reshape(-1), dy.reshape(-1), dx.reshape(-1)
            _run_lanes(ys.size, 1, lambda lo, hi, k: c.relu_backward(ys[lo:hi], dys[lo:hi], dxs[lo:hi], accumulate))
            return
        self._mask_product(lambda m: np.greater(y, 0, out=m), dy, dx, accumulate, ws)

    def leaky_relu(self, x, out, slope):
        self._same("leaky_relu", x, out)
        np.multiply(x, slope, out=out)
        # slope * x is the smaller of the two for x < 0 exactly when slope <= 1
        (np.maximum if slope <= 1 else np.minimum)(x, out, out=out)

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._same("leaky_relu_backward", x, dy, dx)
        self._mask_product(lambda m: np.greater(x, 0, out=m), dy, dx, accumulate, ws, slope)

    def sigmoid(self, x, out):
        self._same("sigmoid", x, out)
        # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x))
        np.multiply(x, 0.5, out=out)
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("sigmoid_backward", y, dy, dx)
        target = self._into(dx, accumulate, ws)
        np.subtract(1.0, y, out=target)
        target *= y
        target *= dy
        if accumulate:
            dx += target

    def tanh(self, x, out):
        self._same("tanh", x, out)
        np.tanh(x, out=out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("tanh_backward", y, dy, dx)
        target = self._into(dx, accumulate, ws)
        np.multiply(y, y, out=target)
        np.subtract(1.0, target, out=target)
        target *= dy
        if accumulate:
            dx += target

    def _rows(self, op, *arrays):
        if arrays[0].ndim != 2:
            raise ValueError(f"numpy backend {op}: (rows, classes) expected, got {arrays[0].shape}")
        self._same(op, *arrays)

    def _row_scratch(self, ws, tag, x):
        return _scratch(ws, self, tag, (x.shape[0], 1), x.dtype)

    def _softmax_rows(self, x, out, ws):
        """out = softmax of each row of x (shifted by the row max, so exp never overflows);
        returns the (rowmax, rowsum) scratch columns, which the cross-entropy reuses."""
        rowmax = self._row_scratch(ws, "rowmax", x)
        np.max(x, axis=1, keepdims=True, out=rowmax)
        np.subtract(x, rowmax, out=out)
        np.exp(out, out=out)
        rowsum = self._row_scratch(ws, "rowsum", x)
        np.sum(out, axis=1, keepdims=True, out=rowsum)
        out /= rowsum
        return rowmax, rowsum

    def softmax(self, x, out, ws=None):
        self._rows("softmax", x, out)
        self._softmax_rows(x, out, ws)

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._rows("softmax_backward", y, dy, dx)
        target = self._into(dx, accumulate, ws)
        np.multiply(dy, y, out=target)
        dot = self._row_scratch(ws, "rowsum", y)
        np.sum(target, axis=1, keepdims=True, out=dot)
        np.subtract(dy, dot, out=target)
        target *= y
        if accumulate:
            dx += target

    def log_softmax(self, x, out, ws=None):
        self._rows("log_softmax", x, out)
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
        self._rows("log_softmax_backward", y, dy, dx)
        target = self._into(dx, accumulate, ws)
        np.exp(y, out=target)
        total = self._row_scratch(ws, "rowsum", y)
        np.sum(dy, axis=1, keepdims=True, out=total)
        target *= total
        np.subtract(dy, target, out=target)
        if accumulate:
            dx += target

    # ----------------------------------------------------------------- losses
    def _check_labels(self, op, x, labels, losses, dx):
        self._rows(op, x, dx)
        rows = x.shape[0]
        if labels.dtype != np.int32 or labels.shape != (rows,):
            raise ValueError(f"numpy backend {op}: labels must be int32 of shape ({rows},), "
                             f"got {labels.dtype} {labels.shape}")
        if losses.shape != (rows,):
            raise ValueError(f"numpy backend {op}: losses must have shape ({rows},), got {losses.shape}")

    def _label_index(self, ws, labels, classes):
        """Flat indices i*C + labels[i] of the labelled entries (a cached int buffer)."""
        n = labels.shape[0]
        index = _scratch(ws, self, "label_index", (n,), np.intp)
        offsets = _scratch(ws, self, "row_offsets", (n,), np.intp,
                           lambda buf: np.multiply(np.arange(n), classes, out=buf))
        np.add(offsets, labels, out=index)
        return index

    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale, ws=None):
        self._check_labels("softmax_cross_entropy", logits, labels, losses, dx)
        rowmax, rowsum = self._softmax_rows(logits, dx, ws)
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
        self._check_labels("nll_loss", logp, labels, losses, dx)
        index = self._label_index(ws, labels, logp.shape[1])
        np.take(logp.reshape(-1), index, out=losses)
        np.negative(losses, out=losses)
        dx.fill(0.0)
        np.put(dx.reshape(-1), index, -grad_scale)

    def mse_loss(self, pred, target, losses, dx, grad_scale, ws=None):
        self._same("mse_loss", pred, target, dx)
        if losses.shape != pred.shape[:1]:
            raise ValueError(f"numpy backend mse_loss: losses must have shape {pred.shape[:1]}, got {losses.shape}")
        np.subtract(pred, target, out=dx)
        sq = _scratch(ws, self, "sq", dx.shape, dx.dtype)
        np.multiply(dx, dx, out=sq)
        np.sum(sq.reshape(sq.shape[0], -1), axis=1, out=losses)
        dx *= 2.0 * grad_scale

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        self._same("dropout", x, out, mask)
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
                   weight_decay, first_step, ws=None, guard=None):
        if guard is not None and not host_all_finite(guard):
            return
        self._same("sgd_update", param, grad, *([buf] if momentum != 0.0 else []))
        p_all, g_all = param.reshape(-1), grad.reshape(-1)
        b_all = buf.reshape(-1) if buf is not None else None
        c = self.cpu_kernels
        if c is not None:
            _split(p_all.size, lambda lo, hi: c.sgd(
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
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None, guard=None):
        if guard is not None and not host_all_finite(guard):
            return
        self._same("adam_update", param, grad, exp_avg, exp_avg_sq,
                   *([max_exp_avg_sq] if max_exp_avg_sq is not None else []))
        p_all, g_all = param.reshape(-1), grad.reshape(-1)
        m_all, v_all = exp_avg.reshape(-1), exp_avg_sq.reshape(-1)
        vmax_all = max_exp_avg_sq.reshape(-1) if max_exp_avg_sq is not None else None
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
        # torch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps); the same with one pass fewer:
        step_size = lr / bias_correction1 * bias_correction2_sqrt
        eps_scaled = eps * bias_correction2_sqrt
        c = self.cpu_kernels
        if c is not None:
            l2 = 0.0 if decoupled else weight_decay
            shrink = 1.0 - lr * weight_decay if decoupled else 1.0
            _split(p_all.size, lambda lo, hi: c.adam(
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
    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None, bias=None, norm=None, relu=False,
               residual=None):
        stride, dilation = check_conv_shapes(self.name, "conv2d", x.shape, w.shape, out.shape, stride, padding,
                                             dilation, groups)
        check_conv_epilogue(self.name, out, bias, norm, residual)
        spatial.conv2d(self, x, w, out, stride, padding, dilation, groups, ws, bias, norm, relu, residual)

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        stride, dilation = check_conv_shapes(self.name, "conv2d_backward_data", dx.shape, w.shape, dy.shape,
                                             stride, padding, dilation, groups)
        spatial.conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups, accumulate, ws)

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
        stride, dilation = check_conv_shapes(self.name, "conv2d_backward_filter", x.shape, dw.shape, dy.shape,
                                             stride, padding, dilation, groups)
        spatial.conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups, accumulate, ws)

    # ---------------------------------------------------------------- pooling
    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None):
        stride = check_pool_shapes(self.name, "max_pool2d", x.shape, out.shape, kernel, stride, padding)
        check_argmax(self.name, "max_pool2d", argmax, out.shape)
        spatial.max_pool2d(self, x, out, argmax, kernel, stride, padding, ws)

    def max_pool2d_backward(self, dy, argmax, dx, kernel, stride, padding, accumulate=False, ws=None):
        check_pool_shapes(self.name, "max_pool2d_backward", dx.shape, dy.shape, kernel, stride, padding)
        check_argmax(self.name, "max_pool2d_backward", argmax, dy.shape)
        spatial.max_pool2d_backward(self, dy, argmax, dx, accumulate, ws)

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        stride = check_pool_shapes(self.name, "avg_pool2d", x.shape, out.shape, kernel, stride, padding)
        spatial.avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad, ws)

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        stride = check_pool_shapes(self.name, "avg_pool2d_backward", dx.shape, dy.shape, kernel, stride, padding)
        spatial.avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad,
                                       accumulate, ws)

    # ------------------------------------------------------------ batch norm
    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None, relu=False):
        self._same("batch_norm_train", x, out)
        check_per_channel(self.name, "batch_norm_train", x, gamma, beta, mean, invstd, running_mean, running_var)
        spatial.batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean,
                                 running_var, momentum, eps, ws, relu)

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None, relu=False):
        self._same("batch_norm_infer", x, out)
        check_per_channel(self.name, "batch_norm_infer", x, gamma, beta, running_mean, running_var)
        spatial.batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws, relu)

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None, relu_out=None):
        self._same("batch_norm_backward", x, dy, *([dx] if dx is not None else []),
                   *([relu_out] if relu_out is not None else []))
        check_per_channel(self.name, "batch_norm_backward", x, gamma, mean, invstd, dgamma, dbeta)
        spatial.batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                                    accumulate_dx, accumulate_params, ws, relu_out)

    def batch_norm_sums(self, x, shift, sums, ws=None):
        check_per_channel(self.name, "batch_norm_sums", x, shift)
        check_batch_norm_sums(self.name, "batch_norm_sums", sums, x.shape[1])
        spatial.batch_norm_sums(self, x, shift, sums, ws)

    def batch_norm_stats(self, sums, count, shift, mean, invstd, running_mean, running_var, momentum, eps,
                         ws=None):
        check_batch_norm_sums(self.name, "batch_norm_stats", sums, mean.shape[0], shift, invstd, running_mean,
                              running_var)
        spatial.batch_norm_stats(self, sums, count, shift, mean, invstd, running_mean, running_var, momentum,
                                 eps, ws)

    def batch_norm_apply(self, x, gamma, beta, mean, invstd, out, ws=None):
        self._same("batch_norm_apply", x, out)
        check_per_channel(self.name, "batch_norm_apply", x, gamma, beta, mean, invstd)
        spatial.batch_norm_apply(self, x, gamma, beta, mean, invstd, out, ws)

    def batch_norm_backward_reduce(self, x, dy, mean, invstd, sums, dgamma=None, dbeta=None,
                                   accumulate_params=False, ws=None):
        self._same("batch_norm_backward_reduce", x, dy)
        check_per_channel(self.name, "batch_norm_backward_reduce", x, mean, invstd, dgamma, dbeta)
        check_batch_norm_sums(self.name, "batch_norm_backward_reduce", sums, x.shape[1])
        spatial.batch_norm_backward_reduce(self, x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params, ws)

    def batch_norm_backward_data(self, x, dy, gamma, mean, invstd, sums, count, dx, accumulate=False, ws=None):
        self._same("batch_norm_backward_data", x, dy, dx)
        check_per_channel(self.name, "batch_norm_backward_data", x, gamma, mean, invstd)
        check_batch_norm_sums(self.name, "batch_norm_backward_data", sums, x.shape[1])
        spatial.batch_norm_backward_data(self, x, dy, gamma, mean, invstd, sums, count, dx, accumulate, ws)

    # ------------------------------------------------------------ sequences
    # The kernels live in recurrent.py.
    def swap_leading_axes(self, src, dst, accumulate=False):
        check_swap(self.name, src, dst)
        recurrent.swap_leading_axes(self, src, dst, accumulate)

    def embedding(self, indices, weight, out):
        check_embedding(self.name, "embedding", indices, weight, out)
        recurrent.embedding(self, indices, weight, out)

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None):
        check_embedding(self.name, "embedding_backward", indices, dweight, dy)
        recurrent.embedding_backward(self, indices, dy, dweight, padding_idx, accumulate, ws)

    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity):
        check_nonlinearity(self.name, nonlinearity)
        check_cell(self.name, "rnn_cell", h, {1: [xw, hw, h]}, bias_hh, 1)
        recurrent.rnn_cell(self, xw, hw, bias_hh, h, nonlinearity)

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None):
        check_cell(self.name, "lstm_cell", c, {1: [c_prev, c, h], 4: [xw, hw, gates]}, bias_hh, 4)
        recurrent.lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws)

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None):
        check_cell(self.name, "lstm_cell_backward", c, {1: [c_prev, c, dh, dc, dc_prev], 4: [gates, dgates]})
        recurrent.lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws)

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None):
        check_cell(self.name, "gru_cell", h, {1: [h_prev, h], 3: [xw, hw], 4: [gates]}, bias_hh, 3)
        recurrent.gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws)

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None):
        check_cell(self.name, "gru_cell_backward", h_prev, {1: [h_prev, dh, dh_prev], 3: [dxw, dhw], 4: [gates]})
        recurrent.gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws)

    # The whole recurrence in one C call where it can run there (float32, contiguous operands,
    # kernels built); otherwise base.py's composition of gemm and the cell ops above.
    def lstm_sequence(self, xw, w_hh, bias_hh, h, c, gates, reverse=False, ws=None):
        check_sequence(self.name, "lstm_sequence", w_hh, h, {1: [c[1:]], 4: [xw, gates]}, bias_hh)
        if not recurrent.sequence(self, False, xw, w_hh, bias_hh, h, c, gates, reverse, ws):
            super().lstm_sequence(xw, w_hh, bias_hh, h, c, gates, reverse, ws)

    def lstm_sequence_backward(self, w_hh, gates, c, dout, offset, dgates, reverse=False, ws=None):
        check_sequence(self.name, "lstm_sequence_backward", w_hh, c, {4: [gates, dgates]}, dout=dout, offset=offset)
        if not recurrent.sequence_backward(self, False, w_hh, gates, c, dout, offset, dgates, None, reverse, ws):
            super().lstm_sequence_backward(w_hh, gates, c, dout, offset, dgates, reverse, ws)

    def gru_sequence(self, xw, w_hh, bias_hh, h, gates, reverse=False, ws=None):
        check_sequence(self.name, "gru_sequence", w_hh, h, {3: [xw], 4: [gates]}, bias_hh)
        if not recurrent.sequence(self, True, xw, w_hh, bias_hh, h, None, gates, reverse, ws):
            super().gru_sequence(xw, w_hh, bias_hh, h, gates, reverse, ws)

    def lstm_input_sequence(self, x, w_ih, w_hh, bias, h, c, gates, reverse=False, ws=None, batch_first=False):
        check_input_sequence(self.name, "lstm_input_sequence", x, w_ih, w_hh, h, gates, bias, c=c, lstm=True,
                             batch_first=batch_first)
        if not recurrent.input_sequence(self, False, x, w_ih, None, w_hh, bias, h, c, gates, reverse, batch_first,
                                        ws):
            super().lstm_input_sequence(x, w_ih, w_hh, bias, h, c, gates, reverse, ws, batch_first)

    def gru_input_sequence(self, x, w_ih, bias_ih, w_hh, bias_hh, h, gates, reverse=False, ws=None,
                           batch_first=False):
        check_input_sequence(self.name, "gru_input_sequence", x, w_ih, w_hh, h, gates, bias_hh, bias_ih,
                             batch_first=batch_first)
        if not recurrent.input_sequence(self, True, x, w_ih, bias_ih, w_hh, bias_hh, h, None, gates, reverse,
                                        batch_first, ws):
            super().gru_input_sequence(x, w_ih, bias_ih, w_hh, bias_hh, h, gates, reverse, ws, batch_first)

    def lstm_input_sequence_backward(self, x, w_hh, gates, h, c, dout, offset, dw_ih, dw_hh, dbias, dgates=None,
                                     reverse=False, ws=None, batch_first=False):
        check_sequence(self.name, "lstm_input_sequence_backward", w_hh, c,
                       {1: [h[1:]], 4: [gates] + ([dgates] if dgates is not None else [])},
                       dout=None if batch_first else dout, offset=offset)
        check_input_sequence_backward(self.name, "lstm_input_sequence_backward", x, w_hh, h, dw_ih, dw_hh, [dbias],
                                      dout, offset, batch_first)
        if not recurrent.input_sequence_backward(self, False, x, w_hh, gates, h, c, dout, offset, dw_ih, dw_hh,
                                                 dbias, None, dgates, reverse, batch_first, ws):
            super().lstm_input_sequence_backward(x, w_hh, gates, h, c, dout, offset, dw_ih, dw_hh, dbias, dgates,
                                                 reverse, ws, batch_first)

    def gru_input_sequence_backward(self, x, w_hh, gates, h, dout, offset, dw_ih, dw_hh, dbias_ih, dbias_hh,
                                    dxw=None, reverse=False, ws=None, batch_first=False):
        check_sequence(self.name, "gru_input_sequence_backward", w_hh, h,
                       {4: [gates], 3: [dxw] if dxw is not None else []}, dout=None if batch_first else dout,
                       offset=offset)
        check_input_sequence_backward(self.name, "gru_input_sequence_backward", x, w_hh, h, dw_ih, dw_hh,
                                      [dbias_ih, dbias_hh], dout, offset, batch_first)
        if not recurrent.input_sequence_backward(self, True, x, w_hh, gates, h, None, dout, offset, dw_ih, dw_hh,
                                                 dbias_hh, dbias_ih, dxw, reverse, batch_first, ws):
            super().gru_input_sequence_backward(x, w_hh, gates, h, dout, offset, dw_ih, dw_hh, dbias_ih, dbias_hh,
                                                dxw, reverse, ws, batch_first)

    def gru_sequence_backward(self, w_hh, gates, h, dout, offset, dxw, dhw, reverse=False, ws=None):
        check_sequence(self.name, "gru_sequence_backward", w_hh, h, {3: [dxw, dhw], 4: [gates]}, dout=dout,
                       offset=offset)
        if not recurrent.sequence_backward(self, True, w_hh, gates, h, dout, offset, dxw, dhw, reverse, ws):
            super().gru_sequence_backward(w_hh, gates, h, dout, offset, dxw, dhw, reverse, ws)

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "copy_channels", src, dst, offset)
        self.store(src, dst[:, offset:offset + src.shape[1]], accumulate)

    def slice_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "slice_channels", dst, src, offset)
        self.store(src[:, offset:offset + dst.shape[1]], dst, accumulate)
