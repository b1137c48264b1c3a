"""Optimizer base: state per segment (a flat run of params), updates as fused backend ops."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..arguments import number
from ..backends.base import Workspace


@dataclass(eq=False)
class OptimizerState:
    """Everything an optimizer keeps for one network on one backend."""

    step: int = 0
    buffers: list = field(default_factory=list)  # per segment: dict name -> flat array
    ws: Workspace = field(default_factory=Workspace)


class Optimizer:
    """Subclasses list their per-param state in ``state_names`` and implement ``update``."""

    state_names: tuple = ()

    def __init__(self, lr: float):
        self.lr = lr

    def check(self) -> None:
        """Validate the hyper-parameters as they are now (they may have been changed since the
        optimizer was made); raises TypeError/ValueError naming the argument. The Trainer calls
        it before every step, so a bad value never reaches the weights."""
        self.lr = number(self._owner, "lr", self.lr, low=0.0)

    @property
    def _owner(self) -> str:
        return type(self).__name__

    def hyperparams(self) -> dict:
        raise NotImplementedError

    def init_state(self, backend, segments, zeros=None) -> OptimizerState:
        """Zeroed buffers for ``segments``; ``zeros(shape, dtype)`` allocates them instead of
        ``backend.zeros`` (a data-parallel job's shared memory)."""
        zeros = zeros or backend.zeros
        state = OptimizerState()
        for seg in segments:
            state.buffers.append({name: zeros((seg.size,), seg.params[0].dtype) for name in self.state_names})
        return state

    def step(self, backend, state: OptimizerState, segments, guard=None) -> None:
        """``guard``: a (1,) device array (the summed loss); the update is skipped on device when
        it is not finite (only for backends that capture graphs, see Backend.sgd_update)."""
        state.step += 1
        for seg, buffers in zip(segments, state.buffers):
            self.update(backend, seg, buffers, state, self.lr * seg.lr_mult, guard)

    def update(self, backend, segment, buffers: dict, state: OptimizerState, lr: float, guard=None) -> None:
        """One fused backend update of ``segment``; ``guard`` goes to the backend op as is."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"
