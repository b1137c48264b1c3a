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
def require_kernels():
    """``require(backend, *families)``: skip where the backend left these kernel families of
    local_memory.OPTIONAL_FAMILIES out of its build because the device's local memory cannot hold
    their tiles (PoCL on a CPU with 1 MiB of L2 a core offers 512 KiB); the backend then takes
    their fallbacks, which the rule tests and test_local_memory.py check there."""
    from juicepy.backends.opencl import local_memory as lm

    def require(backend, *families):
        missing = [f for f in families if not backend.kernel_fits[f]]
        if missing:
            need = lm.family_bytes(backend._gemm_tiles)
            pytest.skip(f"{backend.device.name}: {backend.limits.local_mem_size} bytes of local memory; "
                        + ", ".join(f"{f} needs {need[f]}" for f in missing)
                        + " (the backend builds without it and takes its fallback)")
    return require


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
