"""Recurrent layers: LSTM and GRU (seq 32, batch 64, input 64, hidden 256, one layer) training
steps and forward passes, juicepy on every backend vs PyTorch CPU eager.

    pytest bench/test_bench_rnn.py --benchmark-json=rnn.json && python bench/report.py rnn.json

Goals (issue 12): the NumPy training step at most 1.0x torch's, OpenCL (PoCL) at most 1.5x NumPy.
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.train import Adam, Trainer

from benchutil import require_torch, torch_adam_step

SEQ, BATCH, FEATURES, HIDDEN, CLASSES = 32, 64, 64, 256, 10
CELLS = {"lstm": L.LSTM, "gru": L.GRU}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, SEQ, FEATURES)).astype(np.float32),
            rng.integers(0, CLASSES, BATCH))


def _network(kind):
    return jp.Network(L.Sequential(CELLS[kind](HIDDEN), L.LastStep(), L.Linear(CLASSES)), (SEQ, FEATURES))


def _torch_model(torch, kind):
    class LastStepClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind.upper())(FEATURES, HIDDEN, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return LastStepClassifier()


def _juicepy_step(backend, kind):
    trainer = Trainer(_network(kind), L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=BATCH)
    x, y = _data()
    trainer.train_minibatch(backend, x, y)
    return lambda: trainer.train_minibatch(backend, x, y)[0]


def _juicepy_forward(backend, kind):
    ctx = _network(kind).context(backend, BATCH)
    ctx.set_inputs([_data()[0]])

    def forward():
        ctx.forward()
        backend.synchronize()

    forward()
    return forward


def _torch_forward(kind):
    torch = require_torch()
    model = _torch_model(torch, kind)
    x = torch.from_numpy(_data()[0])

    def forward():
        with torch.no_grad():
            model(x)

    forward()
    return forward


def _rounds(benchmark, fn):
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


def _group(benchmark, kind, mode):
    benchmark.group = f"{kind} s{SEQ} b{BATCH} i{FEATURES} h{HIDDEN} {mode}"


@pytest.mark.parametrize("mode", ["adam step", "forward"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_juicepy(benchmark, backend, kind, mode):
    _group(benchmark, kind, mode)
    _rounds(benchmark, (_juicepy_step if mode == "adam step" else _juicepy_forward)(backend, kind))


@pytest.mark.parametrize("mode", ["adam step", "forward"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_torch(benchmark, kind, mode):
    _group(benchmark, kind, mode)
    if mode == "forward":
        _rounds(benchmark, _torch_forward(kind))
    else:
        torch = require_torch()
        _rounds(benchmark, torch_adam_step(torch, _torch_model(torch, kind), *_data()))
