"""Benchmarks are parametrized over every backend that starts here, so new backends join the
same tables. Run: pytest bench --benchmark-group-by=group --benchmark-columns=min,median,mean

JUICEPY_CUDA_EMULATOR=1 (explicitly; never by default here) runs the cuda backend on the CPU
emulator of tests/cuda_emulator: a dry run of the benchmark code, its timings meaningless."""

import os

import pytest

import juicepy as jp

from benchutil import paired, paired_last  # noqa: F401  (paired: the paired benchmarks' fixture)

try:
    from juicepy.backends.numpy.runtime import runtime_info
except ImportError:  # a revision older than runtime_info, timed with these benchmarks as a "before"
    def runtime_info() -> dict:
        return {}

_SESSION_PATCH = pytest.MonkeyPatch()
if os.environ.get("JUICEPY_CUDA_EMULATOR") == "1":
    from cuda_emulator import cupy as emulated_cupy

    emulated_cupy.install(_SESSION_PATCH.setitem)

AVAILABLE = jp.available_backends()


def pytest_collection_modifyitems(config, items):
    paired_last(items)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record which BLAS kernels and C kernel builds ran (report.py prints them): some machines set
    OPENBLAS_CORETYPE, which holds OpenBLAS to one kernel family and moves every BLAS-bound row."""
    machine_info["juicepy"] = runtime_info()


def pytest_unconfigure(config):
    _SESSION_PATCH.undo()


@pytest.fixture(params=AVAILABLE)
def backend(request):
    return jp.backend(request.param)
