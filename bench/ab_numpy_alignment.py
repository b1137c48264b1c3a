"""In-process A/B of the NumPy backend's array alignment on workloads of bench/test_bench_conv.py
(fwd+bwd) or bench/test_bench_cnn.py (step): one copy of each workload built on cache-line
aligned arrays (the backend's own, backend.ALIGNMENT) and one whose arrays all start 16 bytes
past a line (where NumPy's allocator puts them), run in alternating order, blocks of calls,
medians of the blocks and the median of each round's ratio aligned / offset.

    python bench/ab_numpy_alignment.py [WORKLOAD ...] [--rounds N]

WORKLOAD: the start of a conv case's name ("1x1", "5x5") or a CNN's ("resnet", "cifar"); default every
conv case.
"""
import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bench_cnn as cnn  # noqa: E402
import test_bench_conv as conv  # noqa: E402

from juicepy.backends import backend as get_backend  # noqa: E402
from juicepy.backends.numpy import backend as numpy_backend  # noqa: E402

#: where the offset build's arrays start past a cache line
OFFSET = 16


def _offset(allocate, shape, dtype):
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = allocate(nbytes + numpy_backend.ALIGNMENT + OFFSET, np.uint8)
    start = -raw.ctypes.data % numpy_backend.ALIGNMENT + OFFSET
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _build(name, backend):
    case = next((c for c in conv.CASES if c.startswith(name)), None)
    if case is not None:
        return f"conv {case} fwd+bwd", conv.juicepy_fwd_bwd(backend, case)
    model = next((m for m in cnn.MODELS if m.startswith(name)), None)
    if model is None:
        raise SystemExit(f"no workload starts {name!r}: {', '.join(list(conv.CASES) + list(cnn.MODELS))}")
    return f"{model} step", cnn.juicepy_step(backend, model)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(conv.CASES))
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    backend = get_backend("numpy")
    for name in args.workloads:
        runs = {}
        for build in ("aligned", "offset"):
            if build == "offset":
                numpy_backend._aligned, aligned = _offset, numpy_backend._aligned
            try:
                label, runs[build] = _build(name, backend)
            finally:
                if build == "offset":
                    numpy_backend._aligned = aligned
        times = {build: [] for build in runs}
        for r in range(args.rounds):
            for build in (runs if r % 2 == 0 else reversed(list(runs))):
                runs[build]()
                start = time.perf_counter()
                for _ in range(8):
                    runs[build]()
                times[build].append((time.perf_counter() - start) / 8)
        ratio = statistics.median(a / o for a, o in zip(times["aligned"], times["offset"]))
        print(f"{label}: aligned {statistics.median(times['aligned']) * 1e3:.3f} ms, offset by {OFFSET} bytes "
              f"{statistics.median(times['offset']) * 1e3:.3f} ms, ratio {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
