"""Convolutional networks on 3x32x32 inputs (batch 32, Adam): a CIFAR-shaped CNN (3x conv-BN-ReLU-
max-pool, then a linear classifier), the same with a hidden linear layer of 512 units in its
classifier, and the zoo's ResNet, one training step and forward-only,
juicepy on every backend vs the same model in PyTorch CPU eager in the same group; the paired
tests time juicepy's calls interleaved with their reference's (PyTorch for the NumPy backend, the
NumPy backend for others); the training steps also paired at batch 8 (SMALL_BATCH).

    pytest bench/test_bench_cnn.py --benchmark-json=cnn.json && python bench/report.py cnn.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.models import resnet
from juicepy.train import Adam, Trainer

from benchutil import PAIRED_PREFIX, paired_reference, require_torch, torch_adam_step

BATCH, SHAPE, CLASSES = 32, (3, 32, 32), 10
#: the training step again at a small batch, whose ops are cut into fewer pieces than lanes
#: (a threaded BLAS call there once made the step 3-9x slower: docs/numpy.md, session 39)
SMALL_BATCH = 8
WIDTHS = (32, 64, 128)


def _data(batch=BATCH):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch,) + SHAPE, dtype=np.float32), rng.integers(0, CLASSES, batch)


#: the hidden layer of the CNN with a two-layer classifier: its products (2^25 multiply-adds at
#: batch 32) are the gemm op's mid-sized band (docs/numpy.md, session 40)
HIDDEN = 512


def _cnn(hidden=None):
    layers = []
    for width in WIDTHS:
        layers += [L.Conv2d(width, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.MaxPool2d(2)]
    head = [L.Linear(hidden), L.ReLU()] if hidden else []
    return L.Sequential(*layers, L.Flatten(), *head, L.Linear(CLASSES))


def _torch_cnn(torch, hidden=None):
    nn = torch.nn
    layers, channels = [], SHAPE[0]
    for width in WIDTHS:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    side = SHAPE[1] >> len(WIDTHS)
    features = channels * side * side
    head = [nn.Linear(features, hidden), nn.ReLU()] if hidden else []
    return nn.Sequential(*layers, nn.Flatten(), *head, nn.Linear(hidden or features, CLASSES))


def _torch_resnet(torch, widths=(16, 32, 64)):
    """juicepy.models.resnet's architecture (one basic block per stage) in PyTorch."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                      nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    blocks, channels = [], widths[0]
    for i, width in enumerate(widths):
        blocks.append(Block(channels, width, 2 if i else 1))
        channels = width
    return nn.Sequential(nn.Conv2d(SHAPE[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, CLASSES))


MODELS = {"cifar cnn 3x(conv-bn-relu-pool)": (_cnn, _torch_cnn),
          f"cifar cnn + linear {HIDDEN}": (lambda: _cnn(HIDDEN), lambda torch: _torch_cnn(torch, HIDDEN)),
          "resnet 16-32-64": (lambda: resnet(SHAPE, CLASSES), _torch_resnet)}


def _group(model, what, batch=BATCH):
    return f"{model} b{batch} 3x32x32 {what}"


def juicepy_step(backend, model, batch=BATCH):
    trainer = Trainer(jp.Network(MODELS[model][0](), SHAPE), L.SoftmaxCrossEntropy(), Adam(lr=1e-3),
                      batch_size=batch)
    x, y = _data(batch)
    trainer.train_minibatch(backend, x, y)
    return lambda: trainer.train_minibatch(backend, x, y)


def torch_step(torch, model, batch=BATCH):
    return torch_adam_step(torch, MODELS[model][1](torch), *_data(batch))


def juicepy_forward(backend, model):
    net = jp.Network(MODELS[model][0](), SHAPE)
    x, _ = _data()
    net.transform(backend, x)
    return lambda: net.transform(backend, x)


def torch_forward(torch, model):
    net = MODELS[model][1](torch).eval()
    xt = torch.from_numpy(_data()[0])

    def forward():
        with torch.no_grad():
            return net(xt).numpy()  # a host array, as transform returns

    forward()
    return forward


# what -> (juicepy builder, PyTorch builder)
WORKLOADS = {"adam step": (juicepy_step, torch_step), "forward": (juicepy_forward, torch_forward)}


@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_step_juicepy(benchmark, backend, model):
    benchmark.group = _group(model, "adam step")
    benchmark(juicepy_step(backend, model))


@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_step_torch(benchmark, model):
    torch = require_torch()
    benchmark.group = _group(model, "adam step")
    benchmark(torch_step(torch, model))


@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_forward_juicepy(benchmark, backend, model):
    benchmark.group = _group(model, "forward")
    benchmark(juicepy_forward(backend, model))


@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_forward_torch(benchmark, model):
    torch = require_torch()
    benchmark.group = _group(model, "forward")
    benchmark(torch_forward(torch, model))


@pytest.mark.parametrize("what", list(WORKLOADS))
@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_paired(benchmark, paired, backend, model, what):
    benchmark.group = PAIRED_PREFIX + _group(model, what)
    build, build_torch = WORKLOADS[what]
    reference, name = paired_reference(backend, lambda be: build(be, model), lambda torch: build_torch(torch, model))
    paired(build(backend, model), reference, name)


@pytest.mark.parametrize("model", list(MODELS))
def test_cnn_paired_small_batch_step(benchmark, paired, backend, model):
    benchmark.group = PAIRED_PREFIX + _group(model, "adam step", SMALL_BATCH)
    reference, name = paired_reference(backend, lambda be: juicepy_step(be, model, SMALL_BATCH),
                                       lambda torch: torch_step(torch, model, SMALL_BATCH))
    paired(juicepy_step(backend, model, SMALL_BATCH), reference, name)
