"""Sequence ops of the NumPy backend: axis swaps, embedding lookup/scatter and the fused
recurrent cells (see the contract in backends/base.py). Every op writes into its out
arrays; temporaries come from the caller's workspace.

The cells run as one C call (_rnn_kernels.c) where that extension was built and every operand
is C-contiguous (always so for the layers' per-step blocks); otherwise as the NumPy ufunc passes
below, which are also the ``kernels="numpy"`` fallback."""

from __future__ import annotations

import numpy as np

from ..base import scratch
from .threads import num_threads


def swap_leading_axes(backend, src, dst, accumulate):
    view = np.swapaxes(src, 0, 1)
    if accumulate:
        dst += view
    else:
        np.copyto(dst, view)


def embedding(backend, indices, weight, out):
    np.take(weight, indices, axis=0, out=out)


def embedding_backward(backend, indices, dy, dweight, padding_idx, accumulate, ws):
    if padding_idx is not None and accumulate:
        kept = scratch(ws, backend, "embedding_padding_row", (dweight.shape[1],), dweight.dtype)
        np.copyto(kept, dweight[padding_idx])
    if not accumulate:
        dweight.fill(0.0)
    np.add.at(dweight, indices, dy)
    if padding_idx is not None:
        if accumulate:
            np.copyto(dweight[padding_idx], kept)
        else:
            dweight[padding_idx] = 0.0


def _sigmoid_inplace(a):
    a *= 0.5
    np.tanh(a, out=a)
    a += 1.0
    a *= 0.5


def _preactivation(xw, hw, bias_hh, out):
    np.add(xw, hw, out=out)
    if bias_hh is not None:
        out += bias_hh


def _fused(backend, *arrays):
    """The C cells, where built and every operand (None aside) is C-contiguous; else None."""
    k = backend.rnn_kernels
    if k is None:
        return None
    for a in arrays:
        if a is not None and not a.flags.c_contiguous:
            return None
    return k


def rnn_cell(backend, xw, hw, bias_hh, h, nonlinearity):
    k = _fused(backend, xw, hw, bias_hh, h)
    if k is not None:
        k.rnn_cell(xw, hw, bias_hh, h, h.shape[0], h.shape[1], nonlinearity == "relu")
        return
    _preactivation(xw, hw, bias_hh, h)
    if nonlinearity == "tanh":
        np.tanh(h, out=h)
    else:
        np.maximum(h, 0, out=h)


