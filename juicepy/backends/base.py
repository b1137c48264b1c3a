"""The Backend interface: the op set every backend implements.

Rules shared by every op:
- arrays are the backend's native arrays (numpy.ndarray, cupy.ndarray, pyopencl Array);
- every op writes into an ``out``-style buffer it is given and allocates nothing itself;
  ops that need temporaries take a :class:`Workspace` (``ws``) that caches them;
- ``accumulate=True`` means ``out += result`` instead of ``out = result`` (gradients into
  a junction or a shared param add up);
- layouts are PyTorch's: activations NCHW / (N, features), Linear weight (out, in),
  Conv weight (out, in/groups, kh, kw);
- a bad argument raises ValueError (TypeError for a dtype the backend does not compute in)
  whose message starts "<backend> backend <op>: " and names the expected and the actual.

Helpers every backend shares (scratch buffers, the (rows, channels, inner) view, same-shape
checks, output-size arithmetic) live here, once.
"""

from __future__ import annotations

import abc
import math
from typing import Any, NamedTuple

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (missing package, GPU or OpenCL platform)."""


class CaptureError(RuntimeError):
    """A backend could not record a sequence of ops as a replayable graph."""


class Workspace:
    """Temporaries for backend ops, made on first use and reused afterwards.

    One workspace belongs to one Context (or one optimizer), so ops that run one after
    another can share buffers while separate contexts never race on them.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Any] = {}

    def get(self, backend: "Backend", tag: str, shape: tuple, dtype, init=None) -> Any:
        """The buffer for (tag, shape, dtype); ``init(buf)`` fills a new one once (constants
        such as index ranges), later calls get it back as it was left."""
        key = (tag, tuple(shape), np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = backend.empty(shape, dtype)
            if init is not None:
                init(buf)
            self._buffers[key] = buf
        return buf


def scratch(ws: Workspace | None, backend: "Backend", tag: str, shape, dtype, init=None) -> Any:
    """The workspace buffer for (tag, shape, dtype); callers outside a context (tests, tools)
    pass ``ws=None`` and get a fresh temporary. ``init(buf)`` fills a new buffer once."""
    if ws is None:
        buf = backend.empty(tuple(shape), dtype)
        if init is not None:
            init(buf)
        return buf
    return ws.get(backend, tag, shape, dtype, init)


def relu_masked_grad(backend: "Backend", op: str, dy, relu_out, ws: Workspace | None) -> Any:
    """dy taken back through the ReLU that a fused op applied (output ``relu_out``), for
    backends whose fused op runs the ReLU's backward as its own op first."""
    backend._same(op, dy, relu_out)
    masked = scratch(ws, backend, f"{op} relu dy", dy.shape, dy.dtype)
    backend.relu_backward(relu_out, dy, masked, False, ws)
    return masked


def host_all_finite(x: np.ndarray) -> bool:
    """No NaN or Inf in x: min/max propagate NaN and expose +-Inf without a boolean array."""
    return bool(x.size == 0 or (math.isfinite(np.max(x)) and math.isfinite(np.min(x))))


def channels_inner(arr) -> tuple[int, int, int]:
    """(batch, channels, inner) of an (N, C, *spatial) array: the view per-channel ops work on."""
    inner = math.prod(arr.shape[2:]) if arr.ndim > 2 else 1
    return arr.shape[0], arr.shape[1], inner


def check_same(backend_name: str, op: str, *arrays) -> None:
    """Raise ValueError unless every array has the first one's shape and dtype."""
    shape, dtype = arrays[0].shape, arrays[0].dtype  # shapes are tuples on every backend
    for a in arrays[1:]:
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{backend_name} backend {op}: arrays must share one shape and dtype, got "
                             f"{', '.join(f'{tuple(x.shape)} {x.dtype}' for x in arrays)}")


def check_swap(backend_name: str, src, dst) -> None:
    """Raise ValueError unless dst is src with its two leading axes swapped (same dtype)."""
    want = (src.shape[1], src.shape[0]) + tuple(src.shape[2:]) if src.ndim >= 2 else None
    if want is None or tuple(dst.shape) != want or dst.dtype != src.dtype:
        raise ValueError(f"{backend_name} backend swap_leading_axes: src {tuple(src.shape)} {src.dtype} needs dst "
                         f"{want} of the same dtype, got {tuple(dst.shape)} {dst.dtype}")


def check_embedding(backend_name: str, op: str, indices, table, rows) -> None:
    """Raise ValueError unless indices are int32 (M,), table (V, D) and rows (M, D) of its dtype."""
    if (np.dtype(indices.dtype) != np.int32 or indices.ndim != 1 or table.ndim != 2
            or tuple(rows.shape) != (indices.size, table.shape[1]) or rows.dtype != table.dtype):
        raise ValueError(f"{backend_name} backend {op}: int32 indices (M,), a table (V, D) and rows (M, D) of "
                         f"one dtype expected, got {indices.dtype} {tuple(indices.shape)}, {table.dtype} "
                         f"{tuple(table.shape)}, {rows.dtype} {tuple(rows.shape)}")


def check_cell(backend_name: str, op: str, state, blocks: dict, bias=None, bias_blocks: int = 0) -> None:
    """Raise ValueError unless ``state`` is (N, H) and each array of ``blocks`` {k: [arrays]} is
    (N, k*H) of its dtype; an optional ``bias`` is (bias_blocks*H,)."""
    if state.ndim != 2:
        raise ValueError(f"{backend_name} backend {op}: (rows, hidden) states expected, got {tuple(state.shape)}")
    rows, hidden = state.shape
    for k, arrays in blocks.items():
        for a in arrays:
            if tuple(a.shape) != (rows, k * hidden) or a.dtype != state.dtype:
                raise ValueError(f"{backend_name} backend {op}: ({rows}, {k * hidden}) {state.dtype} expected for "
                                 f"states ({rows}, {hidden}), got {tuple(a.shape)} {a.dtype}")
    if bias is not None and (tuple(bias.shape) != (bias_blocks * hidden,) or bias.dtype != state.dtype):
        raise ValueError(f"{backend_name} backend {op}: bias ({bias_blocks * hidden},) expected, got "
                         f"{tuple(bias.shape)} {bias.dtype}")


