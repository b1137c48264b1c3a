"""ModelServer's lifecycle and bounds: a clean stop that lets requests in flight finish, a cap
on connections, and nothing that grows with the number of requests or swaps."""

import gc
import json
import socket
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

import juicepy as jp
from juicepy.serve import ModelServer


def _server_threads():
    return [t for t in threading.enumerate() if t.name.startswith("juicepy-") or "process_request" in t.name]


def test_stop_ends_every_thread_and_frees_the_port(checkpoint, connect):
    before = set(_server_threads())
    server = ModelServer(checkpoint[0], "numpy", port=0, watch=True, watch_interval_s=0.01).start()
    client = connect(server)
    assert client.health()["watching"] == str(checkpoint[0])
    server.stop()
    # a thread that has handed back its connection may still be returning: give it a moment
    for _ in range(500):
        if set(_server_threads()) <= before:
            break
        threading.Event().wait(0.01)
    assert set(_server_threads()) <= before
    assert server.open_connections == 0
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=5).close()


def test_stop_lets_a_request_in_flight_finish(checkpoint, connect):
    path, net = checkpoint
    server = ModelServer(path, "numpy", port=0, max_batch=1).start()
    client = connect(server)
    x = np.ones((2, 8), np.float32)
    entered, release, result = threading.Event(), threading.Event(), {}
    transform = server.model.predictor.transform

    def slow(inputs):  # holds the request in flight until the stop has begun
        entered.set()
        release.wait(30)
        return transform(inputs)

    server.model.predictor.transform = slow
    requester = threading.Thread(target=lambda: result.setdefault("out", client.predict_json(x)))
    requester.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() returned while a request was in flight"
    release.set()
    stopper.join(30)
    requester.join(30)
    np.testing.assert_array_equal(result["out"], net.transform("numpy", x))


def test_connections_beyond_the_cap_get_503_and_slots_come_back(checkpoint, connect):
    with ModelServer(checkpoint[0], "numpy", port=0, max_connections=2) as server:
        first, second = connect(server), connect(server)
        assert first.health() and second.health()  # two idle keep-alive connections hold both slots
        status, _, data = connect(server).request("GET", "/health")
        assert status == 503 and b"too many open connections" in data
        first.close()
        second.close()
        for _ in range(500):
            if server.open_connections == 0:
                break
            threading.Event().wait(0.01)
        assert connect(server).health()["status"] == "ok"


def test_swapped_out_networks_are_freed(tmp_path, make_net, connect):
    path = tmp_path / "ck.safetensors"
    jp.save(path, make_net(0))
    with ModelServer(path, "numpy", port=0) as server:
        client = connect(server)
        x = np.ones((3, 8), np.float32)
        old = []
        for i in range(1, 11):
            old.append(weakref.ref(server.model.network))
            jp.save(tmp_path / f"v{i}.safetensors", make_net(i))
            status, _, _ = client.request("POST", "/swap", json.dumps({"path": str(tmp_path / f"v{i}.safetensors")}),
                                          "application/json")
            assert status == 200
            client.predict_json(x)
        gc.collect()
        alive = [r for r in old if r() is not None]
        assert not alive, f"{len(alive)} of 10 swapped-out networks are still referenced"


