"""The CUDA backend's per-channel reductions split over blocks or not: batch norm (training
forward + backward) and a convolution's bias gradient at the CNN benchmarks' shapes, under
several chunk rules: "256", "1024", "4096" split every channel of more values than that into
chunks of at least that many (``device.CHUNK_MIN`` = ``device.SPLIT_MIN`` = the value), "rule" is
the backend's own (CHUNK_MIN, SPLIT_MIN), "one block" never splits.

    python bench/ab_cuda_chunks.py [--rounds 7] [--json chunks.json]

Per shape and setting, two figures, medians over rounds that alternate the settings:
``graph``: device microseconds per call, 50 calls captured as one CUDA graph and replayed
(what a replayed training step pays); ``eager``: wall microseconds per call launched op by op
(the host's launch cost included). Needs a GPU and CuPy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import juicepy as jp
from juicepy.backends.base import Workspace
from juicepy.backends.cuda import device

SHAPES = [(32, 16, 32, 32), (32, 32, 16, 16), (32, 64, 8, 8),  # the zoo ResNet b32's stages
          (32, 32, 32, 32), (32, 64, 16, 16), (32, 128, 8, 8),  # the CIFAR-shaped CNN's
          (64, 6, 28, 28), (64, 16, 10, 10)]  # LeNet b64's convolutions (bias gradient)
SETTINGS = {"256": (256, 256), "1024": (1024, 1024), "4096": (4096, 4096),
            "rule": (device.CHUNK_MIN, device.SPLIT_MIN), "one block": (device.CHUNK_MIN, 1 << 62)}
CALLS = 50


def _ops(backend, shape, ws):
    n, c = shape[:2]
    rng = np.random.default_rng(0)
    x = backend.from_host(rng.standard_normal(shape).astype(np.float32))
    dy = backend.from_host(rng.standard_normal(shape).astype(np.float32))
    out, dx = backend.empty(shape), backend.empty(shape)
    per = [backend.from_host(v.astype(np.float32)) for v in (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))]
    gamma, beta, running_mean, running_var = per
    mean, invstd, dgamma, dbeta, dbias = (backend.empty((c,)) for _ in range(5))

    def batch_norm():
        backend.batch_norm_train(x, gamma, beta, out, mean, invstd, running_mean, running_var, 0.1, 1e-5, ws=ws)
        backend.batch_norm_backward(x, dy, gamma, mean, invstd, dx, dgamma, dbeta, ws=ws)

    def bias_grad():
        backend.bias_grad(dy, dbias, ws=ws)

    return {"batch_norm train+backward": batch_norm, "bias_grad": bias_grad}


def _eager_us(backend, op):
    backend.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        op()
    backend.synchronize()
    return (time.perf_counter() - start) / CALLS * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    backend = jp.backend("cuda")
    results = {}
    default = device.CHUNK_MIN, device.SPLIT_MIN
    try:
        for shape in SHAPES:
            ws = Workspace()
            for name, op in _ops(backend, shape, ws).items():
                if name.startswith("batch_norm") and shape in SHAPES[-2:]:
                    continue  # LeNet has no batch norm
                times = {s: {"graph": [], "eager": []} for s in SETTINGS}
                graphs = {}
                for s in SETTINGS:  # warm up: kernels compiled, workspace made, graph recorded
                    device.CHUNK_MIN, device.SPLIT_MIN = SETTINGS[s]
                    op()
                    graphs[s] = backend.capture(lambda: [op() for _ in range(CALLS)])
                for _ in range(args.rounds):
                    for s in SETTINGS:
                        device.CHUNK_MIN, device.SPLIT_MIN = SETTINGS[s]
                        backend.synchronize()
                        start = time.perf_counter()
                        graphs[s].replay()
                        backend.synchronize()
                        times[s]["graph"].append((time.perf_counter() - start) / CALLS * 1e6)
                        times[s]["eager"].append(_eager_us(backend, op))
                row = {s: {k: statistics.median(v) for k, v in t.items()} for s, t in times.items()}
                chunks = {}
                for s in SETTINGS:
                    device.CHUNK_MIN, device.SPLIT_MIN = SETTINGS[s]
                    chunks[s] = device.channel_chunks(shape[0] * shape[2] * shape[3], shape[1], backend.sm_count)
                results[f"{name} {shape}"] = {"us": row, "chunks": chunks}
                cells = "  ".join(f"{s}: {row[s]['graph']:6.1f} / {row[s]['eager']:6.1f} {tuple(chunks[s])}"
                                  for s in SETTINGS)
                print(f"{name:26s} {str(shape):18s} {cells}", flush=True)
    finally:
        device.CHUNK_MIN, device.SPLIT_MIN = default
    print("(rule: graph us / eager us per call (chunks, chunk))")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
