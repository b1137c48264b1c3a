"""Sequence ops: the launches of recurrent.cl (a mixin of the backend)."""

from __future__ import annotations

from ..base import check_cell, check_embedding, check_nonlinearity, check_swap
from .layout import round_up


class RecurrentOps:
    """Axis swap, embedding gather/scatter and the fused recurrent cells."""

    def _bias_ref(self, bias, fallback):
        """(buffer, offset, has_bias) of an optional bias (a valid dummy buffer where absent)."""
        return (*self._ref(bias), 1) if bias is not None else (*self._ref(fallback), 0)

    def swap_leading_axes(self, src, dst, accumulate=False):
        check_swap(self.name, src, dst)
        a_len, b_len = src.shape[0], src.shape[1]
        rest = src.size // max(1, a_len * b_len)
        if src.size == 0:
            return
        local = min(64, round_up(rest, 8))
        self._kernel("recurrent.cl", "swap_leading_axes")(
            self.queue, (round_up(rest, local), b_len, a_len), (local, 1, 1), rest, *self._ref(src),
            *self._ref(dst), a_len, b_len, int(accumulate))

    def embedding(self, indices, weight, out):
        check_embedding(self.name, "embedding", indices, weight, out)
        self._launch_rows("recurrent.cl", "embedding_gather", weight.shape[1], (indices.size,),
                          *self._ref(indices), *self._ref(weight), *self._ref(out))

    def embedding_backward(self, indices, dy, dweight, padding_idx=None, accumulate=False, ws=None):
        check_embedding(self.name, "embedding_backward", indices, dweight, dy)
        vocab, dim = dweight.shape
        self._launch_flat("recurrent.cl", "embedding_scatter", dim, *self._ref(indices), *self._ref(dy),
                          *self._ref(dweight), indices.size, vocab,
                          -1 if padding_idx is None else int(padding_idx), int(accumulate))

    def _cell_launch(self, name, state, *args):
        rows, hidden = state.shape
        self._launch_rows("recurrent.cl", name, hidden, (rows,), *args)

    def rnn_cell(self, xw, hw, bias_hh, h, nonlinearity):
        check_nonlinearity(self.name, nonlinearity)
        check_cell(self.name, "rnn_cell", h, {1: [xw, hw, h]}, bias_hh, 1)
        self._cell_launch("rnn_cell", h, *self._ref(xw), *self._ref(hw), *self._bias_ref(bias_hh, xw),
                          *self._ref(h), int(nonlinearity == "relu"))

    def lstm_cell(self, xw, hw, bias_hh, c_prev, gates, c, h, ws=None):
        check_cell(self.name, "lstm_cell", c, {1: [c_prev, c, h], 4: [xw, hw, gates]}, bias_hh, 4)
        self._cell_launch("lstm_cell", c, *self._ref(xw), *self._ref(hw), *self._bias_ref(bias_hh, xw),
                          *self._ref(c_prev), *self._ref(gates), *self._ref(c), *self._ref(h))

    def lstm_cell_backward(self, gates, c_prev, c, dh, dc, dgates, dc_prev, ws=None):
        check_cell(self.name, "lstm_cell_backward", c, {1: [c_prev, c, dh, dc, dc_prev], 4: [gates, dgates]})
        self._cell_launch("lstm_cell_bwd", c, *self._ref(gates), *self._ref(c_prev), *self._ref(c), *self._ref(dh),
                          *self._ref(dc), *self._ref(dgates), *self._ref(dc_prev))

    def gru_cell(self, xw, hw, bias_hh, h_prev, gates, h, ws=None):
        check_cell(self.name, "gru_cell", h, {1: [h_prev, h], 3: [xw, hw], 4: [gates]}, bias_hh, 3)
        self._cell_launch("gru_cell", h, *self._ref(xw), *self._ref(hw), *self._bias_ref(bias_hh, xw),
                          *self._ref(h_prev), *self._ref(gates), *self._ref(h))

    def gru_cell_backward(self, gates, h_prev, dh, dxw, dhw, dh_prev, ws=None):
        check_cell(self.name, "gru_cell_backward", h_prev, {1: [h_prev, dh, dh_prev], 3: [dxw, dhw], 4: [gates]})
        self._cell_launch("gru_cell_bwd", h_prev, *self._ref(gates), *self._ref(h_prev), *self._ref(dh),
                          *self._ref(dxw), *self._ref(dhw), *self._ref(dh_prev))
