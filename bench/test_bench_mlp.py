"""MLP training steps: juicepy on every backend vs PyTorch CPU eager vs hand-written NumPy; the
paired test times the small MLP's step interleaved with its reference's (PyTorch for the NumPy
backend, the NumPy backend for others).

    pytest bench/test_bench_mlp.py --benchmark-json=mlp.json && python bench/report.py mlp.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.train import Adam, Trainer

from benchutil import PAIRED_PREFIX, paired_reference, require_torch, torch_adam_step
from handwritten import HandwrittenMLP

SMALL = (784, 512, 512, 10)
WIDE = (784, 4096, 4096, 10)


def _data(batch, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)


def _juicepy_trainer(sizes, batch):
    parts = []
    for width in sizes[1:-1]:
        parts += [L.Linear(width), L.ReLU()]
    net = jp.Network(L.Sequential(*parts, L.Linear(sizes[-1])), input_shape=(sizes[0],))
    return Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=batch)


def _torch_step(torch, sizes, batch):
    mods = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods, torch.nn.Linear(sizes[-2], sizes[-1]))
    return torch_adam_step(torch, model, *_data(batch, sizes))


def train_flops(sizes, batch):
    """Multiply-adds x2 of forward, weight gradients and input gradients (none for layer 1)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    per = [2 * batch * a * b for a, b in layers]
    return 3 * sum(per) - per[0]


SMALL_STEP = "mlp 784-512-512-10 b128 adam step"


def juicepy_small_step(backend):
    trainer = _juicepy_trainer(SMALL, 128)
    x, y = _data(128, SMALL)
    trainer.train_minibatch(backend, x, y)
    return lambda: trainer.train_minibatch(backend, x, y)


def torch_small_step(torch):
    return _torch_step(torch, SMALL, 128)


@pytest.mark.benchmark(group=SMALL_STEP)
def test_mlp_step_juicepy(benchmark, backend):
    benchmark(juicepy_small_step(backend))


@pytest.mark.benchmark(group=SMALL_STEP)
def test_mlp_step_torch(benchmark):
    benchmark(torch_small_step(require_torch()))


@pytest.mark.benchmark(group=PAIRED_PREFIX + SMALL_STEP)
def test_mlp_step_paired(paired, backend):
    paired(juicepy_small_step(backend), *paired_reference(backend, juicepy_small_step, torch_small_step))


@pytest.mark.benchmark(group=SMALL_STEP)
def test_mlp_step_handwritten_numpy(benchmark):
    mlp = HandwrittenMLP(SMALL)
    x, y = _data(128, SMALL)
    mlp.step(x, y)
    benchmark(mlp.step, x, y)


@pytest.mark.benchmark(group="wide mlp 784-4096-4096-10 b256 adam step")
def test_wide_mlp_step_juicepy(benchmark, backend):
    trainer = _juicepy_trainer(WIDE, 256)
    x, y = _data(256, WIDE)
    trainer.train_minibatch(backend, x, y)
    benchmark.pedantic(trainer.train_minibatch, (backend, x, y), rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["flops"] = train_flops(WIDE, 256)


@pytest.mark.benchmark(group="wide mlp 784-4096-4096-10 b256 adam step")
def test_wide_mlp_step_torch(benchmark):
    step = _torch_step(require_torch(), WIDE, 256)
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["flops"] = train_flops(WIDE, 256)


@pytest.mark.benchmark(group="wide mlp 784-4096-4096-10 b256 adam step")
def test_numpy_float32_matmul_reference(benchmark):
    """NumPy's own float32 GEMM throughput on the step's biggest product (256x4096 @ 4096x4096)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 4096)).astype(np.float32)
    b = rng.standard_normal((4096, 4096)).astype(np.float32)
    out = np.empty((256, 4096), np.float32)
    np.matmul(a, b, out=out)
    benchmark.pedantic(np.matmul, (a, b), {"out": out}, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info["flops"] = 2 * 256 * 4096 * 4096
