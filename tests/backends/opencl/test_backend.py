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


@pytest.mark.parametrize("decoupled,weight_decay,amsgrad", [(False, 0.0, False), (False, 1e-2, False),
                                                            (True, 1e-2, True)], ids=["adam", "adam_l2", "adamw_amsgrad"])
def test_vector_adam_matches_the_reference(ocl, rng, decoupled, weight_decay, amsgrad):
    """adam_step16 (16-lane CPU devices: whole vectors, then adam_step on the last elements)
    against a float64 NumPy Adam, and bit for bit against adam_step alone; views at odd offsets,
    NaN gradients stay NaN."""
    import math
    n, off = 16 * 37 + 5, 3
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1) for _ in range(3)]
    grads[2][[0, 40, n - 1]] = np.nan
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
    results = {}
    for lanes in (16, 1):
        flat = ocl.zeros((5 * (n + off),))
        p, g, m, v, x = (ocl.flat_view(flat, off + i * (n + off), (n,)) for i in range(5))
        ocl.write(p, p0.astype(np.float32))
        saved, ocl._adam_lanes = ocl._adam_lanes, lanes
        try:
            for step, gh in enumerate(grads, start=1):
                ocl.write(g, gh.astype(np.float32))
                ocl.adam_update(p, g, m, v, step=step, max_exp_avg_sq=x if amsgrad else None, **hp)
        finally:
            ocl._adam_lanes = saved
        results[lanes] = [ocl.to_host(a) for a in (p, m, v, x)]
    for a, b in zip(results[16], results[1]):
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
    np.testing.assert_allclose(results[16][0], pr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[16][1], mr, rtol=1e-4, atol=1e-6)
    assert np.isnan(results[16][0][[0, 40, n - 1]]).all()
