"""Conv2d and Conv1d (NCHW / NCL) with PyTorch's weight layout (out, in/groups, kh, kw)."""

from __future__ import annotations

from .. import arguments
from .. import init as initializers
from ..backends.base import GEOMETRY_MAX, conv_output_size
from ..errors import ArgumentError, ShapeError
from ..net.params import LearnableParams
from .activation import ReLU
from .base import Layer, bias_gradient
from .merge import Add
from .norm import BatchNorm1d, BatchNorm2d


class Conv2d(Layer):
    """2-D convolution over (C, H, W) inputs; ``in_channels`` is inferred from the input.

    ``padding`` is an int, a pair, or ``"same"`` (stride 1, odd dilated kernel: the padding is
    the same on both sides, so the output keeps the input's height and width).
    """

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, weight_init="torch", bias_init="torch",
                 in_channels: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.out_channels = arguments.integer(name, "out_channels", out_channels, 1)
        self.kernel_size = arguments.pair(name, "kernel_size", kernel_size, 1, GEOMETRY_MAX)
        self.stride = arguments.pair(name, "stride", stride, 1, GEOMETRY_MAX)
        self.dilation = arguments.pair(name, "dilation", dilation, 1, GEOMETRY_MAX)
        self.groups = arguments.integer(name, "groups", groups, 1)
        self.use_bias = arguments.flag(name, "bias", bias)
        self.weight_init = arguments.initializer(name, "weight_init", weight_init)
        self.bias_init = arguments.initializer(name, "bias_init", bias_init)
        self.in_channels = arguments.optional_integer(name, "in_channels", in_channels, 1)
        if self.out_channels % self.groups:
            raise ArgumentError(f"{name}: out_channels {self.out_channels} is not divisible by "
                                f"groups {self.groups}")
        if padding == "same":
            if self.stride != (1, 1):
                raise ArgumentError(f"{name}: padding='same' needs stride 1, got {self.stride}")
            span = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(s % 2 for s in span):
                raise ArgumentError(f"{name}: padding='same' needs an odd (dilated) kernel so both sides "
                                    f"pad equally; kernel {self.kernel_size} dilation {self.dilation}")
            self.padding_arg = "same"
            self.padding = (span[0] // 2, span[1] // 2)
        elif isinstance(padding, str):
            raise ArgumentError(f"{name}: padding must be an integer, a pair or 'same', got {padding!r}")
        else:
            self.padding = arguments.pair(name, "padding", padding, 0, GEOMETRY_MAX)
            self.padding_arg = int(padding) if arguments.is_integer(padding) else list(self.padding)
        self.weight: LearnableParams | None = None
        self.bias: LearnableParams | None = None

    def _describe(self) -> str:
        return (f"{type(self).__name__}(kernel {self.kernel_size}, stride {self.stride}, "
                f"padding {self.padding}, dilation {self.dilation})")

    def output_hw(self, in_hw: tuple, path: str) -> tuple:
        out = tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                    zip(in_hw, self.kernel_size, self.stride, self.padding, self.dilation))
        if min(out) < 1:
            padded = tuple(s + 2 * p for s, p in zip(in_hw, self.padding))
            span = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            raise ShapeError(f"{path}: {self._describe()} needs a padded input of at least {span}, "
                             f"got {padded} from input {tuple(in_hw)}")
        return out

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 3:
            raise ShapeError(f"{path}: Conv2d expects unit shape (channels, height, width), got {unit_shape}")
        channels = unit_shape[0]
        if self.in_channels is not None and self.in_channels != channels:
            raise ShapeError(f"{path}: Conv2d expects {self.in_channels} input channels, "
                             f"got unit shape {unit_shape}")
        if channels % self.groups:
            raise ShapeError(f"{path}: Conv2d input channels {channels} are not divisible by "
                             f"groups {self.groups}")
        return (self.out_channels,) + self.output_hw(unit_shape[1:], path)

    def weight_shape(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def create_params(self, input_shapes, graph):
        self.in_channels = input_shapes[0][0]
        shape = self.weight_shape()
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        self.weight = LearnableParams(initializers.make(self.weight_init, graph.rng, shape, fan_in,
                                                        fan_out, graph.dtype))
        if self.use_bias:
            self.bias = LearnableParams(initializers.make(self.bias_init, graph.rng, (self.out_channels,),
                                                          fan_in, fan_out, graph.dtype))

    def params(self):
        return {"weight": self.weight, "bias": self.bias} if self.use_bias else {"weight": self.weight}

    # Conv1d overrides these two to see its (N, C, L) buffers as (N, C, 1, L)
    def _as_4d(self, backend, array):
        return array

    def _weight(self, backend, array):
        return array

    def compute_output(self, backend, ctx):
        self._convolve(backend, ctx, ctx.output())

    # In inference a batch norm after the convolution is a fixed per-channel scale and shift,
    # which the convolution applies to its output as it stores it, with the sum with a skip
    # input (a residual block's Add, whose other input the Context has written before the chain
    # runs) and the ReLU after them where there are: the batch norm, add and ReLU passes over
    # the output disappear. Chains: [BatchNorm] [Add] [ReLU], the norm or the add present.
    # Training keeps them apart (the batch norm needs the statistics of this output).
    def fuses(self, consumers, training) -> bool:
        # exact types: a subclass may compute something else (one overriding compute_output here)
        if training or type(self).compute_output is not Conv2d.compute_output:
            return False
        kinds = [type(c) for c in consumers]
        if kinds[0] in (BatchNorm1d, BatchNorm2d):
            if consumers[0].sync:
                return False
            kinds.pop(0)
        elif kinds[0] is not Add:
            return False
        if kinds and kinds[0] is Add:
            kinds.pop(0)
        return kinds in ([], [ReLU])

    def compute_output_fused(self, backend, ctx, consumers):
        norm_ctx = consumers[0] if type(consumers[0].node.layer) is not Add else None
        add_ctx = next((c for c in consumers if type(c.node.layer) is Add), None)
        residual = None
        if add_ctx is not None:  # the Add's input that is not the chain's (the Context checked it has two)
            chain_out = (norm_ctx or ctx).node.descriptor.outputs[0]
            residual = next(buf for j, buf in zip(add_ctx.node.descriptor.inputs, add_ctx.inputs)
                            if j is not chain_out)
        self._convolve(backend, ctx, consumers[-1].output(),
                       None if norm_ctx is None else norm_ctx.node.layer.inference_norm(norm_ctx),
                       type(consumers[-1].node.layer) is ReLU, residual)

    def _convolve(self, backend, ctx, out, norm=None, relu=False, residual=None):
        stride, padding, dilation = self.stride, self.padding, self.dilation
        backend.conv2d(self._as_4d(backend, ctx.input()), self._weight(backend, ctx.param(self.weight)),
                       self._as_4d(backend, out), stride, padding, dilation, self.groups, ws=ctx.ws,
                       bias=ctx.param(self.bias) if self.use_bias else None, norm=norm, relu=relu,
                       residual=None if residual is None else self._as_4d(backend, residual))

    def compute_gradients(self, backend, ctx):
        dy = self._as_4d(backend, ctx.output_grad())
        stride, padding, dilation = self.stride, self.padding, self.dilation
        dw, acc = ctx.param_grad_target(self.weight)
        if dw is not None:
            backend.conv2d_backward_filter(self._as_4d(backend, ctx.input()), dy, self._weight(backend, dw),
                                           stride, padding, dilation, self.groups, accumulate=acc, ws=ctx.ws)
        if self.use_bias:
            bias_gradient(backend, ctx, self.bias, dy)
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.conv2d_backward_data(dy, self._weight(backend, ctx.param(self.weight)),
                                         self._as_4d(backend, dx), stride, padding, dilation,
                                         self.groups, accumulate=acc, ws=ctx.ws)

    def config(self):
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": self.padding_arg, "dilation": list(self.dilation),
                "groups": self.groups, "bias": self.use_bias, "in_channels": self.in_channels}


