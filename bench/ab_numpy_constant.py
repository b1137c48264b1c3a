"""In-process A/B of a module constant of the NumPy backend's spatial.py (a size or a rule's
threshold) on one workload: the values take turns in alternating order, blocks of calls each,
medians of the blocks' per-call times, and the median of each round's ratio to the first value.

    python bench/ab_numpy_constant.py conv "strided" fwd+bwd S2_FILTER_TILES "64;256" [rounds]
    python bench/ab_numpy_constant.py cnn "resnet 16-32-64" step S2_FILTER_TILES "64;256" [rounds]
    python bench/ab_numpy_constant.py cnn "resnet 16-32-64" step A,B "(64, 32);(32, 16)"

``conv`` takes a workload of bench/test_bench_conv.py by its name's start (fwd+bwd or forward),
``cnn`` one of bench/test_bench_cnn.py (step or forward); values are Python literals separated
by ";" (tuples such as "(2,);(1, 2)" included). Several constants named with commas change
together: each value is then a tuple with one item per constant.
"""
import ast
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bench_cnn as cnn  # noqa: E402
import test_bench_conv as conv  # noqa: E402

from juicepy.backends import backend as get_backend  # noqa: E402
from juicepy.backends.numpy import spatial  # noqa: E402


def workload(kind, name, mode, backend):
    if kind == "conv":
        case = next(c for c in conv.CASES if c.startswith(name))
        return f"{case} {mode}", conv.MODES[mode][0](backend, case)
    run = cnn.juicepy_step if mode == "step" else cnn.juicepy_forward
    return f"{name} {mode}", run(backend, name)


def main(argv) -> int:
    if len(argv) < 5 or argv[0] not in ("conv", "cnn") \
            or not all(hasattr(spatial, c) for c in argv[3].split(",")):
        print(__doc__)
        return 2
    kind, name, mode, constant = argv[:4]
    names = constant.split(",")
    values = [ast.literal_eval(v) for v in argv[4].split(";")]
    if len(names) > 1 and not all(isinstance(v, tuple) and len(v) == len(names) for v in values):
        print(f"each value needs one item per constant ({len(names)}): {argv[4]}")
        return 2
    rounds = int(argv[5]) if len(argv) > 5 else 9
    label, run = workload(kind, name, mode, get_backend("numpy"))
    original = tuple(getattr(spatial, c) for c in names)

    def assign(value):
        for c, v in zip(names, value if len(names) > 1 else (value,)):
            setattr(spatial, c, v)

    times = {i: [] for i in range(len(values))}
    try:
        for r in range(rounds):
            for i in (range(len(values)) if r % 2 == 0 else reversed(range(len(values)))):
                assign(values[i])
                run()
                run()
                start = time.perf_counter()
                for _ in range(6):
                    run()
                times[i].append((time.perf_counter() - start) / 6)
    finally:
        assign(original if len(names) > 1 else original[0])
    print(f"{label}, {constant} ({rounds} rounds of 6 calls each, medians ms; ratio of rounds to the first value):")
    for i, value in enumerate(values):
        pairs = statistics.median(t / f for t, f in zip(times[i], times[0]))
        print(f"  {value!r}: {statistics.median(times[i]) * 1e3:.3f} ms, {pairs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
