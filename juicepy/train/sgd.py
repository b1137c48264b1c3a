"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's formulas."""

from __future__ import annotations

from .optimizer import Optimizer


class SGD(Optimizer):
    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def hyperparams(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def update(self, backend, seg, buffers, state, lr, guard=None):
        backend.sgd_update(seg.data, seg.grad, buffers.get("momentum_buffer"), lr=lr,
                           momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov,
                           weight_decay=self.weight_decay, first_step=state.step == 1, ws=state.ws, guard=guard)
