import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError


def _skip_net():
    x = jp.Input((6,))
    h = L.Linear(4)(x)
    y = h + L.Linear(4)(L.ReLU()(h))
    return x, h, y


def test_builder_makes_nodes_in_call_order_with_stable_names():
    x, h, y = _skip_net()
    net = jp.Network(inputs=x, outputs=y)
    assert [n.path for n in net.nodes] == ["linear", "relu", "linear_1", "add"]
    assert list(net.params) == ["linear.weight", "linear.bias", "linear_1.weight", "linear_1.bias"]
    assert net.input_shape == (6,) and net.output_shape == (4,)


def test_builder_output_matches_hand_computation(backend, rng):
    x, h, y = _skip_net()
    net = jp.Network(inputs=x, outputs=y)
    w = net.get_weights()
    xv = rng.standard_normal((3, 6)).astype(np.float32)
    hv = xv @ w["linear.weight"].T + w["linear.bias"]
    expected = hv + np.maximum(hv, 0) @ w["linear_1.weight"].T + w["linear_1.bias"]
    np.testing.assert_allclose(net.transform(backend, xv), expected, rtol=1e-5, atol=1e-5)


def test_intermediates_by_path_after_forward():
    x, h, y = _skip_net()
    net = jp.Network(inputs=x, outputs=y)
    b = jp.backend("numpy")
    ctx = net.context(b, 2, training=True)
    xv = np.ones((2, 6), np.float32)
    ctx.set_inputs([xv])
    ctx.forward()
    w = net.get_weights()
    np.testing.assert_allclose(b.to_host(ctx.output("linear")), xv @ w["linear.weight"].T + w["linear.bias"], rtol=1e-6)
    ctx.begin_backward()
    b.write(ctx.loss_grad(), np.ones((2, 4), np.float32))
    ctx.backward()
    h = xv @ w["linear.weight"].T + w["linear.bias"]
    dy = np.ones((2, 4), np.float32)
    expected = dy + (dy @ w["linear_1.weight"]) * (h > 0)  # the skip path plus the ReLU path
    np.testing.assert_allclose(b.to_host(ctx.output_grad("linear")), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.to_host(ctx.output_grad("add")), np.ones((2, 4), np.float32))


def test_named_calls_shared_layers_and_concat():
    x = jp.Input((5,))
    enc = L.Linear(3)
    a = enc(x, name="enc")
    b = enc(L.Tanh()(x))  # the same weights at a second place
    y = jp.concat(a, b, name="joined")
    net = jp.Network(inputs=x, outputs=y)
    assert [n.path for n in net.nodes] == ["enc", "tanh", "enc@1", "joined"]
    assert list(net.params) == ["enc.weight", "enc.bias"]
    xv = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    out = net.transform("numpy", xv)
    w = net.get_weights()
    np.testing.assert_allclose(out[:, 3:], np.tanh(xv) @ w["enc.weight"].T + w["enc.bias"], rtol=1e-5, atol=1e-6)


def test_multiple_inputs_and_outputs():
    a, b = jp.Input((3,)), jp.Input((2,))
    joined = jp.concat([a, b])
    out1, out2 = L.Linear(4)(joined), L.Sigmoid()(joined)
    net = jp.Network(inputs=[a, b], outputs=[out1, out2])
    assert net.input_shapes == [(3,), (2,)] and net.output_shapes == [(4,), (5,)]
    r1, r2 = net.transform("numpy", [np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)])
    np.testing.assert_allclose(r2, 0.5)


def test_graph_nests_in_sequential_and_sequential_in_graph():
    x = jp.Input((4,))
    y = L.Sequential(L.Linear(4), L.ReLU())(x) + x
    block = L.Graph(x, y)
    net = jp.Network(L.Sequential(L.Linear(4), block, L.Linear(2)), (3,))
    assert "1.sequential.0.weight" in net.params
    assert net.output_shape == (2,)


