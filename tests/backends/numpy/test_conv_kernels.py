"""The optional C convolution kernels (_conv_kernels.c) at the op level: float32 results against
the float64 NumPy fallback, the stride-1 grid kernels against the strided ones, and clear errors
for buffers that do not fit the geometry. (The conv grid in tests/layers/test_conv.py checks both
paths against a loop reference.)"""

import os
import subprocess
import sys

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as numpy_spatial
from juicepy.backends.numpy import threads as numpy_threads

kernels = jp.backend("numpy").conv_kernels
needs_kernels = pytest.mark.skipif(kernels is None, reason="juicepy.backends.numpy._conv_kernels is not loaded "
                                   "(not built for lack of a C compiler, or JUICEPY_CPU_KERNELS=numpy)")

# (batch, C, H, W, out, kernel, stride, padding, dilation, groups)
CASES = [(3, 8, 11, 9, 8, 3, 1, 1, 1, 8),     # depthwise, grid kernels
         (2, 6, 10, 10, 6, 3, 2, 1, 1, 6),    # depthwise, strided kernels
         (2, 4, 9, 9, 4, 5, 1, 4, 2, 4),      # depthwise, padding past (k-1)*d: strided data kernel
         (2, 6, 12, 10, 8, 3, 1, 1, 1, 2),    # grouped GEMM path
         (3, 5, 8, 8, 7, 1, 1, 0, 1, 1),      # pointwise (the GEMM input gradient into dx where not direct)
         (2, 6, 7, 9, 4, 1, 1, 0, 1, 2)]      # grouped pointwise: GEMMs on every ISA


def _out_len(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _all_three(x, w, dy_seed, geometry, accumulate_into=None, ws=None):
    b = jp.backend("numpy")
    stride, padding, dilation, groups = geometry
    out = np.empty((x.shape[0], w.shape[0], _out_len(x.shape[2], w.shape[2], stride, padding, dilation),
                    _out_len(x.shape[3], w.shape[3], stride, padding, dilation)), x.dtype)
    pairs = [(stride,) * 2, (padding,) * 2, (dilation,) * 2, groups]
    b.conv2d(x, w, out, *pairs, ws=ws)
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(x.dtype)
    dx, dw = (np.zeros_like(x), np.zeros_like(w)) if accumulate_into is None else accumulate_into
    b.conv2d_backward_data(dy, w, dx, *pairs, accumulate=accumulate_into is not None, ws=ws)
    b.conv2d_backward_filter(x, dy, dw, *pairs, accumulate=accumulate_into is not None, ws=ws)
    return out, dx, dw


def _assert_like_the_fallback(monkeypatch, results, x, w, dy_seed, geometry):
    """Each of ``results`` (_all_three's outputs with the C kernels) is the pure-NumPy fallback's."""
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, dy_seed, geometry)
    for fast in results:
        for got, want in zip(fast, reference):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_float32_c_kernels_match_float64_numpy_fallback(case, monkeypatch):
    n, c, h, w_, o, k, s, p, d, g = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((o, c // g, k, k))
    fast = _all_three(x.astype(np.float32), w.astype(np.float32), 1, (s, p, d, g))
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, 1, (s, p, d, g))
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # accumulate adds to what the gradients hold
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", kernels)
    start = (rng.standard_normal(x.shape), rng.standard_normal(w.shape))
    summed = _all_three(x, w, 1, (s, p, d, g), accumulate_into=tuple(a.copy() for a in start))
    np.testing.assert_allclose(summed[1], start[0] + reference[1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(summed[2], start[1] + reference[2], rtol=1e-10, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("choice", [0, 1, 2], ids=["gemm", "direct", "winograd"])
@pytest.mark.parametrize("geometry", [(1, 1, 1, 2), (1, 1, 1, 1), (1, 2, 2, 1)], ids=["grouped", "plain", "dilated"])
def test_each_algorithm_of_each_op_matches_the_fallback(choice, geometry, monkeypatch):
    """The geometry picks one per op; each must be right, alone and accumulating (Winograd
    only where it applies: ungrouped; for the weight gradient also undilated)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 9, 8))
    w = rng.standard_normal((8, 6 // geometry[3], 3, 3))
    monkeypatch.setattr(kernels, "isa", 1)  # AVX2: all three algorithms apply
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1})  # plain: F(4x4, 3x3), dilated: F(2x2, 3x3)
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())  # Winograd on every CPU kind
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_FILTER_MIN_CHANNELS", 1)
    counts = {}

    def choose(op, count, *rest):
        counts.setdefault(op, set()).add(count)
        return min(choice, count - 1)

    monkeypatch.setattr(numpy_spatial, "_algorithm", choose)
    ws = Workspace()
    fast = _all_three(x, w, 5, geometry, ws=ws)
    summed = _all_three(x, w, 5, geometry, accumulate_into=(np.ones_like(x), np.ones_like(w)), ws=ws)
    assert counts["forward"] == counts["data"] == {2 if geometry[3] > 1 else 3}
    assert counts["filter"] == {3 if geometry[2:] == (1, 1) else 2}
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, 5, geometry)
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(summed[1], reference[1] + 1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(summed[2], reference[2] + 1, rtol=1e-10, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("side_by_side", [False, True], ids=["per-sample", "side-by-side"])
@pytest.mark.parametrize("bands", [False, True], ids=["samples", "row-bands"])
@pytest.mark.parametrize("geometry", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 1, 2, 2)], ids=["plain", "strided", "dilated-grouped"])
def test_both_gemm_weight_gradient_layouts_match_the_fallback(side_by_side, bands, geometry, monkeypatch):
    """The GEMM weight gradient's columns per sample (summed) or side by side in one product,
    over chunks of whole samples or row bands of one, alone and accumulating."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6, 9, 8))
    w = rng.standard_normal((8, 6 // geometry[3], 3, 3))
    monkeypatch.setattr(numpy_spatial, "FILTER_SIDE_BY_SIDE_MAX_PLANE", 10**9 if side_by_side else 0)
    monkeypatch.setattr(numpy_spatial, "COLUMN_CHUNK", 1 if bands else 1 << 18)
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: 0)
    ws = Workspace()
    fast = _all_three(x, w, 5, geometry, ws=ws)[2]
    summed = _all_three(x, w, 5, geometry, accumulate_into=(np.zeros_like(x), np.ones_like(w)), ws=ws)[2]
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, 5, geometry)[2]
    np.testing.assert_allclose(fast, reference, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(summed, reference + 1, rtol=1e-10, atol=1e-10)


# (batch, C, H, W, out, kernel, stride, padding, dilation, groups)
DIRECT_CASES = [(2, 6, 11, 9, 10, 3, 2, 1, 1, 1),    # odd sizes: rows end inside a vector
                (2, 4, 12, 12, 8, 3, 2, 1, 1, 2),    # grouped
                (3, 5, 13, 10, 7, 5, 2, 2, 1, 1),    # 5x5, stride 2
                (2, 3, 9, 9, 5, 3, 3, 0, 1, 1),      # stride 3, unpadded
                (2, 4, 10, 10, 6, 3, 2, 2, 2, 1),    # strided and dilated
                (2, 40, 32, 32, 12, 3, 2, 1, 1, 1),  # rows of whole vectors (stored straight), channel chunks
                # AVX-512 float32, strided rows of at most 8: the 8-lane build's 4 x 4 blocks
                (2, 40, 16, 16, 14, 3, 2, 1, 1, 1),  # 8x8: rows of one vector stored straight, channel chunks
                (1, 5, 15, 13, 7, 3, 2, 1, 1, 1),    # 8x7 on a staged grid, part blocks of channels and vectors
                (3, 6, 11, 12, 9, 5, 2, 2, 1, 3),    # 5x5 grouped, 6x6 planes
                (2, 4, 9, 20, 5, 3, 3, 0, 1, 1),     # stride 3, 3x6 planes
                (1, 3, 7, 45, 4, 3, 2, 1, 1, 1),     # stride-2 phase rows of 23: whole vectors and a part one
                # AVX-512 float32 strided, vectors not filling blocks of 3: blocks of 8 channels x 2 vectors
                # (the 32x32 and 45-wide cases above too); filling them (6x15): 8 x 3
                (1, 6, 13, 24, 10, 3, 2, 1, 1, 1),   # 7x12 on a staged grid, a part block of channels
                (1, 4, 12, 30, 5, 3, 2, 1, 1, 1),    # 6x15: six vectors, 8 x 3 blocks
                (2, 6, 9, 8, 8, 5, 1, 2, 1, 2),      # stride 1
                (2, 8, 17, 33, 8, 3, 1, 2, 2, 1),    # stride 1 dilated, wide rows
                (2, 12, 8, 8, 12, 3, 1, 1, 1, 1),    # AVX2 float32: blocks of 6 channels x 2 vectors, stored straight
                (2, 5, 4, 4, 10, 3, 1, 1, 1, 1)]     # the same blocks on a staged grid, a part block of channels


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DIRECT_CASES, ids=[str(c) for c in DIRECT_CASES])
def test_direct_kernel_of_any_stride_matches_the_fallback(case, dtype):
    """The direct kernel on phase planes, alone and accumulating, against the float64 NumPy path."""
    n, c, h, w_, o, k, s, p, d, g = case
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c // g, k, k))
    ho, wo = _out_len(h, k, s, p, d), _out_len(w_, k, s, p, d)
    reference = np.empty((n, o, ho, wo))
    backend = jp.backend("numpy")
    fallback = type(backend)(kernels="numpy")
    fallback.conv2d(x, w, reference, (s, s), (p, p), (d, d), g, ws=Workspace())
    out = np.full((n, o, ho, wo), np.nan, dtype)
    geometry = (c, h, w_, k, k, s, s, p, p, d, d, ho, wo)
    kernels.direct_conv(x.astype(dtype), w.astype(dtype), out, geometry, g, o, n, 0, n, False, False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, reference, rtol=tol, atol=tol * np.abs(reference).max())
    kernels.direct_conv(x.astype(dtype), w.astype(dtype), out, geometry, g, o, n, 1, n, False, True)
    np.testing.assert_allclose(out[1:], 2 * reference[1:], rtol=tol, atol=2 * tol * np.abs(reference).max())
    np.testing.assert_allclose(out[:1], reference[:1], rtol=tol, atol=tol * np.abs(reference).max())


# (batch, C, H, W, out): blocks of 8 (AVX-512) or 4 output channels x 3 (AVX-512, AVX2) or 2
# vectors, then single channels, single vectors and pixels past the last whole vector
POINTWISE_CASES = [(1, 3, 5, 7, 13),      # batch 1, 35 pixels: part vectors, channels past the blocks
                   (2, 8, 8, 12, 16),     # 96 pixels: whole blocks of vectors only
                   (2, 600, 10, 10, 9)]   # 600 input rows: pixel bands narrower than the plane


def _check_pointwise_forwards(x, w, y, geometry, dtype, rng):
    """direct_conv's 1x1 forward (x, w (O, C, 1, 1), geometry) against y (float64, x through w)
    with each epilogue, then accumulating over samples [1, n) with sample 0 untouched; returns
    the check it used (tolerances of dtype)."""
    n, o = y.shape[:2]
    scale, shift, residual = rng.standard_normal(o), rng.standard_normal(o), rng.standard_normal(y.shape)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    f = lambda a: a.astype(dtype)  # noqa: E731

    def check(got, want, bound):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * bound)

    scaled = y * scale[:, None, None] + shift[:, None, None]
    epilogues = [((), y), ((f(scale), f(shift), True, f(residual)), np.maximum(scaled + residual, 0)),
                 ((None, f(shift)), y + shift[:, None, None])]
    for extra, want in epilogues:
        out = np.full(y.shape, np.nan, dtype)
        kernels.direct_conv(f(x), f(w), out, geometry, 1, o, n, 0, n, False, False, *extra)
        check(out, want, np.abs(y).max() * 4)
    kernels.direct_conv(f(x), f(w), out, geometry, 1, o, n, 1, n, False, True)
    check(out[1:], want[1:] + y[1:], np.abs(y).max() * 4)
    check(out[:1], want[:1], np.abs(y).max() * 4)
    return check


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=[str(c) for c in POINTWISE_CASES])
def test_pointwise_kernel_matches_a_float64_reference(case, dtype):
    """direct_conv on 1x1 geometries (its pointwise_conv): the forward with each epilogue, the
    input gradient (flip), and both accumulating over samples [1, n), against sums written out here."""
    n, c, h, w_, o = case
    rng = np.random.default_rng(31)
    x, w, dy = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 1, 1)), rng.standard_normal((n, o, h, w_))
    y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x)
    dx = np.einsum("oc,nohw->nchw", w[:, :, 0, 0], dy)
    geometry, flipped = (c, h, w_, 1, 1, 1, 1, 0, 0, 1, 1, h, w_), (o, h, w_, 1, 1, 1, 1, 0, 0, 1, 1, h, w_)
    check = _check_pointwise_forwards(x, w, y, geometry, dtype, rng)
    f = lambda a: a.astype(dtype)  # noqa: E731
    grad = np.full(x.shape, np.nan, dtype)
    kernels.direct_conv(f(dy), f(w), grad, flipped, 1, c, n, 0, n, True, False)
    check(grad, dx, np.abs(dx).max())
    kernels.direct_conv(f(dy), f(w), grad, flipped, 1, c, n, 1, n, True, True)
    check(grad[1:], 2 * dx[1:], 2 * np.abs(dx).max())
    check(grad[:1], dx[:1], np.abs(dx).max())


# (batch, C, H, W, out, (sh, sw), (ph, pw)): pixels past the blocks' whole vectors, rows that
# fall in the padding, uneven strides
STRIDED_POINTWISE_CASES = [(2, 32, 16, 16, 64, (2, 2), (0, 0)),  # the ResNet's 32->64 shortcut, 8x8 outputs
                           (3, 5, 13, 11, 9, (2, 3), (1, 0)),
                           (2, 3, 7, 9, 13, (3, 2), (2, 1))]


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED_POINTWISE_CASES, ids=[str(c) for c in STRIDED_POINTWISE_CASES])
def test_strided_pointwise_kernel_matches_a_float64_reference(case, dtype):
    """direct_conv on strided 1x1 geometries (pointwise_strided: each sample's pixels under the
    kernel gathered, zeros in the padding, then the pointwise blocks): the forward with each
    epilogue, accumulating over samples [1, n), and with the channels swapped (flip), against
    sums written out here; samples outside [n0, n1) untouched."""
    n, c, h, w_, o, (sh, sw), (ph, pw) = case
    ho, wo = (h + 2 * ph - 1) // sh + 1, (w_ + 2 * pw - 1) // sw + 1
    rng = np.random.default_rng(32)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 1, 1))
    picked = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))[:, :, ::sh, ::sw][:, :, :ho, :wo]
    y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], picked)
    geometry = (c, h, w_, 1, 1, sh, sw, ph, pw, 1, 1, ho, wo)
    check = _check_pointwise_forwards(x, w, y, geometry, dtype, rng)
    f = lambda a: a.astype(dtype)  # noqa: E731
    swapped = rng.standard_normal((c, o, 1, 1))  # flip: w read as (C, O), the input gradient's layout
    out = np.full(y.shape, np.nan, dtype)
    kernels.direct_conv(f(x), f(swapped), out, geometry, 1, o, n, 0, n, True, False)
    check(out, np.einsum("co,nchw->nohw", swapped[:, :, 0, 0], picked), np.abs(y).max() * 4)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED_POINTWISE_CASES, ids=[str(c) for c in STRIDED_POINTWISE_CASES])
def test_pointwise_scatter_matches_a_float64_reference(case, dtype):
    """pointwise_scatter, the strided 1x1 input gradient: W^T dy at the dx pixels under the
    kernel and zeros elsewhere (padding: dy pixels over it add nothing), or added to dx as it
    was (accumulate) for samples [1, n), samples outside the range untouched; a kernel that is
    not 1x1 refused."""
    n, c, h, w_, o, (sh, sw), (ph, pw) = case
    ho, wo = (h + 2 * ph - 1) // sh + 1, (w_ + 2 * pw - 1) // sw + 1
    rng = np.random.default_rng(35)
    dy, w = rng.standard_normal((n, o, ho, wo)), rng.standard_normal((o, c, 1, 1))
    padded = np.zeros((n, c, h + 2 * ph + sh * wo, w_ + 2 * pw + sw * wo))
    padded[:, :, ::sh, ::sw][:, :, :ho, :wo] = np.einsum("oc,nohw->nchw", w[:, :, 0, 0], dy)
    want = padded[:, :, ph:ph + h, pw:pw + w_]
    geometry = (c, h, w_, 1, 1, sh, sw, ph, pw, 1, 1, ho, wo)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    bound = np.abs(want).max()
    dx = np.full((n, c, h, w_), np.nan, dtype)
    kernels.pointwise_scatter(dy.astype(dtype), w.astype(dtype), dx, geometry, o, n, 0, n, False)
    np.testing.assert_allclose(dx, want, rtol=tol, atol=tol * bound)
    before = rng.standard_normal(dx.shape).astype(dtype)
    dx = before.copy()
    kernels.pointwise_scatter(dy.astype(dtype), w.astype(dtype), dx, geometry, o, n, 1, n, True)
    np.testing.assert_allclose(dx[1:], before[1:] + want[1:], rtol=tol, atol=tol * bound)
    np.testing.assert_array_equal(dx[:1], before[:1])
    with pytest.raises(ValueError, match="pointwise_scatter: needs a 1x1 kernel"):
        kernels.pointwise_scatter(dy.astype(dtype), w.astype(dtype), dx, (c, h, w_, 1, 3, sh, sw, ph, pw + 1, 1, 1, ho, wo),
                                  o, n, 0, n, False)


@needs_kernels
def test_strided_pointwise_convs_run_on_the_pointwise_blocks_up_to_128_outputs(monkeypatch):
    """Ungrouped strided 1x1 forwards (the ResNet's shortcuts) of up to POINTWISE_DIRECT_MAX_OUT
    output planes go to direct_conv (pointwise_strided), their input gradients of up to as many
    input planes to pointwise_scatter, on AVX-512 and AVX2; others, and the baseline build, keep
    im2col + GEMM (and col2im); either way, padded or not, forward, input and weight gradients
    are the fallback's."""
    backend = jp.backend("numpy")

    def plan(c, o, groups=1):
        return numpy_spatial._ConvPlan((2, c, 16, 16), (o, c // groups, 1, 1), (8, 8), (2, 2), (0, 0), (1, 1), groups)

    applies, limit = numpy_spatial._direct_forward_applies, numpy_spatial.POINTWISE_DIRECT_MAX_OUT
    for isa in (2, 1):
        monkeypatch.setattr(kernels, "isa", isa)
        assert applies(backend, plan(256, limit)) and not applies(backend, plan(16, limit + 1))
        assert not applies(backend, plan(16, 16, groups=2))
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, plan(16, 16))
    rng = np.random.default_rng(16)
    x, w = rng.standard_normal((3, 6, 13, 10)), rng.standard_normal((8, 6, 1, 1))
    picked = []
    for name in ("_direct_forward", "_pointwise_scatter_backward_data"):
        original = getattr(numpy_spatial, name)
        monkeypatch.setattr(numpy_spatial, name, lambda *a, _run=original, _name=name, **k: (picked.append(_name),
                                                                                             _run(*a, **k))[1])
    for padding in (0, 1):
        results = []
        for isa in (2, 1, 0):
            monkeypatch.setattr(kernels, "isa", isa)
            results.append(_all_three(x, w, 17, (2, padding, 1, 1), ws=Workspace()))
        with monkeypatch.context() as fallback:
            _assert_like_the_fallback(fallback, results, x, w, 17, (2, padding, 1, 1))
    # the AVX-512 and AVX2 rules' forwards and input gradients, padded or not
    assert sorted(picked) == ["_direct_forward"] * 4 + ["_pointwise_scatter_backward_data"] * 4


# (batch, C, H, W, out, (kh, kw), padding, dilation, groups)
# (blocks of taps: AVX2 3 to a block, AVX-512 5)
FILTER_CASES = [((3, 32, 16, 16, 32, (5, 5), 2, 1, 1)),  # 8 blocks of 3 taps and one of 1; 5 of 5
                ((2, 1, 11, 10, 5, (3, 3), 1, 1, 1)),    # one channel: blocks of 5 and 4 taps
                ((2, 4, 9, 9, 5, (3, 3), 1, 1, 1)),      # the leftover taps of 4 channels: 5, 5, 5, 1
                ((2, 5, 13, 11, 7, (3, 3), 1, 1, 1)),    # rows end inside a vector; outputs past the whole blocks
                ((2, 3, 9, 30, 6, (3, 3), 1, 1, 1)),     # whole-vector rows wider than the grid's rows
                ((2, 4, 10, 9, 6, (1, 5), 2, 1, 2)),     # grouped, a block of 2 taps, padding past the kernel
                ((2, 6, 12, 12, 9, (4, 2), 2, 2, 1)),    # dilated, 8 taps
                ((2, 3, 7, 7, 4, (7, 7), 3, 1, 1)),      # 49 taps, planes narrower than a vector
                # pointwise, on the planes in place (DEFINE_PW_FILTER) where O >= the block's outputs:
                ((3, 13, 8, 8, 9, (1, 1), 0, 1, 1)),     # part blocks of inputs and outputs, whole vectors
                ((2, 7, 5, 7, 6, (1, 1), 0, 1, 1)),      # 35 pixels: vectors, then 3 (or 19) one at a time
                ((2, 5, 3, 3, 8, (1, 1), 0, 1, 1)),      # 9 pixels: less than a vector
                ((2, 1, 8, 8, 5, (1, 1), 0, 1, 1)),      # one input channel: a block of repeats
                ((2, 3, 6, 6, 2, (1, 1), 0, 1, 1)),      # 2 outputs: too few for a block, the grid
                ((2, 4, 6, 6, 6, (1, 1), 0, 1, 2))]      # grouped 1x1: the grid
# strided (on the input's phase planes): (case, stride)
FILTER_STRIDED_CASES = [((2, 16, 32, 32, 32, (3, 3), 1, 1, 1), 2),  # the ResNet's 16->32 layer, 16x16 out
                        ((1, 5, 17, 15, 7, (3, 3), 1, 1, 1), 2),     # batch 1, odd planes, a part block
                        ((2, 3, 9, 11, 6, (3, 3), 0, 1, 1), 2),      # unpadded: phases of unequal sizes
                        ((2, 4, 13, 12, 6, (3, 3), 2, 1, 2), 2),     # grouped, padding past the kernel
                        ((2, 3, 40, 40, 5, (3, 3), 1, 1, 1), 2),     # 20-wide rows: a vector and a part
                        ((2, 4, 11, 13, 4, (3, 3), 1, 2, 1), 2),     # dilated: taps from one phase
                        ((2, 3, 16, 17, 4, (5, 5), 2, 1, 1), 3),     # stride 3, 25 taps
                        ((2, 2, 7, 9, 3, (1, 1), 0, 1, 1), 2)]       # a strided 1x1 (a downsample)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case, s", [(c, 1) for c in FILTER_CASES] + FILTER_STRIDED_CASES,
                         ids=[f"{c} s{s}" for c, s in [(c, 1) for c in FILTER_CASES] + FILTER_STRIDED_CASES])
