"""Context: every buffer of one invocation (one backend, one explicit batch size).

All data and gradient buffers, per-layer buffers and param-gradient storage are allocated when
the context is made; forward and backward passes afterwards only write into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..arguments import flag, integer
from ..backends.base import Workspace
from ..backends.rng import stream_key


@dataclass(eq=False)
class Segment:
    """Params whose data and gradients are each one contiguous flat array on a backend:
    the unit an optimizer updates with one fused op."""

    params: list
    data: object
    grad: object
    lr_mult: float
    size: int
    offsets: list  # element offset of each param inside data/grad


@dataclass(eq=False)
class _StateBackup:
    """Room, made once, for the value of one param a training forward changes in place."""

    param: object
    device: object  # on the context's backend
    host: object  # numpy array
    on_device: bool = False  # where the last save went


class GradTarget(NamedTuple):
    """Where a layer writes a gradient: the buffer (None when nothing needs this gradient) and
    whether to add to it (another placement wrote first: fan-out, shared params) or overwrite."""

    buffer: object
    accumulate: bool


_NOT_KEPT = GradTarget(None, False)


class NodeContext:
    """What one placement of a layer sees of the context (the ``ctx`` of compute methods).

    The vocabulary, the same here and on :class:`Context`:

    - ``input(i)``, ``output(i)``, ``param(p)``: data buffers.
    - ``*_grad``: a gradient buffer to read (``output_grad(i)``: d(loss)/d(output i)).
    - ``*_grad_target``: a :class:`GradTarget` ``(buffer, accumulate)`` for a gradient the layer
      writes (``input_grad_target(i)``, ``param_grad_target(p)``); the buffer is None when
      nothing needs that gradient.
    - ``make_buffer(name, shape)`` in ``Layer.setup`` creates a per-placement buffer;
      ``buffer(name)`` looks it up in the compute methods.
    """

    __slots__ = ("_ctx", "node", "path", "inputs", "outputs", "_in_idx", "_out_idx", "_buffers",
                 "_setting_up", "ws", "batch_size", "_seed")

    def __init__(self, ctx: "Context", node):
        self._ctx = ctx
        self.node = node
        self.path = node.path
        d = node.descriptor
        self.inputs = [ctx._data[j.index] for j in d.inputs]
        self.outputs = [ctx._data[j.index] for j in d.outputs]
        # junctions sharing buffers (Layer.output_is_input) share their 'written' marks too
        self._in_idx = [ctx._shared[j.index] for j in d.inputs]
        self._out_idx = [ctx._shared[j.index] for j in d.outputs]
        self._buffers: dict = {}
        self._setting_up = False
        self.ws = ctx.ws
        self.batch_size = ctx.batch_size
        self._seed = stream_key(ctx.network.seed, node.index)
        if ctx.rank:  # each rank of a data-parallel job draws its own (reproducible) stream
            self._seed = stream_key(self._seed, ctx.rank)

    # data of the junctions
    def input(self, i: int = 0):
        return self.inputs[i]

    def output(self, i: int = 0):
        return self.outputs[i]

    @property
    def training(self) -> bool:
        return self._ctx.training

    @property
    def input_shapes(self) -> list:
        return self.node.descriptor.input_shapes

    @property
    def output_shapes(self) -> list:
        return self.node.descriptor.output_shapes

    # gradients of the junctions
    def output_grad(self, i: int = 0):
        """d(loss)/d(output i) to read (zeros if nothing downstream used the output)."""
        ctx = self._ctx
        j = self._out_idx[i]
        if not ctx._written[j]:
            ctx.backend.fill(ctx._grads[j], 0.0)
            ctx._written[j] = True
        return ctx._grads[j]

    def input_grad_target(self, i: int = 0) -> GradTarget:
        """Where d(loss)/d(input i) goes. The first writer overwrites, later writers (fan-out)
        accumulate; the buffer is None when no one needs this gradient."""
        ctx = self._ctx
        j = self._in_idx[i]
        buf = ctx._grads[j]
        if buf is None:
            return _NOT_KEPT
        accumulate = ctx._written[j]
        ctx._written[j] = True
        return GradTarget(buf, accumulate)

    # params
    def param(self, p):
        return p.on(self._ctx.backend)

    def param_grad_target(self, p) -> GradTarget:
        """Where a param's gradient goes; the buffer is None when it is not trained here."""
        ctx = self._ctx
        slot = ctx._param_slot.get(p)
        if slot is None:
            return _NOT_KEPT
        if ctx._hooked and ctx._backward_op > ctx._grad_final_op[slot]:
            # a backward hook already handed this gradient on as final (Context.add_backward_hook)
            raise RuntimeError(f"{self.path}: writes the gradient of {p.name}, which the layers' params said "
                               f"was final after backward op {ctx._grad_final_op[slot]}")
        accumulate = ctx._param_written[slot]
        ctx._param_written[slot] = True
        return GradTarget(ctx._param_grad_views[slot], accumulate)

    def mark_param_written(self, p) -> None:
        """A layer updated a param in place (BatchNorm's running statistics)."""
        p.mark_written(self._ctx.backend)

    # per-placement storage and randomness
    def make_buffer(self, name: str, shape, dtype=None):
        """Create a buffer owned by this placement (only in ``Layer.setup``: a step allocates
        nothing); returns it. ``dtype`` defaults to the network's."""
        if not self._setting_up:
            raise RuntimeError(f"{self.path}: make_buffer({name!r}) outside Layer.setup; buffers are made "
                               f"once when the context is, and looked up with buffer({name!r})")
        if name in self._buffers:
            raise ValueError(f"{self.path}: buffer {name!r} made twice")
        dtype = self._ctx.dtype if dtype is None else dtype
        buf = self._buffers[name] = self._ctx.backend.empty(tuple(shape), dtype)
        return buf

    def buffer(self, name: str):
        """A buffer this placement made in ``setup``."""
        try:
            return self._buffers[name]
        except KeyError:
            raise KeyError(f"{self.path}: no buffer {name!r} (made in setup: "
                           f"{', '.join(self._buffers) or 'none'})") from None

    def random_stream(self) -> tuple[int, int]:
        """(seed, counter) for counter-based random numbers: fixed per placement, new each pass."""
        return self._seed, self._ctx.step

    # data-parallel jobs
    @property
    def ranks(self) -> int:
        """How many replicas train together (1 without a communicator)."""
        comm = self._ctx.communicator
        return 1 if comm is None else comm.size

    def allreduce(self, flat) -> None:
        """Sum the 1-D buffer ``flat`` over the replicas, in place (a no-op for one replica)."""
        comm = self._ctx.communicator
        if comm is not None and comm.size > 1:
            comm.allreduce(self._ctx.backend, flat)


