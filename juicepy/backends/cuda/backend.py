"""The CUDA backend on CuPy: cuBLAS GEMM and juicepy's own fused kernels (kernels/*.cu).

Every op writes into the buffers it is given and launches its kernels on CuPy's current
stream; temporaries come from the caller's Workspace, so a training step allocates nothing and
can be captured as a CUDA graph (:meth:`CudaBackend.capture`). Arrays must be C-contiguous
(every buffer a Context hands out is).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .. import rng
from ..base import (Backend, BackendUnavailable, channels_inner, check_cell, check_embedding, check_nonlinearity,
                    check_swap, check_channel_range, check_gemm, check_same,
                    check_view, scratch)
from .capture import GraphCapture
from . import device
from .device import (BLOCK, CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_POINTER_MODE_HOST, INSTALL_HINT, MAX_BLOCKS,
                     NULL, device_index, import_cupy)
from .kernels import KernelSet, real_type
from .spatial import SpatialOps

def _row_block(cols: int) -> int:
    """Threads per row for the row-wise kernels: enough warps for the row, at most BLOCK."""
    block = 32
    while block < cols and block < BLOCK:
        block *= 2
    return block


class CudaBackend(SpatialOps, Backend):
    name = "cuda"
    dtypes = (np.float32, np.float64)
    can_capture = True

    def __init__(self) -> None:
        super().__init__()
        cupy = import_cupy()
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
            raise BackendUnavailable(f"cuda backend: no usable CUDA device ({exc}); a machine with an "
                                     f"NVIDIA GPU and driver is needed, and {INSTALL_HINT}") from exc
        if count < 1:
            raise BackendUnavailable(f"cuda backend: no CUDA device found; {INSTALL_HINT}")
        self.device_index = device_index(count)
        self._cp = cupy
        try:
            from cupy_backends.cuda.libs import cublas  # noqa: F401  (loads libcublas)
        except Exception as exc:  # the cuBLAS library of the CUDA toolkit is missing
            raise BackendUnavailable(f"cuda backend: cuBLAS cannot be loaded ({exc}); {INSTALL_HINT}") from exc
        self._cublas = device.cublas_api()
        self._graphs = GraphCapture(cupy, self)
        self.device = cupy.cuda.Device(self.device_index)
        self.device.use()
        self.sm_count = int(self.device.attributes["MultiProcessorCount"])
        self._kernels: dict = {}
        # one lock for building a dtype's kernel set, another for all_finite's flag: with one,
        # all_finite (holding it) deadlocked on the first launch of a dtype not built yet
        self._kernels_lock = threading.Lock()
        self._flag_lock = threading.Lock()
        try:
            self._kernel_set(np.float32).compile()
            self._zero_shift = cupy.zeros((1,), np.int64)
            self._finite_flag = cupy.empty((1,), np.int32)
        except Exception as exc:  # NVRTC missing, or the device cannot run the kernels
            raise BackendUnavailable(f"cuda backend: kernels cannot be built or loaded on device "
                                     f"{self.device_index} ({exc}); {INSTALL_HINT}") from exc
        self.allocations += 2

    def __repr__(self) -> str:
        return f"<juicepy backend 'cuda' device {self.device_index}>"

    # ------------------------------------------------------------- plumbing
    def _kernel_set(self, dtype) -> KernelSet:
        key = np.dtype(dtype)
        ks = self._kernels.get(key)
        if ks is None:
            with self._kernels_lock:
                ks = self._kernels.get(key)
                if ks is None:
                    ks = self._kernels[key] = KernelSet(self._cp, key)
        return ks

    def _launch(self, dtype, name, threads, args, block=BLOCK, grid=None):
        """Run kernel ``name`` of dtype's module over ``threads`` elements (grid-stride)."""
        if grid is None:
            if threads <= 0:
                return
            grid = min(-(-threads // block), MAX_BLOCKS)
        elif grid <= 0:
            return
        for a in args:
            if isinstance(a, self._cp.ndarray) and not a.flags.c_contiguous:
                raise ValueError(f"cuda backend: {name} needs C-contiguous arrays, got strides {a.strides}")
        self._kernel_set(dtype).get(name)((grid,), (block,), args)

    @staticmethod
    def _real(dtype, value):
        return np.float32(value) if np.dtype(dtype) == np.float32 else np.float64(value)

    def _shift(self):
        """Where step-like kernel arguments read their shift: a zero, or the capture's buffer."""
        shift = self._graphs.shift
        return self._zero_shift if shift is None else shift

    def _same(self, op, *arrays):
        check_same(self.name, op, *arrays)

    # ---------------------------------------------------------------- memory
    def empty(self, shape, dtype=np.float32):
        self.allocations += 1
        with self.device:
            return self._cp.empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        self.allocations += 1
        with self.device:
            return self._cp.zeros(shape, dtype)

    def from_host(self, host):
        self.allocations += 1
        with self.device:
            return self._cp.array(np.ascontiguousarray(host), copy=True)

    def write(self, dst, host):
        host = np.asarray(host)
        if host.size != dst.size:
            raise ValueError(f"cuda backend write: {host.size} values for an array of {dst.size}")
        if not np.can_cast(host.dtype, dst.dtype, "same_kind"):
            raise TypeError(f"cuda backend write: cannot cast {host.dtype} to {dst.dtype}")
        dst.set(np.ascontiguousarray(host.reshape(dst.shape), dtype=dst.dtype))

    def to_host(self, src):
        return src.get()

    def copy(self, src, dst):
        if src.size != dst.size:
            raise ValueError(f"cuda backend copy: {src.shape} into {dst.shape}")
        self._cp.copyto(dst, src if src.shape == dst.shape else src.reshape(dst.shape))

    def fill(self, dst, value):
        dst.fill(value)

    def reshape(self, arr, shape):
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != arr.size:
            raise ValueError(f"cuda backend reshape: cannot view {arr.shape} as {shape}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"cuda backend reshape: array with strides {arr.strides} has no view of shape {shape}")
        return arr.reshape(shape)

    def flat_view(self, flat, offset, shape):
        check_view(self.name, flat, offset, shape)
        return flat[offset:offset + math.prod(shape)].reshape(shape)

    def is_array(self, x):
        return isinstance(x, self._cp.ndarray)

    def synchronize(self):
        self._cp.cuda.get_current_stream().synchronize()

    def release(self):
        """Free the memory pools' cached blocks (arrays still referenced stay)."""
        self.synchronize()
        self._cp.get_default_memory_pool().free_all_blocks()
        self._cp.get_default_pinned_memory_pool().free_all_blocks()

    # ------------------------------------------------------------ arithmetic
    @staticmethod
    def _ld(a, what):
        """Row stride (in elements) of a 2-D array whose rows are contiguous."""
        item = a.dtype.itemsize
        if a.shape[1] > 1 and a.strides[1] != item:
            raise ValueError(f"cuda backend gemm: {what} needs contiguous rows, got strides {a.strides}")
        return max(a.strides[0] // item if a.shape[0] > 1 else a.shape[1], a.shape[1], 1)

    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        m, n, k = check_gemm(self.name, a, b, out, trans_a, trans_b)
        if m == 0 or n == 0:
            return
        if k == 0:  # cuBLAS would scale by beta; do it explicitly for clarity
            self.scale(out, beta, out)
            return
        cublas = self._cublas
        real_type(out.dtype)  # a TypeError for dtypes other than float32 and float64
        scalars = np.array([alpha, beta], out.dtype)  # host pointer mode: read during the call
        handle = self._cp.cuda.device.get_cublas_handle()
        cublas.set_stream(handle, self._cp.cuda.get_current_stream().ptr)
        if self._graphs.shift is not None:
            # while capturing: a fixed workspace, so cuBLAS records no allocation into the graph
            # (set_stream above put the handle back on its default workspace)
            buffer = self._graphs.cublas_workspace
            cublas.set_workspace(handle, buffer.data.ptr, buffer.nbytes)
        cublas.set_pointer_mode(handle, CUBLAS_POINTER_MODE_HOST)
        # Row-major out = op(a) @ op(b) is column-major out^T = op(b)^T @ op(a)^T.
        cublas.gemm(out.dtype.type, handle, CUBLAS_OP_T if trans_b else CUBLAS_OP_N,
                    CUBLAS_OP_T if trans_a else CUBLAS_OP_N, n, m, k,
                    scalars.ctypes.data, b.data.ptr, self._ld(b, "b"), a.data.ptr, self._ld(a, "a"),
                    scalars.ctypes.data + scalars.itemsize, out.data.ptr, self._ld(out, "out"))

    def add(self, a, b, out, relu=False):
        self._same("add", a, b, out)
        self._launch(out.dtype, "add_arrays", out.size, (a, b, out, np.int64(out.size), np.int32(relu)))

    def scale(self, x, alpha, out):
        self._same("scale", x, out)
        self._launch(out.dtype, "scale_array", out.size, (x, self._real(out.dtype, alpha), out, np.int64(out.size)))

    def mul(self, a, b, out, accumulate=False, ws=None):
        self._same("mul", a, b, out)
        self._launch(out.dtype, "mul_arrays", out.size, (a, b, out, np.int64(out.size), np.int32(accumulate)))

    def add_bias(self, out, bias):
        _, c, inner = channels_inner(out)
        if bias.shape != (c,) or bias.dtype != out.dtype:
            raise ValueError(f"cuda backend add_bias: bias of {bias.dtype} {bias.shape} for {c} channels of {out.dtype}")
        self._launch(out.dtype, "add_bias", out.size,
                     (out, bias, np.int64(out.size), np.int64(c), np.int64(inner)))

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        n, c, inner, chunks, chunk = self._chunks(dy)
        if dbias.shape != (c,) or dbias.dtype != dy.dtype:
            raise ValueError(f"cuda backend bias_grad: dbias of {dbias.dtype} {dbias.shape} for {c} channels of {dy.dtype}")
        acc = np.int32(accumulate)
        if inner == 1:  # (N, C): column sums, up to 32 warps of rows a block
            warps = 1
            while warps < n and warps < 32:
                warps *= 2
            self._launch(dy.dtype, "bias_grad_columns", 0, (dy, dbias, np.int64(n), np.int64(c), acc),
                         block=32 * warps, grid=min(-(-c // 32), MAX_BLOCKS))
            return
        if chunks == 1:  # one block per channel, as many threads as its values need (no idle warps)
            self._launch(dy.dtype, "bias_grad", 0, (dy, dbias, np.int64(n), np.int64(c), np.int64(inner), acc),
                         block=_row_block(n * inner), grid=c)
            return
        partials = scratch(ws, self, "channel_partials", (c, chunks), dy.dtype)
        self._launch(dy.dtype, "bias_grad_partials", 0,
                     (dy, partials, np.int64(n), np.int64(c), np.int64(inner), np.int64(chunks), np.int64(chunk)),
                     grid=c * chunks)
        self._launch(dy.dtype, "bias_grad_combine", 32 * c, (partials, dbias, np.int64(c), np.int64(chunks), acc))

    def sum_all(self, x, out):
        self._launch(x.dtype, "sum_all", 0, (x, out, np.int64(x.size)), grid=1)

    def all_finite(self, x):
        if x.size == 0:
            return True
        with self._flag_lock:
            flag = self._finite_flag
            flag.fill(1)
            self._launch(x.dtype, "check_finite", x.size, (x, flag, np.int64(x.size)))
            return bool(int(flag.get()[0]))

    # ------------------------------------------------------------ activations
    def _unary(self, op, x, out):
        """Forward activation ``op`` through its kernel ``<op>_forward``; errors name the op."""
        self._same(op, x, out)
        self._launch(out.dtype, f"{op}_forward", out.size, (x, out, np.int64(out.size)))

    def _backward(self, name, y, dy, dx, accumulate, *extra):
        self._same(name, y, dy, dx)
        self._launch(dx.dtype, name, dx.size, (y, dy, dx, np.int64(dx.size)) + extra + (np.int32(accumulate),))

    def relu(self, x, out):
        self._unary("relu", x, out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("relu_backward", y, dy, dx, accumulate)

    def leaky_relu(self, x, out, slope):
        self._same("leaky_relu", x, out)
        self._launch(out.dtype, "leaky_relu_forward", out.size,
                     (x, out, np.int64(out.size), self._real(out.dtype, slope)))

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._backward("leaky_relu_backward", x, dy, dx, accumulate, self._real(dx.dtype, slope))

    def sigmoid(self, x, out):
        self._unary("sigmoid", x, out)

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("sigmoid_backward", y, dy, dx, accumulate)

    def tanh(self, x, out):
        self._unary("tanh", x, out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("tanh_backward", y, dy, dx, accumulate)

    def _rows(self, name, x, args, trailing=()):
        """One block per row of x: kernel(*args, cols, *trailing)."""
        rows, cols = x.shape
        self._launch(x.dtype, name, 0, args + (np.int64(cols),) + trailing, block=_row_block(cols), grid=rows)

    def softmax(self, x, out, ws=None):
        self._same("softmax", x, out)
        self._rows("softmax_forward", x, (x, out))

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("softmax_backward", y, dy, dx)
        self._rows("softmax_backward", y, (y, dy, dx), (np.int32(accumulate),))

    def log_softmax(self, x, out, ws=None):
        self._same("log_softmax", x, out)
        self._rows("log_softmax_forward", x, (x, out))

    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("log_softmax_backward", y, dy, dx)
        self._rows("log_softmax_backward", y, (y, dy, dx), (np.int32(accumulate),))

    # ----------------------------------------------------------------- losses
    def _labels(self, labels, rows, what):
        if labels.dtype != np.int32 or labels.shape != (rows,):
            raise ValueError(f"cuda backend {what}: labels must be int32 of shape ({rows},), "
                             f"got {labels.dtype} {labels.shape}")
        return labels

    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale, ws=None):
        rows, cols = logits.shape
        self._same("softmax_cross_entropy", logits, dx)
        labels = self._labels(labels, rows, "softmax_cross_entropy")
        self._launch(logits.dtype, "softmax_cross_entropy", 0,
                     (logits, labels, losses, dx, np.int64(cols), self._real(dx.dtype, grad_scale)),
                     block=_row_block(cols), grid=rows)

    def nll_loss(self, logp, labels, losses, dx, grad_scale, ws=None):
        rows, cols = logp.shape
        self._same("nll_loss", logp, dx)
        labels = self._labels(labels, rows, "nll_loss")
        self._launch(logp.dtype, "nll_loss", logp.size,
                     (logp, labels, losses, dx, np.int64(rows), np.int64(cols), self._real(dx.dtype, grad_scale)))

    def mse_loss(self, pred, target, losses, dx, grad_scale, ws=None):
        self._same("mse_loss", pred, target, dx)
        rows = pred.shape[0]
        if losses.shape != (rows,):
            raise ValueError(f"cuda backend mse_loss: losses must have shape ({rows},), got {losses.shape}")
        cols = pred.size // rows if rows else 0
        self._launch(pred.dtype, "mse_loss", 0,
                     (pred, target, losses, dx, np.int64(cols), self._real(dx.dtype, 2.0 * grad_scale)),
                     block=_row_block(cols), grid=rows)

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        """The counter read at run time is ``counter + shift`` (shift: 0, or a replay's offset)."""
        self._same("dropout", x, out, mask)
        keep_scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0  # rounded to the dtype, as NumPy's mask *= scale
        self._launch(x.dtype, "dropout_forward", x.size,
                     (x, out, mask, np.int64(x.size), np.uint32(seed & 0xFFFFFFFF), np.int64(counter),
                      self._shift(), np.uint32(rng.keep_threshold(p)), self._real(x.dtype, keep_scale)))

    # -------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None, guard=None):
        self._same("sgd_update", param, grad)
        r = lambda v: self._real(param.dtype, v)  # noqa: E731
        use_momentum = momentum != 0.0
        self._launch(param.dtype, "sgd_update", param.size,
                     (param, grad, buf if use_momentum else NULL, np.int64(param.size), r(lr), r(momentum),
                      r(1.0 - dampening), np.int32(dampening != 0.0), np.int32(bool(nesterov)),
                      r(weight_decay), np.int32(weight_decay != 0.0), np.int32(use_momentum),
                      np.int32(bool(first_step)), NULL if guard is None else guard))

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None, guard=None):
        """The step read at run time is ``step + shift`` (see :meth:`dropout`)."""
        self._same("adam_update", param, grad, exp_avg, exp_avg_sq)
        self._launch(param.dtype, "adam_update", param.size,
                     (param, grad, exp_avg, exp_avg_sq, NULL if max_exp_avg_sq is None else max_exp_avg_sq,
                      np.int64(param.size), np.float64(lr), np.float64(beta1), np.float64(beta2),
                      self._real(param.dtype, eps), np.float64(weight_decay), np.int32(bool(decoupled)),
                      np.int64(step), self._shift(), NULL if guard is None else guard))

    # ------------------------------------------------------------ sequences
    def swap_leading_axes(self, src, dst, accumulate=False):
        check_swap(self.name, src, dst)
        rest = src.size // max(1, src.shape[0] * src.shape[1])
        self._launch(dst.dtype, "swap_leading_axes", dst.size,
                     (src, dst, np.int64(dst.size), np.int64(src.shape[0]), np.int64(src.shape[1]), np.int64(rest),
                      np.int32(accumulate)))

    def embedding(self, indices, weight, out):
        check_embedding(self.name, "embedding", indices, weight, out)
        self._launch(out.dtype, "embedding_gather", out.size,
                     (indices, weight, out, np.int64(out.size), np.int64(weight.shape[1])))

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None):
        check_embedding(self.name, "embedding_backward", indices, dweight, dy)
        vocab, dim = dweight.shape
        self._launch(dweight.dtype, "embedding_scatter", dim,
                     (indices, dy, dweight, np.int64(indices.size), np.int64(vocab), np.int64(dim),
                      np.int32(-1 if padding_idx is None else padding_idx), np.int32(accumulate)))

    def _cell(self, name, state, args):
        self._launch(state.dtype, name, state.size, args + (np.int64(state.size), np.int64(state.shape[1])))

    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity):
        check_nonlinearity(self.name, nonlinearity)
        check_cell(self.name, "rnn_cell", h, {1: [xw, hw, h]}, bias_hh, 1)
        self._launch(h.dtype, "rnn_cell", h.size,
                     (xw, hw, NULL if bias_hh is None else bias_hh, h, np.int64(h.size), np.int64(h.shape[1]),
                      np.int32(nonlinearity == "relu")))

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None):
        check_cell(self.name, "lstm_cell", c, {1: [c_prev, c, h], 4: [xw, hw, gates]}, bias_hh, 4)
        self._cell("lstm_cell", c, (xw, hw, NULL if bias_hh is None else bias_hh, c_prev, gates, c, h))

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None):
        check_cell(self.name, "lstm_cell_backward", c, {1: [c_prev, c, dh, dc, dc_prev], 4: [gates, dgates]})
        self._cell("lstm_cell_backward", c, (gates, c_prev, c, dh, dc, dgates, dc_prev))

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None):
        check_cell(self.name, "gru_cell", h, {1: [h_prev, h], 3: [xw, hw], 4: [gates]}, bias_hh, 3)
        self._cell("gru_cell", h, (xw, hw, NULL if bias_hh is None else bias_hh, h_prev, gates, h))

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None):
        check_cell(self.name, "gru_cell_backward", h_prev, {1: [h_prev, dh, dh_prev], 3: [dxw, dhw], 4: [gates]})
        self._cell("gru_cell_backward", h_prev, (gates, h_prev, dh, dxw, dhw, dh_prev))

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "copy_channels", src, dst, offset)
        n, c_src, inner = channels_inner(src)
        self._launch(src.dtype, "copy_channels", src.size,
                     (src, dst, np.int64(src.size), np.int64(c_src), np.int64(dst.shape[1]), np.int64(offset),
                      np.int64(inner), np.int32(accumulate)))

    def slice_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "slice_channels", dst, src, offset)
        n, c_dst, inner = channels_inner(dst)
        self._launch(dst.dtype, "slice_channels", dst.size,
                     (src, dst, np.int64(dst.size), np.int64(src.shape[1]), np.int64(c_dst), np.int64(offset),
                      np.int64(inner), np.int32(accumulate)))

    # ------------------------------------------------------------ CUDA graphs
    def capture(self, fn):
        """Record the device work of ``fn()`` as a CUDA graph (see capture.GraphCapture)."""
        return self._graphs.capture(fn)
