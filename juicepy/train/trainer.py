"""Trainer: forward, loss, backward and optimizer update for a fixed batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backends import backend as get_backend
from ..errors import NonFiniteError
from ..net.context import Context
from ..net.replay import GraphReplay, graphs_wanted
from .optimizer import Optimizer, OptimizerState


@dataclass(eq=False)
class TrainState:
    """What a trainer keeps on one backend: the context, target/loss buffers, optimizer state."""

    context: Context
    targets: object
    losses: object
    loss_sum: object
    optimizer: OptimizerState
    replay: GraphReplay | None = None  # the recorded step, on backends that capture graphs


class Trainer:
    """Trains ``network`` on minibatches of exactly ``batch_size`` rows.

    ``check_finite`` (on by default) refuses inputs holding NaN/Inf and a non-finite loss;
    every check runs before any weight or optimizer state changes.

    ``graphs`` (on by default; ``$JUICEPY_GRAPHS=0`` turns it off everywhere): on a backend that
    captures graphs (CUDA) the second step records forward, loss, backward and optimizer update
    as one graph and later steps replay it, with the same results as issuing every op.
    """

    def __init__(self, network, loss, optimizer: Optimizer, batch_size: int, check_finite: bool = True,
                 graphs: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loss.check_output(network.output_shape)
        self.network = network
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.check_finite = check_finite
        self.graphs = graphs
        self._states: dict = {}

    def state(self, backend) -> TrainState:
        """The training state on ``backend`` (made on first use; later steps reuse it)."""
        backend = get_backend(backend)
        st = self._states.get(backend)
        if st is None:
            net, n = self.network, self.batch_size
            ctx = Context(net, backend, n, training=True)
            target_shape = (n,) + self.loss.target_shape(net.output_shape)
            st = TrainState(
                context=ctx,
                targets=backend.empty(target_shape, self.loss.target_dtype(net.dtype)),
                losses=backend.empty((n,), net.dtype),
                loss_sum=backend.empty((1,), net.dtype),
                optimizer=self.optimizer.init_state(backend, ctx.segments),
                replay=GraphReplay(net, backend) if backend.can_capture else None,
            )
            self._states[backend] = st
        return st

    def check_targets(self, targets, backend):
        on_device = backend.is_array(targets) and not isinstance(targets, np.ndarray)
        host = backend.to_host(targets) if on_device else np.asarray(targets)
        checked = self.loss.check_targets(host, self.network.output_shape, self.batch_size, self.network.dtype)
        return targets if on_device and checked.dtype == targets.dtype else checked

    def train_minibatch(self, backend, inputs, targets):
        """One step; returns (mean loss as a float, the outputs as a backend array).

        The outputs array belongs to the context and is overwritten by the next step.
        """
        backend = get_backend(backend)
        xs = self.network.check_inputs(inputs, backend, self.batch_size, check_finite=self.check_finite)
        targets = self.check_targets(targets, backend)
        st = self.state(backend)
        ctx = st.context
        ctx.set_inputs(xs)
        if backend.is_array(targets):
            backend.copy(targets, st.targets)
        else:
            backend.write(st.targets, targets)
        loss = self._replayed_step(backend, st) if graphs_wanted(self.graphs, backend) else None
        if loss is None:
            ctx.forward()
            loss = self._loss_and_output_grad(backend, st)
            if self.check_finite and not math.isfinite(loss):
                ctx.step -= 1  # the refused step does not advance the dropout stream either
                self._refuse(loss, st)
            ctx.backward()
            self.optimizer.step(backend, st.optimizer, ctx.segments)
        for seg in ctx.segments:
            for p in seg.params:
                p.mark_written(backend)
        return loss, ctx.output()

    def _refuse(self, loss: float, st: TrainState):
        raise NonFiniteError(f"loss is {loss} at step {st.optimizer.step + 1}; weights and optimizer "
                             f"state were left unchanged (check_finite guard)")

    def _loss_to_device(self, backend, st: TrainState) -> int:
        """Loss, output gradient and the summed loss in st.loss_sum; returns the mean's count."""
        ctx = st.context
        count = self.loss.count(self.batch_size, self.network.output_shape)
        ctx.begin_backward()
        self.loss.compute(backend, ctx.output(), st.targets, st.losses, ctx.output_gradient(),
                          1.0 / count, ctx.ws)
        backend.sum_all(st.losses, st.loss_sum)
        return count

    def _loss_and_output_grad(self, backend, st: TrainState) -> float:
        count = self._loss_to_device(backend, st)
        return float(backend.to_host(st.loss_sum)[0]) / count

    def _replayed_step(self, backend, st: TrainState) -> float | None:
        """The step as a replayed graph; None where it must run op by op (first step, failed capture).

        The recording bakes in the hyperparameters (a change records again); the dropout counter
        and optimizer step advance through the replay's shift. With check_finite the optimizer
        kernels skip the update on device when the summed loss is not finite, so a refused
        step leaves weights and optimizer state unchanged, as the op-by-op path does.
        """
        rep, ctx, opt = st.replay, st.context, st.optimizer
        if rep is None or rep.failure is not None or opt.step == 0:
            return None  # the first step runs op by op: it fills workspaces and compiles kernels
        key = (self.check_finite, repr(self.optimizer.hyperparams()), ctx.step - opt.step)
        if not rep.ready(key):
            ctx_step, opt_step = ctx.step, opt.step
            guard = st.loss_sum if self.check_finite else None

            def body():
                ctx.forward()
                self._loss_to_device(backend, st)
                ctx.backward()
                self.optimizer.step(backend, opt, ctx.segments, guard=guard)

            recorded = rep.record(key, body)
            ctx.step, opt.step = ctx_step, opt_step  # recording ran the host side only
            if not recorded:
                return None
            rep.base_step = opt_step
        rep.replay(opt.step - rep.base_step)
        ctx.step += 1
        opt.step += 1
        loss = float(backend.to_host(st.loss_sum)[0]) / self.loss.count(self.batch_size, self.network.output_shape)
        if self.check_finite and not math.isfinite(loss):
            ctx.step -= 1
            opt.step -= 1
            self._refuse(loss, st)
        return loss

    @property
    def steps(self) -> int:
        """Optimizer steps taken (the most on any one backend; 0 before the first)."""
        return max((st.optimizer.step for st in self._states.values()), default=0)

    def __repr__(self) -> str:
        return f"<Trainer {self.loss!r} {self.optimizer!r} batch_size={self.batch_size}>"
