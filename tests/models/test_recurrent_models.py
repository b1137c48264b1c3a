"""The recurrent models of the zoo: shapes on their datasets, one learning check each."""

import numpy as np

import juicepy as jp
from juicepy import layers as L
from juicepy.data import load_digits
from juicepy.models import build_model
from juicepy.train import Adam, Trainer
from juicepy.train.loop import evaluate


def test_builders_fit_their_datasets():
    net = jp.Network(build_model("lstm", (1, 8, 8), 10), (1, 8, 8))
    assert net.output_shape == (10,) and "0.weight_ih_l0" not in net.params and "1.weight_ih_l0" in net.params
    net = jp.Network(build_model("gru", (10, 1), 1), (10, 1))
    assert net.output_shape == (1,)
    net = jp.Network(build_model("embedding-gru", (10,), 19, vocab=20), (10,), input_dtype=np.int64)
    assert net.params["0.weight"].shape == (20, 16) and net.output_shape == (19,)
    # options a builder does not take are not passed to it
    assert jp.Network(build_model("mlp", (4,), 3, vocab=20), (4,)).output_shape == (3,)


def test_lstm_reads_digit_rows_as_time_steps(numpy_backend):
    train, test = load_digits()
    net = jp.Network(build_model("lstm", train.input_shape, 10), train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=3e-3), batch_size=32)
    for epoch in range(6):
        for x, y in train.batches(32, seed=0, epoch=epoch):
            trainer.train_minibatch(numpy_backend, x, y)
    assert evaluate(net, numpy_backend, test) > 0.75
