"""threads.parallel: the lane hand-off (polling lanes where _cpu_kernels is built, the thread
pool otherwise) runs every call once, raises a lane's error only after every call ended, and
never deadlocks when called from a lane or from two threads at once."""

import contextlib
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


@pytest.mark.skipif(spin_while is None, reason="_cpu_kernels is not loaded")
def test_spin_while_then_waits_for_a_gil_release_at_most_the_hand_over_time():
    """After the flag changed, with a releases counter it also waits while the counter still
    holds flags[seen] (the count when the work was posted), at most ``handover`` seconds."""
    flags = np.array([0, 0, 5], np.int64)
    releases = np.array([5], np.int64)
    flags[0] = 1
    start = time.perf_counter()
    assert spin_while(flags, 0, 0, 5.0, releases, 2, 0.02) is True  # the count never moves
    assert time.perf_counter() - start >= 0.02
    threading.Timer(0.005, releases.__setitem__, (0, 6)).start()
    assert spin_while(flags, 0, 0, 5.0, releases, 2, 5.0) is True  # returns once it moved
    assert releases[0] == 6
    assert spin_while(flags, 0, 1, 0.005, releases, 2, 5.0) is False  # no change: no hand-over wait
    with pytest.raises(ValueError, match="seen"):
        spin_while(flags, 0, 0, 0.0, releases, 3, 0.0)
    with pytest.raises(ValueError, match="int64"):
        spin_while(flags, 0, 0, 0.0, np.zeros(1, np.int32), 2, 0.0)


def _run_one_kernel(backend, name):
    """One call of the backend that runs a kernel of C module ``name``."""
    f32 = np.float32
    if name == "_cpu_kernels":
        x = np.ones(16, f32)
        backend.relu(x, x)
    elif name == "_pool_kernels":
        backend.max_pool2d(np.ones((1, 1, 4, 4), f32), np.empty((1, 1, 2, 2), f32),
                           np.empty((1, 1, 2, 2), np.int32), (2, 2), (2, 2), (0, 0))
    elif name == "_conv_kernels":
        backend.conv2d(np.ones((2, 16, 8, 8), f32), np.ones((16, 16, 3, 3), f32), np.empty((2, 16, 8, 8), f32),
                       (1, 1), (1, 1), (1, 1), 1)
    elif name == "_norm_kernels":
        c = 4
        backend.batch_norm_train(np.ones((2, c, 8, 8), f32), np.ones(c, f32), np.zeros(c, f32),
                                 np.empty((2, c, 8, 8), f32), np.empty(c, f32), np.empty(c, f32),
                                 np.zeros(c, f32), np.ones(c, f32), 0.1, 1e-5)
    else:
        h = np.empty((2, 8), f32)
        backend.rnn_cell(np.ones((2, 8), f32), np.ones((2, 8), f32), np.ones(8, f32), h, "tanh")


@pytest.mark.parametrize("name", ("_cpu_kernels", "_pool_kernels", "_conv_kernels", "_norm_kernels", "_rnn_kernels"))
def test_every_kernel_module_counts_its_gil_releases_once_loaded(name, monkeypatch):
    """kernels.load registers kernels.GIL_RELEASES with each module (the lanes' hand-over hint,
    _gil_hint.h); a module counts into the counter it was given last, None stops it, and a
    counter that is not a writable int64 array is refused."""
    from juicepy.backends.numpy import kernels

    backend = jp.backend("numpy")
    module = kernels.load(name, "c")
    if module is None:
        pytest.skip(f"{name} is not built")
    monkeypatch.setattr(threads, "num_threads", lambda: 1)  # the releases of this thread only
    counter = np.zeros(1, np.int64)
    try:
        before = int(kernels.GIL_RELEASES[0])
        _run_one_kernel(backend, name)
        assert kernels.GIL_RELEASES[0] > before  # registered by kernels.load
        module.count_gil_releases(counter)
        _run_one_kernel(backend, name)
        assert counter[0] >= 1
        module.count_gil_releases(None)
        counted = int(counter[0])
        _run_one_kernel(backend, name)
        assert counter[0] == counted
        for bad in (np.zeros(1, np.float64), np.zeros(0, np.int64), np.zeros(1, np.int64)[::-1].copy().view(np.uint8)):
            with pytest.raises(ValueError, match="int64"):
                module.count_gil_releases(bad)
    finally:
        module.count_gil_releases(kernels.GIL_RELEASES)  # as kernels.load left it


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


@pytest.mark.skipif(threads._blas_controller() is None or not threads._blas_controller().lib_controllers,
                    reason="threadpoolctl finds no BLAS library to limit in this process")
