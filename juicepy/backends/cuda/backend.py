"""The CUDA backend on CuPy: cuBLAS GEMM and juicepy's own fused kernels (kernels/*.cu).

Every op writes into the buffers it is given and launches its kernels on CuPy's current
stream; temporaries come from the caller's Workspace, so a training step allocates nothing and
can be captured as a CUDA graph (:meth:`CudaBackend.capture`). Arrays must be C-contiguous
(every buffer a Context hands out is).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading

import numpy as np

from .. import rng
from ..base import Backend, BackendUnavailable, CaptureError
from .kernels import KernelSet, real_type

DEVICE_ENV_VAR = "JUICEPY_CUDA_DEVICE"
INSTALL_HINT = ("install CuPy for your CUDA toolkit: pip install 'juicepy[cuda12]' (CUDA 12.x) "
                "or 'juicepy[cuda13]' (CUDA 13.x)")
_BLOCK = 256
_MAX_BLOCKS = 65535 * 4  # grid-stride loops cover the rest
_NULL = np.uint64(0)  # a null pointer kernel argument
_CUBLAS_WORKSPACE_BYTES = 32 << 20  # what cuBLAS asks for on Hopper


def _cublas_set_workspace():
    """cublasSetWorkspace_v2 from the libcublas CuPy loaded (CuPy does not wrap it), or None."""
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            fn = ctypes.CDLL(name).cublasSetWorkspace_v2
        except (OSError, AttributeError):
            continue
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        fn.restype = ctypes.c_int
        return fn
    return None


def _import_cupy():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install failing inside the import
        raise BackendUnavailable(f"cuda backend: CuPy cannot be imported ({exc}); {INSTALL_HINT}") from exc
    return cupy


def _device_index(count: int) -> int:
    raw = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if not raw:
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise BackendUnavailable(f"cuda backend: ${DEVICE_ENV_VAR}={raw!r} is not a device number") from None
    if not 0 <= index < count:
        raise BackendUnavailable(f"cuda backend: ${DEVICE_ENV_VAR}={index} but this machine has "
                                 f"{count} CUDA device(s) (0..{count - 1})")
    return index


def _row_block(cols: int) -> int:
    """Threads per row for the row-wise kernels: enough warps for the row, at most _BLOCK."""
    block = 32
    while block < cols and block < _BLOCK:
        block *= 2
    return block


def _refuse_allocation(size):
    raise CaptureError(f"an op allocated {size} bytes of device memory while a CUDA graph was "
                       f"being captured (buffers must come from the context or its workspace)")


class _Captured:
    """A captured CUDA graph; ``replay(shift)`` runs it with step-like arguments advanced by shift."""

    def __init__(self, backend: "CudaBackend", graph, shift_buffer):
        self._backend = backend
        self._graph = graph
        self._shift = shift_buffer
        self._shift_value = 0

    def replay(self, shift: int = 0) -> None:
        if shift != self._shift_value:
            self._shift.set(np.array([shift], np.int64))
            self._shift_value = shift
        self._graph.launch()


class CudaBackend(Backend):
    name = "cuda"
    dtypes = (np.float32, np.float64)
    can_capture = True

    def __init__(self) -> None:
        super().__init__()
        cupy = _import_cupy()
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
            raise BackendUnavailable(f"cuda backend: no usable CUDA device ({exc}); a machine with an "
                                     f"NVIDIA GPU and driver is needed, and {INSTALL_HINT}") from exc
        if count < 1:
            raise BackendUnavailable(f"cuda backend: no CUDA device found; {INSTALL_HINT}")
        self.device_index = _device_index(count)
        self._cp = cupy
        try:
            from cupy_backends.cuda.libs import cublas
        except Exception as exc:  # the cuBLAS library of the CUDA toolkit is missing
            raise BackendUnavailable(f"cuda backend: cuBLAS cannot be loaded ({exc}); {INSTALL_HINT}") from exc
        self._cublas = cublas
        self._cublas_workspace = None  # made at the first capture
        self.device = cupy.cuda.Device(self.device_index)
        self.device.use()
        self._kernels: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()
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
            with self._lock:
                ks = self._kernels.get(key)
                if ks is None:
                    ks = self._kernels[key] = KernelSet(self._cp, key)
        return ks

    def _launch(self, dtype, name, threads, args, block=_BLOCK, grid=None):
        """Run kernel ``name`` of dtype's module over ``threads`` elements (grid-stride)."""
        if grid is None:
            if threads <= 0:
                return
            grid = min(-(-threads // block), _MAX_BLOCKS)
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
        shift = getattr(self._local, "shift", None)
        return self._zero_shift if shift is None else shift

    def _scratch(self, ws, tag, shape, dtype):
        if ws is None:  # callers outside a context (tests, tools) get a fresh temporary
            return self._cp.empty(shape, dtype)
        return ws.get(self, tag, shape, dtype)

    @staticmethod
    def _check_same(what, *arrays):
        shape, dtype = arrays[0].shape, arrays[0].dtype
        for a in arrays[1:]:
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"cuda backend {what}: shapes/dtypes differ: "
                                 f"{[(x.shape, str(x.dtype)) for x in arrays]}")

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
        self._cp.copyto(dst, src)

    def fill(self, dst, value):
        dst.fill(value)

    def reshape(self, arr, shape):
        if not arr.flags.c_contiguous:
            raise ValueError(f"cuda backend reshape: array with strides {arr.strides} has no view of shape {shape}")
        return arr.reshape(shape)

    def flat_view(self, flat, offset, shape):
        size = math.prod(shape)
        return flat[offset:offset + size].reshape(shape)

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
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != kb or out.shape != (m, n) or not (a.dtype == b.dtype == out.dtype):
            raise ValueError(f"cuda backend gemm: op(a) {(m, k)} @ op(b) {(kb, n)} into {out.shape}, "
                             f"dtypes {a.dtype}, {b.dtype}, {out.dtype}")
        if m == 0 or n == 0:
            return
        if k == 0:  # cuBLAS would scale by beta; do it explicitly for clarity
            self.scale(out, beta, out)
            return
        cublas = self._cublas
        real = real_type(out.dtype)
        gemm_fn = cublas.sgemm if real == "float" else cublas.dgemm
        scalars = np.array([alpha, beta], out.dtype)  # host pointer mode: read during the call
        handle = self._cp.cuda.device.get_cublas_handle()
        cublas.setStream(handle, self._cp.cuda.get_current_stream().ptr)
        if self._cublas_workspace is not None and getattr(self._local, "shift", None) is not None:
            # while capturing: a fixed workspace, so cuBLAS records no allocation into the graph
            # (setStream above put the handle back on its default workspace)
            set_workspace, buffer = self._cublas_workspace
            set_workspace(handle, buffer.data.ptr, buffer.nbytes)
        cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
        # Row-major out = op(a) @ op(b) is column-major out^T = op(b)^T @ op(a)^T.
        gemm_fn(handle, cublas.CUBLAS_OP_T if trans_b else cublas.CUBLAS_OP_N,
                cublas.CUBLAS_OP_T if trans_a else cublas.CUBLAS_OP_N, n, m, k,
                scalars.ctypes.data, b.data.ptr, self._ld(b, "b"), a.data.ptr, self._ld(a, "a"),
                scalars.ctypes.data + scalars.itemsize, out.data.ptr, self._ld(out, "out"))

    def add(self, a, b, out):
        self._check_same("add", a, b, out)
        self._launch(out.dtype, "add_arrays", out.size, (a, b, out, np.int64(out.size)))

    def scale(self, x, alpha, out):
        self._check_same("scale", x, out)
        self._launch(out.dtype, "scale_array", out.size, (x, self._real(out.dtype, alpha), out, np.int64(out.size)))

    def mul(self, a, b, out, accumulate=False, ws=None):
        self._check_same("mul", a, b, out)
        self._launch(out.dtype, "mul_arrays", out.size, (a, b, out, np.int64(out.size), np.int32(accumulate)))

    @staticmethod
    def _channels(arr):
        """(batch, channels, inner) of an (N, C, *spatial) array."""
        inner = math.prod(arr.shape[2:]) if arr.ndim > 2 else 1
        return arr.shape[0], arr.shape[1], inner

    def add_bias(self, out, bias):
        _, c, inner = self._channels(out)
        self._launch(out.dtype, "add_bias", out.size,
                     (out, bias, np.int64(out.size), np.int64(c), np.int64(inner)))

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        n, c, inner = self._channels(dy)
        self._launch(dy.dtype, "bias_grad", 0, (dy, dbias, np.int64(n), np.int64(c), np.int64(inner),
                                                np.int32(accumulate)), grid=c)

    def sum_all(self, x, out):
        self._launch(x.dtype, "sum_all", 0, (x, out, np.int64(x.size)), grid=1)

    def all_finite(self, x):
        if x.size == 0:
            return True
        with self._lock:
            flag = self._finite_flag
            flag.fill(1)
            self._launch(x.dtype, "check_finite", x.size, (x, flag, np.int64(x.size)))
            return bool(int(flag.get()[0]))

    # ------------------------------------------------------------ activations
    def _unary(self, name, x, out):
        self._check_same(name, x, out)
        self._launch(out.dtype, name, out.size, (x, out, np.int64(out.size)))

    def _backward(self, name, y, dy, dx, accumulate, *extra):
        self._check_same(name, y, dy, dx)
        self._launch(dx.dtype, name, dx.size, (y, dy, dx, np.int64(dx.size)) + extra + (np.int32(accumulate),))

    def relu(self, x, out):
        self._unary("relu_forward", x, out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("relu_backward", y, dy, dx, accumulate)

    def leaky_relu(self, x, out, slope):
        self._check_same("leaky_relu", x, out)
        self._launch(out.dtype, "leaky_relu_forward", out.size,
                     (x, out, np.int64(out.size), self._real(out.dtype, slope)))

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._backward("leaky_relu_backward", x, dy, dx, accumulate, self._real(dx.dtype, slope))

    def sigmoid(self, x, out):
        self._unary("sigmoid_forward", x, out)

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("sigmoid_backward", y, dy, dx, accumulate)

    def tanh(self, x, out):
        self._unary("tanh_forward", x, out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._backward("tanh_backward", y, dy, dx, accumulate)

    def _rows(self, name, x, args, trailing=()):
        """One block per row of x: kernel(*args, cols, *trailing)."""
        rows, cols = x.shape
        self._launch(x.dtype, name, 0, args + (np.int64(cols),) + trailing, block=_row_block(cols), grid=rows)

    def softmax(self, x, out, ws=None):
        self._check_same("softmax", x, out)
        self._rows("softmax_forward", x, (x, out))

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._check_same("softmax_backward", y, dy, dx)
        self._rows("softmax_backward", y, (y, dy, dx), (np.int32(accumulate),))

    def log_softmax(self, x, out, ws=None):
        self._check_same("log_softmax", x, out)
        self._rows("log_softmax_forward", x, (x, out))

    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._check_same("log_softmax_backward", y, dy, dx)
        self._rows("log_softmax_backward", y, (y, dy, dx), (np.int32(accumulate),))

    # ----------------------------------------------------------------- losses
    def _labels(self, labels, rows, what):
        if labels.dtype != np.int32 or labels.shape != (rows,):
            raise ValueError(f"cuda backend {what}: labels must be int32 of shape ({rows},), "
                             f"got {labels.dtype} {labels.shape}")
        return labels

    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale, ws=None):
        rows, cols = logits.shape
        self._check_same("softmax_cross_entropy", logits, dx)
        labels = self._labels(labels, rows, "softmax_cross_entropy")
        self._launch(logits.dtype, "softmax_cross_entropy", 0,
                     (logits, labels, losses, dx, np.int64(cols), self._real(dx.dtype, grad_scale)),
                     block=_row_block(cols), grid=rows)

    def nll_loss(self, logp, labels, losses, dx, grad_scale, ws=None):
        rows, cols = logp.shape
        self._check_same("nll_loss", logp, dx)
        labels = self._labels(labels, rows, "nll_loss")
        self._launch(logp.dtype, "nll_loss", logp.size,
                     (logp, labels, losses, dx, np.int64(rows), np.int64(cols), self._real(dx.dtype, grad_scale)))

    def mse_loss(self, pred, target, losses, dx, grad_scale, ws=None):
        self._check_same("mse_loss", pred, target, dx)
        rows = pred.shape[0]
        cols = pred.size // rows if rows else 0
        self._launch(pred.dtype, "mse_loss", 0,
                     (pred, target, losses, dx, np.int64(cols), self._real(dx.dtype, 2.0 * grad_scale)),
                     block=_row_block(cols), grid=rows)

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        """The counter read at run time is ``counter + shift`` (shift: 0, or a replay's offset)."""
        self._check_same("dropout", x, out, mask)
        keep_scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0  # rounded to the dtype, as NumPy's mask *= scale
        self._launch(x.dtype, "dropout_forward", x.size,
                     (x, out, mask, np.int64(x.size), np.uint32(seed & 0xFFFFFFFF), np.int64(counter),
                      self._shift(), np.uint32(rng.keep_threshold(p)), self._real(x.dtype, keep_scale)))

    # -------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None, guard=None):
        self._check_same("sgd_update", param, grad)
        r = lambda v: self._real(param.dtype, v)  # noqa: E731
        use_momentum = momentum != 0.0
        self._launch(param.dtype, "sgd_update", param.size,
                     (param, grad, buf if use_momentum else _NULL, np.int64(param.size), r(lr), r(momentum),
                      r(1.0 - dampening), np.int32(dampening != 0.0), np.int32(bool(nesterov)),
                      r(weight_decay), np.int32(weight_decay != 0.0), np.int32(use_momentum),
                      np.int32(bool(first_step)), _NULL if guard is None else guard))

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None, guard=None):
        """The step read at run time is ``step + shift`` (see :meth:`dropout`)."""
        self._check_same("adam_update", param, grad, exp_avg, exp_avg_sq)
        self._launch(param.dtype, "adam_update", param.size,
                     (param, grad, exp_avg, exp_avg_sq, _NULL if max_exp_avg_sq is None else max_exp_avg_sq,
                      np.int64(param.size), np.float64(lr), np.float64(beta1), np.float64(beta2),
                      self._real(param.dtype, eps), np.float64(weight_decay), np.int32(bool(decoupled)),
                      np.int64(step), self._shift(), _NULL if guard is None else guard))

    # ------------------------------------------------------------ convolution
    def _conv_geometry(self, x_shape, w_shape, out_hw, stride, padding, dilation):
        n, c, h, w = x_shape
        _, _, kh, kw = w_shape
        return tuple(np.int32(v) for v in (n, c, h, w, out_hw[0], out_hw[1], kh, kw, stride[0], stride[1],
                                           padding[0], padding[1], dilation[0], dilation[1]))

    def _im2col(self, x, kernel_hw, out_hw, stride, padding, dilation, ws, tag):
        n, c = x.shape[:2]
        rows, cols = c * kernel_hw[0] * kernel_hw[1], n * out_hw[0] * out_hw[1]
        col = self._scratch(ws, tag, (rows, cols), x.dtype)
        geom = self._conv_geometry(x.shape, (0, 0) + tuple(kernel_hw), out_hw, stride, padding, dilation)
        self._launch(x.dtype, "im2col", col.size, (x, col) + geom)
        return col

    def _to_channel_major(self, y, ws, tag):
        """(N, C, *spatial) -> scratch (C, N * prod(spatial))."""
        n, c, inner = self._channels(y)
        dst = self._scratch(ws, tag, (c, n * inner), y.dtype)
        self._launch(y.dtype, "batch_to_channel_major", y.size, (y, dst, np.int64(n), np.int64(c), np.int64(inner)))
        return dst

    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None):
        o, cg, kh, kw = w.shape
        out_hw = out.shape[2:]
        col = self._im2col(x, (kh, kw), out_hw, stride, padding, dilation, ws, "conv_col")
        n, _, inner = self._channels(out)
        result = self._scratch(ws, "conv_result", (o, n * inner), out.dtype)
        w2 = w.reshape(o, cg * kh * kw)
        og, kg = o // groups, cg * kh * kw
        for g in range(groups):
            self.gemm(w2[g * og:(g + 1) * og], col[g * kg:(g + 1) * kg], result[g * og:(g + 1) * og])
        self._launch(out.dtype, "channel_to_batch_major", out.size,
                     (result, out, np.int64(n), np.int64(o), np.int64(inner), np.int32(0)))

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        o, cg, kh, kw = w.shape
        out_hw = dy.shape[2:]
        dy_cm = self._to_channel_major(dy, ws, "conv_dy")
        og, kg = o // groups, cg * kh * kw
        dcol = self._scratch(ws, "conv_col", (dx.shape[1] * kh * kw, dy_cm.shape[1]), dx.dtype)
        w2 = w.reshape(o, kg)
        for g in range(groups):
            self.gemm(w2[g * og:(g + 1) * og], dy_cm[g * og:(g + 1) * og], dcol[g * kg:(g + 1) * kg], trans_a=True)
        geom = self._conv_geometry(dx.shape, w.shape, out_hw, stride, padding, dilation)
        self._launch(dx.dtype, "col2im", dx.size, (dcol, dx) + geom + (np.int32(accumulate),))

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
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
        if argmax.dtype != np.int32 or argmax.shape != out.shape:
            raise ValueError(f"cuda backend max_pool2d: argmax must be int32 of shape {out.shape}, "
                             f"got {argmax.dtype} {argmax.shape}")
        geom = self._pool_geometry(x.shape, out.shape[2:], kernel, stride, padding)
        self._launch(x.dtype, "max_pool_forward", out.size, (x, out, argmax) + geom)

    def max_pool2d_backward(self, dy, argmax, dx, accumulate=False, ws=None):
        planes = dx.shape[0] * dx.shape[1]
        in_plane = dx.shape[2] * dx.shape[3]
        out_plane = dy.shape[2] * dy.shape[3]
        self._launch(dx.dtype, "max_pool_backward", planes,
                     (dy, argmax, dx, np.int64(planes), np.int64(in_plane), np.int64(out_plane),
                      np.int32(accumulate)), block=64)

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        geom = self._pool_geometry(x.shape, out.shape[2:], kernel, stride, padding)
        self._launch(x.dtype, "avg_pool_forward", out.size, (x, out) + geom + (np.int32(count_include_pad),))

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        geom = self._pool_geometry(dx.shape, dy.shape[2:], kernel, stride, padding)
        self._launch(dx.dtype, "avg_pool_backward", dx.size,
                     (dy, dx) + geom + (np.int32(count_include_pad), np.int32(accumulate)))

    # ------------------------------------------------------------ batch norm
    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None):
        n, c, inner = self._channels(x)
        count = n * inner
        r = lambda v: self._real(x.dtype, v)  # noqa: E731
        self._launch(x.dtype, "batch_norm_train", 0,
                     (x, gamma, beta, out, mean, invstd,
                      _NULL if running_mean is None else running_mean,
                      _NULL if running_var is None else running_var,
                      np.int64(n), np.int64(c), np.int64(inner), r(momentum), r(1.0 - momentum),
                      r(momentum * count / max(count - 1, 1)), r(eps)), grid=c)

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None):
        n, c, inner = self._channels(x)
        self._launch(x.dtype, "batch_norm_infer", x.size,
                     (x, gamma, beta, running_mean, running_var, self._real(x.dtype, eps), out,
                      np.int64(x.size), np.int64(c), np.int64(inner)))

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None):
        n, c, inner = self._channels(x)
        opt = lambda a: _NULL if a is None else a  # noqa: E731
        self._launch(x.dtype, "batch_norm_backward", 0,
                     (x, dy, gamma, mean, invstd, opt(dx), opt(dgamma), opt(dbeta), np.int64(n), np.int64(c),
                      np.int64(inner), np.int32(accumulate_dx), np.int32(accumulate_params)), grid=c)

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        n, c_src, inner = self._channels(src)
        self._launch(src.dtype, "copy_channels", src.size,
                     (src, dst, np.int64(src.size), np.int64(c_src), np.int64(dst.shape[1]), np.int64(offset),
                      np.int64(inner), np.int32(accumulate)))

    def slice_channels(self, src, dst, offset, accumulate=False):
        n, c_dst, inner = self._channels(dst)
        self._launch(dst.dtype, "slice_channels", dst.size,
                     (src, dst, np.int64(dst.size), np.int64(src.shape[1]), np.int64(c_dst), np.int64(offset),
                      np.int64(inner), np.int32(accumulate)))

    # ------------------------------------------------------------ CUDA graphs
    def capture(self, fn):
        """Record the device work of ``fn()`` as a CUDA graph and return it unlaunched.

        ``fn`` must not synchronize with the host nor allocate device memory (an allocation
        raises CaptureError). Dropout counters and optimizer steps passed while capturing are
        read at replay time as ``value + shift`` (``replay(shift)``), so one capture serves
        every later step. Raises CaptureError when the work cannot be captured; the device
        state is then unchanged (captured work does not run).
        """
        cp = self._cp
        shift = self.zeros((1,), np.int64)
        if self._cublas_workspace is None:
            set_workspace = _cublas_set_workspace()
            if set_workspace is not None:  # else cuBLAS manages its workspace inside the graph
                self._cublas_workspace = (set_workspace, self.empty((_CUBLAS_WORKSPACE_BYTES,), np.uint8))
        stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()
        self._local.shift = shift
        graph = None
        try:
            with stream, cp.cuda.using_allocator(_refuse_allocation):
                stream.begin_capture()
                try:
                    fn()
                finally:
                    try:
                        graph = stream.end_capture()
                    except Exception:
                        graph = None
        except CaptureError:
            raise
        except Exception as exc:
            raise CaptureError(f"cuda backend: the step could not be captured as a CUDA graph ({exc})") from exc
        finally:
            self._local.shift = None
        if graph is None:
            raise CaptureError("cuda backend: CUDA graph capture ended without a graph")
        return _Captured(self, graph, shift)
