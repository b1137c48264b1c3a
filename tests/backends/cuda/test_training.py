"""The CUDA backend under whole training runs: the digits MLP and LeNet reach NumPy's accuracy
with graph replay on (on a GPU, or on the CPU emulator in CI)."""

import contextlib

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable
from juicepy.data import load_dataset
from juicepy.models import build_model
from juicepy.train import Adam, Trainer
from juicepy.train.loop import evaluate, fit_epoch
from cuda_emulator import cupy as emulated


@pytest.fixture(scope="module")
def cuda():
    try:
        backend = jp.backend("cuda")
    except BackendUnavailable as exc:
        pytest.skip(f"no CUDA device and no emulator ({str(exc)[:160]})")
    emulator = emulated.active()
    # Every kernel these runs launch is run in both thread orders by the op tests; whole
    # training runs use one order on the emulator to keep CI short.
    with emulator.scheduled("forward") if emulator is not None else contextlib.nullcontext():
        yield backend


def _train(backend, model, epochs, lr):
    train, test = load_dataset("digits", seed=0)
    net = jp.Network(build_model(model, train.input_shape, train.classes), input_shape=train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=lr), batch_size=32)
    for epoch in range(epochs):
        fit_epoch(trainer, backend, train, epoch=epoch, progress=False)
    return evaluate(net, backend, test), trainer


@pytest.mark.parametrize("model, epochs, lr, floor", [("mlp", 4, 2e-3, 0.9), ("lenet", 6, 3e-3, 0.9)])
def test_digits_training_reaches_numpy_accuracy_with_graph_replay(cuda, model, epochs, lr, floor):
    numpy_acc, _ = _train(jp.backend("numpy"), model, epochs, lr)
    cuda_acc, trainer = _train(cuda, model, epochs, lr)
    replay = trainer.state(cuda).replay
    assert replay.graph is not None, replay.failure  # the steps after the first two were replayed
    assert numpy_acc >= floor
    assert abs(cuda_acc - numpy_acc) <= 0.01, (cuda_acc, numpy_acc)


def _bn_trainer(graphs):
    body = L.Sequential(L.Conv2d(6, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                        L.Linear(10), L.BatchNorm1d(), L.ReLU(), L.Linear(4))
    net = jp.Network(body, input_shape=(3, 8, 8), seed=0)
    return Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8, graphs=graphs)


def test_batchnorm_network_steps_replay_as_op_by_op(cuda):
    """Replayed steps of a BatchNorm network equal op-by-op steps on the same device: losses,
    weights, running statistics and the batch counter (counted on the host per replay)."""
    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((8, 3, 8, 8)).astype(np.float32), rng.integers(0, 4, 8)) for _ in range(5)]
    replayed, eager = _bn_trainer(graphs=True), _bn_trainer(graphs=False)
    for x, y in batches:
        assert replayed.train_minibatch(cuda, x, y)[0] == eager.train_minibatch(cuda, x, y)[0]
    replay = replayed.state(cuda).replay
    assert replay.graph is not None, replay.failure
    got, expected = replayed.network.get_weights(), eager.network.get_weights()
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert int(got["1.num_batches_tracked"]) == int(got["6.num_batches_tracked"]) == 5
