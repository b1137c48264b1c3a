"""Convolution, pooling and batch-norm kernels of the NumPy backend.

Convolution is im2col + GEMM, with no loop over samples or pixels:

- the strided windows of the (padded) input are copied into a column matrix, per sample
  (N, groups, C/groups*kh*kw, Ho*Wo) for shallow kernels, or batch-innermost
  (groups, C/groups*kh*kw, Ho*Wo*N) from a (C, H, W, N) copy of the input, so each group is one
  GEMM over the whole batch (see _ConvPlan). The forward's columns are kept (up to
  SAVED_COLUMNS_LIMIT) for the weight gradient of the same input;
- input gradient: one GEMM per group, batch-innermost, then col2im adds each kernel offset's
  columns back as runs of Wo*N contiguous values.

Depthwise convolutions and pooling loop over the kh*kw kernel offsets only; max pooling runs in
one C pass instead where _pool_kernels was built. Every temporary comes from the caller's
Workspace, so a steady-state step allocates no arrays beyond NumPy's small index temporaries.
"""

from __future__ import annotations



from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..base import channels_inner, scratch
from .threads import deal as _deal
from .threads import deal_gemm_pieces as _deal_gemm_pieces
from .threads import gemm_lanes as _gemm_lanes
from .threads import gemm_threads as _gemm_threads
from .threads import in_lane as _in_lane
from .threads import num_threads as _num_threads
from .threads import run_gemm_pieces as _run_gemm_pieces
from .threads import run_lanes as _run_lanes
from .threads import single_threaded_blas as _single_threaded_blas


def _copy_free_reshape_supported() -> bool:
    try:
        np.empty(1).reshape((1,), copy=False)
    except TypeError:  # NumPy < 2.1
        return False
    return True


if _copy_free_reshape_supported():
    def _view(arr, shape):
        """A reshaped view; raises ValueError instead of silently copying (an ``out=`` target
        must be a view)."""
        return arr.reshape(shape, copy=False)
else:
    def _view(arr, shape):
        """A reshaped view; raises instead of silently copying (an ``out=`` target must be a view).
        Setting ``shape``, which NumPy 2.5 deprecates, is what older NumPy has for this."""
        view = arr.view()
        try:
            view.shape = shape
        except AttributeError as exc:  # "incompatible shape for in-place modification"
            raise ValueError(str(exc)) from None
        return view


