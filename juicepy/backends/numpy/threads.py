"""Thread lanes of the NumPy backend: NumPy ufunc loops and the C kernels release the GIL, so
one flat block or one batch can be split over the cores with a shared thread pool."""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np

from . import kernels as _kernels

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # a declared dependency; without it GEMM-heavy ops run on one lane
    ThreadpoolController = None

# Optimizer updates run over the flat param block in chunks small enough that a dozen passes
# stay in L2 cache.
CHUNK = 65536
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


_CPU_COUNT = os.cpu_count() or 1  # os.cpu_count() reads sysfs on every call: once per op adds up


def num_threads() -> int:
    """Lanes to use: ``$JUICEPY_NUM_THREADS``, else the machine's core count."""
    return max(1, int(os.environ.get("JUICEPY_NUM_THREADS", 0)) or _CPU_COUNT)


def pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="juicepy-numpy")
        return _POOL


#: seconds a lane thread keeps polling for its next call before it blocks: the gaps between a
#: training step's parallel regions are mostly shorter than a blocked thread's wake-up on the
#: project's VMs (docs/numpy.md)
LANE_SPIN = 2e-3
#: seconds the dispatching thread polls for its lanes to finish before it blocks
WAIT_SPIN = 20e-3
#: seconds a thread that was handed a call (or its lane's result) polls for a C kernel to
#: release the GIL before it takes the GIL the usual way (kernels.GIL_RELEASES)
HANDOVER_SPIN = 50e-6

_local = threading.local()


class _Lane:
    """One extra lane: a daemon thread that runs the calls posted to it, one at a time. Between
    calls it polls its flags in C with the GIL released (``spin_while``) before it falls back to
    blocking on its condition, so a call posted soon after the last one starts at once."""

    def __init__(self, spin_while, index: int):
        # calls posted, calls done, and kernels.GIL_RELEASES when the last call was posted and
        # when it was done
        self.flags = np.zeros(4, np.int64)
        self.call = None
        self.error = None
        self.cond = threading.Condition()
        self.spin_while = spin_while
        self.index = index
        threading.Thread(target=self._run, name=f"juicepy-numpy-lane-{index}", daemon=True).start()

    def _run(self) -> None:
        _local.in_lane = True
        done = 0
        while True:
            # while it polls, it runs the parts of C kernels' calls handed to it (_side_lanes.h)
            if not self.spin_while(self.flags, 0, done, LANE_SPIN, _kernels.GIL_RELEASES, 2, HANDOVER_SPIN,
                                   self.index):
                with self.cond:
                    while self.flags[0] == done:
                        self.cond.wait()
            work, args = self.call
            try:
                work(*args)
            except BaseException as exc:  # handed to the dispatching thread, raised there
                self.error = exc
            done += 1
            with self.cond:
                self.flags[3] = _kernels.GIL_RELEASES[0]
                self.flags[1] = done
                self.cond.notify_all()

    def post(self, work, args) -> None:
        self.call, self.error = (work, args), None
        self.flags[2] = _kernels.GIL_RELEASES[0]
        with self.cond:
            self.flags[0] += 1
            self.cond.notify_all()

    def wait(self) -> BaseException | None:
        posted = int(self.flags[0])
        if not self.spin_while(self.flags, 1, posted - 1, WAIT_SPIN, _kernels.GIL_RELEASES, 3, HANDOVER_SPIN):
            with self.cond:
                while self.flags[1] != posted:
                    self.cond.wait()
        error, self.error = self.error, None
        return error


_LANES: list[_Lane] = []
_DISPATCH = threading.Lock()
_SPIN: dict = {}


def in_lane() -> bool:
    """Whether this thread runs a lane's call (what it dispatches then runs inline)."""
    return getattr(_local, "in_lane", False)


def _in_lane(work, args) -> None:
    """A call on a pool thread, marked as a lane so what it dispatches runs inline (a nested
    submit could wait for a pool thread that waits for it)."""
    _local.in_lane = True
    try:
        work(*args)
    finally:
        _local.in_lane = False


def _spin_while():
    """The C polling primitive, or None where _cpu_kernels is not built or not wanted
    (JUICEPY_CPU_KERNELS=numpy): then the lanes run on the thread pool."""
    if "spin" not in _SPIN:
        _SPIN["spin"] = getattr(_kernels.load("_cpu_kernels"), "spin_while", None)
    return _SPIN["spin"]


