"""The gradient-check kit itself (juicepy/testing/gradcheck.py): the forward oracle and the one
finite-difference routine catch what they are for."""

import numpy as np
import pytest

from juicepy import layers as L
from juicepy.testing import check_layer, check_loss, finite_difference_error


class _DoubledReLU(L.ReLU):
    """2 * relu(x) with its consistent gradient: finite differences and parity cannot tell it
    from a correct layer; only a forward oracle can."""

    def compute_output(self, backend, ctx):
        super().compute_output(backend, ctx)
        backend.scale(ctx.output(), 2.0, ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is not None:  # dx (+)= 2 * dy where the output is positive
            backend.relu_backward(ctx.output(), ctx.output_grad(), dx, acc, ctx.ws)
            backend.relu_backward(ctx.output(), ctx.output_grad(), dx, True, ctx.ws)


def test_forward_oracle_catches_a_consistently_wrong_layer():
    relu = lambda inputs, weights: np.maximum(inputs[0], 0)  # noqa: E731
    check_layer(_DoubledReLU(), (6,), distinct_inputs=True)  # gradients agree with the (wrong) forward
    with pytest.raises(AssertionError, match="numpy: output 0 differs from expected"):
        check_layer(_DoubledReLU(), (6,), distinct_inputs=True, expected=relu)
    check_layer(L.ReLU(), (6,), distinct_inputs=True, expected=relu)


def test_forward_oracle_gets_the_weights_by_path():
    seen = {}

    def affine(inputs, weights):
        seen.update(weights)
        return inputs[0] @ weights["0.weight"].T + weights["0.bias"]

    check_layer(L.Sequential(L.Linear(3)), (4,), expected=affine)
    assert sorted(seen) == ["0.bias", "0.weight"]


def test_finite_difference_error_measures_the_worst_coordinate():
    x = np.array([0.5, -1.0, 2.0])
    objective = lambda: float(np.sum(x ** 3))  # noqa: E731
    right = 3 * x ** 2
    assert finite_difference_error(x, right, objective, range(3)) < 1e-8
    wrong = right.copy()
    wrong[2] += 1.2  # |numeric| = 12 there: relative error 0.1
    assert finite_difference_error(x, wrong, objective, range(3)) == pytest.approx(0.1, rel=1e-6)
    np.testing.assert_array_equal(x, [0.5, -1.0, 2.0])  # every coordinate put back


def test_check_loss_catches_a_wrong_gradient():
    class _HalfGradientMSE(L.MSE):
        def compute(self, backend, outputs, targets, losses, dx, grad_scale, ws):
            super().compute(backend, outputs, targets, losses, dx, grad_scale * 0.5, ws)

    targets = np.zeros((3, 2))
    check_loss(L.MSE(), (2,), targets)
    with pytest.raises(AssertionError, match="_HalfGradientMSE: gradient off by"):
        check_loss(_HalfGradientMSE(), (2,), targets)