def test_direct_weight_gradient_matches_a_float64_reference(case, s, dtype):
    """direct_grid_filter (stride 1, or strided on phase planes) against sums written out here:
    alone, then accumulating over a range of samples that leaves the first one out."""
    n, c, h, w_, o, (kh, kw), p, d, g = case
    rng = np.random.default_rng(21)
    ho, wo = _out_len(h, kh, s, p, d), _out_len(w_, kw, s, p, d)
    x, dy = rng.standard_normal((n, c, h, w_)), rng.standard_normal((n, o, ho, wo))
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cg, og = c // g, o // g
    per_sample = np.zeros((n, o, cg, kh, kw))
    for gr in range(g):
        for i in range(kh):
            for j in range(kw):
                window = xp[:, gr * cg:(gr + 1) * cg, i * d:i * d + (ho - 1) * s + 1:s,
                            j * d:j * d + (wo - 1) * s + 1:s]
                per_sample[:, gr * og:(gr + 1) * og, :, i, j] = np.einsum(
                    "nohw,nchw->noc", dy[:, gr * og:(gr + 1) * og], window)
    want = per_sample.sum(axis=0)
    geometry = (c, h, w_, kh, kw, s, s, p, p, d, d, ho, wo)
    dw = np.full((o, cg, kh, kw), np.nan, dtype)
    kernels.direct_grid_filter(x.astype(dtype), dy.astype(dtype), dw, geometry, g, o, n, 0, n, False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol * np.abs(want).max())
    kernels.direct_grid_filter(x.astype(dtype), dy.astype(dtype), dw, geometry, g, o, n, 1, n, True)
    np.testing.assert_allclose(dw, want + per_sample[1:].sum(axis=0), rtol=tol, atol=2 * tol * np.abs(want).max())


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [4, 5, 9, 16, 17, 19, 32, 33])
def test_stride_2_columns_are_exact_copies_of_the_windows(width, dtype):
    """im2col's stride-2 rows (vector shuffles plus an element tail) hold exactly the values a
    NumPy slice of the zero-padded input reads, for rows of every length against the vector
    width, every padding and kernel offset at a row's ends, dilation, and a band of rows."""
    rng = np.random.default_rng(width)
    n, c, h = 2, 3, 7
    x = rng.standard_normal((n, c, h, width)).astype(dtype)
    for k, p, d in [(3, 1, 1), (3, 0, 1), (1, 0, 1), (3, 2, 2), (5, 2, 1), (2, 0, 1)]:
        ho, wo = _out_len(h, k, 2, p, d), _out_len(width, k, 2, p, d)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        expected = np.stack([xp[:, :, i * d:i * d + 2 * (ho - 1) + 1:2, j * d:j * d + 2 * (wo - 1) + 1:2]
                             for i in range(k) for j in range(k)], axis=2)  # (n, c, taps, ho, wo)
        r0, r1 = (1, ho) if ho > 1 else (0, ho)
        cols = np.full((n, c * k * k, (r1 - r0) * wo), np.nan, dtype)
        geometry = (c, h, width, k, k, 2, 2, p, p, d, d, ho, wo)
        kernels.im2col(x, cols, geometry, n, 0, n, r0, r1, cols[0].size, (r1 - r0) * wo)
        want = expected[:, :, :, r0:r1].reshape(cols.shape)
        np.testing.assert_array_equal(cols, want, err_msg=f"kernel {k}, padding {p}, dilation {d}")


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [5, 8, 9, 16, 17])
def test_stride_2_col2im_adds_each_column_back_in_tap_order(width, dtype):
    """col2im at stride 2 (phase planes in the caller's scratch, interleaved back) equals the
    columns added into a zero-padded plane tap by tap in (i, j) order, onto dx or onto zeros,
    bit for bit, for odd and even widths, paddings that start a row on either phase, dilation
    and non-square kernels; without the scratch (value by value) too; samples outside [n0, n1)
    are left alone."""
    rng = np.random.default_rng(width)
    n, c, h = 3, 2, 7
    for kh, kw, ph, pw, d in [(3, 3, 1, 1, 1), (1, 1, 0, 0, 1), (3, 3, 2, 2, 2), (5, 5, 2, 2, 1), (2, 4, 0, 3, 1),
                              (3, 2, 1, 0, 1)]:
        ho, wo = _out_len(h, kh, 2, ph, d), _out_len(width, kw, 2, pw, d)
        geometry = (c, h, width, kh, kw, 2, 2, ph, pw, d, d, ho, wo)
        cols = rng.standard_normal((n, c, kh, kw, ho, wo)).astype(dtype)
        for accumulate in (False, True):
            start = rng.standard_normal((n, c, h, width)).astype(dtype)
            padded = np.zeros((n, c, h + 2 * ph, width + 2 * pw), dtype)
            if accumulate:
                padded[:, :, ph:ph + h, pw:pw + width] = start
            for i in range(kh):
                for j in range(kw):
                    padded[:, :, i * d:i * d + 2 * (ho - 1) + 1:2, j * d:j * d + 2 * (wo - 1) + 1:2] += cols[:, :, i, j]
            phases = np.full(4 * ((h + 2 * ph + 1) // 2) * ((width + 2 * pw + 1) // 2), np.nan, dtype)
            for scratch in (phases, None):
                dx = start.copy()
                kernels.col2im(cols[1:], dx, geometry, n, 1, n, cols[0].size, ho * wo, accumulate, scratch)
                np.testing.assert_array_equal(dx[1:], padded[1:, :, ph:ph + h, pw:pw + width],
                                              err_msg=f"kernel {kh}x{kw}, padding {ph},{pw}, dilation {d}")
                np.testing.assert_array_equal(dx[0], start[0])
    with pytest.raises(ValueError, match=f"phases: expected at least {phases.size} items"):
        kernels.col2im(cols[1:], dx, geometry, n, 1, n, cols[0].size, ho * wo, False, phases[:-1])
    with pytest.raises(ValueError, match=f"phases: expected at least {phases.size} items of format"):
        kernels.col2im(cols[1:], dx, geometry, n, 1, n, cols[0].size, ho * wo, False,
                       np.zeros(phases.size, np.float32 if dtype == np.float64 else np.float64))


@needs_kernels
def test_strided_convs_run_direct_only_where_measured(monkeypatch):
    """Strided kxk convs of few input channels per group on AVX2 and AVX-512; wider ones keep
    im2col + GEMM (1x1 ones run on the pointwise kernel, below); a strided conv run either way
    gives the fallback's result."""
    backend = jp.backend("numpy")

    def plan(c, k, s, groups=1):
        return numpy_spatial._ConvPlan((2, c, 16, 16), (8, c // groups, k, k), (8, 8), (s, s), (k // 2,) * 2,
                                       (1, 1), groups)

    applies = numpy_spatial._direct_forward_applies
    for isa in (1, 2):
        monkeypatch.setattr(kernels, "isa", isa)
        assert applies(backend, plan(32, 3, 2)) and applies(backend, plan(128, 3, 2, groups=4))
        assert not applies(backend, plan(64, 3, 2))
        assert applies(backend, plan(64, 3, 1))
        assert applies(backend, plan(16, 1, 2))
    assert applies(backend, plan(16, 1, 1))
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, plan(16, 3, 2))
    monkeypatch.setattr(kernels, "isa", 1)
    assert not applies(backend, plan(16, 1, 1))
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((3, 6, 13, 11)), rng.standard_normal((8, 6, 3, 3))
    results = []
    for direct in (True, False):
        monkeypatch.setattr(numpy_spatial, "DIRECT_STRIDED_MAX_CHANNELS", 32 if direct else 0)
        results.append(_all_three(x, w, 13, (2, 1, 1, 1), ws=Workspace()))
    _assert_like_the_fallback(monkeypatch, results, x, w, 13, (2, 1, 1, 1))


@needs_kernels
def test_strided_weight_gradients_run_direct_where_the_plane_rule_says(monkeypatch):
    """Strided kxk (k > 1) weight gradients may take the direct kernel (on phase planes) on
    AVX2 and AVX-512, then by _algorithm's plane rule with the width (on AVX2 too): the
    ResNet's 16->32 stride-2 layer (16x16 outputs) runs direct on AVX2 (on AVX-512 the phase
    Winograd's adjoint, _s2_filter), as do 16->32 on 32x32 outputs, its 32->64 one (8x8) and the
    bench's 64->128 (16x16, 128 channels) do not, nor 1x1 strided ones and the baseline
    build; either way (batch 1, odd planes, padding 0/1/2, groups, accumulating) the result is
    the fallback's."""
    picked = []
    original = numpy_spatial._direct_backward_filter
    monkeypatch.setattr(numpy_spatial, "_direct_backward_filter",
                        lambda *a, **k: (picked.append(a[1].shape), original(*a, **k))[1])
    backend = jp.backend("numpy")

    def runs(c, o, hw, k, isa):
        monkeypatch.setattr(kernels, "isa", isa)
        x, side = np.zeros((1, c, hw, hw), np.float32), _out_len(hw, k, 2, k // 2, 1)
        dy = np.zeros((1, o, side, side), np.float32)
        picked.clear()
        backend.conv2d_backward_filter(x, dy, np.zeros((o, c, k, k), np.float32), (2, 2), (k // 2,) * 2, (1, 1), 1)
        return bool(picked)

    for isa in (2, 1):
        assert runs(3, 16, 32, 3, isa) and runs(16, 32, 64, 3, isa)
        assert not runs(32, 64, 16, 3, isa) and not runs(64, 128, 32, 3, isa) and not runs(16, 32, 32, 1, isa)
    assert runs(16, 32, 32, 3, 1) and not runs(16, 32, 32, 3, 2)
    assert not runs(16, 32, 32, 3, 0)
    # stride 1 on AVX2 keeps its measured rule: direct from 16x16 planes at any width
    assert numpy_spatial._algorithm("filter", 2, (16, 16), 1, 128) == 1
    assert numpy_spatial._algorithm("filter", 2, (16, 16), 1, 128, strided=True) == 0
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "DIRECT_FILTER_MIN_PLANE", 0)  # every plane direct below
    rng = np.random.default_rng(31)
    for n, c, h, w_, o, p, g in [(1, 4, 17, 15, 6, 1, 1), (2, 6, 12, 13, 4, 0, 2), (3, 3, 9, 10, 5, 2, 1)]:
        x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c // g, 3, 3))
        picked.clear()
        results = [_all_three(x, w, 9, (2, p, 1, g), ws=Workspace()),
                   _all_three(x, w, 9, (2, p, 1, g), accumulate_into=(np.ones_like(x), np.ones_like(w)))]
        assert len(picked) == 2
        monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
        want = _all_three(x, w, 9, (2, p, 1, g))[2]
        monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", kernels)
        np.testing.assert_allclose(results[0][2], want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
        np.testing.assert_allclose(results[1][2], want + 1, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@needs_kernels
def test_strided_direct_weight_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_direct_backward_filter", [L.Conv2d(8, 3, stride=2, padding=1),
                                   L.ReLU()], (4, 32, 32), (8, 16, 16), isa=2)


@needs_kernels
def test_pointwise_convs_run_direct_only_on_avx512_up_to_128_outputs(monkeypatch):
    """Ungrouped 1x1 stride-1 forwards and input gradients of up to POINTWISE_DIRECT_MAX_OUT
    output planes go to direct_conv on AVX-512, others keep the GEMM; either way the result is
    the fallback's."""
    backend = jp.backend("numpy")

    def plan(c, o, groups=1):
        return numpy_spatial._ConvPlan((2, c, 8, 8), (o, c // groups, 1, 1), (8, 8), (1, 1), (0, 0), (1, 1), groups)

    applies, limit = numpy_spatial._direct_forward_applies, numpy_spatial.POINTWISE_DIRECT_MAX_OUT
    monkeypatch.setattr(kernels, "isa", 2)
    assert applies(backend, plan(256, limit)) and not applies(backend, plan(16, limit + 1))
    assert not applies(backend, plan(16, 16, groups=2))
    for isa in (1, 0):
        monkeypatch.setattr(kernels, "isa", isa)
        assert not applies(backend, plan(16, 16))
    rng = np.random.default_rng(14)
    x, w = rng.standard_normal((3, 6, 7, 9)), rng.standard_normal((8, 6, 1, 1))
    results = []
    for isa in (2, 1):
        monkeypatch.setattr(kernels, "isa", isa)
        results.append(_all_three(x, w, 15, (1, 0, 1, 1), ws=Workspace()))
    _assert_like_the_fallback(monkeypatch, results, x, w, 15, (1, 0, 1, 1))


def _spied_blas_entry(monkeypatch, name):
    """The NumPy backend with its BLAS entry ``name`` (blas_batch, blas_sum) wrapped to record the
    shape of each call's third operand, and that record; skips where the entry is missing."""
    backend = jp.backend("numpy")
    entry = getattr(backend, name)
    if entry is None:
        pytest.skip(f"no {name}: _blas_kernels is not built or no ILP64 OpenBLAS is loaded")
    calls = []
    monkeypatch.setattr(backend, name, lambda *a: (calls.append(a[2].shape), entry(*a))[1])
    return backend, calls


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa,o", [(1, 12), (0, 12), (2, numpy_spatial.POINTWISE_DIRECT_MAX_OUT + 4)])
@pytest.mark.parametrize("epilogue", ["none", "bias", "bias+relu", "bias+residual+relu", "residual", "norm+relu"])
def test_pointwise_gemm_convs_run_on_the_batch_entry_with_their_epilogue(monkeypatch, epilogue, isa, o, dtype):
    """Where an ungrouped pointwise conv keeps the GEMM (AVX2, the baseline build, AVX-512 past
    POINTWISE_DIRECT_MAX_OUT outputs), its forward runs as one call of the batch entry
    (_blas_kernels.gemm_batch) with its bias, residual and ReLU, a folded batch norm's scale on
    the chunks; its input gradient, stored and added, on that entry too. Against float64; the
    bias alone the same bits as the chunks' product and pass."""
    from juicepy.backends.base import ConvNorm

    backend, calls = _spied_blas_entry(monkeypatch, "blas_batch")
    monkeypatch.setattr(kernels, "isa", isa)
    rng = np.random.default_rng(16)
    n, c, h, w_ = 3, 10, 6, 7
    x, w = rng.standard_normal((n, c, h, w_)).astype(dtype), rng.standard_normal((o, c, 1, 1)).astype(dtype)
    y = np.einsum("nchw,oc->nohw", x.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    parts, want = {}, y
    if "bias" in epilogue:
        parts["bias"] = rng.standard_normal(o).astype(dtype)
        want = want + parts["bias"][:, None, None]
    if "norm" in epilogue:
        gamma, beta, mean, var = (rng.standard_normal(o).astype(dtype), rng.standard_normal(o).astype(dtype),
                                  rng.standard_normal(o).astype(dtype), rng.uniform(0.5, 2, o).astype(dtype))
        parts["norm"] = ConvNorm(gamma, beta, mean, var, 1e-5)
        want = (want - mean[:, None, None]) / np.sqrt(var.astype(np.float64) + 1e-5)[:, None, None] \
            * gamma[:, None, None] + beta[:, None, None]
    if "residual" in epilogue:
        parts["residual"] = rng.standard_normal(y.shape).astype(dtype)
        want = want + parts["residual"]
    if "relu" in epilogue:
        parts["relu"] = True
        want = np.maximum(want, 0)
    out = np.full(y.shape, np.nan, dtype)
    backend.conv2d(x, w, out, (1, 1), (0, 0), (1, 1), 1, ws=Workspace(), **parts)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.abs(want).max())
    assert calls == ([] if "norm" in epilogue else [(n, o, h * w_)])
    if epilogue == "bias":
        chunks = np.full(y.shape, np.nan, dtype)
        monkeypatch.setattr(numpy_spatial, "_batched_pointwise", lambda *a, **k: False)
        backend.conv2d(x, w, chunks, (1, 1), (0, 0), (1, 1), 1, ws=Workspace(), bias=parts["bias"])
        np.testing.assert_array_equal(out, chunks)
    if epilogue != "none":
        return
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx_want = np.einsum("nohw,oc->nchw", dy.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    calls.clear()
    for accumulate in (False, True):
        start = rng.standard_normal(x.shape).astype(dtype) if accumulate else np.full(x.shape, np.nan, dtype)
        dx = start.copy()
        backend.conv2d_backward_data(dy, w, dx, (1, 1), (0, 0), (1, 1), 1, accumulate, Workspace())
        expected = dx_want + start if accumulate else dx_want
        np.testing.assert_allclose(dx, expected, rtol=tol, atol=tol * np.abs(expected).max())
    direct = isa == 2 and c <= numpy_spatial.POINTWISE_DIRECT_MAX_OUT   # its input gradient: c output planes
    assert calls == ([] if direct else [(n, c, h * w_)] * 2)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa,hw", [(1, 6), (0, 6), (2, 5)])
@pytest.mark.parametrize("n,lanes", [(3, 2), (1, 2), (5, 1)])
def test_pointwise_gemm_weight_gradients_run_on_the_sum_entry(monkeypatch, isa, hw, n, lanes, dtype):
    """Where an ungrouped pointwise conv's weight gradient keeps the GEMM (AVX2, the baseline
    build, AVX-512 below POINTWISE_FILTER_MIN_PLANE), it runs as one call of the sum entry
    (_blas_kernels.gemm_sum: POINTWISE_SUM_PARTS parts a lane, at most a sample each), stored and
    added; a grouped one keeps the chunks. Against float64."""
    backend, calls = _spied_blas_entry(monkeypatch, "blas_sum")
    monkeypatch.setattr(kernels, "isa", isa)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: lanes)
    rng = np.random.default_rng(19)
    c, o = 6, 8
    x, dy = rng.standard_normal((n, c, hw, hw)).astype(dtype), rng.standard_normal((n, o, hw, hw)).astype(dtype)
    want = np.einsum("nchw,nohw->oc", x.astype(np.float64), dy.astype(np.float64))[:, :, None, None]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for accumulate in (False, True):
        start = rng.standard_normal((o, c, 1, 1)).astype(dtype) if accumulate else np.full((o, c, 1, 1), np.nan, dtype)
        dw = start.copy()
        backend.conv2d_backward_filter(x, dy, dw, (1, 1), (0, 0), (1, 1), 1, accumulate, Workspace())
        expected = want + start if accumulate else want
        np.testing.assert_allclose(dw, expected, rtol=tol, atol=tol * np.abs(expected).max())
    assert calls == [(min(n, numpy_spatial.POINTWISE_SUM_PARTS * lanes), c, o)] * 2
    calls.clear()
    grouped = np.zeros((o, c // 2, 1, 1), dtype)
    backend.conv2d_backward_filter(x, dy, grouped, (1, 1), (0, 0), (1, 1), 2, False, Workspace())
    assert calls == []


@needs_kernels
def test_pointwise_weight_gradients_run_direct_on_avx512_from_the_plane_rule(monkeypatch):
    """Ungrouped 1x1 stride-1 unpadded weight gradients run on the direct kernel (its in-place
    pointwise blocks) on AVX-512 from POINTWISE_FILTER_MIN_PLANE output pixels, else the GEMM (on
    AVX2, grouped, padded or strided ones too); either way (part blocks, fewer outputs than a
    block, accumulating) the result is the fallback's."""
    picked = []
    original = numpy_spatial._direct_backward_filter
    monkeypatch.setattr(numpy_spatial, "_direct_backward_filter",
                        lambda *a, **k: (picked.append(a[1].shape), original(*a, **k))[1])
    backend = jp.backend("numpy")

    def runs(c, o, hw, isa, groups=1, stride=1, padding=0):
        monkeypatch.setattr(kernels, "isa", isa)
        side = _out_len(hw, 1, stride, padding, 1)
        x, dy = np.zeros((1, c, hw, hw), np.float32), np.zeros((1, o, side, side), np.float32)
        picked.clear()
        backend.conv2d_backward_filter(x, dy, np.zeros((o, c // groups, 1, 1), np.float32), (stride,) * 2,
                                       (padding,) * 2, (1, 1), groups)
        return bool(picked)

    assert numpy_spatial.POINTWISE_FILTER_MIN_PLANE == 256
    assert runs(64, 128, 32, 2) and runs(16, 64, 16, 2) and not runs(16, 64, 15, 2) and not runs(256, 256, 8, 2)
    assert not runs(64, 128, 32, 1) and not runs(64, 128, 32, 0)
    assert not runs(16, 16, 16, 2, groups=2) and not runs(16, 16, 32, 2, stride=2) and not runs(16, 16, 16, 2, padding=1)
    monkeypatch.setattr(numpy_spatial, "POINTWISE_FILTER_MIN_PLANE", 0)  # every plane direct below
    rng = np.random.default_rng(32)
    for n, c, h, w_, o in [(3, 13, 7, 9, 9), (2, 6, 3, 5, 3), (2, 5, 16, 16, 20)]:
        x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 1, 1))
        monkeypatch.setattr(kernels, "isa", 2)
        picked.clear()
        results = [_all_three(x, w, 10, (1, 0, 1, 1), ws=Workspace()),
                   _all_three(x, w, 10, (1, 0, 1, 1), accumulate_into=(np.ones_like(x), np.ones_like(w)))]
        assert len(picked) == 2
        monkeypatch.setattr(backend, "conv_kernels", None)
        want = _all_three(x, w, 10, (1, 0, 1, 1))[2]
        monkeypatch.setattr(backend, "conv_kernels", kernels)
        np.testing.assert_allclose(results[0][2], want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
        np.testing.assert_allclose(results[1][2], want + 1, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@needs_kernels
def test_pointwise_direct_weight_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_direct_backward_filter", [L.Conv2d(8, 1), L.ReLU()],
                                   (4, 16, 16), (8, 16, 16), isa=2)


# (positions, O, C, P): blocks of 8 (AVX-512) or 4 output channels x 3 or 2 vectors, then single
# channels, single vectors and columns past the last whole vector
TILE_GEMM_CASES = [(16, 13, 1, 37),     # C = 1, O past the blocks, P not a multiple of a vector
                   (16, 20, 24, 100),   # 100 columns: whole blocks, a single vector, four columns
                   (36, 8, 64, 96),     # F(2x2, 5x5)'s 36 positions, whole blocks only
                   (1, 9, 600, 130)]    # 600 rows: column bands narrower than P


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TILE_GEMM_CASES, ids=[str(c) for c in TILE_GEMM_CASES])
def test_tile_gemm_matches_a_float64_reference(case, dtype):
    """tile_gemm (the GEMMs of _tile_run on the pointwise kernel's blocks) against einsum in
    float64, with slices of v and m further apart than they need; m's gaps stay as they were."""
    positions, o, c, p = case
    rng = np.random.default_rng(32)
    u, v = rng.standard_normal((positions, o, c)), rng.standard_normal((positions, c, p))
    want = np.einsum("koc,kcp->kop", u, v)
    vs, ms = c * p + 5, o * p + 7
    vbuf = np.zeros((positions, vs), dtype)
    vbuf[:, :c * p] = v.reshape(positions, -1)
    m = np.full((positions, ms), np.nan, dtype)
    kernels.tile_gemm(u.astype(dtype), vbuf, m, positions, o, c, p, vs, ms)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(m[:, :o * p].reshape(positions, o, p), want, rtol=tol,
                               atol=tol * np.abs(want).max())
    assert np.isnan(m[:, o * p:]).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(1, 1, 1), (7, 3, 37), (9, 16, 130)], ids=["1x1x1", "odd", "wider"])
def test_s2_gemm_matches_a_float64_reference(case, dtype):
    """s2_gemm (the phase Winograd's 9 GEMMs on the pointwise kernel's blocks, position k
    multiplying the first S2_DEPTHS[k] x C columns of u (9, O, 4C)) against einsum in float64;
    the columns past a position's depth are never read, m's gaps stay as they were."""
    o, c, p = case
    rng = np.random.default_rng(34)
    u, v = rng.standard_normal((9, o, 4 * c)), rng.standard_normal((9, 4 * c, p))
    depths = [d * c for d in numpy_spatial.S2_DEPTHS]
    want = np.stack([u[k, :, :kk] @ v[k, :kk] for k, kk in enumerate(depths)])
    for k, kk in enumerate(depths):
        u[k, :, kk:] = np.nan
    vs, ms = 4 * c * p + 5, o * p + 7
    vbuf = np.full((9, vs), np.nan, dtype)
    for k, kk in enumerate(depths):
        vbuf[k, :kk * p] = v[k, :kk].ravel()
    m = np.full((9, ms), np.nan, dtype)
    kernels.s2_gemm(u.astype(dtype), vbuf, m, o, c, p, vs, ms)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(m[:, :o * p].reshape(9, o, p), want, rtol=tol, atol=tol * np.abs(want).max())
    assert np.isnan(m[:, o * p:]).all()
    u32 = np.ones((9, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"s2_gemm: vs, ms: slices of v and m overlap \(need at least 40 and 15"):
        kernels.s2_gemm(u32, np.ones((9, 40), np.float32), np.zeros((9, 15), np.float32), 3, 2, 5, 39, 15)
    with pytest.raises(ValueError, match="s2_gemm: positions, O, C, P must be positive"):
        kernels.s2_gemm(u32, np.ones((9, 40), np.float32), np.zeros((9, 15), np.float32), 3, 0, 5, 40, 15)
    with pytest.raises(ValueError, match="u: expected at least 216"):
        kernels.s2_gemm(u32[:8], np.ones((9, 40), np.float32), np.zeros((9, 15), np.float32), 3, 2, 5, 40, 15)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(1, 1, 1), (3, 37, 5), (32, 64, 64)], ids=["1x1x1", "odd", "resnet-chunk"])
def test_s2_filter_gemm_matches_a_float64_reference(case, dtype):
    """s2_filter_gemm (the strided weight gradient's 9 GEMMs of a chunk in one call: position k's
    S2_DEPTHS[k] x C rows of u times v's (P, O) slice into its rows of m, the positions' rows one
    after the other) against matmul in float64, set and accumulating; the slices' gaps are never
    read; refused calls name the argument and write nothing."""
    c, p, o = case
    rng = np.random.default_rng(35)
    depths = [d * c for d in numpy_spatial.S2_DEPTHS]
    us, vs = 4 * c * p + 3, p * o + 5
    ubuf, vbuf = np.full((9, us), np.nan, dtype), np.full((9, vs), np.nan, dtype)
    parts = []
    for k, kk in enumerate(depths):
        a, b = rng.standard_normal((kk, p)), rng.standard_normal((p, o))
        ubuf[k, :kk * p], vbuf[k, :p * o] = a.ravel(), b.ravel()
        parts.append(a @ b)
    want = np.concatenate(parts)
    m = np.full(25 * c * o, np.nan, dtype)
    kernels.s2_filter_gemm(ubuf, vbuf, m, c, p, o, us, vs)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(m.reshape(25 * c, o), want, rtol=tol, atol=tol * np.abs(want).max())
    kernels.s2_filter_gemm(ubuf, vbuf, m, c, p, o, us, vs, True)
    np.testing.assert_allclose(m.reshape(25 * c, o), 2 * want, rtol=tol, atol=2 * tol * np.abs(want).max())
    before = m.copy()
    with pytest.raises(ValueError, match="s2_filter_gemm: us, vs: slices of u and v overlap"):
        kernels.s2_filter_gemm(ubuf, vbuf, m, c, p, o, us - 4, vs)
    with pytest.raises(ValueError, match="s2_filter_gemm: C, P, O must be positive"):
        kernels.s2_filter_gemm(ubuf, vbuf, m, c, 0, o, us, vs)
    with pytest.raises(ValueError, match="m: expected at least"):
        kernels.s2_filter_gemm(ubuf, vbuf, m[:-1], c, p, o, us, vs)
    with pytest.raises(ValueError, match="s2_filter_gemm: m: expected a buffer apart from u and v"):
        kernels.s2_filter_gemm(ubuf, vbuf, ubuf.ravel()[:25 * c * o], c, p, o, us, vs)
    np.testing.assert_array_equal(m, before)


@needs_kernels
def test_tile_gemm_refuses_what_it_does_not_compute():
    """Clear errors naming the argument; nothing written on a refused call."""
    u, v = np.ones((2, 3, 4), np.float32), np.ones((2, 4 * 5), np.float32)
    m = np.zeros((2, 3 * 5), np.float32)
    kernels.tile_gemm(u, v, m, 2, 3, 4, 5, 20, 15)
    np.testing.assert_array_equal(m, 4)
    m[:] = 0
    bad = [((u, v, m, 0, 3, 4, 5, 20, 15), "positive"),
           ((u, v, m, 2, 3, 4, 5, 19, 15), "vs, ms"),
           ((u, v, m, 2, 3, 4, 5, 20, 14), "vs, ms"),
           ((u, v, m, 3, 3, 4, 5, 20, 15), "u: expected at least 36"),
           ((u, v[:1], m, 2, 3, 4, 5, 20, 15), "v: expected at least 40"),
           ((u, np.ones((2, 40), np.float32)[:, ::2], m, 2, 3, 4, 5, 20, 15), "v: expected a contiguous"),
           ((u, v, m.astype(np.float64), 2, 3, 4, 5, 20, 15), "m: expected at least"),
           ((u, v, np.zeros(29, np.float32), 2, 3, 4, 5, 20, 15), "m: expected at least 30"),
           ((u, v, v, 2, 3, 4, 5, 20, 15), "m: expected a buffer apart")]
    for args, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            kernels.tile_gemm(*args)
    np.testing.assert_array_equal(m, 0)


@needs_kernels
def test_tile_gemm_for_deep_uniform_products_by_isa_where_blas_threads_can_be_limited(monkeypatch):
    """_tile_run's GEMMs run on tile_gemm (F(2x2, 2x2)'s mixed depths on s2_gemm) on AVX-512 with
    TILE_GEMM_MIN_DEPTH input channels (with 32 BLAS won on Zen 4; on Zen 5 and Intel's AVX-512
    Xeons from FULL_WIDTH_TILE_GEMM_MIN_DEPTH), F(2x2, 2x2)'s from S2_TILE_GEMM_MIN_DEPTH on every
    kind (the ResNet's 32 -> 64 stride-2 forward, Zen 4 too), on AVX2 the Winograd convs' from
    AVX2_TILE_GEMM_MIN_DEPTH, never for other mixed depths, on the baseline, or where BLAS threads
    cannot be limited (np.matmul then runs on all of them)."""
    backend = jp.backend("numpy")
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x19)  # Zen 4

    deep, wino = numpy_spatial.TILE_GEMM_MIN_DEPTH, numpy_spatial.WINOGRAD_DEPTHS
    applies = numpy_spatial._tile_gemm
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)
    assert applies(backend, wino, deep) and applies(backend, (1,) * 36, 2 * deep)
    assert not applies(backend, (1,) * 36, 32)
    assert applies(backend, numpy_spatial.S2_DEPTHS, deep)
    assert applies(backend, numpy_spatial.S2_DEPTHS, 32)  # the ResNet's 32 -> 64 stride-2 forward
    assert not applies(backend, numpy_spatial.S2_DEPTHS, 31)
    assert not applies(backend, (1, 2) * 8, deep)
    full = numpy_spatial.FULL_WIDTH_TILE_GEMM_MIN_DEPTH
    for vendor, family in [("AuthenticAMD", 0x1A), ("GenuineIntel", 6)]:  # Zen 5, Intel's AVX-512 Xeons
        monkeypatch.setattr(kernels, "cpu_vendor", vendor)
        monkeypatch.setattr(kernels, "cpu_family", family)
        assert full < deep and applies(backend, wino, full) and applies(backend, (1,) * 36, full)
        assert applies(backend, numpy_spatial.S2_DEPTHS, full)  # the ResNet's 32 -> 64 stride-2 forward
        assert not applies(backend, wino, full - 1)
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x19)
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, wino, deep)
    # AVX2: the Winograd convs (whole on tile_conv) from AVX2_TILE_GEMM_MIN_DEPTH, nothing else
    monkeypatch.setattr(kernels, "isa", 1)
    avx2 = numpy_spatial.AVX2_TILE_GEMM_MIN_DEPTH
    assert applies(backend, wino, avx2) and applies(backend, numpy_spatial.WG_DEPTHS, avx2)
    assert not applies(backend, wino, avx2 - 1) and not applies(backend, numpy_spatial.WG_DEPTHS, avx2 - 1)
    assert not applies(backend, (1,) * 9, 2 * deep) and not applies(backend, (1, 2) * 8, 2 * deep)
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 1)
    assert not applies(backend, wino, deep)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 1)
    assert applies(backend, wino, deep)


