"""Composed networks: a residual, concatenating MLP built with the functional builder (juicepy on
every backend vs the same model in PyTorch), and the Predictor's cost over Network.transform.

    pytest bench/test_bench_compose.py --benchmark-json=compose.json && python bench/report.py compose.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.train import Adam, Trainer

from benchutil import require_torch, torch_adam_step

IN, WIDTH, CLASSES, BATCH = 256, 256, 10, 128
GROUP = f"residual+concat mlp {IN}-{WIDTH}x3-{CLASSES} b{BATCH} adam step"


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, IN)).astype(np.float32), rng.integers(0, CLASSES, BATCH)


def _juicepy_net():
    x = jp.Input((IN,))
    h = L.ReLU()(L.Linear(WIDTH)(x))
    h = h + L.ReLU()(L.Linear(WIDTH)(h))       # residual block
    h = jp.concat(h, L.ReLU()(L.Linear(WIDTH)(h)))  # dense-style concatenation
    return jp.Network(inputs=x, outputs=L.Linear(CLASSES)(h))


def _torch_step(torch):
    nn = torch.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(IN, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
            self.out = nn.Linear(2 * WIDTH, CLASSES)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h + torch.relu(self.b(h))
            h = torch.cat([h, torch.relu(self.c(h))], dim=1)
            return self.out(h)

    return torch_adam_step(torch, Model(), *_data())


@pytest.mark.benchmark(group=GROUP)
def test_composed_step_juicepy(benchmark, backend):
    trainer = Trainer(_juicepy_net(), L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=BATCH)
    x, y = _data()
    trainer.train_minibatch(backend, x, y)
    benchmark(trainer.train_minibatch, backend, x, y)


@pytest.mark.benchmark(group=GROUP)
def test_composed_step_torch(benchmark):
    benchmark(_torch_step(require_torch()))


@pytest.mark.benchmark(group="serving 64 rows: Predictor vs Network.transform")
@pytest.mark.parametrize("via", ["network", "predictor"])
def test_serving_overhead(benchmark, backend, via):
    net = _juicepy_net()
    x = _data()[0][:64]
    call = jp.Predictor(net, backend).transform if via == "predictor" else (lambda v: net.transform(backend, v))
    call(x)
    benchmark(call, x)
