"""The OpenCL backend under real layers, losses, optimizers and training loops."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import load_dataset
from juicepy.models import build_model
from juicepy.train import Adam, Trainer
from juicepy.train.loop import evaluate, fit_epoch


def _steps(backend, optimizer, steps=5, seed=3):
    rng = np.random.default_rng(seed)
    net = jp.Network(L.Sequential(L.Linear(16), L.ReLU(), L.Dropout(0.2), L.Linear(4)), input_shape=(10,), seed=seed)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), optimizer, batch_size=8)
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((8, 10)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        losses.append(trainer.train_minibatch(backend, x, y)[0])
    return losses, net.get_weights()


def _train_digits(backend, epochs=4):
    train, test = load_dataset("digits")
    net = jp.Network(build_model("mlp", train.input_shape, 10), input_shape=train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=2e-3), batch_size=32)
    for epoch in range(epochs):
        fit_epoch(trainer, backend, train, epoch=epoch, progress=False)
    return evaluate(net, backend, test)


def test_mlp_on_digits_reaches_numpy_accuracy(ocl):
    numpy_acc = _train_digits(jp.backend("numpy"))
    opencl_acc = _train_digits(ocl)
    assert numpy_acc > 0.9
    assert abs(opencl_acc - numpy_acc) <= 0.01, (opencl_acc, numpy_acc)


def test_steady_state_step_allocates_nothing_and_reads_back_only_the_loss(ocl, monkeypatch):
    rng = np.random.default_rng(0)
    net = jp.Network(L.Sequential(L.Linear(32), L.ReLU(), L.Dropout(0.3), L.Linear(10)), input_shape=(20,))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=16)
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    trainer.train_minibatch(ocl, x, y)
    trainer.train_minibatch(ocl, x, y)
    reads = []
    real_to_host = ocl.to_host
    monkeypatch.setattr(ocl, "to_host", lambda a: reads.append(a.shape) or real_to_host(a))
    before = ocl.allocations
    for _ in range(3):
        trainer.train_minibatch(ocl, x, y)
    assert ocl.allocations == before
    assert reads == [(1,)] * 3  # the loss scalar, once per step


def test_gpu_configuration_trains_like_numpy(ocl):
    """The kernels and tile sizes a GPU device gets (cooperative GEMM, small local tiles), run
    here on whatever device there is: the same training steps as NumPy."""
    from juicepy.backends.opencl import OpenCLBackend

    gpu_style = OpenCLBackend(ocl.device, gemm_variant="cooperative")
    want_losses, want = _steps(jp.backend("numpy"), Adam(lr=1e-2))
    got_losses, got = _steps(gpu_style, Adam(lr=1e-2))
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_unknown_gemm_variant_is_refused(ocl):
    from juicepy.backends.opencl import OpenCLBackend

    with pytest.raises(ValueError, match="gemm_variant"):
        OpenCLBackend(ocl.device, gemm_variant="fast")