@needs_kernels
@pytest.mark.parametrize("kernel", [3, 5], ids=["F(2x2,3x3)", "F(2x2,5x5)"])
@pytest.mark.parametrize("shape", [(1, 1, 7, 9, 13), (2, 20, 6, 5, 9)], ids=["batch1-C1", "odd-sizes"])
def test_winograd_on_tile_gemm_matches_the_fallback(kernel, shape, monkeypatch):
    """Winograd forward and input gradient with their GEMMs on tile_gemm (any vector width the
    CPU has: the rule is forced), alone and accumulating, in float64 to rounding, against the
    pure-NumPy fallback; edge shapes: batch 1, one input channel, O and P not multiples of the blocks."""
    n, c, h, w_, o = shape
    rng = np.random.default_rng(33)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, kernel, kernel))
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "TILE_GEMM_MIN_DEPTH", 1)
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_TILE_GEMM_MIN_DEPTH", 1)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 1)  # batch 1: one chunk
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_TILES", 1)  # a chunk per sample, dealt to the lanes
    monkeypatch.setattr(numpy_spatial, "WG_TILES", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1})
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())  # Winograd on every CPU kind
    calls = []
    original = kernels.tile_gemm
    monkeypatch.setattr(kernels, "tile_gemm", lambda *a: (calls.append(a[3]), original(*a))[1])
    whole = kernels.tile_conv  # F(2x2, 3x3) and F(2x2, 5x5) run whole in one call
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (calls.append({"wino": 16, "wg": 36}[a[0]]), whole(*a))[1])
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: count - 1)
    geometry = (1, kernel // 2, 1, 1)
    ws = Workspace()
    fast = _all_three(x, w, 6, geometry, ws=ws)
    summed = _all_three(x, w, 6, geometry, accumulate_into=(np.ones_like(x), np.ones_like(w)), ws=ws)
    assert set(calls) == {16 if kernel == 3 else 36}
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, 6, geometry)
    for got, want in zip(fast[:2], reference[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(summed[1], reference[1] + 1, rtol=1e-10, atol=1e-10 * np.abs(reference[1]).max())


@needs_kernels
@pytest.mark.parametrize("kernel, stride, depths", [
    (3, 1, numpy_spatial.WINOGRAD_DEPTHS), (5, 1, (1,) * 36),
    (3, 2, numpy_spatial.S2_DEPTHS)], ids=["F(2x2,3x3)", "F(2x2,5x5)", "stride-2-phases"])
@pytest.mark.parametrize("entry", [True, False], ids=["positions-entry", "matmul"])
def test_tile_run_gemms_on_blas_match_the_fallback(kernel, stride, depths, entry, monkeypatch):
    """_tile_run's GEMMs where tile_gemm does not run (the AVX2 rule, shallow layers on
    AVX-512): every position of a chunk in one gemm_positions call where the BLAS entry is
    registered (the stride-2 phases' depths differ by position), else np.matmul; either way the
    pure-NumPy fallback's results in float64 to rounding, forward (Winograd, the stride-2
    phases) and input gradient (Winograd, the stride-2 phases' F(2x2, 2x2) on dx), alone and
    accumulating."""
    backend = jp.backend("numpy")
    if entry and backend.blas_positions is None:
        pytest.skip("_blas_kernels is not built or no ILP64 OpenBLAS is loaded")
    n, c, h, w_, o = 2, 6, 9, 11, 5
    rng = np.random.default_rng(34)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, kernel, kernel))
    monkeypatch.setattr(kernels, "isa", 2)  # the rules of every path here; the C kernels are the CPU's
    monkeypatch.setattr(numpy_spatial, "TILE_GEMM_MIN_DEPTH", 1 << 30)  # never tile_gemm / s2_gemm
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_TILE_GEMM_MIN_DEPTH", 1 << 30)
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_TILES", 1)  # a chunk per sample, dealt to the lanes
    monkeypatch.setattr(numpy_spatial, "WG_TILES", 1)
    monkeypatch.setattr(numpy_spatial, "S2_TILES", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_TILES", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1})
    monkeypatch.setattr(numpy_spatial, "S2_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_INPUTS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: count - 1)
    calls = []
    if entry:
        original = backend.blas_positions
        monkeypatch.setattr(backend, "blas_positions", lambda *a: (calls.append(tuple(a[3])), original(*a))[1])
    else:
        monkeypatch.setattr(backend, "blas_positions", None)
    geometry = (stride, kernel // 2, 1, 1)
    ws = Workspace()
    fast = _all_three(x, w, 7, geometry, ws=ws)
    summed = _all_three(x, w, 7, geometry, accumulate_into=(np.ones_like(x), np.ones_like(w)), ws=ws)
    if entry:  # every chunk of the forward and of the input gradient, all its positions at once
        assert set(calls) == {tuple(depths)} | ({numpy_spatial.S2_DATA_DEPTHS} if stride == 2 else set())
        assert len(calls) == 4 * n
    monkeypatch.setattr(backend, "conv_kernels", None)
    reference = _all_three(x, w, 7, geometry)
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(summed[1], reference[1] + 1, rtol=1e-10, atol=1e-10 * np.abs(reference[1]).max())


def test_sample_chunks_give_each_lane_a_chunk():
    """Chunks of about chunk_tiles tiles, at least one sample each, and at least one per lane
    where there are as many samples (a batch of 8 on 8x8 planes, 128 tiles, no longer runs
    on one core)."""
    chunks = numpy_spatial._sample_chunks
    assert chunks(8, 16, 256) == (8, [(0, 8)])
    assert chunks(8, 16, 256, 2) == (4, [(0, 4), (4, 8)])
    assert chunks(3, 16, 256, 2) == (2, [(0, 2), (2, 3)])
    assert chunks(1, 16, 256, 2) == (1, [(0, 1)])
    assert chunks(64, 16, 256, 2) == (16, [(0, 16), (16, 32), (32, 48), (48, 64)])  # the size rules
    assert chunks(3, 300, 256, 2) == (1, [(0, 1), (1, 2), (2, 3)])


@needs_kernels
@pytest.mark.parametrize("blocks", [False, True], ids=["blas", "register-blocks"])
def test_small_batch_tiled_convs_reach_every_lane(blocks, monkeypatch):
    """A batch whose tiles fit one chunk (4 samples of 8x8 outputs): Winograd's forward and input
    gradient, the stride-2 phases' forward, and the Winograd and phase weight gradients cut it
    into a chunk per lane (2 here), on BLAS and on the register blocks, the fallback's results
    in float64 to rounding."""
    rng = np.random.default_rng(47)
    monkeypatch.setattr(kernels, "isa", 2)
    for name, value in [("_gemm_lanes", lambda: 2), ("_num_threads", lambda: 2), ("WINOGRAD_MIN_CHANNELS", 1),
                        ("WINOGRAD_MIN_PLANE", 1), ("WINOGRAD_FILTER_MIN_CHANNELS", 1),
                        ("S2_MIN_CHANNELS", {1: 1, 2: 1}), ("S2_FILTER_MIN_CHANNELS", {1: 1, 2: 1}),
                        ("DIRECT_FAVOURED_CPUS", set()), ("_algorithm", lambda op, count, *rest: count - 1),
                        ("TILE_GEMM_MIN_DEPTH", 1 if blocks else 1 << 30),
                        ("FULL_WIDTH_TILE_GEMM_MIN_DEPTH", 1 if blocks else 1 << 30),
                        ("S2_TILE_GEMM_MIN_DEPTH", {2: 1} if blocks else {}),
                        ("WINOGRAD_FILTER_TILE_GEMM_ISAS", (2,) if blocks else ()),
                        ("S2_FILTER_TILE_GEMM_ISAS", (2,) if blocks else ())]:
        monkeypatch.setattr(numpy_spatial, name, value)
    pieces = []
    for name in ("_deal_gemm_pieces", "_run_gemm_pieces"):
        original = getattr(numpy_spatial, name)
        monkeypatch.setattr(numpy_spatial, name, lambda count, work, run=original: (pieces.append(count),
                                                                                     run(count, work))[1])
    whole = kernels.tile_conv
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (pieces.append(a[19]), whole(*a))[1])
    for stride, side in [(1, 8), (2, 16)]:
        x, w = rng.standard_normal((4, 6, side, side)), rng.standard_normal((5, 6, 3, 3))
        del pieces[:]
        results = _all_three(x, w, 5, (stride, 1, 1, 1), ws=Workspace())
        # forward, input gradient (at stride 2 im2col + GEMM, whose chunks were dealt to the lanes
        # before), weight gradient
        assert pieces == [2, 2, 2], stride
        _assert_like_the_fallback(monkeypatch, [results], x, w, 5, (stride, 1, 1, 1))
        monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", kernels)  # the fallback ran last


def test_the_algorithm_is_fixed_by_the_geometry():
    """Never timed: two runs of one network (a resumed one, another process) take the same path."""
    choose = numpy_spatial._algorithm
    assert choose("forward", 1, (32, 32)) == 0  # only im2col + GEMM applies
    assert choose("forward", 3, (32, 32), 1) == choose("data", 3, (32, 32)) == 2  # Winograd
    assert choose("forward", 2, (4, 4)) == choose("data", 2, (4, 4)) == 1
    assert choose("filter", 2, (32, 32)) == choose("filter", 2, (32, 32), 1) == 1  # dilated or not
    assert choose("filter", 2, (8, 8)) == 0  # small planes: GEMM
    assert choose("filter", 2, (8, 8), 1) == 0
    # 16x16 planes: direct on AVX2, on AVX-512 for narrow layers only
    assert choose("filter", 2, (16, 16), 1, 64) == choose("filter", 2, (16, 16), 1) == 1
    assert choose("filter", 2, (16, 16), 2, 32) == 1
    assert choose("filter", 2, (16, 16), 2, 64) == choose("filter", 2, (16, 16), 2) == 0
    assert choose("filter", 2, (8, 8), 1, 16) == 0


def _plan_3x3(c, o, hw):
    return numpy_spatial._ConvPlan((2, c, hw, hw), (o, c, 3, 3), (hw, hw), (1, 1), (1, 1), (1, 1), 1)


@needs_kernels
@pytest.mark.parametrize("isa, wins, loses", [
    (1, [(64, 64, 32), (64, 128, 8), (32, 64, 16), (64, 32, 16), (32, 32, 8)],
     [(64, 64, 7), (16, 32, 16), (32, 16, 16), (16, 16, 32)]),
    (2, [(64, 64, 32), (64, 128, 8), (32, 64, 16), (64, 32, 16), (32, 32, 8)],
     [(64, 64, 7), (16, 32, 16), (32, 16, 16), (16, 16, 32)]),
    (0, [], [(64, 64, 32)]),
], ids=["avx2", "avx512", "baseline"])
def test_winograd_only_for_wide_layers_on_large_planes(monkeypatch, isa, wins, loses):
    """Winograd's 16 GEMMs lose to the direct kernel when thin (few channels) or short (small
    planes): on Zen 4, with the AVX-512 and the AVX2 build, they win from 8x8 planes and 32
    channels each side on (16 lose); the baseline build never runs them. Layers as (C, O,
    output side)."""
    monkeypatch.setattr(kernels, "isa", isa)
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x19)  # Zen 4
    backend = jp.backend("numpy")
    for c, o, hw in wins:
        assert numpy_spatial._winograd(backend, _plan_3x3(c, o, hw), c, o, (hw, hw))
    for c, o, hw in loses:
        assert not numpy_spatial._winograd(backend, _plan_3x3(c, o, hw), c, o, (hw, hw))


@needs_kernels
@pytest.mark.parametrize("isa", [1, 2], ids=["avx2", "avx512"])
def test_zen5_runs_f2x2_3x3_only_on_64_channels_summed_over_with_avx512(monkeypatch, isa):
    """AMD Zen 5 with AVX-512: the direct kernel beat F(2x2, 3x3) with 32 channels summed over
    (the forward's input channels, the input gradient's output channels) with the GEMMs on BLAS,
    and in the CNN and the ResNet with them on tile_gemm too (it won alone; docs/numpy.md, session
    35), and lost with 64; held to AVX2 the Zen 4 rule holds. Layers as (summed over, other side,
    output side), batch 8 in two or more chunks on two lanes."""
    monkeypatch.setattr(kernels, "isa", isa)
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x1A)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)
    backend = jp.backend("numpy")
    for n_in, n_out, hw, wins in [(64, 64, 8, True), (64, 32, 16, True), (64, 128, 8, True),
                                  (32, 64, 16, isa == 1), (32, 32, 16, isa == 1), (32, 32, 32, isa == 1),
                                  (64, 16, 16, False)]:
        plan = numpy_spatial._ConvPlan((8, n_in, hw, hw), (n_out, n_in, 3, 3), (hw, hw), (1, 1), (1, 1), (1, 1), 1)
        assert numpy_spatial._winograd(backend, plan, n_in, n_out, (hw, hw)) == wins
    # Intel's AVX-512 Xeons, full width too, take F(2x2, 3x3) from 32 channels (session 43)
    monkeypatch.setattr(kernels, "cpu_vendor", "GenuineIntel")
    monkeypatch.setattr(kernels, "cpu_family", 6)
    plan = numpy_spatial._ConvPlan((8, 32, 16, 16), (64, 32, 3, 3), (16, 16), (1, 1), (1, 1), (1, 1), 1)
    assert numpy_spatial._winograd(backend, plan, 32, 64, (16, 16))


