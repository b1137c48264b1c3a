"""Swaps over HTTP: POST /swap, --watch on a checkpoint rewritten by jp.save or by
`juicepy train --save`, refusal of other unit shapes (409), and concurrent clients that each
get one network's answer, never a mix and never an error."""

import json
import shutil
import threading

import numpy as np
import pytest

import juicepy as jp
from juicepy.cli import main
from juicepy.models import build_model
from juicepy.serve import ModelServer, definition_sha256


def test_swap_serves_the_new_checkpoint(tmp_path, checkpoint, make_net, connect):
    path, old = checkpoint
    new = make_net(5, hidden=24)  # other inner layers are fine: only the unit shapes must match
    jp.save(tmp_path / "new.safetensors", new, metadata={"epoch": 7})
    x = np.ones((3, 8), np.float32)
    with ModelServer(path, "numpy", port=0) as server:
        client = connect(server)
        np.testing.assert_array_equal(client.predict_json(x), old.transform("numpy", x))
        status, _, data = client.request("POST", "/swap", json.dumps({"path": str(tmp_path / "new.safetensors")}),
                                         "application/json")
        assert status == 200
        doc = json.loads(data)
        assert doc["swaps"] == 1 and doc["checkpoint"]["metadata"] == {"epoch": 7}
        assert doc["definition_sha256"] == definition_sha256(new) != definition_sha256(old)
        np.testing.assert_array_equal(client.predict_json(x), new.transform("numpy", x))


@pytest.mark.parametrize("kwargs,reason", [
    ({"out": 5}, r"output unit shapes [(5,)], serving [(4,)]"),
    ({"in_features": 9}, r"input unit shapes [(9,)], serving [(8,)]"),
    ({"dtype": np.float64}, "dtype float64, serving float32"),
])
def test_swap_to_other_unit_shapes_is_refused_with_409(tmp_path, checkpoint, make_net, connect, kwargs, reason):
    path, old = checkpoint
    jp.save(tmp_path / "other.safetensors", make_net(3, **kwargs))
    x = np.ones((2, 8), np.float32)
    with ModelServer(path, "numpy", port=0) as server:
        client = connect(server)
        status, _, data = client.request("POST", "/swap", json.dumps({"path": str(tmp_path / "other.safetensors")}),
                                         "application/json")
        assert status == 409
        message = json.loads(data)["error"]
        assert reason in message and "old network keeps serving" in message
        health = client.health()
        assert health["swaps"] == 0 and health["definition_sha256"] == definition_sha256(old)
        np.testing.assert_array_equal(client.predict_json(x), old.transform("numpy", x))


def test_corrupt_checkpoint_is_refused_and_the_old_one_serves(tmp_path, checkpoint, connect):
    path, old = checkpoint
    broken = tmp_path / "broken.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    broken.write_bytes(bytes(data))
    with ModelServer(path, "numpy", port=0) as server:
        client = connect(server)
        status, _, body = client.request("POST", "/swap", json.dumps({"path": str(broken)}), "application/json")
        assert status == 400 and b"corrupted" in body
        assert client.health()["swaps"] == 0


def _matching(answer, candidates, exact):
    """Indices of the candidate outputs ``answer`` equals (bit for bit, or to float rounding
    where micro-batching ran it in a batch of another size)."""
    if exact:
        return [i for i, c in enumerate(candidates) if np.array_equal(answer, c)]
    return [i for i, c in enumerate(candidates) if np.allclose(answer, c, rtol=1e-5, atol=1e-6)]


def _hammer(server, inputs, expected, connect, stop, exact, n_clients=8):
    """Clients send their input over and over until ``stop``; returns (answers per network,
    failures)."""
    served = np.zeros(len(expected[0]), int)
    failures, lock = [], threading.Lock()

    def client(k):
        conn = connect(server)
        x, candidates = inputs[k % len(inputs)], expected[k % len(inputs)]
        while not stop.is_set():
            try:
                got = conn.predict_json(x, wrap=bool(k % 2))
            except Exception as err:  # any failed request fails the test
                with lock:
                    failures.append(f"client {k}: {err!r}")
                return
            matches = _matching(got, candidates, exact)
            with lock:
                if len(matches) == 1:
                    served[matches[0]] += 1
                else:
                    failures.append(f"client {k}: answer matches {len(matches)} networks")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    return threads, served, failures


