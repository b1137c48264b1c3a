import threading

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.train import Adam, Trainer


def _net(seed, hidden=32, out=4):
    net = jp.Network(L.Sequential(L.Linear(hidden), L.Tanh(), L.Linear(out)), (8,), seed=seed)
    net.max_batch = 16  # several chunks per request: a swap may land between them
    return net


def test_transform_serves_the_network():
    net = _net(0)
    p = jp.Predictor(net, "numpy")
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(p.transform(x), net.transform("numpy", x))


def test_swaps_under_concurrent_requests_never_mix_networks():
    nets = [_net(0), _net(1), _net(2, hidden=16)]  # any inner shape: only the unit shapes must match
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 7, 40)]
    expected = [[n.transform("numpy", x) for n in nets] for x in inputs]
    predictor = jp.Predictor(nets[0], "numpy")
    stop = threading.Event()
    failures, served = [], [0] * len(nets)
    lock = threading.Lock()

    def client(k):
        x = inputs[k % len(inputs)]
        while not stop.is_set():
            got = predictor.transform(x)
            matches = [i for i, e in enumerate(expected[k % len(inputs)]) if np.array_equal(got, e)]
            with lock:
                if not matches:
                    failures.append(k)
                else:
                    served[matches[0]] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(150):
            predictor.swap(nets[(i + 1) % len(nets)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, f"{len(failures)} requests got an output that no single network gives"
    assert sum(served) > 0


def test_mismatching_network_is_refused_and_old_keeps_serving(tmp_path):
    net = _net(0)
    p = jp.Predictor(net, "numpy")
    x = np.ones((3, 8), np.float32)
    before = p.transform(x)
    with pytest.raises(ShapeError, match=r"output unit shapes \[\(5,\)\], serving \[\(4,\)\].*old network keeps serving"):
        p.swap(_net(1, out=5))
    with pytest.raises(ShapeError, match=r"input unit shapes \[\(9,\)\]"):
        p.swap(jp.Network(L.Linear(4), (9,)))
    with pytest.raises(ShapeError, match="dtype float64"):
        p.swap(jp.Network(L.Sequential(L.Linear(4)), (8,), dtype=np.float64))
    assert p.network is net
    np.testing.assert_array_equal(p.transform(x), before)


def test_swap_returns_old_and_swap_from_checkpoint(tmp_path):
    a, b = _net(0), _net(1)
    p = jp.Predictor(a, "numpy")
    assert p.swap(b, warmup_rows=3) is a and p.network is b
    jp.save(tmp_path / "a.safetensors", a)
    old = p.swap_from(tmp_path / "a.safetensors")
    assert old is b
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(p.transform(x), a.transform("numpy", x))


def test_train_on_numpy_serve_on_every_backend(backend):
    net = _net(0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    for _ in range(5):
        trainer.train_minibatch("numpy", x, y)
    p = jp.Predictor(_net(5), backend)
    p.swap(net)
    np.testing.assert_allclose(p.transform(x), net.transform("numpy", x), rtol=1e-4, atol=1e-5)


def test_swap_and_new_requests_do_not_wait_for_a_request_in_flight():
    old, new = _net(0), _net(1)
    p = jp.Predictor(old, "numpy")
    x = np.ones((4, 8), np.float32)
    expected_old, expected_new = old.transform("numpy", x), new.transform("numpy", x)
    results, entered = {}, threading.Event()
    run_old = old.transform

    def traced(*args, **kwargs):
        entered.set()
        return run_old(*args, **kwargs)

    old.transform = traced
    old._lock.acquire()  # the old network is busy: a request on it stays in flight
    try:
        stuck = threading.Thread(target=lambda: results.__setitem__("stuck", p.transform(x)))
        stuck.start()
        assert entered.wait(timeout=30)
        swapper = threading.Thread(target=lambda: results.__setitem__("swap", p.swap(new, warmup_rows=4)))
        swapper.start()
        swapper.join(timeout=30)
        assert not swapper.is_alive(), "swap waited for the request in flight"
        np.testing.assert_array_equal(p.transform(x), expected_new)  # served while the old one is busy
        assert "stuck" not in results
    finally:
        old._lock.release()
    stuck.join(timeout=30)
    np.testing.assert_array_equal(results["stuck"], expected_old)  # finished on the network it began on
    assert results["swap"] is old


def test_serving_every_request_size_keeps_a_few_contexts(backend):
    net = _net(0)
    net.max_batch = 1024
    predictor = jp.Predictor(net, backend)
    x = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    expected = net.transform(backend, x)
    before = backend.allocations
    for rows in range(1, 301):
        np.testing.assert_allclose(predictor.transform(x[:rows]), expected[:rows], rtol=1e-5, atol=1e-6)
    # sizes up to 300 need no 512-row context: 257..300 run as 256 rows and the rest
    assert sorted(net.inference_capacities(backend)) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert backend.allocations - before < 10 * 20  # eight more contexts of a few buffers each, not 299
