"""Trainer: forward, loss, backward and optimizer update for a fixed batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backends import backend as get_backend
from ..errors import NonFiniteError
from ..net.context import Context
from .optimizer import Optimizer, OptimizerState


@dataclass(eq=False)
class TrainState:
    """What a trainer keeps on one backend: the context, target/loss buffers, optimizer state."""

    context: Context
    targets: object
    losses: object
    loss_sum: object
    optimizer: OptimizerState


class Trainer:
    """Trains ``network`` on minibatches of exactly ``batch_size`` rows.

    ``check_finite`` (on by default) refuses inputs holding NaN/Inf and a non-finite loss;
    every check runs before any weight or optimizer state changes.
    """

    def __init__(self, network, loss, optimizer: Optimizer, batch_size: int, check_finite: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loss.check_output(network.output_shape)
        self.network = network
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.check_finite = check_finite
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
        ctx.forward()
        loss = self._loss_and_output_grad(backend, st)
        if self.check_finite and not math.isfinite(loss):
            ctx.step -= 1  # the refused step does not advance the dropout stream either
            raise NonFiniteError(f"loss is {loss} at step {st.optimizer.step + 1}; weights and optimizer "
                                 f"state were left unchanged (check_finite guard)")
        ctx.backward()
        self.optimizer.step(backend, st.optimizer, ctx.segments)
        for seg in ctx.segments:
            for p in seg.params:
                p.mark_written(backend)
        return loss, ctx.output()

    def _loss_and_output_grad(self, backend, st: TrainState) -> float:
        ctx = st.context
        count = self.loss.count(self.batch_size, self.network.output_shape)
        ctx.begin_backward()
        self.loss.compute(backend, ctx.output(), st.targets, st.losses, ctx.output_gradient(),
                          1.0 / count, ctx.ws)
        backend.sum_all(st.losses, st.loss_sum)
        return float(backend.to_host(st.loss_sum)[0]) / count

    @property
    def steps(self) -> int:
        """Optimizer steps taken (the most on any one backend; 0 before the first)."""
        return max((st.optimizer.step for st in self._states.values()), default=0)

    def __repr__(self) -> str:
        return f"<Trainer {self.loss!r} {self.optimizer!r} batch_size={self.batch_size}>"
