import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer, forward_backward


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_shapes_and_parity(bias):
    report = check_layer(L.Linear(5, bias=bias), (4,), batch_size=3, expected_output_shape=(5,),
                         expected=lambda x, w: x[0] @ w["weight"].T + (w["bias"] if bias else 0.0))
    assert report.max_param_error < 1e-6


def test_linear_matches_affine_map(numpy_backend, rng):
    net = jp.Network(L.Linear(3), input_shape=(4,))
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w, b = net.get_weights()["weight"], net.get_weights()["bias"]
    assert w.shape == (3, 4) and b.shape == (3,)  # PyTorch layout (out, in)
    np.testing.assert_allclose(net.transform(numpy_backend, x), x @ w.T + b, rtol=1e-5, atol=1e-6)


def test_linear_default_init_is_torch_uniform_bound():
    net = jp.Network(L.Linear(200), input_shape=(100,), seed=3)
    w = net.get_weights()["weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(100)
    assert np.abs(w).max() > 0.9 / np.sqrt(100)


def test_linear_rejects_unflattened_input_naming_path():
    with pytest.raises(ShapeError, match=r"^1: Linear expects unit shape \(features,\) or \(seq_len, features\), "
                                         r"got \(2, 3, 5\); put a Flatten"):
        jp.Network(L.Sequential(L.ReLU(), L.Linear(4)), input_shape=(2, 3, 5))


def test_linear_declared_in_features_mismatch():
    with pytest.raises(ShapeError, match=r"0: Linear expects unit shape \(5,\), got \(4,\)"):
        jp.Network(L.Sequential(L.Linear(3, in_features=5)), input_shape=(4,))


def test_linear_torch_parity(numpy_backend, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    net = jp.Network(L.Sequential(L.Linear(7)), input_shape=(5,))
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7))
    net.set_weights(ref.state_dict(), strict=True)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    g = rng.standard_normal((4, 7)).astype(np.float32)
    outputs, input_grads, param_grads = forward_backward(net, numpy_backend, [x], [g])
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(outputs[0], yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_grads[0], xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(param_grads["0.weight"], ref[0].weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(param_grads["0.bias"], ref[0].bias.grad.numpy(), rtol=1e-5, atol=1e-5)
