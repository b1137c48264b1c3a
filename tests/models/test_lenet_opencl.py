"""LeNet (conv, pooling, linear) trained on the embedded digits on OpenCL reaches NumPy's accuracy."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable
from juicepy.data import load_dataset
from juicepy.models import MODELS, build_model
from juicepy.train import Adam, Trainer


def _opencl():
    try:
        return jp.backend("opencl")
    except BackendUnavailable as exc:
        pytest.skip(f"no OpenCL here: {exc}")


def _train_lenet(backend, epochs=6):
    train, test = load_dataset("digits", seed=0)
    net = jp.Network(build_model("lenet", train.input_shape, train.classes), train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=3e-3), batch_size=32)
    for epoch in range(epochs):
        for x, y in train.batches(32, seed=0, epoch=epoch):
            trainer.train_minibatch(backend, x, y)
    return float(np.mean(net.transform(backend, test.x).argmax(axis=1) == test.y))


def test_lenet_on_digits_matches_numpy_accuracy():
    if "lenet" not in MODELS:
        pytest.skip("the model zoo has no LeNet in this checkout (convolution layers not merged yet)")
    backend = _opencl()
    numpy_acc = _train_lenet(jp.backend("numpy"))
    opencl_acc = _train_lenet(backend)
    assert numpy_acc >= 0.9
    assert abs(opencl_acc - numpy_acc) <= 0.015, (opencl_acc, numpy_acc)
