import importlib.util
import os

import numpy as np
import pytest

import juicepy as jp
import cuda_emulator
from cuda_emulator import cupy as emulated_cupy

EMULATOR_ENV_VAR = "JUICEPY_CUDA_EMULATOR"


def _emulator_wanted() -> bool:
    """$JUICEPY_CUDA_EMULATOR=1 runs the CUDA backend on the CPU emulator, 0 never; unset: on
    wherever a C++ compiler exists and CuPy does not (a GPU machine tests the real thing)."""
    raw = os.environ.get(EMULATOR_ENV_VAR, "").strip()
    if raw in ("0", "1"):
        return raw == "1"
    if raw:
        raise pytest.UsageError(f"${EMULATOR_ENV_VAR}={raw!r}: use 1 (on) or 0 (off)")
    return cuda_emulator.compiler() is not None and importlib.util.find_spec("cupy") is None


_SESSION_PATCH = pytest.MonkeyPatch()
EMULATOR = emulated_cupy.install(_SESSION_PATCH.setitem) if _emulator_wanted() else None
AVAILABLE = jp.available_backends()


def pytest_unconfigure(config):
    _SESSION_PATCH.undo()


def pytest_report_header(config):
    cuda = "on the CPU emulator (tests/cuda_emulator)" if EMULATOR is not None else "real CuPy, if any"
    return f"juicepy backends available here: {', '.join(AVAILABLE)}; cuda: {cuda}"


@pytest.fixture(params=AVAILABLE)
def backend(request):
    """Every backend that starts on this machine (numpy always; cuda on the emulator in CI)."""
    return jp.backend(request.param)


@pytest.fixture
def numpy_backend():
    return jp.backend("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
