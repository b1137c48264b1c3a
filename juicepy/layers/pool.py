"""MaxPool2d, AvgPool2d and GlobalAvgPool2d over (C, H, W) inputs (floor mode, as PyTorch)."""

from __future__ import annotations

import numpy as np

from .. import arguments
from ..backends.base import GEOMETRY_MAX, conv_output_size
from ..errors import ShapeError
from .base import Layer


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = arguments.pair(name, "kernel_size", kernel_size, 1, GEOMETRY_MAX)
        self.stride = self.kernel_size if stride is None else arguments.pair(name, "stride", stride, 1, GEOMETRY_MAX)
        self.stride_arg = stride
        self.padding = arguments.pair(name, "padding", padding, 0, GEOMETRY_MAX)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"{self.kernel_size} (every window must touch the input)")

    def infer_shape(self, unit_shape, path):
        name = type(self).__name__
        if len(unit_shape) != 3:
            raise ShapeError(f"{path}: {name} expects unit shape (channels, height, width), got {unit_shape}")
        out_hw = tuple(conv_output_size(s, k, st, p) for s, k, st, p in
                       zip(unit_shape[1:], self.kernel_size, self.stride, self.padding))
        if min(out_hw) < 1:
            padded = tuple(s + 2 * p for s, p in zip(unit_shape[1:], self.padding))
            raise ShapeError(f"{path}: {name} kernel {self.kernel_size} is larger than the padded input "
                             f"{padded} (input unit shape {unit_shape})")
        return (unit_shape[0],) + out_hw

    def config(self):
        stride = self.stride_arg if self.stride_arg is None else list(self.stride)
        return {"kernel_size": list(self.kernel_size), "stride": stride, "padding": list(self.padding)}


class MaxPool2d(_Pool2d):
    """Max over each window; the position of each maximum is kept for the backward pass."""

    def setup(self, backend, ctx):
        ctx.make_buffer("argmax", (ctx.batch_size,) + ctx.output_shapes[0], np.int32)

    def compute_output(self, backend, ctx):
        backend.max_pool2d(ctx.input(), ctx.output(), ctx.buffer("argmax"), self.kernel_size,
                           self.stride, self.padding, ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.max_pool2d_backward(ctx.output_grad(), ctx.buffer("argmax"), dx, self.kernel_size,
                                        self.stride, self.padding, accumulate=acc, ws=ctx.ws)


class AvgPool2d(_Pool2d):
    """Mean over each window; ``count_include_pad`` as in PyTorch (zeros of the padding count)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = arguments.flag(type(self).__name__, "count_include_pad", count_include_pad)

    def compute_output(self, backend, ctx):
        backend.avg_pool2d(ctx.input(), ctx.output(), self.kernel_size, self.stride, self.padding,
                           self.count_include_pad, ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.avg_pool2d_backward(ctx.output_grad(), dx, self.kernel_size, self.stride, self.padding,
                                        self.count_include_pad, accumulate=acc, ws=ctx.ws)

    def config(self):
        return {**super().config(), "count_include_pad": self.count_include_pad}


class GlobalAvgPool2d(Layer):
    """(C, H, W) -> (C,): the mean of each channel plane (torch: AdaptiveAvgPool2d(1) + Flatten)."""

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 3:
            raise ShapeError(f"{path}: GlobalAvgPool2d expects unit shape (channels, height, width), "
                             f"got {unit_shape}")
        return (unit_shape[0],)

    def _as_4d(self, backend, array):
        return backend.reshape(array, array.shape + (1, 1))

    def compute_output(self, backend, ctx):
        plane = ctx.input_shapes[0][1:]
        backend.avg_pool2d(ctx.input(), self._as_4d(backend, ctx.output()), plane, plane,
                           (0, 0), True, ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            plane = ctx.input_shapes[0][1:]
            backend.avg_pool2d_backward(self._as_4d(backend, ctx.output_grad()), dx, plane, plane,
                                        (0, 0), True, accumulate=acc, ws=ctx.ws)
