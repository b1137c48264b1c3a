"""copy_channels / slice_channels (Concat's forward and backward) on every available backend,
against NumPy slicing."""

import numpy as np
import pytest


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 3, 4)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_copy_channels_into_an_offset(backend, rng, shape, accumulate):
    dst_host = rng.standard_normal(shape).astype(np.float32)
    src_host = rng.standard_normal((shape[0], 2) + shape[2:]).astype(np.float32)
    dst, src = backend.from_host(dst_host), backend.from_host(src_host)
    backend.copy_channels(src, dst, 3, accumulate=accumulate)
    expected = dst_host.copy()
    expected[:, 3:5] = expected[:, 3:5] + src_host if accumulate else src_host
    np.testing.assert_allclose(backend.to_host(dst), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 3, 4)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_slice_channels_from_an_offset(backend, rng, shape, accumulate):
    src_host = rng.standard_normal(shape).astype(np.float32)
    dst_host = rng.standard_normal((shape[0], 3) + shape[2:]).astype(np.float32)
    src, dst = backend.from_host(src_host), backend.from_host(dst_host)
    backend.slice_channels(src, dst, 1, accumulate=accumulate)
    expected = dst_host + src_host[:, 1:4] if accumulate else src_host[:, 1:4]
    np.testing.assert_allclose(backend.to_host(dst), expected, rtol=1e-6, atol=1e-6)


def test_composition_ops_allocate_nothing(backend, rng):
    src = backend.from_host(rng.standard_normal((4, 2, 3)).astype(np.float32))
    dst = backend.from_host(rng.standard_normal((4, 5, 3)).astype(np.float32))
    before = backend.allocations
    for accumulate in (False, True):
        backend.copy_channels(src, dst, 1, accumulate=accumulate)
        backend.slice_channels(dst, src, 2, accumulate=accumulate)
    assert backend.allocations == before
