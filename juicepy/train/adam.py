"""Adam and AdamW: torch.optim.Adam / AdamW's formulas (eps after the bias-corrected sqrt)."""

from __future__ import annotations

from ..arguments import flag, number
from .optimizer import Optimizer


class Adam(Optimizer):
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(lr)
        try:
            self.beta1, self.beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"{self._owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self.check()
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def check(self) -> None:
        super().check()
        owner = self._owner
        self.beta1 = number(owner, "betas[0]", self.beta1, low=0.0, high=1.0, high_open=True)
        self.beta2 = number(owner, "betas[1]", self.beta2, low=0.0, high=1.0, high_open=True)
        self.eps = number(owner, "eps", self.eps, low=0.0, low_open=True)
        self.weight_decay = number(owner, "weight_decay", self.weight_decay, low=0.0)
        self.amsgrad = flag(owner, "amsgrad", self.amsgrad)

    def hyperparams(self):
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def update(self, backend, seg, buffers, state, lr, guard=None):
        backend.adam_update(seg.data, seg.grad, buffers["exp_avg"], buffers["exp_avg_sq"], lr=lr,
                            beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled, step=state.step,
                            max_exp_avg_sq=buffers.get("max_exp_avg_sq"), ws=state.ws, guard=guard)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2, as torch.optim.AdamW)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad)
