"""Time per C kernel of the NumPy backend in one workload of bench/test_bench_conv.py (forward +
backward), every call wrapped and timed on the calling thread; run with JUICEPY_NUM_THREADS=1 so
each kernel's time is its whole work, not one lane's share.

    JUICEPY_NUM_THREADS=1 python bench/profile_numpy_kernels.py 5x5 [steps]
"""
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bench_conv as conv  # noqa: E402

from juicepy.backends import backend as get_backend  # noqa: E402


class _Timed:
    """The C module with each function's calls timed into ``totals`` and counted."""

    def __init__(self, module, totals, calls):
        self._module, self._totals, self._calls = module, totals, calls

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._totals[name] += time.perf_counter() - start
                self._calls[name] += 1
        return timed


def main(argv) -> int:
    if len(argv) < 1 or not any(case.startswith(argv[0]) for case in conv.CASES):
        print(f"usage: profile_numpy_kernels.py CASE [steps]; CASE starts one of: {', '.join(conv.CASES)}")
        return 2
    case = next(case for case in conv.CASES if case.startswith(argv[0]))
    steps = int(argv[1]) if len(argv) > 1 else 10
    backend = get_backend("numpy")
    if backend.conv_kernels is None:
        print("the C kernels are not built here (pip install . builds them)")
        return 1
    totals, calls = collections.Counter(), collections.Counter()
    backend.conv_kernels = _Timed(backend.conv_kernels, totals, calls)
    step = conv.juicepy_fwd_bwd(backend, case)
    step()
    totals.clear(), calls.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{case}, fwd+bwd: {(time.perf_counter() - start) / steps * 1e3:.3f} ms a step "
          f"({os.environ.get('JUICEPY_NUM_THREADS', 'all')} lanes)")
    for name in sorted(totals, key=lambda n: -totals[n]):
        print(f"  {name:24s} {calls[name] // steps:4d} calls {totals[name] / steps * 1e3:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