@needs_kernels
@pytest.mark.parametrize("m, r", [(2, 5), (4, 5), (4, 3)])
def test_wg_input_sparse_builds_match_the_transform_matrices(m, r):
    """wg_input's sparse builds leave out BT's zero entries as compiled (wg_bt_nonzero); a BT with
    a nonzero elsewhere would run the dense build: slower, so the patterns must be
    spatial._wg_matrices' exactly (bit i*n + j for entry (i, j))."""
    n = m + r - 1
    bt = numpy_spatial._wg_matrices(m, r)[m * n + n * r:].reshape(n, n)
    pattern = sum(1 << (i * n + j) for i in range(n) for j in range(n) if bt[i, j] != 0)
    assert kernels.wg_bt_nonzero[(m, r)] == pattern


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_wg_input_matches_the_reference_with_the_sparse_and_the_dense_build(dtype):
    """wg_input against the float64 BT d BT^T of every 6x6 tile, with WG_POINTS (the sparse
    build) and with other points, whose BT has nonzeros outside the compiled pattern (the dense
    build)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    geometry = (3, 9, 11, 5, 5, 1, 1, 2, 2, 1, 1, 9, 11)
    th, tw, n = 5, 6, 6
    ks = 3 * 2 * th * tw
    pad = np.zeros((2, 3, 2 * th + 4, 2 * tw + 4))
    pad[:, :, 2:11, 2:13] = x
    tiles = np.lib.stride_tricks.sliding_window_view(pad, (6, 6), axis=(2, 3))[:, :, ::2, ::2]
    for points, sparse in [(numpy_spatial.WG_POINTS, True), ((0.0, 1.0, -1.0, 0.5, -3.0), False)]:
        mats = numpy_spatial._wg_matrices(2, 5, points=points)
        bt = mats[2 * n + n * 5:].reshape(n, n)
        pattern = sum(1 << (i * n + j) for i in range(n) for j in range(n) if bt[i, j] != 0)
        assert (pattern & ~kernels.wg_bt_nonzero[(2, 5)] == 0) == sparse
        v = np.zeros(36 * ks, dtype)
        kernels.wg_input(x, v, geometry, 2, 0, 2, th, tw, ks, 2, mats)
        want = np.einsum("ik,ncyxkl,jl->ijcnyx", bt, tiles, bt).reshape(36, ks)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(v.reshape(36, ks), want, rtol=tol, atol=tol * np.abs(want).max())


@needs_kernels
def test_winograd_mxm_only_for_undilated_ungrouped_wide_layers(monkeypatch):
    """F(2x2, 5x5) (and F(4x4, 3x3) where enabled): stride 1 (checked by the caller), no dilation or
    groups, 32+ (5x5) or 64+ (3x3) channels each side (with 16 / 32 the direct kernel wins or
    ties), on AVX2 and AVX-512."""
    monkeypatch.setattr(kernels, "isa", 1)
    backend = jp.backend("numpy")
    applies = numpy_spatial._wg

    def plan(c, o, hw, k=5, dilation=1, groups=1):
        return numpy_spatial._ConvPlan((2, c, hw, hw), (o, c // groups, k, k), (hw, hw), (1, 1), (2, 2),
                                       (dilation, dilation), groups)

    assert applies(backend, plan(32, 32, 32), 32, 32, (32, 32))
    assert applies(backend, plan(64, 64, 16), 64, 64, (16, 16))
    assert not applies(backend, plan(16, 16, 32), 16, 16, (32, 32))
    assert not applies(backend, plan(32, 32, 8), 32, 32, (8, 8))
    assert not applies(backend, plan(32, 32, 32, dilation=2), 32, 32, (32, 32))
    assert not applies(backend, plan(32, 32, 32, groups=2), 32, 32, (32, 32))
    assert not applies(backend, plan(64, 64, 32, k=3), 64, 64, (32, 32))  # F(2x2, 3x3)'s by default
    monkeypatch.setattr(numpy_spatial, "WG_TILE", {5: 4, 3: 4})  # F(4x4, 3x3) where enabled: 64+ channels
    assert applies(backend, plan(64, 64, 32, k=3), 64, 64, (32, 32))
    assert not applies(backend, plan(32, 32, 32, k=3), 32, 32, (32, 32))
    assert not applies(backend, plan(64, 64, 32, k=3, dilation=2), 64, 64, (32, 32))
    monkeypatch.setattr(kernels, "isa", 2)  # AVX-512 too (measured on Zen 4 and Sapphire Rapids)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)  # Intel's on tile_gemm, which needs
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)  # BLAS's threads limited
    for kind in [("AuthenticAMD", 0x19), ("GenuineIntel", 6)]:
        monkeypatch.setattr(kernels, "cpu_vendor", kind[0])
        monkeypatch.setattr(kernels, "cpu_family", kind[1])
        assert applies(backend, plan(32, 32, 32), 32, 32, (32, 32))
    monkeypatch.setattr(kernels, "isa", 0)  # baseline x86-64: im2col + GEMM
    assert not applies(backend, plan(32, 32, 32), 32, 32, (32, 32))


@needs_kernels
@pytest.mark.parametrize("kind", [("AuthenticAMD", 0x1A), ("GenuineIntel", 6)], ids=["zen5", "intel"])
def test_full_width_kinds_run_5x5_layers_as_f2x2_5x5_with_avx512_only_on_tile_gemm(monkeypatch, kind):
    """AMD Zen 5 (family 0x1A) and Intel's AVX-512 Xeons (FULL_WIDTH_CPUS): the direct kernel's
    AVX-512 build beat F(2x2, 5x5) with its GEMMs on BLAS and lost to it with them on tile_gemm
    on Zen 5 (docs/numpy.md): a batch of one sample (one chunk, two lanes) takes F(2x2, 5x5) too,
    its GEMMs on tile_gemm, but where BLAS's threads cannot be limited it runs direct; its AVX2
    build runs F(2x2, 5x5) as elsewhere; 3x3 layers keep F(2x2, 3x3)."""
    backend = jp.backend("numpy")
    monkeypatch.setattr(kernels, "cpu_vendor", kind[0])
    monkeypatch.setattr(kernels, "cpu_family", kind[1])
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)
    picked = []
    for name in ("_wg_forward", "_direct_forward", "_winograd_forward"):
        monkeypatch.setattr(numpy_spatial, name, lambda *a, _n=name: picked.append(_n))
    for isa, k, channels, batch, want, lanes in [(2, 5, 32, 2, "_wg_forward", 2), (2, 5, 32, 1, "_wg_forward", 2),
                                                 (2, 5, 32, 1, "_direct_forward", 1),
                                                 (2, 5, 16, 2, "_direct_forward", 2), (1, 5, 32, 1, "_wg_forward", 2),
                                                 (2, 3, 64, 2, "_winograd_forward", 2)]:
        monkeypatch.setattr(kernels, "isa", isa)
        monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda _lanes=lanes: _lanes)
        x = np.zeros((batch, channels, 32, 32), np.float32)
        w = np.zeros((channels, channels, k, k), np.float32)
        picked.clear()
        backend.conv2d(x, w, np.empty_like(x), (1, 1), (k // 2, k // 2), (1, 1), 1, ws=Workspace())
        assert picked == [want], (isa, k)


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 32, 16, 16, 32, 2), (2, 33, 13, 11, 35, 1), (2, 32, 5, 6, 32, 3)],
                         ids=["plane", "odd-sizes", "padding-past-the-kernel"])
@pytest.mark.parametrize("m, k", [(2, 5), (4, 5), (4, 3)], ids=["F(2x2,5x5)", "F(4x4,5x5)", "F(4x4,3x3)"])
def test_winograd_mxm_matches_the_reference(shape, m, k, monkeypatch):
    """F(m x m, k x k): in float64 to rounding, in float32 within 2e-5 of the largest output
    (docs/numpy.md: 1.5-8e-6 measured, the direct kernel about 1e-6), forward and input gradient,
    alone and accumulating; tiles past the plane's edges are dropped."""
    n, c, h, w_, o, p = shape
    p = min(p, k - 1) if k == 3 else p
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)
    monkeypatch.setattr(kernels, "isa", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1})
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())  # Winograd on every CPU kind
    monkeypatch.setattr(numpy_spatial, "WG_TILE", {k: m})
    picked = []
    for name in ("_wg_forward", "_wg_backward_data"):
        original = getattr(numpy_spatial, name)
        monkeypatch.setattr(numpy_spatial, name, lambda *a, _f=original, _n=name: (picked.append(_n), _f(*a))[1])
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: count - 1)
    ws = Workspace()
    results = {dtype: _all_three(x.astype(dtype), w.astype(dtype), 3, (1, p, 1, 1), ws=ws)
               for dtype in (np.float64, np.float32)}
    summed = _all_three(x, w, 3, (1, p, 1, 1), accumulate_into=(np.ones_like(x), np.ones_like(w)), ws=ws)
    assert sorted(set(picked)) == ["_wg_backward_data", "_wg_forward"]
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    reference = _all_three(x, w, 3, (1, p, 1, 1))
    for exact, single, want in zip(results[np.float64], results[np.float32], reference):
        np.testing.assert_allclose(exact, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
        assert np.abs(single - want).max() <= 2e-5 * np.abs(want).max()
    np.testing.assert_allclose(summed[1], reference[1] + 1, rtol=1e-10, atol=1e-10)


@needs_kernels
def test_winograd_mxm_refuses_geometries_it_does_not_compute():
    x, v = np.zeros((1, 2, 8, 8), np.float32), np.zeros((64, 64), np.float32)
    mats = numpy_spatial._wg_matrices(4, 5)
    ok = (2, 8, 8, 5, 5, 1, 1, 2, 2, 1, 1, 8, 8)
    kernels.wg_input(x, v, ok, 1, 0, 1, 2, 2, 8, 4, mats)
    for geometry, m in [((2, 8, 8, 5, 5, 2, 2, 2, 2, 1, 1, 4, 4), 4),   # strided
                        ((2, 8, 8, 5, 5, 1, 1, 4, 4, 2, 2, 8, 8), 4),   # dilated
                        ((2, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8), 2),   # F(2x2, 3x3) is the other kernel
                        ((2, 8, 8, 5, 5, 1, 1, 2, 2, 1, 1, 7, 8), 4)]:  # wrong output size
        with pytest.raises(ValueError, match="wg kernels"):
            kernels.wg_input(x, v, geometry, 1, 0, 1, 2, 2, 8, m, mats)
    with pytest.raises(ValueError, match="mats"):
        kernels.wg_input(x, v, ok, 1, 0, 1, 2, 2, 8, 4, mats[:10])
    with pytest.raises(ValueError, match="overlap"):
        kernels.wg_input(x, v, ok, 1, 0, 1, 2, 2, 4, 4, mats)


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 32, 7, 9, 33, 1), (3, 32, 8, 8, 32, 0), (2, 33, 13, 11, 35, 1),
                                   (2, 32, 5, 6, 32, 2)],
                         ids=["batch-1-odd", "unpadded", "odd-channels", "padding-past-the-kernel"])
@pytest.mark.parametrize("chunk_bytes", [1, numpy_spatial.WINOGRAD_FILTER_BYTES], ids=["a-sample-a-chunk", "default-chunks"])
@pytest.mark.parametrize("gemm", ["tile_gemm", "matmul"])
@pytest.mark.parametrize("dilation", [1, 2])
def test_winograd_weight_gradient_matches_the_reference(shape, chunk_bytes, gemm, dilation, monkeypatch):
    """F(3x3, 2x2): in float64 to rounding, in float32 within 2e-6 of the largest tap (docs/numpy.md:
    6-8e-7 measured, the direct kernel 1-2e-7; the conformance suite allows 2e-4), alone and
    accumulating, over one or many chunks per lane (their sums in a fixed order), its GEMMs on
    tile_gemm (AVX-512's, adding into the lane's sums) and on np.matmul, undilated and dilated;
    dy's tiles past the plane's edges read as zeros."""
    n, c, h, w_, o, p = shape
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 3, 3))
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_FILTER_BYTES", chunk_bytes)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_FILTER_TILE_GEMM_ISAS", (2,) if gemm == "tile_gemm" else ())
    blocked = []
    tile_gemm = kernels.tile_gemm
    monkeypatch.setattr(kernels, "tile_gemm", lambda *a: (blocked.append(1), tile_gemm(*a))[1])
    _weight_gradient_path_matches_the_fallback(monkeypatch, "_winograd_backward_filter", x, w,
                                               (1, p + dilation - 1, dilation, 1))
    assert bool(blocked) == (gemm == "tile_gemm")


def _weight_gradient_path_matches_the_fallback(monkeypatch, path, x, w, geometry):
    """spatial's weight-gradient ``path`` runs for float64, float32 and accumulating calls of the
    3x3 conv ``geometry`` (stride, padding, dilation, groups): in float64 to rounding, in float32
    within 2e-6 of the largest tap, accumulating onto ones, all against the pure-NumPy fallback."""
    picked = []
    original = getattr(numpy_spatial, path)
    monkeypatch.setattr(numpy_spatial, path, lambda *a: (picked.append(1), original(*a))[1])
    ws = Workspace()
    results = {dtype: _all_three(x.astype(dtype), w.astype(dtype), 3, geometry, ws=ws)[2]
               for dtype in (np.float64, np.float32)}
    summed = _all_three(x, w, 3, geometry, accumulate_into=(np.zeros_like(x), np.ones_like(w)), ws=ws)[2]
    assert len(picked) == 3
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    want = _all_three(x, w, 3, geometry)[2]
    np.testing.assert_allclose(results[np.float64], want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    assert np.abs(results[np.float32] - want).max() <= 2e-6 * np.abs(want).max()
    np.testing.assert_allclose(summed, want + 1, rtol=1e-10, atol=1e-10 * np.abs(want).max())


@needs_kernels
def test_winograd_weight_gradient_only_for_wide_layers_on_avx2_and_avx512(monkeypatch):
    """Measured on Zen 4 with the AVX-512 and the AVX2 build: it wins (or ties, 32 channels each
    side on 16x16 under AVX2) from 32 channels each side on 8x8 to 32x32 planes, ties dilated and
    loses with 16 channels; the baseline build keeps GEMM. With its GEMMs on tile_gemm (AVX-512,
    Zen 5) dilation 2 wins too. w shapes (O, C, 3, 3)."""
    applies = numpy_spatial._winograd_filter
    backend = jp.backend("numpy")
    monkeypatch.setattr(kernels, "isa", 2)
    assert applies(backend, (64, 32, 3, 3), (1, 1), 1) and applies(backend, (128, 64, 3, 3), (1, 1), 1)
    assert not applies(backend, (16, 16, 3, 3), (1, 1), 1)
    assert applies(backend, (64, 32, 3, 3), (2, 2), 1) and applies(backend, (64, 32, 3, 3), (1, 2), 1)
    assert not applies(backend, (64, 32, 3, 3), (3, 3), 1)
    assert not applies(backend, (64, 16, 3, 3), (1, 1), 2)
    assert not applies(backend, (64, 64, 5, 5), (1, 1), 1)
    # where it applies it runs at every plane, before the direct kernel and GEMM
    assert numpy_spatial._algorithm("filter", 3, (8, 8), 2, 128) == 2
    monkeypatch.setattr(kernels, "isa", 1)
    assert applies(backend, (64, 64, 3, 3), (1, 1), 1) and applies(backend, (64, 32, 3, 3), (1, 1), 1)
    assert not applies(backend, (16, 16, 3, 3), (1, 1), 1) and not applies(backend, (64, 64, 3, 3), (2, 2), 1)
    assert numpy_spatial._algorithm("filter", 3, (8, 8), 1, 128) == 2
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, (64, 64, 3, 3), (1, 1), 1)


@needs_kernels
def test_winograd_weight_gradient_kernels_refuse_what_they_do_not_compute():
    dy, m = np.zeros((1, 2, 8, 8), np.float32), np.zeros((16, 40), np.float32)
    ok = (3, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8)
    kernels.winograd_grad(m, dy, ok, 2, 1, 0, 1, 4, 4, 40)
    with pytest.raises(ValueError, match="winograd kernels"):  # stride 2
        kernels.winograd_grad(m, dy, (3, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4), 2, 1, 0, 1, 2, 2, 40)
    with pytest.raises(ValueError, match=r"winograd_grad: ks: slices of m 16 apart overlap \(need at least 32\)"):
        kernels.winograd_grad(m, dy, ok, 2, 1, 0, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="dy: expected at least 128 items"):
        kernels.winograd_grad(m, dy.ravel()[:127], ok, 2, 1, 0, 1, 4, 4, 40)
    frozen = m.copy()
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match="m: expected a contiguous writable buffer"):  # m is what it writes
        kernels.winograd_grad(frozen, dy, ok, 2, 1, 0, 1, 4, 4, 40)
    taps, u = np.zeros((2, 3, 3, 3), np.float32), np.zeros((16, 3, 2), np.float32)
    kernels.winograd_taps(taps, u, 2, 3)
    with pytest.raises(ValueError, match="u: expected at least 96 items"):
        kernels.winograd_taps(taps, u.ravel()[:95], 2, 3)
    with pytest.raises(ValueError, match="w: expected at least 54 items of format 'f or d', got 27"):
        kernels.winograd_taps(taps[:1], u, 2, 3)
    with pytest.raises(TypeError, match="w: expected a contiguous writable buffer"):  # w is what it writes
        kernels.winograd_taps(frozen, u, 2, 3)


@needs_kernels
def test_two_contexts_compute_the_same_bits(monkeypatch):
    monkeypatch.setattr(kernels, "isa", 2)
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((2, 4, 24, 24)), rng.standard_normal((4, 4, 3, 3))
    first = _all_three(x, w, 7, (1, 1, 1, 1), ws=Workspace())
    second = _all_three(x, w, 7, (1, 1, 1, 1), ws=Workspace())
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# (batch, C, H, W, (kh, kw), padding, dilation)
DEPTHWISE_GRID_CASES = [(2, 3, 9, 7, (3, 3), (1, 1), (1, 1)),    # odd planes: rows end inside a vector
                        (3, 4, 16, 16, (3, 3), (1, 1), (1, 1)),  # whole-vector rows
                        (2, 2, 11, 6, (5, 3), (2, 0), (1, 2)),   # unpadded side, dilated, tall kernel
                        (1, 5, 5, 5, (3, 3), (2, 3), (1, 1)),    # padding past the kernel: border outputs
                        (2, 2, 5, 43, (3, 3), (1, 1), (1, 1)),   # strided rows of whole vectors and a tail
                        # stride 2 on 2 Ho x 2 Wo (rows in registers, _s2): whole vectors and a tail
                        # of each lane count (Wo 37), all tail (Wo 3)
                        (2, 3, 10, 74, (3, 3), (1, 1), (1, 1)), (2, 2, 4, 6, (3, 3), (1, 1), (1, 1)),
                        # rows narrower than the ISA's vectors (a narrower ISA's _s2): Wo 12, Wo 5
                        (2, 3, 8, 24, (3, 3), (1, 1), (1, 1)), (2, 2, 6, 10, (3, 3), (1, 1), (1, 1)),
                        # stride 1, 3x3 "same" on small planes (flat, _flat): 7x7 (a pair of 16-lane
                        # vectors and a tail), 8x8 (whole pairs at 16 lanes), one row, one column
                        (2, 3, 7, 7, (3, 3), (1, 1), (1, 1)), (2, 2, 8, 8, (3, 3), (1, 1), (1, 1)),
                        (2, 2, 1, 9, (3, 3), (1, 1), (1, 1)), (2, 2, 6, 1, (3, 3), (1, 1), (1, 1))]
#: strides of the grid kernels' tests: stride 1 on the padded plane, the others on its phases
DEPTHWISE_GRID_STRIDES = [(1, 1), (2, 2), (2, 1), (3, 2)]


def _depthwise_windows(xp, i, j, dilation, stride, out_hw):
    """The padded input's values tap (i, j) reads for every output, (N, C, Ho, Wo)."""
    (dh, dw), (sh, sw), (ho, wo) = dilation, stride, out_hw
    return xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]


def _depthwise_out_hw(h, w_, kernel, padding, dilation, stride):
    return tuple((size + 2 * p - (k - 1) * d - 1) // s + 1
                 for size, k, p, d, s in zip((h, w_), kernel, padding, dilation, stride))


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", DEPTHWISE_GRID_STRIDES, ids=[str(s) for s in DEPTHWISE_GRID_STRIDES])
@pytest.mark.parametrize("case", DEPTHWISE_GRID_CASES, ids=[str(c) for c in DEPTHWISE_GRID_CASES])
def test_depthwise_grid_with_each_epilogue_matches_a_float64_reference(case, stride, dtype):
    """depthwise_grid over a sub-range of planes (its padded buffer, or strided its phase planes,
    reused from plane to plane), plain, accumulating, and with each epilogue applied as the planes
    are stored, against a depthwise conv written out here; planes outside the range are left
    untouched."""
    n, c, h, w_, (kh, kw), (ph, pw), (dh, dw) = case
    ho, wo = _depthwise_out_hw(h, w_, (kh, kw), (ph, pw), (dh, dw), stride)
    rng = np.random.default_rng(41)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((c, 1, kh, kw))
    scale, shift, residual = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal((n, c, ho, wo))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = sum(w[None, :, 0, i, j, None, None] * _depthwise_windows(xp, i, j, (dh, dw), stride, (ho, wo))
            for i in range(kh) for j in range(kw))
    geometry = (c, h, w_, kh, kw, *stride, ph, pw, dh, dw, ho, wo)
    p0, p1 = 1, n * c - 1  # planes [1, N*C - 1): the first and last must stay as they were
    tol = 1e-5 if dtype == np.float32 else 1e-12
    f = lambda a: a.astype(dtype)  # noqa: E731
    sc, sh = scale[:, None, None], shift[:, None, None]
    epilogues = [((), y), ((None, f(shift)), y + sh), ((f(scale), None, True), np.maximum(y * sc, 0)),
                 ((f(scale), f(shift), False, f(residual)), y * sc + sh + residual),
                 ((f(scale), f(shift), True, f(residual)), np.maximum(y * sc + sh + residual, 0))]
    for extra, want in epilogues:
        out = np.full(y.shape, np.nan, dtype)
        kernels.depthwise_grid(f(x), f(w), out, geometry, n, p0, p1, False, False, *extra)
        got, ref = out.reshape(n * c, ho, wo), want.reshape(n * c, ho, wo)
        np.testing.assert_allclose(got[p0:p1], ref[p0:p1], rtol=tol, atol=tol * 4 * np.abs(want).max())
        assert np.isnan(got[:p0]).all() and np.isnan(got[p1:]).all()
    start = f(residual)
    out = start.copy()
    kernels.depthwise_grid(f(x), f(w), out, geometry, n, 0, n * c, False, True)
    np.testing.assert_allclose(out, residual + y, rtol=tol, atol=tol * 4 * np.abs(y).max())
    with pytest.raises(ValueError, match="depthwise_grid: an epilogue .* needs accumulate off"):
        kernels.depthwise_grid(f(x), f(w), start, geometry, n, 0, n * c, False, True, None, f(shift))
    np.testing.assert_array_equal(start, f(residual))
    with pytest.raises(ValueError, match="shift: expected at least"):
        kernels.depthwise_grid(f(x), f(w), start, geometry, n, 0, n * c, False, False, None, f(shift[:-1]))