def test_errors_are_clear():
    x = jp.Input((4,))
    with pytest.raises(ShapeError, match=r"^linear_1: Linear expects unit shape \(features,\)"):
        jp.Network(inputs=x, outputs=L.Linear(3)(L.Reshape((2, 2, 1))(L.Linear(4)(x))))
    with pytest.raises(TypeError, match="expected a symbolic value"):
        L.Linear(3)(np.zeros((2, 4)))
    other = jp.Input((4,))
    with pytest.raises(ValueError, match="not in inputs"):
        jp.Network(inputs=x, outputs=L.Linear(2)(other) + L.Linear(2)(x))
    with pytest.raises(ValueError, match="both named 'a'"):
        jp.Network(inputs=x, outputs=L.ReLU()(L.Tanh()(x, name="a"), name="a"))
    with pytest.raises(TypeError, match="either"):
        jp.Network(L.ReLU(), (4,), inputs=x, outputs=x)
    with pytest.raises(ShapeError, match=r"^add: Add expects"):
        jp.Network(inputs=x, outputs=x + L.Linear(3)(x))


def test_functional_gradients(rng):
    from juicepy.testing import check_layer

    x = jp.Input((3,))
    h = L.Tanh()(L.Linear(4)(x))
    y = jp.concat(h, L.Linear(2)(x)) + L.Linear(6)(h)
    check_layer(L.Graph(x, y), (3,), expected_output_shape=(6,))


def test_training_steps_on_composed_networks_allocate_nothing(backend):
    from juicepy.train import Adam, Trainer

    x = jp.Input((6,))
    enc = L.Linear(8)
    h = L.ReLU()(enc(x))
    branches = L.Branches(L.Linear(8), L.Sequential(L.Linear(8), L.Tanh()), L.Identity(), merge="concat")
    y = L.Linear(6)(branches(h)) + L.TiedLinear(enc)(L.Residual(L.Linear(8))(h) * h)
    trainer = Trainer(jp.Network(inputs=x, outputs=y), L.MSE(), Adam(), batch_size=4)
    xv = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    for _ in range(2):  # warm-up: context and optimizer state, then (where it captures) the graph
        trainer.train_minibatch(backend, xv, xv)
    before = backend.allocations
    for _ in range(3):
        trainer.train_minibatch(backend, xv, xv)
    assert backend.allocations == before


def test_summary_shows_wiring_and_counts_shared_weights_once():
    x = jp.Input((6,))
    enc = L.Linear(4)
    y = L.TiedLinear(enc)(L.ReLU()(enc(x))) + L.Linear(6)(x)
    net = jp.Network(inputs=x, outputs=y)
    lines = net.summary().splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["add"][-2:] == ["tied_linear,", "linear_1"]
    assert rows["linear"][-1] == "<input>"
    assert rows["tied_linear"][3] == "6"  # its bias only: the weight is the encoder's
    assert sum(int(r[3].replace(",", "")) for r in rows.values()) == net.num_params() == 76


def test_the_issue_example_with_convolutions(backend, monkeypatch):
    from juicepy.net.context import Context

    x = jp.Input((1, 28, 28))
    h = L.Conv2d(8, 3)(x)
    y = h + L.Conv2d(8, 3, padding=1)(h)
    net = jp.Network(inputs=x, outputs=y)
    assert net.output_shape == (8, 26, 26)
    assert [n.path for n in net.nodes] == ["conv2d", "conv2d_1", "add"]
    xv = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    b = jp.backend(backend)
    outputs = []
    for fuse in (True, False):  # fused, the second conv adds h as it stores its sums
        monkeypatch.setattr(Context, "fuse", fuse)
        ctx = net.context(b, 2)
        ctx.set_inputs([xv])
        ctx.forward()
        outputs.append(b.to_host(ctx.output()))
    hv, cv = b.to_host(ctx.output("conv2d")), b.to_host(ctx.output("conv2d_1"))
    for out in outputs:
        np.testing.assert_allclose(out, hv + cv, rtol=1e-6, atol=1e-6)
