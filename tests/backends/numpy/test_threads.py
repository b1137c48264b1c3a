"""threads.parallel: the lane hand-off (polling lanes where _cpu_kernels is built, the thread
pool otherwise) runs every call once, raises a lane's error only after every call ended, and
never deadlocks when called from a lane or from two threads at once."""

import threading
import time

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends.numpy import threads

spin_while = threads._spin_while()


@pytest.fixture(params=["lanes", "pool"])
def hand_off(request, monkeypatch):
    if request.param == "lanes" and spin_while is None:
        pytest.skip("_cpu_kernels is not loaded: no polling lanes")
    monkeypatch.setitem(threads._SPIN, "spin", spin_while if request.param == "lanes" else None)
    return request.param


def test_every_call_runs_once_on_its_own_thread(hand_off):
    seen = []
    lock = threading.Lock()

    def work(k, delay):
        time.sleep(delay)
        with lock:
            seen.append((k, threading.get_ident()))

    for _ in range(20):  # posts soon after each other and after the lanes went to sleep
        seen.clear()
        threads.parallel([(work, (k, 0.001 * (k % 2))) for k in range(3)])
        assert sorted(k for k, _ in seen) == [0, 1, 2]
        if hand_off == "lanes":  # a lane is a dedicated thread; the pool may reuse a worker
            assert len({ident for _, ident in seen}) == 3
        assert dict(seen)[0] == threading.get_ident()  # the first call runs on the caller


def test_a_lane_error_is_raised_after_every_call_ended(hand_off):
    ended = []

    def fail():
        raise ValueError("lane failed")

    def slow():
        time.sleep(0.02)
        ended.append(True)

    with pytest.raises(ValueError, match="lane failed"):
        threads.parallel([(slow, ()), (fail, ()), (slow, ())])
    assert ended == [True, True]
    threads.parallel([(ended.append, (k,)) for k in range(2)])  # the lanes still work after it
    assert sorted(ended[2:]) == [0, 1]


def test_nested_and_concurrent_dispatch_finish(hand_off):
    results = np.zeros(8)

    def inner(i):
        results[i] += 1

    def outer(k):
        threads.parallel([(inner, (2 * k + j,)) for j in range(2)])

    errors = []

    def dispatcher(k):
        try:
            threads.parallel([(outer, (2 * k,)), (outer, (2 * k + 1,))])
        except BaseException as exc:
            errors.append(exc)

    other = threading.Thread(target=dispatcher, args=(1,))
    other.start()
    dispatcher(0)
    other.join(timeout=10)
    assert not other.is_alive() and errors == []
    np.testing.assert_array_equal(results, np.ones(8))


@pytest.mark.skipif(spin_while is None, reason="_cpu_kernels is not loaded")
def test_spin_while_returns_when_the_flag_changes_or_the_time_is_up():
    flags = np.zeros(2, np.int64)
    start = time.perf_counter()
    assert spin_while(flags, 1, 0, 0.01) is False
    assert time.perf_counter() - start >= 0.01
    threading.Timer(0.005, flags.__setitem__, (1, 7)).start()
    assert spin_while(flags, 1, 0, 5.0) is True
    assert spin_while(flags, 0, 1, 5.0) is True  # already different: returns at once
    with pytest.raises(ValueError, match="int64"):
        spin_while(np.zeros(2, np.int32), 0, 0, 0.0)
    with pytest.raises(ValueError, match="index"):
        spin_while(flags, 2, 0, 0.0)


def test_only_small_products_set_the_blas_thread_count(monkeypatch):
    """A tiny product leaves BLAS as it is (it runs on the calling thread by itself), a small
    one runs under one BLAS thread, a large one under BLAS's own threading; the results are
    the product either way."""
    from contextlib import contextmanager

    limited = []

    @contextmanager
    def recording():
        limited.append(True)
        yield

    monkeypatch.setattr(threads, "single_threaded_blas", recording)
    monkeypatch.setattr(threads, "_blas_controller", lambda: object())
    for (m, n, k), limits in (((32, 10, 64), 0), ((64, 64, 64), 1), ((256, 256, 128), 0)):
        limited.clear()
        with threads.gemm_threads(m, n, k):
            pass
        assert len(limited) == limits, (m, n, k)
    backend = jp.backend("numpy")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal((64, 10)).astype(np.float32)
    out = np.empty((32, 10), np.float32)
    backend.gemm(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
