"""Wall time per NumPy-backend op call (op name and the shapes of its first two array arguments)
in a CNN step or forward of bench/test_bench_cnn.py, with one lane and with all of them in one
process, side by side: which ops gain from the second lane and which do not.

    python bench/profile_numpy_ops.py "resnet 16-32-64" step [steps]
    python bench/profile_numpy_ops.py "cifar cnn 3x(conv-bn-relu-pool)" forward [steps]

Each backend method is wrapped and timed on the calling thread (its lanes' work included); the
lane count is switched through $JUICEPY_NUM_THREADS between blocks of steps, alternated.
"""
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import test_bench_cnn as cnn  # noqa: E402
from juicepy.backends import backend as get_backend  # noqa: E402

#: methods that only allocate or move data to or from the host
UNTIMED = {"empty", "zeros", "from_host", "to_host", "synchronize", "write"}


def instrument(backend, totals):
    """Wrap each public method of ``backend`` to add its wall time to totals[(name, shapes)]."""
    for name in dir(type(backend)):
        if name.startswith("_") or name in UNTIMED or not callable(getattr(type(backend), name)):
            continue
        method = getattr(backend, name)

        def timed(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                shapes = tuple(a.shape for a in args[:2] if isinstance(a, np.ndarray))
                totals[(_name, shapes)].append(time.perf_counter() - start)
        setattr(backend, name, timed)


def main(argv) -> int:
    if len(argv) < 2 or argv[0] not in cnn.MODELS or argv[1] not in ("step", "forward"):
        print(f"usage: profile_numpy_ops.py MODEL step|forward [steps]; MODEL one of: {', '.join(cnn.MODELS)}")
        return 2
    model, what = argv[0], argv[1]
    steps = int(argv[2]) if len(argv) > 2 else 20
    backend = get_backend("numpy")
    lanes = {"1": collections.defaultdict(list), "all": collections.defaultdict(list)}
    totals = collections.defaultdict(list)
    instrument(backend, totals)
    run = cnn.juicepy_step(backend, model) if what == "step" else cnn.juicepy_forward(backend, model)
    walls = {"1": [], "all": []}
    os.environ.pop("JUICEPY_NUM_THREADS", None)
    run()  # the thread pools start at their full size before any block runs on one lane
    for block in range(6):
        for label in (("1", "all") if block % 2 == 0 else ("all", "1")):
            if label == "1":
                os.environ["JUICEPY_NUM_THREADS"] = "1"
            else:
                os.environ.pop("JUICEPY_NUM_THREADS", None)
            run()
            totals.clear()
            start = time.perf_counter()
            for _ in range(steps):
                run()
            walls[label].append((time.perf_counter() - start) / steps)
            for key, times in totals.items():
                lanes[label][key].append(sum(times) / steps)
    print(f"{model} {what}: {statistics.median(walls['1']) * 1e3:.3f} ms on one lane, "
          f"{statistics.median(walls['all']) * 1e3:.3f} ms on all ({os.cpu_count()} cores); per op (medians of 3 "
          "blocks each, ms a step): one lane, all, ratio")
    one = {key: statistics.median(v) for key, v in lanes["1"].items()}
    every = {key: statistics.median(v) for key, v in lanes["all"].items()}
    for key in sorted(one, key=lambda k: -one[k])[:25]:
        name, shapes = key
        print(f"  {one[key] * 1e3:7.3f} {every.get(key, 0) * 1e3:7.3f} {one[key] / every[key] if every.get(key) else 0:5.2f}x"
              f"  {name} {' '.join(str(s) for s in shapes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
