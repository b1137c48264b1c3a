"""What only the OpenCL backend does (its ops are proven by tests/backends/test_ops.py)."""

import numpy as np
import pytest

from juicepy.backends import Workspace


def test_float64_storage_is_refused_with_a_clear_error(ocl):
    with pytest.raises(TypeError, match="opencl backend computes in float32"):
        ocl.empty((3,), np.float64)


def test_float64_host_data_is_stored_as_float32(ocl):
    dev = ocl.from_host(np.array([1.5, -2.0]))
    assert dev.dtype == np.float32
    np.testing.assert_array_equal(ocl.to_host(dev), [1.5, -2.0])


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("decoupled,weight_decay,amsgrad", [(False, 0.0, False), (False, 1e-2, False),
                                                            (True, 1e-2, True)], ids=["adam", "adam_l2", "adamw_amsgrad"])
def test_vector_adam_matches_the_reference(ocl, lanes_backend, rng, lanes, decoupled, weight_decay, amsgrad):
    """adam_step_vec (CPU devices, in vectors of 8 or 16 lanes: whole vectors, then adam_step on
    the last elements) against a float64 NumPy Adam, and bit for bit against adam_step alone;
    views at odd offsets, NaN gradients stay NaN."""
    import math
    ocl = lanes_backend(lanes)
    if ocl._adam_lanes != lanes:
        pytest.skip(f"{ocl.device.name} is no CPU device: Adam runs one element per work-item there")
    n, off = 16 * 37 + 5, 3
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1) for _ in range(3)]
    grads[2][[0, 40, n - 1]] = np.nan
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
    results = {}
    for adam_lanes in (lanes, 1):
        flat = ocl.zeros((5 * (n + off),))
        p, g, m, v, x = (ocl.flat_view(flat, off + i * (n + off), (n,)) for i in range(5))
        ocl.write(p, p0.astype(np.float32))
        saved, ocl._adam_lanes = ocl._adam_lanes, adam_lanes
        try:
            for step, gh in enumerate(grads, start=1):
                ocl.write(g, gh.astype(np.float32))
                ocl.adam_update(p, g, m, v, step=step, max_exp_avg_sq=x if amsgrad else None, **hp)
        finally:
            ocl._adam_lanes = saved
        results[adam_lanes] = [ocl.to_host(a) for a in (p, m, v, x)]
    for a, b in zip(results[lanes], results[1]):
        np.testing.assert_array_equal(a, b)
    pr, mr, vr, xr = p0.copy(), np.zeros(n), np.zeros(n), np.zeros(n)
    for step, gh in enumerate(grads, start=1):
        gh = gh + (pr * weight_decay if weight_decay and not decoupled else 0.0)
        if decoupled:
            pr = pr * (1 - hp["lr"] * weight_decay)
        mr = mr + (gh - mr) * (1 - hp["beta1"])
        vr = vr * hp["beta2"] + (1 - hp["beta2"]) * gh * gh
        xr = np.where(np.isnan(vr), vr, np.maximum(xr, vr)) if amsgrad else xr
        denom = np.sqrt(xr if amsgrad else vr) / math.sqrt(1 - hp["beta2"] ** step) + hp["eps"]
        pr = pr - hp["lr"] / (1 - hp["beta1"] ** step) * mr / denom
    np.testing.assert_allclose(results[lanes][0], pr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[lanes][1], mr, rtol=1e-4, atol=1e-6)
    assert np.isnan(results[lanes][0][[0, 40, n - 1]]).all()


def test_vector_adam_is_built_only_where_it_runs(ocl, lanes_backend):
    """adam_step_vec is in elementwise.cl's build exactly where the backend runs it, at its lanes:
    a float16 crossing a call on a compiler without AVX-512 (PoCL 3.0 on Zen 4) cost the whole
    program its kernels once it came from the kernel cache."""
    from juicepy.backends.opencl.programs import compiled_float_lanes

    for backend, lanes in ((ocl, compiled_float_lanes(ocl._cl, ocl.context, ocl.device)), (lanes_backend(8), 8)):
        names = backend._programs._build("elementwise.cl").kernel_names.split(";")
        assert "adam_step" in names
        assert ("adam_step_vec" in names) == backend.is_cpu
        assert backend._adam_lanes == (lanes if backend.is_cpu else 1)


@pytest.mark.parametrize("shape", [(32, 128, 32, 32), (3, 7, 10, 10), (2, 3, 8, 7)])
@pytest.mark.parametrize("vectors", [True, False])
def test_bias_grad_plane_sums(ocl, rng, shape, vectors):
    """A convolution's bias gradient: planes of 64 floats or more summed by plane_sums_v (whole
    planes in float16 vectors), shorter ones and the switch's off state by plane_sums, against
    float64 sums; plane_sums_v adds in another order, so the two agree to rounding."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device)
    b._plane_vec = vectors
    launched = []
    real = b._kernel
    b._kernel = lambda filename, name: launched.append(name) or real(filename, name)
    dy = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    db = b.empty((shape[1],))
    b.bias_grad(b.from_host(dy), db, False, Workspace())
    np.testing.assert_allclose(b.to_host(db), dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-3)
    wanted = "plane_sums_v" if vectors and shape[2] * shape[3] >= 64 and b.gemm_variant == "packed" else "plane_sums"
    other = "plane_sums" if wanted == "plane_sums_v" else "plane_sums_v"
    assert wanted in launched and other not in launched
