import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer, forward_backward

ACTIVATIONS = [L.ReLU, lambda: L.LeakyReLU(0.1), L.Sigmoid, L.Tanh, L.Softmax, L.LogSoftmax]
IDS = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax"]


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


#: forward oracles written without the layers: f(x) of one (batch, 7) float64 input
FORMULAS = [lambda x: np.maximum(x, 0), lambda x: np.where(x > 0, x, 0.1 * x), lambda x: 1 / (1 + np.exp(-x)),
            np.tanh, _softmax, lambda x: np.log(_softmax(x))]


@pytest.mark.parametrize("make,formula", list(zip(ACTIVATIONS, FORMULAS)), ids=IDS)
def test_gradients_shapes_parity(make, formula):
    check_layer(make(), (7,), batch_size=4, expected_output_shape=(7,),
                expected=lambda inputs, weights: formula(inputs[0]))


@pytest.mark.parametrize("make", [L.ReLU, L.Sigmoid, L.Tanh, lambda: L.LeakyReLU(0.2)], ids=IDS[:3] + ["leaky"])
def test_elementwise_on_images_keep_shape(make):
    check_layer(make(), (2, 3, 3), batch_size=2, expected_output_shape=(2, 3, 3))


def _forward(layer, x, backend=None):
    backend = backend or jp.backend("numpy")
    net = jp.Network(layer, input_shape=x.shape[1:], dtype=x.dtype)
    return net.transform(backend, x)


def test_relu_is_nonnegative_and_identity_on_positives(backend, rng):
    x = rng.standard_normal((50, 9)).astype(np.float32) * 3
    y = _forward(L.ReLU(), x, backend)
    assert (y >= 0).all()
    np.testing.assert_array_equal(y[x > 0], x[x > 0])


def test_leaky_relu_slope(backend):
    x = np.array([[-2.0, -0.5, 0.0, 3.0]], np.float32)
    np.testing.assert_allclose(_forward(L.LeakyReLU(0.1), x, backend), [[-0.2, -0.05, 0.0, 3.0]], rtol=1e-6)


def test_sigmoid_range_and_no_overflow(backend):
    x = np.array([[-1000.0, -30.0, 0.0, 30.0, 1000.0]], np.float32)
    with np.errstate(all="raise"):
        y = _forward(L.Sigmoid(), x, backend)
    assert np.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    assert y[0, 2] == pytest.approx(0.5)


def test_tanh_is_odd_and_bounded(backend, rng):
    x = rng.standard_normal((20, 5)).astype(np.float32) * 4
    y = _forward(L.Tanh(), np.concatenate([x, -x]), backend)
    np.testing.assert_allclose(y[:20], -y[20:], atol=1e-6)
    assert (np.abs(y) <= 1).all()


def test_softmax_rows_sum_to_one_even_for_huge_logits(backend, rng):
    x = (rng.standard_normal((16, 10)) * 50 + 1000).astype(np.float32)
    y = _forward(L.Softmax(), x, backend)
    assert np.isfinite(y).all() and (y >= 0).all()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_log_softmax_exponentiates_to_distribution(backend, rng):
    x = (rng.standard_normal((16, 10)) * 30).astype(np.float32)
    y = _forward(L.LogSoftmax(), x, backend)
    assert (y <= 1e-6).all()
    np.testing.assert_allclose(np.exp(y).sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_needs_flat_input():
    with pytest.raises(ShapeError, match=r"Softmax expects unit shape \(classes,\), got \(2, 3\)"):
        jp.Network(L.Softmax(), input_shape=(2, 3))


@pytest.mark.parametrize("ours,theirs", [
    (L.ReLU, "ReLU"), (lambda: L.LeakyReLU(0.03), "LeakyReLU"), (L.Sigmoid, "Sigmoid"), (L.Tanh, "Tanh"),
    (L.Softmax, "Softmax"), (L.LogSoftmax, "LogSoftmax")])
def test_torch_parity(ours, theirs, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    kwargs = {"negative_slope": 0.03} if theirs == "LeakyReLU" else {"dim": 1} if "Softmax" in theirs else {}
    ref = getattr(torch.nn, theirs)(**kwargs)
    x = rng.standard_normal((6, 8)).astype(np.float32) * 2
    g = rng.standard_normal((6, 8)).astype(np.float32)
    net = jp.Network(ours(), input_shape=(8,))
    outputs, input_grads, _ = forward_backward(net, jp.backend("numpy"), [x], [g])
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(outputs[0], yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_grads[0], xt.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slope,error,message", [
    (float("nan"), ValueError, r"LeakyReLU: negative_slope must be a finite number, got nan"),
    (float("-inf"), ValueError, r"LeakyReLU: negative_slope must be a finite number, got -inf"),
    ("0.1", TypeError, r"LeakyReLU: negative_slope must be a number, got str '0.1'"),
])
def test_leaky_relu_refuses_a_slope_that_is_not_a_finite_number(slope, error, message):
    with pytest.raises(error, match=message):
        L.LeakyReLU(slope)