def check_sequence(backend_name: str, op: str, w_hh, states, blocks: dict, bias=None, dout=None,
                   offset: int = 0) -> tuple[int, int, int]:
    """Raise ValueError unless ``states`` is (T+1, N, H), w_hh (G*H, H) with G = len(bias) / H
    or the LSTM's/GRU's count, each array of ``blocks`` {k: [arrays]} (T, N, k*H), ``bias``
    (G*H,) and ``dout`` (T, N, C) with H columns from ``offset``, all of one dtype; (T, N, H)."""
    if states.ndim != 3 or states.shape[0] < 2:
        raise ValueError(f"{backend_name} backend {op}: states (T+1, N, H) with T >= 1 expected, got {tuple(states.shape)}")
    steps, rows, hidden = states.shape[0] - 1, states.shape[1], states.shape[2]
    gates = w_hh.shape[0] // hidden if w_hh.ndim == 2 else 0
    arrays = [(a, (steps, rows, k * hidden)) for k, group in blocks.items() for a in group]
    arrays.append((w_hh, (gates * hidden, hidden)))
    if bias is not None:
        arrays.append((bias, (gates * hidden,)))
    for a, want in arrays:
        if tuple(a.shape) != want or a.dtype != states.dtype:
            raise ValueError(f"{backend_name} backend {op}: {want} {states.dtype} expected for states "
                             f"{tuple(states.shape)}, got {tuple(a.shape)} {a.dtype}")
    if dout is not None and (dout.ndim != 3 or tuple(dout.shape[:2]) != (steps, rows) or dout.dtype != states.dtype
                             or not 0 <= offset <= dout.shape[2] - hidden):
        raise ValueError(f"{backend_name} backend {op}: dout ({steps}, {rows}, C >= offset + {hidden}) "
                         f"{states.dtype} expected, got {tuple(dout.shape)} {dout.dtype} at offset {offset}")
    return steps, rows, hidden


def check_input_sequence(backend_name: str, op: str, x, w_ih, w_hh, h, gates, bias=None, bias_ih=None,
                         c=None, lstm=False, batch_first=False):
    """check_sequence for an op that projects its inputs itself: x (T, N, I) (batch_first:
    (N, T, I)), w_ih (G*H, I) of the states' dtype, bias_ih (G*H,) like bias; the LSTM's c and
    gates both given or both None. Returns (T, N, H)."""
    if lstm and (c is None) != (gates is None):
        raise ValueError(f"{backend_name} backend {op}: c and gates are both given or both None")
    blocks = {4: [gates]} if gates is not None else {}
    if c is not None:
        blocks[1] = [c[1:]]
    steps, rows, hidden = check_sequence(backend_name, op, w_hh, h, blocks, bias)
    if bias_ih is not None:
        check_sequence(backend_name, op, w_hh, h, {}, bias_ih)
    features = x.shape[2] if x.ndim == 3 else 0
    x_shape = (rows, steps, features) if batch_first else (steps, rows, features)
    for a, want in ((x, x_shape), (w_ih, (w_hh.shape[0], features))):
        if features < 1 or tuple(a.shape) != want or a.dtype != h.dtype:
            raise ValueError(f"{backend_name} backend {op}: x (T, N, I >= 1) and w_ih (G*H, I) {h.dtype} expected "
                             f"for states {tuple(h.shape)}, got {tuple(x.shape)} {x.dtype} and {tuple(w_ih.shape)} "
                             f"{w_ih.dtype}")
    return steps, rows, hidden


def check_input_sequence_backward(backend_name: str, op: str, x, w_hh, h, dw_ih, dw_hh, biases, dout, offset,
                                  batch_first) -> None:
    """The operands of an *_input_sequence_backward beyond check_sequence's: x (T, N, I) with the
    states' T and N, dw_ih (G*H, I), dw_hh like w_hh, each of ``biases`` (G*H,) or None; with
    batch_first x (N, T, I) and dout (N, T, C >= offset + H); one dtype."""
    steps, rows, hidden = h.shape[0] - 1, h.shape[1], h.shape[2]
    features = x.shape[2] if x.ndim == 3 else 0
    if batch_first and (dout.ndim != 3 or tuple(dout.shape[:2]) != (rows, steps) or dout.dtype != h.dtype
                        or not 0 <= offset <= dout.shape[2] - hidden):
        raise ValueError(f"{backend_name} backend {op}: dout ({rows}, {steps}, C >= offset + {hidden}) {h.dtype} "
                         f"expected, got {tuple(dout.shape)} {dout.dtype} at offset {offset}")
    x_shape = (rows, steps, features) if batch_first else (steps, rows, features)
    wants = [(x, x_shape), (dw_ih, (w_hh.shape[0], features)), (dw_hh, tuple(w_hh.shape))]
    wants += [(b, (w_hh.shape[0],)) for b in biases if b is not None]
    for a, want in wants:
        if features < 1 or tuple(a.shape) != want or a.dtype != h.dtype:
            raise ValueError(f"{backend_name} backend {op}: {want} {h.dtype} expected for states {tuple(h.shape)} "
                             f"and w_hh {tuple(w_hh.shape)}, got {tuple(a.shape)} {a.dtype}")


def _sequence_steps(steps: int, reverse: bool):
    """(processing index, time, previous state index, new state index) in processing order."""
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        yield k, t, (t + 1, t) if reverse else (t, t + 1)


def check_nonlinearity(backend_name: str, nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{backend_name} backend rnn_cell: nonlinearity must be 'tanh' or 'relu', "
                         f"got {nonlinearity!r}")