class Conv1d(Conv2d):
    """1-D convolution over (C, L) inputs, weight (out, in/groups, k) as torch.nn.Conv1d;
    runs as a Conv2d with a 1 x k kernel on (N, C, 1, L) views."""

    def __init__(self, out_channels: int, kernel_size: int, stride: int = 1, padding=0, dilation: int = 1,
                 groups: int = 1, bias: bool = True, weight_init="torch", bias_init="torch",
                 in_channels: int | None = None):
        for what, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            arguments.integer("Conv1d", what, value, 1, GEOMETRY_MAX)
        if not (isinstance(padding, str) and padding == "same"):
            arguments.integer("Conv1d", "padding (an integer or 'same')", padding, 0, GEOMETRY_MAX)
        pad2 = padding if padding == "same" else (0, padding)
        super().__init__(out_channels, (1, kernel_size), (1, stride), pad2, (1, dilation), groups, bias,
                         weight_init, bias_init, in_channels)
        self.padding_arg = padding

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) != 2:
            raise ShapeError(f"{path}: Conv1d expects unit shape (channels, length), got {unit_shape}")
        channels, length = unit_shape
        out = super().infer_shape((channels, 1, length), path)
        return (out[0], out[2])

    def weight_shape(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[1])

    def _as_4d(self, backend, array):
        n, c, length = array.shape
        return backend.reshape(array, (n, c, 1, length))

    def _weight(self, backend, array):
        o, c, k = array.shape
        return backend.reshape(array, (o, c, 1, k))

    def config(self):
        return {"out_channels": self.out_channels, "kernel_size": self.kernel_size[1],
                "stride": self.stride[1], "padding": self.padding_arg, "dilation": self.dilation[1],
                "groups": self.groups, "bias": self.use_bias, "in_channels": self.in_channels}
