"""The OpenCL backend under real layers, losses, optimizers and training loops."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import load_dataset
from juicepy.models import build_model
from juicepy.testing import check_layer, check_loss
from juicepy.train import SGD, Adam, AdamW, Trainer
from juicepy.train.loop import evaluate, fit_epoch

LAYERS = [
    (lambda: L.Linear(5), (7,)),
    (lambda: L.Linear(3, bias=False), (4,)),
    (lambda: L.ReLU(), (6,)),
    (lambda: L.LeakyReLU(0.2), (6,)),
    (lambda: L.Sigmoid(), (2, 3)),
    (lambda: L.Tanh(), (9,)),
    (lambda: L.Softmax(), (5,)),
    (lambda: L.LogSoftmax(), (5,)),
    (lambda: L.Dropout(0.4), (12,)),
    (lambda: L.Flatten(), (2, 3, 2)),
    (lambda: L.Reshape((3, 4)), (12,)),
    (lambda: L.Sequential(L.Flatten(), L.Linear(8), L.Tanh(), L.Dropout(0.25), L.Linear(3), L.LogSoftmax()),
     (2, 2, 3)),
]


@pytest.mark.parametrize("make,input_shape", LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_gradient_check_kit_on_opencl(ocl, make, input_shape):
    report = check_layer(make(), input_shape, backends=["opencl"], batch_size=3)
    assert report.parity["opencl"] < 1e-4


@pytest.mark.parametrize("loss,shape,targets", [
    (L.SoftmaxCrossEntropy(), (6,), np.array([0, 5, 2, 3])),
    (L.NegativeLogLikelihood(), (4,), np.array([3, 0, 1])),
    (L.MSE(), (2, 3), np.random.default_rng(1).standard_normal((3, 2, 3))),
])
def test_losses_on_opencl(ocl, loss, shape, targets):
    check_loss(loss, shape, targets, backends=["opencl"])


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


@pytest.mark.parametrize("make_opt", [
    lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: SGD(lr=0.05, momentum=0.5, dampening=0.1),
    lambda: Adam(lr=1e-2),
    lambda: Adam(lr=1e-2, weight_decay=1e-2, amsgrad=True),
    lambda: AdamW(lr=1e-2),
], ids=["sgd-nesterov", "sgd-dampening", "adam", "adam-amsgrad", "adamw"])
def test_optimizer_steps_match_numpy(ocl, make_opt):
    want_losses, want = _steps(jp.backend("numpy"), make_opt())
    got_losses, got = _steps(ocl, make_opt())
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


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