class Context:
    """Buffers for running ``network`` on ``backend`` with exactly ``batch_size`` rows."""

    def __init__(self, network, backend, batch_size: int, training: bool = False,
                 input_grads: bool = False, communicator=None):
        """``communicator``: the replicas of a data-parallel job (juicepy.distributed), for
        layers that reduce over ranks (synchronised BatchNorm) and per-rank random streams."""
        self.batch_size = integer("Context", "batch_size", batch_size, 1)
        training, input_grads = flag("Context", "training", training), flag("Context", "input_grads", input_grads)
        # placing the params first refuses a dtype the backend does not compute in before
        # any buffer is made
        self.placement = network.param_groups(backend)
        self.network = network
        self.communicator = communicator
        self.rank = 0 if communicator is None else communicator.rank
        self.backend = backend
        self.training = training
        self.dtype = network.dtype
        self.step = 0  # forward passes in training mode: drives dropout's random stream
        self.ws = Workspace()
        n = self.batch_size
        self._data = [backend.empty((n,) + j.unit_shape, j.dtype) for j in network.junctions]
        input_ids = {j.index for j in network.inputs}
        self._grads = [
            backend.empty((n,) + j.unit_shape, j.dtype)
            if training and j.dtype.kind == "f" and (input_grads or j.index not in input_ids) else None
            for j in network.junctions
        ]
        self._shared = self._share_buffers() if self.alias else list(range(len(network.junctions)))
        self._written = [False] * len(network.junctions)
        self.segments: list[Segment] = []
        self._param_slot: dict = {}
        self._slot_params: list = []
        self._param_grad_views: list = []
        self._param_written: list = []
        if training:
            self._make_param_grads()
        self._plan = [(node.layer, NodeContext(self, node)) for node in network.nodes]
        for layer, nctx in self._plan:
            nctx._setting_up = True
            layer.setup(backend, nctx)
            nctx._setting_up = False
        self._backups = self._make_backups() if training else []
        self._saved_step = 0
        self._steps = self._fused_steps() if self.fuse else [(layer, nctx, ()) for layer, nctx in self._plan]
        # junction index -> path of the layer that absorbed its producer (never written)
        self._fused_away = {chain[i].node.descriptor.outputs[0].index: chain[i + 1].path
                            for chain in ((nctx,) + consumers for _, nctx, consumers in self._steps)
                            for i in range(len(chain) - 1)}
        self._backward_steps = list(reversed(self._steps))
        self._backward_op = -1  # the backward op running now (-1: none)
        self._grad_final_op = self._final_ops()
        self._backward_hooks: list[list] = [[] for _ in range(len(self._backward_steps) + 1)]
        self._hooked = False  # hooks rely on grad_final_op: then each gradient write is checked against it

    #: give the output of a layer with ``output_is_input`` (Identity) its input's data and
    #: gradient buffers, so that it copies nothing either way; the results are the same bits
    alias = True

    def _share_buffers(self) -> list[int]:
        """Junction index -> the index whose buffers it uses (itself, or the input of an
        ``output_is_input`` layer). Every contribution to the output's gradient is one to the
        input's, so the two can add up in one buffer under one 'written' mark. A network output
        keeps its own buffers: a loss writes its gradient, which the input may not keep."""
        shared = list(range(len(self._data)))
        outputs = {j.index for j in self.network.outputs}
        for node in self.network.nodes:  # forward order: a chain of them resolves to its start
            d = node.descriptor
            if node.layer.output_is_input and len(d.inputs) == 1 and len(d.outputs) == 1:
                j, root = d.outputs[0].index, shared[d.inputs[0].index]
                if j not in outputs:
                    shared[j] = root
                    self._data[j], self._grads[j] = self._data[root], self._grads[root]
        return shared

    #: run a layer and the ones reading its output as one op where the layer offers it
    #: (``Layer.fuses``); the results are the same bits either way, except an inference
    #: convolution with a batch norm folded into it (equal within rounding)
    fuse = True

    def _fused_steps(self) -> list:
        """(layer, NodeContext, the consumers' NodeContexts) in forward order: a placement
        absorbs the next one while that is the only reader of the previous one's only output,
        which is not a network output, and the placement's ``fuses`` takes the chain so far.
        A consumer may read one more input (a residual block's Add: the skip path) where that
        input is written before the chain starts (a network input or an earlier placement's
        output), so the chain can read it when it runs, in its first placement's turn."""
        network = self.network
        readers: dict = {}
        made_at = {j.index: -1 for j in network.inputs}  # junction -> the plan position writing it
        for k, node in enumerate(network.nodes):
            for j in node.descriptor.inputs:
                readers[j.index] = readers.get(j.index, 0) + 1
            for j in node.descriptor.outputs:
                made_at[j.index] = k
        outputs = {j.index for j in network.outputs}

        def feeds(nctx, cctx, start) -> bool:
            made, taken = nctx.node.descriptor.outputs, cctx.node.descriptor.inputs
            if not (len(made) == 1 and readers.get(made[0].index) == 1 and made[0].index not in outputs):
                return False
            others = [j for j in taken if j is not made[0]]
            return len(taken) - len(others) == 1 and len(others) <= 1 \
                and all(made_at.get(j.index, len(self._plan)) < start for j in others)

        steps, k = [], 0
        while k < len(self._plan):
            layer, nctx = self._plan[k]
            chain, last = (), nctx
            while k + 1 + len(chain) < len(self._plan):
                consumer, cctx = self._plan[k + 1 + len(chain)]
                if not (feeds(last, cctx, k) and layer.fuses(tuple(c.node.layer for c in chain) + (consumer,),
                                                             self.training)):
                    break
                chain, last = chain + (cctx,), cctx
            steps.append((layer, nctx, chain))
            k += 1 + len(chain)
        return steps

    def _make_backups(self) -> list[_StateBackup]:
        seen, backups = set(), []
        for layer, _ in self._plan:
            for p in layer.training_state():
                if id(p) not in seen:
                    seen.add(id(p))
                    backups.append(_StateBackup(p, self.backend.empty(p.shape, p.dtype),
                                                np.empty(p.shape, p.dtype)))
        return backups

    def _make_param_grads(self) -> None:
        backend = self.backend
        # a data-parallel communicator may keep the blocks where it reduces them without
        # copies (shared memory between the ranks of one machine)
        shared = getattr(self.communicator, "gradient_block", None)
        for group in self.network.param_groups(backend):
            dtype = group.params[0].dtype
            grad_flat = shared(backend, group.size, dtype) if shared is not None else None
            if grad_flat is None:
                grad_flat = backend.zeros((group.size,), dtype)  # alignment gaps stay 0
            views = [backend.flat_view(grad_flat, off, p.shape) for p, off in zip(group.params, group.offsets)]
            for p, view in zip(group.params, views):
                self._param_slot[p] = len(self._param_grad_views)
                self._slot_params.append(p)
                self._param_grad_views.append(view)
                self._param_written.append(False)
            self.segments.extend(_split_by_lr(backend, group, grad_flat))

    def _final_ops(self) -> list[int]:
        """Per param-gradient slot: the index of the backward op (in backward order) after which
        that gradient is final, from the params each placement holds; a param no placement
        holds is zero-filled at the end of the pass (index len(backward ops))."""
        end = len(self._backward_steps)
        final = [end] * len(self._param_grad_views)
        for k, (_, nctx, consumers) in enumerate(self._backward_steps):
            for c in (nctx,) + consumers:
                for p in c.node.descriptor.params.values():
                    slot = self._param_slot.get(p)
                    if slot is not None and (final[slot] == end or k > final[slot]):
                        final[slot] = k
        return final

    @property
    def backward_ops(self) -> int:
        """How many ops the backward pass runs (placements, fused chains counted once)."""
        return len(self._backward_steps)

    def grad_final_op(self, p) -> int:
        """The index of the backward op after which the gradient of param ``p`` is final (no op
        after it writes or adds to it); :attr:`backward_ops` for a param no placement uses
        (its gradient is zero-filled at the end of the pass)."""
        return self._grad_final_op[self._param_slot[p]]

    def add_backward_hook(self, op: int, callback) -> None:
        """Call ``callback()`` right after backward op ``op`` (0 <= op <= :attr:`backward_ops`;
        the last one runs after the whole pass), in the order hooks were added. What a
        data-parallel job uses to start reducing a bucket of gradients as soon as they are
        final (:meth:`grad_final_op`), while the backward pass goes on."""
        if not 0 <= op <= len(self._backward_steps):
            raise ValueError(f"backward op {op} outside 0..{len(self._backward_steps)}")
        self._backward_hooks[op].append(callback)
        self._hooked = True

    def clear_backward_hooks(self) -> None:
        for hooks in self._backward_hooks:
            hooks.clear()
        self._hooked = False

    def check_lr_mults(self) -> None:
        """Params were grouped by their lr multiplier when the context was made: refuse a
        multiplier changed since (it would be silently ignored)."""
        for seg in self.segments:
            for p in seg.params:
                if p.lr_mult != seg.lr_mult:
                    raise ValueError(f"param {p.name}: lr_mult changed from {seg.lr_mult} to {p.lr_mult} after "
                                     f"training started; set it before the first step (or make a new Trainer)")

    @property
    def stale(self) -> bool:
        """The network released its params from this backend after the context was made, so
        the context's param blocks are no longer theirs (Network.release)."""
        return self.network.placement(self.backend) is not self.placement

    # ------------------------------------------------------------ running
    def set_inputs(self, inputs: list) -> None:
        """Copy already validated inputs (host arrays or this backend's arrays) in."""
        for junction, value in zip(self.network.inputs, inputs):
            buf = self._data[junction.index]
            if self.backend.is_array(value):
                self.backend.copy(value, buf)
            else:
                self.backend.write(buf, value)

    def save_state(self) -> None:
        """Remember what a training step changes outside the optimizer: the step counter (the
        dropout stream) and the params layers update in the forward pass (``training_state``).
        Copies into buffers made with the context: nothing is allocated."""
        self._saved_step = self.step
        for b in self._backups:
            b.on_device = b.param.save_into(self.backend, b.device, b.host)

    def restore_state(self) -> None:
        """Undo the step since :meth:`save_state` (it failed or was refused)."""
        self.step = self._saved_step
        for b in self._backups:
            b.param.restore_from(self.backend, b.on_device, b.device, b.host)

    def forward(self) -> None:
        backend = self.backend
        for layer, nctx, consumers in self._steps:
            if consumers:
                layer.compute_output_fused(backend, nctx, consumers)
            else:
                layer.compute_output(backend, nctx)
        if self.training:
            self.step += 1

    def begin_backward(self) -> None:
        """Clear the 'written' marks; the caller then writes the output gradients."""
        self._written[:] = [False] * len(self._written)
        self._param_written[:] = [False] * len(self._param_written)

    def loss_grad(self, i: int = 0):
        """The buffer a loss writes d(loss)/d(network output i) into (after ``begin_backward``;
        marks it written)."""
        j = self.network.outputs[i].index
        self._written[j] = True
        return self._grads[j]

    def backward(self) -> None:
        backend, hooks = self.backend, self._backward_hooks
        try:
            for k, (layer, nctx, consumers) in enumerate(self._backward_steps):
                self._backward_op = k
                if consumers:
                    layer.compute_gradients_fused(backend, nctx, consumers)
                else:
                    layer.compute_gradients(backend, nctx)
                for hook in hooks[k]:
                    hook()
            end = self._backward_op = len(hooks) - 1
            for slot, written in enumerate(self._param_written):
                if not written:  # a param that no layer used in this pass gets a zero gradient
                    if self._grad_final_op[slot] < end and self._hooked:
                        raise RuntimeError(f"param {self._slot_params[slot].name}: its placement wrote no gradient, "
                                           f"but a backward hook took it as final after op {self._grad_final_op[slot]}")
                    backend.fill(self._param_grad_views[slot], 0.0)
            for hook in hooks[-1]:
                hook()
        finally:
            self._backward_op = -1

    # ---------------------------------------------------------- inspecting
    @property
    def plan(self) -> tuple:
        """(layer, NodeContext) of every placement in forward order (profilers step through it)."""
        return tuple(self._plan)

    def data(self, junction):
        """The backend array holding a junction's values (``network.inputs[i]``, ``outputs[i]``, ...)."""
        self._check_kept(junction)
        return self._data[junction.index]

    def grad(self, junction):
        """The backend array holding d(loss)/d(junction) after a backward pass."""
        self._check_kept(junction)
        buf = self._grads[junction.index]
        if buf is None:
            if not self.training:
                raise ValueError(f"{junction.producer}: this context keeps no gradients (training=False)")
            raise ValueError(f"{junction.producer}: no gradient kept for the network inputs "
                             f"(make the context with input_grads=True)")
        return buf

    def _check_kept(self, junction) -> None:
        # a fused chain never writes the junctions inside it: refuse rather than hand out stale values
        consumer = self._fused_away.get(junction.index)
        if consumer is not None:
            raise ValueError(f"{junction.producer}: its output is not kept in this context, it runs fused "
                             f"with {consumer} (set Context.fuse = False before making the context to read it)")

    def _junction(self, path):
        net = self.network
        if path is None:
            return net.outputs[0]
        if path == "<input>":
            return net.inputs[0]
        node = net.node(path)
        return node.descriptor.outputs[0]

    def output(self, path: str | None = None):
        """The backend array holding a layer's output (default: the network's output)."""
        return self.data(self._junction(path))

    def output_grad(self, path: str | None = None):
        """The backend array holding d(loss)/d(layer output) after a backward pass."""
        return self.grad(self._junction(path))

    def input_grad(self, i: int = 0):
        """d(loss)/d(network input i) after a backward pass (needs ``input_grads=True``)."""
        return self.grad(self.network.inputs[i])

    def param_grad(self, name: str):
        """The gradient buffer of the param at dotted path ``name``."""
        p = self.network.param(name)
        slot = self._param_slot.get(p)
        if slot is None:
            raise ValueError(f"{name}: no gradient kept for it in this context")
        return self._param_grad_views[slot]


def _split_by_lr(backend, group, grad_flat) -> list[Segment]:
    """One segment for the whole group where every param shares its lr multiplier."""
    if len({p.lr_mult for p in group.params}) == 1:
        return [Segment(group.params, group.data, grad_flat, group.params[0].lr_mult, group.size,
                        group.offsets)]
    segments = []
    for p, off in zip(group.params, group.offsets):
        segments.append(Segment([p], backend.flat_view(group.data, off, (p.size,)),
                                backend.flat_view(grad_flat, off, (p.size,)), p.lr_mult, p.size, [0]))
    return segments
