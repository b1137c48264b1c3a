"""Sequence ops: the launches of recurrent.cl (a mixin of the backend)."""

from __future__ import annotations

from .layout import I32, round_up


class RecurrentOps:
    """Axis swap, embedding gather/scatter and the fused recurrent cells."""

    def _cell_rows(self, op, hidden_arr):
        if hidden_arr.ndim != 2:
            raise ValueError(f"opencl {op}: (rows, hidden) blocks expected, got {hidden_arr.shape}")
        return hidden_arr.shape

    def _bias_ref(self, bias, fallback):
        """(buffer, offset, has_bias) of an optional bias (a valid dummy buffer where absent)."""
        return (*self._ref(bias), 1) if bias is not None else (*self._ref(fallback), 0)

    def swap_leading_axes(self, src, dst, accumulate=False):
        a_len, b_len = src.shape[0], src.shape[1]
        rest = src.size // max(1, a_len * b_len)
        if dst.shape[:2] != (b_len, a_len) or dst.size != src.size:
            raise ValueError(f"opencl swap_leading_axes: {src.shape} into {dst.shape}")
        if src.size == 0:
            return
        local = min(64, round_up(rest, 8))
        self._kernel("recurrent.cl", "swap_leading_axes")(
            self.queue, (round_up(rest, local), b_len, a_len), (local, 1, 1), rest, *self._ref(src),
            *self._ref(dst), a_len, b_len, int(accumulate))

    def _check_embedding(self, op, indices, table, rows_arr):
        if indices.dtype != I32 or indices.ndim != 1 or rows_arr.shape != (indices.size, table.shape[1]):
            raise ValueError(f"opencl {op}: int32 indices (M,) and rows (M, {table.shape[1]}) expected, "
                             f"got {indices.dtype}{indices.shape} and {rows_arr.shape}")

    def embedding(self, indices, weight, out):
        self._check_embedding("embedding", indices, weight, out)
        self._launch_rows("recurrent.cl", "embedding_gather", weight.shape[1], (indices.size,),
                          *self._ref(indices), *self._ref(weight), *self._ref(out))

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None):
        self._check_embedding("embedding_backward", indices, dweight, dy)
        vocab, dim = dweight.shape
        self._launch_flat("recurrent.cl", "embedding_scatter", dim, *self._ref(indices), *self._ref(dy),
                          *self._ref(dweight), indices.size, vocab,
                          -1 if padding_idx is None else int(padding_idx), int(accumulate))

    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        rows, hidden = self._cell_rows("rnn_cell", h)
        self._check_same("rnn_cell", xw, hw, h)
        self._launch_rows("recurrent.cl", "rnn_cell", hidden, (rows,), *self._ref(xw), *self._ref(hw),
                          *self._bias_ref(bias_hh, xw), *self._ref(h), int(nonlinearity == "relu"))

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None):
        rows, hidden = self._cell_rows("lstm_cell", c)
        self._check_same("lstm_cell", xw, hw, gates)
        self._check_same("lstm_cell", c_prev, c, h)
        self._launch_rows("recurrent.cl", "lstm_cell", hidden, (rows,), *self._ref(xw), *self._ref(hw),
                          *self._bias_ref(bias_hh, xw), *self._ref(c_prev), *self._ref(gates),
                          *self._ref(c), *self._ref(h))

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None):
        rows, hidden = self._cell_rows("lstm_cell_backward", c)
        self._check_same("lstm_cell_backward", gates, dgates)
        self._check_same("lstm_cell_backward", c_prev, c, dh, dc, dc_prev)
        self._launch_rows("recurrent.cl", "lstm_cell_bwd", hidden, (rows,), *self._ref(gates),
                          *self._ref(c_prev), *self._ref(c), *self._ref(dh), *self._ref(dc),
                          *self._ref(dgates), *self._ref(dc_prev))

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None):
        rows, hidden = self._cell_rows("gru_cell", h)
        self._check_same("gru_cell", xw, hw)
        self._check_same("gru_cell", h_prev, h)
        if gates.size != rows * 4 * hidden:
            raise ValueError(f"opencl gru_cell: gates must be ({rows}, {4 * hidden}), got {gates.shape}")
        self._launch_rows("recurrent.cl", "gru_cell", hidden, (rows,), *self._ref(xw), *self._ref(hw),
                          *self._bias_ref(bias_hh, xw), *self._ref(h_prev), *self._ref(gates), *self._ref(h))

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None):
        rows, hidden = self._cell_rows("gru_cell_backward", h_prev)
        self._check_same("gru_cell_backward", dxw, dhw)
        self._check_same("gru_cell_backward", h_prev, dh, dh_prev)
        self._launch_rows("recurrent.cl", "gru_cell_bwd", hidden, (rows,), *self._ref(gates),
                          *self._ref(h_prev), *self._ref(dh), *self._ref(dxw), *self._ref(dhw),
                          *self._ref(dh_prev))


__all__ = ["RecurrentOps"]
