"""Adam and AdamW: torch.optim.Adam / AdamW's formulas (eps after the bias-corrected sqrt)."""

from __future__ import annotations

from .optimizer import Optimizer


class Adam(Optimizer):
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.amsgrad = bool(amsgrad)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

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
