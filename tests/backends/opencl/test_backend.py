"""What only the OpenCL backend does (its ops are proven by tests/backends/test_ops.py)."""

import numpy as np
import pytest


def test_float64_storage_is_refused_with_a_clear_error(ocl):
    with pytest.raises(TypeError, match="opencl backend computes in float32"):
        ocl.empty((3,), np.float64)


def test_float64_host_data_is_stored_as_float32(ocl):
    dev = ocl.from_host(np.array([1.5, -2.0]))
    assert dev.dtype == np.float32
    np.testing.assert_array_equal(ocl.to_host(dev), [1.5, -2.0])
