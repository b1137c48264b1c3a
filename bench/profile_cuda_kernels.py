"""Device time per CUDA kernel in one training step of the CUDA backend, as PyTorch's CUPTI
profiler records it (it sees CuPy's and cuBLAS's kernels too). Steps run op by op by default
(``--graphs`` replays them), the batch on the device, Adam, after three warm-up steps.

    python bench/profile_cuda_kernels.py [--steps 10] [--json kernels.json]

Prints, per model, each kernel's calls and device microseconds per step, largest first, and the
sum. Needs a GPU, CuPy and a CUDA build of PyTorch. Run it with another checkout on PYTHONPATH to
profile that code with the same models (docs/cuda.md, section 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import juicepy as jp  # noqa: E402
from juicepy import layers as L  # noqa: E402
from juicepy.models import build_model  # noqa: E402
from juicepy.train import Adam, Trainer  # noqa: E402
from test_bench_cnn import BATCH, MODELS, SHAPE  # noqa: E402


def _models():
    """(name, network, batch): the workloads of bench/test_bench_cuda.py."""
    mlp = L.Sequential(L.Linear(512), L.ReLU(), L.Linear(512), L.ReLU(), L.Linear(10))
    yield "mlp 784-512-512-10 b128", jp.Network(mlp, (784,), seed=0), 128
    yield "lenet-5 b64", jp.Network(build_model("lenet", (1, 28, 28), 10), (1, 28, 28), seed=0), 64
    for name, (make, _) in MODELS.items():
        yield f"{name} b{BATCH}", jp.Network(make(), SHAPE, seed=0), BATCH


def kernel_times(backend, network, batch, steps, graphs):
    """{kernel name: (calls per step, device us per step)} of ``steps`` training steps."""
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(0)
    x = backend.from_host(rng.standard_normal((batch,) + network.input_shape).astype(np.float32))
    y = backend.from_host(rng.integers(0, 10, batch).astype(np.int32))
    trainer = Trainer(network, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=batch, graphs=graphs)
    for _ in range(3):
        trainer.train_minibatch(backend, x, y)
    backend.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer.train_minibatch(backend, x, y)
        backend.synchronize()
    rows = {}
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None)
        if total is None:
            total = event.cuda_time_total
        if total > 0:
            rows[event.key] = (event.count / steps, total / steps)
    return dict(sorted(rows.items(), key=lambda kv: -kv[1][1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--graphs", action="store_true", help="replay the steps as CUDA graphs")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    backend = jp.backend("cuda")
    report = {}
    for name, network, batch in _models():
        rows = kernel_times(backend, network, batch, args.steps, args.graphs)
        total = sum(us for _, us in rows.values())
        report[name] = {"device_us_per_step": total, "kernels": {k: {"calls": c, "us": us} for k, (c, us) in rows.items()}}
        print(f"\n{name}: {total:.1f} us of kernels per step ({'graph' if args.graphs else 'op by op'}, "
              f"juicepy {jp.__file__})")
        for key, (calls, us) in rows.items():
            print(f"  {us:9.1f} us {calls:6.1f} calls  {key[:90]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
