"""Activations: each forward and backward is one backend op."""

from __future__ import annotations

from ..arguments import number
from ..backends.base import relu_masked_grad
from ..errors import ShapeError
from .base import Layer


class ReLU(Layer):
    def compute_output(self, backend, ctx):
        backend.relu(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.relu_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)

    # ReLU then max pooling is max pooling then ReLU (a max commutes with a non-decreasing
    # function), so the fused pair runs the ReLU on the pooled map, a quarter of the values for
    # a 2x2 pool, and never writes the full-size ReLU output or its gradient. The values are the
    # same bits; the gradient is too: where a window's max is <= 0 both orders send zero to every
    # element of the window, elsewhere the same element gets the same value.
    def fuses(self, consumers, training) -> bool:
        from .pool import MaxPool2d

        return len(consumers) == 1 and type(consumers[0]) is MaxPool2d  # a subclass may compute something else

    def compute_output_fused(self, backend, ctx, consumers):
        consumer_ctx, = consumers
        pool, out = consumer_ctx.node.layer, consumer_ctx.output()
        backend.max_pool2d(ctx.input(), out, consumer_ctx.buffer("argmax"), pool.kernel_size, pool.stride,
                           pool.padding, ws=consumer_ctx.ws)
        backend.relu(out, out)

    def compute_gradients_fused(self, backend, ctx, consumers):
        consumer_ctx, = consumers
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        masked = relu_masked_grad(backend, "relu+max_pool2d", consumer_ctx.output_grad(), consumer_ctx.output(),
                                  ctx.ws)
        pool = consumer_ctx.node.layer
        backend.max_pool2d_backward(masked, consumer_ctx.buffer("argmax"), dx, pool.kernel_size, pool.stride,
                                    pool.padding, accumulate=acc, ws=ctx.ws)


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
