"""Sequence ops: the launches of recurrent.cl (a mixin of the backend)."""

from __future__ import annotations

from ..base import (_sequence_steps, check_cell, check_embedding, check_input_sequence, check_nonlinearity,
                    check_sequence, check_swap, scratch)
from .layout import F32, round_up

FUSED_UNITS = 16     # hidden units a fused step's work-group owns: H must be a multiple
FUSED_GROUPS = 16    # work-groups a fused step aims for at least, rows split where units alone give fewer


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

    # ------------------------------------------------------- fused sequences
    # One kernel per time step (see "fused sequence steps" in recurrent.cl) on CPU drivers
    # where H is a multiple of FUSED_UNITS; elsewhere base.py's GEMM-and-cell composition.
    def _fused_sequence(self, rows, hidden) -> bool:
        return self.gemm_variant == "packed" and hidden % FUSED_UNITS == 0 and rows > 0 and hidden > 0

    @staticmethod
    def _rows_per_group(rows, unit_groups, mr):
        """Rows per work-group (a multiple of the micro-kernel's ``mr``): all of them unless the
        unit blocks alone give fewer than FUSED_GROUPS work-groups."""
        splits = max(1, min(-(-rows // mr), -(-FUSED_GROUPS // unit_groups)))
        return round_up(-(-rows // splits), mr)

    def _pack_forward(self, w_hh, gate_blocks, hidden, ws, w_ih=None):
        """W_hh's gate columns per unit block, each panel followed by W_ih's where given."""
        features = 0 if w_ih is None else w_ih.shape[1]
        rows = hidden + features
        wp = scratch(ws, self, "rnn_fused_wp", (gate_blocks * hidden * rows,), F32)
        for w, k, off in ((w_hh, hidden, 0), (w_ih, features, hidden)):
            if w is not None:
                local = min(64, round_up(k, 8))
                self._kernel("recurrent.cl", "pack_gate_columns")(
                    self.queue, (round_up(k, local), FUSED_UNITS, gate_blocks * hidden // FUSED_UNITS), (local, 1, 1),
                    hidden, gate_blocks, k, off, rows, *self._ref(w), *self._ref(wp))
        return wp

    def _pack_backward(self, w_hh, gate_blocks, hidden, ws):
        wb = scratch(ws, self, "rnn_fused_wb", (gate_blocks * hidden * hidden,), F32)
        self._kernel("recurrent.cl", "pack_unit_rows")(
            self.queue, (FUSED_UNITS, gate_blocks * hidden, hidden // FUSED_UNITS), (FUSED_UNITS, 1, 1), hidden,
            gate_blocks * hidden, *self._ref(w_hh), *self._ref(wb))
        return wb

    @staticmethod
    def _at(a, index):
        """(buffer, element offset) of a[index] without making the view."""
        step = a.size // a.shape[0]
        return a.base_data, a.offset // a.dtype.itemsize + index * step

    def _fused_grid(self, rows, hidden):
        """(rows per work-group, grid) of a fused step."""
        rows_wg = self._rows_per_group(rows, hidden // FUSED_UNITS, 6)
        return rows_wg, (hidden // FUSED_UNITS, -(-rows // rows_wg))

    def _fused_backward(self, name, gate_blocks, w_hh, dout, offset, reverse, ws, carry_tag, step_args):
        """Every step of a fused backward, the latest first. ``step_args(t, t_next, prev, cur,
        carry)``: the kernel's operands before dout's and after them, ``carry`` the (N, H)
        gradient handed from step to step (t_next is t itself at the latest step)."""
        steps, rows, hidden = dout.shape[0], dout.shape[1], w_hh.shape[1]
        wb = self._pack_backward(w_hh, gate_blocks, hidden, ws)
        carry = scratch(ws, self, carry_tag, (rows, hidden), F32)
        rows_wg, grid = self._fused_grid(rows, hidden)
        kernel = self._kernel("recurrent.cl", name)
        t_next = None
        for _, t, (prev, cur) in reversed(list(_sequence_steps(steps, reverse))):
            d_buf, d_off = self._at(dout, t)
            before, after = step_args(t, t if t_next is None else t_next, prev, cur, carry)
            kernel(self.queue, grid, (1, 1), hidden, rows, rows_wg, int(t_next is not None), *self._ref(wb), *before,
                   d_buf, d_off + offset, dout.shape[2], *after)
            t_next = t

    def _fused_forward(self, name, gate_blocks, w_hh, h, reverse, ws, xw=None, x=None, w_ih=None,
                       batch_first=False, bias=None, gates=None, cell_args=lambda prev, cur: (), extra=()):
        """Every step of a fused forward: from the projections ``xw`` (T, N, G*H), or from the
        inputs ``x`` times ``w_ih`` inside the steps; ``gates`` None: kept nowhere."""
        steps, rows, hidden = h.shape[0] - 1, h.shape[1], h.shape[2]
        wp = self._pack_forward(w_hh, gate_blocks, hidden, ws, w_ih)
        rows_wg, grid = self._fused_grid(rows, hidden)
        kernel = self._kernel("recurrent.cl", name)
        if x is not None:
            features = x.shape[2]
            # x_t's rows: (N, T, I) or (T, N, I)
            x_step, ldx = (features, steps * features) if batch_first else (rows * features, features)
            x_buf, x_off = self._ref(x)
        else:
            features, x_step, ldx, (x_buf, x_off) = 0, 0, 0, self._ref(xw)
        dummy = xw if xw is not None else x
        bias = self._bias_ref(bias, dummy)
        kept = self._ref(gates) if gates is not None else self._ref(h)
        for k, t, (prev, cur) in _sequence_steps(steps, reverse):
            xw_ref = self._at(xw, t) if xw is not None else self._ref(x)
            g_ref = self._at(gates, t) if gates is not None else kept
            kernel(self.queue, grid, (1, 1), hidden, rows, rows_wg, int(k == 0), *self._ref(wp), features,
                   x_buf, x_off + t * x_step, ldx, *xw_ref, int(xw is not None), *bias, *g_ref, int(gates is not None),
                   *self._at(h, prev), *self._at(h, cur), *cell_args(prev, cur), *extra)

    def lstm_sequence(self, xw, w_hh, bias_hh, h, c, gates, reverse=False, ws=None):
        steps, rows, hidden = check_sequence(self.name, "lstm_sequence", w_hh, h, {1: [c[1:]], 4: [xw, gates]},
                                             bias_hh)
        if not self._fused_sequence(rows, hidden):
            return super().lstm_sequence(xw, w_hh, bias_hh, h, c, gates, reverse, ws)
        self._fused_forward("lstm_seq_step", 4, w_hh, h, reverse, ws, xw=xw, bias=bias_hh, gates=gates,
                            cell_args=lambda prev, cur: (*self._at(c, prev), *self._at(c, cur)))

    def lstm_input_sequence(self, x, w_ih, w_hh, bias, h, c, gates, reverse=False, ws=None, batch_first=False):
        steps, rows, hidden = check_input_sequence(self.name, "lstm_input_sequence", x, w_ih, w_hh, h, gates, bias,
                                                   c=c, lstm=True, batch_first=batch_first)
        if not self._fused_sequence(rows, hidden):
            return super().lstm_input_sequence(x, w_ih, w_hh, bias, h, c, gates, reverse, ws, batch_first)
        if c is None:  # inference: the cell state of the step before and of this one, in turn
            pair = scratch(ws, self, "rnn_c_pair", (2, rows, hidden), F32)
            cell_args = lambda prev, cur: (*self._at(pair, prev % 2), *self._at(pair, cur % 2))  # noqa: E731
        else:
            cell_args = lambda prev, cur: (*self._at(c, prev), *self._at(c, cur))  # noqa: E731
        self._fused_forward("lstm_seq_step", 4, w_hh, h, reverse, ws, x=x, w_ih=w_ih, batch_first=batch_first,
                            bias=bias, gates=gates, cell_args=cell_args)

    def lstm_sequence_backward(self, w_hh, gates, c, dout, offset, dgates, reverse=False, ws=None):
        steps, rows, hidden = check_sequence(self.name, "lstm_sequence_backward", w_hh, c, {4: [gates, dgates]},
                                             dout=dout, offset=offset)
        if not self._fused_sequence(rows, hidden):
            return super().lstm_sequence_backward(w_hh, gates, c, dout, offset, dgates, reverse, ws)
        self._fused_backward("lstm_seq_bwd_step", 4, w_hh, dout, offset, reverse, ws, "rnn_dc",
                             lambda t, nt, prev, cur, dc: (
                                 self._at(dgates, nt), (*self._at(gates, t), *self._at(c, prev), *self._at(c, cur),
                                                        *self._ref(dc), *self._at(dgates, t))))

    def gru_sequence(self, xw, w_hh, bias_hh, h, gates, reverse=False, ws=None):
        steps, rows, hidden = check_sequence(self.name, "gru_sequence", w_hh, h, {3: [xw], 4: [gates]}, bias_hh)
        if not self._fused_sequence(rows, hidden):
            return super().gru_sequence(xw, w_hh, bias_hh, h, gates, reverse, ws)
        self._fused_forward("gru_seq_step", 3, w_hh, h, reverse, ws, xw=xw, bias=bias_hh, gates=gates,
                            extra=self._bias_ref(None, xw))

    def gru_input_sequence(self, x, w_ih, bias_ih, w_hh, bias_hh, h, gates, reverse=False, ws=None,
                           batch_first=False):
        steps, rows, hidden = check_input_sequence(self.name, "gru_input_sequence", x, w_ih, w_hh, h, gates, bias_hh,
                                                   bias_ih, batch_first=batch_first)
        if not self._fused_sequence(rows, hidden):
            return super().gru_input_sequence(x, w_ih, bias_ih, w_hh, bias_hh, h, gates, reverse, ws, batch_first)
        self._fused_forward("gru_seq_step", 3, w_hh, h, reverse, ws, x=x, w_ih=w_ih, batch_first=batch_first,
                            bias=bias_hh, gates=gates, extra=self._bias_ref(bias_ih, x))

    def gru_sequence_backward(self, w_hh, gates, h, dout, offset, dxw, dhw, reverse=False, ws=None):
        steps, rows, hidden = check_sequence(self.name, "gru_sequence_backward", w_hh, h,
                                             {3: [dxw, dhw], 4: [gates]}, dout=dout, offset=offset)
        if not self._fused_sequence(rows, hidden):
            return super().gru_sequence_backward(w_hh, gates, h, dout, offset, dxw, dhw, reverse, ws)
        self._fused_backward("gru_seq_bwd_step", 3, w_hh, dout, offset, reverse, ws, "rnn_dh",
                             lambda t, nt, prev, cur, dh: (
                                 (*self._at(dhw, nt), *self._at(gates, nt)),
                                 (*self._at(gates, t), *self._at(h, prev), *self._ref(dh), *self._at(dxw, t),
                                  *self._at(dhw, t))))
