import importlib.util
import os
import sys

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends import BackendUnavailable
from juicepy.backends.numpy import NumpyBackend
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

#: Every backend the conformance suite (tests/backends/test_ops.py) runs on: id -> factory. A
#: factory raises BackendUnavailable where its backend cannot start here (the cases then skip,
#: saying why). Adding a backend here is all it takes to run the whole suite on it.
OPS_BACKENDS = {
    "numpy": lambda: NumpyBackend(kernels="c"),            # the C kernels where they were built
    "numpy-fallback": lambda: NumpyBackend(kernels="numpy"),  # the pure-NumPy paths
    "opencl": lambda: jp.backend("opencl"),
    "cuda": lambda: jp.backend("cuda"),
}
_ops_instances: dict = {}


def pytest_unconfigure(config):
    _SESSION_PATCH.undo()


def pytest_report_header(config):
    cuda = "on the CPU emulator (tests/cuda_emulator)" if EMULATOR is not None else "real CuPy, if any"
    return f"juicepy backends available here: {', '.join(AVAILABLE)}; cuda: {cuda}"


@pytest.fixture(params=AVAILABLE)
def backend(request):
    """Every backend that starts on this machine (numpy always; cuda on the emulator in CI)."""
    return jp.backend(request.param)


@pytest.fixture(params=list(OPS_BACKENDS))
def ops_backend(request):
    """One backend of OPS_BACKENDS (one instance per id for the session)."""
    name = request.param
    if name not in _ops_instances:
        try:
            _ops_instances[name] = OPS_BACKENDS[name]()
        except BackendUnavailable as exc:
            _ops_instances[name] = exc
    got = _ops_instances[name]
    if isinstance(got, BackendUnavailable):
        pytest.skip(f"{name} cannot start here: {got}")
    return got


@pytest.fixture
def numpy_backend():
    return jp.backend("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(name="assert_png")
def assert_png_fixture():
    """assert_png(path): a PNG of non-trivial size whose pixels are not one flat colour;
    returns (width, height). Skips where the plot extra (matplotlib) is not installed."""
    import struct

    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    from juicepy.plot import require_pyplot

    def check(path, min_bytes=10_000):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert len(data) > min_bytes, f"{path} has only {len(data)} bytes"
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        pixels = require_pyplot("the test").imread(path)
        assert pixels.shape[:2] == (height, width)
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20, "a flat image"
        return width, height

    return check


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Imports of matplotlib fail, as where the plot extra is not installed."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