@pytest.mark.parametrize("max_batch", [32, 1], ids=["batched", "unbatched"])
def test_concurrent_clients_during_repeated_saves_each_get_one_network(tmp_path, make_net, connect, max_batch):
    nets = [make_net(0), make_net(1), make_net(2, hidden=32)]
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 1, 3, 5)]
    expected = [[n.transform("numpy", x) for n in nets] for x in inputs]
    for per_input in expected:  # the networks must be told apart far beyond rounding
        for i in range(3):
            for j in range(i):
                assert not np.allclose(per_input[i], per_input[j], rtol=1e-3, atol=1e-3)
    path = tmp_path / "ck.safetensors"
    jp.save(path, nets[0])
    stop = threading.Event()
    with ModelServer(path, "numpy", port=0, watch=True, watch_interval_s=0.005, max_batch=max_batch) as server:
        threads, served, failures = _hammer(server, inputs, expected, connect, stop, exact=max_batch == 1)
        swaps_seen = 0

        def writer():  # the learner: checkpoints written by jp.save from another thread
            for i in range(40):
                jp.save(path, nets[(i + 1) % 3])
                stop.wait(0.02)

        try:
            saver = threading.Thread(target=writer)
            saver.start()
            saver.join()
            swaps_seen = connect(server).health()["swaps"]
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not failures, failures[:5]
    assert swaps_seen >= 10, f"the watcher swapped only {swaps_seen} times for 40 saves"
    assert (served > 0).sum() >= 2, f"answers per network {served}: the swaps were never seen by clients"


def test_watch_follows_juicepy_train_save(tmp_path, connect):
    """`juicepy train --save` rewrites the served checkpoint every epoch; clients keep getting
    answers, each from one of the checkpoints written."""
    path = tmp_path / "ck.safetensors"
    first = jp.Network(build_model("mlp", (1, 8, 8), 10), input_shape=(1, 8, 8), seed=9)
    jp.save(path, first)
    versions = [first]
    x = np.random.default_rng(1).random((2, 1, 8, 8), np.float32)
    stop = threading.Event()
    answers, failures = [], []
    with ModelServer(path, "numpy", port=0, watch=True, watch_interval_s=0.01) as server:
        def client():
            conn = connect(server)
            while not stop.is_set():
                try:
                    answers.append(conn.predict_json(x))
                except Exception as err:
                    failures.append(repr(err))
                    return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            # epoch by epoch (--resume), so every checkpoint the server may have served is kept
            for epoch in (1, 2):
                argv = ["train", "--epochs", str(epoch), "--batch-size", "128", "--lr", "1e-2",
                        "--no-progress", "--save", str(path)]
                assert main(argv + (["--resume", str(path)] if epoch > 1 else [])) == 0
                shutil.copy(path, tmp_path / f"epoch{epoch}.safetensors")
                versions.append(jp.load(tmp_path / f"epoch{epoch}.safetensors").network)
            for _ in range(500):  # the watcher polls every 10 ms: wait for it to see the last save
                if connect(server).health()["checkpoint"]["metadata"].get("epoch") == 2:
                    break
                stop.wait(0.01)
            health = connect(server).health()
            latest = connect(server).predict_json(x)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not failures, failures[:3]
    assert health["swaps"] >= 1 and health["checkpoint"]["metadata"]["epoch"] == 2
    expected = [net.transform("numpy", x) for net in versions]
    unmatched = [a for a in answers if len(_matching(a, expected, exact=False)) != 1]
    assert answers and not unmatched, f"{len(unmatched)} of {len(answers)} answers match no single checkpoint"
    np.testing.assert_allclose(latest, expected[-1], rtol=1e-5, atol=1e-6)