@pytest.mark.parametrize("max_batch", [32, 1], ids=["batched", "unbatched"])
def test_memory_does_not_grow_with_requests(checkpoint, connect, max_batch):
    """The same mix of requests over and over: after a warm-up (every row count's context made),
    the process holds no more memory, whatever the number of requests."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 2, 3)]
    with ModelServer(checkpoint[0], "numpy", port=0, max_batch=max_batch) as server:
        clients = [connect(server) for _ in range(4)]

        def burst(n):
            def run(c):
                for i in range(n):
                    c.predict_json(inputs[i % 3], wrap=bool(i % 2))
            threads = [threading.Thread(target=run, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        burst(40)  # warm-up: contexts for every batch size the mix produces
        tracemalloc.start()
        try:
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            burst(60)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
    # 240 requests: a leak of one small object (~250 bytes) per request would pass 60 kB
    assert grown < 60_000, f"memory grew by {grown} bytes over 240 requests"


@pytest.mark.parametrize("kwargs,words", [
    ({"max_batch": 0}, "ModelServer: max_batch must be an integer >= 1, got 0"),
    ({"max_batch": 2.5}, "max_batch must be an integer >= 1, got float 2.5"),
    ({"batch_wait_ms": -1}, "batch_wait_ms must be a finite number >= 0, got -1"),
    ({"watch_interval_s": 0}, "watch_interval_s must be a finite number > 0, got 0"),
    ({"max_body_bytes": 0}, "max_body_bytes must be an integer >= 1, got 0"),
    ({"max_connections": 0}, "max_connections must be an integer >= 1, got 0"),
    ({"port": 70000}, "port must be an integer >= 0 and <= 65535, got 70000"),
    ({"watch": "yes"}, "watch must be True or False")])
def test_bad_settings_are_refused(checkpoint, kwargs, words):
    with pytest.raises(ValueError, match=words):
        ModelServer(checkpoint[0], "numpy", **{"port": 0, **kwargs})


def test_micro_batching_is_on_by_default_except_on_numpy(checkpoint, backend, connect):
    with ModelServer(checkpoint[0], backend, port=0) as server:
        batching = connect(server).health()["micro_batching"]
    assert batching["on"] == (backend.name != "numpy")
    assert batching["max_batch"] == (1 if backend.name == "numpy" else 32)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_batch=2.5), "ModelServer: max_batch must be an integer >= 1, got float 2.5"),
    (dict(max_batch=0), "ModelServer: max_batch must be an integer >= 1, got 0"),
    (dict(max_body_bytes=True), "ModelServer: max_body_bytes must be an integer >= 1, got bool True"),
    (dict(max_connections=0), "ModelServer: max_connections must be an integer >= 1, got 0"),
    (dict(batch_wait_ms=float("nan")), "ModelServer: batch_wait_ms must be a finite number >= 0, got nan"),
    (dict(watch_interval_s=0), "ModelServer: watch_interval_s must be a finite number > 0, got 0.0"),
    (dict(watch_interval_s="1"), "ModelServer: watch_interval_s must be a number, got str '1'"),
    (dict(port=70000), "ModelServer: port must be an integer >= 0 and <= 65535, got 70000"),
    (dict(port=-1), "ModelServer: port must be an integer >= 0 and <= 65535, got -1"),
    (dict(watch="yes"), "ModelServer: watch must be True or False, got str 'yes'"),
    (dict(check_finite=0), "ModelServer: check_finite must be True or False, got int 0"),
])
def test_bad_settings_are_refused_by_name_before_loading(tmp_path, kwargs, needle):
    from juicepy.errors import ArgumentError
    from juicepy.serve import ModelServer

    with pytest.raises(ArgumentError) as err:
        ModelServer(tmp_path / "not-loaded.safetensors", "numpy", **kwargs)
    assert str(err.value) == needle


@pytest.mark.parametrize("flag, value, needle", [
    ("--max-batch", "0", "argument --max-batch: must be an integer >= 1, got 0"),
    ("--port", "70000", "argument --port: must be an integer >= 0 and <= 65535, got 70000"),
    ("--watch-interval", "nan", "argument --watch-interval: must be a finite number > 0, got nan"),
    ("--batch-wait-ms", "-1", "argument --batch-wait-ms: must be a finite number >= 0, got -1.0"),
    ("--max-connections", "2.5", "argument --max-connections: must be an integer >= 1, got str '2.5'"),
])
def test_serve_flags_out_of_range_are_usage_errors(tmp_path, capsys, flag, value, needle):
    from juicepy.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path / "ck.safetensors"), flag, value])
    assert exit_.value.code == 2 and needle in capsys.readouterr().err
