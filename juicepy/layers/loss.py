"""Losses: each turns the network's output and the targets into per-row losses and the
gradient of the mean loss w.r.t. the output, in one fused backend op."""

from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError, LabelError, ShapeError


class Loss:
    """Reduction is the mean (PyTorch's default) over what :meth:`count` says."""

    def check_output(self, unit_shape: tuple) -> None:
        """Raise ShapeError when the network's output cannot feed this loss."""

    def target_shape(self, unit_shape: tuple) -> tuple:
        raise NotImplementedError

    def target_dtype(self, network_dtype) -> np.dtype:
        raise NotImplementedError

    def count(self, batch: int, unit_shape: tuple) -> int:
        """How many terms the mean divides by."""
        return batch

    def check_targets(self, targets: np.ndarray, unit_shape: tuple, batch: int, network_dtype) -> np.ndarray:
        """Validate host targets; returns them in the dtype the backend op takes."""
        expected = (batch,) + self.target_shape(unit_shape)
        if tuple(targets.shape) != expected:
            raise ShapeError(f"{type(self).__name__} targets: expected shape {expected}, got {tuple(targets.shape)}")
        return targets

    def compute(self, backend, outputs, targets, losses, dx, grad_scale, ws) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ClassLabels(Loss):
    """Targets are integer class indices in [0, classes)."""

    def check_output(self, unit_shape):
        if len(unit_shape) != 1:
            raise ShapeError(f"{type(self).__name__}: network output must have unit shape (classes,), got {unit_shape}")

    def target_shape(self, unit_shape):
        return ()

    def target_dtype(self, network_dtype):
        return np.dtype(np.int32)

    def check_targets(self, targets, unit_shape, batch, network_dtype):
        targets = super().check_targets(targets, unit_shape, batch, network_dtype)
        if targets.dtype.kind not in "iu":
            raise DTypeError(f"{type(self).__name__} targets: expected integer class labels, got dtype {targets.dtype}")
        classes = unit_shape[0]
        if targets.size:
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or hi >= classes:
                bad = lo if lo < 0 else hi
                raise LabelError(f"{type(self).__name__} targets: label {bad} out of range [0, {classes})")
        return targets.astype(np.int32, copy=False)


class SoftmaxCrossEntropy(_ClassLabels):
    """Cross-entropy of logits against integer labels (torch.nn.CrossEntropyLoss)."""

    def compute(self, backend, outputs, targets, losses, dx, grad_scale, ws):
        backend.softmax_cross_entropy(outputs, targets, losses, dx, grad_scale, ws)


class NegativeLogLikelihood(_ClassLabels):
    """NLL of log-probabilities (a LogSoftmax output) against integer labels (torch.nn.NLLLoss)."""

    def compute(self, backend, outputs, targets, losses, dx, grad_scale, ws):
        backend.nll_loss(outputs, targets, losses, dx, grad_scale, ws)


class MSE(Loss):
    """Mean squared error over every element (torch.nn.MSELoss)."""

    def target_shape(self, unit_shape):
        return tuple(unit_shape)

    def target_dtype(self, network_dtype):
        return np.dtype(network_dtype)

    def count(self, batch, unit_shape):
        return batch * math.prod(unit_shape)

    def check_targets(self, targets, unit_shape, batch, network_dtype):
        targets = super().check_targets(targets, unit_shape, batch, network_dtype)
        if targets.dtype != np.dtype(network_dtype):
            raise DTypeError(f"MSE targets: expected dtype {np.dtype(network_dtype)}, got {targets.dtype}")
        return targets

    def compute(self, backend, outputs, targets, losses, dx, grad_scale, ws):
        backend.mse_loss(outputs, targets, losses, dx, grad_scale, ws)


MSELoss = MSE
CrossEntropyLoss = SoftmaxCrossEntropy
NLLLoss = NegativeLogLikelihood
