"""A hand-written NumPy MLP with Adam, written the way a user would without an engine:
the baseline juicepy must clearly beat."""

import numpy as np


class HandwrittenMLP:
    def __init__(self, sizes, seed=0, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / np.sqrt(fan_in)
            self.params += [rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
                            rng.uniform(-bound, bound, fan_out).astype(np.float32)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0

    def step(self, x, y):
        acts = [x]
        for i in range(0, len(self.params), 2):
            z = acts[-1] @ self.params[i] + self.params[i + 1]
            acts.append(np.maximum(z, 0) if i + 2 < len(self.params) else z)
        logits = acts[-1]
        e = np.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        g = p
        g[np.arange(len(y)), y] -= 1
        g /= len(y)
        grads = [None] * len(self.params)
        for i in range(len(self.params) - 2, -1, -2):
            grads[i] = acts[i // 2].T @ g
            grads[i + 1] = g.sum(0)
            if i:
                g = (g @ self.params[i].T) * (acts[i // 2] > 0)
        self.t += 1
        for p_, g_, m, v in zip(self.params, grads, self.m, self.v):
            m[:] = self.b1 * m + (1 - self.b1) * g_
            v[:] = self.b2 * v + (1 - self.b2) * g_ * g_
            m_hat = m / (1 - self.b1 ** self.t)
            v_hat = v / (1 - self.b2 ** self.t)
            p_ -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return float(loss)
