"""The small test networks of juicepy.testing, proved with check_layer; and check_layer itself
catches a wrong gradient."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.testing import (check_layer, conv_bn_relu, conv_pool, dense_head, one_conv, random_inputs,
                             two_convs)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), groups=2, bias=False),
    dict(out_channels=4, kernel_size=3, padding="same", groups=4),
], ids=["default", "every-option", "depthwise-same"])
def test_one_conv(kwargs):
    report = check_layer(one_conv(**kwargs), (4, 7, 8), max_coords=30)
    assert report.max_param_error < 1e-6


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_conv_pool(pool):
    check_layer(conv_pool(pool=pool, padding=1), (2, 6, 6), distinct_inputs=True, max_coords=30,
                expected_output_shape=(4, 3, 3))


def test_two_convs():
    check_layer(two_convs(), (2, 5, 5), expected_output_shape=(6, 5, 5), max_coords=30)


def test_conv_bn_relu():
    check_layer(conv_bn_relu(), (2, 5, 5), batch_size=3, expected_output_shape=(4, 5, 5), max_coords=30)


def test_dense_head():
    check_layer(dense_head(classes=3, hidden=5), (2, 6, 6), expected_output_shape=(3,), max_coords=30)
    with pytest.raises(ValueError, match="pool must be one of"):
        conv_pool(pool="median")


class _WrongGradientConv(L.Conv2d):
    """A conv whose weight gradient is scaled: check_layer must refuse it."""

    def compute_gradients(self, backend, ctx):
        super().compute_gradients(backend, ctx)
        dw, _ = ctx.param_grad_target(self.weight)
        backend.scale(dw, 1.01, dw)


def test_check_layer_catches_a_wrong_gradient():
    with pytest.raises(AssertionError, match="param gradient off"):
        check_layer(_WrongGradientConv(3, 3), (2, 5, 5), max_coords=20)


def test_distinct_inputs_are_well_separated():
    net = jp.Network(L.ReLU(), (3, 4, 4))
    (x,) = random_inputs(net, 2, seed=0, scale=2.0, distinct=True)
    values = np.sort(x.reshape(-1))
    assert values[0] == -2.0 and values[-1] == 2.0
    assert np.min(np.diff(values)) > 4.0 / x.size * 0.99