def _reset_after_fork() -> None:
    global _POOL
    _LANES.clear()
    _POOL = None
    _SPIN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def parallel(calls) -> None:
    """Run ``calls`` [(work, args)], the first on this thread and each other on its own lane
    (on a thread of the pool where the C polling lanes are not built, which may run two of
    them one after the other), and return when all have finished; the first error raised is raised here, after every call
    ended (no lane is still writing). Calls from inside a lane, or while another thread
    dispatches, run one after another on this thread: the same pieces, so the same results."""
    spin = _spin_while()
    if len(calls) == 1 or in_lane():
        for work, args in calls:
            work(*args)
        return
    if spin is None:
        futures = [pool().submit(_in_lane, work, args) for work, args in calls[1:]]
        try:
            calls[0][0](*calls[0][1])
        finally:
            errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None:
                raise error
        return
    if not _DISPATCH.acquire(blocking=False):
        for work, args in calls:
            work(*args)
        return
    try:
        while len(_LANES) < len(calls) - 1:
            _LANES.append(_Lane(spin, len(_LANES) + 1))
        lanes = _LANES[:len(calls) - 1]
        for lane, (work, args) in zip(lanes, calls[1:]):
            lane.post(work, args)
        try:
            calls[0][0](*calls[0][1])
        finally:
            errors = [lane.wait() for lane in lanes]
    finally:
        _DISPATCH.release()
    for error in errors:
        if error is not None:
            raise error