def test_a_lone_gemm_piece_runs_on_one_blas_thread(monkeypatch):
    """An op cut into fewer pieces than lanes runs its piece on this thread with BLAS on one
    thread (a threaded OpenBLAS call leaves its worker spinning beside the next ops' lanes); with
    a piece for each lane every lane's BLAS runs one thread too; with one lane in all
    (JUICEPY_NUM_THREADS=1) BLAS keeps its own threading. The counts are restored after."""
    from threadpoolctl import threadpool_limits

    libs = threads._blas_controller().lib_controllers
    seen = []

    def work(lo, hi, lane):
        seen.append((lo, hi, tuple(lib.get_num_threads() for lib in libs)))

    with threadpool_limits(limits=2, user_api="blas"):
        before = tuple(lib.get_num_threads() for lib in libs)
        assert set(before) == {2}
        monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
        for run in (threads.run_gemm_pieces, threads.deal_gemm_pieces):
            seen.clear()
            assert run(1, work) == 1
            assert seen == [(0, 1, (1,) * len(libs))]
            assert tuple(lib.get_num_threads() for lib in libs) == before
        seen.clear()
        assert threads.run_gemm_pieces(2, work) == 2
        assert sorted(seen) == [(0, 1, (1,) * len(libs)), (1, 2, (1,) * len(libs))]
        monkeypatch.setenv("JUICEPY_NUM_THREADS", "1")
        seen.clear()
        assert threads.run_gemm_pieces(3, work) == 1
        assert seen == [(0, 3, before)]
        with pytest.raises(RuntimeError, match="piece failed"):  # an error restores the counts too
            monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
            threads.run_gemm_pieces(1, lambda lo, hi, lane: (_ for _ in ()).throw(RuntimeError("piece failed")))
        assert tuple(lib.get_num_threads() for lib in libs) == before


def test_dealt_pieces_run_once_each_and_a_held_lane_takes_fewer(hand_off):
    taken = []
    lock = threading.Lock()

    def work(lo, hi, lane):
        if lane == 0:  # this lane's core is held by something else
            time.sleep(0.05)
        with lock:
            taken.append((lo, hi, lane))

    assert threads.deal(20, 3, work, 2) == 2
    assert sorted((lo, hi) for lo, hi, _ in taken) == [(lo, min(lo + 3, 20)) for lo in range(0, 20, 3)]
    by_lane = [sum(1 for *_, lane in taken if lane == k) for k in range(2)]
    # the held lane may take none at all: the other can take every piece before this thread
    # gets the GIL back from it (seen on the pool's threads with the two vCPUs placed far apart)
    assert by_lane[1] > by_lane[0]
    taken.clear()
    assert threads.deal(2, 3, work, 2) == 1  # one piece: no hand-off
    assert taken == [(0, 2, 0)]


@pytest.mark.skipif(jp.backend("numpy").conv_kernels is None, reason="_conv_kernels is not built")
@pytest.mark.parametrize("groups, kernel, channels", [(4, 3, 16), (1, 3, 64), (1, 5, 32)])
def test_dealt_forwards_give_the_bits_of_one_lane(monkeypatch, groups, kernel, channels):
    """The direct forward (its dealing threshold lowered to this size) and the Winograd
    forwards deal their samples to the lanes; each sample's bits must not depend on the lane."""
    from juicepy.backends.numpy import spatial

    monkeypatch.setattr(spatial, "DIRECT_DEAL_MIN", 0)
    backend = jp.backend("numpy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, channels, 16, 16)).astype(np.float32)
    w = rng.standard_normal((channels, channels // groups, kernel, kernel)).astype(np.float32)
    pad = kernel // 2
    outs = []
    for lanes in ("1", "2"):
        monkeypatch.setenv("JUICEPY_NUM_THREADS", lanes)
        out = np.empty_like(x)
        # the lanes' GEMMs run on one BLAS thread; a threaded OpenBLAS call may round differently
        with threads.single_threaded_blas() if threads._blas_controller() else contextlib.nullcontext():
            backend.conv2d(x, w, out, (1, 1), (pad, pad), (1, 1), groups)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_spin_while_refuses_a_lane_out_of_range():
    spin = threads._spin_while()
    if spin is None:
        pytest.skip("the C polling lanes are not built")
    flags = np.zeros(4, np.int64)
    for lane in (-1, 64):
        with pytest.raises(ValueError, match="lane must be in"):
            spin(flags, 0, 1, 0.0, None, -1, 0.0, lane)
    assert spin(flags, 0, 1, 0.0, None, -1, 0.0, 3)  # a lane may poll: the flag differs at once
