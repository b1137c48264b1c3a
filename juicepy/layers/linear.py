"""Linear: y = x @ W.T + b with PyTorch's (out, in) weight layout."""

from __future__ import annotations

from .. import init as initializers
from .. import arguments
from ..errors import ShapeError
from ..net.params import LearnableParams
from .base import Layer, bias_gradient


class Linear(Layer):
    def __init__(self, out_features: int, bias: bool = True, in_features: int | None = None,
                 weight_init="torch", bias_init="torch"):
        super().__init__()
        self.out_features = arguments.integer("Linear", "out_features", out_features, 1)
        self.use_bias = arguments.flag("Linear", "bias", bias)
        self.in_features = arguments.optional_integer("Linear", "in_features", in_features, 1)
        self.weight_init = arguments.initializer("Linear", "weight_init", weight_init)
        self.bias_init = arguments.initializer("Linear", "bias_init", bias_init)
        self.weight: LearnableParams | None = None
        self.bias: LearnableParams | None = None

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) not in (1, 2):
            raise ShapeError(f"{path}: Linear expects unit shape (features,) or (seq_len, features), got "
                             f"{unit_shape}; put a Flatten before it")
        if self.in_features is not None and self.in_features != unit_shape[-1]:
            raise ShapeError(f"{path}: Linear expects unit shape ({self.in_features},), got {unit_shape}")
        return tuple(unit_shape[:-1]) + (self.out_features,)

    def create_params(self, input_shapes, graph):
        fan_in = self.in_features = input_shapes[0][-1]
        shape = (self.out_features, fan_in)
        self.weight = LearnableParams(initializers.make(self.weight_init, graph.rng, shape, fan_in,
                                                        self.out_features, graph.dtype))
        if self.use_bias:
            self.bias = LearnableParams(initializers.make(self.bias_init, graph.rng, (self.out_features,),
                                                          fan_in, self.out_features, graph.dtype))

    def params(self):
        return {"weight": self.weight, "bias": self.bias} if self.use_bias else {"weight": self.weight}

    @staticmethod
    def _rows(backend, ctx, arr):
        """A (seq_len, features) unit acts on its last axis, as torch's Linear: one row per step."""
        if arr.ndim == 2:
            return arr
        return backend.reshape(arr, (ctx.batch_size * arr.shape[1], arr.shape[2]))

    def compute_output(self, backend, ctx):
        y = self._rows(backend, ctx, ctx.output())
        backend.gemm(self._rows(backend, ctx, ctx.input()), ctx.param(self.weight), y, trans_b=True)
        if self.use_bias:
            backend.add_bias(y, ctx.param(self.bias))

    def compute_gradients(self, backend, ctx):
        dy = self._rows(backend, ctx, ctx.output_grad())
        dw, acc = ctx.param_grad_target(self.weight)
        if dw is not None:
            backend.gemm(dy, self._rows(backend, ctx, ctx.input()), dw, trans_a=True, beta=float(acc), ws=ctx.ws)
        if self.use_bias:
            bias_gradient(backend, ctx, self.bias, dy)
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.gemm(dy, ctx.param(self.weight), self._rows(backend, ctx, dx), beta=float(acc), ws=ctx.ws)

    def config(self):
        return {"out_features": self.out_features, "bias": self.use_bias, "in_features": self.in_features}


class TiedLinear(Layer):
    """y = x @ W + b where W is another Linear's weight (out, in): the transposed map, as in a
    tied autoencoder's decoder. The weight is one param: its gradients from both layers add up
    and it is saved, listed and updated once (under the encoder's path)."""

    def __init__(self, tied_to: Linear, bias: bool = True, bias_init="zeros"):
        super().__init__()
        if not isinstance(tied_to, Linear):
            raise TypeError(f"TiedLinear ties to a Linear layer, got {type(tied_to).__name__}")
        self.tied_to = tied_to
        self.use_bias = arguments.flag("TiedLinear", "bias", bias)
        self.bias_init = arguments.initializer("TiedLinear", "bias_init", bias_init)
        self.bias: LearnableParams | None = None

    @property
    def weight(self) -> LearnableParams:
        return self.tied_to.weight

    def infer_shape(self, unit_shape, path):
        encoder = self.tied_to
        if encoder.weight is None:
            raise ShapeError(f"{path}: TiedLinear's tied_to layer must be placed (built) before it")
        if tuple(unit_shape) != (encoder.out_features,):
            raise ShapeError(f"{path}: TiedLinear expects unit shape ({encoder.out_features},) "
                             f"(the tied layer's output), got {unit_shape}")
        return (encoder.in_features,)

    def create_params(self, input_shapes, graph):
        encoder = self.tied_to
        if self.use_bias:
            self.bias = LearnableParams(initializers.make(self.bias_init, graph.rng, (encoder.in_features,),
                                                          encoder.out_features, encoder.in_features, graph.dtype))

    def params(self):
        return {"weight": self.weight, "bias": self.bias} if self.use_bias else {"weight": self.weight}

    def compute_output(self, backend, ctx):
        y = ctx.output()
        backend.gemm(ctx.input(), ctx.param(self.weight), y)
        if self.use_bias:
            backend.add_bias(y, ctx.param(self.bias))

    def compute_gradients(self, backend, ctx):
        dy = ctx.output_grad()
        dw, acc = ctx.param_grad_target(self.weight)
        if dw is not None:  # dW = x.T @ dy, shape (out, in) of the tied weight
            backend.gemm(ctx.input(), dy, dw, trans_a=True, beta=float(acc), ws=ctx.ws)
        if self.use_bias:
            bias_gradient(backend, ctx, self.bias, dy)
        dx, acc = ctx.input_grad_target()
        if dx is not None:
            backend.gemm(dy, ctx.param(self.weight), dx, trans_b=True, beta=float(acc), ws=ctx.ws)

    def config(self):
        return {"tied_to": self.tied_to, "bias": self.use_bias}