def chunked(size: int, work, *, min_parallel: int = 4 * CHUNK) -> None:
    """Call work(lo, hi, lane) over [0, size) in CHUNK pieces; lanes run in parallel threads
    and each lane owns its scratch, so lanes never share temporaries."""
    lanes = min(num_threads(), -(-size // CHUNK)) if size >= min_parallel else 1

    def run_lane(lane):
        for lo in range(lane * CHUNK, size, lanes * CHUNK):
            work(lo, min(lo + CHUNK, size), lane)

    parallel([(run_lane, (lane,)) for lane in range(lanes)])


# Below this many elements a second lane loses: right after a step's GEMMs the other core is
# still held by OpenBLAS's spinning threads (the in-step A/B timings are in docs/numpy.md).
SPLIT_MIN = 1 << 22


def split(size: int, work) -> None:
    """Call work(lo, hi) on one contiguous part per thread (one-pass fused kernels)."""
    lanes = min(num_threads(), max(1, size // CHUNK)) if size >= SPLIT_MIN else 1
    bounds = [size * k // lanes for k in range(lanes + 1)]
    parallel([(work, (bounds[k], bounds[k + 1])) for k in range(lanes)])


#: window elements per thread below which splitting a batch costs more than it saves
MIN_LANE_WORK = 1 << 17


def lane_count(n: int, work_per_row: int) -> int:
    """The lanes run_lanes splits n rows of work_per_row values over (C kernels that split
    inside one call use it too)."""
    return min(num_threads(), n, max(1, n * work_per_row // MIN_LANE_WORK))


def run_lanes(n: int, work_per_row: int, work) -> int:
    """work(lo, hi, lane) over batch rows [0, n), split into lanes that run in parallel threads
    when the batch is big enough; returns the lane count. Only the depthwise kernels split:
    with BLAS in the loop, its own threads and these oversubscribe the cores."""
    lanes = lane_count(n, work_per_row)
    if lanes == 1:
        work(0, n, 0)
        return 1
    bounds = [n * k // lanes for k in range(lanes + 1)]
    parallel([(work, (bounds[k], bounds[k + 1], k)) for k in range(lanes)])
    return lanes


_BLAS_LOCK = threading.Lock()
_blas_state = {"controller": None, "depth": 0, "limiter": None}


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (found once), or
    None without threadpoolctl."""
    if ThreadpoolController is None:
        return None
    if _blas_state["controller"] is None:
        _blas_state["controller"] = ThreadpoolController().select(user_api="blas")
    return _blas_state["controller"]


def blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process ([] without
    threadpoolctl)."""
    controller = _blas_controller()
    return [] if controller is None else list(controller.lib_controllers)


@contextmanager
def single_threaded_blas():
    """BLAS calls run on the calling thread only (process-wide, restored by the last of any
    overlapping users), so lanes that each call BLAS do not oversubscribe the cores. Sets the
    libraries' thread counts directly: threadpoolctl's ``limit`` re-reads every library's state
    and costs 4-5x more, which a small GEMM op (``gemm_threads``) pays on every call."""
    with _BLAS_LOCK:
        if _blas_state["depth"] == 0:
            saved = []
            for lib in _blas_controller().lib_controllers:
                count = lib.get_num_threads()
                if count is not None and count != 1:
                    lib.set_num_threads(1)
                    saved.append((lib, count))
            _blas_state["limiter"] = saved
        _blas_state["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                for lib, count in _blas_state["limiter"]:
                    lib.set_num_threads(count)
                _blas_state["limiter"] = None


#: multiply-adds (m*n*k) up to which a GEMM op runs on one BLAS thread: such a product gains
#: little from a second thread, and OpenBLAS's idle threads then spin for a while after it,
#: holding the core that the next ops' lanes need (a CIFAR CNN step: the direct conv kernels,
#: pooling and batch norm all ran slower behind one small Linear layer; docs/numpy.md)
SMALL_GEMM = 1 << 22


#: multiply-adds up to which a product needs no limit: OpenBLAS runs it on the calling thread
#: by itself (no worker woken, none left spinning after it; docs/numpy.md), and setting its
#: thread counts there and back costs many times such a product
TINY_GEMM = 1 << 17


def gemm_threads(m: int, n: int, k: int):
    """The BLAS threading for one (m, k) @ (k, n) product: one thread when it is small (BLAS
    left as it is for a tiny one, which it runs on this thread anyway), else BLAS's own (a
    context manager either way)."""
    if TINY_GEMM < m * n * k <= SMALL_GEMM and _blas_controller() is not None:
        return single_threaded_blas()
    return nullcontext()


def gemm_lanes() -> int:
    """Lanes for run_gemm_pieces: the thread count where BLAS threads can be limited, else 1."""
    with _BLAS_LOCK:
        return num_threads() if _blas_controller() is not None else 1


def _run_alone(count: int, available: int, work) -> int:
    """work(0, count, 0) on this thread for an op of ``count`` GEMM pieces run on one lane (of
    ``available``, gemm_lanes()); with fewer pieces than lanes, on one BLAS thread: its pieces are
    cut to stay in cache, so its products are small, and a multi-threaded BLAS call leaves
    OpenBLAS's worker spinning on the other core for a long while after it (its thread timeout),
    where the next ops' lanes then get a fraction of it (a ResNet step at batch 8 measured so:
    docs/numpy.md, session 39). Returns 1, the lane count."""
    with single_threaded_blas() if count < available else nullcontext():
        work(0, count, 0)
    return 1


def run_gemm_pieces(count: int, work) -> int:
    """work(lo, hi, lane) over pieces [0, count) of an op whose pieces each run an im2col copy
    and a GEMM: one contiguous range of pieces per lane, each lane with a single-threaded BLAS,
    so the whole op is one parallel region (one sync) instead of one per GEMM, and each core
    keeps its own pieces in its cache; a lone piece with a single-threaded BLAS too
    (_run_alone). Returns the lane count."""
    available = gemm_lanes()
    lanes = min(available, count)
    if lanes <= 1:
        return _run_alone(count, available, work)
    bounds = [count * k // lanes for k in range(lanes + 1)]
    with single_threaded_blas():
        parallel([(work, (bounds[k], bounds[k + 1], k)) for k in range(lanes)])
    return lanes


def deal(count: int, piece: int, work, lanes: int) -> int:
    """work(lo, hi, lane) over [0, count) in pieces of ``piece``, on ``lanes`` lanes, each lane
    taking the next piece nobody has taken yet instead of a fixed range: when another process
    holds a core for a while, the other lane runs the rest instead of waiting for it. Only for
    pieces that write disjoint outputs and keep no per-lane sums, so which lane runs a piece
    changes no bits. Returns the lane count."""
    lanes = min(lanes, -(-count // piece))
    if lanes <= 1:
        work(0, count, 0)
        return 1
    taken = itertools.count(0, piece)  # next() on it is one C call: atomic under the GIL

    def lane(k):
        while (lo := next(taken)) < count:
            work(lo, min(lo + piece, count), k)

    parallel([(lane, (k,)) for k in range(lanes)])
    return lanes


def deal_gemm_pieces(count: int, work) -> int:
    """run_gemm_pieces with the pieces dealt one at a time (``deal``): for pieces that write
    disjoint outputs."""
    available = gemm_lanes()
    lanes = min(available, count)
    if lanes <= 1:
        return _run_alone(count, available, work)
    with single_threaded_blas():
        return deal(count, 1, work, lanes)
