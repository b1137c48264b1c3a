"""The OpenCL backend: every op of :class:`~juicepy.backends.base.Backend` as OpenCL kernels.

Arrays are ``pyopencl.array.Array`` objects, always C-contiguous. Kernels take each array as
its base buffer plus an element offset, so views into the flat param buffer cost nothing
(``Array.data`` on an offset view would make a sub-buffer on every call). Work is queued
in order on one queue; only ``to_host`` and ``all_finite`` wait for it.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .. import rng
from ..base import Backend, BackendUnavailable, Workspace
from .device import INSTALL_HINT, import_pyopencl, pick_device
from .programs import CPU_GEMM, GPU_GEMM, ProgramCache

_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)
_WG = 256          # work-group size of the elementwise kernels
_REDUCE_WG = 256   # must match REDUCE_WG in rows.cl
_GPU_TILE = 16     # must match TS in gemm.cl
_NR = 32           # must match NR in gemm.cl
_PACK_WG = 64      # work-group size along K of pack_a
_PACK_ROWS = 16    # rows of K per work-group of pack_b


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _even_tile(size: int, most: int, step: int) -> int:
    """The tile (a multiple of ``step``, at most ``most``) that cuts ``size`` into as few, most
    nearly equal pieces as possible: 128 rows become 72 + 56, not 96 + 32."""
    pieces = -(-size // most)
    return min(most, _round_up(-(-size // pieces), step))


def _k_splits(tiles: int, k: int, bk: int) -> int:
    """How many K ranges to sum separately when C has too few tiles to keep the CPU threads
    busy (a conv weight gradient: a few outputs, K = batch * pixels)."""
    if tiles >= 8 or k < 4 * bk:
        return 1
    return max(1, min(-(-16 // tiles), k // (2 * bk)))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


class OpenCLBackend(Backend):
    name = "opencl"
    dtypes = (np.float32,)

    def __init__(self, device=None):
        super().__init__()
        cl = import_pyopencl()
        import pyopencl.array as cl_array

        self._cl = cl
        self._array_type = cl_array.Array
        self._cl_array = cl_array
        self.device = device if device is not None else pick_device(cl)
        try:
            self.context = cl.Context([self.device])
            self.queue = cl.CommandQueue(self.context)
        except cl.Error as exc:
            raise BackendUnavailable(f"opencl backend: cannot open {self.device.name!r} ({exc}); "
                                     f"{INSTALL_HINT}") from None
        self.is_cpu = bool(self.device.type & cl.device_type.CPU)
        # "packed": one work-item per big tile (CPU drivers); "cooperative": 16x16 work-groups (GPUs)
        self.gemm_variant = "packed" if self.is_cpu else "cooperative"
        self._gemm_tiles = CPU_GEMM if self.is_cpu else GPU_GEMM
        self._gemm_ws = Workspace()  # pack buffers for callers that pass no workspace
        self._gemm_lock = threading.Lock()
        self._programs = ProgramCache(cl, self.context, self.device, {"gemm.cl": self._gemm_tiles})
        self._flag = self.empty((1,), np.int32)  # all_finite's answer
        self._flag_host = np.empty((1,), np.int32)

    def __repr__(self) -> str:
        return f"<juicepy backend 'opencl' {self.device.platform.name} / {self.device.name}>"

    # --------------------------------------------------------------- plumbing
    def _kernel(self, filename, name):
        return self._programs.kernel(filename, name)

    @staticmethod
    def _ref(a):
        """(base buffer, element offset) of an array: how every kernel takes its arrays."""
        return a.base_data, a.offset // a.dtype.itemsize

    def _launch_flat(self, filename, name, n, *args):
        """One work-item per element, ``n`` first, then the kernel's other arguments."""
        if n <= 0:
            return
        self._kernel(filename, name)(self.queue, (_round_up(n, _WG),), (_WG,), n, *args)

    def _launch_rows(self, filename, name, inner, outer, *args):
        """A (inner, *outer) grid: work-item (i, ...) owns element i of each outer row, so CPU
        drivers vectorise along contiguous memory and no kernel divides per element."""
        if inner <= 0 or 0 in outer:
            return
        local = min(64, _round_up(inner, 8))
        grid = (_round_up(inner, local),) + tuple(outer)
        self._kernel(filename, name)(self.queue, grid, (local,) + (1,) * len(outer), inner, *args)

    def _elementwise(self, name, n, *arrays_and_scalars):
        args = []
        for x in arrays_and_scalars:
            if isinstance(x, self._array_type):
                args.extend(self._ref(x))
            else:
                args.append(x)
        self._launch_flat("elementwise.cl", name, n, *args)

    @staticmethod
    def _check_same(op, *arrays):
        size = arrays[0].size
        for a in arrays[1:]:
            if a.size != size:
                raise ValueError(f"opencl {op}: arrays of {size} and {a.size} elements")

    def _scratch(self, ws, tag, shape, dtype=np.float32):
        if ws is None:  # callers outside a context (tests, tools) get a fresh temporary
            return self.empty(shape, dtype)
        return ws.get(self, tag, shape, dtype)

    # ---------------------------------------------------------------- memory
    def empty(self, shape, dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype.kind == "f" and dtype != _F32:
            raise TypeError(f"opencl backend computes in float32; got an array of {dtype} "
                            f"(build the network with dtype=np.float32)")
        shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        self.allocations += 1
        return self._cl_array.empty(self.queue, shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        arr = self.empty(shape, dtype)
        self.fill(arr, 0)
        return arr

    def from_host(self, host):
        host = np.ascontiguousarray(host)
        if host.dtype == np.float64:  # host data in the one float type this backend computes in
            host = host.astype(np.float32)
        arr = self.empty(host.shape, host.dtype)
        if host.size:
            arr.set(host, queue=self.queue)
        return arr

    def write(self, dst, host):
        host = np.asarray(host)
        if host.size != dst.size:
            raise ValueError(f"opencl write: {host.size} elements into an array of {dst.size}")
        if dst.size:
            dst.set(np.ascontiguousarray(host, dtype=dst.dtype).reshape(dst.shape), queue=self.queue)

    def to_host(self, src):
        if src.size == 0:
            return np.empty(src.shape, src.dtype)
        return src.get(queue=self.queue)

    def copy(self, src, dst):
        if src.dtype != dst.dtype or src.size != dst.size:
            raise ValueError(f"opencl copy: {src.dtype}{src.shape} into {dst.dtype}{dst.shape}")
        if src.size:
            self._cl.enqueue_copy(self.queue, dst.base_data, src.base_data, byte_count=src.nbytes,
                                  src_offset=src.offset, dst_offset=dst.offset)

    def fill(self, dst, value):
        if dst.size == 0:
            return
        if dst.dtype == _F32:
            self._elementwise("fill_f32", dst.size, dst, float(value))
        else:
            pattern = np.array([value], dtype=dst.dtype)
            self._cl.enqueue_fill_buffer(self.queue, dst.base_data, pattern, dst.offset, dst.nbytes)

    def reshape(self, arr, shape):
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != arr.size:
            raise ValueError(f"opencl reshape: cannot view {arr.shape} as {shape}")
        return arr.reshape(shape)

    def flat_view(self, flat, offset, shape):
        size = math.prod(shape)
        if flat.ndim != 1 or offset < 0 or offset + size > flat.size:
            raise ValueError(f"opencl flat_view: {shape} at {offset} outside an array of {flat.shape}")
        return flat[offset:offset + size].reshape(tuple(shape))

    def is_array(self, x):
        return isinstance(x, self._array_type)

    def synchronize(self):
        self.queue.finish()

    # ------------------------------------------------------------ arithmetic
    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
            raise ValueError(f"opencl gemm: 2-D arrays expected, got {a.shape}, {b.shape} -> {out.shape}")
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != kb or out.shape != (m, n):
            raise ValueError(f"opencl gemm: op(a) {(m, k)} @ op(b) {(kb, n)} does not give out {out.shape}")
        self._gemm(m, n, k, self._ref(a), a.shape[1], trans_a, self._ref(b), b.shape[1], trans_b,
                   self._ref(out), n, alpha, beta, ws)

    def _gemm(self, m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, alpha, beta, ws=None):
        """C = alpha * op(A) @ op(B) + beta * C on (buffer, offset) operands with leading dims."""
        if m == 0 or n == 0:
            return
        if k == 0:  # nothing to multiply: only the beta term remains
            if ldc != n:
                raise ValueError("opencl gemm: K == 0 on a strided output")
            self._launch_flat("elementwise.cl", "scale_f32", m * n, *c, float(beta), *c)
            return
        if self.gemm_variant == "cooperative":
            grid = (_round_up(n, _GPU_TILE), _round_up(m, _GPU_TILE))
            self._kernel("gemm.cl", "gemm_tiled_gpu")(
                self.queue, grid, (_GPU_TILE, _GPU_TILE), m, n, k, a[0], a[1], lda, int(bool(trans_a)),
                b[0], b[1], ldb, int(bool(trans_b)), c[0], c[1], ldc, float(alpha), float(beta))
            return
        tiles = self._gemm_tiles
        a_panels, b_panels = -(-m // tiles["MR"]), -(-n // _NR)
        with self._gemm_lock:  # the backend's own pack buffers are shared when no ws is given
            ws = ws if ws is not None else self._gemm_ws
            ap = ws.get(self, "gemm_pack_a", (a_panels * tiles["MR"] * k,), _F32)
            bp = ws.get(self, "gemm_pack_b", (b_panels * _NR * k,), _F32)
            pack_grid = _round_up(k, _PACK_WG)
            self._kernel("gemm.cl", "pack_a")(self.queue, (pack_grid, a_panels), (_PACK_WG, 1), m, k, a[0], a[1],
                                              lda, int(bool(trans_a)), ap.base_data, 0)
            self._kernel("gemm.cl", "pack_b")(self.queue, (_NR, _round_up(k, _PACK_ROWS), b_panels),
                                              (_NR, _PACK_ROWS, 1), n, k, b[0], b[1], ldb, int(bool(trans_b)),
                                              bp.base_data, 0)
            tile_m = _even_tile(m, tiles["BM"], tiles["MR"])
            tile_n = _even_tile(n, tiles["BN"], _NR)
            grid = [-(-n // tile_n), -(-m // tile_m), 1]
            splits = _k_splits(grid[0] * grid[1], k, tiles["BK"])
            k_chunk = _round_up(-(-k // splits), tiles["BK"])
            splits = -(-k // k_chunk)
            kernel = self._kernel("gemm.cl", "gemm_packed")
            if splits == 1:
                kernel(self.queue, tuple(grid), (1, 1, 1), m, n, k, tile_m, tile_n, k, ap.base_data, 0,
                       bp.base_data, 0, c[0], c[1], ldc, float(alpha), float(beta))
                return
            grid[2] = splits
            slabs = ws.get(self, "gemm_split", (splits * m * n,), _F32)
            kernel(self.queue, tuple(grid), (1, 1, 1), m, n, k, tile_m, tile_n, k_chunk, ap.base_data, 0,
                   bp.base_data, 0, slabs.base_data, 0, n, 1.0, 0.0)
            self._launch_flat("gemm.cl", "gemm_split_sum", m * n, splits, slabs.base_data, c[0], c[1], n,
                              ldc, float(alpha), float(beta))

    def add(self, a, b, out):
        self._check_same("add", a, b, out)
        self._elementwise("add_f32", out.size, a, b, out)

    def scale(self, x, alpha, out):
        self._check_same("scale", x, out)
        self._elementwise("scale_f32", out.size, x, float(alpha), out)

    def mul(self, a, b, out, accumulate=False, ws=None):
        self._check_same("mul", a, b, out)
        self._elementwise("mul_f32", out.size, a, b, out, int(accumulate))

    @staticmethod
    def _channels(arr):
        """(rows, channels, inner) of an array whose axis 1 holds the channels."""
        rows, channels = arr.shape[0], arr.shape[1]
        return rows, channels, arr.size // max(1, rows * channels)

    def add_bias(self, out, bias):
        _, channels, inner = self._channels(out)
        if bias.size != channels:
            raise ValueError(f"opencl add_bias: bias of {bias.size} for {channels} channels")
        if inner == 1:
            rows = out.shape[0]
            self._kernel("elementwise.cl", "add_bias_rows")(
                self.queue, (_round_up(channels, 64), _round_up(rows, 4)), (64, 4), rows, channels,
                *self._ref(out), *self._ref(bias))
        else:
            self._launch_rows("elementwise.cl", "add_bias", inner, (channels, out.shape[0]),
                              *self._ref(out), *self._ref(bias))

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        rows, channels, inner = self._channels(dy)
        if dbias.size != channels:
            raise ValueError(f"opencl bias_grad: dbias of {dbias.size} for {channels} channels")
        self._kernel("rows.cl", "bias_grad")(
            self.queue, (_round_up(channels, 64),), (64,), rows, channels, inner,
            *self._ref(dy), *self._ref(dbias), int(accumulate))

    def sum_all(self, x, out):
        self._kernel("rows.cl", "sum_all")(self.queue, (_REDUCE_WG,), (_REDUCE_WG,), x.size,
                                           *self._ref(x), *self._ref(out))

    def all_finite(self, x):
        if x.size == 0:
            return True
        if x.dtype != _F32:
            raise TypeError(f"opencl all_finite: float32 expected, got {x.dtype}")
        self._kernel("rows.cl", "all_finite")(self.queue, (_REDUCE_WG,), (_REDUCE_WG,), x.size,
                                              *self._ref(x), self._flag.base_data)
        self._cl.enqueue_copy(self.queue, self._flag_host, self._flag.base_data, is_blocking=True)
        return bool(self._flag_host[0])

    # ------------------------------------------------------------ activations
    def relu(self, x, out):
        self._check_same("relu", x, out)
        self._elementwise("relu_fwd", out.size, x, out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._check_same("relu_backward", y, dy, dx)
        self._elementwise("step_bwd", dx.size, y, dy, dx, 0.0, int(accumulate))

    def leaky_relu(self, x, out, slope):
        self._check_same("leaky_relu", x, out)
        self._elementwise("leaky_relu_fwd", out.size, x, out, float(slope))

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._check_same("leaky_relu_backward", x, dy, dx)
        self._elementwise("step_bwd", dx.size, x, dy, dx, float(slope), int(accumulate))

    def sigmoid(self, x, out):
        self._check_same("sigmoid", x, out)
        self._elementwise("sigmoid_fwd", out.size, x, out)

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._check_same("sigmoid_backward", y, dy, dx)
        self._elementwise("sigmoid_bwd", dx.size, y, dy, dx, int(accumulate))

    def tanh(self, x, out):
        self._check_same("tanh", x, out)
        self._elementwise("tanh_fwd", out.size, x, out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._check_same("tanh_backward", y, dy, dx)
        self._elementwise("tanh_bwd", dx.size, y, dy, dx, int(accumulate))

    def _rows(self, name, rows, *args):
        if rows:
            self._kernel("rows.cl", name)(self.queue, (_round_up(rows, 64),), (64,), rows, *args)

    @staticmethod
    def _row_shape(op, x):
        if x.ndim != 2:
            raise ValueError(f"opencl {op}: (rows, classes) expected, got {x.shape}")
        return x.shape

    def softmax(self, x, out, ws=None):
        rows, cols = self._row_shape("softmax", x)
        self._check_same("softmax", x, out)
        self._rows("softmax_rows", rows, cols, *self._ref(x), *self._ref(out), 0)

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        rows, cols = self._row_shape("softmax_backward", y)
        self._check_same("softmax_backward", y, dy, dx)
        self._rows("softmax_rows_bwd", rows, cols, *self._ref(y), *self._ref(dy), *self._ref(dx), 0,
                   int(accumulate))

    def log_softmax(self, x, out, ws=None):
        rows, cols = self._row_shape("log_softmax", x)
        self._check_same("log_softmax", x, out)
        self._rows("softmax_rows", rows, cols, *self._ref(x), *self._ref(out), 1)

    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        rows, cols = self._row_shape("log_softmax_backward", y)
        self._check_same("log_softmax_backward", y, dy, dx)
        self._rows("softmax_rows_bwd", rows, cols, *self._ref(y), *self._ref(dy), *self._ref(dx), 1,
                   int(accumulate))

    # ----------------------------------------------------------------- losses
    def _check_labels(self, op, x, labels, losses, dx):
        rows, cols = self._row_shape(op, x)
        if labels.dtype != _I32 or labels.size != rows:
            raise ValueError(f"opencl {op}: labels must be int32 ({rows},), got {labels.dtype}{labels.shape}")
        self._check_same(op, x, dx)
        if losses.size != rows:
            raise ValueError(f"opencl {op}: losses must hold {rows} rows, got {losses.shape}")
        return rows, cols

    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale, ws=None):
        rows, cols = self._check_labels("softmax_cross_entropy", logits, labels, losses, dx)
        self._rows("softmax_xent", rows, cols, *self._ref(logits), *self._ref(labels), *self._ref(losses),
                   *self._ref(dx), float(grad_scale))

    def nll_loss(self, logp, labels, losses, dx, grad_scale, ws=None):
        rows, cols = self._check_labels("nll_loss", logp, labels, losses, dx)
        self._rows("nll", rows, cols, *self._ref(logp), *self._ref(labels), *self._ref(losses),
                   *self._ref(dx), float(grad_scale))

    def mse_loss(self, pred, target, losses, dx, grad_scale, ws=None):
        self._check_same("mse_loss", pred, target, dx)
        rows = pred.shape[0]
        if losses.size != rows:
            raise ValueError(f"opencl mse_loss: losses must hold {rows} rows, got {losses.shape}")
        cols = pred.size // max(1, rows)
        self._rows("mse", rows, cols, *self._ref(pred), *self._ref(target), *self._ref(losses),
                   *self._ref(dx), float(np.float32(2.0 * grad_scale)))

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        self._check_same("dropout", x, out, mask)
        keep_scale = float(np.float32(1.0 / (1.0 - p))) if p < 1.0 else 0.0
        self._elementwise("dropout_fwd", x.size, x, out, mask, rng.stream_key(seed, counter),
                          rng.keep_threshold(p), keep_scale)

    # -------------------------------------------------------------- optimizers
    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None):
        self._check_same("sgd_update", param, grad, *([buf] if momentum != 0.0 else []))
        momentum_buf = buf if buf is not None else param  # never touched without momentum
        self._elementwise("sgd_step", param.size, param, grad, momentum_buf, float(lr), float(momentum),
                          float(np.float32(1.0 - dampening)), int(bool(nesterov)), float(weight_decay),
                          int(bool(first_step)))

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None):
        self._check_same("adam_update", param, grad, exp_avg, exp_avg_sq,
                         *([max_exp_avg_sq] if max_exp_avg_sq is not None else []))
        amsgrad = max_exp_avg_sq is not None
        f32 = np.float32  # each factor rounded to float32 once, as NumPy does with Python scalars
        self._elementwise(
            "adam_step", param.size, param, grad, exp_avg, exp_avg_sq,
            max_exp_avg_sq if amsgrad else exp_avg_sq, int(amsgrad),
            float(f32(1.0 - beta1)), float(beta2), float(f32(1.0 - beta2)), float(eps), float(weight_decay),
            int(bool(decoupled)), float(f32(1.0 - lr * weight_decay)),
            float(f32(1.0 / math.sqrt(1.0 - beta2 ** step))), float(f32(lr / (1.0 - beta1 ** step))))

    # ------------------------------------------------------------ convolution
    @staticmethod
    def _conv_geometry(x_shape, w_shape, y_shape, stride, padding, dilation, groups, op):
        n, c, h, w = x_shape
        o, cg, kh, kw = w_shape
        sh, sw = _pair(stride)
        ph, pw = _pair(padding)
        dh, dw = _pair(dilation)
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if c != cg * groups or o % groups or tuple(y_shape) != (n, o, ho, wo):
            raise ValueError(f"opencl {op}: input {tuple(x_shape)}, weight {tuple(w_shape)}, groups {groups}, "
                             f"stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)} give output "
                             f"{(n, o, ho, wo)}, got {tuple(y_shape)}")
        return (n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw)

    def _im2col(self, x, geo, ws):
        n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        col = self._scratch(ws, "conv_col", (c * kh * kw, n * ho * wo))
        self._launch_rows("conv.cl", "im2col", ho, (c * kh * kw, n), *self._ref(x), n, c, h, w, wo, kh, kw,
                          sh, sw, ph, pw, dh, dw, *self._ref(col))
        return col

    def _swap_nc(self, src, a0, a1, inner, dst, accumulate=False):
        """(a0, a1, inner) -> (a1, a0, inner)."""
        self._launch_rows("conv.cl", "swap_batch_channels", inner, (a1, a0), *self._ref(src), a0, a1,
                          *self._ref(dst), int(accumulate))

    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None):
        geo = self._conv_geometry(x.shape, w.shape, out.shape, stride, padding, dilation, groups, "conv2d")
        n, c, _, _, o, kh, kw, ho, wo = geo[:9]
        col = self._im2col(x, geo, ws)
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        y_cn = self._scratch(ws, "conv_cn", (o, cols))   # output as (O, N * Ho * Wo)
        wb, cb, yb = self._ref(w), self._ref(col), self._ref(y_cn)
        for g in range(groups):
            self._gemm(og, cols, kg, (wb[0], wb[1] + g * og * kg), kg, False,
                       (cb[0], cb[1] + g * kg * cols), cols, False,
                       (yb[0], yb[1] + g * og * cols), cols, 1.0, 0.0, ws)
        self._swap_nc(y_cn, o, n, ho * wo, out)

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        geo = self._conv_geometry(dx.shape, w.shape, dy.shape, stride, padding, dilation, groups,
                                  "conv2d_backward_data")
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        dy_cn = self._scratch(ws, "conv_cn", (o, cols))
        self._swap_nc(dy, n, o, ho * wo, dy_cn)
        dcol = self._scratch(ws, "conv_col", (c * kh * kw, cols))
        wb, db, cb = self._ref(w), self._ref(dy_cn), self._ref(dcol)
        for g in range(groups):
            self._gemm(kg, cols, og, (wb[0], wb[1] + g * og * kg), kg, True,
                       (db[0], db[1] + g * og * cols), cols, False,
                       (cb[0], cb[1] + g * kg * cols), cols, 1.0, 0.0, ws)
        self._launch_rows("conv.cl", "col2im", h, (n * c,), *self._ref(dcol), n, c, wd, ho, wo,
                          kh, kw, sh, sw, ph, pw, dh, dw, *self._ref(dx), int(accumulate))

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
        geo = self._conv_geometry(x.shape, dw.shape, dy.shape, stride, padding, dilation, groups,
                                  "conv2d_backward_filter")
        n, c, _, _, o, kh, kw, ho, wo = geo[:9]
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        col = self._im2col(x, geo, ws)
        dy_cn = self._scratch(ws, "conv_cn", (o, cols))
        self._swap_nc(dy, n, o, ho * wo, dy_cn)
        wb, db, cb = self._ref(dw), self._ref(dy_cn), self._ref(col)
        for g in range(groups):
            self._gemm(og, kg, cols, (db[0], db[1] + g * og * cols), cols, False,
                       (cb[0], cb[1] + g * kg * cols), cols, True,
                       (wb[0], wb[1] + g * og * kg), kg, 1.0, float(bool(accumulate)), ws)

    # ---------------------------------------------------------------- pooling
    @staticmethod
    def _pool_geometry(x_shape, y_shape, kernel, stride, padding, op):
        n, c, h, w = x_shape
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride if stride is not None else kernel)
        ph, pw = _pair(padding)
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if tuple(y_shape) != (n, c, ho, wo):
            raise ValueError(f"opencl {op}: input {tuple(x_shape)}, kernel {(kh, kw)}, stride {(sh, sw)}, "
                             f"padding {(ph, pw)} give {(n, c, ho, wo)}, got {tuple(y_shape)}")
        return h, w, ho, wo, kh, kw, sh, sw, ph, pw

    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None):
        geo = self._pool_geometry(x.shape, out.shape, kernel, stride, padding, "max_pool2d")
        if argmax.dtype != _I32 or argmax.shape != out.shape:
            raise ValueError(f"opencl max_pool2d: argmax must be int32 {out.shape}, got {argmax.dtype}{argmax.shape}")
        planes = out.shape[0] * out.shape[1]
        self._launch_rows("conv.cl", "max_pool", geo[2] * geo[3], (planes,), *self._ref(x), *geo,
                          *self._ref(out), *self._ref(argmax))

    def max_pool2d_backward(self, dy, argmax, dx, accumulate=False, ws=None):
        planes = dx.shape[0] * dx.shape[1]
        if dy.shape[:2] != dx.shape[:2] or argmax.shape != dy.shape:
            raise ValueError(f"opencl max_pool2d_backward: dy {dy.shape}, argmax {argmax.shape}, dx {dx.shape}")
        self._kernel("conv.cl", "max_pool_bwd")(
            self.queue, (_round_up(planes, 64),), (64,), planes, dx.shape[2] * dx.shape[3],
            dy.shape[2] * dy.shape[3], *self._ref(dy), *self._ref(argmax), *self._ref(dx), int(accumulate))

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        geo = self._pool_geometry(x.shape, out.shape, kernel, stride, padding, "avg_pool2d")
        planes = out.shape[0] * out.shape[1]
        self._launch_rows("conv.cl", "avg_pool", geo[2] * geo[3], (planes,), *self._ref(x), *geo,
                          int(bool(count_include_pad)), *self._ref(out))

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        geo = self._pool_geometry(dx.shape, dy.shape, kernel, stride, padding, "avg_pool2d_backward")
        planes = dx.shape[0] * dx.shape[1]
        self._launch_rows("conv.cl", "avg_pool_bwd", geo[0] * geo[1], (planes,), *self._ref(dy), *geo,
                          int(bool(count_include_pad)), *self._ref(dx), int(accumulate))

    # ------------------------------------------------------------ batch norm
    def _optional(self, a):
        """(buffer, offset, present) for an optional per-channel array."""
        if a is None:
            return self._flag.base_data, 0, 0
        return (*self._ref(a), 1)

    def _bn_shape(self, x, op, *per_channel):
        n, c, s = self._channels(x)
        for a in per_channel:
            if a is not None and a.size != c:
                raise ValueError(f"opencl {op}: per-channel array of {a.size} for {c} channels")
        return n, c, s

    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None):
        n, c, s = self._bn_shape(x, "batch_norm_train", gamma, beta, mean, invstd, running_mean, running_var)
        self._check_same("batch_norm_train", x, out)
        has_running = running_mean is not None and running_var is not None
        rm = self._ref(running_mean) if has_running else (self._flag.base_data, 0)
        rv = self._ref(running_var) if has_running else (self._flag.base_data, 0)
        self._kernel("norm.cl", "bn_stats")(
            self.queue, (_round_up(c, 64),), (64,), n, c, s, *self._ref(x), *self._ref(mean),
            *self._ref(invstd), *rm, *rv, int(has_running), float(0.1 if momentum is None else momentum),
            float(eps))
        g, b = self._optional(gamma), self._optional(beta)
        self._launch_flat("norm.cl", "bn_apply", x.size, c, s, *self._ref(x), *self._ref(mean),
                          *self._ref(invstd), 0, 0.0, g[0], g[1], b[0], b[1], g[2], b[2], *self._ref(out))

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None):
        _, c, s = self._bn_shape(x, "batch_norm_infer", gamma, beta, running_mean, running_var)
        self._check_same("batch_norm_infer", x, out)
        g, b = self._optional(gamma), self._optional(beta)
        self._launch_flat("norm.cl", "bn_apply", x.size, c, s, *self._ref(x), *self._ref(running_mean),
                          *self._ref(running_var), 1, float(eps), g[0], g[1], b[0], b[1], g[2], b[2],
                          *self._ref(out))

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None):
        n, c, s = self._bn_shape(x, "batch_norm_backward", gamma, mean, invstd, dgamma, dbeta)
        self._check_same("batch_norm_backward", x, dy, *([dx] if dx is not None else []))
        sums = self._scratch(ws, "bn_sums", (2 * c,))
        dg, db = self._optional(dgamma), self._optional(dbeta)
        self._kernel("norm.cl", "bn_bwd_reduce")(
            self.queue, (_round_up(c, 64),), (64,), n, c, s, *self._ref(x), *self._ref(dy), *self._ref(mean),
            *self._ref(invstd), *self._ref(sums), dg[0], dg[1], db[0], db[1], dg[2], db[2],
            int(accumulate_params))
        if dx is not None:
            g = self._optional(gamma)
            self._launch_flat("norm.cl", "bn_bwd_data", x.size, c, s, n * s, *self._ref(x), *self._ref(dy),
                              *self._ref(mean), *self._ref(invstd), *self._ref(sums), g[0], g[1], g[2],
                              *self._ref(dx), int(accumulate_dx))

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        rows, src_c, inner = self._channels(src)
        if dst.shape[0] != rows or offset + src_c > dst.shape[1] or dst.size != rows * dst.shape[1] * inner:
            raise ValueError(f"opencl copy_channels: {src.shape} into {dst.shape} at channel {offset}")
        self._elementwise("copy_channels", src.size, src, src_c, dst, dst.shape[1], int(offset), inner,
                          int(accumulate))

    def slice_channels(self, src, dst, offset, accumulate=False):
        rows, dst_c, inner = self._channels(dst)
        if src.shape[0] != rows or offset + dst_c > src.shape[1] or src.size != rows * src.shape[1] * inner:
            raise ValueError(f"opencl slice_channels: {dst.shape} from {src.shape} at channel {offset}")
        self._elementwise("slice_channels", dst.size, src, src.shape[1], dst, dst_c, int(offset), inner,
                          int(accumulate))


__all__ = ["OpenCLBackend", "Workspace"]
