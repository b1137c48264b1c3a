"""Serving: batch-1 requests from 8 concurrent clients over HTTP (keep-alive connections, JSON
bodies), with micro-batching (no added wait, the default, and a 1 ms wait) and without, beside
Predictor.transform called directly from 8 threads. Each round is 8 clients x N requests; the
requests/s and the p50/p99 latency over all rounds go to extra_info.

    pytest bench/test_bench_serve.py --benchmark-json=serve.json && python bench/report.py serve.json
"""

import http.client
import json
import threading
import time

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.models import build_model
from juicepy.serve import ModelServer

CLIENTS = 8
MODES = {  # name: ModelServer settings (None: no server, Predictor.transform directly)
    "http micro-batched": {"max_batch": 32},
    "http micro-batched wait 1ms": {"max_batch": 32, "batch_wait_ms": 1.0},
    "http unbatched": {"max_batch": 1},
    "Predictor.transform direct": None,
}


def _http_caller(server):
    def make():
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)

        def call(x):
            conn.request("POST", "/predict", body=json.dumps(x.tolist()).encode(), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            return body

        return call, conn.close
    return make


def _direct_caller(predictor):
    def make():
        return predictor.transform, lambda: None
    return make


def _load_round(make_caller, x, n_requests, latencies):
    """CLIENTS threads, each sending n_requests one after another; latencies appended."""
    errors = []

    def client():
        call, close = make_caller()
        mine = []
        try:
            for _ in range(n_requests):
                start = time.perf_counter()
                call(x)
                mine.append(time.perf_counter() - start)
        except Exception as err:
            errors.append(err)
        finally:
            close()
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _mnist_mlp():
    return jp.Network(L.Sequential(L.Linear(512), L.ReLU(), L.Linear(512), L.ReLU(), L.Linear(10)), (784,))


MODELS = {  # name: (network, input unit shape)
    "digits mlp": (lambda: jp.Network(build_model("mlp", (1, 8, 8), 10), input_shape=(1, 8, 8)), (1, 8, 8)),
    "mlp 784-512-512-10": (_mnist_mlp, (784,)),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", list(MODELS))
def test_serve_batch1_requests(benchmark, backend, model, mode, tmp_path):
    benchmark.group = f"serve {model} batch-1 requests, 8 clients"
    make_net, shape = MODELS[model]
    net = make_net()
    path = tmp_path / "ck.safetensors"
    jp.save(path, net)
    x = np.random.default_rng(0).random((1,) + shape, np.float32)
    # --benchmark-disable (CI) runs one short round: it proves the suite works, not the speed
    n_requests, rounds = (5, 1) if benchmark.disabled else (60, 3)
    settings = MODES[mode]
    server = ModelServer(path, backend, port=0, **settings).start() if settings is not None else None
    try:
        make = _http_caller(server) if server else _direct_caller(jp.Predictor(net, backend))
        _load_round(make, x, n_requests, [])  # warm-up: connections, contexts
        latencies = []
        benchmark.pedantic(_load_round, (make, x, n_requests, latencies), rounds=rounds, iterations=1)
        if server:
            batching = server.health()["micro_batching"]
    finally:
        if server:
            server.stop()
    lat = np.sort(latencies)
    if not benchmark.disabled:
        per_round = benchmark.stats.stats.median
        benchmark.extra_info["requests_per_s"] = CLIENTS * n_requests / per_round
    benchmark.extra_info["p50_ms"] = float(np.percentile(lat, 50) * 1e3)
    benchmark.extra_info["p99_ms"] = float(np.percentile(lat, 99) * 1e3)
    if server and batching["batches"]:
        benchmark.extra_info["mean_batch_requests"] = batching["batched_requests"] / batching["batches"]
