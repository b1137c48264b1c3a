"""Recurrent layers (RNN, LSTM, GRU) with PyTorch's parameters, and heads over time steps.

Input unit shape (seq_len, features), output (seq_len, D * hidden_size) with D = 2 when
bidirectional: batch first, as every juicepy unit. Params are named and shaped exactly as
torch.nn.RNN/LSTM/GRU's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
``..._reverse``), so a torch state_dict loads as is under the layer's path.

Inside, every per-step array is time-major, (T, N, ...), so each step is a contiguous block.
The RNN runs the input projections of all steps as one GEMM, then one GEMM with W_hh and one
fused cell op per step; the LSTM and GRU hand a whole direction, projections included, to one
backend op (``lstm_input_sequence`` / ``gru_input_sequence``). In training the states and gates
of every step stay in the Context for backpropagation through time (an inference context keeps
only the states); the gradients of W_ih, W_hh and the biases are one GEMM each over all steps.

State buffers run along time: for the forward direction the state entering step t is h[t]
and the state it makes h[t + 1]; the reverse direction enters step t from h[t + 1] and
writes h[t]. Initial states are zero.
"""

from __future__ import annotations

from .. import arguments
from .. import init as initializers
from ..backends.base import scratch
from ..backends.rng import stream_key
from ..errors import ShapeError
from ..net.params import LearnableParams
from .base import Layer


