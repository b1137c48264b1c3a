"""One training step (forward, loss, backward, Adam) of an MLP 784-512-512-10 at batch 128,
per backend, in the same run (torch as an outside reference where importable).

    pytest bench/test_bench_mlp.py --benchmark-columns=min,median,mean
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.train import Adam, Trainer

BATCH = 128


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, 784)).astype(np.float32), rng.integers(0, 10, BATCH)


def test_mlp_adam_step(benchmark, backend):
    net = jp.Network(L.Sequential(L.Linear(512), L.ReLU(), L.Linear(512), L.ReLU(), L.Linear(10)),
                     input_shape=(784,))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=BATCH)
    x, y = _batch()
    first = trainer.train_minibatch(backend, x, y)[0]  # contexts, kernels and optimizer state made here
    benchmark.group = "mlp 784-512-512-10 batch 128 adam step"
    last = benchmark(lambda: trainer.train_minibatch(backend, x, y)[0])
    benchmark.extra_info["steps_per_s"] = round(1.0 / benchmark.stats.stats.median, 1)
    assert last < first  # the steps trained


def test_torch_mlp_adam_step_reference(benchmark):
    torch = pytest.importorskip("torch", reason="torch is not installed: no outside reference")
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(v) for v in _batch())
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    benchmark.group = "mlp 784-512-512-10 batch 128 adam step"
    benchmark(step)
    benchmark.extra_info["steps_per_s"] = round(1.0 / benchmark.stats.stats.median, 1)
