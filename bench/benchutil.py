"""Shared helpers for the benchmark suites (importable: pyproject puts bench/ on sys.path)."""

import ctypes
import math
import statistics
import time

import pytest


def torch_or_none():
    """PyTorch if importable, for reference groups; None otherwise."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def require_torch():
    """PyTorch, or skip the benchmark saying why (it is the reference group, not a dependency)."""
    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed: no torch reference in this run")
    return torch


def torch_adam_step(torch, model, x, y, lr=1e-3):
    """A PyTorch eager training step (Adam, cross-entropy, grads set to None) on fixed host
    data, run once to warm up; returns the step function to time."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    return step


#: The prefix of every paired group's name; the rest is the workload's unpaired group name.
PAIRED_PREFIX = "paired: "


def paired_summary(subject_times, reference_times, repeats=1) -> dict:
    """The extra_info of a paired benchmark from its self-timed calls (seconds, ``repeats`` a
    side a round; call i of each side taken in the same round): both medians, their ratio, and
    the median of the per-call ratios (each round's calls share whatever slow spell the machine
    had then)."""
    if len(subject_times) != len(reference_times) or not subject_times or len(subject_times) % repeats:
        raise ValueError(f"paired rounds: expected as many subject as reference times, a multiple of "
                         f"repeats={repeats} (at least one), got {len(subject_times)} and {len(reference_times)}")
    subject, reference = statistics.median(subject_times), statistics.median(reference_times)
    return {"subject_median": subject, "reference_median": reference, "ratio": subject / reference,
            "pair_ratio": statistics.median(s / r for s, r in zip(subject_times, reference_times)),
            "rounds": len(subject_times) // repeats, "repeats": repeats}


#: seconds each side runs untimed before its timed call in a paired round: the other side's idle
#: threads keep spinning after its call (OpenBLAS's for about 2**28 TSC ticks, PyTorch's OpenMP
#: workers, the NumPy backend's lanes) and, on two cores, a call that starts inside that window
#: runs on half the machine (docs/architecture.md, "Measuring speed")
SETTLE = 0.12
#: seconds of timed calls each side makes a round at least (as many back-to-back calls as that
#: takes, at most MAX_REPEATS, each its own sample): a layer's forward of 0.1-0.2 ms on PoCL
#: comes in two modes (one of its threads waking late), and the median of one call a round over
#: 5-7 rounds swung from run to run with the few samples' modes (docs/architecture.md)
MIN_TIMED = 5e-3
MAX_REPEATS = 64


def run_paired(benchmark, subject, reference, reference_name, *, max_time, min_rounds,
               settle=SETTLE, clock=time.perf_counter, min_timed=MIN_TIMED):
    """Benchmark ``subject`` with every timed round preceded, in pedantic's setup (outside
    pytest-benchmark's timing), by timed calls of ``reference``, so that the two sides take
    turns in this process and the ratio stored in ``benchmark.extra_info`` does not depend on the
    machine's speed minutes apart. Before each side's timed call it runs untimed for ``settle``
    seconds (at least one call), so that the other side's spinning threads have gone quiet.
    Both sides time themselves with ``clock``, each call its own sample: a round times ``repeats``
    calls of each side back to back, enough for the faster side to spend ``min_timed`` (at most
    MAX_REPEATS; the subject's last call is the one pytest-benchmark times).

    One pair of calls runs first: it sizes the repeats and the rounds, to spend about
    ``3 * max_time`` in all (two unpaired tests spend ``2 * max_time``, without the settling), at
    least ``min_rounds``. Under --benchmark-disable each side runs once and no timings are
    stored. Returns the extra_info entries written (None when disabled)."""
    subject_times, reference_times = [], []

    def timed(fn, times):
        start = clock()
        fn()
        times.append(clock() - start)

    def settled(fn):
        end = clock() + settle
        fn()
        while clock() < end:
            fn()

    benchmark.extra_info["reference"] = reference_name
    if benchmark.disabled:
        def call_reference():  # pedantic takes what a setup returns for the target's arguments
            reference()

        benchmark.pedantic(subject, setup=call_reference, rounds=1)
        return None
    timed(reference, reference_times)
    timed(subject, subject_times)
    t_subject, t_reference = subject_times.pop(), reference_times.pop()
    fastest = min(t_subject, t_reference)
    repeats = max(1, min(MAX_REPEATS, math.ceil(min_timed / fastest))) if fastest > 0 else MAX_REPEATS
    per_round = max(t_subject, settle) + max(t_reference, settle) + repeats * (t_subject + t_reference)
    rounds = max(min_rounds, math.ceil(3 * max_time / per_round) if per_round > 0 else min_rounds)

    def setup():
        settled(reference)
        for _ in range(repeats):
            timed(reference, reference_times)
        settled(subject)
        for _ in range(repeats - 1):
            timed(subject, subject_times)

    benchmark.pedantic(lambda: timed(subject, subject_times), setup=setup, rounds=rounds)
    summary = paired_summary(subject_times, reference_times, repeats)
    benchmark.extra_info.update(summary)
    return summary


def paired_reference(backend, build, build_torch):
    """(reference step, its name) for a paired benchmark of ``build(backend)``: PyTorch's
    ``build_torch(torch)`` for the NumPy backend (skips where PyTorch is missing), the NumPy
    backend's ``build(numpy backend)`` for every other backend."""
    if backend.name == "numpy":
        return build_torch(require_torch()), "torch"
    import juicepy

    return build(juicepy.backend("numpy")), "numpy"


#: glibc mallopt parameters and the values the paired tests pin them to: the ceiling of glibc's
#: own dynamic mmap threshold on 64-bit, and a trim threshold no benchmark's frees reach
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PINNED = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: (1 << 31) - 1}  # mallopt takes an int


def pin_malloc_thresholds() -> bool:
    """Fix glibc's malloc thresholds for the rest of the process (True where glibc took them).
    Left dynamic, they follow the biggest blocks freed so far, so whether PyTorch's per-call
    tensors come from the heap or from fresh zeroed pages depends on what else ran in the
    process, and interleaving the NumPy backend's calls turned PyTorch's conv forward to the
    slow case (docs/architecture.md); the paired tests run after all others (paired_last)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return all(mallopt(param, value) == 1 for param, value in _PINNED.items())


def paired_last(items) -> None:
    """Move the paired benchmarks after all others, keeping each part's order: they pin glibc's
    malloc thresholds for the rest of the process, which the unpaired ones never ran under."""
    items.sort(key=lambda item: "paired" in getattr(item, "fixturenames", ()))


@pytest.fixture
def paired(benchmark, request):
    """``paired(subject, reference, reference_name, **options)``: run_paired with this run's
    --benchmark-max-time and --benchmark-min-rounds (options: settle, clock), glibc's malloc
    thresholds pinned."""
    config = request.config
    pin_malloc_thresholds()

    def run(subject, reference, reference_name, **options):
        return run_paired(benchmark, subject, reference, reference_name,
                          max_time=float(config.getoption("benchmark_max_time")),
                          min_rounds=config.getoption("benchmark_min_rounds"), **options)

    return run