#: the cases whose stride-1 input gradient is a padded forward pass (padding at most (k - 1) d)
DEPTHWISE_FLIPPABLE = [case for case in DEPTHWISE_GRID_CASES
                       if all(p <= (k - 1) * d for k, p, d in zip(case[4], case[5], case[6]))]


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DEPTHWISE_FLIPPABLE, ids=[str(c) for c in DEPTHWISE_FLIPPABLE])
def test_depthwise_grid_with_flipped_taps_matches_a_float64_reference(case, dtype):
    """depthwise_grid as the stride-1 input gradient: dy's plane against the taps reversed,
    padded (k - 1) d - p, stored over a sub-range of planes and accumulating, against the input
    gradient written out here as each output's taps scattered back."""
    n, c, h, w_, (kh, kw), (ph, pw), (dh, dw) = case
    fh, fw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    ho, wo = _depthwise_out_hw(h, w_, (kh, kw), (ph, pw), (dh, dw), (1, 1))
    rng = np.random.default_rng(47)
    dy, w = rng.standard_normal((n, c, ho, wo)), rng.standard_normal((c, 1, kh, kw))
    dxp = np.zeros((n, c, h + 2 * ph, w_ + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            _depthwise_windows(dxp, i, j, (dh, dw), (1, 1), (ho, wo))[...] += w[None, :, 0, i, j, None, None] * dy
    want = dxp[:, :, ph:ph + h, pw:pw + w_]
    geometry = (c, ho, wo, kh, kw, 1, 1, fh, fw, dh, dw, h, w_)
    p0, p1 = 1, n * c - 1
    tol = 1e-5 if dtype == np.float32 else 1e-12
    out = np.full(want.shape, np.nan, dtype)
    kernels.depthwise_grid(dy.astype(dtype), w.astype(dtype), out, geometry, n, p0, p1, True, False)
    got, ref = out.reshape(n * c, h, w_), want.reshape(n * c, h, w_)
    np.testing.assert_allclose(got[p0:p1], ref[p0:p1], rtol=tol, atol=tol * 4 * np.abs(want).max())
    assert np.isnan(got[:p0]).all() and np.isnan(got[p1:]).all()
    start = rng.standard_normal(want.shape)
    out = start.astype(dtype)
    kernels.depthwise_grid(dy.astype(dtype), w.astype(dtype), out, geometry, n, 0, n * c, True, True)
    np.testing.assert_allclose(out, start + want, rtol=tol, atol=tol * 4 * np.abs(want).max())


# (batch, C, H, W, (kh, kw), padding, dilation): the weight gradient sums DW_FILTER_TAPS (9) taps a
# pass over dy's plane, the rest in a shorter pass
DEPTHWISE_FILTER_CASES = [(2, 3, 9, 7, (3, 3), (1, 1), (1, 1)),    # one whole pass
                          (2, 4, 10, 11, (5, 2), (2, 1), (1, 1)),  # 10 taps: a pass of 9 and one of 1
                          (1, 3, 13, 12, (7, 7), (3, 3), (1, 1)),  # 49 taps: five passes of 9, one of 4
                          (2, 2, 11, 6, (5, 3), (2, 0), (1, 2)),   # 15: 9 and 6, dilated, unpadded side
                          (3, 2, 16, 16, (1, 3), (0, 1), (1, 1)),  # 3 taps: one short pass
                          (2, 2, 5, 43, (3, 3), (1, 1), (1, 1)),   # strided rows of whole vectors and a tail
                          # stride 2 on 2 Ho x 2 Wo (rows in registers, _s2): vectors and a tail of each
                          # lane count, only whole 16-lane vectors, all tail
                          (2, 3, 10, 74, (3, 3), (1, 1), (1, 1)), (3, 2, 16, 32, (3, 3), (1, 1), (1, 1)),
                          (2, 2, 4, 6, (3, 3), (1, 1), (1, 1)),
                          # rows narrower than the ISA's vectors (a narrower ISA's _s2): Wo 12, Wo 5
                          (2, 3, 8, 24, (3, 3), (1, 1), (1, 1)), (2, 2, 6, 10, (3, 3), (1, 1), (1, 1)),
                          # stride 1, 3x3 "same" on small planes (flat, _flat), as the forward's cases
                          (2, 3, 7, 7, (3, 3), (1, 1), (1, 1)), (3, 2, 8, 8, (3, 3), (1, 1), (1, 1)),
                          (2, 2, 1, 9, (3, 3), (1, 1), (1, 1)), (2, 2, 6, 1, (3, 3), (1, 1), (1, 1))]


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", DEPTHWISE_GRID_STRIDES, ids=[str(s) for s in DEPTHWISE_GRID_STRIDES])
@pytest.mark.parametrize("case", DEPTHWISE_FILTER_CASES, ids=[str(c) for c in DEPTHWISE_FILTER_CASES])
def test_depthwise_grid_filter_matches_a_float64_reference(case, stride, dtype):
    """depthwise_grid_filter over a range of channels against sums written out here, for tap counts
    that end on every kind of pass, at stride 1 and strided (the input's phase planes); channels
    outside the range untouched, then accumulating."""
    n, c, h, w_, (kh, kw), (ph, pw), (dh, dw) = case
    ho, wo = _depthwise_out_hw(h, w_, (kh, kw), (ph, pw), (dh, dw), stride)
    rng = np.random.default_rng(43)
    x, dy = rng.standard_normal((n, c, h, w_)), rng.standard_normal((n, c, ho, wo))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    want = np.zeros((c, 1, kh, kw))
    for i in range(kh):
        for j in range(kw):
            want[:, 0, i, j] = np.einsum("nchw,nchw->c", dy, _depthwise_windows(xp, i, j, (dh, dw), stride, (ho, wo)))
    geometry = (c, h, w_, kh, kw, *stride, ph, pw, dh, dw, ho, wo)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    dw_ = np.full(want.shape, np.nan, dtype)
    kernels.depthwise_grid_filter(x.astype(dtype), dy.astype(dtype), dw_, geometry, n, 1, c, False)
    np.testing.assert_allclose(dw_[1:], want[1:], rtol=tol, atol=tol * np.abs(want).max())
    assert np.isnan(dw_[0]).all()
    dw_[0] = 0
    kernels.depthwise_grid_filter(x.astype(dtype), dy.astype(dtype), dw_, geometry, n, 0, c, True)
    np.testing.assert_allclose(dw_, want + np.concatenate([0 * want[:1], want[1:]]), rtol=tol,
                               atol=2 * tol * np.abs(want).max())


@needs_kernels
def test_kernels_refuse_buffers_that_do_not_fit():
    x = np.zeros((2, 3, 5, 5), np.float32)
    geometry = (3, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5)
    with pytest.raises(ValueError, match="cols: expected at least 675 items"):
        kernels.im2col(x, np.zeros(674, np.float32), geometry, 2, 0, 1, 0, 5, 675, 25)
    with pytest.raises(ValueError, match="cols: expected at least 675 items of format 'f'"):
        kernels.im2col(x, np.zeros(675, np.float64), geometry, 2, 0, 1, 0, 5, 675, 25)
    with pytest.raises(ValueError, match=r"samples: range \[0, 3\)"):
        kernels.im2col(x, np.zeros(2025, np.float32), geometry, 2, 0, 3, 0, 5, 675, 25)
    with pytest.raises(ValueError, match="direct_grid_filter: need padding >= 0 and the Ho, Wo"):  # s2: Ho 3
        kernels.direct_grid_filter(x, np.zeros((2, 4, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32),
                                   (3, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1, 5, 5), 1, 4, 2, 0, 2, False)
    with pytest.raises(ValueError, match="stride 1 to flip the taps"):
        kernels.depthwise_grid(x, np.zeros((3, 1, 3, 3), np.float32), np.zeros((2, 3, 3, 3), np.float32),
                               (3, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1, 3, 3), 2, 0, 6, True, False)
    with pytest.raises(ValueError, match="the Ho, Wo of that geometry"):  # stride 2 gives 3x3, not 5x5
        kernels.depthwise_grid(x, np.zeros((3, 1, 3, 3), np.float32), np.zeros((2, 3, 5, 5), np.float32),
                               (3, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1, 5, 5), 2, 0, 6, False, False)
    with pytest.raises(ValueError, match="depthwise_phase_data: need padding >= 0"):
        kernels.depthwise_phase_data(np.zeros((2, 3, 3, 3), np.float32), np.zeros((3, 1, 3, 3), np.float32), x,
                                     (3, 5, 5, 3, 3, 2, 2, -1, 1, 1, 1, 2, 3), 2, 0, 6, False)
    with pytest.raises(TypeError, match="x: expected a contiguous buffer"):
        kernels.depthwise_grid(np.zeros((2, 3, 5, 10), np.float32)[..., ::2], np.zeros((3, 1, 3, 3), np.float32),
                               np.zeros((2, 3, 5, 5), np.float32), geometry, 2, 0, 6, False, False)



@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", DEPTHWISE_GRID_STRIDES[1:], ids=[str(s) for s in DEPTHWISE_GRID_STRIDES[1:]])
@pytest.mark.parametrize("case", DEPTHWISE_FILTER_CASES, ids=[str(c) for c in DEPTHWISE_FILTER_CASES])
def test_depthwise_phase_data_matches_a_float64_reference(case, stride, dtype):
    """depthwise_phase_data (the strided input gradient on the phase planes) over a sub-range of
    planes against each tap's weight times dy added back where the tap read, written out here:
    rows and columns no output reads get zeros (or keep dx, accumulating); planes outside the
    range untouched."""
    n, c, h, w_, (kh, kw), (ph, pw), (dh, dw) = case
    ho, wo = _depthwise_out_hw(h, w_, (kh, kw), (ph, pw), (dh, dw), stride)
    rng = np.random.default_rng(47)
    w, dy, start = rng.standard_normal((c, 1, kh, kw)), rng.standard_normal((n, c, ho, wo)), rng.standard_normal((n, c, h, w_))
    dxp = np.zeros((n, c, h + 2 * ph, w_ + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            _depthwise_windows(dxp, i, j, (dh, dw), stride, (ho, wo))[...] += w[None, :, 0, i, j, None, None] * dy
    want = dxp[:, :, ph:ph + h, pw:pw + w_]
    geometry = (c, h, w_, kh, kw, *stride, ph, pw, dh, dw, ho, wo)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    p0, p1 = 1, n * c - 1
    f = lambda a: a.astype(dtype)  # noqa: E731
    for accumulate, base in ((False, np.zeros_like(want)), (True, start)):
        dx = f(start).copy()
        kernels.depthwise_phase_data(f(dy), f(w), dx, geometry, n, p0, p1, accumulate)
        got, ref, kept = dx.reshape(n * c, h, w_), (base + want).reshape(n * c, h, w_), f(start).reshape(n * c, h, w_)
        np.testing.assert_allclose(got[p0:p1], ref[p0:p1], rtol=tol, atol=tol * 4 * np.abs(ref).max())
        np.testing.assert_array_equal(got[:p0], kept[:p0])
        np.testing.assert_array_equal(got[p1:], kept[p1:])

@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_bias_passes_match_the_fallback(dtype, accumulate, monkeypatch):
    """The C bias add and bias gradient (planes of >= BIAS_MIN_INNER values, over threads) against
    NumPy's, and the same bits on one thread as split over every lane."""
    rng = np.random.default_rng(8)
    b = jp.backend("numpy")
    shape = (5, 7, 9, 11)  # inner 99: not a whole number of the kernel's 16 running sums
    y0, bias, db0 = rng.standard_normal(shape).astype(dtype), rng.standard_normal(7).astype(dtype), \
        rng.standard_normal(7).astype(dtype)
    results = []
    for kernels_on, lanes in ((True, None), (True, 1), (False, None)):
        with monkeypatch.context() as m:
            if not kernels_on:
                m.setattr(b, "conv_kernels", None)
            if lanes:
                m.setenv("JUICEPY_NUM_THREADS", str(lanes))
            else:  # split this small array over every lane
                m.setattr(numpy_threads, "MIN_LANE_WORK", 1)
            assert numpy_spatial._c_bias(b, y0) == kernels_on
            y, db = y0.copy(), db0.copy()
            b.add_bias(y, bias)
            b.bias_grad(y, db, accumulate, Workspace())
            results.append((y, db))
    (y_c, db_c), (y_one, db_one), (y_np, db_np) = results
    np.testing.assert_array_equal(y_c, y_one)
    np.testing.assert_array_equal(db_c, db_one)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(y_c, y_np, **tol)
    np.testing.assert_allclose(db_c, db_np, **tol)
    expected = y0.astype(np.float64) + bias.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(db_c, (db0 if accumulate else 0) + expected.sum(axis=(0, 2, 3)), **tol)


def _steady_steps_allocate_nothing(monkeypatch, path, layers, in_shape, out_shape, isa=1):
    """Train ``layers`` on the NumPy backend (AVX2 kernels unless ``isa`` says) and check that
    steady steps make no backend arrays and that they went through spatial's ``path`` function."""
    from juicepy import layers as L
    from juicepy.train import Adam, Trainer

    monkeypatch.setattr(kernels, "isa", isa)
    called = []
    original = getattr(numpy_spatial, path)
    monkeypatch.setattr(numpy_spatial, path, lambda *a, **k: (called.append(1), original(*a, **k))[1])
    backend = jp.backend("numpy")
    trainer = Trainer(jp.Network(L.Sequential(*layers), in_shape, seed=2), L.MSELoss(), Adam(), batch_size=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    y = rng.standard_normal((2, *out_shape)).astype(np.float32)
    for _ in range(2):
        trainer.train_minibatch(backend, x, y)
    before = backend.allocations
    for _ in range(3):
        trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before and called


@needs_kernels
def test_tiled_convs_allocate_nothing_when_a_late_lane_first_takes_a_chunk(monkeypatch):
    """_tile_run deals its chunks to the lanes as they ask; a lane that took none in the first
    steps (it started late) and takes one in a later step finds its scratch made already: the
    warm-up steps run every chunk on lane 0, the steady ones deal them over two lanes."""
    from juicepy import layers as L

    dealt = []

    def deal(count, work):
        dealt.append(count)
        if len(dealt) <= 6:   # the two warm-up steps' three tiled convs (two forwards, an input gradient)
            work(0, count, 0)
            return 1
        for k in range(count):
            work(k, k + 1, k % 2)
        return 2

    monkeypatch.setattr(numpy_spatial, "_deal_gemm_pieces", deal)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "AVX2_TILE_GEMM_MIN_DEPTH", 1 << 30)  # chunks from Python, not tile_conv
    _steady_steps_allocate_nothing(monkeypatch, "_winograd_forward", [L.Conv2d(32, 3, padding=1), L.ReLU(),
                                   L.Conv2d(32, 3, padding=1)], (32, 8, 8), (32, 8, 8))
    assert dealt == [2] * 15   # 3 convs a step, 2 chunks each (a sample a lane)


@needs_kernels
def test_winograd_weight_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_winograd_backward_filter", [L.Conv2d(32, 3, padding=1), L.ReLU(),
                                   L.Conv2d(32, 3, padding=1)], (32, 8, 8), (32, 8, 8))


@needs_kernels
def test_winograd_training_step_allocates_no_backend_buffers(monkeypatch):
    """F(2x2, 3x3) forward and input gradient at 32 channels (on the AVX2 kernels, so that any
    x86 runs it; its GEMMs on np.matmul): the transforms' scratch comes from the workspace, a
    steady step makes no arrays."""
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_winograd_run", [L.Conv2d(32, 3, padding=1), L.ReLU(),
                                   L.Conv2d(64, 3, padding=1)], (32, 16, 16), (64, 16, 16))


@needs_kernels
def test_winograd_5x5_training_step_allocates_no_backend_buffers(monkeypatch):
    """The transform buffers come from the Context's workspace: a steady step makes no arrays."""
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_wg_run", [L.Conv2d(32, 5, padding=2), L.ReLU(),
                                                            L.Conv2d(32, 5, padding=2)], (32, 16, 16), (32, 16, 16))


@needs_kernels
def test_stride_2_phase_winograd_only_for_wide_undilated_3x3(monkeypatch):
    """F(2x2, 2x2) on the phases: 3x3, stride 2, no dilation or groups, S2_MIN_CHANNELS[isa] input
    channels, AVX2 and AVX-512 from 32 (the ResNet's 32 -> 64 layer), not the baseline build;
    narrower strided convs keep the direct kernel. On AVX2 its GEMMs run on the register blocks
    (whole on tile_conv) from S2_TILE_GEMM_MIN_DEPTH input channels."""
    backend = jp.backend("numpy")

    def plan(c, k=3, s=2, dilation=1, groups=1):
        return numpy_spatial._ConvPlan((2, c, 16, 16), (8, c // groups, k, k), (8, 8), (s, s), (1, 1),
                                       (dilation, dilation), groups)

    monkeypatch.setattr(kernels, "isa", 1)
    applies = numpy_spatial._s2
    assert applies(backend, plan(64)) and applies(backend, plan(128)) and applies(backend, plan(32))
    assert not applies(backend, plan(24)) and not applies(backend, plan(64, k=5))
    lanes = numpy_spatial._gemm_lanes() == numpy_spatial._num_threads()
    for c in (32, 64):
        assert numpy_spatial._tile_gemm(backend, numpy_spatial.S2_DEPTHS, c) == lanes
    assert not numpy_spatial._tile_gemm(backend, numpy_spatial.S2_DEPTHS, 24)
    assert numpy_spatial._tile_gemm(backend, numpy_spatial.WINOGRAD_DEPTHS, 64) == lanes  # whole, as the phases
    assert not applies(backend, plan(64, s=1)) and not applies(backend, plan(64, dilation=2))
    assert not applies(backend, plan(64, groups=2))
    monkeypatch.setattr(kernels, "isa", 2)
    assert applies(backend, plan(64)) and applies(backend, plan(32))
    assert not applies(backend, plan(24)) and not applies(backend, plan(16))
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, plan(64))


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 5, 16, 16, 7, 1), (2, 6, 13, 11, 5, 1), (2, 3, 10, 9, 4, 0), (2, 4, 7, 8, 3, 2),
                                   (1, 2, 3, 3, 2, 1), (1, 3, 9, 32, 2, 1), (2, 2, 6, 71, 3, 0)],
                         ids=["even", "odd-sizes", "no-padding", "padding-2", "one-output", "8-tile-block",
                              "blocks-and-rest"])
@pytest.mark.parametrize("isa, gemm", [(1, "matmul"), (1, "tile_conv"), (2, "matmul"), (2, "tile_conv")],
                         ids=["avx2-matmul", "avx2-tile_conv", "avx512-matmul", "avx512-tile_conv"])
def test_stride_2_phase_winograd_matches_the_reference(shape, isa, gemm, monkeypatch):
    """The 3x3 stride-2 forward as F(2x2, 2x2) on its phases: in float64 to rounding, in float32
    within 2e-5 of the largest output (its transforms only add, so about the direct kernel's
    error); tiles past the plane's edges are dropped; bias and ReLU in its epilogue. Rows of 8+
    tiles (16+ outputs) run the transforms' vector blocks, with the tiles past them one by one.
    Its GEMMs on np.matmul per chunk or all of it in one tile_conv call, a lone chunk too."""
    n, c, h, w_, o, p = shape
    rng = np.random.default_rng(21)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 3, 3)) / np.sqrt(c * 9)
    bias = rng.standard_normal(o)
    monkeypatch.setattr(kernels, "isa", isa)
    depth = 1 if gemm == "tile_conv" else 1 << 30
    monkeypatch.setattr(numpy_spatial, "TILE_GEMM_MIN_DEPTH", depth)
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_TILE_GEMM_MIN_DEPTH", depth)
    monkeypatch.setattr(numpy_spatial, "S2_TILE_GEMM_MIN_DEPTH", {1: depth})
    blocked = []
    tile_conv = kernels.tile_conv
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (blocked.append(a[0]), tile_conv(*a))[1])
    monkeypatch.setattr(numpy_spatial, "S2_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_TILES", 8)  # chunks of one or two samples
    picked = []
    original = numpy_spatial._s2_forward
    monkeypatch.setattr(numpy_spatial, "_s2_forward", lambda *a, **k: (picked.append(1), original(*a, **k))[1])
    b = jp.backend("numpy")
    ho, wo = _out_len(h, 3, 2, p, 1), _out_len(w_, 3, 2, p, 1)

    def forward(dtype, relu=False):
        out = np.full((n, o, ho, wo), np.nan, dtype)
        b.conv2d(x.astype(dtype), w.astype(dtype), out, (2, 2), (p, p), (1, 1), 1, ws=Workspace(),
                 bias=bias.astype(dtype) if relu else None, relu=relu)
        return out

    results = {dtype: (forward(dtype), forward(dtype, relu=True)) for dtype in (np.float64, np.float32)}
    assert len(picked) == 4
    lanes = numpy_spatial._num_threads()
    assert bool(blocked) == (gemm == "tile_conv" and numpy_spatial._gemm_lanes() == lanes)
    monkeypatch.setattr(b, "conv_kernels", None)
    reference = forward(np.float64), forward(np.float64, relu=True)
    for exact, single, want in zip(results[np.float64], results[np.float32], reference):
        np.testing.assert_allclose(exact, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
        assert np.abs(single - want).max() <= 2e-5 * np.abs(want).max()


@needs_kernels
@pytest.mark.parametrize("kernel, family", [(3, "wino"), (5, "wg")], ids=["F(2x2,3x3)", "F(2x2,5x5)"])
@pytest.mark.parametrize("c", [3, 4], ids=["below-the-depth", "from-the-depth"])
def test_winograd_runs_whole_on_avx2_from_its_depth(kernel, family, c, monkeypatch):
    """On AVX2 Winograd F(2x2, 3x3) and F(2x2, 5x5) run whole on tile_conv (their GEMMs on the
    4 x 3 blocks) from AVX2_TILE_GEMM_MIN_DEPTH input channels, below it chunk by chunk on
    np.matmul; forward and input gradient either way the pure-NumPy fallback's in float64 to
    rounding."""
    monkeypatch.setattr(kernels, "isa", 1)
    monkeypatch.setattr(numpy_spatial, "AVX2_TILE_GEMM_MIN_DEPTH", 4)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1 << 30})
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: 2)
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: count - 1)
    whole = []
    tile_conv = kernels.tile_conv
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (whole.append(a[0]), tile_conv(*a))[1])
    rng = np.random.default_rng(45)
    x, w = rng.standard_normal((3, c, 9, 11)), rng.standard_normal((c, c, kernel, kernel))
    got = _all_three(x, w, c, (1, kernel // 2, 1, 1), ws=Workspace())
    assert whole == ([family, family] if c >= 4 else [])
    monkeypatch.setattr(jp.backend("numpy"), "conv_kernels", None)
    want = _all_three(x, w, c, (1, kernel // 2, 1, 1))
    for g, w_ in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-10 * np.abs(w_).max())


def _s2_input_reference(x, geometry, n0, n1, th, tw, ks):
    """v (9, ks) of s2_input for samples [n0, n1), NaN past each position's K(p, q) x tiles: per
    tile the 5x5 patch of the padded plane at (4ty, 4tx), BT (rows d0 - d1, d1, d2 - d1) along
    its columns on rows 0, 2, 4, then along its rows, in the kernel's order of operations; a
    position's K rows: [phase 00 | phase 01 if q even | phase 10 if p even | phase 11 if both] x C."""
    c, h, w_, ph, pw = geometry[0], geometry[1], geometry[2], geometry[7], geometry[8]
    pad = np.zeros((n1 - n0, c, 4 * th + 1, 4 * tw + 1), x.dtype)
    rows, cols = min(h, 4 * th + 1 - ph), min(w_, 4 * tw + 1 - pw)
    pad[:, :, ph:ph + rows, pw:pw + cols] = x[n0:n1, :, :rows, :cols]
    patch = [[pad[:, :, i::4][:, :, :th, :][:, :, :, j::4][:, :, :, :tw] for j in range(5)] for i in range(5)]
    # the rows t0, r2, t2 (columns' BT) and the odd rows r1, r3, each split along its columns
    kinds = [[patch[0][j] - patch[2][j] for j in range(5)], patch[2], [patch[4][j] - patch[2][j] for j in range(5)],
             patch[1], patch[3]]
    split = [(z[0] - z[2], z[2], z[4] - z[2], z[1], z[3]) for z in kinds]
    segments = {}  # (p, q) -> {segment: (n, c, th, tw)}
    for p in range(3):
        for q in range(3):
            segments.setdefault((p, q), {})[0] = split[p][q]
        segments[(p, 0)][1], segments[(p, 2)][1] = split[p][3], split[p][4]
    for hh in range(2):
        for q in range(3):
            segments[(2 * hh, q)][2] = split[3 + hh][q]
        segments[(2 * hh, 0)][3], segments[(2 * hh, 2)][3] = split[3 + hh][3], split[3 + hh][4]
    v = np.full((9, ks), np.nan, x.dtype)
    for (p, q), parts in segments.items():
        k = np.concatenate([parts[seg].transpose(1, 0, 2, 3).reshape(c, -1) for seg in sorted(parts)])
        v[p * 3 + q, :k.size] = k.ravel()
    return v


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 4, 32, 32, 1, 1, 1, 3), (2, 3, 16, 16, 1, 1, 0, 2), (2, 2, 32, 32, 0, 0, 0, 2),
                                   (2, 2, 64, 64, 1, 1, 1, 2), (1, 3, 17, 19, 1, 2, 0, 1), (2, 2, 16, 32, 1, 1, 0, 2),
                                   (1, 2, 7, 6, 0, 1, 0, 1), (2, 2, 45, 48, 1, 1, 1, 2),
                                   (1, 2, 13, 16, 1, 1, 0, 1)],
                         ids=["32x32", "16x16", "32x32-unpadded", "64x64", "odd", "16x32", "small", "23x24", "7x8"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stride_2_phase_transforms_match_the_reference_bit_for_bit(shape, dtype):
    """s2_input (its shuffle builds for square planes padded by 1 in float32 on AVX-512: inputs
    of 16x16 and 32x32; else the row passes) and s2_output (rows of tiles in vectors of 8 and 4
    tiles, the rest one by one: outputs 8, 16, 24 and 32 wide, odd sizes) against
    the transforms written in NumPy in the same order of operations, bit for bit, for samples
    [n0, n1) of a batch; the slices' gaps and other samples' planes left untouched."""
    n, c, h, w_, ph, pw, n0, n1 = shape
    ho, wo = (h + 2 * ph - 3) // 2 + 1, (w_ + 2 * pw - 3) // 2 + 1
    geometry = (c, h, w_, 3, 3, 2, 2, ph, pw, 1, 1, ho, wo)
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    x = np.random.default_rng(5).standard_normal((n, c, h, w_)).astype(dtype)
    ks = 4 * c * (n1 - n0) * th * tw + 3
    v = np.full((9, ks), np.nan, dtype)
    rows = np.zeros(7 * (4 * tw + 4), dtype)
    kernels.s2_input(x, v, geometry, n, n0, n1, th, tw, ks, rows)
    np.testing.assert_array_equal(v, _s2_input_reference(x, geometry, n0, n1, th, tw, ks))
    o = c + 1
    m = np.random.default_rng(6).standard_normal((9, o * (n1 - n0) * th * tw + 3)).astype(dtype)
    out = np.random.default_rng(7).standard_normal((n, o, ho, wo)).astype(dtype)
    want = out.copy()
    # per tile AT m A: the rows' sums (m0 + m1, m1 + m2) of each of the 3 rows, then along the columns
    t = m[:, :o * (n1 - n0) * th * tw].reshape(3, 3, o, n1 - n0, th, tw).transpose(0, 1, 3, 2, 4, 5)
    s_ = [(t[p, 0] + t[p, 1], t[p, 1] + t[p, 2]) for p in range(3)]
    y = np.zeros((n1 - n0, o, 2 * th, 2 * tw), dtype)
    for i in range(2):
        for j in range(2):
            y[:, :, i::2, j::2] = s_[i][j] + s_[i + 1][j]
    want[n0:n1] = y[:, :, :ho, :wo]
    kernels.s2_output(m, out, geometry, o, n, n0, n1, th, tw, m.shape[1], rows)
    np.testing.assert_array_equal(out, want)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("case", ["s2-forward", "s2-bias-relu", "s2-norm-residual", "wino-forward", "wino-input-gradient",
                                  "s2d-input-gradient", "wg-forward", "wg-bias-relu", "wg-input-gradient"])
def test_tile_conv_is_the_chunked_kernels_in_one_call(case, lanes, dtype, monkeypatch):
    """tile_conv (a tiled conv whole in one C call, its chunks dealt over the lanes inside it)
    writes the same bits as _tile_run's chunks of kernel calls (the taps, then per chunk the input
    transform, tile_gemm or s2_gemm, the output transform and the epilogue), for each family it
    runs, set and accumulated, over chunks of one or two samples (a last one short) on one or two
    lanes."""
    family = case.split("-")[0]
    monkeypatch.setattr(numpy_spatial, "_num_threads", lambda: lanes)
    monkeypatch.setattr(numpy_spatial, "_gemm_lanes", lambda: lanes)
    for rule in ("TILE_GEMM_MIN_DEPTH", "FULL_WIDTH_TILE_GEMM_MIN_DEPTH"):
        monkeypatch.setattr(numpy_spatial, rule, 1)
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "S2_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_TILE_GEMM_MIN_DEPTH", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_TILES", 30)  # 16 tiles a sample: one a chunk
    for rule in ("S2_DATA_MIN_PLANE", "S2_DATA_MIN_CHANNELS", "S2_DATA_MIN_INPUTS"):
        monkeypatch.setattr(numpy_spatial, rule, 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_TILES", 40)  # 16 blocks a sample: two a chunk
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_TILES", 70)  # 64 tiles a sample: one a chunk
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "WINOGRAD_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 1 << 30})
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_TILES", 70)  # 64 tiles a sample: one a chunk
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "DIRECT_FAVOURED_CPUS", set())
    monkeypatch.setattr(numpy_spatial, "_algorithm", lambda op, count, *rest: count - 1)
    rng = np.random.default_rng(8)
    n, c, o = 5, 6, 7
    stride = 1 if family in ("wino", "wg") else 2
    k = 5 if family == "wg" else 3
    pad = (k - 1) // 2
    x = rng.standard_normal((n, c, 16, 16)).astype(dtype)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(k * k * c)).astype(dtype)
    side = 16 // stride
    dy = rng.standard_normal((n, o, side, side)).astype(dtype)
    epilogue = {}
    if case.endswith("bias-relu"):
        epilogue = dict(bias=rng.standard_normal(o).astype(dtype), relu=True)
    elif case == "s2-norm-residual":
        epilogue = dict(bias=rng.standard_normal(o).astype(dtype), relu=True,
                        residual=rng.standard_normal((n, o, side, side)).astype(dtype))
    b = jp.backend("numpy")

    def run():
        if case.endswith("input-gradient"):
            results = []
            for accumulate in (False, True):
                dx = np.ones((n, c, 16, 16), dtype)
                b.conv2d_backward_data(dy, w, dx, (stride, stride), (pad, pad), (1, 1), 1, accumulate=accumulate,
                                       ws=Workspace())
                results.append(dx)
            return results
        out = np.full((n, o, side, side), np.nan, dtype)
        b.conv2d(x, w, out, (stride, stride), (pad, pad), (1, 1), 1, ws=Workspace(), **epilogue)
        return [out]

    whole = []
    tile_conv = kernels.tile_conv
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (whole.append(a[0]), tile_conv(*a))[1])
    got = run()
    assert whole and set(whole) == {family}
    transforms = numpy_spatial._TileTransforms
    monkeypatch.setattr(numpy_spatial, "_TileTransforms", lambda *a, **k: transforms(*a, **{**k, "whole": None}))
    whole.clear()
    want = run()
    assert not whole
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


