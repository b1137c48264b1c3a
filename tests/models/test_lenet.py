"""LeNet-5 in the model zoo: shapes for 28x28 and small inputs, and it learns the digits."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import load_dataset
from juicepy.models import MODELS, build_model, lenet
from juicepy.train import Adam, Trainer


def test_lenet5_on_28x28_has_the_classic_shapes():
    net = jp.Network(build_model("lenet", (1, 28, 28), 10), (1, 28, 28))
    shapes = {node.path: node.descriptor.output_shapes[0] for node in net.nodes}
    assert shapes["0"] == (6, 28, 28) and shapes["2"] == (6, 14, 14)
    assert shapes["3"] == (16, 10, 10) and shapes["5"] == (16, 5, 5)
    assert shapes["6"] == (400,) and shapes["7"] == (120,) and shapes["9"] == (84,)
    assert net.output_shape == (10,)
    assert net.get_weights()["0.weight"].shape == (6, 1, 5, 5)
    assert net.num_params() == 61706  # the well-known LeNet-5 count (with 10 classes)


def test_lenet_adapts_to_small_inputs():
    net = jp.Network(lenet((1, 8, 8), 10), (1, 8, 8))
    assert net.get_weights()["0.weight"].shape == (6, 1, 3, 3)
    assert net.node("6").descriptor.output_shapes[0] == (16 * 2 * 2,)
    assert "lenet" in MODELS
    with pytest.raises(ValueError, match="channels, height, width"):
        lenet((64,), 10)


def test_lenet_trains_on_the_digits_to_97_percent():
    train, test = load_dataset("digits", seed=0)
    net = jp.Network(lenet(train.input_shape, train.classes), train.input_shape, seed=0)
    optimizer = Adam(lr=5e-3)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), optimizer, batch_size=32)
    epochs = 20
    for epoch in range(epochs):
        optimizer.lr = 5e-3 * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs))  # cosine decay
        for x, y in train.batches(32, seed=0, epoch=epoch):
            trainer.train_minibatch("numpy", x, y)
    accuracy = float(np.mean(net.transform("numpy", test.x).argmax(axis=1) == test.y))
    assert accuracy >= 0.97, f"test accuracy {accuracy:.3f}"
