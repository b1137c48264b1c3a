"""Thread lanes of the NumPy backend: NumPy ufunc loops and the C kernels release the GIL, so
one flat block or one batch can be split over the cores with a shared thread pool."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Optimizer updates run over the flat param block in chunks small enough that a dozen passes
# stay in L2 cache.
CHUNK = 65536
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def num_threads() -> int:
    """Lanes to use: ``$JUICEPY_NUM_THREADS``, else the machine's core count."""
    return max(1, int(os.environ.get("JUICEPY_NUM_THREADS", 0)) or (os.cpu_count() or 1))


def pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="juicepy-numpy")
        return _POOL


def chunked(size: int, work, *, min_parallel: int = 4 * CHUNK) -> None:
    """Call work(lo, hi, lane) over [0, size) in CHUNK pieces; lanes run in parallel threads
    and each lane owns its scratch, so lanes never share temporaries."""
    lanes = min(num_threads(), -(-size // CHUNK)) if size >= min_parallel else 1

    def run_lane(lane):
        for lo in range(lane * CHUNK, size, lanes * CHUNK):
            work(lo, min(lo + CHUNK, size), lane)

    if lanes == 1:
        run_lane(0)
        return
    futures = [pool().submit(run_lane, lane) for lane in range(1, lanes)]
    run_lane(0)
    for future in futures:
        future.result()


# Below this many elements a second lane loses: right after a step's GEMMs the other core is
# still held by OpenBLAS's spinning threads (the in-step A/B timings are in docs/numpy.md).
SPLIT_MIN = 1 << 22


def split(size: int, work) -> None:
    """Call work(lo, hi) on one contiguous part per thread (one-pass fused kernels)."""
    lanes = min(num_threads(), max(1, size // CHUNK)) if size >= SPLIT_MIN else 1
    bounds = [size * k // lanes for k in range(lanes + 1)]
    if lanes == 1:
        work(0, size)
        return
    futures = [pool().submit(work, bounds[k], bounds[k + 1]) for k in range(1, lanes)]
    work(bounds[0], bounds[1])
    for future in futures:
        future.result()


#: window elements per thread below which splitting a batch costs more than it saves
MIN_LANE_WORK = 1 << 17


def run_lanes(n: int, work_per_row: int, work) -> int:
    """work(lo, hi, lane) over batch rows [0, n), split into lanes that run in parallel threads
    when the batch is big enough; returns the lane count. Only the depthwise kernels split:
    with BLAS in the loop, its own threads and these oversubscribe the cores."""
    lanes = min(num_threads(), n, max(1, n * work_per_row // MIN_LANE_WORK))
    if lanes == 1:
        work(0, n, 0)
        return 1
    bounds = [n * k // lanes for k in range(lanes + 1)]
    futures = [pool().submit(work, bounds[k], bounds[k + 1], k) for k in range(1, lanes)]
    work(bounds[0], bounds[1], 0)
    for future in futures:
        future.result()
    return lanes
