"""Embedding: integer indices to rows of a learned table, with PyTorch's (num, dim) weight."""

from __future__ import annotations

import numpy as np

from .. import arguments
from .. import init as initializers
from ..errors import IndicesError, ShapeError
from ..net.params import LearnableParams
from .base import Layer


class Embedding(Layer):
    """Indices of unit shape (seq_len,) (any unit shape) to vectors: output unit + (dim,).

    The row ``padding_idx`` starts at zero and gets no gradient, as in torch. Indices outside
    [0, num_embeddings) are refused with an IndicesError before anything changes.
    """

    integer_input = True

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 weight_init="normal"):
        super().__init__()
        self.num_embeddings = arguments.integer("Embedding", "num_embeddings", num_embeddings, 1)
        self.embedding_dim = arguments.integer("Embedding", "embedding_dim", embedding_dim, 1)
        if padding_idx is not None:
            # torch counts a negative one from the end
            padding_idx = arguments.integer("Embedding", "padding_idx (within num_embeddings)", padding_idx,
                                            -self.num_embeddings, self.num_embeddings - 1) % self.num_embeddings
        self.padding_idx = padding_idx
        self.weight_init = weight_init if isinstance(weight_init, str) and weight_init == "normal" else \
            arguments.initializer("Embedding", "weight_init ('normal', torch's)", weight_init)
        self.weight: LearnableParams | None = None

    def infer_shape(self, unit_shape, path):
        if len(unit_shape) < 1:
            raise ShapeError(f"{path}: Embedding expects unit shape (seq_len,), got {tuple(unit_shape)}")
        return tuple(unit_shape) + (self.embedding_dim,)

    def create_params(self, input_shapes, graph):
        init = initializers.normal(1.0) if self.weight_init == "normal" else self.weight_init
        shape = (self.num_embeddings, self.embedding_dim)
        values = initializers.make(init, graph.rng, shape, self.num_embeddings, self.embedding_dim, graph.dtype)
        if self.padding_idx is not None:
            values[self.padding_idx] = 0.0
        self.weight = LearnableParams(values)

    def params(self):
        return {"weight": self.weight}

    def check_input_values(self, path, index, values):
        if values.size == 0:
            return
        low, high = int(np.min(values)), int(np.max(values))
        if low < 0 or high >= self.num_embeddings:
            raise IndicesError(f"{path}: Embedding indices must lie in [0, {self.num_embeddings}), got values "
                               f"from {low} to {high}")

    def _flat(self, backend, ctx):
        rows = ctx.batch_size * int(np.prod(ctx.input_shapes[0]))
        return (backend.reshape(ctx.input(), (rows,)), rows)

    def compute_output(self, backend, ctx):
        indices, rows = self._flat(backend, ctx)
        backend.embedding(indices, ctx.param(self.weight),
                          backend.reshape(ctx.output(), (rows, self.embedding_dim)))

    def compute_gradients(self, backend, ctx):
        dw, acc = ctx.param_grad_target(self.weight)
        if dw is None:
            return
        indices, rows = self._flat(backend, ctx)
        backend.embedding_backward(indices, backend.reshape(ctx.output_grad(), (rows, self.embedding_dim)), dw,
                                   self.padding_idx, accumulate=acc, ws=ctx.ws)

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx}
