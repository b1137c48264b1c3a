"""Merge layers: several inputs, one output (skip connections, branches, the functional `+`)."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer


class Identity(Layer):
    """Passes its input through (the skip path of a residual block)."""

    output_is_input = True

    # Where the Context shares the input's buffers with the output (not for a network output,
    # nor with Context.alias off) there is nothing to copy: readers of the output read the
    # input, and the gradients they write add up in the input's gradient buffer.
    def compute_output(self, backend, ctx):
        if ctx.output() is not ctx.input():
            backend.copy(ctx.input(), ctx.output())

    def compute_gradients(self, backend, ctx):
        if ctx.output() is ctx.input():
            return
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.store(ctx.output_grad(), dx, acc)


class Add(Layer):
    """Elementwise sum of any number of inputs of one unit shape."""

    n_inputs = None

    def infer_shapes(self, input_shapes, path):
        first = input_shapes[0]
        for i, shape in enumerate(input_shapes[1:], start=1):
            if shape != first:
                raise ShapeError(f"{path or '<root>'}: Add expects every input to have unit shape "
                                 f"{first} (input 0), got {shape} for input {i}")
        return [first]

    def compute_output(self, backend, ctx):
        self._sum(backend, ctx, ctx.output(), False)

    # A residual block's sum is read by a ReLU only: the last add applies it in the same pass.
    # The ReLU's backward reads its output (which the fused op writes); its masked gradient is
    # every input's gradient, so it goes straight into the first input's gradient buffer where
    # that is written, not added to, and is copied from there to the others (one pass over the
    # gradient fewer than masking it into this layer's output gradient and storing it twice).
    def fuses(self, consumers, training) -> bool:
        from .activation import ReLU

        return len(consumers) == 1 and type(consumers[0]) is ReLU  # a subclass may compute something else

    def compute_output_fused(self, backend, ctx, consumers):
        consumer_ctx, = consumers
        self._sum(backend, ctx, consumer_ctx.output(), True)

    def compute_gradients_fused(self, backend, ctx, consumers):
        consumer_ctx, = consumers
        # input_grad_target marks a buffer written: each input's target is asked for once
        targets = [(dx, acc) for dx, acc in map(ctx.input_grad_target, range(len(ctx.inputs))) if dx is not None]
        if not targets:
            return
        first, acc = targets[0]
        if acc:  # it holds other gradients: mask into this layer's output gradient, add that to each
            consumer_ctx.node.layer.compute_gradients(backend, consumer_ctx)
            dy = ctx.output_grad()
        else:
            backend.relu_backward(consumer_ctx.output(), consumer_ctx.output_grad(), first, False, ctx.ws)
            dy, targets = first, targets[1:]
        for dx, acc in targets:
            backend.store(dy, dx, acc)

    def _sum(self, backend, ctx, y, relu):
        if len(ctx.inputs) == 1:
            if relu:
                backend.relu(ctx.input(0), y)
            else:
                backend.copy(ctx.input(0), y)
            return
        last = len(ctx.inputs) - 1
        backend.add(ctx.input(0), ctx.input(1), y, relu=relu and last == 1)
        for i in range(2, last + 1):
            backend.add(y, ctx.input(i), y, relu=relu and i == last)

    def compute_gradients(self, backend, ctx):
        dy = ctx.output_grad()
        for i in range(len(ctx.inputs)):
            dx, acc = ctx.input_grad_target(i)
            if dx is not None:
                backend.store(dy, dx, acc)


class Multiply(Layer):
    """Elementwise product of two inputs of one unit shape (gating)."""

    n_inputs = 2

    def infer_shapes(self, input_shapes, path):
        a, b = input_shapes
        if a != b:
            raise ShapeError(f"{path or '<root>'}: Multiply expects both inputs to have one unit shape, "
                             f"got {a} and {b}")
        return [a]

    def compute_output(self, backend, ctx):
        backend.mul(ctx.input(0), ctx.input(1), ctx.output(), ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        dy = ctx.output_grad()
        for i, other in ((0, 1), (1, 0)):
            dx, acc = ctx.input_grad_target(i)
            if dx is not None:
                backend.mul(dy, ctx.input(other), dx, accumulate=acc, ws=ctx.ws)


class Concat(Layer):
    """Concatenation along axis 1 (channels / features); other axes must agree."""

    n_inputs = None

    def infer_shapes(self, input_shapes, path):
        first = input_shapes[0]
        if len(first) < 1:
            raise ShapeError(f"{path or '<root>'}: Concat needs inputs with a channel axis, got unit shape {first}")
        for i, shape in enumerate(input_shapes[1:], start=1):
            if len(shape) != len(first) or shape[1:] != first[1:]:
                raise ShapeError(f"{path or '<root>'}: Concat expects unit shapes (C, {', '.join(map(str, first[1:]))})"
                                 f" like input 0 {first}, got {shape} for input {i}")
        return [(sum(s[0] for s in input_shapes),) + tuple(first[1:])]

    def _offsets(self, ctx):
        offset = 0
        for shape in ctx.input_shapes:
            yield offset
            offset += shape[0]

    def compute_output(self, backend, ctx):
        y = ctx.output()
        for x, offset in zip(ctx.inputs, self._offsets(ctx)):
            backend.copy_channels(x, y, offset)

    def compute_gradients(self, backend, ctx):
        dy = ctx.output_grad()
        for i, offset in enumerate(self._offsets(ctx)):
            dx, acc = ctx.input_grad_target(i)
            if dx is not None:
                backend.slice_channels(dy, dx, offset, accumulate=acc)