def channel_shape(x):
    """(1, C, 1, ...): the shape that broadcasts a per-channel vector over an (N, C, ...) array."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _fill_borders(planes, padding, in_hw, h_axis, fill) -> None:
    """Set the padding rows/columns of ``planes`` (H at axis ``h_axis``, W right after it)."""
    ph, pw = padding
    h, w = in_hw
    lead = (slice(None),) * h_axis
    if ph:
        planes[lead + (slice(0, ph),)] = fill
        planes[lead + (slice(h + ph, None),)] = fill
    if pw:
        planes[lead + (slice(ph, h + ph), slice(0, pw))] = fill
        planes[lead + (slice(ph, h + ph), slice(w + pw, None))] = fill


def _padded(backend, x, padding, fill, ws, tag):
    """``x`` with ``padding`` rows/columns of ``fill`` around each plane (a workspace copy)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = scratch(ws, backend, tag, (n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    _fill_borders(xp, padding, (h, w), 2, fill)  # the interior is overwritten right below
    xp[:, :, ph:h + ph, pw:w + pw] = x
    return xp


def _offset_view(xp, i, j, stride, out_hw):
    """The (N, C, Ho, Wo) strided view of what kernel offset (i, j) (already dilated) reads."""
    sh, sw = stride
    ho, wo = out_hw
    return xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def _l2_bytes(default=512 << 10, path="/sys/devices/system/cpu/cpu0/cache/index2/size") -> int:
    """The L2 cache per core from sysfs (Linux: "1024K"), else ``default`` (the Zen 3 machine's)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return default
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except ValueError:
        return default


#: a core's L2, read once: what the cache-sized chunks and blocks below are sized by
L2_BYTES = _l2_bytes()


#: reduction depth C/groups*kh*kw from which a convolution runs batch-innermost; below it the
#: whole-batch GEMM is too thin for BLAS and the per-sample layout is faster (measured in
#: docs/numpy.md)
BATCH_INNER_MIN_DEPTH = 64


class _ConvPlan:
    """Shapes of one convolution and the layout of its columns.

    Per-sample: columns (N, G, Kg, Ho*Wo) cut from the NCHW input; one batched matmul with the
    (G, O/G, Kg) weights writes the NCHW output directly. Batch-innermost: columns
    (G, Kg, Ho*Wo*N) cut from a (C, H, W, N) copy of the input; each group is one GEMM over the
    whole batch, and window copies and col2im adds move runs of Wo*N values at a time.
    (Kg = C/G*kh*kw.)
    """

    def __init__(self, x_shape, w_shape, out_hw, stride, padding, dilation, groups):
        self.n, self.c, self.h, self.w = x_shape
        self.o, self.cg, self.kh, self.kw = w_shape
        self.ho, self.wo = out_hw
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.hp, self.wp = self.h + 2 * padding[0], self.w + 2 * padding[1]
        self.depth = self.cg * self.kh * self.kw
        self.batch_inner = self.depth >= BATCH_INNER_MIN_DEPTH
        if self.batch_inner:
            self.cols_shape = (groups, self.depth, self.ho * self.wo * self.n)
        else:
            self.cols_shape = (self.n, groups, self.depth, self.ho * self.wo)

    def weight(self, w):
        return _view(w, (self.groups, self.o // self.groups, self.depth))

    def windows(self, planes):
        """Read-only view of what each kernel offset reads for each output position (windows
        overlap): (N, C, kh, kw, Ho, Wo) of (N, C, Hp, Wp) planes, or batch-innermost
        (C, kh, kw, Ho, Wo, N) of (C, Hp, Wp, N) planes."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        if self.batch_inner:
            s_c, s_row, s_col, s_n = planes.strides
            head, tail = ((self.c,), (s_c,)), ((self.n,), (s_n,))
        else:
            s_n, s_c, s_row, s_col = planes.strides
            head, tail = ((self.n, self.c), (s_n, s_c)), ((), ())
        shape = head[0] + (self.kh, self.kw, self.ho, self.wo) + tail[0]
        strides = head[1] + (s_row * dh, s_col * dw, s_row * sh, s_col * sw) + tail[1]
        return as_strided(planes, shape, strides, writeable=False)


def _input_planes(backend, plan, x, ws):
    """The windows' source: x zero-padded, as (N, C, Hp, Wp) (x itself when nothing is added)
    or batch-innermost as (C, Hp, Wp, N), in workspace copies."""
    ph, pw = plan.padding
    if plan.batch_inner:
        planes = scratch(ws, backend, "conv_x_t", (plan.c, plan.hp, plan.wp, plan.n), x.dtype)
        _fill_borders(planes, plan.padding, (plan.h, plan.w), 1, 0.0)
        np.copyto(planes[:, ph:ph + plan.h, pw:pw + plan.w], x.transpose(1, 2, 3, 0))
        return planes
    return _padded(backend, x, plan.padding, 0.0, ws, "conv_xpad")


#: largest column matrix (elements; 8 MB of float32) kept from the forward pass for the weight
#: gradient: each conv of each context keeps its own, so this bounds the memory it costs
SAVED_COLUMNS_LIMIT = 1 << 21


def _im2col(backend, plan, x, ws, reuse=False):
    """The columns (``plan.cols_shape``) of the input windows.

    Columns up to SAVED_COLUMNS_LIMIT are kept per input buffer and geometry, with a copy of
    the input they came from; ``reuse=True`` (the weight gradient) takes them back when the
    input still equals that copy, instead of copying the windows again.
    """
    if plan.n * plan.groups * plan.depth * plan.ho * plan.wo > SAVED_COLUMNS_LIMIT:
        cols = scratch(ws, backend, "conv_cols", plan.cols_shape, x.dtype)
        _fill_columns(backend, plan, x, cols, ws)
        return cols
    key = (f"{x.__array_interface__['data'][0]} {x.shape} {x.strides} {plan.kh}x{plan.kw} {plan.stride} "
           f"{plan.padding} {plan.dilation} {plan.groups}")
    cols = scratch(ws, backend, "conv_saved_cols " + key, plan.cols_shape, x.dtype)
    # NaN never compares equal: a new snapshot cannot pass for the input
    source = scratch(ws, backend, "conv_saved_x " + key, x.shape, x.dtype, init=lambda buf: buf.fill(np.nan))
    if reuse:
        same = scratch(ws, backend, "conv_same", x.shape, np.bool_)
        np.equal(x, source, out=same)
        if same.all():
            return cols
    _fill_columns(backend, plan, x, cols, ws)
    np.copyto(source, x)
    return cols


def _fill_columns(backend, plan, x, cols, ws):
    windows = plan.windows(_input_planes(backend, plan, x, ws))
    np.copyto(_view(cols, windows.shape), windows)


def _grad_per_sample(plan, dy):
    """dy (N, O, Ho, Wo) as the (N, G, O/G, Ho*Wo) GEMM operand (a view)."""
    return _view(dy, (plan.n, plan.groups, plan.o // plan.groups, plan.ho * plan.wo))


def _grad_batch_inner(backend, plan, dy, ws):
    """dy as the (G, O/G, Ho*Wo*N) GEMM operand: a batch-innermost workspace copy."""
    dy_t = scratch(ws, backend, "conv_dy_t", (plan.o, plan.ho, plan.wo, plan.n), dy.dtype)
    np.copyto(dy_t, dy.transpose(1, 2, 3, 0))
    return _view(dy_t, (plan.groups, plan.o // plan.groups, plan.ho * plan.wo * plan.n))


class _Epilogue(NamedTuple):
    """What conv2d applies to its output: out * scale[o] + shift[o] (None: 1, 0) + residual
    (None: 0), then a ReLU."""

    scale: object
    shift: object
    relu: bool
    residual: object = None


def _epilogue(backend, out, bias, norm, relu, ws, residual=None):
    """The epilogue of conv2d's bias, folded inference batch norm, residual and ReLU (None when
    there is none): scale = gamma / sqrt(running_var + eps), shift = beta + (bias - running_mean) * scale."""
    if norm is None:
        return _Epilogue(None, bias, relu, residual) if bias is not None or relu or residual is not None else None
    channels = (out.shape[1],)
    scale = scratch(ws, backend, "conv_epilogue_scale", channels, out.dtype)
    np.add(norm.running_var, norm.eps, out=scale)
    np.sqrt(scale, out=scale)
    np.divide(norm.gamma, scale, out=scale)
    shift = scratch(ws, backend, "conv_epilogue_shift", channels, out.dtype)
    if bias is None:
        np.negative(norm.running_mean, out=shift)
    else:
        np.subtract(bias, norm.running_mean, out=shift)
    shift *= scale
    shift += norm.beta
    return _Epilogue(scale, shift, relu, residual)


def _finish(backend, out, epi, p0, p1, i0=0, i1=None):
    """The epilogue on values [i0, i1) of output planes [p0, p1) (p = n*O + o), run by a lane
    right after it wrote them, while they are in cache."""
    if epi is not None:
        n, c, inner = channels_inner(out)
        backend.conv_kernels.epilogue(out, epi.scale, epi.shift, n, c, inner, p0, p1, i0,
                                      inner if i1 is None else i1, epi.relu, epi.residual)


def conv2d(backend, x, w, out, stride, padding, dilation, groups, ws, bias=None, norm=None, relu=False,
           residual=None):
    epi = _epilogue(backend, out, bias, norm, relu, ws, residual)
    vectors = [] if epi is None else [a for a in (epi.scale, epi.shift, epi.residual) if a is not None]
    if _c_conv(backend, x, w, out, *vectors):
        if _is_depthwise(x, w, groups):
            _c_depthwise_forward(backend, x, w, out, stride, padding, dilation, epi)
        else:
            _c_conv_forward(backend, x, w, out, stride, padding, dilation, groups, ws, epi)
        return
    _numpy_conv2d(backend, x, w, out, stride, padding, dilation, groups, ws)
    if epi is not None:  # without the C kernels (or for odd layouts): whole-array passes
        shape = channel_shape(out)
        if epi.scale is not None:
            out *= _view(epi.scale, shape)
        if epi.shift is not None:
            out += epi.shift.reshape(shape)
        if epi.residual is not None:
            out += epi.residual
        if epi.relu:
            np.maximum(out, 0, out=out)


def _numpy_conv2d(backend, x, w, out, stride, padding, dilation, groups, ws):
    if _is_depthwise(x, w, groups):
        _depthwise_forward(backend, x, w, out, stride, padding, dilation, ws)
        return
    plan = _ConvPlan(x.shape, w.shape, out.shape[2:], stride, padding, dilation, groups)
    cols = _im2col(backend, plan, x, ws)
    if not plan.batch_inner:
        np.matmul(plan.weight(w), cols, out=_grad_per_sample(plan, out))
        return
    result = scratch(ws, backend, "conv_out_t", (groups, plan.o // groups, cols.shape[2]), out.dtype)
    np.matmul(plan.weight(w), cols, out=result)
    np.copyto(out, _view(result, (plan.o, plan.ho, plan.wo, plan.n)).transpose(3, 0, 1, 2))


def conv2d_backward_data(backend, dy, w, dx, stride, padding, dilation, groups, accumulate, ws):
    """Always batch-innermost: one GEMM per group, then col2im adds runs of Wo*N contiguous
    values per kernel offset instead of Wo-long pieces per sample."""
    if _c_conv(backend, dy, w, dx):
        if _is_depthwise(dx, w, groups):
            _c_depthwise_backward_data(backend, dy, w, dx, stride, padding, dilation, accumulate)
        else:
            _c_conv_backward_data(backend, dy, w, dx, stride, padding, dilation, groups, accumulate, ws)
        return
    if _is_depthwise(dx, w, groups):
        _depthwise_backward_data(backend, dy, w, dx, stride, padding, dilation, accumulate, ws)
        return
    plan = _ConvPlan(dx.shape, w.shape, dy.shape[2:], stride, padding, dilation, groups)
    n, c, ho, wo = plan.n, plan.c, plan.ho, plan.wo
    dcols = scratch(ws, backend, "conv_dcols_t", (groups, plan.depth, ho * wo * n), dx.dtype)
    np.matmul(plan.weight(w).transpose(0, 2, 1), _grad_batch_inner(backend, plan, dy, ws), out=dcols)
    target = scratch(ws, backend, "conv_dx_t", (c, plan.hp, plan.wp, n), dx.dtype)
    target.fill(0.0)
    by_offset = _view(dcols, (c, plan.kh, plan.kw, ho, wo, n))
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(plan.kh):
        for j in range(plan.kw):
            region = target[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            region += by_offset[:, i, j]
    ph, pw = padding
    backend.store(target[:, ph:ph + plan.h, pw:pw + plan.w].transpose(3, 0, 1, 2), dx, accumulate)


def conv2d_backward_filter(backend, x, dy, dw, stride, padding, dilation, groups, accumulate, ws):
    if _c_conv(backend, x, dy, dw):
        if _is_depthwise(x, dw, groups):
            _c_depthwise_backward_filter(backend, x, dy, dw, stride, padding, dilation, accumulate)
        else:
            _c_conv_backward_filter(backend, x, dy, dw, stride, padding, dilation, groups, accumulate, ws)
        return
    if _is_depthwise(x, dw, groups):
        _depthwise_backward_filter(backend, x, dy, dw, stride, padding, dilation, accumulate, ws)
        return
    plan = _ConvPlan(x.shape, dw.shape, dy.shape[2:], stride, padding, dilation, groups)
    og = plan.o // groups
    cols = _im2col(backend, plan, x, ws, reuse=True)
    target = scratch(ws, backend, "conv_dw", dw.shape, dw.dtype) if accumulate else dw
    as_groups = _view(target, (groups, og, plan.depth))
    if plan.batch_inner:
        # cols @ dy^T into a (G, Kg, O/G) scratch then a small transposed copy: BLAS runs this
        # orientation of the long-reduction product markedly faster (docs/numpy.md)
        transposed = scratch(ws, backend, "conv_dw_t", (groups, plan.depth, og), dw.dtype)
        np.matmul(cols, _grad_batch_inner(backend, plan, dy, ws).transpose(0, 2, 1), out=transposed)
        np.copyto(as_groups, transposed.transpose(0, 2, 1))
    else:
        per_sample = scratch(ws, backend, "conv_dw_rows", (plan.n, groups, og, plan.depth), dw.dtype)
        np.matmul(_grad_per_sample(plan, dy), cols.transpose(0, 1, 3, 2), out=per_sample)
        np.sum(per_sample, axis=0, out=as_groups)
    if accumulate:
        dw += target


# ------------------------------------------------------------- conv bias
#: values per (sample, channel) plane from which the bias ops run as C passes over whole
#: planes, split over threads; thinner (N, C) layouts (a Linear layer's) stay NumPy ufuncs
BIAS_MIN_INNER = 16


def _c_bias(backend, y, *arrays) -> bool:
    return backend.conv_kernels is not None and y.ndim > 2 and channels_inner(y)[2] >= BIAS_MIN_INNER \
        and y.dtype in (np.float32, np.float64) \
        and all(a.flags.c_contiguous and a.dtype == y.dtype for a in (y,) + arrays)


def add_bias(backend, out, bias) -> bool:
    """out += bias per channel with the C pass, over threads; False where it does not apply."""
    if not _c_bias(backend, out, bias):
        return False
    n, c, inner = channels_inner(out)
    _run_lanes(n * c, inner, lambda lo, hi, k: backend.conv_kernels.bias_add(out, bias, n, c, inner, lo, hi))
    return True


def bias_grad(backend, dy, dbias, accumulate) -> bool:
    """dbias (+)= dy summed per channel with the C pass (each channel wholly on one thread, so
    the bits do not depend on the thread count); False where it does not apply."""
    if not _c_bias(backend, dy, dbias):
        return False
    n, c, inner = channels_inner(dy)
    _run_lanes(c, n * inner, lambda lo, hi, k: backend.conv_kernels.bias_grad(dy, dbias, n, c, inner, lo, hi,
                                                                             accumulate))
    return True


# ------------------------------------------------------ depthwise convolution
# One input channel and one output channel per group: a GEMM would have an inner dimension of 1,
# so these loop over the kernel offsets and scale whole (N, C, Ho, Wo) windows instead.
def _is_depthwise(x, w, groups):
    return groups > 1 and groups == x.shape[1] == w.shape[0] and w.shape[1] == 1


def _tap(w, i, j):
    """Kernel weight (i, j) of every channel, shaped to scale (N, C, H, W) arrays."""
    return w[:, 0, i, j].reshape(1, -1, 1, 1)


def _depthwise_forward(backend, x, w, out, stride, padding, dilation, ws):
    def lane(lo, hi, k):
        xp = _padded(backend, x[lo:hi], padding, 0.0, ws, f"conv_xpad/{k}")
        rows = out[lo:hi]
        term = scratch(ws, backend, f"conv_dw_term/{k}", rows.shape, out.dtype)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                window = _offset_view(xp, i * dilation[0], j * dilation[1], stride, out.shape[2:])
                if i == 0 and j == 0:
                    np.multiply(window, _tap(w, 0, 0), out=rows)
                else:
                    np.multiply(window, _tap(w, i, j), out=term)
                    rows += term

    _run_lanes(x.shape[0], out[0].size * w.shape[2] * w.shape[3], lane)


def _depthwise_backward_data(backend, dy, w, dx, stride, padding, dilation, accumulate, ws):
    c, h, wd = dx.shape[1:]
    ph, pw = padding

    def lane(lo, hi, k):
        rows = dx[lo:hi]
        if ph or pw:
            target = scratch(ws, backend, f"conv_dxpad/{k}", (hi - lo, c, h + 2 * ph, wd + 2 * pw), dx.dtype)
            target.fill(0.0)
        else:
            target = rows
            if not accumulate:
                rows.fill(0.0)
        term = scratch(ws, backend, f"conv_dw_term/{k}", (hi - lo,) + dy.shape[1:], dy.dtype)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                np.multiply(dy[lo:hi], _tap(w, i, j), out=term)
                region = _offset_view(target, i * dilation[0], j * dilation[1], stride, dy.shape[2:])
                region += term
        if ph or pw:
            backend.store(target[:, :, ph:ph + h, pw:pw + wd], rows, accumulate)

    _run_lanes(dx.shape[0], dy[0].size * w.shape[2] * w.shape[3], lane)


def _depthwise_backward_filter(backend, x, dy, dw, stride, padding, dilation, accumulate, ws):
    c, _, kh, kw = dw.shape
    partial = {}

    def lane(lo, hi, k):
        xp = _padded(backend, x[lo:hi], padding, 0.0, ws, f"conv_xpad/{k}")
        partial[k] = taps = scratch(ws, backend, f"conv_dw_taps/{k}", (c, kh, kw), dw.dtype)
        for i in range(kh):
            for j in range(kw):
                window = _offset_view(xp, i * dilation[0], j * dilation[1], stride, dy.shape[2:])
                np.einsum("nchw,nchw->c", window, dy[lo:hi], out=taps[:, i, j])

    lanes = _run_lanes(x.shape[0], dy[0].size * kh * kw, lane)
    # lane order, not thread timing, fixes the summation order
    backend.store(_view(partial[0], dw.shape), dw, accumulate)
    for k in range(1, lanes):
        dw += _view(partial[k], dw.shape)

# --------------------------------------------------- convolution with the C kernels
# Where _conv_kernels was built (backend.conv_kernels): im2col reads the NCHW input directly (padding in the copy)
# into chunks of columns small enough to stay in L2 while their GEMM runs, so no
# full-size column matrix or transposed copy of the input or gradient is ever made.
def _c_conv(backend, *arrays) -> bool:
    dtype = arrays[0].dtype
    return backend.conv_kernels is not None and dtype in (np.float32, np.float64) \
        and all(a.flags.c_contiguous and a.dtype == dtype for a in arrays)


def _geometry(in_chw, kernel, stride, padding, dilation, out_hw):
    """The C kernels' geometry tuple (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)."""
    return tuple(in_chw) + tuple(kernel) + tuple(stride) + tuple(padding) + tuple(dilation) + tuple(out_hw)


#: elements in one chunk of columns (1 MB of float32): copied, then multiplied while in L2
COLUMN_CHUNK = 1 << 18


def _chunks(plan, lanes, whole_samples=False):
    """[(n0, n1, r0, r1)]: several whole samples per chunk, or bands of output rows of one sample
    (whole single samples with ``whole_samples``); whole-sample chunks come in a multiple of
    ``lanes`` so the lanes get equal shares."""
    per_row = plan.groups * plan.depth * plan.wo
    per_sample = per_row * plan.ho
    if per_sample <= COLUMN_CHUNK or whole_samples:
        count = -(-plan.n * per_sample // COLUMN_CHUNK)
        count = min(plan.n, -(-count // lanes) * lanes)
        step = -(-plan.n // count)
        return [(n0, min(plan.n, n0 + step), 0, plan.ho) for n0 in range(0, plan.n, step)]
    bands = -(-plan.ho // max(1, COLUMN_CHUNK // per_row))
    rows = -(-plan.ho // bands)  # even bands: a short last band makes a thin GEMM
    return [(n, n + 1, r0, min(plan.ho, r0 + rows)) for n in range(plan.n) for r0 in range(0, plan.ho, rows)]


def _columns_size(plan, chunks):
    """Elements of the largest chunk's columns: the size of each lane's column buffer."""
    return max((n1 - n0) * (r1 - r0) for n0, n1, r0, r1 in chunks) * plan.groups * plan.depth * plan.wo


def _chunk_columns(backend, plan, x, geometry, chunk, size, lane, ws):
    """The columns of one chunk as a (samples, G, Kg, pixels) view of lane ``lane``'s buffer."""
    n0, n1, r0, r1 = chunk
    pixels = (r1 - r0) * plan.wo
    per_sample = plan.groups * plan.depth * pixels
    if _pointwise(plan):
        return _chunk_of(plan, x, chunk)
    buf = scratch(ws, backend, f"conv_cols/{lane}", (size,), x.dtype)
    backend.conv_kernels.im2col(x, buf, geometry, plan.n, n0, n1, r0, r1, per_sample, pixels)
    return _view(buf[:(n1 - n0) * per_sample], (n1 - n0, plan.groups, plan.depth, pixels))


def _chunk_of(plan, a, chunk):
    """Rows ``chunk`` of an (N, O, Ho, Wo) array as a (samples, G, O/G, pixels) view."""
    n0, n1, r0, r1 = chunk
    rows = _view(a[n0:n1], (n1 - n0, a.shape[1], plan.ho * plan.wo))[:, :, r0 * plan.wo:r1 * plan.wo]
    return _view(rows, (n1 - n0, plan.groups, a.shape[1] // plan.groups, (r1 - r0) * plan.wo))


def _direct(backend, stride, padding) -> bool:
    """Whether the direct kernel computes this stride-1 conv (forward, or its input gradient
    with ``padding`` (k - 1)*d - p): it needs AVX2 with FMA or AVX-512 (``isa`` >= 1) to beat
    im2col + GEMM."""
    return backend.conv_kernels.isa >= 1 and tuple(stride) == (1, 1) and min(padding) >= 0


def _strided_pointwise(plan) -> bool:
    """An ungrouped 1x1 conv with a stride past 1 (the ResNet's shortcuts)."""
    return (plan.kh, plan.kw, plan.groups) == (1, 1, 1) and tuple(plan.stride) != (1, 1)


def _strided_pointwise_direct(backend, plan, outputs) -> bool:
    """Whether a strided 1x1 conv's forward (``outputs`` output planes) or input gradient
    (``outputs`` input planes) runs on the pointwise blocks (pointwise_strided,
    pointwise_scatter): ungrouped, up to POINTWISE_DIRECT_MAX_OUT, with AVX2 or AVX-512. On
    AVX2 too, unlike the stride-1 pointwise conv: its GEMM path pays an im2col pass and a BLAS
    call per sample on planes a quarter the size (the ResNet's 32->64 shortcut forward measured
    faster so on AVX2, docs/numpy.md)."""
    return backend.conv_kernels.isa >= 1 and _strided_pointwise(plan) and outputs <= POINTWISE_DIRECT_MAX_OUT


def _pointwise(plan) -> bool:
    """A 1x1, stride-1, unpadded conv: its columns are the input itself."""
    return (plan.kh, plan.kw, plan.stride, plan.padding) == (1, 1, (1, 1), (0, 0))


#: output plane (Ho*Wo) from which the direct kernel computes a weight gradient faster than
#: im2col + GEMM (measurements in docs/numpy.md)
DIRECT_FILTER_MIN_PLANE = 512
#: with at most this many input channels per group and output channels, the direct weight
#: gradient already wins from half that plane (16x16): its GEMM is too thin (docs/numpy.md);
#: on AVX2 it wins from that plane at any width
DIRECT_FILTER_NARROW = 32


def _algorithm(op: str, count: int, out_hw, isa: int = 2, channels: int | None = None, strided: bool = False) -> int:
    """Which of ``count`` algorithms runs an op: 0 im2col + GEMM, 1 the direct kernel, 2
    Winograd (where they apply). Fixed by the geometry and the instruction set the C kernels
    were loaded for (``isa``: 2 AVX-512, 1 AVX2), never timed, so every run of a network on one
    machine (a resumed one, one in another process) computes the same bits. Winograd, where it
    applies (``_winograd``), wins the forward and input gradient, else the direct kernel; for
    the weight gradient Winograd wins where it applies (``_winograd_filter``) at any plane,
    else the direct kernel only on large output planes (16x16 ones on AVX2 unless ``strided``,
    or with ``channels``, the larger of C/G and O, at most DIRECT_FILTER_NARROW), dilated or
    not (docs/numpy.md)."""
    if count == 1:
        return 0
    if op == "filter" and count == 2:
        plane = out_hw[0] * out_hw[1]
        narrow = (isa == 1 and not strided) or (channels is not None and channels <= DIRECT_FILTER_NARROW)
        if plane < (DIRECT_FILTER_MIN_PLANE // 2 if narrow else DIRECT_FILTER_MIN_PLANE):
            return 0
    return count - 1


def _c_conv_forward(backend, x, w, out, stride, padding, dilation, groups, ws, epi=None):
    plan = _ConvPlan(x.shape, w.shape, out.shape[2:], stride, padding, dilation, groups)
    runs = [_gemm_forward]
    if _s2(backend, plan):
        runs.append(_s2_forward)
    elif _direct_forward_applies(backend, plan):
        runs.append(_direct_forward)
        if tuple(stride) == (1, 1) and _wg(backend, plan, plan.c, plan.o, out.shape[2:]):
            runs.append(_wg_forward)
        elif tuple(stride) == (1, 1) and _winograd(backend, plan, plan.c, plan.o, out.shape[2:]):
            runs.append(_winograd_forward)
    args = (backend, x, w, plan, ws)
    runs[_algorithm("forward", len(runs), out.shape[2:], backend.conv_kernels.isa)](*args, out, epi)


#: input channels per group up to which a strided conv runs on the direct kernel rather than
#: im2col + GEMM: with more, the phase rows a block of outputs reads from each chunk of channels
#: no longer stay in L1 across output channels (measured on AVX2 and AVX-512, docs/numpy.md)
DIRECT_STRIDED_MAX_CHANNELS = 32


def _direct_forward_applies(backend, plan) -> bool:
    """Stride 1 with AVX2 or AVX-512 (a pointwise conv only where _pointwise_direct says); strided
    kxk (k > 1) convs of at most DIRECT_STRIDED_MAX_CHANNELS input channels per group (on
    AVX-512 float32, output rows of at most 8 run the kernel's 8-lane build, _conv_kernels.c's
    direct_half); strided 1x1 ones where _strided_pointwise_direct says (_conv_kernels.c's
    pointwise_strided: each sample's pixels gathered, then the pointwise blocks, where im2col's
    pass over the batch and a BLAS call per sample cost the ResNet's 32->64 shortcut twice the
    time on AVX-512, docs/numpy.md)."""
    if backend.conv_kernels.isa < 1 or min(plan.padding) < 0:
        return False
    if tuple(plan.stride) == (1, 1):
        return not _pointwise(plan) or _pointwise_direct(backend, plan, plan.o)
    if plan.kh * plan.kw == 1:
        return _strided_pointwise_direct(backend, plan, plan.o)
    return plan.cg <= DIRECT_STRIDED_MAX_CHANNELS


#: output channels (of the forward, or input channels of the input gradient) up to which an
#: ungrouped pointwise conv runs on the direct kernel's pointwise_conv rather than a BLAS GEMM per
#: sample: measured on AVX-512 with 64 and 128, lost with 256 (docs/numpy.md)
POINTWISE_DIRECT_MAX_OUT = 128


def _pointwise_direct(backend, plan, outputs) -> bool:
    """Whether a pointwise conv (forward, or input gradient) with ``outputs`` output planes per
    sample runs on direct_conv (its pointwise_conv: no copy, sums and epilogue in registers): on
    AVX-512 only, ungrouped, up to POINTWISE_DIRECT_MAX_OUT (on AVX2 its 4 x 3 blocks lost to the
    GEMM, docs/numpy.md)."""
    return backend.conv_kernels.isa == 2 and plan.groups == 1 and outputs <= POINTWISE_DIRECT_MAX_OUT


#: multiply-adds of a direct forward from which its samples are dealt to the lanes in pieces
#: (threads.deal) instead of split in halves: each call packs the taps again, which the smaller
#: convs (the CIFAR CNN's, the ResNet's) would pay once per piece (docs/numpy.md)
DIRECT_DEAL_MIN = 1 << 28
#: pieces per lane of a dealt direct forward
DIRECT_DEAL_PIECES = 4


def _direct_forward(backend, x, w, plan, ws, out, epi=None):
    geometry = _geometry(x.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, out.shape[2:])
    scale, shift, relu, residual = epi or (None, None, False, None)
    work = out[0].size * plan.depth

    def lane(lo, hi, k):
        backend.conv_kernels.direct_conv(x, w, out, geometry, plan.groups, plan.o, plan.n, lo, hi, False, False,
                                         scale, shift, relu, residual)

    lanes = _num_threads()
    if lanes > 1 and plan.n * work >= DIRECT_DEAL_MIN:
        _deal(plan.n, -(-plan.n // (DIRECT_DEAL_PIECES * lanes)), lane, lanes)
    else:
        _run_lanes(plan.n, work, lane)


#: fewest input channels of a 3x3 stride-2 forward run by _s2_forward, by ``isa``: on AVX-512
#: from 32 (the ResNet's 32 -> 64 layer, against the direct kernel; 24 and 16 lost), on AVX2
#: from 32 too since it runs whole on tile_conv (S2_TILE_GEMM_MIN_DEPTH: the 32 -> 64 forward
#: beat the direct kernel; with np.matmul's GEMMs it had tied it); narrower ones
#: keep the direct kernel or GEMM (docs/numpy.md, sessions 39 and 42)
S2_MIN_CHANNELS = {1: 32, 2: 32}


#: the instruction sets (``isa``) _s2_forward runs on, where it was measured to win: AVX2 and
#: AVX-512 (docs/numpy.md)
S2_ISAS = (1, 2)
#: fewest input channels from which _s2_forward's GEMMs run on the register blocks (the whole
#: conv in one tile_conv call), by ``isa``: on AVX2 its 4 x 3 blocks in one call measured faster
#: than np.matmul per chunk on the 32 -> 64 and 64 -> 128 layers (docs/numpy.md, session 42); on
#: AVX-512 from 32 on every CPU kind, Zen 4 too, where _tile_gemm's TILE_GEMM_MIN_DEPTH had left
#: the ResNet's 32 -> 64 layer on BLAS per chunk, slower at batch 32 and 8 (docs/numpy.md, session 48)
S2_TILE_GEMM_MIN_DEPTH = {1: 32, 2: 32}


def _s2(backend, plan) -> bool:
    """Whether a 3x3 stride-2 forward runs as F(2x2, 2x2) on its phases (_s2_forward): undilated,
    ungrouped, padding >= 0, S2_MIN_CHANNELS[isa] input channels, on S2_ISAS."""
    isa = backend.conv_kernels.isa
    return isa in S2_ISAS and (plan.kh, plan.kw, plan.groups) == (3, 3, 1) \
        and tuple(plan.stride) == (2, 2) and tuple(plan.dilation) == (1, 1) and min(plan.padding) >= 0 \
        and plan.c >= S2_MIN_CHANNELS[isa]


#: tiles (2x2 outputs) per chunk of samples of _s2_forward (at least one sample)
S2_TILES = 128
#: input-channel multiple of the GEMM depth at F(2x2, 2x2)'s 3x3 positions: the four phases
#: meet at the corners, two at the edges, one at the centre (_conv_kernels.c, s2_input)
S2_DEPTHS = (4, 2, 4, 2, 1, 2, 4, 2, 4)


def _s2_forward(backend, x, w, plan, ws, out, epi=None):
    """The 3x3 stride-2 conv as the sum of four stride-1 convs on the input's phase planes (2x2,
    2x1, 1x2 and 1x1 taps), tiles of 2x2 outputs as Winograd F(2x2, 2x2) and F(2, 2): 9 GEMMs per
    chunk of samples, 25 multiply-adds per tile and input channel instead of 36."""
    geometry = _geometry(x.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, out.shape[2:])
    th, tw = (plan.ho + 1) // 2, (plan.wo + 1) // 2
    kernels, n, o = backend.conv_kernels, plan.n, plan.o
    _tile_run(backend, _TileTransforms(
        "s2", S2_DEPTHS, S2_TILES, th * tw, 7 * (4 * tw + 4),
        lambda u: kernels.s2_weights(w, u, o, plan.c),
        lambda v, n0, n1, vs, rows: kernels.s2_input(x, v, geometry, n, n0, n1, th, tw, vs, rows),
        lambda m, n0, n1, ms, rows: kernels.s2_output(m, out, geometry, o, n, n0, n1, th, tw, ms, rows),
        whole=lambda u, v, m, rows, per, vs, ms, lanes, e: kernels.tile_conv(
            "s2", w, x, out, u, v, m, rows, geometry, o, plan.c, n, per, th, tw, vs, ms, False, False, lanes, *e)),
        x, out, plan.c, o, ws, epi)


def _batched_pointwise(backend, w, src, dst, plan, epi=None, transpose=False) -> bool:
    """An ungrouped pointwise conv's forward (dst = w src per sample, then ``epi``'s shift,
    residual and ReLU) or, ``transpose``, input gradient (dst = w^T src, then ``epi``'s
    residual: dx itself where it adds to dx) as BLAS's product per sample in one C call
    (_blas_kernels.gemm_batch over the lanes), the sums starting from shift + residual written
    into dst: no pass of an epilogue over dst after the product, and no product per chunk
    handed over from Python (measured against those chunks in docs/numpy.md, session 58).
    False where it does not run (no BLAS entry, grouped, a folded batch norm's scale): the
    caller's chunks then do."""
    if backend.blas_batch is None or plan.groups != 1 or (epi is not None and epi.scale is not None):
        return False
    shift, relu, residual = (None, False, None) if epi is None else (epi.shift, epi.relu, epi.residual)
    n = plan.n
    a = _view(w, (plan.o, plan.depth))
    lanes = 1 if _in_lane() else _gemm_lanes()
    with _single_threaded_blas():
        return backend.blas_batch(a.T if transpose else a, _view(src, (n, src.shape[1], -1)),
                                  _view(dst, (n, dst.shape[1], -1)), shift,
                                  None if residual is None else _view(residual, (n, dst.shape[1], -1)), relu, lanes)


def _gemm_forward(backend, x, w, plan, ws, out, epi=None):
    if _pointwise(plan) and _batched_pointwise(backend, w, x, out, plan, epi):
        return
    geometry = _geometry(x.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, out.shape[2:])
    weight = plan.weight(w)
    chunks = _chunks(plan, _gemm_lanes())
    size = _columns_size(plan, chunks)

    def lane(lo, hi, k):
        for chunk in chunks[lo:hi]:
            cols = _chunk_columns(backend, plan, x, geometry, chunk, size, k, ws)
            np.matmul(weight, cols, out=_chunk_of(plan, out, chunk))
            n0, n1, r0, r1 = chunk
            _finish(backend, out, epi, n0 * plan.o, n1 * plan.o, r0 * plan.wo, r1 * plan.wo)

    _run_gemm_pieces(len(chunks), lane)


def _direct_filter(backend, stride, padding) -> bool:
    """Whether the direct kernel may compute this weight gradient (where _algorithm's plane rule
    then picks it): stride 1 where _direct says; strided ones on the input's phase planes, on
    AVX2 or AVX-512, where the rule was measured to hold (on AVX2 as on AVX-512: by width too;
    docs/numpy.md)."""
    return _direct(backend, stride, padding) or (backend.conv_kernels.isa >= 1 and min(padding) >= 0)


#: the instruction sets (``isa``) on which a pointwise conv's weight gradient runs on the direct
#: kernel (its in-place blocks, _conv_kernels.c's DEFINE_PW_FILTER) from an output plane (Ho*Wo)
#: of POINTWISE_FILTER_MIN_PLANE: AVX-512, where it beat OpenBLAS's GEMM with its Haswell and
#: its SkylakeX kernels on 16x16 and 32x32 planes and lost on 8x8 ones; on AVX2 the bench layer's
#: step about tied the first and lost against the second (docs/numpy.md)
POINTWISE_FILTER_ISAS = (2,)
POINTWISE_FILTER_MIN_PLANE = 256


def _pointwise_filter(backend, plan) -> bool:
    """Whether a 1x1 weight gradient is ranked by POINTWISE_FILTER_MIN_PLANE: a pointwise
    (_pointwise), ungrouped one on POINTWISE_FILTER_ISAS. Strided 1x1 ones keep the GEMM
    (measured to lose on the direct kernel, docs/numpy.md)."""
    return backend.conv_kernels.isa in POINTWISE_FILTER_ISAS and _pointwise(plan) and plan.groups == 1


def _c_conv_backward_filter(backend, x, dy, dw, stride, padding, dilation, groups, accumulate, ws):
    args = (backend, x, dy, dw.shape, stride, padding, dilation, groups)
    plan = _ConvPlan(x.shape, dw.shape, dy.shape[2:], tuple(stride), tuple(padding), dilation, groups)
    if _pointwise_filter(backend, plan):
        direct = dy.shape[2] * dy.shape[3] >= POINTWISE_FILTER_MIN_PLANE
        (_direct_backward_filter if direct else _gemm_backward_filter)(*args, dw, accumulate, ws)
        return
    runs = [_gemm_backward_filter]
    if _direct_filter(backend, stride, padding) and (dw.shape[2], dw.shape[3]) != (1, 1):
        runs.append(_direct_backward_filter)
        if tuple(stride) == (1, 1) and _winograd_filter(backend, dw.shape, dilation, groups):
            runs.append(_winograd_backward_filter)
        elif tuple(stride) == (1, 1) and _wg_filter(backend, dw.shape, dilation, groups, dy.shape[2:]):
            runs.append(_wg_backward_filter)
        elif _s2_filter(backend, dw.shape, stride, padding, dilation, groups, dy.shape[2:]):
            runs.append(_s2_backward_filter)
    channels = max(x.shape[1] // groups, dw.shape[0])
    runs[_algorithm("filter", len(runs), dy.shape[2:], backend.conv_kernels.isa, channels, tuple(stride) != (1, 1))](
        *args, dw, accumulate, ws)


#: fewest input channels of a 3x3 stride-2 weight gradient run by _s2_backward_filter, by ``isa``:
#: 32 on AVX2 (its GEMMs on tile_gemm: the ResNet's 32 -> 64 layer, every batch from 8 to 64, and
#: the 48 -> 96 and 32 -> 32 layers won on Zen 4 held to AVX2; with 16 the
#: direct kernel won at batch 8; with np.matmul's GEMMs it had won only from 64; docs/numpy.md,
#: session 49), 16 on AVX-512, where fewer than S2_FILTER_NARROW_INPUTS input channels take it up
#: to a dy plane (Ho*Wo) of S2_FILTER_NARROW_MAX_PLANE: with 16 channels the direct kernel won on
#: 24x24 and 32x32 dy planes, lost on 16x16 and 8x8 ones (the ResNet's 16 -> 32 layer;
#: docs/numpy.md, session 39)
S2_FILTER_MIN_CHANNELS = {1: 32, 2: 16}
S2_FILTER_NARROW_INPUTS = 32
S2_FILTER_NARROW_MAX_PLANE = 256
#: the instruction sets (``isa``) it runs on: measured on Zen 4 with both builds (the AVX2 one
#: with OpenBLAS held to Haswell; docs/numpy.md)
S2_FILTER_ISAS = (1, 2)
#: the instruction sets on which _s2_backward_filter's GEMMs run on tile_gemm (register blocks,
#: adding into the lane's sums) instead of np.matmul: AVX-512 (session 33) and AVX2 (the bench's
#: 64 -> 128 layer measured faster on Zen 4 held to AVX2, session 49; docs/numpy.md)
S2_FILTER_TILE_GEMM_ISAS = (1, 2)
#: tiles (2x2 outputs) per chunk of samples of _s2_backward_filter (at least one sample): 4
#: samples of the bench's 16x16 outputs (measured against 1, 2 and 8; more left L2), so the
#: ResNet's 8x8 ones come 16 to a chunk, one per lane, not 4 chunks of tiny GEMMs (docs/numpy.md)
S2_FILTER_TILES = 256


def _s2_filter(backend, w_shape, stride, padding, dilation, groups, out_hw) -> bool:
    """Whether a weight gradient runs as the adjoint of the phase Winograd (_s2_backward_filter):
    3x3, stride 2, undilated, ungrouped, padding >= 0, S2_FILTER_MIN_CHANNELS[isa] input channels
    (fewer than S2_FILTER_NARROW_INPUTS only up to an output plane ``out_hw`` of
    S2_FILTER_NARROW_MAX_PLANE), on S2_FILTER_ISAS."""
    narrow = w_shape[1] < S2_FILTER_NARROW_INPUTS
    return backend.conv_kernels.isa in S2_FILTER_ISAS and tuple(w_shape[2:]) == (3, 3) and groups == 1 \
        and tuple(stride) == (2, 2) and tuple(dilation) == (1, 1) and min(padding) >= 0 \
        and w_shape[1] >= S2_FILTER_MIN_CHANNELS[backend.conv_kernels.isa] \
        and (not narrow or out_hw[0] * out_hw[1] <= S2_FILTER_NARROW_MAX_PLANE)


#: F(2x2, 2x2)'s taps as sums of the weight gradient's GEMM products: tap (i, j) of the 3x3 kernel
#: is the sum of segment ``seg`` (the phase: 0 00, 1 01, 2 10, 3 11, as _conv_kernels.c's s2_row)
#: of four positions (p*3 + q): G's rows are g0, g0 + g1, g1, so tap 0 of a 2-tap side gets
#: positions 0 and 1, tap 2 positions 1 and 2; the 1-tap side's tap gets positions 0 and 2
#: (s2_weights writes its value at both)
S2_TAP_SUMS = {(0, 0): (0, (0, 1, 3, 4)), (0, 2): (0, (1, 2, 4, 5)), (2, 0): (0, (3, 4, 6, 7)),
               (2, 2): (0, (4, 5, 7, 8)), (0, 1): (1, (0, 2, 3, 5)), (2, 1): (1, (3, 5, 6, 8)),
               (1, 0): (2, (0, 1, 6, 7)), (1, 2): (2, (1, 2, 7, 8)), (1, 1): (3, (0, 2, 6, 8))}


def _s2_row(p, q, seg):
    """_conv_kernels.c's s2_row in input-channel blocks: where segment ``seg`` of position (p, q)
    starts in that position's GEMM rows."""
    return (seg >= 1 and q % 2 == 0) + (seg >= 2 and p % 2 == 0) + (seg >= 3)


def _s2_backward_filter(backend, x, dy, w_shape, stride, padding, dilation, groups, dw, accumulate, ws):
    """dw (+)= the 3x3 stride-2 weight gradient as the adjoint of _s2_forward's F(2x2, 2x2) on
    the phases: per chunk of samples, the forward's input tiles (s2_input) and dy's tiles
    (s2_grad, its adjoint of s2_output), 9 GEMMs (K(p, q) rows, tiles) x (tiles, O) summed over
    the chunks of a lane (25 multiply-adds per tile, input and output channel instead of 36),
    the lanes' sums added in lane order (a fixed summation order for a given lane count), then
    the taps (S2_TAP_SUMS)."""
    geometry = _geometry(x.shape[1:], w_shape[2:], stride, padding, dilation, dy.shape[2:])
    n, c, o, kernels = x.shape[0], x.shape[1], w_shape[0], backend.conv_kernels
    th, tw = (dy.shape[2] + 1) // 2, (dy.shape[3] + 1) // 2
    tiles = th * tw
    per, chunks = _sample_chunks(n, tiles, S2_FILTER_TILES, _gemm_lanes())
    # a cache line more than the slices' size apart (see _tile_run)
    vs, ms = 4 * c * per * tiles + 16, o * per * tiles + 16
    starts = tuple(c * sum(S2_DEPTHS[:pos]) for pos in range(10))  # each position's rows in a lane's sum
    totals = {}

    blocked = kernels.isa in S2_FILTER_TILE_GEMM_ISAS

    def lane(lo, hi, k):
        totals[k] = total = scratch(ws, backend, f"conv_s2_wgrad_sum/{k}", (starts[-1], o), dw.dtype)
        part = None if blocked else scratch(ws, backend, f"conv_s2_wgrad_part/{k}", (4 * c * o,), dw.dtype)
        v = scratch(ws, backend, f"conv_s2_wgrad_v/{k}", (9, vs), x.dtype)
        m = scratch(ws, backend, f"conv_s2_wgrad_m/{k}", (9, ms), dy.dtype)
        rows = scratch(ws, backend, f"conv_s2_wgrad_rows/{k}", (7 * (4 * tw + 4),), x.dtype)
        for index, (n0, n1) in enumerate(chunks[lo:hi]):
            p = (n1 - n0) * tiles
            kernels.s2_input(x, v, geometry, n, n0, n1, th, tw, vs, rows)
            if blocked:  # dy's tiles (tiles, O): the reduction along tile_gemm's rows
                kernels.s2_grad_t(m, dy, geometry, o, n, n0, n1, th, tw, ms)
                kernels.s2_filter_gemm(v, m, total, c, p, o, vs, ms, index > 0)
                continue
            kernels.s2_grad(m, dy, geometry, o, n, n0, n1, th, tw, ms)
            for pos in range(9):
                kk = starts[pos + 1] - starts[pos]
                into = total[starts[pos]:starts[pos + 1]] if index == 0 else _view(part[:kk * o], (kk, o))
                np.matmul(_view(v[pos, :kk * p], (kk, p)), _view(m[pos, :o * p], (o, p)).T, out=into)
                if index:
                    total[starts[pos]:starts[pos + 1]] += into

    lanes = _run_gemm_pieces(len(chunks), lane)
    total = totals[0]
    for k in range(1, lanes):
        total += totals[k]
    taps = scratch(ws, backend, "conv_s2_wgrad_taps", w_shape, dw.dtype)
    tap_sum = scratch(ws, backend, "conv_s2_wgrad_tap", (c, o), dw.dtype)
    for (i, j), (seg, positions) in S2_TAP_SUMS.items():
        blocks = [total[starts[pos] + _s2_row(pos // 3, pos % 3, seg) * c:][:c] for pos in positions]
        np.add(blocks[0], blocks[1], out=tap_sum)
        tap_sum += blocks[2]
        tap_sum += blocks[3]
        np.copyto(taps[:, :, i, j], tap_sum.T)
    backend.store(taps, dw, accumulate)


def _direct_backward_filter(backend, x, dy, w_shape, stride, padding, dilation, groups, dw, accumulate, ws):
    geometry = _geometry(x.shape[1:], w_shape[2:], stride, padding, dilation, dy.shape[2:])
    o, n = w_shape[0], x.shape[0]
    partial = {}

    def lane(lo, hi, k):
        partial[k] = target = dw if k == 0 else scratch(ws, backend, f"conv_dw_direct/{k}", dw.shape, dw.dtype)
        backend.conv_kernels.direct_grid_filter(x, dy, target, geometry, groups, o, n, lo, hi, accumulate and k == 0)

    lanes = _run_lanes(n, dy[0].size * x.shape[1] // groups * w_shape[2] * w_shape[3], lane)
    for k in range(1, lanes):  # lane order: a fixed summation order for a given lane count
        dw += partial[k]


#: output planes (Ho*Wo) up to which the GEMM weight gradient multiplies a chunk's samples side
#: by side (one product with a reduction over samples x pixels) instead of one product per
#: sample summed afterwards: a 64-pixel plane makes each per-sample product a thin K=64 update
#: of the whole (Kg, O/G) result (docs/numpy.md)
FILTER_SIDE_BY_SIDE_MAX_PLANE = 64


#: parts per lane of an ungrouped pointwise weight gradient on the sum entry (_batched_pointwise_filter)
POINTWISE_SUM_PARTS = 2


def _batched_pointwise_filter(backend, x, dy, plan, dw, accumulate, ws) -> bool:
    """An ungrouped pointwise conv's weight gradient as BLAS's products of the samples summed
    in parts in one C call (_blas_kernels.gemm_sum, the parts dealt over the lanes: POINTWISE_SUM_PARTS
    a lane, at most a sample each), x[n] @ dy[n]^T as the chunks' orientation, then the parts
    added in order and stored transposed: one call instead of a product, a sum over the chunk's
    samples and an add per chunk from Python (docs/numpy.md, session 58). Its bits depend on the
    lane count only, as the chunks' did. False where it does not run (no BLAS entry, grouped)."""
    if backend.blas_sum is None or plan.groups != 1:
        return False
    lanes = 1 if _in_lane() else _gemm_lanes()
    count = min(plan.n, POINTWISE_SUM_PARTS * lanes)
    parts = scratch(ws, backend, "conv_dw_parts", (count, plan.c, plan.o), dw.dtype)
    with _single_threaded_blas():
        if not backend.blas_sum(_view(x, (plan.n, plan.c, -1)), _view(dy, (plan.n, plan.o, -1)), parts, lanes):
            return False
    for k in range(1, count):
        parts[0] += parts[k]
    backend.store(parts[0].T, _view(dw, (plan.o, plan.c)), accumulate)
    return True


def _gemm_backward_filter(backend, x, dy, w_shape, stride, padding, dilation, groups, dw, accumulate, ws):
    plan = _ConvPlan(x.shape, w_shape, dy.shape[2:], stride, padding, dilation, groups)
    if _pointwise(plan) and _batched_pointwise_filter(backend, x, dy, plan, dw, accumulate, ws):
        return
    geometry = _geometry(x.shape[1:], w_shape[2:], stride, padding, dilation, dy.shape[2:])
    og = plan.o // groups
    chunks = _chunks(plan, _gemm_lanes())
    size = _columns_size(plan, chunks)
    side_by_side = plan.ho * plan.wo <= FILTER_SIDE_BY_SIDE_MAX_PLANE and not _pointwise(plan)
    most = max((n1 - n0) * (r1 - r0) for n0, n1, r0, r1 in chunks) * plan.wo
    totals = {}

    # cols @ dy^T, (Kg, O/G) per group, then one small transposed copy: BLAS runs this
    # orientation of the long-reduction product faster (docs/numpy.md)
    def lane(lo, hi, k):
        totals[k] = total = scratch(ws, backend, f"conv_dw_t/{k}", (groups, plan.depth, og), dw.dtype)
        part = scratch(ws, backend, f"conv_dw_part/{k}", total.shape, dw.dtype)
        for index, chunk in enumerate(chunks[lo:hi]):
            into = total if index == 0 else part
            if side_by_side:
                _side_by_side_filter(backend, plan, x, dy, geometry, chunk, size, most, k, ws, into)
            else:
                cols = _chunk_columns(backend, plan, x, geometry, chunk, size, k, ws)
                per_sample = scratch(ws, backend, f"conv_dw_rows/{k}", (cols.shape[0],) + total.shape, dw.dtype)
                np.matmul(cols, _chunk_of(plan, dy, chunk).transpose(0, 1, 3, 2), out=per_sample)
                np.sum(per_sample, axis=0, out=into)
            if index:
                total += part

    lanes = _run_gemm_pieces(len(chunks), lane)
    # lane order, chunk order within a lane: a fixed summation order for a given lane count
    for k in range(1, lanes):
        totals[0] += totals[k]
    backend.store(totals[0].transpose(0, 2, 1), _view(dw, (groups, og, plan.depth)), accumulate)


def _side_by_side_filter(backend, plan, x, dy, geometry, chunk, size, most, lane, ws, out):
    """out (G, Kg, O/G) = the chunk's columns laid out (G, Kg, samples x pixels), each sample's
    pixels after the previous one's, times dy^T copied into (samples x pixels, O)."""
    n0, n1, r0, r1 = chunk
    pixels = (r1 - r0) * plan.wo
    q = (n1 - n0) * pixels
    buf = scratch(ws, backend, f"conv_cols/{lane}", (size,), x.dtype)
    backend.conv_kernels.im2col(x, buf, geometry, plan.n, n0, n1, r0, r1, pixels, q)
    cols = _view(buf[:plan.groups * plan.depth * q], (plan.groups, plan.depth, q))
    dy_t = scratch(ws, backend, f"conv_dy_t/{lane}", (most * plan.o,), dy.dtype)[:q * plan.o]
    rows = _view(dy[n0:n1], (n1 - n0, plan.o, plan.ho * plan.wo))[:, :, r0 * plan.wo:r1 * plan.wo]
    np.copyto(_view(dy_t, (n1 - n0, pixels, plan.o)), rows.transpose(0, 2, 1))
    np.matmul(cols, _view(dy_t, (q, plan.groups, plan.o // plan.groups)).transpose(1, 0, 2), out=out)


def _c_conv_backward_data(backend, dy, w, dx, stride, padding, dilation, groups, accumulate, ws):
    plan = _ConvPlan(dx.shape, w.shape, dy.shape[2:], stride, padding, dilation, groups)
    runs = [_gemm_backward_data]
    if _s2_data(backend, plan):
        runs.append(_s2_backward_data)
    elif _strided_pointwise_direct(backend, plan, plan.c):
        runs.append(_pointwise_scatter_backward_data)
    elif _direct(backend, stride, _grid_padding(w.shape[2:], padding, dilation)) \
            and (not _pointwise(plan) or _pointwise_direct(backend, plan, plan.c)):
        runs.append(_direct_backward_data)
        if _wg(backend, plan, plan.o, plan.c, dx.shape[2:]):
            runs.append(_wg_backward_data)
        elif _winograd(backend, plan, plan.o, plan.c, dx.shape[2:]):
            runs.append(_winograd_backward_data)
    args = (backend, dy, w, plan)
    runs[_algorithm("data", len(runs), dy.shape[2:], backend.conv_kernels.isa)](*args, dx, accumulate, ws)


#: fewest output channels (the GEMMs' depth) and input channels (their rows) of a 3x3 stride-2
#: input gradient run by _s2_backward_data, and the smallest dy plane (Ho*Wo) it takes with fewer
#: than S2_DATA_SMALL_PLANE_MIN_INPUTS input channels. Measured with cold caches (as inside a
#: network): from 16 -> 32 to 64 -> 128 on 16x16 and larger dy planes it won or tied; on 8x8 dy
#: planes it lost with 32 -> 32 and the ResNet's 32 -> 64 to im2col + GEMM, tied with 64 -> 128,
#: won with 128 -> 256 (docs/numpy.md, sessions 33 and 39). 8x8 dy planes of a 16x16 dx padded by 1
#: (S2_DATA_PLANE8) run s2d's shuffle kernels, one vector a plane, and take it from those channel
#: counts: 16 -> 32, 32 -> 32, 32 -> 64 and 64 -> 128 won (docs/numpy.md, session 42)
S2_DATA_MIN_CHANNELS = 32
S2_DATA_MIN_INPUTS = 16
S2_DATA_MIN_PLANE = 256
S2_DATA_SMALL_PLANE_MIN_INPUTS = 128
#: (dx's H, W, padding) of _conv_kernels.c's s2d_plane8
S2_DATA_PLANE8 = (16, 16, (1, 1))
#: the instruction sets (``isa``) it runs on: AVX-512, where its GEMMs run on tile_gemm; the AVX2
#: build (np.matmul) won some shapes and lost others (docs/numpy.md)
S2_DATA_ISAS = (2,)
#: tiles (4x4 blocks of dx) per chunk of samples of _s2_backward_data (at least one sample)
S2_DATA_TILES = 128
#: its 25 GEMM positions, each of depth O
S2_DATA_DEPTHS = (1,) * 25


def _s2_data(backend, plan) -> bool:
    """Whether a 3x3 stride-2 input gradient runs as F(2x2, 2x2) on dx's phases
    (_s2_backward_data): undilated, ungrouped, padding >= 0, S2_DATA_MIN_CHANNELS output and
    S2_DATA_MIN_INPUTS input channels, a dy plane of S2_DATA_MIN_PLANE (any with
    S2_DATA_SMALL_PLANE_MIN_INPUTS input channels, or S2_DATA_PLANE8's), on S2_DATA_ISAS."""
    return backend.conv_kernels.isa in S2_DATA_ISAS and (plan.kh, plan.kw, plan.groups) == (3, 3, 1) \
        and tuple(plan.stride) == (2, 2) and tuple(plan.dilation) == (1, 1) and min(plan.padding) >= 0 \
        and plan.o >= S2_DATA_MIN_CHANNELS and plan.c >= S2_DATA_MIN_INPUTS \
        and (plan.ho * plan.wo >= S2_DATA_MIN_PLANE or plan.c >= S2_DATA_SMALL_PLANE_MIN_INPUTS
             or (plan.h, plan.w, tuple(plan.padding)) == S2_DATA_PLANE8)


def _s2_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    """dx (+)= the 3x3 stride-2 input gradient as Winograd F(2x2, 2x2) on dx's four phases: each
    4x4 block of dx from a 3x3 patch of dy, 25 GEMMs of depth O per chunk of samples (_tile_run)
    instead of 36 products (_conv_kernels.c, s2d_*)."""
    h, wd = dx.shape[2:]
    geometry = _geometry(dy.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, (h, wd))
    th, tw = (h + 3) // 4, (wd + 3) // 4
    kernels, n, c = backend.conv_kernels, plan.n, plan.c
    _tile_run(backend, _TileTransforms(
        "s2d", S2_DATA_DEPTHS, S2_DATA_TILES, th * tw, 16 * tw + 16,
        lambda u: kernels.s2d_weights(w, u, plan.o, c),
        lambda v, n0, n1, vs, rows: kernels.s2d_input(dy, v, geometry, n, n0, n1, th, tw, vs, rows),
        lambda m, n0, n1, ms, rows: kernels.s2d_output(m, dx, geometry, c, n, n0, n1, th, tw, ms, accumulate, rows),
        _s2_data_columns, whole=lambda u, v, m, rows, per, vs, ms, lanes, e: kernels.tile_conv(
            "s2d", w, dy, dx, u, v, m, rows, geometry, c, plan.o, n, per, th, tw, vs, ms, False, accumulate, lanes, *e)),
        dy, dx, plan.o, c, ws)


def _s2_data_columns(p):
    """_conv_kernels.c's s2d_columns: p tiles' columns in whole 16-lane vectors."""
    return -(-p // 16) * 16


def _direct_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    """dx as the stride-1 conv of dy with the taps flipped and the channels swapped."""
    flipped = _geometry(dy.shape[1:], w.shape[2:], plan.stride, _grid_padding(w.shape[2:], plan.padding, plan.dilation),
                        plan.dilation, dx.shape[2:])
    _run_lanes(plan.n, dx[0].size * plan.o // plan.groups * plan.kh * plan.kw,
               lambda lo, hi, k: backend.conv_kernels.direct_conv(dy, w, dx, flipped, plan.groups, plan.c, plan.n,
                                                                   lo, hi, True, accumulate))


def _pointwise_scatter_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    """dx (+)= the input gradient of a strided 1x1 conv on the pointwise blocks, each sample's
    W^T dy added to the dx pixels under the kernel (_conv_kernels.c's pointwise_scatter)."""
    geometry = _geometry(dx.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, dy.shape[2:])
    _run_lanes(plan.n, dx[0].size * plan.o,
               lambda lo, hi, k: backend.conv_kernels.pointwise_scatter(dy, w, dx, geometry, plan.o, plan.n, lo, hi,
                                                                       accumulate))


def _gemm_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    if _pointwise(plan) and _batched_pointwise(backend, w, dy, dx, plan, _Epilogue(None, None, False, dx)
                                               if accumulate else None, transpose=True):
        return
    geometry = _geometry(dx.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, dy.shape[2:])
    groups = plan.groups
    weight_t = plan.weight(w).transpose(0, 2, 1)
    chunks = _chunks(plan, _gemm_lanes(), whole_samples=True)
    if _pointwise(plan) and not accumulate:  # its columns are dx itself: no col2im copy
        def into_dx(lo, hi, k):
            for chunk in chunks[lo:hi]:
                np.matmul(weight_t, _chunk_of(plan, dy, chunk), out=_chunk_of(plan, dx, chunk))

        _run_gemm_pieces(len(chunks), into_dx)
        return
    per_sample = plan.groups * plan.depth * plan.ho * plan.wo
    most = max(n1 - n0 for n0, n1, _, _ in chunks)

    def lane(lo, hi, k):
        dcols = scratch(ws, backend, f"conv_dcols/{k}", (most * per_sample,), dx.dtype)
        phases = _col2im_phases(backend, plan, dx.dtype, k, ws)
        for chunk in chunks[lo:hi]:
            n0, n1 = chunk[:2]
            view = _view(dcols[:(n1 - n0) * per_sample], (n1 - n0, groups, plan.depth, plan.ho * plan.wo))
            np.matmul(weight_t, _chunk_of(plan, dy, chunk), out=view)
            backend.conv_kernels.col2im(dcols, dx, geometry, plan.n, n0, n1, per_sample, plan.ho * plan.wo, accumulate,
                                        phases)

    _run_gemm_pieces(len(chunks), lane)


def _col2im_phases(backend, plan, dtype, lane, ws):
    """Lane ``lane``'s buffer for the four phase planes of one padded input plane, in which
    col2im adds stride-2 columns as whole rows; None at other strides (col2im needs none)."""
    if tuple(plan.stride) != (2, 2):
        return None
    return scratch(ws, backend, f"conv_col2im_phases/{lane}", (4 * ((plan.hp + 1) // 2) * ((plan.wp + 1) // 2),), dtype)


#: fewest input and output channels for Winograd F(2x2, 3x3), and the smallest output plane
#: (Ho*Wo): with 16 channels its 16 GEMMs are too thin for BLAS, with smaller planes too short,
#: and the direct kernel wins (measured on Zen 4 with the AVX-512 and the AVX2 build;
#: docs/numpy.md)
WINOGRAD_MIN_CHANNELS = 32
#: CPU kinds, (vendor, display family), whose AVX-512 units run at full width: AMD Zen 5 (family
#: 0x1A) and Intel's AVX-512 Xeons (family 6; measured on a Sapphire-Rapids-class part, two
#: 512-bit FMA ports a core). There, with the AVX-512 build only, the register blocks win earlier:
#: Winograd's and the phase Winograd's GEMMs run on tile_gemm from FULL_WIDTH_TILE_GEMM_MIN_DEPTH
#: channels (_tile_gemm), F(2x2, 5x5) runs only where its GEMMs do (on BLAS the direct kernel won
#: on Zen 5) and its weight gradient as F(5x5, 2x2) (_wg_filter) (docs/numpy.md, sessions 33,
#: 35 and 43)
FULL_WIDTH_CPUS = {("AuthenticAMD", 0x1A), ("GenuineIntel", 6)}
FULL_WIDTH_TILE_GEMM_MIN_DEPTH = 32
#: of FULL_WIDTH_CPUS, the kinds whose direct kernel beats Winograd on more layers than
#: elsewhere: AMD Zen 5, where full width speeds the FMA-bound direct kernel more than the
#: transforms, so that F(2x2, 3x3) needs DIRECT_FAVOURED_WINOGRAD_MIN_IN channels summed over
#: (with 32 it won alone but not in the CNN and ResNet; docs/numpy.md, session 35). Not the
#: Intel part, where F(2x2, 3x3) from 32 channels won in both (session 43)
DIRECT_FAVOURED_CPUS = {("AuthenticAMD", 0x1A)}
DIRECT_FAVOURED_WINOGRAD_MIN_IN = 64
WINOGRAD_MIN_PLANE = 64
#: the smallest output plane for the larger tiles (_wg)
WG_MIN_PLANE = 256
#: tiles per chunk of samples: the transformed input and product of a chunk (16 x channels x
#: tiles each) stay in cache between the transforms and the GEMMs
WINOGRAD_TILES = 256


def _full_width(backend) -> bool:
    """Whether the C kernels run AVX-512 on a CPU kind of FULL_WIDTH_CPUS."""
    kernels = backend.conv_kernels
    return kernels.isa == 2 and (kernels.cpu_vendor, kernels.cpu_family) in FULL_WIDTH_CPUS


def _direct_favoured(backend) -> bool:
    """Whether the C kernels run AVX-512 on a CPU kind of both FULL_WIDTH_CPUS and
    DIRECT_FAVOURED_CPUS."""
    kernels = backend.conv_kernels
    return _full_width(backend) and (kernels.cpu_vendor, kernels.cpu_family) in DIRECT_FAVOURED_CPUS


def _winograd(backend, plan, n_in, n_out, out_hw) -> bool:
    """Whether Winograd F(2x2, 3x3) computes this stride-1 conv (called where the direct kernel
    applies: stride 1, padding >= 0): 3x3, ungrouped, channels and plane enough (``n_in`` the
    channels summed over, ``n_out`` the other side), on AVX2 or AVX-512 (``isa`` >= 1), where
    it was measured to win."""
    min_in = DIRECT_FAVOURED_WINOGRAD_MIN_IN if _direct_favoured(backend) else WINOGRAD_MIN_CHANNELS
    return backend.conv_kernels.isa >= 1 and (plan.kh, plan.kw, plan.groups) == (3, 3, 1) \
        and n_out >= WINOGRAD_MIN_CHANNELS and n_in >= min_in \
        and out_hw[0] * out_hw[1] >= WINOGRAD_MIN_PLANE


class _TileTransforms(NamedTuple):
    """What a tiled conv (_tile_run) computes with: per output tile, ``len(depths)`` GEMM
    positions, position k multiplying the transformed taps by ``depths[k]`` x n_in rows of the
    transformed input (the first that many rows of its slice); ``chunk_tiles`` tiles per chunk
    of samples (at least one sample), ``tiles`` per sample; ``rows`` items of per-lane scratch
    the transforms take (0: none). weights(u) fills u (positions, n_out, max(depths) x n_in);
    input(v, n0, n1, vs, rows) and output(m, n0, n1, ms, rows) transform samples [n0, n1) into
    and out of the slices of v and m, vs and ms items apart; ``columns``: where given, the row
    length of a slice for p tiles (the GEMMs then run on that many columns, the transforms writing
    zeros past p); ``whole``: where given, whole(u, v, m, rows, per, vs, ms, lanes, epilogue)
    runs all of it in one C call (_conv_kernels.c's tile_conv: the chunks of ``per`` samples dealt
    over ``lanes`` threads, each on its own slot of u (its own copy of the taps), v, m and rows,
    with the epilogue (scale, shift, relu, residual)), where the GEMMs run on the register blocks
    (_tile_gemm)."""
    name: str
    depths: tuple
    chunk_tiles: int
    tiles: int
    rows: int
    weights: object
    input: object
    output: object
    columns: object = None
    whole: object = None


def _sample_chunks(n, tiles, chunk_tiles, lanes=1):
    """(samples per chunk, [(n0, n1), ...]): chunks of about ``chunk_tiles`` tiles of ``tiles``
    per sample, at least one sample each, and at least ``lanes`` chunks where there are as many
    samples."""
    per = max(1, min(n, chunk_tiles // tiles, -(-n // lanes)))
    return per, [(n0, min(n, n0 + per)) for n0 in range(0, n, per)]


def _winograd_tiles(geometry):
    """F(2x2, 3x3)'s tile rows and columns for ``geometry``: 2x2 outputs d apart, in groups of d."""
    (dh, dw), (ho, wo) = geometry[9:11], geometry[11:13]
    return -(-ho // (2 * dh)) * dh, -(-wo // (2 * dw)) * dw


#: fewest input channels (the GEMM depth) from which _tile_run's GEMMs run on the pointwise
#: kernel's blocks (tile_gemm) instead of np.matmul, on AVX-512: measured to win with 64 and 128,
#: lost with 32 on Zen 4 (docs/numpy.md); FULL_WIDTH_TILE_GEMM_MIN_DEPTH on FULL_WIDTH_CPUS
TILE_GEMM_MIN_DEPTH = 64
#: fewest input channels from which Winograd F(2x2, 3x3) and F(2x2, 5x5) run whole on tile_conv
#: on AVX2, their GEMMs on its 4 x 3 register blocks: faster than np.matmul chunk by chunk from
#: Python, whose lanes handed over through the GIL three times a chunk (measured under the AVX2
#: hold from 32 to 256 channels, docs/numpy.md, session 57)
AVX2_TILE_GEMM_MIN_DEPTH = 32


def _tile_gemm(backend, depths, n_in) -> bool:
    """Whether _tile_run's GEMMs run on tile_gemm (one call per chunk, all positions): every
    position of depth n_in (``depths`` all 1), or the phase Winograd's S2_DEPTHS (on s2_gemm), at
    least TILE_GEMM_MIN_DEPTH of them (FULL_WIDTH_TILE_GEMM_MIN_DEPTH where _full_width), on
    AVX-512 (``isa`` 2), where the register blocks were measured to win (on AVX2 their 4 x 3
    blocks lost to BLAS in the 1x1 conv); the phase Winograd's forward runs on them, whole in
    one call, from S2_TILE_GEMM_MIN_DEPTH[isa] on AVX2 and AVX-512, and F(2x2, 3x3) and F(2x2, 5x5)
    (WINOGRAD_DEPTHS, WG_DEPTHS), whole in one call too, from AVX2_TILE_GEMM_MIN_DEPTH on AVX2;
    only where BLAS's threads can be limited
    (each lane's np.matmul, and a lone chunk's, runs on one BLAS thread: threads.py), else
    np.matmul runs on all of them. A lone chunk (a batch of one or two) on tile_gemm ran faster
    than its np.matmul on one BLAS thread (docs/numpy.md, session 39)."""
    isa, s2 = backend.conv_kernels.isa, tuple(depths) == S2_DEPTHS
    if _gemm_lanes() != _num_threads():
        return False
    if s2 and isa in S2_TILE_GEMM_MIN_DEPTH:
        return n_in >= S2_TILE_GEMM_MIN_DEPTH[isa]
    if isa == 1 and tuple(depths) in (WINOGRAD_DEPTHS, WG_DEPTHS):
        return n_in >= AVX2_TILE_GEMM_MIN_DEPTH
    deep = FULL_WIDTH_TILE_GEMM_MIN_DEPTH if _full_width(backend) else TILE_GEMM_MIN_DEPTH
    return isa == 2 and (set(depths) == {1} or s2) and n_in >= deep


def _tile_run(backend, t, src, dst, n_in, n_out, ws, epi=None):
    """dst (+)= a conv of src as the GEMMs between transforms ``t`` (_TileTransforms): per chunk
    of samples, one lane transforms the input tiles, runs the GEMMs with the transformed taps on
    its own core, and transforms the products back into dst. Its scratch is named after
    ``t.name``: the taps conv_{name}_u, each lane's conv_{name}_v/m (and _rows)/{lane}; where it
    runs whole in one call (``t.whole``), the lanes' slots conv_{name}_lane_u and conv_{name}_v/m
    (and _rows)."""
    n, positions, tiles = src.shape[0], len(t.depths), t.tiles
    width = max(t.depths) * n_in
    per, chunks = _sample_chunks(n, tiles, t.chunk_tiles, 1 if _in_lane() else _gemm_lanes())
    # one batched product where every position multiplies all of its slice
    uniform = len(set(t.depths)) == 1
    blocked = _tile_gemm(backend, t.depths, n_in)
    # the slices of v and m lie a cache line more than their size apart: whole multiples
    # of 4 KiB would put their rows in the same L1 sets
    columns = t.columns or (lambda p: p)
    vs, ms = width * columns(per * tiles) + 16, n_out * columns(per * tiles) + 16
    if blocked and t.whole is not None:
        lanes = 1 if _in_lane() else min(_num_threads(), len(chunks))
        v = scratch(ws, backend, f"conv_{t.name}_v", (lanes, positions, vs), src.dtype)
        m = scratch(ws, backend, f"conv_{t.name}_m", (lanes, positions, ms), src.dtype)
        rows = scratch(ws, backend, f"conv_{t.name}_rows", (lanes, t.rows), src.dtype) if t.rows else None
        u = scratch(ws, backend, f"conv_{t.name}_lane_u", (lanes, positions, n_out, width), src.dtype)
        t.whole(u, v, m, rows, per, vs, ms, lanes, (None, None, False, None) if epi is None else
                (epi.scale, epi.shift, epi.relu, epi.residual))
        return
    u = scratch(ws, backend, f"conv_{t.name}_u", (positions, n_out, width), src.dtype)
    t.weights(u)
    # the positions' GEMMs in one C call (one counted GIL release) where BLAS is registered: an
    # np.matmul per position had the lanes queueing for the GIL between them (docs/numpy.md)
    on_entry = backend.blas_positions

    def lane_scratch(k):
        return (scratch(ws, backend, f"conv_{t.name}_v/{k}", (positions, vs), src.dtype),
                scratch(ws, backend, f"conv_{t.name}_m/{k}", (positions, ms), src.dtype),
                scratch(ws, backend, f"conv_{t.name}_rows/{k}", (t.rows,), src.dtype) if t.rows else None)

    # every lane's scratch before the chunks are dealt: a lane that takes no chunk in one step
    # (it started late) may take one in the next, and a steady step must not allocate then
    for k in range(max(1, min(_gemm_lanes(), len(chunks)))):
        lane_scratch(k)

    def lane(lo, hi, k):
        v, m, rows = lane_scratch(k)
        for n0, n1 in chunks[lo:hi]:
            p = columns((n1 - n0) * tiles)
            t.input(v, n0, n1, vs, rows)
            if blocked and uniform:
                backend.conv_kernels.tile_gemm(u, v, m, positions, n_out, n_in, p, vs, ms)
            elif blocked:
                backend.conv_kernels.s2_gemm(u, v, m, n_out, n_in, p, vs, ms)
            elif on_entry is None or not on_entry(u, v, m, t.depths, n_out, n_in, p, vs, ms):
                if uniform:
                    np.matmul(u, _view(v[:, :width * p], (positions, width, p)),
                              out=_view(m[:, :n_out * p], (positions, n_out, p)))
                else:
                    for pos, depth in enumerate(t.depths):
                        kk = depth * n_in
                        np.matmul(u[pos, :, :kk], _view(v[pos, :kk * p], (kk, p)),
                                  out=_view(m[pos, :n_out * p], (n_out, p)))
            t.output(m, n0, n1, ms, rows)
            _finish(backend, dst, epi, n0 * n_out, n1 * n_out)

    _deal_gemm_pieces(len(chunks), lane)


#: GEMM positions of F(2x2, 3x3): each multiplies all input channels
WINOGRAD_DEPTHS = (1,) * 16


def _winograd_run(backend, src, w, dst, geometry, n_in, n_out, flip, accumulate, ws, epi=None):
    """dst (+)= the stride-1 3x3 conv of src (``geometry``) with w, as Winograd F(2x2, 3x3): 16
    GEMMs per chunk of samples (_tile_run)."""
    n, kernels = src.shape[0], backend.conv_kernels
    th, tw = _winograd_tiles(geometry)
    _tile_run(backend, _TileTransforms(
        "wino", WINOGRAD_DEPTHS, WINOGRAD_TILES, th * tw, 0,
        lambda u: kernels.winograd_weights(w, u, n_out, n_in, flip),
        lambda v, n0, n1, vs, rows: kernels.winograd_input(src, v, geometry, n, n0, n1, th, tw, vs),
        lambda m, n0, n1, ms, rows: kernels.winograd_output(m, dst, geometry, n_out, n, n0, n1, th, tw, ms, accumulate),
        whole=lambda u, v, m, rows, per, vs, ms, lanes, e: kernels.tile_conv(
            "wino", w, src, dst, u, v, m, rows, geometry, n_out, n_in, n, per, th, tw, vs, ms, flip, accumulate, lanes,
            *e)),
        src, dst, n_in, n_out, ws, epi)


def _tiled_forward(run, backend, x, w, plan, ws, out, epi):
    """The forward pass through a Winograd runner (_winograd_run or _wg_run)."""
    geometry = _geometry(x.shape[1:], w.shape[2:], plan.stride, plan.padding, plan.dilation, out.shape[2:])
    run(backend, x, w, out, geometry, plan.c, plan.o, False, False, ws, epi)


def _tiled_backward_data(run, backend, dy, w, plan, dx, accumulate, ws):
    """dx as the stride-1 conv of dy with the taps flipped and the channels swapped."""
    flipped = _geometry(dy.shape[1:], w.shape[2:], plan.stride, _grid_padding(w.shape[2:], plan.padding, plan.dilation),
                        plan.dilation, dx.shape[2:])
    run(backend, dy, w, dx, flipped, plan.o, plan.c, True, accumulate, ws)


def _winograd_forward(backend, x, w, plan, ws, out, epi=None):
    _tiled_forward(_winograd_run, backend, x, w, plan, ws, out, epi)


def _winograd_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    _tiled_backward_data(_winograd_run, backend, dy, w, plan, dx, accumulate, ws)


#: bytes of a chunk's transformed input and dy tiles (v and m: 16 x (C + O) values a tile) in the
#: Winograd weight gradient, at least one sample: a core's L2, so the GEMMs read them from there
#: (a fixed 256 tiles, 3 MB at 64->128 on 8x8 planes, ran slower than 64; docs/numpy.md)
WINOGRAD_FILTER_BYTES = L2_BYTES
#: fewest input and output channels of the Winograd weight gradient: with 16 (and 3 in) the
#: direct kernel wins (docs/numpy.md)
WINOGRAD_FILTER_MIN_CHANNELS = 32
#: the instruction sets (``isa``) it runs on: measured to win on Zen 4 with both builds (the
#: AVX2 one with OpenBLAS held to its Haswell kernels too, as on an AVX2-only machine), not on
#: an AVX2 machine itself (docs/numpy.md)
WINOGRAD_FILTER_ISAS = (1, 2)
#: the instruction sets on which its GEMMs run on tile_gemm (adding into the lane's sums) instead
#: of np.matmul, as _s2_backward_filter's (S2_FILTER_TILE_GEMM_ISAS): AVX-512, measured on Zen 5
#: under both OpenBLAS kernel families (docs/numpy.md, session 36), and AVX2, measured on the Intel
#: Xeon held to AVX2 on the CIFAR CNN's, the ResNet's and the bench's 3x3 layers (session 57)
WINOGRAD_FILTER_TILE_GEMM_ISAS = (1, 2)
#: the largest dilation of the Winograd weight gradient by ``isa``: with its GEMMs on np.matmul
#: the dilated one tied with the direct kernel (Zen 4), on tile_gemm dilation 2 won (Zen 5)
WINOGRAD_FILTER_MAX_DILATION = {1: 1, 2: 2}


def _winograd_filter(backend, w_shape, dilation, groups) -> bool:
    """Whether Winograd F(3x3, 2x2) computes this stride-1 weight gradient (called where the
    direct kernel applies: stride 1, padding >= 0): 3x3 taps, dilation up to
    WINOGRAD_FILTER_MAX_DILATION, ungrouped, WINOGRAD_FILTER_MIN_CHANNELS each side, on
    WINOGRAD_FILTER_ISAS."""
    isa = backend.conv_kernels.isa
    return isa in WINOGRAD_FILTER_ISAS and tuple(w_shape[2:]) == (3, 3) and groups == 1 \
        and max(dilation) <= WINOGRAD_FILTER_MAX_DILATION[isa] and min(w_shape[:2]) >= WINOGRAD_FILTER_MIN_CHANNELS


def _winograd_backward_filter(backend, x, dy, w_shape, stride, padding, dilation, groups, dw, accumulate, ws):
    """dw (+)= the stride-1 3x3 weight gradient as Winograd F(3x3, 2x2): per chunk of samples,
    the forward's input tiles (winograd_input) and dy's tiles (winograd_grad), 16 GEMMs
    (C, tiles) x (tiles, O) summed over the chunks of a lane, the lanes' sums added in lane
    order (a fixed summation order for a given lane count), then the taps (winograd_taps)."""
    geometry = _geometry(x.shape[1:], w_shape[2:], stride, padding, dilation, dy.shape[2:])
    n, c, o, kernels = x.shape[0], x.shape[1], w_shape[0], backend.conv_kernels
    th, tw = _winograd_tiles(geometry)
    tiles = th * tw
    per, chunks = _sample_chunks(n, tiles, WINOGRAD_FILTER_BYTES // (16 * (c + o) * x.itemsize), _gemm_lanes())
    # a cache line more than the slices' size apart (see _tile_run)
    vs, ms = c * per * tiles + 16, o * per * tiles + 16
    totals = {}
    blocked = kernels.isa in WINOGRAD_FILTER_TILE_GEMM_ISAS

    def lane(lo, hi, k):
        totals[k] = total = scratch(ws, backend, f"conv_wgrad_sum/{k}", (16, c, o), dw.dtype)
        part = None if blocked else scratch(ws, backend, f"conv_wgrad_part/{k}", (16, c, o), dw.dtype)
        v = scratch(ws, backend, f"conv_wgrad_v/{k}", (16, vs), x.dtype)
        m = scratch(ws, backend, f"conv_wgrad_m/{k}", (16, ms), dy.dtype)
        for index, (n0, n1) in enumerate(chunks[lo:hi]):
            p = (n1 - n0) * tiles
            kernels.winograd_input(x, v, geometry, n, n0, n1, th, tw, vs)
            kernels.winograd_grad(m, dy, geometry, o, n, n0, n1, th, tw, ms)
            if blocked:  # (C, tiles) x (tiles, O) per position, added into the lane's sums
                kernels.tile_gemm(v, m, total, 16, c, p, o, ms, c * o, index > 0, vs)
                continue
            np.matmul(_view(v[:, :c * p], (16, c, p)), _view(m[:, :o * p], (16, p, o)), out=part if index else total)
            if index:
                total += part

    lanes = _run_gemm_pieces(len(chunks), lane)
    for k in range(1, lanes):
        totals[0] += totals[k]
    taps = scratch(ws, backend, "conv_wgrad_taps", w_shape, dw.dtype)
    kernels.winograd_taps(taps, totals[0], o, c)
    backend.store(taps, dw, accumulate)


#: output tiles per chunk of samples of _wg_backward_filter (at least one sample): 256 (one
#: sample of the bench's 32x32 plane) measured faster than 512-2048 (docs/numpy.md)
WG_FILTER_TILES = 256
#: with fewer than WG_FILTER_WIDE channels on a side, _wg_backward_filter needs an output plane of
#: WG_FILTER_MIN_PLANE (32 channels on 16x16 lost to the direct kernel, on 32x32 won; 64 won on
#: 16x16; docs/numpy.md)
WG_FILTER_WIDE = 64
WG_FILTER_MIN_PLANE = 1024
#: Toom-Cook points of _wg_backward_filter's F(5x5, 2x2) (with infinity): 2 and -1/2 in place of
#: the forward's 2 and -2 give a third of its float32 error on the bench's layer (docs/numpy.md)
WG_FILTER_POINTS = (0.0, 1.0, -1.0, 2.0, -0.5)


def _wg_filter(backend, w_shape, dilation, groups, out_hw) -> bool:
    """Whether the stride-1 weight gradient runs as F(2x2, 5x5)'s adjoint (_wg_backward_filter,
    called where the direct kernel applies: stride 1, padding >= 0): 5x5 taps, undilated,
    ungrouped, WG_MIN_CHANNELS[5] each side, an output plane of WG_MIN_PLANE (WG_FILTER_MIN_PLANE
    with fewer than WG_FILTER_WIDE channels on a side), and only where
    _full_width (AMD Zen 5 and Intel's AVX-512 Xeons with the AVX-512 build: its GEMMs on
    tile_gemm), the CPU kinds where it was measured against the direct kernel (docs/numpy.md,
    sessions 34 and 43); other kinds keep the direct kernel."""
    return _full_width(backend) and tuple(w_shape[2:]) == (5, 5) and groups == 1 \
        and tuple(dilation) == (1, 1) and min(w_shape[:2]) >= WG_MIN_CHANNELS[5] \
        and out_hw[0] * out_hw[1] >= (WG_MIN_PLANE if min(w_shape[:2]) >= WG_FILTER_WIDE else WG_FILTER_MIN_PLANE)


def _wg_backward_filter(backend, x, dy, w_shape, stride, padding, dilation, groups, dw, accumulate, ws):
    """dw (+)= the stride-1 5x5 weight gradient as Winograd F(5x5, 2x2), the adjoint of
    _wg_forward's F(2x2, 5x5): per chunk of samples, the forward's input tiles (wg_input) and
    dy's tiles (wg_grad, the adjoint of wg_output, tile-major), 36 GEMMs (C, tiles) x (tiles, O)
    on tile_gemm adding into the lane's sums (9 multiply-adds per output pixel, input and output
    channel instead of 25), all of it in one C call (wg_filter), the lanes' sums added in lane
    order (a fixed summation order for a given lane count), then the taps G^T (.) G."""
    geometry = _geometry(x.shape[1:], w_shape[2:], stride, padding, dilation, dy.shape[2:])
    n, c, o, kernels = x.shape[0], x.shape[1], w_shape[0], backend.conv_kernels
    m, r = WG_TILE[5], 5
    k = m + r - 1
    mats = _wg_matrices(m, r, WG_FILTER_POINTS)
    th, tw = -(-dy.shape[2] // m), -(-dy.shape[3] // m)
    tiles = th * tw
    per, chunks = _sample_chunks(n, tiles, WG_FILTER_TILES, _gemm_lanes())
    # a cache line more than the slices' size apart (see _tile_run)
    vs, ms = c * per * tiles + 16, o * per * tiles + 16
    # a contiguous part of the chunks a lane (threads.run_gemm_pieces's split), each lane's
    # sums in its own slot, added in slot order: a fixed summation order for a given lane count
    lanes = 1 if _in_lane() else min(_gemm_lanes(), len(chunks))
    sums = scratch(ws, backend, "conv_wg_wgrad_sums", (lanes, k * k, c, o), dw.dtype)
    parts = scratch(ws, backend, "conv_wg_wgrad_parts", (lanes, k * k, c, o), dw.dtype)
    v = scratch(ws, backend, "conv_wg_wgrad_v", (lanes, k * k, vs), x.dtype)
    mm = scratch(ws, backend, "conv_wg_wgrad_m", (lanes, k * k, ms), dy.dtype)
    # each chunk's products summed apart, then added: tile_gemm's accumulate would run one
    # float32 sum along all of a lane's tiles (4x the float32 error, docs/numpy.md)
    kernels.wg_filter(x, dy, sums, parts, v, mm, geometry, o, n, per, th, tw, vs, ms, lanes, mats)
    total = sums[0]
    for kk in range(1, lanes):
        total += sums[kk]
    # G^T (.) G over both tap axes in float64 (a few hundred thousand multiply-adds; G's entries
    # and the sums' cancellation make float32 lose bits here): (k, k*C*O) -> (r, k, C*O) -> (r, r, C*O)
    gt = _wg_g_transposed(m, r)
    wide = scratch(ws, backend, "conv_wg_wgrad_sum64", (k, k * c * o), np.float64)
    half = scratch(ws, backend, "conv_wg_wgrad_half", (r, k, c * o), np.float64)
    both = scratch(ws, backend, "conv_wg_wgrad_both", (r, r, c * o), np.float64)
    taps = scratch(ws, backend, "conv_wg_wgrad_taps", w_shape, dw.dtype)
    np.copyto(wide, _view(total, (k, k * c * o)))
    np.matmul(gt, wide, out=_view(half, (r, k * c * o)))
    np.matmul(gt, half, out=both)
    np.copyto(taps, _view(both, (r, r, c, o)).transpose(3, 2, 0, 1))
    backend.store(taps, dw, accumulate)


def _wg_g_transposed(m, r):
    """G^T (r x n) of _wg_matrices(m, r, WG_FILTER_POINTS), contiguous (cached)."""
    key = ("gt", m, r, WG_FILTER_POINTS)
    if key not in _wg_cache:
        n = m + r - 1
        g = _wg_matrices(m, r, WG_FILTER_POINTS)[m * n:m * n + n * r].reshape(n, r)
        _wg_cache[key] = np.ascontiguousarray(g.T)
    return _wg_cache[key]


#: Toom-Cook points of the larger Winograd tiles (with infinity as the last one); their float32
#: errors against float64 are in docs/numpy.md
WG_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)
#: kernel size -> output tile side m of the Winograd F(m x m, r x r) kernels run by _wg: F(2x2, 5x5),
#: 9 multiply-adds per output instead of 25. The kernels also compute F(4x4, 5x5) (4) and F(4x4, 3x3)
#: (2.25; F(2x2, 3x3): 4), faster still ({5: 4, 3: 4}), but their float32 errors (5-8e-6 of the
#: largest output) exceed the conformance suite's float32 tolerance (docs/numpy.md)
WG_TILE = {5: 2}
#: fewest input and output channels per kernel size: the n*n GEMMs are (O, C) x (C, tiles); with
#: 16 channels (5x5) or 32 (3x3) the direct kernel wins or ties (docs/numpy.md)
WG_MIN_CHANNELS = {5: 32, 3: 64}
_wg_cache = {}


def _wg_matrices(m, r, points=None):
    """float64 [AT (m x n) | G (n x r) | BT (n x n)], n = m + r - 1, of F(m, r) on WG_POINTS:
    Toom-Cook's evaluation matrices E_k (n x k, row j the powers of point j, the last row the
    leading coefficient) give correlation as AT = E_m^T, G = E_r, BT = (E_n^-1)^T; each row of
    BT is scaled to a largest entry of 1 and G's row by the inverse (smaller float32 errors)."""
    points = tuple(WG_POINTS if points is None else points)
    key = (m, r, points)
    if key not in _wg_cache:
        n = m + r - 1
        points = points[:n - 1]

        def evaluation(k):
            e = np.zeros((n, k))
            for j, a in enumerate(points):
                e[j] = [a ** i for i in range(k)]
            e[n - 1, k - 1] = 1.0
            return e

        at, g, bt = evaluation(m).T, evaluation(r), np.linalg.inv(evaluation(n)).T
        scale = np.abs(bt).max(axis=1)
        bt, g = bt / scale[:, None], g * scale[:, None]
        _wg_cache[key] = np.ascontiguousarray(np.concatenate([at.ravel(), g.ravel(), bt.ravel()]))
    return _wg_cache[key]


def _wg(backend, plan, n_in, n_out, out_hw) -> bool:
    """Whether Winograd F(m x m, r x r) (WG_TILE) computes this stride-1 conv (called where the
    direct kernel applies): a square kernel in WG_TILE, undilated, ungrouped,
    WG_MIN_CHANNELS each side, on AVX2 or AVX-512 (``isa`` >= 1), where it was measured
    (docs/numpy.md); where _full_width, only with its GEMMs on tile_gemm (_tile_gemm).
    Where it applies it goes before F(2x2, 3x3) (_winograd), which keeps the dilated 3x3 convs."""
    if not (backend.conv_kernels.isa >= 1 and plan.kh == plan.kw and plan.kh in WG_TILE and plan.groups == 1
            and tuple(plan.dilation) == (1, 1) and min(n_in, n_out) >= WG_MIN_CHANNELS[plan.kh]
            and out_hw[0] * out_hw[1] >= WG_MIN_PLANE):
        return False
    if _full_width(backend):
        return _tile_gemm(backend, (1,), n_in)
    return True


#: tiles per chunk of samples of _wg_run (at least one sample; 64-256 measured the same)
WG_TILES = 128
#: F(2x2, 5x5)'s GEMM positions (6 x 6; F(4x4, 3x3) would have as many, but WG_TILE runs only it)
WG_DEPTHS = (1,) * 36


def _wg_run(backend, src, w, dst, geometry, n_in, n_out, flip, accumulate, ws, epi=None):
    """dst (+)= the stride-1 rxr conv of src (``geometry``) with w, as Winograd F(m x m, r x r):
    like _winograd_run, with n*n GEMMs (n = m + r - 1), F(2x2, 5x5) whole on tile_conv."""
    n, kernels = src.shape[0], backend.conv_kernels
    r, (ho, wo) = geometry[3], geometry[11:13]
    m = WG_TILE[r]
    mats = _wg_matrices(m, r)
    th, tw = -(-ho // m), -(-wo // m)
    # F(2x2, 5x5) whole in one call (tile_conv's 'wg') where its GEMMs run on tile_gemm: from
    # Python, each chunk's three calls handed the lanes over through the GIL (docs/numpy.md)
    whole = None if (m, r) != (2, 5) else (
        lambda u, v, p, rows, per, vs, ms, lanes, e: kernels.tile_conv(
            "wg", w, src, dst, u, v, p, rows, geometry, n_out, n_in, n, per, th, tw, vs, ms, flip, accumulate, lanes,
            *e, mats))
    _tile_run(backend, _TileTransforms(
        "wg", (1,) * (m + r - 1) ** 2, WG_TILES, th * tw, 0,
        lambda u: kernels.wg_weights(w, u, n_out, n_in, flip, m, r, mats),
        lambda v, n0, n1, vs, rows: kernels.wg_input(src, v, geometry, n, n0, n1, th, tw, vs, m, mats),
        lambda p, n0, n1, ms, rows: kernels.wg_output(p, dst, geometry, n_out, n, n0, n1, th, tw, ms, accumulate,
                                                      m, mats), whole=whole),
        src, dst, n_in, n_out, ws, epi)


def _wg_forward(backend, x, w, plan, ws, out, epi=None):
    _tiled_forward(_wg_run, backend, x, w, plan, ws, out, epi)


def _wg_backward_data(backend, dy, w, plan, dx, accumulate, ws):
    _tiled_backward_data(_wg_run, backend, dy, w, plan, dx, accumulate, ws)


def _grid_padding(kernel, padding, dilation):
    """Padding of the stride-1 input gradient seen as a conv of dy with the flipped taps."""
    return tuple(d * (k - 1) - p for k, p, d in zip(kernel, padding, dilation))


def _c_depthwise_forward(backend, x, w, out, stride, padding, dilation, epi=None):
    """Any stride on the grid kernel (strided: each plane's phases, so that every tap reads whole
    vectors of consecutive inputs, not every sw-th; docs/numpy.md, session 49)."""
    n, c = x.shape[:2]
    geometry = _geometry(x.shape[1:], w.shape[2:], stride, padding, dilation, out.shape[2:])
    work = out[0, 0].size * w.shape[2] * w.shape[3]
    # each plane takes its epilogue as it is stored (in L1), not in a pass over the lane's planes
    fused = () if epi is None else (epi.scale, epi.shift, epi.relu, epi.residual)
    _run_lanes(n * c, work, lambda lo, hi, k: backend.conv_kernels.depthwise_grid(
        x, w, out, geometry, n, lo, hi, False, False, *fused))


def _c_depthwise_backward_data(backend, dy, w, dx, stride, padding, dilation, accumulate):
    n, c = dx.shape[:2]
    work = dy[0, 0].size * w.shape[2] * w.shape[3]
    flipped_padding = _grid_padding(w.shape[2:], padding, dilation)
    if tuple(stride) == (1, 1) and min(flipped_padding) >= 0:
        geometry = _geometry(dy.shape[1:], w.shape[2:], stride, flipped_padding, dilation, dx.shape[2:])
        _run_lanes(n * c, work, lambda lo, hi, k: backend.conv_kernels.depthwise_grid(
            dy, w, dx, geometry, n, lo, hi, True, accumulate))
    else:
        # strided: on the phase planes, a tap's whole rows at a time (the element loop of
        # depthwise_backward_data is left for stride-1 layers padded past k - 1)
        geometry = _geometry(dx.shape[1:], w.shape[2:], stride, padding, dilation, dy.shape[2:])
        kernel = backend.conv_kernels.depthwise_phase_data if tuple(stride) != (1, 1) and min(padding) >= 0 \
            else backend.conv_kernels.depthwise_backward_data
        _run_lanes(n * c, work, lambda lo, hi, k: kernel(dy, w, dx, geometry, n, lo, hi, accumulate))


def _c_depthwise_backward_filter(backend, x, dy, dw, stride, padding, dilation, accumulate):
    """Any stride on the grid kernel (strided: the input's phase planes, as the forward's)."""
    n, c = x.shape[:2]
    geometry = _geometry(x.shape[1:], dw.shape[2:], stride, padding, dilation, dy.shape[2:])
    work = n * dy[0, 0].size * dw.shape[2] * dw.shape[3]
    _run_lanes(c, work, lambda lo, hi, k: backend.conv_kernels.depthwise_grid_filter(
        x, dy, dw, geometry, n, lo, hi, accumulate))


# ---------------------------------------------------------------- pooling
def _pool_index(backend, ws, in_hw, kernel, stride, padding, out_hw):
    """int32 (kh, kw, Ho, Wo): the flat h*W+w input index kernel offset (i, j) reads for each
    output pixel (negative or past the plane inside the padding). Made once per geometry."""
    h, w = in_hw
    kh, kw = kernel
    ho, wo = out_hw

    def fill(table):
        rows = np.arange(kh)[:, None] + np.arange(ho)[None, :] * stride[0] - padding[0]  # (kh, Ho)
        cols = np.arange(kw)[:, None] + np.arange(wo)[None, :] * stride[1] - padding[1]  # (kw, Wo)
        np.add((rows * w)[:, None, :, None], cols[None, :, None, :], out=table, casting="unsafe")

    tag = f"pool_index {tuple(in_hw)} {tuple(stride)} {tuple(padding)}"
    return scratch(ws, backend, tag, (kh, kw, ho, wo), np.int32, init=fill)


def _is_global(x_hw, kernel, padding, out_hw):
    return tuple(kernel) == tuple(x_hw) and tuple(padding) == (0, 0) and tuple(out_hw) == (1, 1)


def _c_pooling(backend, *arrays) -> bool:
    return backend.pool_kernels is not None and all(a.flags.c_contiguous for a in arrays) \
        and arrays[0].dtype in (np.float32, np.float64)


def max_pool2d(backend, x, out, argmax, kernel, stride, padding, ws):
    kh, kw = kernel
    out_hw = out.shape[2:]
    if _c_pooling(backend, x, out, argmax):
        n, c, h, w = x.shape
        xs, outs, argmaxes = (_view(a, (n * c, a.shape[2] * a.shape[3])) for a in (x, out, argmax))

        def lane(lo, hi, k):
            backend.pool_kernels.max_pool(xs[lo:hi], outs[lo:hi], argmaxes[lo:hi], hi - lo, h, w, *out_hw,
                                          kh, kw, *stride, *padding)

        _run_lanes(n * c, h * w, lane)
        return
    xp = _padded(backend, x, padding, -np.inf, ws, "pool_xpad")
    table = _pool_index(backend, ws, x.shape[2:], kernel, stride, padding, out_hw)
    mask = scratch(ws, backend, "pool_mask", out.shape, np.bool_)
    nan = scratch(ws, backend, "pool_nan", out.shape, np.bool_)
    step = scratch(ws, backend, "pool_step", out.shape, np.int32)
    # PyTorch's rules: start at -inf on the window's first position inside the plane, take a
    # strictly greater value (the first maximum in scan order) or a NaN (the last NaN), so
    # padding never wins; arithmetic blends, as copies with a random where= mask are slower
    out.fill(-np.inf)
    np.copyto(argmax, _first_inside(backend, ws, x.shape[2:], stride, padding, out_hw))
    for i in range(kh):
        for j in range(kw):
            window = _offset_view(xp, i, j, stride, out_hw)
            np.greater(window, out, out=mask)
            np.isnan(window, out=nan)
            mask |= nan
            np.maximum(out, window, out=out)  # NaN propagates, as the mask says
            np.subtract(table[i, j], argmax, out=step)
            np.multiply(step, mask, out=step)
            argmax += step


def _first_inside(backend, ws, in_hw, stride, padding, out_hw):
    """int32 (Ho, Wo): flat index of each window's first position inside the plane."""
    def fill(first):
        rows = np.maximum(np.arange(out_hw[0]) * stride[0] - padding[0], 0)
        cols = np.maximum(np.arange(out_hw[1]) * stride[1] - padding[1], 0)
        np.add((rows * in_hw[1])[:, None], cols[None, :], out=first, casting="unsafe")

    tag = f"pool_first {tuple(in_hw)} {tuple(stride)} {tuple(padding)}"
    return scratch(ws, backend, tag, tuple(out_hw), np.int32, init=fill)


def max_pool2d_backward(backend, dy, argmax, dx, accumulate, ws):
    n, c, h, w = dx.shape
    planes = n * c
    per_plane = dy.size // planes
    if _c_pooling(backend, dx, dy, argmax):
        dys, argmaxes, dxs = (_view(a, (planes, a.shape[2] * a.shape[3])) for a in (dy, argmax, dx))

        def lane(lo, hi, k):
            backend.pool_kernels.max_pool_backward(dys[lo:hi], argmaxes[lo:hi], dxs[lo:hi], hi - lo, per_plane,
                                                   h * w, accumulate)

        _run_lanes(planes, h * w, lane)
        return
    flat_index = scratch(ws, backend, "pool_flat", (planes, per_plane), np.intp)
    plane_start = scratch(ws, backend, f"pool_base {h * w}", (planes, 1), np.intp,
                          init=lambda buf: np.copyto(buf[:, 0], np.arange(0, planes * h * w, h * w)))
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


def _global_mean(backend, x, out, ws):
    """The mean of each (N, C) plane: one matrix-vector product with ones where x is contiguous
    (np.mean runs its own loop per plane, several times slower on the small planes ending a CNN)."""
    n, c, h, w = x.shape
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        np.mean(x, axis=(2, 3), out=_view(out, out.shape[:2]))
        return
    means = _view(out, (n * c,))
    ones = scratch(ws, backend, "pool_ones", (h * w,), x.dtype, init=lambda buf: buf.fill(1.0))
    with _gemm_threads(n * c, 1, h * w):
        np.matmul(_view(x, (n * c, h * w)), ones, out=means)
    means /= h * w


def avg_pool2d(backend, x, out, kernel, stride, padding, count_include_pad, ws):
    kh, kw = kernel
    out_hw = out.shape[2:]
    if _is_global(x.shape[2:], kernel, padding, out_hw):
        _global_mean(backend, x, out, ws)
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
        if accumulate:  # each (1, 1) share broadcasts over its whole plane
            dx += share
        else:
            np.copyto(dx, share)
        return
    share = scratch(ws, backend, "pool_dy", dy.shape, dy.dtype)
    if count_include_pad:
        np.multiply(dy, 1.0 / (kh * kw), out=share)
    else:
        counts = _valid_counts(backend, ws, (h, w), kernel, stride, padding, out_hw, dy.dtype)
        np.divide(dy, counts, out=share)
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
        backend.store(target[:, :, ph:ph + h, pw:pw + w], dx, accumulate)


# ------------------------------------------------------------ batch norm
def _stat_axes(x):
    return (0,) + tuple(range(2, x.ndim))


#: elements per channel and sample below which the C batch-norm passes (vectorised along a
#: plane) give way to NumPy's whole-array ufuncs (BatchNorm1d's (N, C) input has one)
NORM_MIN_INNER = 16


def _c_norm(backend, x, *arrays) -> bool:
    return backend.norm_kernels is not None and x.ndim > 2 and channels_inner(x)[2] >= NORM_MIN_INNER \
        and x.dtype in (np.float32, np.float64) \
        and all(a.flags.c_contiguous and a.dtype == x.dtype for a in (x,) + arrays)


#: values per lane from which a batch-norm C kernel splits its channels: its own pool hands
#: over in a few microseconds, so a quarter of threads.MIN_LANE_WORK already pays (the
#: ResNet's (32, 64, 8, 8) batch norms, docs/numpy.md)
NORM_MIN_LANE_WORK = 1 << 15


def _channel_lanes(n, c, inner) -> int:
    """The threads a batch-norm C kernel splits the c channels of an (n, c, inner) array over
    inside its call, with the GIL released throughout (a hand-off through threads.py's lanes
    cost about as much as a pass on the ResNet's shapes; docs/numpy.md)."""
    return min(_num_threads(), c, max(1, n * c * inner // NORM_MIN_LANE_WORK))


def batch_norm_train(backend, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                     momentum, eps, ws, relu=False):
    axes = _stat_axes(x)
    shape = channel_shape(x)
    count = x.size // x.shape[1]
    channels = (x.shape[1],)
    if _c_norm(backend, x, gamma, beta, out, mean, invstd):
        n, c, inner = channels_inner(x)
        var = scratch(ws, backend, "bn_var", channels, x.dtype)
        scale = scratch(ws, backend, "bn_scale", channels, x.dtype)
        # stats, invstd and the affine map per channel in one pass over the lanes: the second
        # read of a channel's planes hits the cache (the same bits as the passes apart)
        backend.norm_kernels.train_fused(
            x, gamma, beta, out, mean, var, invstd, scale, eps, n, c, inner, 0, c, relu, _channel_lanes(n, c, inner))
        _update_running(backend, mean, var, count, running_mean, running_var, momentum, ws)
        return
    np.mean(x, axis=axes, out=mean)
    centered = scratch(ws, backend, "bn_centered", x.shape, x.dtype)
    np.subtract(x, _view(mean, shape), out=centered)
    squares = scratch(ws, backend, "bn_squares", x.shape, x.dtype)
    np.multiply(centered, centered, out=squares)
    var = scratch(ws, backend, "bn_var", channels, x.dtype)
    np.mean(squares, axis=axes, out=var)  # biased: what normalising uses
    _update_running_and_invstd(backend, mean, var, count, invstd, running_mean, running_var, momentum, eps, ws)
    scale = scratch(ws, backend, "bn_scale", channels, x.dtype)
    np.multiply(gamma, invstd, out=scale)
    np.multiply(centered, _view(scale, shape), out=out)
    out += _view(beta, shape)
    if relu:
        np.maximum(out, 0, out=out)


def batch_norm_infer(backend, x, gamma, beta, running_mean, running_var, eps, out, ws, relu=False):
    shape = channel_shape(x)
    channels = (x.shape[1],)
    scale = scratch(ws, backend, "bn_scale", channels, x.dtype)
    np.add(running_var, eps, out=scale)
    np.sqrt(scale, out=scale)
    np.divide(gamma, scale, out=scale)
    if _c_norm(backend, x, out, running_mean, scale, beta):
        n, c, inner = channels_inner(x)
        backend.norm_kernels.affine(x, running_mean, scale, beta, out, n, c, inner, 0, c, relu,
                                    _channel_lanes(n, c, inner))
        return
    shift = scratch(ws, backend, "bn_shift", channels, x.dtype)
    np.multiply(running_mean, scale, out=shift)
    np.subtract(beta, shift, out=shift)
    np.multiply(x, _view(scale, shape), out=out)
    out += _view(shift, shape)
    if relu:
        np.maximum(out, 0, out=out)


#: bytes of L2 per core that a channel's fused backward keeps its x, dy, ReLU output and dx in
#: (half of it, the other half for what the lane touches besides)
BN_FUSED_L2 = L2_BYTES // 2


def _fused_channels(x) -> int:
    """Channels whose x, dy, ReLU output and dx planes fit in BN_FUSED_L2 together (0: not even
    one): the block the fused backward sums and then turns into dx (the C kernel takes at most
    16). Its sums sweep a block's planes sample by sample, runs of that many planes side by side,
    where one channel at a time jumps a sample ahead after every plane: on 8x8 planes, 256-byte
    runs 16 KiB apart that the prefetchers do not follow from memory (docs/numpy.md)."""
    n, _, inner = channels_inner(x)
    return BN_FUSED_L2 // (4 * n * inner * x.itemsize)


def _fused_backward_fits(x) -> bool:
    """batch_norm_backward runs a block of channels' sums and dx back to back (_fused_backward)
    while one channel's 4 arrays fit in BN_FUSED_L2 (_fused_channels): beyond, the dx pass reading
    one plane per sample (a stride of C planes) from memory lost to the separate pass's sequential
    sweep (32x32 planes on Zen 3's 512 KB L2; on Zen 4's 1 MB they fit, and the fused pass won
    there; docs/numpy.md)."""
    return _fused_channels(x) >= 1


def batch_norm_backward(backend, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                        accumulate_dx, accumulate_params, ws, relu_out=None):
    sums = scratch(ws, backend, "bn_grad_sums", (2 * x.shape[1],), x.dtype)
    if relu_out is not None and not _c_norm(backend, x, dy, relu_out, gamma, mean, invstd,
                                            *([dx] if dx is not None else [])):
        # the NumPy path (relu_out is read by the C kernels only) masks dy into a scratch first
        masked = scratch(ws, backend, "bn_relu_dy", dy.shape, dy.dtype)
        backend.relu_backward(relu_out, dy, masked, False, ws)
        dy, relu_out = masked, None
    if dx is not None and _fused_backward_fits(x) \
            and _c_norm(backend, x, dy, gamma, mean, invstd, sums, dx, *([relu_out] if relu_out is not None else [])):
        _fused_backward(backend, x, dy, gamma, mean, invstd, sums, dx, dgamma, dbeta, accumulate_dx,
                        accumulate_params, ws, relu_out)
        return
    batch_norm_backward_reduce(backend, x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params, ws, relu_out)
    if dx is not None:
        batch_norm_backward_data(backend, x, dy, gamma, mean, invstd, sums, x.size // x.shape[1], dx,
                                 accumulate_dx, ws, relu_out)


def _fused_backward(backend, x, dy, gamma, mean, invstd, sums, dx, dgamma, dbeta, accumulate_dx,
                    accumulate_params, ws, relu_out):
    """batch_norm_backward_reduce then batch_norm_backward_data in one pass over the lanes, each
    block of channels' sums and then its dx while its planes are in cache (_fused_channels; the
    same bits)."""
    n, c, inner = channels_inner(x)
    count = x.size // c
    coef = _backward_coef(backend, gamma, invstd, count, ws)
    backend.norm_kernels.backward_fused(
        x, dy, mean, invstd, coef, sums[:c], sums[c:], dx, float(count), n, c, inner, 0, c, accumulate_dx,
        relu_out, _channel_lanes(n, c, inner), _fused_channels(x))
    for grad, value in ((dbeta, sums[:c]), (dgamma, sums[c:])):
        if grad is not None:
            backend.store(value, grad, accumulate_params)


def _backward_coef(backend, gamma, invstd, count, ws):
    """gamma * invstd / M per channel, the dx pass's factor"""
    coef = scratch(ws, backend, "bn_coef", gamma.shape, gamma.dtype)
    np.multiply(gamma, invstd, out=coef)
    coef *= 1.0 / count
    return coef


def _xhat(backend, x, mean, invstd, ws):
    xhat = scratch(ws, backend, "bn_centered", x.shape, x.dtype)
    shape = channel_shape(x)
    np.subtract(x, _view(mean, shape), out=xhat)
    xhat *= _view(invstd, shape)
    return xhat


def batch_norm_backward_reduce(backend, x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params, ws,
                               relu_out=None):
    """``relu_out`` (C kernels only): a ReLU's output after the batch norm, dy its gradient"""
    axes = _stat_axes(x)
    c = x.shape[1]
    sum_dy, sum_dy_xhat = sums[:c], sums[c:]
    if _c_norm(backend, x, dy, mean, invstd, sums):
        n, _, inner = channels_inner(x)
        backend.norm_kernels.backward_sums(
            x, dy, mean, invstd, sum_dy, sum_dy_xhat, n, c, inner, 0, c, relu_out, _channel_lanes(n, c, inner))
    else:
        np.sum(dy, axis=axes, out=sum_dy)
        product = scratch(ws, backend, "bn_squares", x.shape, x.dtype)
        np.multiply(dy, _xhat(backend, x, mean, invstd, ws), out=product)
        np.sum(product, axis=axes, out=sum_dy_xhat)
    for grad, value in ((dbeta, sum_dy), (dgamma, sum_dy_xhat)):
        if grad is not None:
            backend.store(value, grad, accumulate_params)


def batch_norm_backward_data(backend, x, dy, gamma, mean, invstd, sums, count, dx, accumulate, ws, relu_out=None):
    # dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    shape = channel_shape(x)
    c = x.shape[1]
    coef = _backward_coef(backend, gamma, invstd, count, ws)
    if _c_norm(backend, x, dy, gamma, mean, invstd, sums, dx):
        n, _, inner = channels_inner(x)
        backend.norm_kernels.backward_dx(
            x, dy, mean, invstd, coef, sums[:c], sums[c:], dx, float(count), n, c, inner, 0, c, accumulate,
            relu_out, _channel_lanes(n, c, inner))
        return
    product = scratch(ws, backend, "bn_squares", x.shape, x.dtype)
    np.multiply(_xhat(backend, x, mean, invstd, ws), _view(sums[c:], shape), out=product)
    product += _view(sums[:c], shape)
    target = scratch(ws, backend, "bn_dx", x.shape, x.dtype) if accumulate else dx
    np.multiply(dy, float(count), out=target)
    target -= product
    target *= _view(coef, shape)
    if accumulate:
        dx += target


def batch_norm_sums(backend, x, shift, sums, ws):
    axes = _stat_axes(x)
    c = x.shape[1]
    d = scratch(ws, backend, "bn_centered", x.shape, x.dtype)
    np.subtract(x, _view(shift, channel_shape(x)), out=d)
    np.sum(d, axis=axes, out=sums[:c])
    np.multiply(d, d, out=d)
    np.sum(d, axis=axes, out=sums[c:])


def batch_norm_stats(backend, sums, count, shift, mean, invstd, running_mean, running_var, momentum, eps, ws):
    c = mean.shape[0]
    offset = scratch(ws, backend, "bn_offset", (c,), mean.dtype)
    np.divide(sums[:c], count, out=offset)
    var = scratch(ws, backend, "bn_var", (c,), mean.dtype)
    np.divide(sums[c:], count, out=var)
    square = scratch(ws, backend, "bn_square", (c,), mean.dtype)
    np.multiply(offset, offset, out=square)
    var -= square
    np.maximum(var, 0.0, out=var)
    np.add(shift, offset, out=mean)  # before the running mean (which may be the shift) moves
    _update_running_and_invstd(backend, mean, var, count, invstd, running_mean, running_var, momentum, eps, ws)


def _update_running_and_invstd(backend, mean, var, count, invstd, running_mean, running_var, momentum, eps, ws):
    """Running statistics torch-style (running_var tracks the unbiased variance), and
    invstd = 1 / sqrt(var + eps) from the biased ``var``."""
    _update_running(backend, mean, var, count, running_mean, running_var, momentum, ws)
    np.add(var, eps, out=invstd)
    np.sqrt(invstd, out=invstd)
    np.reciprocal(invstd, out=invstd)


def _update_running(backend, mean, var, count, running_mean, running_var, momentum, ws):
    if running_mean is not None:
        step = scratch(ws, backend, "bn_step", mean.shape, mean.dtype)
        np.multiply(mean, momentum, out=step)
        running_mean *= 1.0 - momentum
        running_mean += step
        np.multiply(var, momentum * count / max(count - 1, 1), out=step)
        running_var *= 1.0 - momentum
        running_var += step


def batch_norm_apply(backend, x, gamma, beta, mean, invstd, out, ws, relu=False):
    shape = channel_shape(x)
    scale = scratch(ws, backend, "bn_scale", (x.shape[1],), x.dtype)
    np.multiply(gamma, invstd, out=scale)
    if _c_norm(backend, x, beta, mean, out):
        n, c, inner = channels_inner(x)
        backend.norm_kernels.affine(
            x, mean, scale, beta, out, n, c, inner, 0, c, relu, _channel_lanes(n, c, inner))
        return
    np.subtract(x, _view(mean, shape), out=out)
    out *= _view(scale, shape)
    out += _view(beta, shape)
    if relu:
        np.maximum(out, 0, out=out)
