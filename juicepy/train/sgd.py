"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's formulas."""

from __future__ import annotations

from ..arguments import flag, number
from .optimizer import Optimizer


class SGD(Optimizer):
    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.check()
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def check(self) -> None:
        super().check()
        owner = self._owner
        self.momentum = number(owner, "momentum", self.momentum, low=0.0)
        self.dampening = number(owner, "dampening", self.dampening, low=0.0, high=1.0)
        self.weight_decay = number(owner, "weight_decay", self.weight_decay, low=0.0)
        self.nesterov = flag(owner, "nesterov", self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"{owner}: nesterov needs momentum > 0 and dampening 0, got momentum "
                             f"{self.momentum}, dampening {self.dampening}")
        made = vars(self).get("state_names")  # None while __init__ runs
        if self.momentum and made is not None and "momentum_buffer" not in made:
            raise ValueError(f"{owner}: momentum {self.momentum} set after the optimizer was made without "
                             f"momentum (it keeps no momentum buffer); make a new SGD with momentum=...")

    def hyperparams(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def update(self, backend, seg, buffers, state, lr, guard=None):
        backend.sgd_update(seg.data, seg.grad, buffers.get("momentum_buffer"), lr=lr,
                           momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov,
                           weight_decay=self.weight_decay, first_step=state.step == 1, ws=state.ws, guard=guard)