#: the largest value of a convolution's or a pooling window's geometry (sizes, strides, padding,
#: dilations, padded extents): kernels compute positions in 32-bit integers
GEOMETRY_MAX = 2**31 - 1


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output length along one axis of a convolution or pooling window (floor mode, as PyTorch)."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def check_gemm(backend_name: str, a, b, out, trans_a: bool, trans_b: bool) -> tuple[int, int, int]:
    """(m, n, k) of out (m, n) = op(a) (m, k) @ op(b) (k, n); ValueError unless the shapes and dtypes fit."""
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        raise ValueError(f"{backend_name} backend gemm: 2-D arrays expected, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)} -> {tuple(out.shape)}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb or tuple(out.shape) != (m, n) or not (a.dtype == b.dtype == out.dtype):
        raise ValueError(f"{backend_name} backend gemm: op(a) {(m, k)} @ op(b) {(kb, n)} does not give out "
                         f"{tuple(out.shape)} (dtypes {a.dtype}, {b.dtype}, {out.dtype})")
    return m, n, k


def check_conv_shapes(backend_name: str, op: str, x_shape, w_shape, y_shape, stride, padding, dilation,
                      groups) -> tuple[tuple[int, int], tuple[int, int]]:
    """Raise ValueError unless input (N, C, H, W), weight (O, C/groups, kh, kw) and output
    (N, O, Ho, Wo) fit the geometry; returns the (stride, dilation) for the kernels."""
    if len(x_shape) != 4 or len(w_shape) != 4 or len(y_shape) != 4:
        raise ValueError(f"{backend_name} backend {op}: 4-D input, weight and output expected, got "
                         f"{tuple(x_shape)}, {tuple(w_shape)}, {tuple(y_shape)}")
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    expected = (n, o, conv_output_size(h, kh, stride[0], padding[0], dilation[0]),
                conv_output_size(w, kw, stride[1], padding[1], dilation[1]))
    if c != cg * groups or o % groups or tuple(y_shape) != expected:
        raise ValueError(f"{backend_name} backend {op}: input {tuple(x_shape)}, weight {tuple(w_shape)}, "
                         f"groups {groups}, stride {tuple(stride)}, padding {tuple(padding)}, dilation "
                         f"{tuple(dilation)} give output {expected}, got {tuple(y_shape)}")
    _check_geometry_range(backend_name, op, (h, w), (kh, kw), stride, padding, dilation)
    return kernel_geometry((h, w), (kh, kw), stride, padding, dilation)


def _check_geometry_range(backend_name, op, hw, kernel, stride, padding, dilation) -> None:
    padded = [s + 2 * p for s, p in zip(hw, padding)]
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if max(*padded, *span, *stride) > GEOMETRY_MAX:
        raise ValueError(f"{backend_name} backend {op}: padded input {tuple(padded)}, window span {tuple(span)} "
                         f"and stride {tuple(stride)} must each be <= {GEOMETRY_MAX} (32-bit kernel geometry)")


def kernel_geometry(hw, kernel, stride, padding, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, dilation) as the kernels take them: a stride past the padded plane (one output
    position) cut to the plane's extent and a one-tap axis's dilation as 1, which changes no
    result; the kernels size their scratch by them, so a stride of 2**31 on a 4x4 plane must not
    reach them."""
    stride = tuple(min(int(s), size + 2 * p) for s, size, p in zip(stride, hw, padding))
    dilation = tuple(1 if k == 1 else int(d) for k, d in zip(kernel, dilation))
    return stride, dilation


class ConvNorm(NamedTuple):
    """An inference-mode batch norm after a convolution, applied by conv2d to its output
    (``norm``): y = (conv - running_mean) / sqrt(running_var + eps) * gamma + beta."""

    gamma: Any
    beta: Any
    running_mean: Any
    running_var: Any
    eps: float


def check_conv_epilogue(backend_name: str, out, bias, norm, residual=None) -> None:
    """Raise ValueError unless conv2d's bias and the norm's vectors hold one value per output
    channel and its residual is a separate array of out's shape and dtype."""
    arrays = [bias] + ([] if norm is None else list(norm[:4]))
    check_per_channel(backend_name, "conv2d", out, *arrays)
    if residual is not None:
        if residual is out:
            raise ValueError(f"{backend_name} backend conv2d: residual must not be out (the convolution "
                             f"overwrites out before the residual is added)")
        if tuple(residual.shape) != tuple(out.shape) or residual.dtype != out.dtype:
            raise ValueError(f"{backend_name} backend conv2d: residual must have out's shape and dtype "
                             f"{tuple(out.shape)} {out.dtype}, got {tuple(residual.shape)} {residual.dtype}")


def conv_epilogue(backend: "Backend", out, bias, norm, relu: bool, ws, residual=None) -> None:
    """conv2d's epilogue as ops of their own after the convolution, for backends that do not
    fold it into the convolution's output stores."""
    if bias is not None:
        backend.add_bias(out, bias)
    late_relu = relu and residual is not None  # the ReLU reads the sum with the residual
    if norm is not None:
        backend.batch_norm_infer(out, norm.gamma, norm.beta, norm.running_mean, norm.running_var, norm.eps, out,
                                 ws=ws, relu=relu and not late_relu)
    elif relu and not late_relu:
        backend.relu(out, out)
    if residual is not None:
        backend.add(out, residual, out, relu=late_relu)


def check_pool_shapes(backend_name: str, op: str, x_shape, y_shape, kernel, stride, padding) -> tuple[int, int]:
    """Raise ValueError unless output (N, C, Ho, Wo) is what pooling (N, C, H, W) gives; returns
    the stride for the kernels."""
    if len(x_shape) != 4 or len(y_shape) != 4:
        raise ValueError(f"{backend_name} backend {op}: 4-D input and output expected, got "
                         f"{tuple(x_shape)}, {tuple(y_shape)}")
    n, c, h, w = x_shape
    expected = (n, c, conv_output_size(h, kernel[0], stride[0], padding[0]),
                conv_output_size(w, kernel[1], stride[1], padding[1]))
    if tuple(y_shape) != expected:
        raise ValueError(f"{backend_name} backend {op}: input {tuple(x_shape)}, kernel {tuple(kernel)}, stride "
                         f"{tuple(stride)}, padding {tuple(padding)} give {expected}, got {tuple(y_shape)}")
    _check_geometry_range(backend_name, op, (h, w), kernel, stride, padding, (1, 1))
    return kernel_geometry((h, w), kernel, stride, padding, (1, 1))[0]


def check_argmax(backend_name: str, op: str, argmax, shape) -> None:
    """Raise ValueError unless ``argmax`` is int32 of ``shape`` (max pooling's indices)."""
    if argmax.dtype != np.int32 or tuple(argmax.shape) != tuple(shape):
        raise ValueError(f"{backend_name} backend {op}: argmax must be int32 of shape {tuple(shape)}, "
                         f"got {argmax.dtype} {tuple(argmax.shape)}")


def check_per_channel(backend_name: str, op: str, x, *arrays) -> None:
    """Raise ValueError unless every array given (None skipped) holds one value per channel of x."""
    channels = x.shape[1]
    for a in arrays:
        if a is not None and tuple(a.shape) != (channels,):
            raise ValueError(f"{backend_name} backend {op}: per-channel arrays of shape ({channels},) "
                             f"expected for input {tuple(x.shape)}, got {tuple(a.shape)}")


def check_batch_norm_sums(backend_name: str, op: str, sums, channels: int, *per_channel) -> None:
    """Raise ValueError unless ``sums`` is the flat (2 * channels,) block of synchronised batch
    norm and every per-channel array given (None skipped) is (channels,)."""
    if tuple(sums.shape) != (2 * channels,):
        raise ValueError(f"{backend_name} backend {op}: sums of shape ({2 * channels},) expected for "
                         f"{channels} channels, got {tuple(sums.shape)}")
    for a in per_channel:
        if a is not None and tuple(a.shape) != (channels,):
            raise ValueError(f"{backend_name} backend {op}: per-channel arrays of shape ({channels},) "
                             f"expected, got {tuple(a.shape)}")


def check_channel_range(backend_name: str, op: str, part, whole, offset: int) -> None:
    """Raise ValueError unless ``part`` fits ``whole`` at channel ``offset`` (other axes equal)."""
    if (part.shape[0] != whole.shape[0] or part.shape[2:] != whole.shape[2:] or offset < 0
            or offset + part.shape[1] > whole.shape[1] or part.dtype != whole.dtype):
        raise ValueError(f"{backend_name} backend {op}: {tuple(part.shape)} {part.dtype} does not fit "
                         f"{tuple(whole.shape)} {whole.dtype} at channel {offset}")


def check_view(backend_name: str, flat, offset: int, shape) -> None:
    """Raise ValueError unless ``shape`` at ``offset`` lies inside the 1-D array ``flat``."""
    size = math.prod(shape)
    if flat.ndim != 1 or offset < 0 or offset + size > flat.shape[0]:
        raise ValueError(f"{backend_name} backend flat_view: {tuple(shape)} at {offset} lies outside an "
                         f"array of {tuple(flat.shape)}")


class Backend(abc.ABC):
    """The op set a layer may use. Subclasses count allocations in ``allocations``."""

    name: str = "abstract"
    #: dtypes this backend computes in
    dtypes: tuple = (np.float32,)

    def __init__(self) -> None:
        self.allocations = 0

    def __repr__(self) -> str:
        return f"<juicepy backend {self.name!r}>"

    # ---------------------------------------------------------------- memory
    @abc.abstractmethod
    def empty(self, shape, dtype=np.float32): ...

    @abc.abstractmethod
    def zeros(self, shape, dtype=np.float32): ...

    @abc.abstractmethod
    def from_host(self, host: np.ndarray):
        """A new device array holding a copy of ``host``."""

    @abc.abstractmethod
    def write(self, dst, host: np.ndarray) -> None:
        """Copy a host array into an existing device array of the same size."""

    @abc.abstractmethod
    def to_host(self, src) -> np.ndarray:
        """A host (NumPy) copy of ``src``."""

    @abc.abstractmethod
    def copy(self, src, dst) -> None:
        """dst = src: the same number of elements (a 0-d array and its (1,) device copy agree)."""

    @abc.abstractmethod
    def fill(self, dst, value: float) -> None: ...

    @abc.abstractmethod
    def reshape(self, arr, shape):
        """A view of ``arr`` with another shape (same element count, no copy)."""

    @abc.abstractmethod
    def flat_view(self, flat, offset: int, shape):
        """A view of ``shape`` into the 1-D array ``flat`` starting at element ``offset``."""

    @abc.abstractmethod
    def is_array(self, x) -> bool:
        """Whether ``x`` is an array of this backend (else it is taken as host data)."""

    def synchronize(self) -> None:
        """Wait for queued work (no-op on synchronous backends)."""

    def release(self) -> None:
        """Give cached device memory back (memory pools)."""

    # ------------------------------------------------------------ arithmetic
    @abc.abstractmethod
    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        """out = alpha * op(a) @ op(b) + beta * out, 2-D."""

    @abc.abstractmethod
    def add(self, a, b, out, relu=False) -> None:
        """out = a + b (same shapes; out may be a or b); with ``relu``, out = max(a + b, 0) in the
        same pass (NaN kept, as :meth:`relu`): a residual sum and the ReLU reading it."""

    @abc.abstractmethod
    def scale(self, x, alpha: float, out) -> None:
        """out = alpha * x."""

    @abc.abstractmethod
    def add_bias(self, out, bias) -> None:
        """out[:, c, ...] += bias[c]: bias broadcast along axis 1."""

    @abc.abstractmethod
    def bias_grad(self, dy, dbias, accumulate=False, ws=None) -> None:
        """dbias[c] (+)= sum of dy over every axis but 1."""

    @abc.abstractmethod
    def sum_all(self, x, out) -> None:
        """out[0] = sum of every element of x (out has shape (1,))."""

    @abc.abstractmethod
    def all_finite(self, x) -> bool:
        """True when x holds no NaN or Inf (reads one flag back)."""

    # ------------------------------------------------------------ activations
    # Backward ops take the forward *output* y where it determines the derivative.
    @abc.abstractmethod
    def relu(self, x, out) -> None: ...

    @abc.abstractmethod
    def relu_backward(self, y, dy, dx, accumulate=False, ws=None) -> None: ...

    @abc.abstractmethod
    def leaky_relu(self, x, out, slope: float) -> None: ...

    @abc.abstractmethod
    def leaky_relu_backward(self, x, dy, dx, slope: float, accumulate=False, ws=None) -> None: ...

    @abc.abstractmethod
    def sigmoid(self, x, out) -> None: ...

    @abc.abstractmethod
    def sigmoid_backward(self, y, dy, dx, accumulate=False, ws=None) -> None: ...

    @abc.abstractmethod
    def tanh(self, x, out) -> None: ...

    @abc.abstractmethod
    def tanh_backward(self, y, dy, dx, accumulate=False, ws=None) -> None: ...

    # softmax family: rows of a 2-D (N, C) array
    @abc.abstractmethod
    def softmax(self, x, out, ws=None) -> None: ...

    @abc.abstractmethod
    def softmax_backward(self, y, dy, dx, accumulate=False, ws=None) -> None:
        """dx = y * (dy - sum(dy * y, axis=1))."""

    @abc.abstractmethod
    def log_softmax(self, x, out, ws=None) -> None: ...

    @abc.abstractmethod
    def log_softmax_backward(self, y, dy, dx, accumulate=False, ws=None) -> None:
        """dx = dy - exp(y) * sum(dy, axis=1)."""

    # ----------------------------------------------------------------- losses
    # Each writes the per-row loss into ``losses`` (N,) and the gradient of
    # ``grad_scale * sum(losses)`` with respect to its input into ``dx``.
    @abc.abstractmethod
    def softmax_cross_entropy(self, logits, labels, losses, dx, grad_scale: float, ws=None) -> None:
        """losses[i] = logsumexp(logits[i]) - logits[i, labels[i]];
        dx = grad_scale * (softmax(logits) - onehot(labels)). labels: int32 (N,)."""

    @abc.abstractmethod
    def nll_loss(self, logp, labels, losses, dx, grad_scale: float, ws=None) -> None:
        """losses[i] = -logp[i, labels[i]]; dx = -grad_scale * onehot(labels)."""

    @abc.abstractmethod
    def mse_loss(self, pred, target, losses, dx, grad_scale: float, ws=None) -> None:
        """pred, target (N, ...): losses[i] = sum over the row of (pred-target)^2; dx = 2*grad_scale*(pred-target)."""

    # ---------------------------------------------------------------- dropout
    @abc.abstractmethod
    def dropout(self, x, out, mask, p: float, seed: int, counter: int, ws=None) -> None:
        """mask[i] = keep_i / (1 - p), keep_i = (h_i >> 8) >= keep_threshold(p), where
        h_i = hash32(hash32(i ^ stream_key(seed, counter)) + 0x9E3779B9) (see :mod:`juicepy.backends.rng`; the same
        bits on every backend); out = x * mask."""

    @abc.abstractmethod
    def mul(self, a, b, out, accumulate=False, ws=None) -> None:
        """out (+)= a * b elementwise (dropout backward: dx = dy * mask)."""

    def store(self, src, dst, accumulate=False) -> None:
        """dst (+)= src: a result into a gradient buffer that another writer may have filled."""
        if accumulate:
            self.add(dst, src, dst)
        else:
            self.copy(src, dst)

    # -------------------------------------------------------------- optimizers
    # ``guard``: None, or a (1,) array holding the step's summed loss; when it is not finite the
    # update is skipped and param and state stay unchanged (the NaN guard of a step the host
    # cannot stop midway: optimizers pass it where the backend captures graphs, ``can_capture``).
    @abc.abstractmethod
    def sgd_update(self, param, grad, buf, *, lr, momentum, dampening, nesterov,
                   weight_decay, first_step, ws=None, guard=None) -> None:
        """torch.optim.SGD's update, in place on param (and the momentum buffer ``buf``)."""

    @abc.abstractmethod
    def adam_update(self, param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps,
                    weight_decay, decoupled, step, max_exp_avg_sq=None, ws=None, guard=None) -> None:
        """torch.optim.Adam's (decoupled=False) or AdamW's (decoupled=True) update, in place.
        ``step`` is the 1-based step count after this update."""

    # ------------------------------------------------------------- graphs
    #: whether :meth:`capture` can record ops for replay (CUDA graphs); the trainer and
    #: ``Network.transform`` then replay whole steps instead of issuing every op
    can_capture: bool = False

    def capture(self, fn):
        """Record the device work of ``fn()`` (no host sync, no allocation inside) and return a
        graph whose ``replay(shift)`` re-runs it; the dropout ``counter`` and optimizer ``step``
        arguments recorded with value v run as v + shift. The captured work itself does not run.
        Raises :class:`CaptureError` where it cannot."""
        raise CaptureError(f"{self.name} backend capture: this backend does not capture graphs")

    # ------------------------------------------------------------ convolution
    # NCHW; weight (O, C/groups, kh, kw); padding is a pair of ints (already resolved).
    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None, bias=None, norm=None,
               relu=False, residual=None) -> None:
        """out = the convolution, then its epilogue: + bias[o] (``bias`` (O,) or None), the
        inference batch norm ``norm`` (a :class:`ConvNorm`, or None), + ``residual`` (an array of
        out's shape and dtype, not out itself, or None: a residual block's skip input), max(out, 0)
        where ``relu`` (NaN stays NaN): one op, so a backend can apply them as it stores the output."""
        raise NotImplementedError(f"{self.name} backend conv2d: not implemented")

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None) -> None:
        raise NotImplementedError(f"{self.name} backend conv2d_backward_data: not implemented")

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None) -> None:
        raise NotImplementedError(f"{self.name} backend conv2d_backward_filter: not implemented")

    # ---------------------------------------------------------------- pooling
    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None) -> None:
        """argmax (int32, shape of out) records the flat h*W+w index of each max in its plane."""
        raise NotImplementedError(f"{self.name} backend max_pool2d: not implemented")

    def max_pool2d_backward(self, dy, argmax, dx, kernel, stride, padding, accumulate=False, ws=None) -> None:
        """dx (+)= dy sent to the positions argmax records; kernel, stride and padding are those of
        the max_pool2d that made argmax (a backend may gather over the windows covering each
        input position instead of scattering; windows may overlap)."""
        raise NotImplementedError(f"{self.name} backend max_pool2d_backward: not implemented")

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None) -> None:
        raise NotImplementedError(f"{self.name} backend avg_pool2d: not implemented")

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None) -> None:
        raise NotImplementedError(f"{self.name} backend avg_pool2d_backward: not implemented")

    # ------------------------------------------------------------ batch norm
    # x (N, C, *spatial); statistics per channel (axis 1).
    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None, relu=False) -> None:
        """Normalise with batch statistics; store them in mean/invstd for the backward;
        update running stats torch-style (unbiased variance). ``relu``: out = max(normalised,
        0), a ReLU after the batch norm in the same op (NaN stays NaN)."""
        raise NotImplementedError(f"{self.name} backend batch_norm_train: not implemented")

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None, relu=False) -> None:
        """Normalise with the running statistics; ``relu`` as in batch_norm_train."""
        raise NotImplementedError(f"{self.name} backend batch_norm_infer: not implemented")

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None, relu_out=None) -> None:
        """dx may be None (input gradient not needed). ``relu_out``: the output y of a ReLU applied
        to this batch norm's output (batch_norm_train(..., relu=True)); dy is then d(loss)/dy and
        the gradient at the batch norm's output is dy where y > 0, 0 elsewhere (the ReLU's
        backward in the same op)."""
        raise NotImplementedError(f"{self.name} backend batch_norm_backward: not implemented")

    # Synchronised batch norm (statistics over the replicas of a data-parallel job) splits the
    # ops above at the per-channel sums, which the caller sums over ranks in between. ``sums``
    # is a flat (2 * C,) array: row 0 in sums[:C], row 1 in sums[C:]. ``count`` is the number of
    # values per channel over every rank.
    def batch_norm_sums(self, x, shift, sums, ws=None) -> None:
        """sums[:C] = sum of (x - shift[c]), sums[C:] = sum of (x - shift[c])^2 per channel.
        A shift near the mean (the same on every rank) keeps E[d^2] - E[d]^2 accurate."""
        raise NotImplementedError(f"{self.name}: batch_norm_sums")

    def batch_norm_stats(self, sums, count: int, shift, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None) -> None:
        """Per channel: d = sums[c] / count; mean = shift + d; biased var = max(sums[C+c] / count
        - d^2, 0); invstd = 1 / sqrt(var + eps); running stats updated torch-style (unbiased
        variance; running_mean None: none). ``shift`` may be ``mean`` or ``running_mean`` itself:
        it is read before either is written."""
        raise NotImplementedError(f"{self.name}: batch_norm_stats")

    def batch_norm_apply(self, x, gamma, beta, mean, invstd, out, ws=None) -> None:
        """out = (x - mean[c]) * invstd[c] * gamma[c] + beta[c]."""
        raise NotImplementedError(f"{self.name}: batch_norm_apply")

    def batch_norm_backward_reduce(self, x, dy, mean, invstd, sums, dgamma=None, dbeta=None,
                                   accumulate_params=False, ws=None) -> None:
        """sums[:C] = sum of dy, sums[C:] = sum of dy * xhat per channel (xhat = (x - mean) *
        invstd); dbeta / dgamma (+)= those local sums where given."""
        raise NotImplementedError(f"{self.name}: batch_norm_backward_reduce")

    def batch_norm_backward_data(self, x, dy, gamma, mean, invstd, sums, count: int, dx,
                                 accumulate=False, ws=None) -> None:
        """dx (+)= gamma * invstd * (dy - sums[c] / count - xhat * sums[C + c] / count)."""
        raise NotImplementedError(f"{self.name}: batch_norm_backward_data")

    # ------------------------------------------------------------ sequences
    # Recurrent layers keep their per-step arrays time-major, (T, N, ...), so every step is a
    # contiguous (N, ...) block; these ops move between that and the batch-first layer layout.
    def swap_leading_axes(self, src, dst, accumulate=False) -> None:
        """dst[j, i, ...] (+)= src[i, j, ...]: src (A, B, *rest) into dst (B, A, *rest)."""
        raise NotImplementedError(f"{self.name}: swap_leading_axes")

    def embedding(self, indices, weight, out) -> None:
        """out[k, :] = weight[indices[k], :]; indices int32 (M,) already checked to lie in
        [0, V), weight (V, D), out (M, D)."""
        raise NotImplementedError(f"{self.name}: embedding")

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None) -> None:
        """dweight (+)= the scatter-sum of the rows of dy (M, D) into rows indices[k] of
        dweight (V, D); the row ``padding_idx`` (if given) is left as it was (zero when not
        accumulating): it gets no gradient."""
        raise NotImplementedError(f"{self.name}: embedding_backward")

    # -------------------------------------------------------- recurrent cells
    # One time step for a batch of N rows, every array a contiguous (N, k*H) block, gate order
    # PyTorch's. ``xw`` is the step's input projection x_t @ W_ih^T + b_ih (the layer makes it
    # for all steps with one GEMM), ``hw`` = h_prev @ W_hh^T (one GEMM per step, no bias),
    # ``bias_hh`` the hidden bias (G*H,) or None. Sigmoid is 0.5 * (1 + tanh(x / 2)).
    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity: str) -> None:
        """h = act(xw + hw + b_hh), act "tanh" or "relu" (its backward is tanh_/relu_backward)."""
        raise NotImplementedError(f"{self.name}: rnn_cell")

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None) -> None:
        """xw, hw, gates (N, 4H); c_prev, c, h (N, H). With a = xw + hw + b_hh:
        gates = [sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)] (kept for the backward),
        c = f * c_prev + i * g, h = o * tanh(c)."""
        raise NotImplementedError(f"{self.name}: lstm_cell")

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None) -> None:
        """From dh, dc (gradients of this step's h and c; dc carries the later steps' part) to
        dgates (N, 4H), the gradient of the pre-activations a (= of xw, hw and both biases),
        and dc_prev = dc_total * f. ``dc_prev`` may be ``dc`` itself (updated in place)."""
        raise NotImplementedError(f"{self.name}: lstm_cell_backward")

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None) -> None:
        """xw, hw (N, 3H); gates (N, 4H) receives [r, z, n, hn] for the backward, where
        r = sigmoid(xw_r + hw_r + b_hr), z likewise, hn = hw_n + b_hn,
        n = tanh(xw_n + r * hn) (torch's reset inside the product), h = (1 - z) * n + z * h_prev."""
        raise NotImplementedError(f"{self.name}: gru_cell")

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None) -> None:
        """From dh (gradient of this step's h) to dxw (N, 3H), the gradient of xw (and b_ih),
        dhw (N, 3H), that of hw + b_hh, and dh_prev = dh * z, the direct path only (the layer
        adds dhw @ W_hh). ``dh_prev`` may be ``dh`` itself."""
        raise NotImplementedError(f"{self.name}: gru_cell_backward")

    # ------------------------------------------------------ recurrent sequences
    # All T steps of one direction of an LSTM or GRU layer, time-major: ``xw`` (T, N, G*H) the
    # input projections of every step (b_ih added, or both biases where ``bias_hh`` is None),
    # ``w_hh`` (G*H, H). State buffers (T+1, N, H): going forward, step t enters from index t
    # and writes t + 1; with ``reverse`` it enters from t + 1 and writes t; the op itself zeroes
    # the initial state. Here they are composed of gemm and the cell ops, one GEMM and one cell
    # per step; a backend may run the whole recurrence as one kernel.
    def lstm_sequence(self, xw, w_hh, bias_hh, h, c, gates, reverse=False, ws=None) -> None:
        """h, c (T+1, N, H) as above; gates (T, N, 4H) receives every step's lstm_cell gates."""
        steps, rows, hidden = check_sequence(self.name, "lstm_sequence", w_hh, h, {1: [c[1:]], 4: [xw, gates]},
                                             bias_hh)
        hw = scratch(ws, self, "rnn_hw", (rows, 4 * hidden), xw.dtype)
        for k, t, (prev, cur) in _sequence_steps(steps, reverse):
            if k == 0:
                self.fill(h[prev], 0.0)
                self.fill(c[prev], 0.0)
                self.fill(hw, 0.0)
            else:
                self.gemm(h[prev], w_hh, hw, trans_b=True, ws=ws)
            self.lstm_cell(xw[t], hw, bias_hh, c[prev], gates[t], c[cur], h[cur], ws=ws)

    def lstm_sequence_backward(self, w_hh, gates, c, dout, offset, dgates, reverse=False, ws=None) -> None:
        """dout (T, N, C): the gradient of the time-major layer output, this direction's h in
        columns [offset, offset + H). dgates (T, N, 4H) receives the gradient of every step's
        pre-activations (of xw, of h_prev @ W_hh^T and of both biases)."""
        steps, rows, hidden = check_sequence(self.name, "lstm_sequence_backward", w_hh, c, {4: [gates, dgates]},
                                             dout=dout, offset=offset)
        dh = scratch(ws, self, "rnn_dh", (rows, hidden), c.dtype)
        dc = scratch(ws, self, "rnn_dc", (rows, hidden), c.dtype)
        for k, t, (prev, cur) in reversed(list(_sequence_steps(steps, reverse))):
            self.slice_channels(dout[t], dh, offset, accumulate=k < steps - 1)
            if k == steps - 1:
                self.fill(dc, 0.0)
            self.lstm_cell_backward(gates[t], c[prev], c[cur], dh, dc, dgates[t], dc, ws=ws)
            if k > 0:  # the gradient into the previous state (none into the zero initial one)
                self.gemm(dgates[t], w_hh, dh, ws=ws)

    def gru_sequence(self, xw, w_hh, bias_hh, h, gates, reverse=False, ws=None) -> None:
        """h (T+1, N, H) as above; gates (T, N, 4H) receives every step's gru_cell gates. xw
        holds b_ih only: b_hn sits inside the reset product, so ``bias_hh`` stays apart."""
        steps, rows, hidden = check_sequence(self.name, "gru_sequence", w_hh, h, {3: [xw], 4: [gates]}, bias_hh)
        hw = scratch(ws, self, "rnn_hw", (rows, 3 * hidden), xw.dtype)
        for k, t, (prev, cur) in _sequence_steps(steps, reverse):
            if k == 0:
                self.fill(h[prev], 0.0)
                self.fill(hw, 0.0)
            else:
                self.gemm(h[prev], w_hh, hw, trans_b=True, ws=ws)
            self.gru_cell(xw[t], hw, bias_hh, h[prev], gates[t], h[cur], ws=ws)

    # The same from the inputs x (T, N, I) themselves, or (N, T, I) with ``batch_first`` (a
    # network's input as it comes): the ops take w_ih (G*H, I) and make the projections, so a
    # backend may fuse them into the steps instead of writing all steps' xw. ``gates`` (and the
    # LSTM's ``c``) None: no backward follows, only h is written.
    def lstm_input_sequence(self, x, w_ih, w_hh, bias, h, c, gates, reverse=False, ws=None,
                            batch_first=False) -> None:
        """lstm_sequence over xw = x @ w_ih^T; ``bias`` (4H,) is b_ih + b_hh, or None."""
        steps, rows, hidden = check_input_sequence(self.name, "lstm_input_sequence", x, w_ih, w_hh, h, gates, bias,
                                                   c=c, lstm=True, batch_first=batch_first)
        xw = self._input_projection(self._time_major(x, "rnn_x_tm", batch_first, ws), w_ih, None, ws)
        if gates is None:
            c = scratch(ws, self, "rnn_c_inference", tuple(h.shape), h.dtype)
            gates = scratch(ws, self, "rnn_gates_inference", (steps, rows, 4 * hidden), h.dtype)
        self.lstm_sequence(xw, w_hh, bias, h, c, gates, reverse, ws)

    def gru_input_sequence(self, x, w_ih, bias_ih, w_hh, bias_hh, h, gates, reverse=False, ws=None,
                           batch_first=False) -> None:
        """gru_sequence over xw = x @ w_ih^T + b_ih (``bias_ih`` (3H,) or None)."""
        steps, rows, hidden = check_input_sequence(self.name, "gru_input_sequence", x, w_ih, w_hh, h, gates, bias_hh,
                                                   bias_ih, batch_first=batch_first)
        xw = self._input_projection(self._time_major(x, "rnn_x_tm", batch_first, ws), w_ih, bias_ih, ws)
        if gates is None:
            gates = scratch(ws, self, "rnn_gates_inference", (steps, rows, 4 * hidden), h.dtype)
        self.gru_sequence(xw, w_hh, bias_hh, h, gates, reverse, ws)

    # Their backward with the weight gradients of the direction: dw_ih (G*H, I) = sum over steps
    # of the xw gradient^T x_t, dw_hh (G*H, H) = sum of the hw gradient^T h_prev, and the bias
    # sums, all overwritten (None for a bias: not wanted). The pre-activation gradients go to
    # ``dgates`` / ``dxw`` where given (the input gradient, dxw @ w_ih, needs them); without it a
    # backend may keep them to itself. ``batch_first``: x and dout (N, T, .), as the layer's
    # input and output gradient come.
    def lstm_input_sequence_backward(self, x, w_hh, gates, h, c, dout, offset, dw_ih, dw_hh, dbias, dgates=None,
                                     reverse=False, ws=None, batch_first=False) -> None:
        """dbias (4H,): the gradient of b_ih and of b_hh (the same). h and c as the forward left them."""
        steps, rows, hidden = check_sequence(self.name, "lstm_input_sequence_backward", w_hh, c,
                                             {1: [h[1:]], 4: [gates] + ([dgates] if dgates is not None else [])},
                                             dout=None if batch_first else dout, offset=offset)
        check_input_sequence_backward(self.name, "lstm_input_sequence_backward", x, w_hh, h, dw_ih, dw_hh, [dbias],
                                      dout, offset, batch_first)
        x = self._time_major(x, "rnn_x_tm", batch_first, ws)
        dout = self._time_major(dout, "rnn_dout_tm", batch_first, ws)
        if dgates is None:
            dgates = scratch(ws, self, "rnn_dgates", (steps, rows, 4 * hidden), h.dtype)
        self.lstm_sequence_backward(w_hh, gates, c, dout, offset, dgates, reverse, ws)
        self._weight_grads(x, h, dgates, dgates, dw_ih, dw_hh, None, dbias, reverse, ws)

    def gru_input_sequence_backward(self, x, w_hh, gates, h, dout, offset, dw_ih, dw_hh, dbias_ih, dbias_hh,
                                    dxw=None, reverse=False, ws=None, batch_first=False) -> None:
        """dbias_ih / dbias_hh (3H,): the gradients of b_ih and b_hh."""
        steps, rows, hidden = check_sequence(self.name, "gru_input_sequence_backward", w_hh, h,
                                             {4: [gates], 3: [dxw] if dxw is not None else []},
                                             dout=None if batch_first else dout, offset=offset)
        check_input_sequence_backward(self.name, "gru_input_sequence_backward", x, w_hh, h, dw_ih, dw_hh,
                                      [dbias_ih, dbias_hh], dout, offset, batch_first)
        x = self._time_major(x, "rnn_x_tm", batch_first, ws)
        dout = self._time_major(dout, "rnn_dout_tm", batch_first, ws)
        if dxw is None:
            dxw = scratch(ws, self, "rnn_dxw", (steps, rows, 3 * hidden), h.dtype)
        dhw = scratch(ws, self, "rnn_dhw", (steps, rows, 3 * hidden), h.dtype)
        self.gru_sequence_backward(w_hh, gates, h, dout, offset, dxw, dhw, reverse, ws)
        self._weight_grads(x, h, dxw, dhw, dw_ih, dw_hh, dbias_ih, dbias_hh, reverse, ws)

    def _weight_grads(self, x, h, dxw, dhw, dw_ih, dw_hh, dbias_ih, dbias_hh, reverse, ws):
        steps, rows, hidden = h.shape[0] - 1, h.shape[1], h.shape[2]
        flat = lambda a: self.reshape(a, (steps * rows, a.shape[2]))  # noqa: E731
        h_prev = h[1:] if reverse else h[:steps]
        self.gemm(flat(dxw), flat(x), dw_ih, trans_a=True, ws=ws)
        self.gemm(flat(dhw), flat(h_prev), dw_hh, trans_a=True, ws=ws)
        for grads, db in ((dxw, dbias_ih), (dhw, dbias_hh)):
            if db is not None:
                self.bias_grad(flat(grads), db, ws=ws)

    def _time_major(self, a, tag, batch_first, ws):
        """a (N, T, C) as a time-major (T, N, C) copy in the workspace where ``batch_first``, else a."""
        if not batch_first:
            return a
        tm = scratch(ws, self, tag, (a.shape[1], a.shape[0], a.shape[2]), a.dtype)
        self.swap_leading_axes(a, tm)
        return tm

    def _input_projection(self, x, w_ih, bias_ih, ws):
        """xw (T, N, G*H) = x @ w_ih^T (+ bias_ih), in the workspace."""
        steps, rows, features = x.shape
        xw = scratch(ws, self, "rnn_xw", (steps, rows, w_ih.shape[0]), x.dtype)
        xw2 = self.reshape(xw, (steps * rows, w_ih.shape[0]))
        self.gemm(self.reshape(x, (steps * rows, features)), w_ih, xw2, trans_b=True, ws=ws)
        if bias_ih is not None:
            self.add_bias(xw2, bias_ih)
        return xw

    def gru_sequence_backward(self, w_hh, gates, h, dout, offset, dxw, dhw, reverse=False, ws=None) -> None:
        """dout as for lstm_sequence_backward; dxw, dhw (T, N, 3H) receive every step's
        gru_cell_backward gradients of xw (and b_ih) and of hw + b_hh."""
        steps, rows, hidden = check_sequence(self.name, "gru_sequence_backward", w_hh, h,
                                             {3: [dxw, dhw], 4: [gates]}, dout=dout, offset=offset)
        dh = scratch(ws, self, "rnn_dh", (rows, hidden), h.dtype)
        for k, t, (prev, cur) in reversed(list(_sequence_steps(steps, reverse))):
            self.slice_channels(dout[t], dh, offset, accumulate=k < steps - 1)
            self.gru_cell_backward(gates[t], h[prev], dh, dxw[t], dhw[t], dh, ws=ws)
            if k > 0:  # adds to the direct path dh * z that the cell left in dh
                self.gemm(dhw[t], w_hh, dh, beta=1.0, ws=ws)

    # ---------------------------------------------------------- composition
    def copy_channels(self, src, dst, offset: int, accumulate=False) -> None:
        """dst[:, offset:offset+C_src] (+)= src (concatenate along axis 1)."""
        raise NotImplementedError(f"{self.name} backend copy_channels: not implemented")

    def slice_channels(self, src, dst, offset: int, accumulate=False) -> None:
        """dst (+)= src[:, offset:offset+C_dst] (split along axis 1)."""
        raise NotImplementedError(f"{self.name} backend slice_channels: not implemented")
