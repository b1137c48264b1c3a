"""BatchNorm1d and BatchNorm2d with PyTorch's semantics and state_dict names.

Training normalises with the batch statistics (biased variance) and updates the running
statistics (unbiased variance, ``momentum`` 0.1, or a cumulative average when it is None);
evaluation normalises with the running statistics. running_mean, running_var and
num_batches_tracked are non-trainable params: saved and loaded with the weights, never trained.

In a data-parallel job (``Trainer(communicator=...)``) each rank normalises with the statistics
of its own share of the batch by default, as torch's BatchNorm under DDP. ``sync=True``
(ChainerMN's MultiNodeBatchNormalization, torch's SyncBatchNorm) normalises with the statistics
of the whole global batch: the per-channel sums are summed over ranks before normalising and the
gradient sums before the input gradient, so the running statistics stay identical on every rank
and N ranks with batch B train like one process with batch N*B.
"""

from __future__ import annotations

import math

import numpy as np

from .. import init as initializers
from ..arguments import flag, number, optional_integer
from ..backends.base import ConvNorm
from ..errors import ShapeError
from ..net.params import LearnableParams
from .activation import ReLU
from .base import Layer


class _BatchNorm(Layer):
    #: accepted unit-shape ranks and how to name them in errors
    ranks: tuple = ()
    expects: str = ""

    def __init__(self, momentum: float | None = 0.1, eps: float = 1e-5, affine: bool = True,
                 num_features: int | None = None, sync: bool = False):
        super().__init__()
        name = type(self).__name__
        self.momentum = number(name, "momentum", momentum, low=0.0, high=1.0, none_ok=True)
        self.eps = number(name, "eps", eps, low=0.0, low_open=True)
        self.affine = flag(name, "affine", affine)
        self.num_features = optional_integer(name, "num_features", num_features, 1)
        self.sync = flag(name, "sync", sync)
        self.weight = self.bias = None
        self.running_mean = self.running_var = self.num_batches_tracked = None

    def infer_shape(self, unit_shape, path):
        name = type(self).__name__
        if len(unit_shape) not in self.ranks:
            raise ShapeError(f"{path}: {name} expects unit shape {self.expects}, got {unit_shape}")
        if self.num_features is not None and self.num_features != unit_shape[0]:
            raise ShapeError(f"{path}: {name} expects {self.num_features} features (channels), "
                             f"got unit shape {unit_shape}")
        return unit_shape

    def create_params(self, input_shapes, graph):
        channels = self.num_features = input_shapes[0][0]

        def fill(init, shape, dtype=graph.dtype):
            return initializers.make(init, graph.rng, shape, channels, channels, dtype)

        if self.affine:
            self.weight = LearnableParams(fill("ones", (channels,)))
            self.bias = LearnableParams(fill("zeros", (channels,)))
        self.running_mean = LearnableParams(fill("zeros", (channels,)), trainable=False)
        self.running_var = LearnableParams(fill("ones", (channels,)), trainable=False)
        self.num_batches_tracked = LearnableParams(fill("zeros", (), np.int64), trainable=False)

    def params(self):
        stats = {"running_mean": self.running_mean, "running_var": self.running_var,
                 "num_batches_tracked": self.num_batches_tracked}
        return {"weight": self.weight, "bias": self.bias, **stats} if self.affine else stats

    def training_state(self):
        return [self.running_mean, self.running_var, self.num_batches_tracked]

    def capturable(self, training):
        # a cumulative average weighs each batch by 1 / num_batches_tracked: an argument a
        # recorded pass would keep at the value it was recorded with
        return not training or self.momentum is not None

    def step_counters(self):
        return [self.num_batches_tracked]

    def setup(self, backend, ctx):
        unit = ctx.input_shapes[0]
        per_channel = ctx.batch_size * math.prod(unit[1:])
        if ctx.training and per_channel < 2:
            raise ShapeError(f"{ctx.path}: {type(self).__name__} in training needs more than one value per "
                             f"channel, got batch {ctx.batch_size} with unit shape {unit}")
        channels = (self.num_features,)
        ctx.make_buffer("mean", channels)
        ctx.make_buffer("invstd", channels)
        if self.sync and ctx.training:
            ctx.make_buffer("sums", (2 * self.num_features,))  # flat: summed over ranks in one call
            backend.fill(ctx.make_buffer("no_shift", channels), 0.0)
        if not self.affine:  # the kernels take gamma and beta: a fixed scale of 1 and shift of 0
            backend.fill(ctx.make_buffer("ones", channels), 1.0)
            backend.fill(ctx.make_buffer("zeros", channels), 0.0)

    def _scale_shift(self, ctx):
        if self.affine:
            return ctx.param(self.weight), ctx.param(self.bias)
        return ctx.buffer("ones"), ctx.buffer("zeros")

    def _next_momentum(self) -> float:
        """Count this batch; the weight of its statistics in the running ones."""
        tracked = int(self.num_batches_tracked.numpy()) + 1
        self.num_batches_tracked.set(tracked)
        return 1.0 / tracked if self.momentum is None else self.momentum

    def fuses(self, consumers, training) -> bool:
        # a subclass may compute something else
        return len(consumers) == 1 and type(consumers[0]) is ReLU and not self.sync

    def compute_output(self, backend, ctx):
        self._normalise(backend, ctx, ctx.output(), False)

    def compute_output_fused(self, backend, ctx, consumers):
        relu_ctx, = consumers
        self._normalise(backend, ctx, relu_ctx.output(), True)

    def inference_norm(self, ctx) -> ConvNorm:
        """This batch norm in inference, for a convolution before it to apply to its output
        (``ctx``: this layer's NodeContext)."""
        gamma, beta = self._scale_shift(ctx)
        return ConvNorm(gamma, beta, ctx.param(self.running_mean), ctx.param(self.running_var), self.eps)

    def _normalise(self, backend, ctx, out, relu):
        gamma, beta = self._scale_shift(ctx)
        running_mean, running_var = ctx.param(self.running_mean), ctx.param(self.running_var)
        if ctx.training:
            if self.sync:
                self._synced_forward(backend, ctx, gamma, beta, running_mean, running_var)
            else:
                backend.batch_norm_train(ctx.input(), gamma, beta, out, ctx.buffer("mean"),
                                         ctx.buffer("invstd"), running_mean, running_var,
                                         self._next_momentum(), self.eps, ws=ctx.ws, relu=relu)
            ctx.mark_param_written(self.running_mean)
            ctx.mark_param_written(self.running_var)
        else:
            backend.batch_norm_infer(ctx.input(), gamma, beta, running_mean, running_var, self.eps,
                                     out, ws=ctx.ws, relu=relu)

    def _count(self, ctx) -> int:
        """Values per channel in the global batch (every rank's batch has the same size)."""
        return ctx.batch_size * math.prod(ctx.input_shapes[0][1:]) * ctx.ranks

    def _synced_forward(self, backend, ctx, gamma, beta, running_mean, running_var):
        """Two passes, each one small allreduce: the global mean, then the sums of squares about
        it (the variance from raw sums of squares would cancel badly when |mean| >> std)."""
        sums, mean, invstd = ctx.buffer("sums"), ctx.buffer("mean"), ctx.buffer("invstd")
        x, count, zero = ctx.input(), self._count(ctx), ctx.buffer("no_shift")
        backend.batch_norm_sums(x, zero, sums, ws=ctx.ws)
        ctx.allreduce(sums)
        backend.batch_norm_stats(sums, count, zero, mean, invstd, None, None, 0.0, self.eps, ws=ctx.ws)
        backend.batch_norm_sums(x, mean, sums, ws=ctx.ws)
        ctx.allreduce(sums)
        backend.batch_norm_stats(sums, count, mean, mean, invstd, running_mean, running_var,
                                 self._next_momentum(), self.eps, ws=ctx.ws)
        backend.batch_norm_apply(ctx.input(), gamma, beta, mean, invstd, ctx.output(), ws=ctx.ws)

    def compute_gradients(self, backend, ctx):
        self._gradients(backend, ctx, ctx.output_grad, None)

    def compute_gradients_fused(self, backend, ctx, consumers):
        relu_ctx, = consumers
        self._gradients(backend, ctx, relu_ctx.output_grad, relu_ctx.output())

    def _gradients(self, backend, ctx, output_grad, relu_out):
        """``output_grad()``: the gradient to read (called only when one is needed, as it zero-
        fills an unwritten one); ``relu_out``: the fused ReLU's output, or None."""
        gamma, _ = self._scale_shift(ctx)
        dgamma = dbeta = None
        acc_params = False
        if self.affine:
            dgamma, acc_params = ctx.param_grad_target(self.weight)
            dbeta, acc_beta = ctx.param_grad_target(self.bias)
            if (dgamma is None) != (dbeta is None) or (dgamma is not None and acc_params != acc_beta):
                raise RuntimeError(f"{ctx.path}: weight and bias gradients must be kept "
                                   f"(and shared) together")
        dx, acc_dx = ctx.input_grad_target()
        if dx is None and dgamma is None:
            return
        if self.sync:
            # local sums give this rank's dgamma/dbeta (the trainer averages param gradients);
            # the input gradient needs them summed over ranks
            sums, mean, invstd = ctx.buffer("sums"), ctx.buffer("mean"), ctx.buffer("invstd")
            backend.batch_norm_backward_reduce(ctx.input(), output_grad(), mean, invstd, sums, dgamma, dbeta,
                                               accumulate_params=acc_params, ws=ctx.ws)
            if dx is not None:
                ctx.allreduce(sums)
                backend.batch_norm_backward_data(ctx.input(), output_grad(), gamma, mean, invstd, sums,
                                                 self._count(ctx), dx, accumulate=acc_dx, ws=ctx.ws)
            return
        backend.batch_norm_backward(ctx.input(), output_grad(), gamma, ctx.buffer("mean"),
                                    ctx.buffer("invstd"), dx, dgamma, dbeta,
                                    accumulate_dx=acc_dx, accumulate_params=acc_params, ws=ctx.ws,
                                    relu_out=relu_out)

    def config(self):
        return {"momentum": self.momentum, "eps": self.eps, "affine": self.affine,
                "num_features": self.num_features, "sync": self.sync}


class BatchNorm2d(_BatchNorm):
    """Per-channel normalisation of (C, H, W) inputs."""

    ranks = (3,)
    expects = "(channels, height, width)"


class BatchNorm1d(_BatchNorm):
    """Per-feature normalisation of (C,) inputs (after a Linear) or (C, L) sequences."""

    ranks = (1, 2)
    expects = "(features,) or (channels, length)"