@needs_kernels
def test_tile_conv_refuses_what_it_does_not_compute():
    """A refused tile_conv names the argument and writes nothing: sizes, buffers that share
    memory, an epilogue with accumulate, an unknown family, F(2x2, 5x5)'s matrices missing, short,
    of another dtype or given to another family, a geometry not F(2x2, 5x5)'s."""
    n, c, h, o = 3, 4, 8, 5
    geometry = (c, h, h, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4)
    th = tw = 2
    x, w = np.ones((n, c, h, h), np.float32), np.ones((o, c, 3, 3), np.float32)
    out = np.full((n, o, 4, 4), 7, np.float32)
    p = th * tw
    vs, ms = 4 * c * p, o * p
    u, v, m = np.zeros((2, 9, o, 4 * c), np.float32), np.zeros((2, 9, vs), np.float32), np.zeros((2, 9, ms), np.float32)
    rows = np.zeros((2, 7 * (4 * tw + 4)), np.float32)
    args = ["s2", w, x, out, u, v, m, rows, geometry, o, c, n, 1, th, tw, vs, ms, False, False, 2, None, None, False,
            None]

    def refused(match, error=ValueError, **change):
        names = ["family", "w", "src", "dst", "u", "v", "m", "rows", "geometry", "n_out", "n_in", "N", "per", "th",
                 "tw", "vs", "ms", "flip", "accumulate", "lanes", "scale", "shift", "relu", "residual"]
        call = list(args)
        for name, value in change.items():
            call[names.index(name)] = value
        with pytest.raises(error, match=match):
            kernels.tile_conv(*call)
        assert (out == 7).all()

    refused("tile_conv: family: expected 'wino', 's2', 's2d' or 'wg', got 'f23'", family="f23")
    refused("s2 kernels", tw=3)
    refused(r"tile_conv: n_out, n_in, N, per, lanes must be positive, got 5, 4, 3, 0, 2", per=0)
    refused("tile_conv: n_in: expected the geometry's 4 channels, got 3", n_in=3)
    refused("tile_conv: s2: flip and accumulate are the input gradient's", accumulate=True)
    refused(r"tile_conv: vs, ms: slices of v and m overlap \(need at least 64 and 20, got 64 and 19\)", ms=ms - 1)
    refused("tile_conv: v and m: expected buffers apart", m=v)
    refused("tile_conv: src and dst: expected buffers apart", dst=x.reshape(-1)[:out.size].reshape(out.shape))
    refused("tile_conv: dst and residual: expected buffers apart", residual=out)
    refused("rows: expected at least 168 items", rows=rows.reshape(-1)[:-1])
    refused("v: expected at least", v=v[:1])
    refused("shift: expected at least 5 items", shift=np.zeros(o - 1, np.float32))
    refused("u: expected at least 1440 items of format 'f', got 1440 of 'd'", u=u.astype(np.float64))
    refused("u: expected at least 1440 items", u=u[:1])
    kernels.tile_conv(*args)
    assert not (out == 7).any()
    wino = ["wino", w, x, np.zeros((n, o, h, h), np.float32), np.zeros((2, 16, o, c), np.float32),
            np.zeros((2, 16, c * 16)), np.zeros((2, 16, o * 16)), None, (c, h, h, 3, 3, 1, 1, 1, 1, 1, 1, h, h),
            o, c, n, 1, 4, 4, c * 16, o * 16, False, True, 2, None, None, True, None]
    with pytest.raises(ValueError, match=r"tile_conv: an epilogue \(scale, shift, relu, residual\) needs accumulate off"):
        kernels.tile_conv(*wino)
    # F(2x2, 5x5) takes its matrices; the other families none
    dst = np.full((n, o, h, h), 7, np.float32)
    mats = numpy_spatial._wg_matrices(2, 5)
    wg = ["wg", np.ones((o, c, 5, 5), np.float32), x, dst, np.zeros((2, 36, o, c), np.float32),
          np.zeros((2, 36, c * 16), np.float32), np.zeros((2, 36, o * 16), np.float32), None,
          (c, h, h, 5, 5, 1, 1, 2, 2, 1, 1, h, h), o, c, n, 1, 4, 4, c * 16, o * 16, False, False, 2, None, None,
          False, None]
    for call, match in ((wg, "tile_conv: mats: expected F\\(2x2, 5x5\\)'s matrices for 'wg' and none for the other "
                             "families, got none for 'wg'"),
                        (args + [mats], "got some for 's2'"),
                        (wg + [mats[:-1]], "mats: expected at least 78 items of format 'd', got 77"),
                        (wg + [mats.astype(np.float32)], "mats: expected at least 78 items of format 'd'"),
                        (wg[:8] + [(c, h, h, 3, 3, 1, 1, 1, 1, 1, 1, h, h)] + wg[9:] + [mats], "wg kernels")):
        with pytest.raises(ValueError, match=match):
            kernels.tile_conv(*call)
        assert (dst == 7).all()
    kernels.tile_conv(*wg, mats)
    want = np.empty_like(dst)
    jp.backend("numpy").conv2d(x, np.ones((o, c, 5, 5), np.float32), want, (1, 1), (2, 2), (1, 1), 1)
    np.testing.assert_allclose(dst, want, rtol=1e-5, atol=1e-4)


@needs_kernels
def test_stride_2_phase_winograd_refuses_geometries_it_does_not_compute():
    x, v = np.zeros((1, 2, 8, 8), np.float32), np.zeros((9, 200), np.float32)
    rows = np.zeros(7 * (4 * 2 + 4), np.float32)
    ok = (2, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4)
    kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 200, rows)
    for geometry in [(2, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8),   # stride 1
                     (2, 8, 8, 5, 5, 2, 2, 2, 2, 1, 1, 4, 4),   # 5x5
                     (2, 8, 8, 3, 3, 2, 2, 2, 2, 2, 2, 4, 4),   # dilated
                     (2, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 3, 4)]:  # wrong output size
        with pytest.raises(ValueError, match="s2 kernels"):
            kernels.s2_input(x, v, geometry, 1, 0, 1, 2, 2, 200, rows)
    with pytest.raises(ValueError, match="s2 kernels"):  # wrong tile count
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 3, 200, rows)
    with pytest.raises(ValueError, match=r"s2_input: ks: slices of v 16 apart overlap \(need at least 32\)"):
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 16, rows)
    with pytest.raises(ValueError, match="v: expected at least 1632 items"):  # too small for 9 slices
        kernels.s2_input(x, v.ravel()[:8 * 200 + 4 * 2 * 4 - 1], ok, 1, 0, 1, 2, 2, 200, rows)
    # the scratch rows: the caller's, of x's dtype, large enough for a row of tiles
    with pytest.raises(ValueError, match="rows: expected at least 84 items of format 'f', got 83"):
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 200, rows[:-1])
    with pytest.raises(ValueError, match="rows: expected at least 84 items of format 'f'"):
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 200, rows.astype(np.float64))
    with pytest.raises(TypeError, match="rows: expected a contiguous writable buffer"):
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 200, None)
    with pytest.raises(TypeError):
        kernels.s2_input(x, v, ok, 1, 0, 1, 2, 2, 200)  # the rows are not optional
    out, m = np.zeros((1, 3, 4, 4), np.float32), np.zeros((9, 16), np.float32)
    kernels.s2_output(m, out, ok, 3, 1, 0, 1, 2, 2, 16, rows[:8])
    with pytest.raises(ValueError, match="rows: expected at least 8 items of format 'f', got 7"):
        kernels.s2_output(m, out, ok, 3, 1, 0, 1, 2, 2, 16, rows[:7])
    with pytest.raises(ValueError, match=r"s2_output: ks: slices of m 11 apart overlap \(need at least 12\)"):
        kernels.s2_output(m, out, ok, 3, 1, 0, 1, 2, 2, 11, rows)
    with pytest.raises(ValueError, match="s2_output: O: expected a positive channel count, got 0"):
        kernels.s2_output(m, out, ok, 0, 1, 0, 1, 2, 2, 16, rows)
    with pytest.raises(ValueError, match="s2_weights: channel counts must be positive, got 3, 0"):
        kernels.s2_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((9, 3, 8), np.float32), 3, 0)
    with pytest.raises(ValueError, match="u: expected at least 216 items"):
        kernels.s2_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((9, 3, 7), np.float32), 3, 2)


def _wino_origins(tiles, d):
    """F(2x2, 3x3)'s tile origins along an axis: 2x2 outputs d apart, tiles in groups of d."""
    return np.array([t // d * 2 * d + t % d for t in range(tiles)])


def _wino_input_reference(x, geometry, n0, n1, th, tw):
    """v[16][C * tiles of samples [n0, n1)]: B^T d B of each tile, in x's dtype with the kernel's
    order of operations (so bit for bit), from a zero-padded copy of the planes."""
    c, h, w, ph, pw, dh, dw = geometry[0], geometry[1], geometry[2], geometry[7], geometry[8], geometry[9], geometry[10]
    oy, ox = _wino_origins(th, dh), _wino_origins(tw, dw)
    pad = np.zeros((n1 - n0, c, max(h + ph, oy[-1] + 3 * dh + 1), max(w + pw, ox[-1] + 3 * dw + 1)), x.dtype)
    pad[:, :, ph:ph + h, pw:pw + w] = x[n0:n1]
    r = [pad[:, :, oy + l * dh, :] for l in range(4)]
    cols = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]
    v = []
    for t in cols:
        e = [t[..., ox + j * dw] for j in range(4)]
        v += [e[0] - e[2], e[1] + e[2], e[2] - e[1], e[1] - e[3]]
    return np.stack(v).transpose(0, 2, 1, 3, 4).reshape(16, -1)


def _wino_output_reference(m, out, geometry, o, n0, n1, th, tw, accumulate):
    """out with samples [n0, n1) (+)= A^T m A of each tile, in out's dtype in the kernel's order."""
    dh, dw, ho, wo = geometry[9:13]
    e = m[:, :o * (n1 - n0) * th * tw].reshape(16, o, n1 - n0, th, tw).transpose(0, 2, 1, 3, 4)
    s0 = [e[j] + e[4 + j] + e[8 + j] for j in range(4)]
    s1 = [e[4 + j] - e[8 + j] - e[12 + j] for j in range(4)]
    ys = [[s[0] + s[1] + s[2], s[1] - s[2] - s[3]] for s in (s0, s1)]
    oy, ox = _wino_origins(th, dh), _wino_origins(tw, dw)
    full = np.zeros((n1 - n0, o, oy[-1] + dh + 1, ox[-1] + dw + 1), out.dtype)
    for i in range(2):
        for j in range(2):
            full[:, :, (oy + i * dh)[:, None], ox + j * dw] = ys[i][j]
    want = out.copy()
    want[n0:n1] = want[n0:n1] + full[:, :, :ho, :wo] if accumulate else full[:, :, :ho, :wo]
    return want


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [
    (1, 3, 8, 8, 1, 1, 1, 1, 0, 1),        # batch 1, a row of 4 tiles: less than a vector
    (4, 5, 8, 8, 1, 1, 1, 1, 1, 4),        # 8x8 planes padded by 1: a plane's 16 tiles one AVX-512 vector
    (2, 3, 8, 8, 2, 2, 1, 1, 0, 2),        # 8x8 planes padded by 2: 10x10 outputs, the row passes
    (3, 4, 16, 16, 1, 1, 1, 1, 1, 3),      # 16x16 planes padded by 1: two rows of 8 tiles a vector
    (3, 3, 32, 32, 1, 1, 1, 1, 1, 3),      # 32x32 planes padded by 1: a row of 16 tiles a vector
    (3, 5, 7, 9, 1, 1, 1, 1, 1, 3),        # odd planes: the last row and column of tiles half out
    (3, 2, 5, 6, 2, 2, 1, 1, 1, 2),        # padding past the kernel
    (2, 3, 40, 37, 1, 1, 1, 1, 0, 2),      # 19 tiles a row: not a whole number of vectors
    (2, 4, 34, 34, 0, 0, 1, 1, 1, 2),      # unpadded, 16 tiles a row
    (2, 3, 11, 13, 2, 2, 2, 2, 0, 2),      # dilated: tiles in pairs, some past the plane
    (2, 2, 9, 38, 1, 1, 2, 2, 1, 2),       # dilated, odd padding, 18 tiles a row
    (2, 3, 10, 12, 1, 2, 1, 2, 1, 2),      # dilated along W only
    (2, 2, 14, 17, 3, 3, 3, 3, 0, 2),      # dilation 3: gathered tile by tile
    (3, 3, 32, 32, 2, 2, 2, 2, 1, 3),      # 32x32 planes dilated by 2, padded by 2: tiles in pairs, a row one vector
], ids=["batch-1", "8x8-planes", "8x8-padding-2", "16x16-planes", "32x32-planes", "odd", "padding-2", "19-tiles",
        "unpadded", "dilated", "dilated-wide", "dilated-columns", "dilation-3", "32x32-dilated"])
def test_winograd_transforms_match_the_reference_bit_for_bit(shape, dtype):
    """winograd_input / winograd_output (vectorised along a row of tiles) against the transforms
    written in NumPy in the same order of operations, bit for bit, for samples [n0, n1) of a
    batch, alone and accumulating; nothing outside the slices' used parts or those samples'
    planes is written (a vector past a row's last tile is written again or stopped at the edge)."""
    n, c, h, w_, ph, pw, dh, dw, n0, n1 = shape
    o = c + 1
    ho, wo = h + 2 * ph - 2 * dh, w_ + 2 * pw - 2 * dw
    geometry = (c, h, w_, 3, 3, 1, 1, ph, pw, dh, dw, ho, wo)
    th, tw = numpy_spatial._winograd_tiles(geometry)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((n, c, h, w_)).astype(dtype)
    tiles = (n1 - n0) * th * tw
    for ks in (c * tiles, c * tiles + 5):  # slices back to back, and with a gap
        room = np.full(16 * ks + 40, np.nan, dtype)
        kernels.winograd_input(x, room[:15 * ks + c * tiles], geometry, n, n0, n1, th, tw, ks)
        v = np.lib.stride_tricks.as_strided(room, (16, ks), (ks * room.itemsize, room.itemsize))
        np.testing.assert_array_equal(v[:, :c * tiles], _wino_input_reference(x, geometry, n0, n1, th, tw))
        assert np.isnan(v[:15, c * tiles:]).all() and np.isnan(room[15 * ks + c * tiles:]).all()
    m = rng.standard_normal((16, o * tiles + 3)).astype(dtype)
    for accumulate in (False, True):
        out = rng.standard_normal((n, o, ho, wo)).astype(dtype)
        want = _wino_output_reference(m, out, geometry, o, n0, n1, th, tw, accumulate)
        kernels.winograd_output(m, out, geometry, o, n, n0, n1, th, tw, o * tiles + 3, accumulate)
        np.testing.assert_array_equal(out, want)
    tight = m[:, :o * tiles].copy()  # slices back to back, the last one ending the buffer
    out = np.zeros((n, o, ho, wo), dtype)
    kernels.winograd_output(tight, out, geometry, o, n, n0, n1, th, tw, o * tiles, False)
    np.testing.assert_array_equal(out, _wino_output_reference(tight, np.zeros_like(out), geometry, o, n0, n1, th, tw,
                                                              False))


def _wino_grad_reference(dy, geometry, o, n0, n1, th, tw):
    """m[16][tiles of samples [n0, n1) x O, the channels innermost]: A dy A^T of each tile's 2x2
    outputs (d apart, zeros past the plane), in dy's dtype in the kernel's order of operations."""
    dh, dw, ho, wo = geometry[9:13]
    oy, ox = _wino_origins(th, dh), _wino_origins(tw, dw)
    pad = np.zeros((n1 - n0, o, oy[-1] + dh + 1, ox[-1] + dw + 1), dy.dtype)
    pad[:, :, :ho, :wo] = dy[n0:n1]
    y = [[pad[:, :, (oy + i * dh)[:, None], ox + j * dw] for j in range(2)] for i in range(2)]
    s = [(y[0][0], y[0][1]), (y[0][0] + y[1][0], y[0][1] + y[1][1]), (y[0][0] - y[1][0], y[0][1] - y[1][1]),
         (-y[1][0], -y[1][1])]
    m = []
    for a, b in s:
        m += [a, a + b, a - b, -b]
    return np.stack(m).transpose(0, 1, 3, 4, 2).reshape(16, -1)  # (16, samples, th, tw, O)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [
    (1, 1, 8, 8, 1, 1, 0, 1),      # one channel: the scalar tail only
    (3, 9, 7, 9, 1, 1, 1, 3),      # a vector of channels and a tail; odd planes, half-out tiles
    (2, 17, 6, 10, 1, 1, 0, 2),    # two vectors (float64: four) and a tail
    (2, 8, 9, 11, 2, 1, 0, 2),     # dilated rows: tiles in groups of 2
], ids=["one-channel", "vector-and-tail", "vectors-and-tail", "dilated"])
def test_winograd_grad_matches_the_reference_bit_for_bit(shape, dtype):
    """winograd_grad (vectorised along the output channels) against the transform written in
    NumPy in the same order of operations, bit for bit, for samples [n0, n1) of a batch; nothing
    past the slices' used parts is written."""
    n, o, ho, wo, dh, dw, n0, n1 = shape
    geometry = (3, ho, wo, 3, 3, 1, 1, dh, dw, dh, dw, ho, wo)
    th, tw = numpy_spatial._winograd_tiles(geometry)
    dy = np.random.default_rng(14).standard_normal((n, o, ho, wo)).astype(dtype)
    used = o * (n1 - n0) * th * tw
    ks = used + 3
    room = np.full(16 * ks, np.nan, dtype)
    kernels.winograd_grad(room, dy, geometry, o, n, n0, n1, th, tw, ks)
    m = room.reshape(16, ks)
    np.testing.assert_array_equal(m[:, :used], _wino_grad_reference(dy, geometry, o, n0, n1, th, tw))
    assert np.isnan(m[:, used:]).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("na, nb", [(1, 1), (4, 16), (5, 17), (3, 70), (130, 33), (64, 128)],
                         ids=["1x1", "one-block", "blocks-and-a-pair", "partial-rows", "partial-both", "4KiB-slices"])
@pytest.mark.parametrize("flip", [False, True], ids=["forward", "flipped"])
def test_winograd_weights_match_the_reference(na, nb, flip, dtype):
    """winograd_weights (blocks of pairs transformed side by side) against G g G^T in float64, and
    bit for bit against the pair-by-pair transform in the kernel's order of operations; channel
    counts not multiples of the blocks, slices a multiple of 4 KiB apart; nothing past u written."""
    rng = np.random.default_rng(17)
    w = rng.standard_normal(((nb, na) if flip else (na, nb)) + (3, 3)).astype(dtype)
    room = np.full(16 * na * nb + 7, np.nan, dtype)
    kernels.winograd_weights(w, room, na, nb, flip)
    u = room[:16 * na * nb].reshape(4, 4, na, nb)
    assert np.isnan(room[16 * na * nb:]).all()
    k = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] if flip else w  # (na, nb, 3, 3)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    exact = np.einsum("ip,abpq,jq->ijab", g, k.astype(np.float64), g)
    np.testing.assert_allclose(u, exact, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)
    half = dtype(0.5)

    def along(e):  # G applied to the 3 values e[0..2] in the kernel's order
        return [e[0], half * (e[0] + e[1] + e[2]), half * (e[0] - e[1] + e[2]), e[2]]

    t = along([k[:, :, i, :] for i in range(3)])  # 4 rows of (na, nb, 3)
    want = np.stack([np.stack(along([t[i][..., j] for j in range(3)])) for i in range(4)])
    np.testing.assert_array_equal(u, want)


