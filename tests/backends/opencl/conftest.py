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



@pytest.fixture(scope="session")
def lanes_backend(ocl):
    """A factory: OpenCLBackend(ocl.device, vector_width=lanes, conv_vector_width=lanes, **kwargs). It skips the test
    where the backend refuses those lanes: a device reporting 16 float lanes whose compiler
    targets no AVX-512 (PoCL 3.0 on Zen 4) brings conv.cl's 16-lane build back from its kernel
    cache without kernels."""
    from juicepy.backends.opencl import OpenCLBackend
    from juicepy.backends.opencl.programs import refuses_float_lanes

    def make(lanes, **kwargs):
        if refuses_float_lanes(ocl._cl, ocl.context, ocl.device, lanes):
            pytest.skip(f"{ocl.device.name} reports 16 float lanes but its compiler targets no AVX-512 "
                        f"({ocl.device.version}): OpenCLBackend refuses vector_width={lanes} there")
        kwargs.setdefault("conv_vector_width", lanes)   # the convolutions' kernels and rules at those lanes too
        return OpenCLBackend(ocl.device, vector_width=lanes, **kwargs)
    return make
