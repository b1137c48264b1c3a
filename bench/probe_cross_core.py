"""What it costs here for one lane to write memory that another lane has just read: the cache
lines move from the reader's core back to the writer's. On a VM the host may place the vCPUs on
cores that share a cache or on cores far apart, and move them while a process runs. On the
project's 2-core EPYC VM, writing 300 KB that the other core had read took 9-10 us in one
placement and 33-42 us in the other (9-10 us with no reader; a C loop, /work/s41/probe.c),
each placement held for seconds to minutes, and in the far one a ResNet training step took
13.8 ms instead of 11.7-12.4 (docs/numpy.md, session 41). Run it before and after a benchmark
to know which placement the numbers came from.

    python bench/probe_cross_core.py [seconds]    # one line every half second

The lanes are the NumPy backend's (threads.parallel): the other lane reads the buffer, then
this thread stores one value into each of its cache lines, timed; ``local`` is the same store
with no reader in between. The store per line, not a copy of the whole buffer, so that the
lines' moves, not the bandwidth, set the time.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from juicepy.backends.numpy import threads  # noqa: E402

#: bytes written: more than an L1 and well inside an L2, as a conv's weight transform or a
#: lane's share of a small activation
SIZE = 300 * 1024
#: float32 values per 64-byte cache line
LINE = 16
ROUNDS = 31


def _write_us(buffer, source, reader) -> float:
    """Median microseconds of storing ``source`` into each cache line of ``buffer`` after
    ``reader()`` ran on the other lane (None: with no read in between)."""
    times = []
    for _ in range(ROUNDS):
        if reader is not None:
            threads.parallel([(lambda: None, ()), (reader, ())])
        start = time.perf_counter()
        buffer[::LINE] = source
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def probe() -> tuple[float, float]:
    """(remote, local): microseconds to write SIZE bytes after the other lane read them, and
    after this thread wrote them itself."""
    buffer = np.zeros(SIZE // 4, np.float32)
    source = np.float32(1.0)
    total = []
    remote = _write_us(buffer, source, lambda: total.append(float(buffer.sum())))
    local = _write_us(buffer, source, None)
    return remote, local


def main(argv) -> int:
    if threads.num_threads() < 2:
        print("one lane here ($JUICEPY_NUM_THREADS or one core): nothing to probe")
        return 1
    seconds = float(argv[0]) if argv else 5.0
    end = time.perf_counter() + seconds
    while True:
        remote, local = probe()
        print(f"{time.strftime('%H:%M:%S')}  store into each line of {SIZE // 1024} KB after the other lane read it: "
              f"{remote:6.1f} us, with no reader: {local:6.1f} us, remote / local {remote / local:4.2f}", flush=True)
        if time.perf_counter() >= end:
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