@needs_kernels
def test_winograd_transforms_refuse_arguments_that_do_not_fit():
    """F(2x2, 3x3)'s entry points check their arguments as the stride-2 ones do (one parser)."""
    x, v = np.zeros((1, 2, 8, 8), np.float32), np.zeros((16, 32), np.float32)
    ok = (2, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8)
    kernels.winograd_input(x, v, ok, 1, 0, 1, 4, 4, 32)
    with pytest.raises(ValueError, match="winograd kernels"):
        kernels.winograd_input(x, v, (2, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4), 1, 0, 1, 2, 2, 32)
    with pytest.raises(ValueError, match=r"winograd_input: ks: slices of v 31 apart overlap \(need at least 32\)"):
        kernels.winograd_input(x, v, ok, 1, 0, 1, 4, 4, 31)
    with pytest.raises(ValueError, match="v: expected at least 512 items of format 'f', got 511"):
        kernels.winograd_input(x, v.ravel()[:-1], ok, 1, 0, 1, 4, 4, 32)
    with pytest.raises(TypeError):
        kernels.winograd_input(x, v, ok, 1, 0, 1, 4, 4, 32, np.zeros(100, np.float32))  # takes no rows
    out, m = np.zeros((1, 3, 8, 8), np.float32), np.zeros((16, 48), np.float32)
    kernels.winograd_output(m, out, ok, 3, 1, 0, 1, 4, 4, 48, True)
    with pytest.raises(ValueError, match="winograd_output: O: expected a positive channel count, got 0"):
        kernels.winograd_output(m, out, ok, 0, 1, 0, 1, 4, 4, 48, False)
    with pytest.raises(ValueError, match=r"samples: range \[0, 2\)"):
        kernels.winograd_output(m, out, ok, 3, 1, 0, 2, 4, 4, 48, False)
    with pytest.raises(ValueError, match="m: expected at least 768 items of format 'd', got 768 of 'f'"):  # out's dtype
        kernels.winograd_output(m, out.astype(np.float64), ok, 3, 1, 0, 1, 4, 4, 48, False)
    with pytest.raises(ValueError, match="winograd_weights: channel counts must be positive, got 0, 2"):
        kernels.winograd_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((16, 3, 2), np.float32), 0, 2, False)
    with pytest.raises(TypeError):
        kernels.winograd_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((16, 3, 2), np.float32), 3, 2)  # flip


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 5, 16, 16, 7, 1), (1, 6, 13, 11, 5, 1), (2, 3, 10, 9, 4, 0), (2, 4, 7, 8, 3, 2),
                                   (1, 2, 3, 3, 2, 1), (3, 3, 9, 32, 2, 1)],
                         ids=["even", "batch-1-odd-sizes", "no-padding", "padding-2", "one-output", "wide-rows"])
@pytest.mark.parametrize("tiles", [1, numpy_spatial.S2_FILTER_TILES], ids=["a-sample-a-chunk", "default-chunks"])
@pytest.mark.parametrize("isa,blocks", [(2, True), (1, True), (1, False)], ids=["tile-gemm", "avx2-tile-gemm", "matmul"])
def test_stride_2_phase_weight_gradient_matches_the_reference(shape, tiles, isa, blocks, monkeypatch):
    """The 3x3 stride-2 weight gradient as the adjoint of F(2x2, 2x2) on the phases: in float64 to
    rounding, in float32 within 2e-6 of the largest tap (its transforms only add), alone and
    accumulating, over one or many chunks per lane, its GEMMs on tile_gemm (AVX-512 and AVX2
    builds) or np.matmul; dy's tiles past odd planes read as zeros."""
    n, c, h, w_, o, p = shape
    rng = np.random.default_rng(23)
    x, w = rng.standard_normal((n, c, h, w_)), rng.standard_normal((o, c, 3, 3))
    monkeypatch.setattr(kernels, "isa", isa)
    monkeypatch.setattr(numpy_spatial, "S2_FILTER_TILE_GEMM_ISAS", (isa,) if blocks else ())
    gemms = []
    for name in ("s2_filter_gemm", "s2_grad"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _name=name, _run=original: (gemms.append(_name), _run(*a))[1])
    monkeypatch.setattr(numpy_spatial, "S2_FILTER_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_FILTER_NARROW_INPUTS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_FILTER_TILES", tiles)
    _weight_gradient_path_matches_the_fallback(monkeypatch, "_s2_backward_filter", x, w, (2, p, 1, 1))
    assert gemms and set(gemms) == {"s2_filter_gemm" if blocks else "s2_grad"}


@needs_kernels
def test_stride_2_phase_weight_gradient_only_for_wide_undilated_3x3_on_avx2_and_avx512(monkeypatch):
    """Measured on Zen 4 with 64 input channels (the bench's 64->128 layer), with the AVX-512 and
    the AVX2 build, and on Zen 5 with 32 and 16 on AVX-512 (GEMMs on tile_gemm): the ResNet's 32-
    and 16-channel strided layers run it there (16 channels up to a 16x16 output plane: the direct
    kernel won larger ones); on AVX2 (tile_gemm too, Zen 4 held to AVX2) from 32 channels, the
    16-channel one keeps the direct kernel; the baseline build the GEMM. w shapes (O, C, 3, 3),
    output planes (Ho, Wo)."""
    applies = numpy_spatial._s2_filter
    backend = jp.backend("numpy")
    monkeypatch.setattr(kernels, "isa", 2)
    s2, one, pad, plane, wide = (2, 2), (1, 1), (1, 1), (16, 16), (24, 24)
    assert applies(backend, (128, 64, 3, 3), s2, pad, one, 1, plane)
    assert applies(backend, (64, 128, 3, 3), s2, (0, 0), one, 1, plane)
    assert applies(backend, (64, 32, 3, 3), s2, pad, one, 1, wide) and applies(backend, (32, 16, 3, 3), s2, pad, one, 1, plane)
    assert not applies(backend, (32, 16, 3, 3), s2, pad, one, 1, wide) and not applies(backend, (32, 8, 3, 3), s2, pad, one, 1, plane)
    assert not applies(backend, (128, 64, 3, 3), one, pad, one, 1, plane)
    assert not applies(backend, (128, 64, 3, 3), s2, pad, s2, 1, plane)
    assert not applies(backend, (128, 32, 3, 3), s2, pad, one, 2, plane)
    assert not applies(backend, (128, 64, 5, 5), s2, pad, one, 1, plane)
    assert not applies(backend, (128, 64, 3, 3), (3, 3), pad, one, 1, plane)
    monkeypatch.setattr(kernels, "isa", 1)
    assert applies(backend, (128, 64, 3, 3), s2, pad, one, 1, plane)
    assert applies(backend, (64, 32, 3, 3), s2, pad, one, 1, plane) and applies(backend, (64, 32, 3, 3), s2, pad, one, 1, (8, 8))
    assert not applies(backend, (32, 16, 3, 3), s2, pad, one, 1, plane)
    monkeypatch.setattr(kernels, "isa", 0)
    assert not applies(backend, (128, 64, 3, 3), s2, pad, one, 1, plane)


@needs_kernels
def test_stride_2_phase_weight_gradient_kernel_refuses_what_it_does_not_compute():
    dy, m = np.zeros((1, 2, 4, 4), np.float32), np.zeros((9, 20), np.float32)
    ok = (3, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 4, 4)
    kernels.s2_grad(m, dy, ok, 2, 1, 0, 1, 2, 2, 20)
    with pytest.raises(ValueError, match="s2 kernels"):  # stride 1
        kernels.s2_grad(m, dy, (3, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4), 2, 1, 0, 1, 2, 2, 20)
    with pytest.raises(ValueError, match="s2 kernels"):  # wrong tile count
        kernels.s2_grad(m, dy, ok, 2, 1, 0, 1, 2, 3, 20)
    with pytest.raises(ValueError, match=r"s2_grad: ks: slices of m 4 apart overlap \(need at least 8\)"):
        kernels.s2_grad(m, dy, ok, 2, 1, 0, 1, 2, 2, 4)
    with pytest.raises(ValueError, match="dy: expected at least 32 items"):
        kernels.s2_grad(m, dy.ravel()[:31], ok, 2, 1, 0, 1, 2, 2, 20)
    with pytest.raises(ValueError, match="m: expected at least 168 items"):
        kernels.s2_grad(m.ravel()[:167], dy, ok, 2, 1, 0, 1, 2, 2, 20)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 3, 4, 4, 1, 3), (1, 2, 5, 7, 0, 1), (3, 32, 6, 4, 1, 3), (2, 16, 5, 4, 0, 2)],
                         ids=["even", "odd-rows-and-columns", "runs-of-16-channels", "runs-of-16-odd-rows"])
def test_s2_grad_t_matches_a_float64_reference(shape, dtype):
    """s2_grad_t: dy's 2x2 tiles as A dY A^T (A's rows (1, 0), (1, 1), (0, 1)), tiles of samples
    [n0, n1) in rows of O channels, slices ks apart; outputs past Ho x Wo read as zeros, the gap
    after each slice stays as it was. Channels in runs of 16 with even Ho and Wo take the AVX-512
    build's gathers (float32), bit for bit the sums written in NumPy in the kernel's order."""
    n, o, ho, wo, n0, n1 = shape
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    h, w_ = 2 * ho, 2 * wo  # 3x3, stride 2, padding 1: Ho x Wo outputs
    rng = np.random.default_rng(36)
    dy = rng.standard_normal((n, o, ho, wo))
    grid = np.zeros((n, o, 2 * th, 2 * tw))
    grid[:, :, :ho, :wo] = dy
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tiles = grid.reshape(n, o, th, 2, tw, 2)[n0:n1]
    want = np.einsum("pi,noyixj,qj->pqnyxo", a, tiles, a).reshape(9, (n1 - n0) * th * tw, o)
    ks = want[0].size + 3
    m = np.full((9, ks), np.nan, dtype)
    kernels.s2_grad_t(m, dy.astype(dtype), (o, h, w_, 3, 3, 2, 2, 1, 1, 1, 1, ho, wo), o, n, n0, n1, th, tw, ks)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(m[:, :want[0].size].reshape(want.shape), want, rtol=tol, atol=tol)
    assert np.isnan(m[:, want[0].size:]).all()
    t = grid.astype(dtype).reshape(n, o, th, 2, tw, 2)[n0:n1].transpose(3, 5, 0, 2, 4, 1)  # (i, j, n, ty, tx, o)
    s_ = [(t[0, 0], t[0, 1]), (t[0, 0] + t[1, 0], t[0, 1] + t[1, 1]), (t[1, 0], t[1, 1])]
    exact = np.stack([v for p in range(3) for v in (s_[p][0], s_[p][0] + s_[p][1], s_[p][1])]).reshape(9, -1)
    np.testing.assert_array_equal(m[:, :want[0].size], exact)
    with pytest.raises(ValueError, match=r"s2_grad_t: ks: slices of m"):
        kernels.s2_grad_t(m, dy.astype(dtype), (o, h, w_, 3, 3, 2, 2, 1, 1, 1, 1, ho, wo), o, n, n0, n1, th, tw, 4)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TILE_GEMM_CASES, ids=[str(c) for c in TILE_GEMM_CASES])
def test_tile_gemm_accumulates_against_a_float64_reference(case, dtype):
    """tile_gemm(..., accumulate=True) adds u[k] @ v[k] into m (the weight gradient's sums over
    chunks), against einsum in float64; m's gaps stay as they were."""
    positions, o, c, p = case
    rng = np.random.default_rng(37)
    u, v, m0 = rng.standard_normal((positions, o, c)), rng.standard_normal((positions, c, p)), \
        rng.standard_normal((positions, o, p))
    want = m0 + np.einsum("koc,kcp->kop", u, v)
    vs, ms = c * p + 5, o * p + 7
    vbuf = np.zeros((positions, vs), dtype)
    vbuf[:, :c * p] = v.reshape(positions, -1)
    m = np.full((positions, ms), np.nan, dtype)
    m[:, :o * p] = m0.reshape(positions, -1)
    kernels.tile_gemm(u.astype(dtype), vbuf, m, positions, o, c, p, vs, ms, True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(m[:, :o * p].reshape(positions, o, p), want, rtol=tol,
                               atol=tol * np.abs(want).max())
    assert np.isnan(m[:, o * p:]).all()


@needs_kernels
def test_stride_2_phase_weight_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    monkeypatch.setattr(numpy_spatial, "S2_FILTER_MIN_CHANNELS", {1: 1, 2: 1})
    monkeypatch.setattr(numpy_spatial, "S2_FILTER_NARROW_INPUTS", 1)
    _steady_steps_allocate_nothing(monkeypatch, "_s2_backward_filter", [L.Conv2d(16, 3, padding=1), L.ReLU(),
                                   L.Conv2d(8, 3, stride=2, padding=1)], (8, 9, 9), (8, 5, 5), isa=2)


@needs_kernels
def test_stride_2_phase_winograd_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    _steady_steps_allocate_nothing(monkeypatch, "_s2_forward", [L.Conv2d(16, 3, stride=2, padding=1), L.ReLU()],
                                   (64, 8, 8), (16, 4, 4))


def _s2_input_gradient_reference(dy, w, in_hw, p):
    """float64 dx of a 3x3 stride-2 conv: each tap's dy scattered back onto the padded plane."""
    n, o, ho, wo = dy.shape
    h, w_ = in_hw
    padded = np.zeros((n, w.shape[1], h + 2 * p + 2, w_ + 2 * p + 2))
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2] += np.einsum("noyx,oc->ncyx", dy, w[:, :, i, j])
    return padded[:, :, p:p + h, p:p + w_]


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 5, 16, 16, 7, 1), (2, 6, 13, 11, 5, 1), (2, 3, 10, 9, 4, 0), (2, 4, 7, 8, 3, 2),
                                   (1, 2, 3, 3, 2, 1), (3, 4, 9, 33, 5, 3), (2, 2, 6, 71, 3, 0), (1, 3, 4, 4, 2, 0)],
                         ids=["even", "odd-sizes", "no-padding", "padding-2", "one-output", "8-block-run-and-rest",
                              "two-runs-and-rest", "one-block"])
@pytest.mark.parametrize("gemm", ["tile_gemm", "matmul"])
def test_stride_2_input_gradient_matches_the_reference(shape, gemm, monkeypatch):
    """The 3x3 stride-2 input gradient as F(2x2, 2x2) on dx's phases (_s2_backward_data): in
    float64 to rounding, in float32 within 2e-6 of the largest value (its transforms only add),
    set and accumulated; blocks past the plane's edges dropped, dy's values outside it read as
    zeros, both phase orders (even and odd padding), rows of 8+ blocks on the transform's vector
    runs with the rest one by one; chunks of one or two samples, GEMMs on tile_gemm (columns
    rounded up to whole vectors, all of it in one tile_conv call) or np.matmul."""
    n, c, h, w_, o, p = shape
    rng = np.random.default_rng(29)
    ho, wo = _out_len(h, 3, 2, p, 1), _out_len(w_, 3, 2, p, 1)
    dy, w = rng.standard_normal((n, o, ho, wo)), rng.standard_normal((o, c, 3, 3))
    want = _s2_input_gradient_reference(dy, w, (h, w_), p)
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_INPUTS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_TILES", -(-h // 4) * -(-w_ // 4) * 2 - 1)  # one sample a chunk
    monkeypatch.setattr(numpy_spatial, "TILE_GEMM_MIN_DEPTH", 1 if gemm == "tile_gemm" else 1 << 30)
    monkeypatch.setattr(numpy_spatial, "FULL_WIDTH_TILE_GEMM_MIN_DEPTH", 1 if gemm == "tile_gemm" else 1 << 30)
    blocked, picked = [], []
    tile_conv, original = kernels.tile_conv, numpy_spatial._s2_backward_data
    monkeypatch.setattr(kernels, "tile_conv", lambda *a: (blocked.append(a[0]), tile_conv(*a))[1])
    monkeypatch.setattr(numpy_spatial, "_s2_backward_data", lambda *a, **k: (picked.append(1), original(*a, **k))[1])
    b = jp.backend("numpy")
    base = rng.standard_normal((n, c, h, w_))
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 2e-6)):
        for accumulate in (False, True):
            dx = base.astype(dtype) if accumulate else np.full((n, c, h, w_), np.nan, dtype)
            b.conv2d_backward_data(dy.astype(dtype), w.astype(dtype), dx, (2, 2), (p, p), (1, 1), 1,
                                   accumulate=accumulate, ws=Workspace())
            expected = want + base if accumulate else want
            assert np.abs(dx - expected).max() <= tolerance * np.abs(expected).max()
    assert len(picked) == 4
    lanes = numpy_spatial._num_threads()
    assert bool(blocked) == (gemm == "tile_gemm" and numpy_spatial._gemm_lanes() == lanes)


@needs_kernels
def test_stride_2_input_gradient_only_for_wide_undilated_3x3_on_avx512(monkeypatch):
    """F(2x2, 2x2) on dx's phases: 3x3, stride 2, no dilation or groups, S2_DATA_MIN_CHANNELS
    output and S2_DATA_MIN_INPUTS input channels, from a 16x16 dy plane (any with
    S2_DATA_SMALL_PLANE_MIN_INPUTS input channels, or 8x8 from a 16x16 dx padded by 1: the
    shuffle kernels' plane), AVX-512 only (measured with cold caches: docs/numpy.md); the ResNet's
    16 -> 32 layer (dy 16x16) and its 32 -> 64 one (dy 8x8) take it."""
    backend = jp.backend("numpy")

    def plan(c, o, k=3, s=2, dilation=1, groups=1, padding=1, side=16):
        return numpy_spatial._ConvPlan((2, c, 2 * side, 2 * side), (o, c // groups, k, k), (side, side), (s, s),
                                       (padding, padding), (dilation, dilation), groups)

    monkeypatch.setattr(kernels, "isa", 2)
    applies = numpy_spatial._s2_data
    assert applies(backend, plan(64, 128)) and applies(backend, plan(32, 64)) and applies(backend, plan(64, 64, padding=0))
    assert applies(backend, plan(16, 32)) and applies(backend, plan(32, 32)) and applies(backend, plan(128, 256, side=8))
    assert applies(backend, plan(32, 64, side=8)) and applies(backend, plan(64, 128, side=8))
    assert not applies(backend, plan(32, 64, side=8, padding=0)) and not applies(backend, plan(32, 64, side=4))
    assert not applies(backend, plan(64, 128, side=8, padding=2)) and not applies(backend, plan(8, 64, side=8))
    assert not applies(backend, plan(8, 32)) and not applies(backend, plan(64, 16))
    assert not applies(backend, plan(64, 128, k=5))
    assert not applies(backend, plan(64, 128, s=1)) and not applies(backend, plan(64, 128, dilation=2))
    assert not applies(backend, plan(64, 128, groups=2))
    for isa in (0, 1):
        monkeypatch.setattr(kernels, "isa", isa)
        assert not applies(backend, plan(64, 128))


def _s2d_shape(shape):
    """(geometry, th, tw) of the s2d kernels for (n, O, Ho, Wo, ph, pw, H, W, ...): dy (O, Ho, Wo)
    in, dx (., H, W) out."""
    o, hy, wy, ph, pw, h, w_ = shape[1:8]
    assert (h + 2 * ph - 3) // 2 + 1 == hy and (w_ + 2 * pw - 3) // 2 + 1 == wy
    return (o, hy, wy, 3, 3, 2, 2, ph, pw, 1, 1, h, w_), (h + 3) // 4, (w_ + 3) // 4


def _s2d_input_reference(dy, geometry, n0, n1, th, tw, ks):
    """v (25, ks) of s2d_input for samples [n0, n1): per block dy's 3x3 patch from (2ty + y0, 2tx +
    x0) (zeros outside dy), the transform along the columns (rows t0 = r0 - r1, r1, t2 = r2 - r1
    and tap 1's phase r0, r1 or r1, r2), then along the rows, in the kernel's order of operations;
    each channel's slice row padded with zeros to whole 16-lane vectors, NaN past O of them."""
    o, hy, wy, ph, pw = geometry[0], geometry[1], geometry[2], geometry[7], geometry[8]
    y0, x0 = (ph + 1) // 2 - 1, (pw + 1) // 2 - 1
    pad = np.zeros((n1 - n0, o, 2 * th + 1 - min(y0, 0) + hy, 2 * tw + 1 - min(x0, 0) + wy), dy.dtype)
    pad[:, :, max(-y0, 0):max(-y0, 0) + hy, max(-x0, 0):max(-x0, 0) + wy] = dy[n0:n1]
    pad = pad[:, :, max(y0, 0):, max(x0, 0):]
    r = [[pad[:, :, k:k + 2 * th:2, kk:kk + 2 * tw:2] for kk in range(3)] for k in range(3)]
    odd_h, odd_w = ph % 2, pw % 2
    rows = [[r[0][kk] - r[1][kk] for kk in range(3)], r[1], [r[2][kk] - r[1][kk] for kk in range(3)],
            r[0] if odd_h else r[1], r[1] if odd_h else r[2]]
    p = (n1 - n0) * th * tw
    np_ = -(-p // 16) * 16
    v = np.full((25, ks), np.nan, dy.dtype)
    for i, (a, b, c) in enumerate(rows):
        for j, d in enumerate((a - b, b, c - b, a if odd_w else b, b if odd_w else c)):
            slab = np.zeros((o, np_), dy.dtype)
            slab[:, :p] = d.transpose(1, 0, 2, 3).reshape(o, p)
            v[i * 5 + j, :o * np_] = slab.ravel()
    return v


def _s2d_output_reference(m, dx, geometry, n0, n1, th, tw, ks, accumulate):
    """dx (+)= s2d_output's back transform of m for samples [n0, n1) in the kernel's order of
    operations: per block the 5x5 products along the columns then the rows (each axis: P0 + P1,
    P1 + P2 and the tap-1 phase's P3, P4, that phase first where the padding is odd)."""
    c, (h, w_), ph, pw = dx.shape[1], dx.shape[2:], geometry[7], geometry[8]
    p = (n1 - n0) * th * tw
    np_ = -(-p // 16) * 16
    prods = [m[pos, :c * np_].reshape(c, np_)[:, :p].reshape(c, n1 - n0, th, tw).transpose(1, 0, 2, 3)
             for pos in range(25)]

    def axis(q, odd):
        e0, e1 = q[0] + q[1], q[1] + q[2]
        return [q[3], e0, q[4], e1] if odd else [e0, q[3], e1, q[4]]

    cols = [axis([prods[i * 5 + j] for i in range(5)], ph % 2) for j in range(5)]  # cols[j][i]
    y = np.zeros((n1 - n0, c, 4 * th, 4 * tw), dx.dtype)
    for i in range(4):
        for j, value in enumerate(axis([cols[jj][i] for jj in range(5)], pw % 2)):
            y[:, :, i::4, j::4] = value
    out = dx.copy()
    out[n0:n1] = out[n0:n1] + y[:, :, :h, :w_] if accumulate else y[:, :, :h, :w_]
    return out


@needs_kernels
@pytest.mark.parametrize("shape", [(3, 4, 16, 16, 1, 1, 32, 32, 3, 1, 3), (2, 3, 32, 32, 1, 1, 64, 64, 2, 0, 2),
                                   (2, 2, 16, 16, 1, 1, 31, 31, 2, 0, 2), (2, 3, 16, 16, 0, 0, 33, 33, 2, 1, 2),
                                   (2, 2, 8, 8, 1, 1, 16, 16, 3, 0, 2), (1, 2, 11, 7, 2, 1, 19, 13, 3, 0, 1),
                                   (2, 2, 16, 32, 1, 1, 32, 64, 2, 0, 2)],
                         ids=["16x16", "32x32", "odd-dx", "unpadded", "8x8", "odd-padding", "16x32"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stride_2_input_gradient_transforms_match_the_reference_bit_for_bit(shape, dtype):
    """s2d_input and s2d_output (their shuffle builds for square 16x16 and 32x32 dy planes with dx
    twice that, padded by 1, in float32 on AVX-512; else the row passes) against the transforms
    written in NumPy in the same order of operations, bit for bit, for samples [n0, n1) of a
    batch, set and accumulated; the slices' gaps and other samples' planes left untouched."""
    n, o, c, n0, n1 = shape[0], shape[1], shape[8], shape[9], shape[10]
    geometry, th, tw = _s2d_shape(shape)
    rng = np.random.default_rng(9)
    dy = rng.standard_normal((n, o, shape[2], shape[3])).astype(dtype)
    p = (n1 - n0) * th * tw
    ks = max(o, c) * -(-p // 16) * 16 + 5
    rows = np.zeros(16 * tw + 16, dtype)
    v = np.full((25, ks), np.nan, dtype)
    kernels.s2d_input(dy, v, geometry, n, n0, n1, th, tw, ks, rows)
    np.testing.assert_array_equal(v, _s2d_input_reference(dy, geometry, n0, n1, th, tw, ks))
    m = rng.standard_normal((25, ks)).astype(dtype)
    for accumulate in (False, True):
        dx = rng.standard_normal((n, c, shape[6], shape[7])).astype(dtype)
        want = _s2d_output_reference(m, dx, geometry, n0, n1, th, tw, ks, accumulate)
        kernels.s2d_output(m, dx, geometry, c, n, n0, n1, th, tw, ks, accumulate, rows)
        np.testing.assert_array_equal(dx, want)


@needs_kernels
def test_stride_2_input_gradient_kernels_refuse_what_they_do_not_compute():
    # dx 8x8 from dy 4x4 (padding 1): 2x2 blocks, 4 tiles, 16 columns a channel
    dy, dx = np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 2, 8, 8), np.float32)
    ok = (3, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1, 8, 8)
    v, m, rows = np.zeros((25, 48), np.float32), np.zeros((25, 32), np.float32), np.zeros(48, np.float32)
    kernels.s2d_input(dy, v, ok, 1, 0, 1, 2, 2, 48, rows)
    kernels.s2d_output(m, dx, ok, 2, 1, 0, 1, 2, 2, 32, False, rows)
    kernels.s2d_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((25, 2, 3), np.float32), 3, 2)
    for geometry in [(3, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 8, 8), (3, 4, 4, 3, 3, 2, 2, 1, 1, 2, 2, 8, 8),
                     (3, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 8, 8), (3, 4, 4, 5, 5, 2, 2, 1, 1, 1, 1, 8, 8)]:
        with pytest.raises(ValueError, match="s2d kernels"):
            kernels.s2d_input(dy, v, geometry, 1, 0, 1, 2, 2, 48, rows)
    with pytest.raises(ValueError, match="s2d kernels"):  # wrong tile count
        kernels.s2d_input(dy, v, ok, 1, 0, 1, 2, 3, 48, rows)
    with pytest.raises(ValueError, match=r"s2d_input: ks: slices of v 47 apart overlap \(need at least 48\)"):
        kernels.s2d_input(dy, v, ok, 1, 0, 1, 2, 2, 47, rows)
    with pytest.raises(ValueError, match="v: expected at least 1200 items"):
        kernels.s2d_input(dy, v.ravel()[:1199], ok, 1, 0, 1, 2, 2, 48, rows)
    with pytest.raises(ValueError, match="rows: expected at least 48 items"):
        kernels.s2d_input(dy, v, ok, 1, 0, 1, 2, 2, 48, rows[:-1])
    with pytest.raises(ValueError, match=r"s2d_output: ks: slices of m 31 apart overlap \(need at least 32\)"):
        kernels.s2d_output(m, dx, ok, 2, 1, 0, 1, 2, 2, 31, False, rows)
    with pytest.raises(ValueError, match="out: expected at least 128 items"):
        kernels.s2d_output(m, dx.ravel()[:127], ok, 2, 1, 0, 1, 2, 2, 32, False, rows)
    with pytest.raises(ValueError, match="s2d_output: O: expected a positive channel count, got 0"):
        kernels.s2d_output(m, dx, ok, 0, 1, 0, 1, 2, 2, 32, False, rows)
    with pytest.raises(ValueError, match="s2d_weights: channel counts must be positive, got 3, 0"):
        kernels.s2d_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((25, 2, 3), np.float32), 3, 0)
    with pytest.raises(ValueError, match="u: expected at least 150 items"):
        kernels.s2d_weights(np.zeros((3, 2, 3, 3), np.float32), np.zeros((25, 2, 3), np.float32).ravel()[:149], 3, 2)


@needs_kernels
def test_stride_2_input_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_CHANNELS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_INPUTS", 1)
    monkeypatch.setattr(numpy_spatial, "S2_DATA_MIN_PLANE", 1)
    _steady_steps_allocate_nothing(monkeypatch, "_s2_backward_data", [L.Conv2d(16, 3, padding=1), L.ReLU(),
                                   L.Conv2d(8, 3, stride=2, padding=1)], (8, 9, 9), (8, 5, 5), isa=2)


#: $JUICEPY_CPU_ISA's values, by kernels.isa
ISAS = ("baseline", "avx2", "avx512")
#: the tests above that check each kernel family (grid, direct, depthwise, Winograd, F(2x2, 5x5),
#: stride-2 phases, im2col/col2im) against float64 references, run again under each other ISA
#: this CPU has: the process picks the widest, so the narrower builds would go untested
ISA_CHECKS = ("isa_follows or float32_c_kernels or each_algorithm or mxm_matches or wg_input_matches "
              "or stride_2_phase_winograd_matches or stride_2_phase_transforms_match "
              "or stride_2_input_gradient_transforms "
              "or direct_weight_gradient or pointwise_kernel or winograd_weight_gradient_matches "
              "or winograd_transforms_match or tile_gemm_matches or winograd_on_tile_gemm "
              "or stride_2_phase_weight_gradient_matches or s2_grad_t_matches or s2_gemm_matches "
              "or stride_2_input_gradient_matches or depthwise_grid_with_each_epilogue or depthwise_grid_filter "
              "or s2_filter_gemm_matches or depthwise_phase_data or depthwise_grid_with_flipped_taps "
              "or wg_filter_is_the_chunked or tile_conv_is_the_chunked or runs_whole_on_avx2")


def _with_isa(value, *args):
    env = dict(os.environ, JUICEPY_CPU_ISA=value)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))