class _Recurrent(Layer):
    #: row blocks of W_ih / W_hh (torch's gate count)
    gate_blocks = 1
    #: column blocks of the kept per-step gates (0: the states are all the backward needs)
    kept_gates = 0
    #: whether one backend op runs a whole direction from the layer's input (the LSTM's and
    #: GRU's ``*_input_sequence``), making the input projections itself
    projects_inputs = False

    def __init__(self, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, input_size: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.hidden_size = arguments.integer(name, "hidden_size", hidden_size, 1)
        self.num_layers = arguments.integer(name, "num_layers", num_layers, 1)
        self.bias = arguments.flag(name, "bias", bias)
        self.bidirectional = arguments.flag(name, "bidirectional", bidirectional)
        self.dropout = arguments.number(name, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.input_size = arguments.optional_integer(name, "input_size", input_size, 1)
        self.directions = 2 if self.bidirectional else 1
        self._params: dict[str, LearnableParams] = {}
        self.seq_len = None

    # ------------------------------------------------------------ building
    def infer_shape(self, unit_shape, path):
        name = type(self).__name__
        if len(unit_shape) != 2:
            raise ShapeError(f"{path}: {name} expects unit shape (seq_len, features), got {tuple(unit_shape)}")
        if self.input_size is not None and self.input_size != unit_shape[1]:
            raise ShapeError(f"{path}: {name} expects unit shape (seq_len, {self.input_size}), got {tuple(unit_shape)}")
        return (unit_shape[0], self.directions * self.hidden_size)

    def create_params(self, input_shapes, graph):
        self.seq_len, features = input_shapes[0]
        self.input_size = features
        hidden, rows = self.hidden_size, self.gate_blocks * self.hidden_size
        params = {}
        for layer in range(self.num_layers):
            fan_in = features if layer == 0 else self.directions * hidden
            for d in range(self.directions):
                suffix = self._suffix(layer, d)
                shapes = {"weight_ih": (rows, fan_in), "weight_hh": (rows, hidden)}
                if self.bias:
                    shapes.update(bias_ih=(rows,), bias_hh=(rows,))
                for kind, shape in shapes.items():
                    # torch: every param U(-1/sqrt(hidden), 1/sqrt(hidden))
                    params[kind + suffix] = LearnableParams(initializers.make(
                        initializers.torch_default, graph.rng, shape, hidden, rows, graph.dtype))
        self._params = params

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def params(self):
        return dict(self._params)

    def _weights(self, layer, d):
        s = self._suffix(layer, d)
        p = self._params
        return (p["weight_ih" + s], p["weight_hh" + s], p.get("bias_ih" + s), p.get("bias_hh" + s))

    def _in_features(self, layer):
        return self.input_size if layer == 0 else self.directions * self.hidden_size

    def _drops_after(self, ctx, layer) -> bool:
        return ctx.training and self.dropout > 0.0 and layer < self.num_layers - 1

    @property
    def _batch_first(self) -> bool:
        """Whether the one layer's op reads the input and the output gradient as they come,
        (N, T, .), so that neither is copied time-major."""
        return self.projects_inputs and self.num_layers == 1

    def setup(self, backend, ctx):
        n, t, hid = ctx.batch_size, self.seq_len, self.hidden_size
        if not self._batch_first:
            ctx.make_buffer("x_tm", (t, n, self.input_size))
        for layer in range(self.num_layers):
            for d in range(self.directions):
                if not self.projects_inputs:
                    ctx.make_buffer(f"xw{layer}.{d}", (t, n, self.gate_blocks * hid))
                ctx.make_buffer(f"h{layer}.{d}", (t + 1, n, hid))
                if self.kept_gates and ctx.training:  # without a backward the op keeps no gates
                    ctx.make_buffer(f"gates{layer}.{d}", (t, n, self.kept_gates * hid))
                    self._setup_cell(ctx, layer, d)
            if self.directions == 2:
                ctx.make_buffer(f"out{layer}", (t, n, 2 * hid))
            if self._drops_after(ctx, layer):
                ctx.make_buffer(f"dropped{layer}", (t, n, self.directions * hid))
                ctx.make_buffer(f"mask{layer}", (t, n, self.directions * hid))

    def _setup_cell(self, ctx, layer, d) -> None:
        """Extra per-direction buffers that a cell type's backward needs (the LSTM's cell states)."""

    # ------------------------------------------------------------ forward
    def _layer_output(self, ctx, layer):
        """The time-major (T, N, D*H) output of one stacked layer."""
        if self.directions == 2:
            return ctx.buffer(f"out{layer}")
        return ctx.buffer(f"h{layer}.0")[1:]

    def _layer_input(self, ctx, layer):
        if layer == 0:
            return ctx.input() if self._batch_first else ctx.buffer("x_tm")
        if self._drops_after(ctx, layer - 1):
            return ctx.buffer(f"dropped{layer - 1}")
        return self._layer_output(ctx, layer - 1)

    @staticmethod
    def _steps(t_len, d):
        """(step index, time, previous state index, new state index) in processing order."""
        for k in range(t_len):
            t = k if d == 0 else t_len - 1 - k
            yield k, t, (t, t + 1) if d == 0 else (t + 1, t)

    def compute_output(self, backend, ctx):
        if not self._batch_first:
            backend.swap_leading_axes(ctx.input(), ctx.buffer("x_tm"))
        for layer in range(self.num_layers):
            x = self._layer_input(ctx, layer)
            for d in range(self.directions):
                self._forward_direction(backend, ctx, layer, d, x)
            if self._drops_after(ctx, layer):
                seed, counter = ctx.random_stream()
                backend.dropout(self._layer_output(ctx, layer), ctx.buffer(f"dropped{layer}"),
                                ctx.buffer(f"mask{layer}"), self.dropout, stream_key(seed, layer),
                                counter, ctx.ws)
        backend.swap_leading_axes(self._layer_output(ctx, self.num_layers - 1), ctx.output())

    def _forward_direction(self, backend, ctx, layer, d, x):
        t_len, n, hid = self.seq_len, ctx.batch_size, self.hidden_size
        w_ih, w_hh, b_ih, b_hh = (ctx.param(p) if p is not None else None for p in self._weights(layer, d))
        hs = ctx.buffer(f"h{layer}.{d}")
        if self.projects_inputs:
            self._input_sequence(backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs)
        else:
            self._projected_sequence(backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs)
        if self.directions == 2:
            states = hs[1:] if d == 0 else hs[:t_len]
            backend.copy_channels(backend.reshape(states, (t_len * n, hid)),
                                  backend.reshape(ctx.buffer(f"out{layer}"), (t_len * n, 2 * hid)), d * hid)

    def _input_sequence(self, backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs) -> None:
        """One direction by the cell type's ``*_input_sequence`` op."""
        raise NotImplementedError

    def _kept(self, ctx, name, layer, d):
        """A buffer the backward reads, or None in a context without a backward."""
        return ctx.buffer(f"{name}{layer}.{d}") if ctx.training else None

    def _projected_sequence(self, backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs) -> None:
        """One direction as the input projections of all steps in one GEMM, then the recurrence."""
        t_len, n, hid = self.seq_len, ctx.batch_size, self.hidden_size
        xw = ctx.buffer(f"xw{layer}.{d}")
        xw2 = backend.reshape(xw, (t_len * n, self.gate_blocks * hid))
        backend.gemm(backend.reshape(x, (t_len * n, self._in_features(layer))), w_ih, xw2, trans_b=True, ws=ctx.ws)
        if b_ih is not None:  # the biases simply add: the cell adds their sum, no pass over all steps' xw
            b_sum = scratch(ctx.ws, backend, "rnn_bias", tuple(b_ih.shape), b_ih.dtype)
            backend.add(b_ih, b_hh, b_sum)
            b_hh = b_sum
        self._recurrence(backend, ctx, layer, d, xw, w_hh, b_hh, hs)

    def _recurrence(self, backend, ctx, layer, d, xw, w_hh, b_hh, hs) -> None:
        """Every step of one direction from a zero state: one GEMM with W_hh and one cell per step."""
        t_len, n = self.seq_len, ctx.batch_size
        hw = scratch(ctx.ws, backend, "rnn_hw", (n, self.gate_blocks * self.hidden_size), ctx.output().dtype)
        backend.fill(hs[0 if d == 0 else t_len], 0.0)
        for k, t, (prev, cur) in self._steps(t_len, d):
            if k == 0:
                backend.fill(hw, 0.0)  # zero initial state
            else:
                backend.gemm(hs[prev], w_hh, hw, trans_b=True, ws=ctx.ws)
            self._cell(backend, ctx, layer, d, t, prev, cur, xw[t], hw, b_hh, hs)

    # ----------------------------------------------------------- backward
    def compute_gradients(self, backend, ctx):
        t_len, n, hid, dirs = self.seq_len, ctx.batch_size, self.hidden_size, self.directions
        dx, dx_acc = ctx.input_grad_target()
        if self._batch_first:
            dout = ctx.output_grad()
        else:
            dout = scratch(ctx.ws, backend, f"rnn_dseq{self.num_layers - 1}", (t_len, n, dirs * hid),
                           ctx.output().dtype)
            backend.swap_leading_axes(ctx.output_grad(), dout)
        for layer in reversed(range(self.num_layers)):
            din = None
            if layer > 0 or dx is not None:
                din = scratch(ctx.ws, backend, f"rnn_dseq{layer - 1}" if layer else "rnn_dx",
                              (t_len, n, self._in_features(layer)), ctx.output().dtype)
            x = self._layer_input(ctx, layer)
            for d in range(dirs):
                self._backward_direction(backend, ctx, layer, d, x, dout, din, d > 0)
            if layer > 0:
                if self._drops_after(ctx, layer - 1):
                    backend.mul(din, ctx.buffer(f"mask{layer - 1}"), din)
                dout = din
        if dx is not None:
            backend.swap_leading_axes(din, dx, accumulate=dx_acc)

    def _backward_direction(self, backend, ctx, layer, d, x, dout, din, din_acc):
        if self.projects_inputs:
            self._input_backward_direction(backend, ctx, layer, d, x, dout, din, din_acc)
        else:
            self._projected_backward_direction(backend, ctx, layer, d, x, dout, din, din_acc)

    def _input_backward_direction(self, backend, ctx, layer, d, x, dout, din, din_acc):
        """One direction's backward by the cell type's ``*_input_sequence_backward``: the op makes
        the weight and bias gradients; dxw comes out only where the input gradient needs it."""
        t_len, n, hid = self.seq_len, ctx.batch_size, self.hidden_size
        params = self._weights(layer, d)
        w_ih, w_hh = ctx.param(params[0]), ctx.param(params[1])
        dxw = self._pre_grads(backend, ctx)[0] if din is not None else None
        outs = [self._grad_output(backend, ctx, p, f"rnn_grad_{kind}") if p is not None else (None, None)
                for p, kind in zip(params, ("w_ih", "w_hh", "b_ih", "b_hh"))]
        self._run_backward(backend, ctx, layer, d, x, w_hh, dout, dxw, *(buf for buf, _ in outs))
        for buf, target in outs:
            if target is not None and target[0] is not None:
                backend.store(buf, *target)
        if din is not None:
            rows = t_len * n
            backend.gemm(backend.reshape(dxw, (rows, self.gate_blocks * hid)), w_ih,
                         backend.reshape(din, (rows, self._in_features(layer))), beta=float(din_acc), ws=ctx.ws)

    def _grad_output(self, backend, ctx, param, tag):
        """(buffer the op overwrites, None) where that is the param's gradient itself; else a
        scratch buffer and the (gradient or None, accumulate) it goes to afterwards."""
        gw, acc = ctx.param_grad_target(param)
        if gw is not None and not acc:
            return gw, None
        return scratch(ctx.ws, backend, tag, tuple(ctx.param(param).shape), ctx.output().dtype), (gw, acc)

    def _run_backward(self, backend, ctx, layer, d, x, w_hh, dout, dxw, dw_ih, dw_hh, db_ih, db_hh) -> None:
        """One direction's ``*_input_sequence_backward`` into the given gradient buffers."""
        raise NotImplementedError

    def _projected_backward_direction(self, backend, ctx, layer, d, x, dout, din, din_acc):
        t_len, n, hid = self.seq_len, ctx.batch_size, self.hidden_size
        rows = t_len * n
        params = self._weights(layer, d)
        w_ih, w_hh = ctx.param(params[0]), ctx.param(params[1])
        hs = ctx.buffer(f"h{layer}.{d}")
        dx_pre, dh_pre = self._pre_grads(backend, ctx)
        self._recurrence_backward(backend, ctx, layer, d, w_hh, hs, dout)
        dxp2 = backend.reshape(dx_pre, (rows, self.gate_blocks * hid))
        dhp2 = backend.reshape(dh_pre, (rows, self.gate_blocks * hid))
        gw, acc = ctx.param_grad_target(params[0])
        if gw is not None:
            backend.gemm(dxp2, backend.reshape(x, (rows, self._in_features(layer))), gw, trans_a=True,
                         beta=float(acc), ws=ctx.ws)
        gw, acc = ctx.param_grad_target(params[1])
        if gw is not None:
            h_prev = hs[0:t_len] if d == 0 else hs[1:t_len + 1]
            backend.gemm(dhp2, backend.reshape(h_prev, (rows, hid)), gw, trans_a=True, beta=float(acc), ws=ctx.ws)
        targets = [(ctx.param_grad_target(bias), grads) for bias, grads in ((params[2], dxp2), (params[3], dhp2))
                   if bias is not None]
        targets = [(gb, acc, grads) for (gb, acc), grads in targets if gb is not None]
        if len(targets) == 2 and dx_pre is dh_pre:  # b_ih and b_hh get the same gradient: one reduction
            total = scratch(ctx.ws, backend, "rnn_dbias", tuple(targets[0][0].shape), ctx.output().dtype)
            backend.bias_grad(dxp2, total, ws=ctx.ws)
            for gb, acc, _ in targets:
                backend.store(total, gb, acc)
        else:
            for gb, acc, grads in targets:
                backend.bias_grad(grads, gb, accumulate=acc, ws=ctx.ws)
        if din is not None:
            backend.gemm(dxp2, w_ih, backend.reshape(din, (rows, self._in_features(layer))),
                         beta=float(din_acc), ws=ctx.ws)

    def _recurrence_backward(self, backend, ctx, layer, d, w_hh, hs, dout) -> None:
        """The pre-activation gradients (``_pre_grads``) of every step of one direction."""
        t_len, n, hid = self.seq_len, ctx.batch_size, self.hidden_size
        dh = scratch(ctx.ws, backend, "rnn_dh", (n, hid), ctx.output().dtype)
        _, dh_pre = self._pre_grads(backend, ctx)
        for k, t, (prev, cur) in reversed(list(self._steps(t_len, d))):
            backend.slice_channels(dout[t], dh, d * hid, accumulate=k < t_len - 1)
            self._cell_backward(backend, ctx, layer, d, t, prev, cur, hs, dh, k == t_len - 1)
            if k > 0:  # the gradient into the previous state (none into the zero initial one)
                backend.gemm(dh_pre[t], w_hh, dh, ws=ctx.ws)

    def _pre_grads(self, backend, ctx):
        """(gradient of xw, gradient of hw + b_hh) for all steps, (T, N, G*H) each."""
        shape = (self.seq_len, ctx.batch_size, self.gate_blocks * self.hidden_size)
        pre = scratch(ctx.ws, backend, "rnn_dpre", shape, ctx.output().dtype)
        return pre, pre

    # ------------------------------------------------------------ config
    def config(self):
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers, "bias": self.bias,
                "bidirectional": self.bidirectional, "dropout": self.dropout, "input_size": self.input_size}


class RNN(_Recurrent):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu."""

    def __init__(self, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh", bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, input_size: int | None = None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(hidden_size, num_layers, bias, bidirectional, dropout, input_size)
        self.nonlinearity = nonlinearity

    def _cell(self, backend, ctx, layer, d, t, prev, cur, xw_t, hw, b_hh, hs):
        backend.rnn_cell(xw_t, hw, b_hh, hs[cur], self.nonlinearity)

    def _cell_backward(self, backend, ctx, layer, d, t, prev, cur, hs, dh, first):
        pre, _ = self._pre_grads(backend, ctx)
        slope = backend.tanh_backward if self.nonlinearity == "tanh" else backend.relu_backward
        slope(hs[cur], dh, pre[t], ws=ctx.ws)

    def config(self):
        return {**super().config(), "nonlinearity": self.nonlinearity}


class LSTM(_Recurrent):
    """Long short-term memory, torch's gate order (i, f, g, o)."""

    gate_blocks = 4
    kept_gates = 4

    def _setup_cell(self, ctx, layer, d):
        ctx.make_buffer(f"c{layer}.{d}", (self.seq_len + 1, ctx.batch_size, self.hidden_size))

    projects_inputs = True

    def _input_sequence(self, backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs):
        bias = b_hh
        if b_ih is not None:  # the biases simply add: the op adds their sum once per step
            bias = scratch(ctx.ws, backend, "rnn_bias", tuple(b_ih.shape), b_ih.dtype)
            backend.add(b_ih, b_hh, bias)
        backend.lstm_input_sequence(x, w_ih, w_hh, bias, hs, self._kept(ctx, "c", layer, d),
                                    self._kept(ctx, "gates", layer, d), reverse=d == 1, ws=ctx.ws,
                                    batch_first=self._batch_first)

    def _run_backward(self, backend, ctx, layer, d, x, w_hh, dout, dxw, dw_ih, dw_hh, db_ih, db_hh):
        dbias = db_ih if db_ih is not None else db_hh
        backend.lstm_input_sequence_backward(x, w_hh, ctx.buffer(f"gates{layer}.{d}"), ctx.buffer(f"h{layer}.{d}"),
                                             ctx.buffer(f"c{layer}.{d}"), dout, d * self.hidden_size, dw_ih, dw_hh,
                                             dbias, dxw, reverse=d == 1, ws=ctx.ws, batch_first=self._batch_first)
        if db_ih is not None and db_hh is not None:  # b_ih and b_hh get the same gradient
            backend.copy(db_ih, db_hh)


class GRU(_Recurrent):
    """Gated recurrent unit, torch's formulation (r, z, n; b_hn inside the reset product)."""

    gate_blocks = 3
    kept_gates = 4  # r, z, n and hn = W_hn h + b_hn

    def _pre_grads(self, backend, ctx):
        shape = (self.seq_len, ctx.batch_size, 3 * self.hidden_size)
        return (scratch(ctx.ws, backend, "rnn_dpre", shape, ctx.output().dtype),
                scratch(ctx.ws, backend, "rnn_dpre_h", shape, ctx.output().dtype))

    projects_inputs = True

    def _input_sequence(self, backend, ctx, layer, d, x, w_ih, b_ih, w_hh, b_hh, hs):
        backend.gru_input_sequence(x, w_ih, b_ih, w_hh, b_hh, hs, self._kept(ctx, "gates", layer, d),
                                   reverse=d == 1, ws=ctx.ws, batch_first=self._batch_first)

    def _run_backward(self, backend, ctx, layer, d, x, w_hh, dout, dxw, dw_ih, dw_hh, db_ih, db_hh):
        backend.gru_input_sequence_backward(x, w_hh, ctx.buffer(f"gates{layer}.{d}"), ctx.buffer(f"h{layer}.{d}"),
                                            dout, d * self.hidden_size, dw_ih, dw_hh, db_ih, db_hh, dxw,
                                            reverse=d == 1, ws=ctx.ws, batch_first=self._batch_first)


# ------------------------------------------------------------------ heads over time
class LastStep(Layer):
    """The output of the last time step: (seq_len, features) -> (features,)."""

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 2:
            raise ShapeError(f"{path}: LastStep expects unit shape (seq_len, features), got {tuple(unit_shape)}")
        return (unit_shape[1],)

    def _flat(self, backend, ctx, arr):
        seq_len, features = ctx.input_shapes[0]
        return backend.reshape(arr, (ctx.batch_size, seq_len * features)), (seq_len - 1) * features

    def compute_output(self, backend, ctx):
        flat, offset = self._flat(backend, ctx, ctx.input())
        backend.slice_channels(flat, ctx.output(), offset)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        if not acc:
            backend.fill(dx, 0.0)
        flat, offset = self._flat(backend, ctx, dx)
        backend.copy_channels(ctx.output_grad(), flat, offset, accumulate=True)


class MeanOverTime(Layer):
    """The mean over the time steps: (seq_len, features) -> (features,)."""

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 2:
            raise ShapeError(f"{path}: MeanOverTime expects unit shape (seq_len, features), got {tuple(unit_shape)}")
        return (unit_shape[1],)

    def _weights(self, backend, ctx):
        """A (1, seq_len) row of 1/seq_len: the mean is one GEMM over the time-major input."""
        seq_len = ctx.input_shapes[0][0]
        return scratch(ctx.ws, backend, "time_mean_row", (1, seq_len), ctx.output().dtype,
                       lambda buf: backend.fill(buf, 1.0 / seq_len))

    def _time_major(self, backend, ctx):
        seq_len, features = ctx.input_shapes[0]
        return scratch(ctx.ws, backend, "time_mean_tm", (seq_len, ctx.batch_size, features), ctx.output().dtype)

    def compute_output(self, backend, ctx):
        seq_len, features = ctx.input_shapes[0]
        tm = self._time_major(backend, ctx)
        backend.swap_leading_axes(ctx.input(), tm)
        backend.gemm(self._weights(backend, ctx), backend.reshape(tm, (seq_len, ctx.batch_size * features)),
                     backend.reshape(ctx.output(), (1, ctx.batch_size * features)), ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        seq_len, features = ctx.input_shapes[0]
        tm = self._time_major(backend, ctx)
        backend.gemm(self._weights(backend, ctx), backend.reshape(ctx.output_grad(), (1, ctx.batch_size * features)),
                     backend.reshape(tm, (seq_len, ctx.batch_size * features)), trans_a=True, ws=ctx.ws)
        backend.swap_leading_axes(tm, dx, accumulate=acc)
