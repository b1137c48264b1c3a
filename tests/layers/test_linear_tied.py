import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer
from juicepy.train import SGD, Trainer


def _autoencoder():
    enc = L.Linear(3)
    return enc, L.Sequential(enc, L.Tanh(), L.TiedLinear(enc))


def test_tied_autoencoder_gradients_and_parity():
    _, model = _autoencoder()
    report = check_layer(model, (5,), expected_output_shape=(5,))
    assert report.max_param_error < 1e-5


def test_tied_weight_is_one_param_listed_once():
    enc, model = _autoencoder()
    net = jp.Network(model, (5,))
    assert list(net.params) == ["0.weight", "0.bias", "2.bias"]
    assert net.nodes[2].descriptor.params["weight"] is enc.weight
    assert net.num_params() == 15 + 3 + 5


def test_tied_output_uses_the_transposed_weight(backend, rng):
    enc, model = _autoencoder()
    net = jp.Network(model, (5,))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    w = net.get_weights()
    h = np.tanh(x @ w["0.weight"].T + w["0.bias"])
    np.testing.assert_allclose(net.transform(backend, x), h @ w["0.weight"] + w["2.bias"], rtol=1e-5, atol=1e-5)


def test_tied_gradients_add_up():
    # the shared weight's gradient is the encoder's part plus the decoder's part
    enc, model = _autoencoder()
    net = jp.Network(model, (5,), dtype=np.float64)
    b = jp.backend("numpy")
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    ctx = net.context(b, 4, training=True)
    ctx.set_inputs([x])
    ctx.forward()
    ctx.begin_backward()
    b.write(ctx.loss_grad(), dy)
    ctx.backward()
    w = net.get_weights()
    h = np.tanh(x @ w["0.weight"].T + w["0.bias"])
    dh = dy @ w["0.weight"].T
    dpre = dh * (1 - h * h)
    expected = h.T @ dy + dpre.T @ x
    np.testing.assert_allclose(ctx.param_grad("0.weight"), expected, rtol=1e-10)


def test_tied_layer_trains_weight_once():
    enc, model = _autoencoder()
    net = jp.Network(model, (5,))
    trainer = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=8)
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    first, _ = trainer.train_minibatch("numpy", x, x)
    for _ in range(30):
        loss, _ = trainer.train_minibatch("numpy", x, x)
    assert loss < first


def test_tied_layer_errors():
    enc = L.Linear(3)
    with pytest.raises(ShapeError, match="must be placed"):
        jp.Network(L.Sequential(L.TiedLinear(enc), enc), (3,))
    enc = L.Linear(3)
    with pytest.raises(ShapeError, match=r"^2: TiedLinear expects unit shape \(3,\)"):
        jp.Network(L.Sequential(enc, L.Linear(4), L.TiedLinear(enc)), (5,))
    with pytest.raises(TypeError, match="ties to a Linear"):
        L.TiedLinear(L.ReLU())


def test_tied_matches_torch(rng):
    torch = pytest.importorskip("torch")
    enc, model = _autoencoder()
    net = jp.Network(model, (5,))
    w = {k: torch.from_numpy(v) for k, v in net.get_weights().items()}
    x = rng.standard_normal((2, 5)).astype(np.float32)
    xt = torch.from_numpy(x)
    expected = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(xt, w["0.weight"], w["0.bias"])),
                                          w["0.weight"].T, w["2.bias"])
    np.testing.assert_allclose(net.transform("numpy", x), expected.numpy(), rtol=1e-5, atol=1e-6)
