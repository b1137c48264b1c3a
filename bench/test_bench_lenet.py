"""LeNet-5 (batch 64, 1x28x28, Adam): one training step and forward-only, juicepy on every
backend vs PyTorch CPU eager (default thread count) in the same group; the paired tests time
juicepy's calls interleaved with their reference's (PyTorch for the NumPy backend, the NumPy
backend for others).

    pytest bench/test_bench_lenet.py --benchmark-json=lenet.json && python bench/report.py lenet.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.models import lenet
from juicepy.train import Adam, Trainer

from benchutil import PAIRED_PREFIX, paired_reference, require_torch, torch_adam_step

BATCH = 64
SHAPE = (1, 28, 28)
STEP = "lenet-5 b64 1x28x28 adam step"
FORWARD = "lenet-5 b64 1x28x28 forward"


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((BATCH,) + SHAPE, dtype=np.float32), rng.integers(0, 10, BATCH)


def _torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def juicepy_step(backend):
    trainer = Trainer(jp.Network(lenet(SHAPE, 10), SHAPE), L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=BATCH)
    x, y = _data()
    trainer.train_minibatch(backend, x, y)
    return lambda: trainer.train_minibatch(backend, x, y)


def torch_step(torch):
    return torch_adam_step(torch, _torch_lenet(torch), *_data())


def juicepy_forward(backend):
    net = jp.Network(lenet(SHAPE, 10), SHAPE)
    x, _ = _data()
    net.transform(backend, x)
    return lambda: net.transform(backend, x)


def torch_forward(torch):
    model = _torch_lenet(torch).eval()
    xt = torch.from_numpy(_data()[0])

    def forward():
        with torch.no_grad():
            return model(xt).numpy()  # a host array, as transform returns

    forward()
    return forward


@pytest.mark.benchmark(group=STEP)
def test_lenet_step_juicepy(benchmark, backend):
    benchmark(juicepy_step(backend))


@pytest.mark.benchmark(group=STEP)
def test_lenet_step_torch(benchmark):
    benchmark(torch_step(require_torch()))


@pytest.mark.benchmark(group=FORWARD)
def test_lenet_forward_juicepy(benchmark, backend):
    benchmark(juicepy_forward(backend))


@pytest.mark.benchmark(group=FORWARD)
def test_lenet_forward_torch(benchmark):
    benchmark(torch_forward(require_torch()))


@pytest.mark.parametrize("workload", [STEP, FORWARD], ids=["step", "forward"])
def test_lenet_paired(benchmark, paired, backend, workload):
    benchmark.group = PAIRED_PREFIX + workload
    build, build_torch = (juicepy_step, torch_step) if workload == STEP else (juicepy_forward, torch_forward)
    paired(build(backend), *paired_reference(backend, build, build_torch))
