import sys

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends import BackendUnavailable
from juicepy.backends.numpy import NumpyBackend

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


def pytest_report_header(config):
    return f"juicepy backends available here: {', '.join(AVAILABLE)}"


@pytest.fixture(params=AVAILABLE)
def backend(request):
    """Every backend that starts on this machine (numpy always)."""
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
