"""Flatten and Reshape: change the unit shape, keep the batch axis."""

from __future__ import annotations

import math

from .. import arguments
from ..errors import ArgumentError, ShapeError
from .base import Layer


class Reshape(Layer):
    def __init__(self, shape):
        super().__init__()
        if arguments.is_integer(shape):
            shape = (shape,)
        dims_ok = isinstance(shape, (tuple, list)) and all(
            arguments.is_integer(d) and (d >= 1 or d == -1) for d in shape)
        if not dims_ok or sum(d == -1 for d in shape) > 1:
            raise ArgumentError(f"Reshape: shape must be a tuple of integers >= 1 with at most one -1, got "
                                f"{arguments.describe(shape)}")
        self.shape = tuple(int(d) for d in shape)

    def infer_shape(self, unit_shape, path):
        size = math.prod(unit_shape)
        known = math.prod(d for d in self.shape if d != -1)
        if -1 in self.shape:
            if known == 0 or size % known:
                raise ShapeError(f"{path}: cannot reshape unit shape {unit_shape} ({size} values) to {self.shape}")
            return tuple(size // known if d == -1 else d for d in self.shape)
        if known != size:
            raise ShapeError(f"{path}: cannot reshape unit shape {unit_shape} ({size} values) to {self.shape}")
        return self.shape

    def compute_output(self, backend, ctx):
        y = ctx.output()
        backend.copy(backend.reshape(ctx.input(), y.shape), y)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        backend.store(backend.reshape(ctx.output_grad(), dx.shape), dx, acc)

    def config(self):
        return {"shape": list(self.shape)}


class Flatten(Reshape):
    """(batch, *unit) -> (batch, prod(unit)), like torch.nn.Flatten()."""

    def __init__(self):
        super().__init__((-1,))

    def config(self):
        return {}