def lstm_cell(backend, xw, hw, bias_hh, c_prev, gates, c, h, ws):
    k = _fused(backend, xw, hw, bias_hh, c_prev, gates, c, h)
    if k is not None:
        k.lstm_cell(xw, hw, bias_hh, c_prev, gates, c, h, c.shape[0], c.shape[1])
        return
    hidden = c.shape[1]
    _preactivation(xw, hw, bias_hh, gates)
    # sigmoid(a) = 0.5 + 0.5 * tanh(a / 2) on i, f, o and tanh(a) on g: one tanh pass over all
    half = _gate_constants(ws, backend, gates.dtype, hidden)
    gates *= half[0]
    np.tanh(gates, out=gates)
    gates *= half[0]
    gates += half[1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    np.multiply(f, c_prev, out=c)
    tmp = scratch(ws, backend, "lstm_tmp", c.shape, c.dtype)
    np.multiply(i, g, out=tmp)
    c += tmp
    np.tanh(c, out=h)
    h *= o


def _gate_constants(ws, backend, dtype, hidden):
    """(scale, shift) rows: tanh(a * scale) * scale + shift is sigmoid on i, f, o and tanh on g."""
    def init(buf):
        buf[...] = 0.5
        buf[0, 2 * hidden:3 * hidden] = 1.0
        buf[1, 2 * hidden:3 * hidden] = 0.0
    return scratch(ws, backend, "lstm_gate_constants", (2, 4 * hidden), dtype, init)


def lstm_cell_backward(backend, gates, c_prev, c, dh, dc, dgates, dc_prev, ws):
    k = _fused(backend, gates, c_prev, c, dh, dc, dgates, dc_prev)
    if k is not None:
        k.lstm_cell_backward(gates, c_prev, c, dh, dc, dgates, dc_prev, c.shape[0], c.shape[1])
        return
    hidden = c.shape[1]
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    di, df, dg, do = (dgates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    tc = scratch(ws, backend, "lstm_tanh_c", c.shape, c.dtype)
    dct = scratch(ws, backend, "lstm_dc_total", c.shape, c.dtype)
    tmp = scratch(ws, backend, "lstm_tmp", c.shape, c.dtype)
    np.tanh(c, out=tc)
    np.multiply(dh, tc, out=do)            # d(o)
    _times_sigmoid_slope(do, o, tmp)
    np.multiply(tc, tc, out=tmp)           # dc_total = dc + dh * o * (1 - tanh(c)^2)
    np.subtract(1.0, tmp, out=tmp)
    tmp *= o
    tmp *= dh
    np.add(dc, tmp, out=dct)
    np.multiply(dct, g, out=di)
    _times_sigmoid_slope(di, i, tmp)
    np.multiply(dct, c_prev, out=df)
    _times_sigmoid_slope(df, f, tmp)
    np.multiply(g, g, out=tmp)
    np.subtract(1.0, tmp, out=tmp)
    np.multiply(dct, i, out=dg)
    dg *= tmp
    np.multiply(dct, f, out=dc_prev)


def _times_sigmoid_slope(d, s, tmp):
    """d *= s * (1 - s)."""
    np.subtract(1.0, s, out=tmp)
    tmp *= s
    d *= tmp


def gru_cell(backend, xw, hw, bias_hh, h_prev, gates, h, ws):
    k = _fused(backend, xw, hw, bias_hh, h_prev, gates, h)
    if k is not None:
        k.gru_cell(xw, hw, bias_hh, h_prev, gates, h, h.shape[0], h.shape[1])
        return
    hidden = h.shape[1]
    rz, n, hn = gates[:, :2 * hidden], gates[:, 2 * hidden:3 * hidden], gates[:, 3 * hidden:]
    np.add(xw[:, :2 * hidden], hw[:, :2 * hidden], out=rz)
    np.copyto(hn, hw[:, 2 * hidden:])
    if bias_hh is not None:
        rz += bias_hh[:2 * hidden]
        hn += bias_hh[2 * hidden:]
    _sigmoid_inplace(rz)
    r, z = rz[:, :hidden], rz[:, hidden:]
    np.multiply(r, hn, out=n)
    n += xw[:, 2 * hidden:]
    np.tanh(n, out=n)
    tmp = scratch(ws, backend, "gru_tmp", h.shape, h.dtype)
    np.subtract(1.0, z, out=tmp)           # torch: (1 - z) * n + z * h_prev
    np.multiply(tmp, n, out=h)
    np.multiply(z, h_prev, out=tmp)
    h += tmp


def gru_cell_backward(backend, gates, h_prev, dh, dxw, dhw, dh_prev, ws):
    k = _fused(backend, gates, h_prev, dh, dxw, dhw, dh_prev)
    if k is not None:
        k.gru_cell_backward(gates, h_prev, dh, dxw, dhw, dh_prev, h_prev.shape[0], h_prev.shape[1])
        return
    hidden = h_prev.shape[1]
    r, z, n, hn = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dr, dz, dn = (dxw[:, k * hidden:(k + 1) * hidden] for k in range(3))
    tmp = scratch(ws, backend, "gru_tmp", h_prev.shape, h_prev.dtype)
    np.subtract(1.0, z, out=dn)            # dn_pre = dh * (1 - z) * (1 - n^2)
    dn *= dh
    np.multiply(n, n, out=tmp)
    np.subtract(1.0, tmp, out=tmp)
    dn *= tmp
    np.subtract(h_prev, n, out=dz)         # dz_pre = dh * (h_prev - n) * z * (1 - z)
    dz *= dh
    _times_sigmoid_slope(dz, z, tmp)
    np.multiply(dn, hn, out=dr)            # dr_pre = dn_pre * hn * r * (1 - r)
    _times_sigmoid_slope(dr, r, tmp)
    np.copyto(dhw[:, :2 * hidden], dxw[:, :2 * hidden])
    np.multiply(dn, r, out=dhw[:, 2 * hidden:])
    np.multiply(dh, z, out=dh_prev)


def _sequence_kernels(backend, *arrays):
    """The C kernels where the whole recurrence can run there: float32 (the kernels' GEMM is
    single precision) and every operand C-contiguous; else None."""
    k = _fused(backend, *arrays)
    if k is None or any(a is not None and a.dtype != np.float32 for a in arrays):
        return None
    return k


def sequence(backend, gru, xw, w_hh, bias_hh, h, c, gates, reverse, ws):
    """All steps of one LSTM/GRU direction in one C call; False where it cannot run there."""
    k = _sequence_kernels(backend, xw, w_hh, bias_hh, h, c, gates)
    if k is None:
        return False
    steps, rows, hidden = h.shape[0] - 1, h.shape[1], h.shape[2]
    threads = num_threads()
    buf = scratch(ws, backend, "rnn_sequence", (k.sequence_scratch(gru, False, rows, hidden, 0, threads),), np.float32)
    k.sequence(gru, xw, None, None, w_hh, bias_hh, None, h, c, gates, steps, rows, hidden, 0, reverse, False, threads,
               buf)
    return True


def input_sequence(backend, gru, x, w_ih, bias_ih, w_hh, bias_hh, h, c, gates, reverse, batch_first, ws):
    """``sequence`` from the inputs x themselves: each thread multiplies x_t by its units' rows of
    W_ih inside the step, beside h_{t-1} by W_hh, so all steps' projections never go to memory;
    without gates (inference) only h is written. False where it cannot run there."""
    k = _sequence_kernels(backend, x, w_ih, bias_ih, w_hh, bias_hh, h, c, gates)
    if k is None:
        return False
    steps, rows, hidden, features = h.shape[0] - 1, h.shape[1], h.shape[2], x.shape[2]
    threads = num_threads()
    buf = scratch(ws, backend, "rnn_input_sequence",
                  (k.sequence_scratch(gru, False, rows, hidden, features, threads),), np.float32)
    k.sequence(gru, None, x, w_ih, w_hh, bias_hh, bias_ih, h, c, gates, steps, rows, hidden, features, reverse,
               batch_first, threads, buf)
    return True


def sequence_backward(backend, gru, w_hh, gates, states, dout, offset, dx, dhw, reverse, ws):
    """The backward of ``sequence`` in one C call; False where it cannot run there."""
    k = _sequence_kernels(backend, w_hh, gates, states, dout, dx, dhw)
    if k is None:
        return False
    steps, rows, hidden = states.shape[0] - 1, states.shape[1], states.shape[2]
    threads = num_threads()
    buf = scratch(ws, backend, "rnn_sequence_backward",
                  (k.sequence_scratch(gru, True, rows, hidden, 0, threads),), np.float32)
    h, c = (states, None) if gru else (None, states)
    k.sequence_backward(gru, w_hh, gates, h, c, dout, dout.shape[2], offset, dx, dhw, None, None, None, None, None,
                        steps, rows, hidden, 0, reverse, False, threads, buf)
    return True


def input_sequence_backward(backend, gru, x, w_hh, gates, h, c, dout, offset, dw_ih, dw_hh, dbias, dbias_ih, dx,
                            reverse, batch_first, ws):
    """``sequence_backward`` that also makes the weight and bias gradients: each thread adds its
    gate rows' share of every step (dgates^T [h_prev | x_t]) while that step's dgates are in its
    cache, so the pre-activation gradients go to memory only where ``dx`` asks for them. False
    where it cannot run there."""
    k = _sequence_kernels(backend, x, w_hh, gates, h, c, dout, dw_ih, dw_hh, dbias, dbias_ih, dx)
    if k is None:
        return False
    steps, rows, hidden, features = h.shape[0] - 1, h.shape[1], h.shape[2], x.shape[2]
    threads = num_threads()
    buf = scratch(ws, backend, "rnn_input_sequence_backward",
                  (k.sequence_scratch(gru, True, rows, hidden, features, threads),), np.float32)
    k.sequence_backward(gru, w_hh, gates, h, c, dout, dout.shape[2], offset, dx, None, x, dw_ih, dw_hh, dbias,
                        dbias_ih, steps, rows, hidden, features, reverse, batch_first, threads, buf)
    return True
