"""Dropout with a counter-based random stream: the same seed and step give the same mask
on every backend."""

from __future__ import annotations

from ..arguments import number
from .base import Layer


class Dropout(Layer):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = number("Dropout", "p", p, low=0.0, high=1.0)

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
        else:
            backend.store(ctx.output_grad(), dx, acc)

    def config(self):
        return {"p": self.p}
