import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer


def test_nested_sequential_paths_follow_torch():
    inner = L.Sequential(L.Linear(4), L.ReLU(), L.Linear(3))
    net = jp.Network(L.Sequential(L.Linear(5), inner, L.Sequential(L.Tanh())), input_shape=(6,))
    assert list(net.params) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias"]
    assert [n.path for n in net.nodes] == ["0", "1.0", "1.1", "1.2", "2.0"]
    assert net.output_shape == (3,)


def test_named_children():
    net = jp.Network(L.Sequential({"enc": L.Linear(3), "act": L.ReLU(), "dec": L.Linear(2)}), input_shape=(4,))
    assert list(net.params) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]


def test_nested_gradients():
    check_layer(L.Sequential(L.Linear(4), L.Sequential(L.Tanh(), L.Linear(3)), L.Sigmoid()), (5,), batch_size=3)


def test_shape_error_names_nested_path():
    with pytest.raises(ShapeError, match=r"^1\.1: Linear expects unit shape \(7,\), got \(4,\)"):
        jp.Network(L.Sequential(L.Linear(4), L.Sequential(L.ReLU(), L.Linear(2, in_features=7))), input_shape=(3,))


def test_shared_layer_is_one_set_of_weights_with_summed_gradients(numpy_backend, rng):
    shared = L.Linear(4)
    net = jp.Network(L.Sequential(shared, L.Tanh(), shared), input_shape=(4,), dtype=np.float64)
    assert list(net.params) == ["0.weight", "0.bias"]  # listed once, under its first path
    check_layer(L.Sequential(L.Linear(4), L.Tanh(), L.Linear(4)), (4,))  # sanity of the unshared twin
    x = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    ctx = net.context(numpy_backend, 3, training=True)
    ctx.set_inputs([x])
    ctx.forward()
    ctx.begin_backward()
    numpy_backend.write(ctx.loss_grad(), g)
    ctx.backward()
    w, b = net.get_weights()["0.weight"], net.get_weights()["0.bias"]
    h = np.tanh(x @ w.T + b)
    dh = (g @ w) * (1 - h ** 2)
    expected_dw = g.T @ h + dh.T @ x  # both placements add into one gradient
    np.testing.assert_allclose(ctx.param_grad("0.weight"), expected_dw, rtol=1e-10)
    np.testing.assert_allclose(ctx.param_grad("0.bias"), g.sum(0) + dh.sum(0), rtol=1e-10)


def test_shared_layer_gradient_check():
    shared = L.Linear(3)
    check_layer(L.Sequential(shared, L.Sigmoid(), shared), (3,), batch_size=2)


def test_shared_layer_with_other_input_shape_is_refused():
    shared = L.Linear(3)
    with pytest.raises(ShapeError, match="is shared and was built for input"):
        jp.Network(L.Sequential(shared, L.Linear(5), shared), input_shape=(4,))


def test_non_layer_child():
    with pytest.raises(TypeError, match="not a Layer"):
        L.Sequential(L.ReLU(), "relu")
