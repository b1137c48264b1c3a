"""CUDA training-step benchmarks: juicepy op by op vs graph replay vs PyTorch eager on the same
GPU, the wide MLP against the throughput of its own GEMMs on cuBLAS in the same run, the
CIFAR-shaped CNN and the zoo's ResNet of bench/test_bench_cnn.py against the same models in
PyTorch eager CUDA, and the device allocations of a steady step (recorded in extra_info, asserted 0).

Run on a GPU machine (or all of it at once: bash tests/gpu/acceptance.sh):
    pytest bench/test_bench_cuda.py --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds
Compare within one group and one run (ratios), never across machines. Everything is skipped
without a CUDA device (JUICEPY_CUDA_EMULATOR=1 runs it on the CPU emulator: a dry run of the
code, not a measurement).
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable
from juicepy.train import Adam, Trainer

from test_bench_cnn import BATCH as CNN_BATCH, MODELS as CNN_MODELS, SHAPE as CNN_SHAPE

try:
    CUDA = jp.backend("cuda")
except BackendUnavailable as exc:
    pytest.skip(f"no CUDA device ({str(exc)[:120]})", allow_module_level=True)

WIDE = (784, 4096, 4096, 10)


def _mlp(widths):
    parts = []
    for w in widths[1:-1]:
        parts += [L.Linear(w), L.ReLU()]
    return jp.Network(L.Sequential(*parts, L.Linear(widths[-1])), input_shape=(widths[0],), seed=0)


def _lenet():
    if not all(hasattr(L, n) for n in ("Conv2d", "MaxPool2d")):
        pytest.skip("LeNet needs the Conv2d and MaxPool2d layers, which are not on this branch")
    body = L.Sequential(L.Conv2d(6, 5, padding=2), L.ReLU(), L.MaxPool2d(2), L.Conv2d(16, 5), L.ReLU(),
                        L.MaxPool2d(2), L.Flatten(), L.Linear(120), L.ReLU(), L.Linear(84), L.ReLU(), L.Linear(10))
    return jp.Network(body, input_shape=(1, 28, 28), seed=0)


def _data(shape, batch, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + shape).astype(np.float32), rng.integers(0, classes, batch).astype(np.int32)


def _juicepy_step(benchmark, net, batch, graphs):
    import cupy

    x, y = _data(net.input_shape, batch)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=batch, graphs=graphs)
    xd, yd = CUDA.from_host(x), CUDA.from_host(y)  # device-resident batch, as the torch side
    for _ in range(3):  # warm-up: kernels compiled, graph recorded
        trainer.train_minibatch(CUDA, xd, yd)
    if graphs:
        assert trainer.state(CUDA).replay.graph is not None, trainer.state(CUDA).replay.failure
    pool = cupy.get_default_memory_pool()
    CUDA.synchronize()
    before, steps_before = (CUDA.allocations, pool.total_bytes()), trainer.steps
    benchmark(lambda: trainer.train_minibatch(CUDA, xd, yd))  # reads the loss: synchronizes
    CUDA.synchronize()
    steps = trainer.steps - steps_before
    benchmark.extra_info["steps"] = trainer.steps
    benchmark.extra_info["device_allocations_per_step"] = (CUDA.allocations - before[0]) / steps
    benchmark.extra_info["pool_bytes_growth"] = pool.total_bytes() - before[1]
    assert (CUDA.allocations, pool.total_bytes()) == before, "a steady training step allocated device memory"


def _torch_step(benchmark, model_fn, shape, batch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build has no CUDA")
    model = model_fn(torch.nn).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data(shape, batch)
    xd, yd = torch.from_numpy(x).cuda(), torch.from_numpy(y).long().cuda()
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xd), yd)
        loss.backward()
        opt.step()
        return loss.item()  # the juicepy step returns the loss as a float too

    for _ in range(3):
        step()
    benchmark(step)


def _torch_mlp(widths):
    def build(nn):
        parts = []
        for a, b in zip(widths[:-2], widths[1:-1]):
            parts += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*parts, nn.Linear(widths[-2], widths[-1]))
    return build


def _torch_lenet(nn):
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


@pytest.mark.benchmark(group="mlp 784-512-512-10 batch 128 train step")
@pytest.mark.parametrize("graphs", [False, True], ids=["juicepy-eager", "juicepy-graph"])
def test_mlp_step(benchmark, graphs):
    _juicepy_step(benchmark, _mlp((784, 512, 512, 10)), 128, graphs)


@pytest.mark.benchmark(group="mlp 784-512-512-10 batch 128 train step")
def test_mlp_step_torch_eager(benchmark):
    _torch_step(benchmark, _torch_mlp((784, 512, 512, 10)), (784,), 128)


@pytest.mark.benchmark(group="lenet batch 64 train step")
@pytest.mark.parametrize("graphs", [False, True], ids=["juicepy-eager", "juicepy-graph"])
def test_lenet_step(benchmark, graphs):
    _juicepy_step(benchmark, _lenet(), 64, graphs)


@pytest.mark.benchmark(group="lenet batch 64 train step")
def test_lenet_step_torch_eager(benchmark):
    _torch_step(benchmark, _torch_lenet, (1, 28, 28), 64)


def _wide_gemm_flops(batch):
    """FLOPs of the GEMMs in one wide-MLP step: forward, weight grads, input grads but the first."""
    layers = list(zip(WIDE[:-1], WIDE[1:]))
    per = [2 * batch * a * b for a, b in layers]
    return 2 * sum(per) + sum(per[1:])


def _record_tflops(benchmark, batch):
    if benchmark.stats is not None:  # None under --benchmark-disable (a dry run of the code)
        benchmark.extra_info["gemm_tflops"] = _wide_gemm_flops(batch) / benchmark.stats.stats.min / 1e12


@pytest.mark.benchmark(group="wide mlp 784-4096-4096-10 batch 1024")
def test_wide_mlp_step(benchmark):
    _juicepy_step(benchmark, _mlp(WIDE), 1024, graphs=True)
    _record_tflops(benchmark, 1024)


@pytest.mark.benchmark(group="wide mlp 784-4096-4096-10 batch 1024")
def test_wide_mlp_gemms_alone_cublas(benchmark):
    """The same eight float32 GEMMs on cuBLAS, back to back: the step's ceiling."""
    batch = 1024
    rng = np.random.default_rng(0)
    layers = list(zip(WIDE[:-1], WIDE[1:]))
    acts = [CUDA.from_host(rng.standard_normal((batch, w)).astype(np.float32)) for w in WIDE]
    weights = [CUDA.from_host(rng.standard_normal((b, a)).astype(np.float32)) for a, b in layers]
    grads = [CUDA.empty((b, a)) for a, b in layers]

    def gemms():
        for i in range(len(layers)):
            CUDA.gemm(acts[i], weights[i], acts[i + 1], trans_b=True)
        for i in reversed(range(len(layers))):
            CUDA.gemm(acts[i + 1], acts[i], grads[i], trans_a=True)
            if i > 0:
                CUDA.gemm(acts[i + 1], weights[i], acts[i])
        CUDA.synchronize()

    gemms()
    benchmark(gemms)
    _record_tflops(benchmark, batch)


@pytest.mark.parametrize("graphs", [False, True], ids=["juicepy-eager", "juicepy-graph"])
@pytest.mark.parametrize("model", list(CNN_MODELS))
def test_cnn_step(benchmark, model, graphs):
    benchmark.group = f"{model} b{CNN_BATCH} 3x32x32 train step"
    _juicepy_step(benchmark, jp.Network(CNN_MODELS[model][0](), CNN_SHAPE, seed=0), CNN_BATCH, graphs=graphs)


@pytest.mark.parametrize("model", list(CNN_MODELS))
def test_cnn_step_torch_eager(benchmark, model):
    torch = pytest.importorskip("torch")
    benchmark.group = f"{model} b{CNN_BATCH} 3x32x32 train step"
    _torch_step(benchmark, lambda nn: CNN_MODELS[model][1](torch), CNN_SHAPE, CNN_BATCH)
