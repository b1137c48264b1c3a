"""Program building and caching (juicepy/backends/opencl/programs.py)."""

import numpy as np
import pytest

from juicepy.backends.opencl import programs


def test_kernels_are_built_once_and_cached(ocl):
    first = ocl._programs.kernel("elementwise.cl", "relu_fwd")
    assert ocl._programs.kernel("elementwise.cl", "relu_fwd") is first


def test_every_kernel_file_ships_with_the_package():
    for name in ("elementwise.cl", "rows.cl", "gemm.cl", "conv.cl", "norm.cl"):
        assert "__kernel" in programs.source(name)


def test_a_variant_is_the_same_source_built_with_its_own_defines(ocl, monkeypatch):
    built = []
    real = programs.source
    monkeypatch.setattr(programs, "source", lambda name: built.append(name) or real(name))
    cache = programs.ProgramCache(ocl._cl, ocl.context, ocl.device,
                                  {"conv.cl": {"VEC": 16}, "conv.cl:narrow": {"VEC": 8}})
    wide, narrow = cache.kernel("conv.cl", "conv_direct_fwd"), cache.kernel("conv.cl:narrow", "conv_direct_fwd")
    assert built == ["conv.cl", "conv.cl"] and wide is not narrow
    assert cache.kernel("conv.cl:narrow", "conv_direct_fwd") is narrow


def test_a_build_failure_names_the_file_and_device(ocl, monkeypatch):
    cache = programs.ProgramCache(ocl._cl, ocl.context, ocl.device, {})
    monkeypatch.setattr(programs, "source", lambda name: "__kernel void broken( { }")
    with pytest.raises(RuntimeError, match=r"building broken\.cl for .*failed"):
        cache.kernel("broken.cl", "broken")


def test_scalar_arguments_take_python_numbers(ocl):
    x = ocl.from_host(np.array([-1.0, 2.0], np.float32))
    out = ocl.empty((2,))
    kernel = ocl._programs.kernel("elementwise.cl", "scale_f32")
    kernel(ocl.queue, (2,), None, 2, x.base_data, 0, 3.0, out.base_data, 0)  # ints/floats, no numpy wrappers
    np.testing.assert_array_equal(ocl.to_host(out), [-3.0, 6.0])


def test_concurrent_launches_keep_their_own_arguments(ocl):
    """Threads sharing one backend (and its cached kernels) each get their own results."""
    import threading

    results = {}

    def work(t):
        x = ocl.from_host(np.full(1000, float(t), np.float32))
        out = ocl.empty((1000,))
        for _ in range(50):
            ocl.scale(x, 2.0, out)
        results[t] = ocl.to_host(out)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(4):
        np.testing.assert_array_equal(results[t], np.full(1000, 2.0 * t, np.float32))
