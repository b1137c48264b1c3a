"""BatchNorm1d / BatchNorm2d: textbook formulas for training and evaluation, running statistics,
gradient checks, errors, and parity with PyTorch (including loading a state_dict)."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.backends.numpy import spatial as numpy_spatial
from juicepy.testing import check_layer, forward_backward


@pytest.fixture(autouse=True, params=["c-kernels", "numpy"])
def batch_norm_path(request, monkeypatch):
    """Every test runs on both NumPy-backend batch-norm paths: the C passes (on every input
    size, however small its planes) and the ufuncs."""
    shared = jp.backend("numpy")
    if request.param == "numpy":
        monkeypatch.setattr(shared, "norm_kernels", None)
    elif shared.norm_kernels is None:
        pytest.skip("the C norm kernels are not loaded (not built for lack of a C compiler, or JUICEPY_CPU_KERNELS=numpy)")
    else:
        monkeypatch.setattr(numpy_spatial, "NORM_MIN_INNER", 1)
    return request.param


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _channel(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _train_forward(net, x):
    """One training-mode forward pass; returns the output."""
    ctx = net.context(jp.backend("numpy"), x.shape[0], training=True)
    ctx.set_inputs([x])
    ctx.forward()
    return jp.backend("numpy").to_host(ctx.output())


@pytest.mark.parametrize("layer, shape", [(L.BatchNorm2d(), (3, 4, 5)), (L.BatchNorm1d(), (6,)),
                                          (L.BatchNorm1d(), (3, 7)), (L.BatchNorm2d(sync=True), (3, 4, 5)),
                                          (L.BatchNorm1d(sync=True), (6,))],
                         ids=["2d", "1d-features", "1d-sequence", "2d-sync", "1d-sync"])
def test_training_normalises_with_batch_statistics(layer, shape):
    net = jp.Network(layer, shape, dtype=np.float64)
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2.0, shape[0]), rng.standard_normal(shape[0])
    net.set_weights({"weight": gamma, "bias": beta})
    x = rng.standard_normal((8,) + shape) * 3.0 + 1.5
    y = _train_forward(net, x)
    mean = x.mean(axis=_axes(x))
    var = x.var(axis=_axes(x))  # biased, as the normalisation uses
    expected = (x - _channel(mean, x)) / np.sqrt(_channel(var, x) + 1e-5) * _channel(gamma, x) + _channel(beta, x)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    # property: with gamma=1, beta=0 every channel comes out with mean 0 and variance ~1
    net.set_weights({"weight": np.ones(shape[0]), "bias": np.zeros(shape[0])})
    y = _train_forward(net, x)
    np.testing.assert_allclose(y.mean(axis=_axes(y)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=_axes(y)), var / (var + 1e-5), rtol=1e-10)


@pytest.mark.parametrize("sync", [False, True], ids=["local", "sync"])
def test_running_statistics_follow_the_textbook_updates(sync):
    momentum, eps = 0.3, 1e-3
    net = jp.Network(L.BatchNorm2d(momentum=momentum, eps=eps, sync=sync), (2, 3, 3), dtype=np.float64)
    rng = np.random.default_rng(1)
    running_mean, running_var = np.zeros(2), np.ones(2)
    for step in range(4):
        x = rng.standard_normal((5, 2, 3, 3)) * (step + 1) + step
        _train_forward(net, x)
        count = x.size // 2
        running_mean = (1 - momentum) * running_mean + momentum * x.mean(axis=(0, 2, 3))
        unbiased = x.var(axis=(0, 2, 3)) * count / (count - 1)
        running_var = (1 - momentum) * running_var + momentum * unbiased
    w = net.get_weights()
    np.testing.assert_allclose(w["running_mean"], running_mean, rtol=1e-12)
    np.testing.assert_allclose(w["running_var"], running_var, rtol=1e-12)
    assert int(w["num_batches_tracked"]) == 4
    # evaluation uses the running statistics, not the batch's
    x = rng.standard_normal((3, 2, 3, 3))
    gamma, beta = w["weight"], w["bias"]
    expected = (x - _channel(running_mean, x)) / np.sqrt(_channel(running_var, x) + eps) * _channel(gamma, x) \
        + _channel(beta, x)
    np.testing.assert_allclose(net.transform("numpy", x), expected, rtol=1e-12)
    assert int(net.get_weights()["num_batches_tracked"]) == 4  # evaluation does not count


@pytest.mark.parametrize("sync", [False, True], ids=["local", "sync"])
def test_momentum_none_is_a_cumulative_average(sync):
    net = jp.Network(L.BatchNorm1d(momentum=None, sync=sync), (3,), dtype=np.float64)
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((6, 3)) + k for k in range(3)]
    for x in batches:
        _train_forward(net, x)
    np.testing.assert_allclose(net.get_weights()["running_mean"], np.mean([x.mean(axis=0) for x in batches], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(net.get_weights()["running_var"],
                               np.mean([x.var(axis=0, ddof=1) for x in batches], axis=0), rtol=1e-12)


def test_train_and_eval_differ_and_the_trainer_updates_running_stats():
    from juicepy.train import SGD, Trainer

    net = jp.Network(L.Sequential(L.Linear(4), L.BatchNorm1d(), L.ReLU(), L.Linear(2)), (3,))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), SGD(lr=0.1), batch_size=8)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 3)) * 2 + 3).astype(np.float32)
    trainer.train_minibatch("numpy", x, rng.integers(0, 2, 8))
    w = net.get_weights()
    assert int(w["1.num_batches_tracked"]) == 1
    assert not np.allclose(w["1.running_mean"], 0.0)
    train_out = _train_forward(net, x)
    assert not np.allclose(train_out, net.transform("numpy", x), atol=1e-3)


@pytest.mark.parametrize("layer, shape", [
    (L.BatchNorm2d(), (3, 4, 5)), (L.BatchNorm1d(), (5,)), (L.BatchNorm1d(), (2, 6)),
    (L.BatchNorm2d(affine=False), (2, 3, 3)), (L.BatchNorm2d(momentum=None, eps=1e-3), (2, 3, 3)),
    (L.BatchNorm2d(sync=True), (3, 4, 5)), (L.BatchNorm1d(sync=True), (5,)),
    (L.BatchNorm2d(affine=False, sync=True), (2, 3, 3))],
    ids=["2d", "1d", "1d-seq", "no-affine", "cumulative", "2d-sync", "1d-sync", "no-affine-sync"])
def test_batchnorm_gradcheck_and_backend_parity(layer, shape):
    report = check_layer(layer, shape, batch_size=4, max_coords=40)
    assert report.output_shapes == [shape]


def test_batchnorm_params_and_buffers():
    net = jp.Network(L.Sequential(L.Conv2d(4, 3), L.BatchNorm2d()), (2, 6, 6))
    assert list(net.get_weights()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                       "1.running_var", "1.num_batches_tracked"]
    assert set(net.trainable_params()) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert net.get_weights()["1.num_batches_tracked"].dtype == np.int64
    no_affine = jp.Network(L.BatchNorm2d(affine=False), (2, 6, 6))
    assert list(no_affine.get_weights()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_batchnorm_errors():
    with pytest.raises(ShapeError, match="bn: BatchNorm2d expects unit shape \\(channels, height, width\\)"):
        jp.Network(L.Sequential({"bn": L.BatchNorm2d()}), (4,))
    with pytest.raises(ShapeError, match="bn: BatchNorm1d expects 3 features"):
        jp.Network(L.Sequential({"bn": L.BatchNorm1d(num_features=3)}), (4,))
    net = jp.Network(L.Sequential({"bn": L.BatchNorm1d()}), (4,))
    before = net.get_weights()
    with pytest.raises(ShapeError, match="bn: BatchNorm1d in training needs more than one value per channel"):
        net.context(jp.backend("numpy"), 1, training=True)
    assert all(np.array_equal(v, net.get_weights()[k]) for k, v in before.items())
    net.transform("numpy", np.ones((1, 4), np.float32))  # evaluation of one row is fine
    with pytest.raises(ValueError, match="momentum"):
        L.BatchNorm2d(momentum=1.5)
    assert L.BatchNorm2d(**L.BatchNorm2d(momentum=None, eps=1e-3).config()).config()["momentum"] is None


# ------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("sync", [False, True], ids=["local", "sync"])
@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_batchnorm_matches_torch_train_eval_and_state_dict(kind, sync):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    shape = (3, 5, 4) if kind == "2d" else (3,)
    tbn = (torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)(3, momentum=0.2)
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 1.5)
        tbn.bias.uniform_(-1, 1)
    net = jp.Network((L.BatchNorm2d if kind == "2d" else L.BatchNorm1d)(momentum=0.2, sync=sync), shape)
    net.set_weights(tbn.state_dict(), strict=True)
    rng = np.random.default_rng(0)
    for step in range(3):
        x = (rng.standard_normal((6,) + shape) * 2 + step).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        tbn.zero_grad()
        yt = tbn(xt)
        yt.backward(torch.from_numpy(dy))
        (y,), (dx,), grads = forward_backward(net, jp.backend("numpy"), [x], [dy])
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grads["weight"], tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grads["bias"], tbn.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    state = tbn.state_dict()
    mine = net.get_weights()
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(mine[key], state[key].numpy(), rtol=1e-5, atol=1e-6)
    assert int(mine["num_batches_tracked"]) == int(state["num_batches_tracked"]) == 3
    tbn.eval()
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    np.testing.assert_allclose(net.transform("numpy", x), tbn(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_torch_conv_bn_state_dict_loads_as_is():
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5))
    model.train()
    x = torch.randn(8, 2, 6, 6)
    model(x)  # moves the running statistics away from their defaults
    model.eval()
    net = jp.Network(L.Sequential(L.Conv2d(4, 3, padding=1, bias=False), L.BatchNorm2d(), L.ReLU(),
                                  L.MaxPool2d(2), L.Flatten(), L.Linear(5)), (2, 6, 6))
    net.set_weights(model.state_dict(), strict=True)
    np.testing.assert_allclose(net.transform("numpy", x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(eps=float("nan")), ValueError, r"BatchNorm1d: eps must be a finite number > 0, got nan"),
    (dict(eps=0.0), ValueError, r"BatchNorm1d: eps must be a finite number > 0, got 0.0"),
    (dict(eps=-1e-5), ValueError, r"BatchNorm1d: eps must be a finite number > 0, got -1e-05"),
    (dict(momentum=1.5), ValueError, r"BatchNorm1d: momentum must be a finite number in \[0, 1\] or None, got 1.5"),
    (dict(momentum=float("nan")), ValueError, r"BatchNorm1d: momentum must be a finite number in \[0, 1\] or None, got nan"),
    (dict(momentum="0.1"), TypeError, r"BatchNorm1d: momentum must be a number or None, got str '0.1'"),
    (dict(affine="no"), TypeError, r"BatchNorm1d: affine must be True or False, got str 'no'"),
])
def test_bad_settings_are_refused_with_the_argument_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        L.BatchNorm1d(**kwargs)
