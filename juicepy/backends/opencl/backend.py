"""The OpenCL backend: every op of :class:`~juicepy.backends.base.Backend` as OpenCL kernels.

Arrays are ``pyopencl.array.Array`` objects, always C-contiguous. Kernels take each array as
its base buffer plus an element offset, so views into the flat param buffer cost nothing
(``Array.data`` on an offset view would make a sub-buffer on every call). Work is queued
in order on one queue; only host transfers (``write``, ``to_host``) and ``all_finite`` wait
for it. GEMM launching lives in gemm.py, convolution/pooling/batch norm in spatial.py, sequence ops
in recurrent.py.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .. import rng
from ..base import (Backend, BackendUnavailable, Workspace, channels_inner, check_channel_range, check_same,
                    check_view, scratch)
from .device import COMPILER_HINT, INSTALL_HINT, import_pyopencl, pick_device
from .gemm import GemmOps
from .layout import F32 as _F32, I32 as _I32, round_up as _round_up
from .local_memory import (ELEMENTWISE_WG, REDUCE_WG, build_defines, check_required, describe_misfit,
                           device_limits, fitting_families)
from .programs import (ALT_MR, CONV_LANES, CPU_GEMM, GPU_GEMM, ProgramCache, compile_failure, compiled_float_lanes,
                       refuses_float_lanes, wide_register_defines)
from .recurrent import RecurrentOps
from .spatial import CONV_ALGORITHMS, SpatialOps

_WG = ELEMENTWISE_WG          # work-group size of the elementwise kernels
_REDUCE_WG = REDUCE_WG        # must match REDUCE_WG in rows.cl
_BIAS_CHUNK = 64   # rows per partial sum of bias_grad (column_sums in rows.cl)
# a convolution's bias gradient sums its (image, channel) planes by plane_sums_v (rows.cl: a
# work-item walks whole planes in vectors) where they hold at least this many floats (on CPU
# drivers), in about PLANE_SUMS_V_ITEMS work-items (several per CPU thread)
PLANE_SUMS_V_MIN_INNER = 64
PLANE_SUMS_V_ITEMS = 64


class OpenCLBackend(GemmOps, SpatialOps, RecurrentOps, Backend):
    name = "opencl"
    dtypes = (np.float32,)
    _plane_vec = True   # bias_grad's plane sums by plane_sums_v where PLANE_SUMS_V_MIN_INNER says (off: A/B runs)

    def __init__(self, device=None, gemm_variant: str | None = None, conv_algorithm: str = "auto",
                 vector_width: int | None = None, conv_vector_width: int | None = None):
        """``device``: a pyopencl Device (default: see :func:`pick_device`). ``gemm_variant``:
        "packed" (the CPU kernels) or "cooperative" (work-group tiles for GPUs); default
        "packed" on CPU devices whose local memory holds its tiles, else "cooperative"; kernels
        whose local arrays exceed the device's are never built or chosen (local_memory.py).
        ``conv_algorithm``: "direct" (row loops, no column matrix), "implicit" (GEMM tiles
        gathered from the input), "gemm" (im2col + GEMM), "winograd" (F(2x2, 3x3) or F(2x2, 5x5)
        where it applies: stride-1 3x3 and 5x5 forward passes and input gradients of one group)
        or "auto" (chosen per convolution shape). ``vector_width``: float lanes (8 or 16) of the direct
        convolutions' vectors and of the packed GEMM's micro-kernels (16: 12 x 32 tiles for
        AVX-512's 32 registers; 8: 6 x 16 for AVX2's 16); default 16 where the device prefers 16
        lanes and its compiler targets AVX-512, else 8 (:func:`compiled_float_lanes`).
        ``conv_vector_width``: the direct convolutions' lanes (8 or 16; at most ``vector_width``
        where the device refuses 16), which also pick the convolution algorithms' rules
        (spatial.py); default programs.CONV_LANES[vector_width]."""
        super().__init__()
        cl = import_pyopencl()
        import pyopencl.array as cl_array

        self._cl = cl
        self._array_type = cl_array.Array
        self._cl_array = cl_array
        self.device = device if device is not None else pick_device(cl, check=lambda d: compile_failure(cl, d))
        reason = compile_failure(cl, self.device)
        if reason is not None:
            raise BackendUnavailable(f"opencl backend: {self.device.name!r} cannot build kernels: {reason}; "
                                     f"{COMPILER_HINT}")
        try:
            self.context = cl.Context([self.device])
            self.queue = cl.CommandQueue(self.context)
        except cl.Error as exc:
            raise BackendUnavailable(f"opencl backend: cannot open {self.device.name!r} ({exc}); "
                                     f"{INSTALL_HINT}") from None
        self.is_cpu = bool(self.device.type & cl.device_type.CPU)
        if gemm_variant not in (None, "packed", "cooperative"):
            raise ValueError(f"gemm_variant must be 'packed' or 'cooperative', got {gemm_variant!r}")
        # local memory and work-group size, planned for once: kernels whose local arrays do not
        # fit are left out of the build and never chosen (local_memory.py)
        self.limits = device_limits(self.device)
        check_required(self.limits, self.device.name, BackendUnavailable)
        if conv_algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"conv_algorithm must be one of {CONV_ALGORITHMS}, got {conv_algorithm!r}")
        self.conv_algorithm = conv_algorithm
        # the packed GEMM sizes its register tiles by the width the device's compiler targets;
        # the direct convolutions keep a row's outputs in vectors of CONV_LANES of it
        if vector_width is None:
            vector_width = compiled_float_lanes(cl, self.context, self.device)
        if vector_width not in (8, 16):
            raise ValueError(f"vector_width must be 8 or 16, got {vector_width!r}")
        if refuses_float_lanes(cl, self.context, self.device, vector_width):
            raise ValueError(f"vector_width=16 on {self.device.name!r}: the device reports 16 float lanes but its "
                             f"compiler targets no AVX-512 ({self.device.version}), and its 16-lane programs come "
                             f"back from the kernel cache without kernels; use vector_width=8 (the default here)")
        if conv_vector_width is None:
            conv_vector_width = CONV_LANES[vector_width]
        if conv_vector_width not in (8, 16):
            raise ValueError(f"conv_vector_width must be 8 or 16, got {conv_vector_width!r}")
        if refuses_float_lanes(cl, self.context, self.device, conv_vector_width):
            raise ValueError(f"conv_vector_width=16 on {self.device.name!r}: its compiler targets no AVX-512 "
                             f"({self.device.version}); use 8")
        self._conv_vec = conv_vector_width
        self._local_memory_args = {}   # __local arguments by size (SpatialOps._local_memory)
        # Adam in vectors of the GEMM's lanes (adam_step_vec) on CPU devices, where it was measured
        self._adam_lanes = vector_width if self.is_cpu else 1
        # the packed kernels' tiles live in local memory: big on CPU drivers, small on GPUs; a
        # CPU runtime whose local memory cannot hold the big tiles gets the cooperative GEMM
        packed_fits = fitting_families(CPU_GEMM[vector_width], self.limits)["packed"]
        if gemm_variant is None:
            gemm_variant = "packed" if self.is_cpu and packed_fits else "cooperative"
        elif gemm_variant == "packed" and not packed_fits:
            raise ValueError(f"gemm_variant='packed': "
                             f"{describe_misfit('packed', CPU_GEMM[vector_width], self.limits, self.device.name)}; "
                             f"use gemm_variant='cooperative' (the default there)")
        self.gemm_variant = gemm_variant
        self._gemm_tiles = CPU_GEMM[vector_width] if gemm_variant == "packed" else GPU_GEMM
        #: kernel family (local_memory.OPTIONAL_FAMILIES) -> whether it is built and may be chosen
        self.kernel_fits = fitting_families(self._gemm_tiles, self.limits)
        # families left out where they do not fit, and the micro-kernels' register width
        left_out = build_defines(self.kernel_fits)
        if gemm_variant == "packed":
            left_out.update(wide_register_defines(cl, self.context, self.device, vector_width))
        self._gemm_ws = Workspace()  # pack buffers for callers that pass no workspace
        self._gemm_lock = threading.Lock()
        # the tile counter of gemm_packed / gemm_nt (see FOR_EACH_TILE in gemm.cl), its value
        # after the last launch, and the work-groups taking tiles: one per compute unit
        self._gemm_ticket = self.zeros((1,), np.uint32)
        self._gemm_ticket_next = 0
        self._gemm_workers = max(1, int(self.device.max_compute_units))
        # vectors.cl's PREFETCH_* hints: the prefetch instructions on CPU drivers
        hints = {"CPU_PREFETCH": 1} if self.is_cpu else {}
        # ...and the depthwise kernels' hints of the next plane (conv.cl's DW_PREFETCH) where the
        # compiler targets AVX2
        avx2 = self.is_cpu and compiled_float_lanes(cl, self.context, self.device) == 8
        dw_hints = {"DW_PREFETCH": 1} if avx2 else {}
        self._programs = ProgramCache(cl, self.context, self.device,
                                      {"gemm.cl": {**self._gemm_tiles, **left_out, **hints},
                                       "gemm.cl:mr_alt": {**self._gemm_tiles, "MR": ALT_MR[self._gemm_tiles["MR"]],
                                                          **left_out, **hints},
                                       "conv.cl": {"VEC": self._conv_vec, **hints, **dw_hints},
                                       "conv.cl:vec16": {"VEC": 16, **hints, **dw_hints},
                                       "elementwise.cl": {"ADAM_VEC": self._adam_lanes} if self._adam_lanes > 1 else {},
                                       # norm.cl's per-channel sums in float8 vectors on CPU drivers
                                       "norm.cl": {"VEC_SUMS": 1} if self.is_cpu else {}})
        self._flag = self.empty((1,), np.int32)  # all_finite's answer
        self._flag_host = np.empty((1,), np.int32)
        self._flag_lock = threading.Lock()

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

    def _same(self, op, *arrays):
        check_same(self.name, op, *arrays)

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
            raise ValueError(f"opencl backend write: {host.size} elements into an array of {dst.size}")
        if dst.size:
            dst.set(np.ascontiguousarray(host, dtype=dst.dtype).reshape(dst.shape), queue=self.queue)

    def to_host(self, src):
        if src.size == 0:
            return np.empty(src.shape, src.dtype)
        return src.get(queue=self.queue)

    def copy(self, src, dst):
        if src.dtype != dst.dtype or src.size != dst.size:
            raise ValueError(f"opencl backend copy: {src.dtype}{src.shape} into {dst.dtype}{dst.shape}")
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
            raise ValueError(f"opencl backend reshape: cannot view {arr.shape} as {shape}")
        return arr.reshape(shape)

    def flat_view(self, flat, offset, shape):
        check_view(self.name, flat, offset, shape)
        return flat[offset:offset + math.prod(shape)].reshape(tuple(shape))

    def is_array(self, x):
        return isinstance(x, self._array_type)

    def synchronize(self):
        self.queue.finish()

    def release(self):
        """Let go of the buffers the kernels' last arguments hold (programs.py's launchers keep
        them to launch again without setting them; arrays still referenced stay)."""
        self.synchronize()
        self._programs.forget_arguments()

    # ------------------------------------------------------------ arithmetic
    def add(self, a, b, out, relu=False):
        self._same("add", a, b, out)
        self._elementwise("add_f32", out.size, a, b, out, int(relu))

    def scale(self, x, alpha, out):
        self._same("scale", x, out)
        self._elementwise("scale_f32", out.size, x, float(alpha), out)

    def mul(self, a, b, out, accumulate=False, ws=None):
        self._same("mul", a, b, out)
        self._elementwise("mul_f32", out.size, a, b, out, int(accumulate))

    def add_bias(self, out, bias):
        _, channels, inner = channels_inner(out)
        if bias.size != channels:
            raise ValueError(f"opencl backend add_bias: bias of {bias.size} for {channels} channels")
        if inner == 1:
            rows = out.shape[0]
            self._kernel("elementwise.cl", "add_bias_rows")(
                self.queue, (_round_up(channels, 64), _round_up(rows, 4)), (64, 4), rows, channels,
                *self._ref(out), *self._ref(bias))
        else:
            self._launch_rows("elementwise.cl", "add_bias", channels, (out.shape[0],),
                              *self._ref(out), *self._ref(bias), inner)

    def bias_grad(self, dy, dbias, accumulate=False, ws=None):
        rows, channels, inner = channels_inner(dy)
        if dbias.size != channels:
            raise ValueError(f"opencl backend bias_grad: dbias of {dbias.size} for {channels} channels")
        if inner > 1:  # images: sum each (row, channel) plane in parallel first, then the rows
            partial = scratch(ws, self, "bias_planes", (rows, channels), _F32)
            planes = rows * channels
            if inner >= PLANE_SUMS_V_MIN_INNER and self._plane_vec and self.gemm_variant == "packed":
                per_item = -(-planes // PLANE_SUMS_V_ITEMS)
                self._kernel("rows.cl", "plane_sums_v")(self.queue, (-(-planes // per_item),), (1,), planes,
                                                        per_item, *self._ref(dy), inner, *self._ref(partial))
            else:
                self._launch_rows("rows.cl", "plane_sums", channels, (rows,), *self._ref(dy), inner,
                                  *self._ref(partial))
            dy, inner = partial, 1
        # more than a chunk of rows: sum chunks in parallel first, each walking its rows whole (a
        # work-item of bias_grad walks a column, one strided load per row: a batch of 128 rows
        # of 512 columns took longer that way than both launches)
        if inner == 1 and rows > _BIAS_CHUNK:
            chunks = -(-rows // _BIAS_CHUNK)
            partial = scratch(ws, self, "bias_chunks", (chunks, channels), _F32)
            self._kernel("rows.cl", "column_sums")(self.queue, (chunks,), (1,), channels, *self._ref(dy), rows,
                                                   _BIAS_CHUNK, *self._ref(partial))
            dy, rows = partial, chunks
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
            raise TypeError(f"opencl backend all_finite: float32 expected, got {x.dtype}")
        with self._flag_lock:  # one flag buffer per backend
            self._kernel("rows.cl", "all_finite")(self.queue, (_REDUCE_WG,), (_REDUCE_WG,), x.size,
                                                  *self._ref(x), self._flag.base_data)
            self._cl.enqueue_copy(self.queue, self._flag_host, self._flag.base_data, is_blocking=True)
            return bool(self._flag_host[0])

    # ------------------------------------------------------------ activations
    def relu(self, x, out):
        self._same("relu", x, out)
        self._elementwise("relu_fwd", out.size, x, out)

    def relu_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("relu_backward", y, dy, dx)
        self._elementwise("step_bwd", dx.size, y, dy, dx, 0.0, int(accumulate))

    def leaky_relu(self, x, out, slope):
        self._same("leaky_relu", x, out)
        self._elementwise("leaky_relu_fwd", out.size, x, out, float(slope))

    def leaky_relu_backward(self, x, dy, dx, slope, accumulate=False, ws=None):
        self._same("leaky_relu_backward", x, dy, dx)
        self._elementwise("step_bwd", dx.size, x, dy, dx, float(slope), int(accumulate))

    def sigmoid(self, x, out):
        self._same("sigmoid", x, out)
        self._elementwise("sigmoid_fwd", out.size, x, out)

    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("sigmoid_backward", y, dy, dx)
        self._elementwise("sigmoid_bwd", dx.size, y, dy, dx, int(accumulate))

    def tanh(self, x, out):
        self._same("tanh", x, out)
        self._elementwise("tanh_fwd", out.size, x, out)

    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None):
        self._same("tanh_backward", y, dy, dx)
        self._elementwise("tanh_bwd", dx.size, y, dy, dx, int(accumulate))

    def _rows(self, name, rows, *args):
        if rows:
            self._kernel("rows.cl", name)(self.queue, (_round_up(rows, 64),), (64,), rows, *args)

    @staticmethod
    def _row_shape(op, x):
        if x.ndim != 2:
            raise ValueError(f"opencl backend {op}: (rows, classes) expected, got {x.shape}")
        return x.shape

    def softmax(self, x, out, ws=None):
        rows, cols = self._row_shape("softmax", x)
        self._same("softmax", x, out)
        self._rows("softmax_rows", rows, cols, *self._ref(x), *self._ref(out), 0)

    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        rows, cols = self._row_shape("softmax_backward", y)
        self._same("softmax_backward", y, dy, dx)
        self._rows("softmax_rows_bwd", rows, cols, *self._ref(y), *self._ref(dy), *self._ref(dx), 0,
                   int(accumulate))

    def log_softmax(self, x, out, ws=None):
        rows, cols = self._row_shape("log_softmax", x)
        self._same("log_softmax", x, out)
        self._rows("softmax_rows", rows, cols, *self._ref(x), *self._ref(out), 1)

    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None):
        rows, cols = self._row_shape("log_softmax_backward", y)
        self._same("log_softmax_backward", y, dy, dx)
        self._rows("softmax_rows_bwd", rows, cols, *self._ref(y), *self._ref(dy), *self._ref(dx), 1,
                   int(accumulate))

    # ----------------------------------------------------------------- losses
    def _check_labels(self, op, x, labels, losses, dx):
        rows, cols = self._row_shape(op, x)
        if labels.dtype != _I32 or labels.size != rows:
            raise ValueError(f"opencl backend {op}: labels must be int32 ({rows},), got {labels.dtype}{labels.shape}")
        self._same(op, x, dx)
        if losses.size != rows:
            raise ValueError(f"opencl backend {op}: losses must hold {rows} rows, got {losses.shape}")
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
        self._same("mse_loss", pred, target, dx)
        rows = pred.shape[0]
        if losses.size != rows:
            raise ValueError(f"opencl backend mse_loss: losses must hold {rows} rows, got {losses.shape}")
        cols = pred.size // max(1, rows)
        self._rows("mse", rows, cols, *self._ref(pred), *self._ref(target), *self._ref(losses),
                   *self._ref(dx), float(np.float32(2.0 * grad_scale)))

    # ---------------------------------------------------------------- dropout
    def dropout(self, x, out, mask, p, seed, counter, ws=None):
        self._same("dropout", x, out, mask)
        keep_scale = float(np.float32(1.0 / (1.0 - p))) if p < 1.0 else 0.0
        self._elementwise("dropout_fwd", x.size, x, out, mask, rng.stream_key(seed, counter),
                          rng.keep_threshold(p), keep_scale)

    # -------------------------------------------------------------- optimizers
    def _guard_tripped(self, guard) -> bool:
        """The update is skipped: ``guard`` (the step's summed loss) is given and not finite."""
        return guard is not None and not self.all_finite(guard)

    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None, guard=None):
        if self._guard_tripped(guard):
            return
        self._same("sgd_update", param, grad, *([buf] if momentum != 0.0 else []))
        momentum_buf = buf if buf is not None else param  # never touched without momentum
        self._elementwise("sgd_step", param.size, param, grad, momentum_buf, float(lr), float(momentum),
                          float(np.float32(1.0 - dampening)), int(bool(nesterov)), float(weight_decay),
                          int(bool(first_step)))

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None, guard=None):
        if self._guard_tripped(guard):
            return
        self._same("adam_update", param, grad, exp_avg, exp_avg_sq,
                         *([max_exp_avg_sq] if max_exp_avg_sq is not None else []))
        amsgrad = max_exp_avg_sq is not None
        f32 = np.float32  # each factor rounded to float32 once, as NumPy does with Python scalars
        arrays = (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else exp_avg_sq)
        factors = (int(amsgrad), float(f32(1.0 - beta1)), float(beta2), float(f32(1.0 - beta2)), float(eps),
                   float(weight_decay), int(bool(decoupled)), float(f32(1.0 - lr * weight_decay)),
                   float(f32(1.0 / math.sqrt(1.0 - beta2 ** step))), float(f32(lr / (1.0 - beta1 ** step))))
        lanes = self._adam_lanes
        vectors = param.size // lanes if lanes > 1 else 0
        if vectors:   # whole vectors, then the last elements one per work-item
            refs = [r for a in arrays for r in self._ref(a)]
            self._kernel("elementwise.cl", "adam_step_vec")(
                self.queue, (_round_up(vectors, 16),), (16,), vectors, *refs[:10], *factors)
        tail = param.size - vectors * lanes
        if tail:
            refs = [r for a in arrays for r in (a.base_data, a.offset // a.dtype.itemsize + vectors * lanes)]
            self._launch_flat("elementwise.cl", "adam_step", tail, *refs, *factors)

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "copy_channels", src, dst, offset)
        rows, src_c, inner = channels_inner(src)
        self._elementwise("copy_channels", src.size, src, src_c, dst, dst.shape[1], int(offset), inner,
                          int(accumulate))

    def slice_channels(self, src, dst, offset, accumulate=False):
        check_channel_range(self.name, "slice_channels", dst, src, offset)
        rows, dst_c, inner = channels_inner(dst)
        self._elementwise("slice_channels", dst.size, src, src.shape[1], dst, dst_c, int(offset), inner,
                          int(accumulate))


__all__ = ["OpenCLBackend", "Workspace"]
