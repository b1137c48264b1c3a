"""Dropout with a counter-based random stream: the same seed and step give the same mask
on every backend."""

from __future__ import annotations

from .base import Layer


class Dropout(Layer):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def setup(self, backend, ctx):
        if ctx.training:
            ctx.make_buffer("mask", (ctx.batch_size,) + ctx.input_shapes[0])

    def compute_output(self, backend, ctx):
        if ctx.training and self.p > 0.0:
            seed, counter = ctx.random_stream()
            backend.dropout(ctx.input(), ctx.output(), ctx.buffer("mask"), self.p, seed, counter, ctx.ws)
        else:
            backend.copy(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        if self.p > 0.0:
            backend.mul(ctx.output_grad(), ctx.buffer("mask"), dx, acc, ctx.ws)
        elif acc:
            backend.add(dx, ctx.output_grad(), dx)
        else:
            backend.copy(ctx.output_grad(), dx)

    def config(self):
        return {"p": self.p}