@needs_kernels
def test_isa_follows_the_environment():
    value = os.environ.get("JUICEPY_CPU_ISA")
    assert kernels.isa == (ISAS.index(value) if value else kernels.cpu_isa) <= kernels.cpu_isa


@needs_kernels
@pytest.mark.parametrize("isa", [0, 1, 2], ids=ISAS)
def test_each_isa_the_cpu_runs_matches_the_references(isa):
    if isa > kernels.cpu_isa or isa == kernels.isa:
        pytest.skip("this CPU lacks that ISA" if isa > kernels.cpu_isa else "this process runs that ISA's builds")
    run = _with_isa(ISAS[isa], "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", ISA_CHECKS)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-2000:]


@needs_kernels
def test_an_unknown_or_too_wide_isa_is_a_clear_error():
    """Not an ImportError: the backend would take it for "not built" and quietly run pure NumPy."""
    allowed = list(reversed(ISAS[:kernels.cpu_isa + 1]))
    for value in ["avx10", "AVX2"] + ([ISAS[kernels.cpu_isa + 1]] if kernels.cpu_isa < 2 else []):
        run = _with_isa(value, "-c", "import juicepy as jp; jp.backend('numpy')")
        assert run.returncode != 0
        assert f"ValueError: JUICEPY_CPU_ISA must be one of {allowed}" in run.stderr, run.stderr[-2000:]
        assert f"got '{value}'" in run.stderr, run.stderr[-2000:]


def _wg_grad_reference(dy, at, o, n0, n1, th, tw):
    """(36, tiles of samples [n0, n1), O): AT^T dY AT of every 2x2 tile of dy in float64, outputs
    past Ho x Wo as zeros."""
    n, _, ho, wo = dy.shape
    grid = np.zeros((n, o, 2 * th, 2 * tw))
    grid[:, :, :ho, :wo] = dy
    tiles = grid.reshape(n, o, th, 2, tw, 2)[n0:n1]
    return np.einsum("ip,noyixj,jq->pqnyxo", at, tiles, at).reshape(36, (n1 - n0) * th * tw, o)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 32, 16, 16, 2, 0, 2), (3, 13, 7, 9, 2, 1, 3), (1, 35, 5, 6, 0, 0, 1),
                                   (2, 17, 1, 1, 2, 1, 2)],
                         ids=["whole-vectors", "odd-plane-channels-past-the-vector", "padding-0", "one-pixel"])
def test_wg_grad_matches_a_float64_reference(shape, dtype):
    """wg_grad (F(2x2, 5x5)'s weight gradient: dy's 2x2 tiles through AT^T (.) AT, tile-major,
    vectorised along the output channels) against einsum in float64: odd planes (the last tiles
    half outside, read as zeros), channel counts not a multiple of the vector, a chunk of samples
    from n0 > 0; the gap after each slice stays as it was; bad arguments refused."""
    n, o, ho, wo, p, n0, n1 = shape
    h, w_ = ho + 4 - 2 * p, wo + 4 - 2 * p  # the forward's input plane for 5x5 taps, padding p
    geometry = (3, h, w_, 5, 5, 1, 1, p, p, 1, 1, ho, wo)
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    mats = numpy_spatial._wg_matrices(2, 5, numpy_spatial.WG_FILTER_POINTS)
    at = mats[:12].reshape(2, 6)
    dy = np.random.default_rng(41).standard_normal((n, o, ho, wo))
    want = _wg_grad_reference(dy, at, o, n0, n1, th, tw)
    used = want[0].size
    ks = used + 5
    m = np.full((36, ks), np.nan, dtype)
    kernels.wg_grad(m, dy.astype(dtype), geometry, o, n, n0, n1, th, tw, ks, 2, mats)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(m[:, :used].reshape(want.shape), want, rtol=tol, atol=tol * np.abs(want).max())
    assert np.isnan(m[:, used:]).all()
    with pytest.raises(ValueError, match="wg_grad: need a positive channel count"):
        kernels.wg_grad(m, dy.astype(dtype), geometry, o, n, n0, n1, th, tw, used - 1, 2, mats)
    with pytest.raises(ValueError, match="wg kernels"):
        kernels.wg_grad(m, dy.astype(dtype), geometry, o, n, n0, n1, th, tw + 1, ks, 2, mats)
    with pytest.raises(ValueError, match="wg_grad: only F\\(2x2, 5x5\\)"):
        kernels.wg_grad(m, dy.astype(dtype), geometry, o, n, n0, n1, (ho + 3) // 4, (wo + 3) // 4, ks, 4, mats)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n, per, slots", [(5, 1, 2), (7, 2, 3), (3, 1, 1), (4, 3, 2)],
                         ids=["two-slots", "three-slots-a-short-chunk", "one-slot", "a-short-last-part"])
def test_wg_filter_is_the_chunked_kernels_in_one_call(n, per, slots, dtype):
    """wg_filter (F(2x2, 5x5)'s weight gradient but for its taps transform, whole in one call)
    writes the bits of its kernels called chunk by chunk: slot k's part of the chunks (the
    contiguous split of threads.run_gemm_pieces), each chunk's input tiles (wg_input), dy's tiles
    (wg_grad) and 36 GEMMs (tile_gemm), the first chunk's products in the slot's sums and each
    later one's added; the gaps after the slices of v and m left as they were."""
    c, o, h, w_ = 6, 9, 9, 7
    geometry = (c, h, w_, 5, 5, 1, 1, 2, 2, 1, 1, h, w_)
    th, tw = (h + 1) // 2, (w_ + 1) // 2
    mats = numpy_spatial._wg_matrices(2, 5, numpy_spatial.WG_FILTER_POINTS)
    rng = np.random.default_rng(44)
    x, dy = rng.standard_normal((n, c, h, w_)).astype(dtype), rng.standard_normal((n, o, h, w_)).astype(dtype)
    p = per * th * tw
    vs, ms = c * p + 5, o * p + 3
    sums, parts = np.full((slots, 36, c, o), np.nan, dtype), np.full((slots, 36, c, o), np.nan, dtype)
    v, m = np.full((slots, 36, vs), np.nan, dtype), np.full((slots, 36, ms), np.nan, dtype)
    kernels.wg_filter(x, dy, sums, parts, v, m, geometry, o, n, per, th, tw, vs, ms, slots, mats)
    chunks = [(n0, min(n, n0 + per)) for n0 in range(0, n, per)]
    for k in range(slots):
        want, part = np.empty((36, c, o), dtype), np.empty((36, c, o), dtype)
        vk, mk = np.full((36, vs), np.nan, dtype), np.full((36, ms), np.nan, dtype)
        for index, (n0, n1) in enumerate(chunks[len(chunks) * k // slots:len(chunks) * (k + 1) // slots]):
            kernels.wg_input(x, vk, geometry, n, n0, n1, th, tw, vs, 2, mats)
            kernels.wg_grad(mk, dy, geometry, o, n, n0, n1, th, tw, ms, 2, mats)
            kernels.tile_gemm(vk, mk, part if index else want, 36, c, (n1 - n0) * th * tw, o, ms, c * o, False, vs)
            if index:
                want += part
        np.testing.assert_array_equal(sums[k], want)
        assert np.isnan(v[k][:, c * p:]).all() and np.isnan(m[k][:, o * p:]).all()


@needs_kernels
def test_wg_filter_refuses_what_it_does_not_compute():
    """A refused wg_filter names the argument and writes nothing: counts, slices that overlap,
    too many slots, buffers too small, of another dtype or sharing memory, the matrices, a
    geometry not F(2x2, 5x5)'s."""
    n, c, o, h = 3, 4, 5, 6
    geometry = (c, h, h, 5, 5, 1, 1, 2, 2, 1, 1, h, h)
    th = tw = 3
    mats = numpy_spatial._wg_matrices(2, 5, numpy_spatial.WG_FILTER_POINTS)
    x, dy = np.ones((n, c, h, h), np.float32), np.ones((n, o, h, h), np.float32)
    sums, parts = np.full((2, 36, c, o), 7, np.float32), np.full((2, 36, c, o), 7, np.float32)
    v, m = np.zeros((2, 36, c * 9), np.float32), np.zeros((2, 36, o * 9), np.float32)
    names = ["x", "dy", "sums", "parts", "v", "m", "geometry", "O", "N", "per", "th", "tw", "vs", "ms", "slots",
             "mats"]
    args = [x, dy, sums, parts, v, m, geometry, o, n, 1, th, tw, c * 9, o * 9, 2, mats]

    def refused(match, **change):
        call = [change.get(name, value) for name, value in zip(names, args)]
        with pytest.raises(ValueError, match=match):
            kernels.wg_filter(*call)
        assert (sums == 7).all() and (parts == 7).all()

    refused("wg kernels", tw=4)
    refused("wg kernels", geometry=(c, h, h, 3, 3, 1, 1, 1, 1, 1, 1, h, h))
    refused(r"wg_filter: O, N, per must be positive and slots in \[1, 64\], got 5, 3, 0, 2", per=0)
    refused(r"wg_filter: slots: expected at most the 3 chunks, got 4", slots=4)
    refused(r"wg_filter: vs, ms: slices of v and m overlap \(need at least 36 and 45, got 36 and 44\)",
            ms=o * 9 - 1)
    refused("sums: expected at least 1440 items", sums=sums[:1])
    refused("m: expected at least 3240 items", m=m.reshape(-1)[:-1])
    refused("dy: expected at least 540 items of format 'f', got 540 of 'd'", dy=dy.astype(np.float64))
    refused("mats: expected at least 78 items of format 'd', got 77", mats=mats[:-1])
    refused("wg_filter: sums and parts: expected buffers apart", parts=sums)
    refused("wg_filter: x and v: expected buffers apart", x=v.reshape(-1)[:x.size].reshape(x.shape))
    kernels.wg_filter(*args)
    assert not (sums == 7).any()


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_gemm_reads_u_slices_us_apart(dtype):
    """tile_gemm(..., us): u's slices further apart than (O, C) (the 5x5 weight gradient's input
    tiles), accumulating and not, against einsum in float64; too small a us is refused."""
    positions, o, c, p = 36, 13, 70, 20
    rng = np.random.default_rng(43)
    u, v, m0 = rng.standard_normal((positions, o, c)), rng.standard_normal((positions, c, p)), \
        rng.standard_normal((positions, o, p))
    us = o * c + 9
    ubuf = np.full((positions, us), np.nan, dtype)
    ubuf[:, :o * c] = u.reshape(positions, -1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for accumulate in (False, True):
        m = m0.astype(dtype)
        kernels.tile_gemm(ubuf, v.astype(dtype), m, positions, o, c, p, c * p, o * p, accumulate, us)
        want = (m0 if accumulate else 0) + np.einsum("koc,kcp->kop", u, v)
        np.testing.assert_allclose(m, want, rtol=tol, atol=tol * np.abs(want).max())
    with pytest.raises(ValueError, match=r"tile_gemm: us: slices of u overlap \(need at least 910, got 909\)"):
        kernels.tile_gemm(ubuf, v.astype(dtype), m, positions, o, c, p, c * p, o * p, False, o * c - 1)


def _zen5_avx512(monkeypatch):
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x1A)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 32, 32, 2), (1, 33, 17, 19, 35, 1), (3, 32, 12, 13, 40, 0),
                                   (2, 32, 6, 7, 32, 3)],
                         ids=["bench-layer", "batch-1-odd", "padding-0", "padding-past-the-taps"])
def test_5x5_weight_gradient_as_winograd_matches_a_float64_reference(shape, dtype, monkeypatch):
    """The 5x5 stride-1 weight gradient as F(5x5, 2x2) (_wg_backward_filter, reached through
    conv2d_backward_filter where the rule picks it), alone and accumulating, against a float64
    reference written here: float64 to rounding, float32 within 2e-5 of the largest tap's
    gradient as the forward's F(2x2, 5x5) (docs/numpy.md: 4-5e-6 measured, PyTorch's 3.7e-6 on the
    bench's layer); batch 1, odd planes, channel counts not a multiple of the vector, padding 0
    to 3, chunks of one sample on two lanes."""
    n, c, h, w_, o, p = shape
    _zen5_avx512(monkeypatch)
    monkeypatch.setattr(numpy_spatial, "WG_FILTER_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_PLANE", 1)
    picked = []
    original = numpy_spatial._wg_backward_filter
    monkeypatch.setattr(numpy_spatial, "_wg_backward_filter", lambda *a: (picked.append(1), original(*a))[1])
    rng = np.random.default_rng(47)
    x = rng.standard_normal((n, c, h, w_))
    ho, wo = h + 2 * p - 4, w_ + 2 * p - 4
    dy = rng.standard_normal((n, o, ho, wo))
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    want = np.zeros((o, c, 5, 5))
    for i in range(5):
        for j in range(5):
            want[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xp[:, :, i:i + ho, j:j + wo])
    backend = jp.backend("numpy")
    tol = 2e-5 if dtype == np.float32 else 1e-12
    dw0 = rng.standard_normal(want.shape)
    for accumulate in (False, True):
        dw = dw0.astype(dtype)
        backend.conv2d_backward_filter(x.astype(dtype), dy.astype(dtype), dw, (1, 1), (p, p), (1, 1), 1, accumulate,
                                       ws=Workspace())
        np.testing.assert_allclose(dw, (dw0 if accumulate else 0) + want, rtol=tol, atol=tol * np.abs(want).max())
    assert len(picked) == 2


@needs_kernels
@pytest.mark.parametrize("kind", [("AuthenticAMD", 0x1A), ("GenuineIntel", 6)], ids=["zen5", "intel"])
def test_5x5_weight_gradient_as_winograd_only_on_full_width_kinds_with_avx512(monkeypatch, kind):
    """F(5x5, 2x2) for the weight gradient only where _full_width (AMD Zen 5 and Intel's AVX-512
    Xeons with the AVX-512 build, the kinds measured): 5x5, undilated, ungrouped, 32 channels each
    side on 32x32 output planes, 64 on 16x16 ones (32 on 16x16 lost to the direct kernel on Zen 5);
    held to AVX2 and on other kinds the direct kernel as before."""
    _zen5_avx512(monkeypatch)
    monkeypatch.setattr(kernels, "cpu_vendor", kind[0])
    monkeypatch.setattr(kernels, "cpu_family", kind[1])
    backend = jp.backend("numpy")
    applies = numpy_spatial._wg_filter
    assert applies(backend, (32, 32, 5, 5), (1, 1), 1, (32, 32))
    assert applies(backend, (64, 32, 5, 5), (1, 1), 1, (32, 32))
    assert applies(backend, (64, 64, 5, 5), (1, 1), 1, (16, 16))
    assert not applies(backend, (32, 32, 5, 5), (1, 1), 1, (16, 16))
    assert not applies(backend, (64, 64, 5, 5), (1, 1), 1, (8, 8))
    assert not applies(backend, (16, 16, 5, 5), (1, 1), 1, (32, 32))
    assert not applies(backend, (32, 32, 3, 3), (1, 1), 1, (32, 32))
    assert not applies(backend, (32, 32, 5, 5), (2, 2), 1, (32, 32))
    assert not applies(backend, (32, 16, 5, 5), (1, 1), 2, (32, 32))
    monkeypatch.setattr(kernels, "isa", 1)
    assert not applies(backend, (32, 32, 5, 5), (1, 1), 1, (32, 32))
    monkeypatch.setattr(kernels, "isa", 2)
    monkeypatch.setattr(kernels, "cpu_vendor", "AuthenticAMD")
    monkeypatch.setattr(kernels, "cpu_family", 0x19)
    assert not applies(backend, (32, 32, 5, 5), (1, 1), 1, (32, 32))


@needs_kernels
def test_5x5_winograd_weight_gradient_training_step_allocates_no_backend_buffers(monkeypatch):
    from juicepy import layers as L

    _zen5_avx512(monkeypatch)
    monkeypatch.setattr(numpy_spatial, "WG_FILTER_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_spatial, "WG_MIN_CHANNELS", {5: 1, 3: 64})
    _steady_steps_allocate_nothing(monkeypatch, "_wg_backward_filter", [L.Conv2d(8, 3, padding=1), L.ReLU(),
                                   L.Conv2d(8, 5, padding=2)], (4, 8, 8), (8, 8, 8), isa=2)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 16, 21], ids=["one-channel", "one-run", "run-and-rest"])
def test_s2_weights_match_the_reference_bit_for_bit(c, dtype):
    """s2_weights (F(2x2, 2x2)'s taps of each phase, in double, runs of input channels at a
    time) against the sums written in NumPy in the same order: position (p, q)'s rows are
    [phase 00 | 01 where q is even | 10 where p is even | 11 where both] x C, the columns past a
    position's depth left as they were."""
    o = 3
    w = np.random.default_rng(4).standard_normal((o, c, 3, 3)).astype(dtype)
    g = w.astype(np.float64).reshape(o, c, 9)
    e = [[None] * 3 for _ in range(3)]
    for j in (0, 2):
        e[0][j], e[1][j], e[2][j] = g[..., j], g[..., j] + g[..., 6 + j], g[..., 6 + j]
    for i in range(3):
        e[i][1] = e[i][0] + e[i][2]
    v01 = [g[..., 1], g[..., 1] + g[..., 7], g[..., 7]]
    v10 = [g[..., 3], g[..., 3] + g[..., 5], g[..., 5]]
    want = np.full((9, o, 4 * c), np.nan, dtype)
    for p in range(3):
        for q in range(3):
            parts = [e[p][q]] + ([v01[p]] if q % 2 == 0 else []) + ([v10[q]] if p % 2 == 0 else []) \
                + ([g[..., 4]] if p % 2 == 0 and q % 2 == 0 else [])
            for k, part in enumerate(parts):
                want[p * 3 + q, :, k * c:(k + 1) * c] = part.astype(dtype)
    u = np.full((9, o, 4 * c), np.nan, dtype)
    kernels.s2_weights(w, u, o, c)
    np.testing.assert_array_equal(u, want)
