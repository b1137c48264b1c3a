"""The NumPy convolution / pooling / batch-norm kernels at the op level: the depthwise batch split
over threads, kept forward columns, accumulate flags, and ops called without a workspace."""

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends.numpy import spatial as numpy_spatial
from juicepy.backends.numpy import threads as numpy_threads
from juicepy.backends.base import Workspace


@pytest.fixture
def b():
    return jp.backend("numpy")


def _out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_all(b, x, w, geometry, ws):
    (sh, sw), (ph, pw), (dh, dw), _ = geometry
    out = np.empty((x.shape[0], w.shape[0], _out_len(x.shape[2], w.shape[2], sh, ph, dh),
                    _out_len(x.shape[3], w.shape[3], sw, pw, dw)), x.dtype)
    b.conv2d(x, w, out, *geometry, ws=ws)
    dy = np.cos(out)
    dx, dw = np.empty_like(x), np.empty_like(w)
    b.conv2d_backward_data(dy, w, dx, *geometry, ws=ws)
    b.conv2d_backward_filter(x, dy, dw, *geometry, ws=ws)
    return out, dx, dw


def test_depthwise_batch_split_over_threads_matches_one_lane(b, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 9, 8))
    w = rng.standard_normal((4, 1, 3, 3))
    geometry = ((2, 2), (1, 1), (1, 1), 4)
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "1")
    single = _conv_all(b, x, w, geometry, Workspace())
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "3")
    monkeypatch.setattr(numpy_threads, "MIN_LANE_WORK", 1)
    assert numpy_threads.run_lanes(7, 1, lambda lo, hi, k: None) == 3
    split = _conv_all(b, x, w, geometry, Workspace())
    for a, c in zip(single, split):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_small_batches_stay_on_one_thread(b, monkeypatch):
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "4")
    lanes = []
    assert numpy_threads.run_lanes(2, 10, lambda lo, hi, k: lanes.append((lo, hi, k))) == 1
    assert lanes == [(0, 2, 0)]


@pytest.mark.parametrize("depth_limit", [1, 10**9], ids=["batch-inner", "per-sample"])
def test_weight_gradient_never_uses_columns_of_a_changed_input(b, monkeypatch, depth_limit):
    """The forward's columns are reused only while the input still equals the copy kept with them
    (the NumPy layouts; the C kernels keep no columns)."""
    monkeypatch.setattr(b, "conv_kernels", None)
    monkeypatch.setattr(numpy_spatial, "BATCH_INNER_MIN_DEPTH", depth_limit)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 6, 6))
    w = rng.standard_normal((4, 2, 3, 3))
    dy = rng.standard_normal((3, 4, 6, 6))
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    ws = Workspace()
    b.conv2d(x, w, np.empty((3, 4, 6, 6)), *geometry, ws=ws)
    x[1, 0, 2, 3] += 1.0  # written in place after the forward pass
    reused, fresh = np.empty_like(w), np.empty_like(w)
    b.conv2d_backward_filter(x, dy, reused, *geometry, ws=ws)
    b.conv2d_backward_filter(x, dy, fresh, *geometry, ws=Workspace())
    np.testing.assert_array_equal(reused, fresh)


@pytest.mark.parametrize("depth_limit", [1, 10**9], ids=["batch-inner", "per-sample"])
def test_kept_columns_give_the_same_gradient_as_recomputed_ones(b, monkeypatch, depth_limit):
    monkeypatch.setattr(b, "conv_kernels", None)
    monkeypatch.setattr(numpy_spatial, "BATCH_INNER_MIN_DEPTH", depth_limit)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 7, 6))
    w = rng.standard_normal((4, 2, 3, 2))
    geometry = ((2, 1), (1, 0), (1, 2), 1)
    kept = _conv_all(b, x, w, geometry, Workspace())
    monkeypatch.setattr(numpy_spatial, "SAVED_COLUMNS_LIMIT", 0)
    recomputed = _conv_all(b, x, w, geometry, Workspace())
    for a, c in zip(kept, recomputed):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.5, 1.0), (1.0, 0.25)])
def test_big_gemm_split_over_lanes_matches_float64(monkeypatch, trans_a, trans_b, alpha, beta):
    """GEMMs above GEMM_SPLIT_MIN run as row ranges on the lanes (an odd row count, so the
    ranges are uneven); every row range gets alpha, beta and the transposes right."""
    from juicepy.backends.numpy import backend as numpy_backend
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    monkeypatch.setattr(numpy_backend, "GEMM_SPLIT_MIN", 1 << 21)  # small operands, same path
    m, k, n = 301, 129, 70
    assert m * k * n >= numpy_backend.GEMM_SPLIT_MIN
    rng = np.random.default_rng(3)
    a, b, out0 = rng.standard_normal((k, m) if trans_a else (m, k)), rng.standard_normal((n, k) if trans_b else (k, n)), \
        rng.standard_normal((m, n))
    backend = jp.backend("numpy")
    out = out0.astype(np.float32)
    backend.gemm(a.astype(np.float32), b.astype(np.float32), out, trans_a, trans_b, alpha, beta)
    want = alpha * (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * out0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def test_reshape_is_a_view_or_an_error_naming_the_shapes_never_a_copy():
    import warnings

    from juicepy.backends.numpy import NumpyBackend

    backend, base = NumpyBackend(), np.arange(24.0).reshape(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy 2.5 deprecates assigning .shape
        view = backend.reshape(base[1:3], (12,))
        assert np.shares_memory(view, base) and view[0] == 6.0
        with pytest.raises(ValueError, match=r"no view of \(4, 3\) \(strides \(48, 8\)\) as \(12,\)"):
            backend.reshape(base[:, :3], (12,))
