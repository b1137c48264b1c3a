import numpy as np
import pytest

import juicepy as jp
from juicepy.backends import BackendUnavailable


def _opencl_or_reason():
    try:
        return jp.backend("opencl"), ""
    except BackendUnavailable as exc:
        return None, str(exc)


@pytest.fixture(scope="session")
def ocl():
    """The OpenCL backend; tests skip (stating why) only where no OpenCL platform/device exists."""
    backend, reason = _opencl_or_reason()
    if backend is None:
        pytest.skip(f"no OpenCL here: {reason}")
    return backend


@pytest.fixture
def npb():
    return jp.backend("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
