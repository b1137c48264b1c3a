"""Activations: each forward and backward is one backend op."""

from __future__ import annotations

from ..arguments import number
from ..errors import ShapeError
from .base import Layer


class ReLU(Layer):
    def compute_output(self, backend, ctx):
        backend.relu(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.relu_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)


class LeakyReLU(Layer):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = number("LeakyReLU", "negative_slope", negative_slope)

    def compute_output(self, backend, ctx):
        backend.leaky_relu(ctx.input(), ctx.output(), self.negative_slope)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.leaky_relu_backward(ctx.input(), ctx.output_grad(), dx, self.negative_slope, acc, ctx.ws)

    def config(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    def compute_output(self, backend, ctx):
        backend.sigmoid(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.sigmoid_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)


class Tanh(Layer):
    def compute_output(self, backend, ctx):
        backend.tanh(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.tanh_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)


class _RowWise(Layer):
    """Softmax-like layers normalise each row of a (batch, classes) input."""

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 1:
            raise ShapeError(f"{path}: {type(self).__name__} expects unit shape (classes,), got {unit_shape}")
        return unit_shape


class Softmax(_RowWise):
    def compute_output(self, backend, ctx):
        backend.softmax(ctx.input(), ctx.output(), ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.softmax_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)


class LogSoftmax(_RowWise):
    def compute_output(self, backend, ctx):
        backend.log_softmax(ctx.input(), ctx.output(), ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.log_softmax_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)
