"""What only the OpenCL spatial ops do (their results on every backend are proven by
tests/backends/test_ops.py): each convolution algorithm forced (direct, implicit GEMM, im2col
+ GEMM), no allocation in steady state, optional batch-norm parameters, torch parity of a
whole conv stack, and convolution through the GPU GEMM variant."""

import math

import numpy as np
import pytest

from juicepy.backends import Workspace


# ------------------------------------------------------------------ loop references
def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_ref(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(wd, kw, sw, pw, dw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for ci in range(cg):
                    for ki in range(kh):
                        for kj in range(kw):
                            y[:, oc, i, j] += w[oc, ci, ki, kj] * xp[:, g * cg + ci, i * sh + ki * dh, j * sw + kj * dw]
    return y


def conv_stride1_ref(x, w, padding, dilation):
    """The stride-1 ungrouped convolution in float64 by windows and einsum: conv_ref's loops
    take minutes on the wide layers of the Winograd tests."""
    k, p, d = w.shape[2], padding, dilation
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (d * (k - 1) + 1,) * 2, axis=(2, 3))[..., ::d, ::d]
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64))


def conv_grads_ref(x, w, dy, stride, padding, dilation, groups):
    """dx and dw of sum(conv(x, w) * dy), by the same loops run backwards."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    ho, wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                for ci in range(cg):
                    for ki in range(kh):
                        for kj in range(kw):
                            hh, ww = i * sh + ki * dh, j * sw + kj * dw_
                            dxp[:, g * cg + ci, hh, ww] += w[oc, ci, ki, kj] * dy[:, oc, i, j]
                            dw[oc, ci, ki, kj] += np.sum(xp[:, g * cg + ci, hh, ww] * dy[:, oc, i, j])
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw


# --------------------------------------------------------------------- convolution
CONV_CASES = [
    # (N, C, H, W), (O, kh, kw), stride, padding, dilation, groups: each algorithm's branches
    ((2, 3, 8, 8), (8, 3, 3), (1, 1), (1, 1), (1, 1), 1),     # four output planes per work-item
    ((2, 8, 7, 9), (4, 3, 3), (1, 1), (2, 1), (2, 1), 1),     # input gradient: four per work-item
    ((1, 2, 9, 10), (3, 3, 2), (2, 3), (1, 0), (1, 2), 1),    # strided: the row-loop input gradient
    ((3, 6, 7, 7), (12, 3, 3), (1, 1), (1, 1), (1, 1), 6),    # depthwise, two outputs per channel
    ((2, 3, 6, 6), (6, 3, 3), (2, 2), (3, 2), (1, 1), 3),     # padded past the kernel
    ((2, 4, 5, 21), (4, 1, 1), (1, 1), (0, 0), (1, 1), 2),    # grouped 1x1, rows past 16 lanes
    ((2, 6, 8, 16), (4, 1, 1), (1, 1), (0, 0), (1, 1), 2),    # grouped 1x1, GEMM tiles inside one image
    # rows of several vectors, computed 2 or 4 vectors at a time, the last one partly past the row
    ((2, 3, 5, 37), (3, 3, 3), (1, 2), (1, 1), (1, 1), 3),    # depthwise, strided: 19 outputs a row
    ((1, 2, 4, 45), (6, 3, 3), (1, 1), (1, 1), (1, 2), 2),    # three outputs per group, dilated: 43
    # weight gradients a row of taps per work-item (rows of 16 and 32 outputs: whole pairs of vectors)
    ((2, 3, 6, 16), (3, 3, 3), (1, 1), (2, 1), (2, 1), 3),    # depthwise 3x3, dilated along rows
    ((2, 4, 3, 32), (4, 5, 5), (1, 1), (2, 2), (1, 1), 2),    # 5x5, two channels per group
    # ...and of several outputs per work-item on 8-lane devices (four for 3x3, two for 5x5)
    ((2, 8, 5, 16), (8, 3, 3), (1, 1), (2, 2), (2, 2), 2),    # 3x3, four outputs and channels per group, dilated
    ((2, 4, 6, 32), (4, 5, 5), (1, 1), (4, 4), (2, 2), 1),    # 5x5, dilated
    # ...in rows of one vector (8 outputs) or an odd number of them (24), one vector a step
    ((2, 4, 6, 8), (8, 3, 3), (1, 1), (1, 1), (1, 1), 1),     # 3x3, the ResNet's 8x8 planes
    ((1, 3, 4, 24), (4, 5, 5), (1, 1), (2, 2), (1, 1), 1),    # 5x5, three vectors a row
    # six output planes per work-item (8-lane devices): forward, rows of 3 vectors (the last partly)
    ((2, 2, 9, 21), (6, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    ((1, 6, 5, 6), (6, 3, 3), (1, 1), (1, 1), (1, 1), 1),     # forward and input gradient, one vector a row
    ((2, 6, 7, 11), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1),    # input gradient, two vectors a row
    # 5x5 Winograd (winograd5_conv): runs of 8 tiles in one row of tiles (vector loads and
    # stores), a run across two rows of tiles and a last run partly past the tiles (per tile)
    ((1, 5, 7, 38), (7, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    ((2, 6, 9, 24), (5, 5, 5), (1, 1), (0, 0), (1, 1), 1),
    # strided input gradients by stride phase (implicit): odd planes, phases no tap reaches
    ((2, 5, 9, 11), (12, 3, 3), (2, 2), (1, 1), (1, 1), 1),   # phases of 1, 2 and 4 taps, unequal sizes
    ((2, 4, 8, 8), (8, 1, 1), (2, 2), (0, 0), (1, 1), 1),     # 1x1: three phases of four stay zero
    ((1, 4, 11, 10), (8, 3, 3), (2, 2), (2, 2), (2, 2), 2),   # dilation 2: odd rows and columns stay zero
    # stride-2 gathers 8 at a time (8-lane implicit GEMMs): runs of 21, a last 8 overlapping the
    # ones before, loads running into the plane's next row but not past its last
    ((2, 3, 5, 41), (8, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    # ...and the input gradient's phases stored 8 at a time: runs of 17 (two vectors and the
    # last 8 overlapping them), batch 1, channels no multiple of the panels
    ((1, 5, 6, 34), (7, 3, 3), (2, 2), (1, 1), (1, 1), 1),
]


@pytest.fixture(scope="module", params=["direct", "direct-8-lanes", "implicit", "implicit-8-lanes",
                                        "implicit-16-lanes", "gemm", "winograd-8-lanes", "winograd-16-lanes"])
def conv_ocl(request, ocl):
    """The backend with each convolution algorithm forced (tests/backends/test_ops.py checks
    the one chosen per shape); the direct kernels and the implicit GEMM's tiles also with 8-lane
    vectors (what AVX2 devices get) and the implicit GEMM with 16 (AVX-512's). Winograd
    applies to the stride-1 3x3 and 5x5 ungrouped cases (forward and input gradient) and the
    forward pass of the undilated stride-2 3x3 ones (on phases), with both tile shapes, and the
    stride-1 3x3 ungrouped weight gradients (F(3x3, 2x2)); the other cases and weight gradients
    run im2col + GEMM there."""
    from juicepy.backends.opencl import OpenCLBackend

    algorithm, _, lanes = request.param.partition("-")
    if lanes:
        return request.getfixturevalue("lanes_backend")(int(lanes.split("-")[0]), conv_algorithm=algorithm)
    return OpenCLBackend(ocl.device, conv_algorithm=algorithm)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("accumulate", [False, True])
def test_conv2d_forward_and_backward(conv_ocl, rng, case, accumulate):
    ocl = conv_ocl
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    n, c, h, w = xs
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, c // groups, kh, kw)).astype(np.float32)
    y_ref = conv_ref(x, wt, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref = conv_grads_ref(x, wt, dy, stride, padding, dilation, groups)
    dx0 = rng.standard_normal(x.shape).astype(np.float32)
    dw0 = rng.standard_normal(wt.shape).astype(np.float32)
    if accumulate:
        dx_ref, dw_ref = dx_ref + dx0, dw_ref + dw0

    ws = Workspace()
    dev_x, dev_w = ocl.from_host(x), ocl.from_host(wt)
    y = ocl.empty(y_ref.shape)
    ocl.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws)
    np.testing.assert_allclose(ocl.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    dx, dw = ocl.from_host(dx0), ocl.from_host(dw0)
    ocl.conv2d_backward_data(ocl.from_host(dy), dev_w, dx, stride, padding, dilation, groups, accumulate, ws)
    ocl.conv2d_backward_filter(dev_x, ocl.from_host(dy), dw, stride, padding, dilation, groups, accumulate, ws)
    np.testing.assert_allclose(ocl.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ocl.to_host(dw), dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_direct_forward_through_a_padded_copy(ocl, lanes_backend, rng, monkeypatch, case, lanes):
    """The direct forward pass and stride-1 input gradient where a group's padded planes do not
    fit the local-memory limit (the test shapes all fit, so the limit is set to nothing): the
    input is padded into a global copy first."""
    from juicepy.backends.opencl import spatial

    monkeypatch.setattr(spatial, "DIRECT_LOCAL_MAX_BYTES", 0)
    ocl = lanes_backend(lanes, conv_algorithm="direct")
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1] // groups, kh, kw)).astype(np.float32)
    y_ref = conv_ref(x, wt, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, _ = conv_grads_ref(x, wt, dy, stride, padding, dilation, groups)
    ws = Workspace()
    y, dx = ocl.empty(y_ref.shape), ocl.empty(x.shape)
    ocl.conv2d(ocl.from_host(x), ocl.from_host(wt), y, stride, padding, dilation, groups, ws)
    ocl.conv2d_backward_data(ocl.from_host(dy), ocl.from_host(wt), dx, stride, padding, dilation, groups, False, ws)
    np.testing.assert_allclose(ocl.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ocl.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES[:3] + CONV_CASES[-3:] + [
    ((2, 8, 11, 40), (16, 3, 3), (2, 2), (1, 2), (1, 2), 2),   # strided, 8 outputs per group: phase planes
    ((1, 5, 7, 38), (7, 5, 5), (1, 1), (2, 2), (1, 1), 1),     # 5x5: F(2x2, 5x5) under "winograd"
], ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("algorithm", ["direct-local", "direct-padded", "implicit", "winograd"])
@pytest.mark.parametrize("parts", ["bias+relu", "bias+norm+residual+relu", "norm+residual"])
def test_conv_kernels_apply_the_epilogue(ocl, lanes_backend, rng, monkeypatch, case, lanes, algorithm, parts):
    """conv2d's epilogue, where the direct kernels (local-memory planes, a padded copy, phase
    planes for strided passes on 8 lanes) or the implicit GEMM compute the convolution: the
    bias and the inference batch norm (folded into the weights and bias) start the sums, the
    stores add the residual, then the ReLU reads the sum; no pass over the output. Winograd
    (stride-1 3x3 and 5x5 ungrouped cases, stride-2 3x3 ones on phases; the others run im2col +
    GEMM there) takes a 3x3 layer's batch norm folded likewise, adds the bias in its output
    transform and runs the rest as ops."""
    from juicepy.backends.base import ConvNorm
    from juicepy.backends.opencl import spatial

    if algorithm == "direct-padded":
        monkeypatch.setattr(spatial, "DIRECT_LOCAL_MAX_BYTES", 0)
    ocl = lanes_backend(lanes, conv_algorithm=algorithm.split("-")[0])
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1] // groups, kh, kw)).astype(np.float32)
    bias, gamma, beta, mean = (rng.standard_normal(o).astype(np.float32) for _ in range(4))
    var = rng.uniform(0.5, 3.0, o).astype(np.float32)
    y_ref = conv_ref(x, wt, stride, padding, dilation, groups)
    residual = rng.standard_normal(y_ref.shape).astype(np.float32)
    if "bias" in parts:
        y_ref = y_ref + bias[:, None, None]
    if "norm" in parts:
        y_ref = (y_ref - mean[:, None, None]) / np.sqrt(var + 1e-5)[:, None, None] * gamma[:, None, None] \
            + beta[:, None, None]
    if "residual" in parts:
        y_ref = y_ref + residual
    if "relu" in parts:
        y_ref = np.maximum(y_ref, 0.0)
    ws = Workspace()
    y, dev_w = ocl.empty(y_ref.shape), ocl.from_host(wt)
    for _ in range(2):   # the folded weights live in the workspace; the layer's own stay
        ocl.conv2d(ocl.from_host(x), dev_w, y, stride, padding, dilation, groups, ws,
                   bias=ocl.from_host(bias) if "bias" in parts else None,
                   norm=ConvNorm(*(ocl.from_host(a) for a in (gamma, beta, mean, var)), 1e-5) if "norm" in parts
                   else None, relu="relu" in parts,
                   residual=ocl.from_host(residual) if "residual" in parts else None)
        np.testing.assert_allclose(ocl.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ocl.to_host(dev_w), wt)


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding: odd and even planes (tiles past the output's last row and
    # column), padding 0, 1 and past the kernel, batch 1, channels past a slice (64) and outputs
    # past a work-group's rows (132), tiles past the last work-group's
    ((1, 3, 5, 5), 4, 1),
    ((2, 5, 9, 11), 12, 1),
    ((2, 70, 13, 10), 140, 0),
    ((1, 16, 8, 7), 6, 2),
    ((3, 8, 6, 9), 7, 0),
    # rows of 16 outputs or more: runs of 8 tiles along a row of tiles stored as float8 pairs,
    # a row of exactly 8 tiles per run across two images, runs crossing a row of tiles and a
    # last row of tiles past the output's last row (output by output)
    ((2, 5, 32, 31), 9, 1),
    ((1, 3, 33, 34), 4, 1),
    # runs of 8 tiles whose patches are gathered as rows of vectors (S2_RUN_GATHER): two runs a
    # row of tiles (the second's first column read, not padding) with patch rows past the
    # input's last row, padding 0 (the first column read; the last column the row's last), two
    # runs a row at padding 0; (2, 5, 32, 31) above has runs one column short (one by one)
    ((2, 3, 30, 64), 5, 1),
    ((1, 4, 33, 33), 6, 0),
    ((1, 2, 36, 65), 3, 0),
    # rows of 4 tiles gathered as runs of 4 (S2_RUN4_GATHER, the ResNet's 16x16 inputs): padding 1
    # (the first column padding, the first row of patches above the input), padding 0 (the first
    # column read, the last the row's last), rows of 5 tiles (runs of 4 crossing a row: one by one)
    ((3, 6, 16, 16), 10, 1),
    ((2, 4, 17, 17), 6, 0),
    ((2, 5, 16, 18), 7, 1),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_stride_2_phase_winograd_matches_the_reference(lanes_backend, rng, case, lanes, require_kernels):
    """The 3x3 stride-2 forward pass as Winograd F(2x2, 2x2) on its phases (s2_winograd_conv),
    with its bias, against the float64 loops."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "s2_conv")
    xs, o, p = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    y_ref = conv_ref(x, wt, (2, 2), (p, p), (1, 1), 1) + bias[:, None, None]
    geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, (2, 2), (p, p), (1, 1), 1, "conv2d")
    assert b._forward_algorithm(geo, 1) == "s2"
    y = b.empty(y_ref.shape)
    b.conv2d(b.from_host(x), b.from_host(wt), y, (2, 2), (p, p), (1, 1), 1, Workspace(), bias=b.from_host(bias))
    np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4 * np.sqrt(9 * xs[1]))


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding: 8-wide outputs (rows of 4 tiles: two runs of 4 to a run of 8,
    # stored a float8 a row each), 9 and 7 wide (rows of 5 and 4 tiles whose runs of 4 would
    # store past the row: output by output), an odd last row of outputs (output by output), a
    # last run past the tiles (batch 3 of 2x4 tiles), 100 outputs (two work-groups' rows)
    ((2, 8, 16, 16), 12, 1),
    ((3, 5, 18, 18), 6, 1),
    ((2, 4, 14, 14), 5, 1),
    ((2, 3, 15, 16), 4, 1),
    ((3, 6, 8, 16), 7, 1),
    ((2, 20, 16, 16), 100, 1),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_stride_2_phase_winograd_relu_and_runs_of_four_tiles(lanes_backend, rng, case, lanes, require_kernels):
    """s2_winograd_conv takes conv2d's ReLU after its bias (and the inference batch norm folded
    into both) in its stores, and stores rows of 4 tiles in runs of 4 (`_wino_halves`): against
    the float64 loops, and bit for bit against the tile by tile stores and the ReLU as a pass of
    its own (the same sums)."""
    from juicepy.backends.base import ConvNorm

    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "s2_conv")
    xs, o, p = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, o).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    mean, var = rng.standard_normal(o).astype(np.float32), rng.uniform(0.5, 2.0, o).astype(np.float32)
    conv = conv_ref(x, wt, (2, 2), (p, p), (1, 1), 1) + bias[:, None, None]
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    normed = (conv - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]
    geo = b._conv_geometry(x.shape, wt.shape, conv.shape, (2, 2), (p, p), (1, 1), 1, "conv2d")
    assert b._forward_algorithm(geo, 1) == "s2"
    args = ((2, 2), (p, p), (1, 1), 1)
    norm = ConvNorm(*(b.from_host(a) for a in (gamma, beta, mean, var)), 1e-5)
    dev_x, dev_w, dev_b = b.from_host(x), b.from_host(wt), b.from_host(bias)
    results = {}
    for halves, fused in ((True, True), (False, True), (True, False)):
        b._wino_halves, b._winograd_relu = halves, fused
        y, y_norm, ws = b.empty(conv.shape), b.empty(conv.shape), Workspace()
        b.conv2d(dev_x, dev_w, y, *args, ws, bias=dev_b, relu=True)
        b.conv2d(dev_x, dev_w, y_norm, *args, ws, bias=dev_b, norm=norm, relu=True)
        results[halves, fused] = [b.to_host(a) for a in (y, y_norm)]
    y, y_norm = results[True, True]
    np.testing.assert_allclose(y, np.maximum(conv, 0), rtol=1e-4, atol=1e-4 * np.sqrt(9 * xs[1]))
    np.testing.assert_allclose(y_norm, np.maximum(normed, 0), rtol=1e-4, atol=2e-4 * np.sqrt(9 * xs[1]))
    for other in ((False, True), (True, False)):
        for a, a_other in zip(results[True, True], results[other]):
            np.testing.assert_array_equal(a, a_other)


def s2_weight_gradient_ref(x, dy, padding):
    """dw of sum(conv(x, w) * dy) for a 3x3 stride-2 convolution, in float64 by einsum per tap."""
    ho, wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding + 2), (padding, padding + 2)))
    dw = np.zeros((dy.shape[1], x.shape[1], 3, 3))
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("nchw,nohw->oc", xp[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2], dy.astype(np.float64))
    return dw


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding: batch 1, odd and even planes (tiles past dy's last row and
    # column), padding 0, 1 and 2, output channels short of a vector (masked lanes) and past a
    # block (S2F_BO 128), input channels past a block (S2F_BC 32), tiles past a slice (S2F_TS)
    # and a block's tiles split into ranges (one block of channels)
    ((1, 3, 7, 8), 5, 0),
    ((2, 33, 9, 11), 12, 1),
    ((3, 8, 13, 10), 130, 1),
    ((1, 40, 17, 18), 9, 2),
    ((2, 5, 32, 31), 16, 1),
    # x's patches gathered as rows of vectors for runs of 8 tiles (as the forward's cases), and
    # of 4 (16x16 inputs); the taps' output channels as two whole vectors of 16 (the ResNet's 32)
    ((2, 3, 30, 64), 7, 1),
    ((1, 4, 33, 33), 6, 0),
    ((2, 6, 16, 16), 32, 1),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_stride_2_phase_winograd_weight_gradient_matches_the_reference(lanes_backend, rng, case, lanes, accumulate, require_kernels):
    """The 3x3 stride-2 weight gradient as the adjoint of the phase Winograd (s2_winograd_filter,
    s2_filter_taps), set and added to dw, against float64."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "s2_filter")
    xs, o, p = case
    ho, wo = out_size(xs[2], 3, 2, p, 1), out_size(xs[3], 3, 2, p, 1)
    x = rng.standard_normal(xs).astype(np.float32)
    dy = rng.standard_normal((xs[0], o, ho, wo)).astype(np.float32)
    dw0 = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    want = s2_weight_gradient_ref(x, dy, p) + (dw0 if accumulate else 0.0)
    dw = b.from_host(dw0)
    b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, (2, 2), (p, p), (1, 1), 1, accumulate, Workspace())
    np.testing.assert_allclose(b.to_host(dw), want, rtol=1e-4, atol=1e-4 * np.sqrt(xs[0] * ho * wo))


def winograd_weight_gradient_ref(x, dy, padding, dilation=1):
    """dw of sum(conv(x, w) * dy) for a stride-1 3x3 convolution, in float64 by einsum per tap."""
    ho, wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dw = np.zeros((dy.shape[1], x.shape[1], 3, 3))
    for i in range(3):
        for j in range(3):
            a, b = i * dilation, j * dilation
            dw[:, :, i, j] = np.einsum("nchw,nohw->oc", xp[:, :, a:a + ho, b:b + wo], dy.astype(np.float64))
    return dw


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding, fewest work-groups, dilation: batch 1, odd and even planes (tiles half past
    # dy's last row and column), padding 0, 1 and 2, output channels short of a vector (masked
    # lanes) and past a block (WF_BO 64), input channels past a block (WF_BC 64) and two whole
    # blocks, tiles past a slice (WF_TS), a block's tiles split into 2 and into 7 ranges; rows of
    # tiles in runs of 8 (a 32x32 plane's 16, across images) and not (7, 9 or 5 tiles a row);
    # dilation 2 (tiles interleaved in pairs: runs of 8 from an even tile column, planes with a
    # tile column and row short of a pair) and 3 (tile by tile)
    ((1, 3, 7, 8), 5, 0, 2, 1),
    ((2, 65, 9, 11), 12, 1, 2, 1),
    ((3, 8, 13, 10), 70, 1, 2, 1),
    ((1, 40, 17, 18), 9, 2, 2, 1),
    ((2, 5, 32, 31), 16, 1, 2, 1),
    ((2, 128, 8, 8), 128, 1, 2, 1),
    ((3, 6, 11, 13), 20, 1, 7, 1),
    ((3, 4, 32, 32), 9, 1, 3, 1),
    ((2, 6, 32, 32), 9, 2, 2, 2),
    ((2, 5, 13, 22), 7, 2, 3, 2),
    ((1, 4, 14, 12), 6, 3, 2, 3),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}-g{c[3]}-d{c[4]}")
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_winograd_weight_gradient_matches_the_reference(lanes_backend, rng, monkeypatch, case, lanes, accumulate, require_kernels):
    """The stride-1 3x3 weight gradient as Winograd F(3x3, 2x2) (winograd_filter,
    winograd_filter_taps), set and added to dw, against float64."""
    from juicepy.backends.opencl import spatial

    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "winograd3_filter")
    xs, o, p, groups, d = case
    monkeypatch.setattr(spatial, "S2_FILTER_MIN_GROUPS", groups)
    ho, wo = out_size(xs[2], 3, 1, p, d), out_size(xs[3], 3, 1, p, d)
    x = rng.standard_normal(xs).astype(np.float32)
    dy = rng.standard_normal((xs[0], o, ho, wo)).astype(np.float32)
    dw0 = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    want = winograd_weight_gradient_ref(x, dy, p, d) + (dw0 if accumulate else 0.0)
    geo = b._conv_geometry(x.shape, dw0.shape, dy.shape, (1, 1), (p, p), (d, d), 1, "conv2d_backward_filter")
    assert b._use_winograd_filter(geo, 1)
    taken = []
    real = b._winograd_filter
    b._winograd_filter = lambda *args: taken.append(args[3]) or real(*args)
    dw = b.from_host(dw0)
    b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, (1, 1), (p, p), (d, d), 1, accumulate, Workspace())
    assert taken == [geo]
    np.testing.assert_allclose(b.to_host(dw), want, rtol=1e-4, atol=1e-4 * np.sqrt(xs[0] * ho * wo))


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding: rows of 4 tiles (8-wide outputs) as runs of 4 (two to a run of 8,
    # VW 16: four rows of tiles), across images (2x4 tiles a plane), a last run past the tiles
    # (batch 3), rows of 5 tiles (9 wide: runs of 4 where they start a run of 8), channels past
    # a block (WF_BC 64), padding 0
    ((2, 8, 8, 8), 12, 1),
    ((5, 3, 4, 8), 4, 1),
    ((3, 5, 8, 8), 6, 1),
    ((3, 4, 7, 9), 5, 1),
    ((2, 70, 8, 8), 20, 1),
    ((2, 4, 10, 10), 6, 0),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_weight_gradient_runs_of_four_tiles(lanes_backend, rng, case, lanes, require_kernels):
    """winograd_filter reads rows of 4 tiles' patches in runs of 4 (`_wino_halves`): dw set and
    added against float64, and bit for bit against the tile by tile gathers (the same sums)."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "winograd3_filter")
    xs, o, p = case
    ho, wo = out_size(xs[2], 3, 1, p, 1), out_size(xs[3], 3, 1, p, 1)
    x = rng.standard_normal(xs).astype(np.float32)
    dy = rng.standard_normal((xs[0], o, ho, wo)).astype(np.float32)
    dw0 = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    want = winograd_weight_gradient_ref(x, dy, p, 1)
    geo = b._conv_geometry(x.shape, dw0.shape, dy.shape, (1, 1), (p, p), (1, 1), 1, "conv2d_backward_filter")
    assert b._use_winograd_filter(geo, 1)
    results = {}
    for halves in (True, False):
        b._wino_halves = halves
        dx, dev_dy, ws = b.from_host(x), b.from_host(dy), Workspace()
        dw, dw_acc = b.empty(dw0.shape), b.from_host(dw0)
        b.conv2d_backward_filter(dx, dev_dy, dw, (1, 1), (p, p), (1, 1), 1, False, ws)
        b.conv2d_backward_filter(dx, dev_dy, dw_acc, (1, 1), (p, p), (1, 1), 1, True, ws)
        results[halves] = [b.to_host(a) for a in (dw, dw_acc)]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(xs[0] * ho * wo))
    np.testing.assert_allclose(results[True][0], want, **tol)
    np.testing.assert_allclose(results[True][1], want + dw0, **tol)
    for a, a_tiles in zip(results[True], results[False]):
        np.testing.assert_array_equal(a, a_tiles)


def test_winograd_weight_gradient_rule(ocl, lanes_backend):
    """"auto" takes F(3x3, 2x2) for the weight gradients of stride-1 3x3 layers of
    WINOGRAD_FILTER_MIN_CHANNELS input and output channels and WINOGRAD_FILTER_MIN_PLANE output
    pixels, undilated or of dilation 2, on 8-lane convolution devices (16-lane GEMMs included);
    narrower, smaller, dilated by 3, grouped, strided or 5x5 layers keep theirs, and so do 16-lane
    convolutions."""
    from juicepy.backends.opencl import OpenCLBackend, spatial

    c_min, plane = spatial.WINOGRAD_FILTER_MIN_CHANNELS, spatial.WINOGRAD_FILTER_MIN_PLANE
    side = int(np.ceil(np.sqrt(plane)))

    def geo(c, o, size=side, k=3, s=1, d=1):
        ho = (size + 2 * d - d * (k - 1) - 1) // s + 1
        return (32, c, size, size, o, k, k, ho, ho, s, s, d, d, d, d)

    for b in (OpenCLBackend(ocl.device, vector_width=8), lanes_backend(16, conv_vector_width=8)):
        built = b.kernel_fits["winograd3_filter"]  # where it is not, the rule never takes it
        assert b._use_winograd_filter(geo(c_min, c_min), 1) == built and b._use_winograd_filter(geo(64, 64, 32), 1) == built
        assert b._use_winograd_filter(geo(64, 64, 32, d=2), 1) == built
        for other in (geo(c_min // 2, c_min), geo(c_min, c_min // 2), geo(c_min, c_min, side - 1), geo(64, 64, d=3),
                      geo(64, 64, k=5), geo(64, 64, s=2)):
            assert not b._use_winograd_filter(other, 1)
        assert not b._use_winograd_filter(geo(64, 64), 2)
    assert not lanes_backend(16)._use_winograd_filter(geo(64, 64, 32), 1)


def test_winograd_weight_gradient_where_the_rule_takes_it(ocl, rng):
    """conv2d_backward_filter runs _winograd_filter where the rule says so (a 32-channel 8x8
    layer), the direct kernel or GEMM elsewhere (16 channels), both matching float64."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)
    taken = []
    real = b._winograd_filter
    b._winograd_filter = lambda *args: taken.append(args[3][1]) or real(*args)
    side = 8
    for c in (32, 16):
        x = rng.standard_normal((2, c, side, side)).astype(np.float32)
        dy = rng.standard_normal((2, 32, side, side)).astype(np.float32)
        dw = b.empty((32, c, 3, 3))
        b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, (1, 1), (1, 1), (1, 1), 1)
        np.testing.assert_allclose(b.to_host(dw), winograd_weight_gradient_ref(x, dy, 1), rtol=1e-4, atol=1e-3)
    assert taken == ([32] if b.kernel_fits["winograd3_filter"] else [])


def test_winograd_weight_gradient_steady_state_allocates_nothing(ocl, rng, require_kernels):
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, conv_algorithm="winograd")
    require_kernels(b, "winograd3_filter")
    x = b.from_host(rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    dy = b.from_host(rng.standard_normal((2, 5, 9, 9)).astype(np.float32))
    dw = b.empty((5, 4, 3, 3))
    ws = Workspace()
    args = ((1, 1), (1, 1), (1, 1), 1)
    b.conv2d_backward_filter(x, dy, dw, *args, False, ws)
    before = b.allocations
    for _ in range(2):
        b.conv2d_backward_filter(x, dy, dw, *args, True, ws)
    assert b.allocations == before


def s2_input_gradient_ref(dy, w, x_shape, padding):
    """dx of sum(conv(x, w) * dy) for a 3x3 stride-2 convolution, in float64 by einsum per tap."""
    n, c, h, wd = x_shape
    ho, wo = dy.shape[2:]
    dx = np.zeros((n, c, h + 2 * padding + 2, wd + 2 * padding + 2))
    for i in range(3):
        for j in range(3):
            dx[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2] += np.einsum("nohw,oc->nchw", dy.astype(np.float64),
                                                                  w[:, :, i, j].astype(np.float64))
    return dx[:, :, padding:padding + h, padding:padding + wd]


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, padding: batch 1, odd and even planes (blocks past dx's last row and
    # column), padding 0 to 3 (both orders of dx's phases in a block), input channels short of a
    # micro-panel and past a work-group's rows (S2_BM 132), output channels past a slice (S2DK 128),
    # blocks past a work-group's NR
    ((1, 3, 7, 8), 5, 0),
    ((2, 33, 9, 11), 12, 1),
    ((3, 8, 13, 10), 140, 1),
    ((1, 140, 17, 18), 9, 2),
    ((2, 5, 32, 31), 16, 1),
    ((1, 7, 6, 9), 4, 3),
    # runs of 8 blocks read as rows of dy (the last column inside dy and past it) and stored as
    # rows of 32 pixels (inside dx), padding 1 and 2; a run crossing a row of blocks
    ((2, 9, 36, 32), 6, 1),
    ((1, 4, 12, 40), 3, 2),
    ((3, 6, 8, 34), 5, 1),
    # rows of 12 blocks: a 16-lane vector's first 8 blocks a run, its other 8 crossing a row
    ((1, 3, 8, 48), 4, 1),
    # rows of 4 blocks read as runs of 4 (the ResNet's 8x8 dy planes): the last column past dy
    # (padding 1) and inside it (padding 2); rows of 5 blocks (runs of 4 crossing a row)
    ((2, 6, 16, 16), 10, 1),
    ((2, 4, 16, 16), 5, 2),
    ((1, 3, 16, 20), 4, 1),
], ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_stride_2_phase_winograd_input_gradient_matches_the_reference(lanes_backend, rng, case, lanes, accumulate, require_kernels):
    """The 3x3 stride-2 input gradient as Winograd F(2x2, 2x2) on dx's phases (s2_data_weights,
    s2_winograd_data), set and added to dx, against float64."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "s2_data")
    xs, o, p = case
    ho, wo = out_size(xs[2], 3, 2, p, 1), out_size(xs[3], 3, 2, p, 1)
    dy = rng.standard_normal((xs[0], o, ho, wo)).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    dx0 = rng.standard_normal(xs).astype(np.float32)
    want = s2_input_gradient_ref(dy, wt, xs, p) + (dx0 if accumulate else 0.0)
    dx = b.from_host(dx0)
    b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, (2, 2), (p, p), (1, 1), 1, accumulate, Workspace())
    np.testing.assert_allclose(b.to_host(dx), want, rtol=1e-4, atol=1e-4 * np.sqrt(9 * o))


WINOGRAD_CASES = [
    # k, (N, C, H, W), O, padding, dilation: batch 1, odd planes (tiles past the output's last
    # row and column), padding 0 and 2, channels no multiple of the panels (6 or 12) and past a
    # slice (64), outputs past a work-group's rows (96), runs of 8 tiles side by side (vector
    # loads and stores) with the output row's last 16 past its end, runs across two rows of
    # tiles and a last one partly past the tiles (tile by tile), plane smaller than a run
    (5, (1, 3, 7, 9), 5, 2, 1),
    (5, (2, 70, 9, 37), 100, 2, 1),
    (5, (1, 13, 12, 36), 11, 0, 1),
    (3, (1, 3, 7, 9), 5, 1, 1),
    (3, (2, 70, 9, 37), 100, 1, 1),
    (3, (1, 13, 12, 36), 11, 0, 1),
    # dilation 2: runs of both phases of 4 tile columns (vector loads and stores paired), one
    # whose last 16 outputs pass the row's end (from tile column 4 of 12) and runs across rows
    (5, (2, 4, 11, 20), 7, 2, 2),
    (5, (1, 6, 9, 22), 9, 4, 2),
    (3, (2, 4, 11, 20), 7, 2, 2),
    (3, (1, 6, 9, 22), 9, 2, 2),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: f"k{c[0]}-{c[1]}-o{c[2]}-p{c[3]}-d{c[4]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_matches_the_reference(lanes_backend, rng, case, lanes, require_kernels):
    """The stride-1 3x3 and 5x5 forward pass (with its bias) and input gradient (added to dx) as
    Winograd F(2x2, 3x3) and F(2x2, 5x5) (winograd_conv, winograd5_conv), against float64."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    k, xs, o, p, d = case
    require_kernels(b, "winograd3" if k == 3 else "winograd5")
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], k, k)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    args = ((1, 1), (p, p), (d, d), 1)
    y_ref = conv_stride1_ref(x, wt, p, d) + bias[:, None, None]
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx0 = rng.standard_normal(xs).astype(np.float32)
    # the input gradient: dy convolved with the transposed, flipped taps, padded by (k - 1) d - p
    dx_ref = conv_stride1_ref(dy, wt.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], (k - 1) * d - p, d) + dx0
    geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, *args, "conv2d")
    assert b._forward_algorithm(geo, 1) == "winograd" and b._use_winograd(geo, 1, "data")
    ws, dev_w = Workspace(), b.from_host(wt)
    y, dx = b.empty(y_ref.shape), b.from_host(dx0)
    b.conv2d(b.from_host(x), dev_w, y, *args, ws, bias=b.from_host(bias))
    b.conv2d_backward_data(b.from_host(dy), dev_w, dx, *args, True, ws)
    np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4 * np.sqrt(k * k * xs[1]))
    np.testing.assert_allclose(b.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4 * np.sqrt(k * k * o))


# rows of 4 tiles (8-wide outputs: the CIFAR CNN's and the ResNet's 8x8 layers) as runs of 4:
# two rows of tiles to a run of 8, rows of 5 tiles (9 wide: runs of 4 from tile column 1 of the
# second image's last row and the next image's first, their outputs past the row's end: loaded
# by runs, stored tile by tile), 7 wide (the last tile's second column past the row: stored
# tile by tile), a last run past the tiles (batch 3 of 2x4 tiles), planes of 2 rows of tiles
# (two images to a run), 70 channels (two slices) and 100 outputs (two work-groups' rows),
# padding 0 and 2 (5x5)
WINOGRAD_HALF_CASES = [
    (3, (2, 8, 8, 8), 12, 1),
    (3, (3, 5, 8, 8), 7, 1),
    (3, (3, 4, 7, 9), 5, 1),
    (3, (2, 3, 9, 7), 6, 1),
    (3, (5, 3, 4, 8), 4, 1),
    (3, (3, 70, 8, 8), 100, 1),
    (3, (2, 4, 10, 10), 6, 0),
    (5, (2, 3, 8, 8), 4, 2),
    (5, (1, 3, 12, 12), 5, 0),
]


def winograd_three_ways(b, x, wt, bias, y0, dy, dx0, args, geo):
    """[y, y_acc, dx] on the host: conv2d with bias and ReLU into y, the Winograd forward with
    the bias added to y0, and the input gradient of dy added to dx0."""
    ws, dev_w, dev_b, dev_x = Workspace(), b.from_host(wt), b.from_host(bias), b.from_host(x)
    y, y_acc, dx = b.empty(y0.shape), b.from_host(y0), b.from_host(dx0)
    b.conv2d(dev_x, dev_w, y, *args, ws, bias=dev_b, relu=True)
    b._winograd(dev_x, dev_w, y_acc, geo, False, True, ws, dev_b)
    b.conv2d_backward_data(b.from_host(dy), dev_w, dx, *args, True, ws)
    return [b.to_host(a) for a in (y, y_acc, dx)]


@pytest.mark.parametrize("case", WINOGRAD_HALF_CASES, ids=lambda c: f"k{c[0]}-{c[1]}-o{c[2]}-p{c[3]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_runs_of_four_tiles(lanes_backend, rng, case, lanes, require_kernels):
    """winograd_conv / winograd5_conv on rows of 4 tiles take them in runs of 4 (vector loads
    and stores; `_wino_halves`): the forward pass with its bias and ReLU, the same added to y,
    and the input gradient added to dx, against float64, and bit for bit against the tile by
    tile path (the same sums)."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    k, xs, o, p = case
    require_kernels(b, "winograd3" if k == 3 else "winograd5")
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], k, k)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    args = ((1, 1), (p, p), (1, 1), 1)
    conv = conv_stride1_ref(x, wt, p, 1) + bias[:, None, None]
    y0 = rng.standard_normal(conv.shape).astype(np.float32)
    dy = rng.standard_normal(conv.shape).astype(np.float32)
    dx0 = rng.standard_normal(xs).astype(np.float32)
    dx_ref = conv_stride1_ref(dy, wt.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], k - 1 - p, 1) + dx0
    geo = b._conv_geometry(x.shape, wt.shape, conv.shape, *args, "conv2d")
    assert b._forward_algorithm(geo, 1) == "winograd" and b._use_winograd(geo, 1, "data")
    results = {}
    for halves in (True, False):
        b._wino_halves = halves
        results[halves] = winograd_three_ways(b, x, wt, bias, y0, dy, dx0, args, geo)
    y, y_acc, dx = results[True]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k * k * max(xs[1], o)))
    np.testing.assert_allclose(y, np.maximum(conv, 0), **tol)
    np.testing.assert_allclose(y_acc, conv + y0, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    for a, a_tiles in zip(results[True], results[False]):
        np.testing.assert_array_equal(a, a_tiles)


# F(2x2, 3x3) reading its input in place (outputs a multiple of 16 wide): runs at both edges
# of 32-wide rows and top and bottom rows of tiles in the padding, an odd height (the last row of
# tiles half past it), two channel slices (70) and two work-groups' rows (100 outputs), no padding
# at all (18 -> 16 wide), padding of rows only or of columns only, two rows of padding (a row of
# tiles' patch rows wholly outside), and a last work-group with tiles past the last (16 a
# group on 16 lanes, 2 x 8 per image)
IN_PLACE_CASES = [
    ((2, 5, 6, 32), 7, (1, 1)),
    ((2, 70, 5, 16), 100, (1, 1)),
    ((1, 4, 18, 18), 6, (0, 0)),
    ((2, 3, 7, 34), 5, (1, 0)),
    ((2, 3, 9, 32), 4, (0, 1)),
    ((1, 3, 3, 48), 5, (2, 1)),
    ((3, 4, 4, 16), 3, (1, 1)),
]


@pytest.mark.parametrize("case", IN_PLACE_CASES, ids=lambda c: f"{c[0]}-o{c[1]}-p{c[2]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_winograd_reads_its_input_in_place(lanes_backend, rng, monkeypatch, case, lanes, require_kernels):
    """winograd_conv on outputs a multiple of 16 wide reads the input itself (no padded copy:
    its runs at the padded edges load the inside and zero the rest): the forward pass with its
    bias and ReLU, the same added to y, and the input gradient (dy padded by one, where dx is a
    multiple of 16 wide) against float64, and bit for bit against the padded copy's path."""
    b = lanes_backend(lanes, conv_algorithm="winograd")
    require_kernels(b, "winograd3")
    xs, o, (ph, pw) = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    args = ((1, 1), (ph, pw), (1, 1), 1)
    conv = conv_ref(x, wt, (1, 1), (ph, pw), (1, 1), 1) + bias[:, None, None]
    y0, dy = (rng.standard_normal(conv.shape).astype(np.float32) for _ in range(2))
    dx0 = rng.standard_normal(xs).astype(np.float32)
    dx_ref = conv_grads_ref(x, wt, dy, (1, 1), (ph, pw), (1, 1), 1)[0] + dx0
    geo = b._conv_geometry(x.shape, wt.shape, conv.shape, *args, "conv2d")
    assert b._forward_algorithm(geo, 1) == "winograd" and b._winograd_in_place(geo)
    padded = []
    real_padded = type(b)._padded
    monkeypatch.setattr(type(b), "_padded", lambda self, *a: padded.append(a[1:5]) or real_padded(self, *a))
    data_in_place = xs[3] % 16 == 0 and 0 <= 2 - pw <= 1 and 2 - ph >= 0   # dy padded by 2 - p
    results = {}
    for in_place in (True, False):
        b._wino_in_place = in_place
        padded.clear()
        results[in_place] = winograd_three_ways(b, x, wt, bias, y0, dy, dx0, args, geo)
        assert len(padded) == (3 if not in_place else 0 if data_in_place else 1)
    y, y_acc, dx = results[True]
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(9 * max(xs[1], o)))
    np.testing.assert_allclose(y, np.maximum(conv, 0), **tol)
    np.testing.assert_allclose(y_acc, conv + y0, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    for a, a_copy in zip(results[True], results[False]):
        np.testing.assert_array_equal(a, a_copy)


def test_winograd_in_place_rule(ocl):
    """Only undilated 3x3 layers whose outputs are a multiple of 16 wide, padded by at most one
    column, read their input in place."""
    geo = lambda xs, o, k, p, d: ocl._conv_geometry(xs, (o, xs[1], k, k), (xs[0], o, xs[2] + 2 * p[0] - d * (k - 1),
                                                    xs[3] + 2 * p[1] - d * (k - 1)), (1, 1), p, (d, d), 1, "conv2d")
    assert ocl._winograd_in_place(geo((2, 64, 32, 32), 64, 3, (1, 1), 1))
    assert ocl._winograd_in_place(geo((2, 64, 8, 16), 64, 3, (3, 1), 1))
    assert not ocl._winograd_in_place(geo((2, 64, 32, 32), 64, 3, (2, 2), 2))    # dilated
    assert not ocl._winograd_in_place(geo((2, 64, 32, 32), 64, 5, (2, 2), 1))    # 5x5
    assert not ocl._winograd_in_place(geo((2, 64, 30, 30), 64, 3, (2, 2), 1))    # two columns of padding
    assert not ocl._winograd_in_place(geo((2, 64, 24, 24), 64, 3, (1, 1), 1))    # 24 wide: runs of 4
    assert not ocl._winograd_in_place(geo((2, 64, 8, 8), 64, 3, (1, 1), 1))


# the prefetch hints' paths: Winograd's runs of 8 tiles (3x3, dilation 2, 5x5), runs of 4, tiles
# alone (rows of 5 tiles) and runs past the last tile; the local-memory direct kernel (depthwise,
# a grouped layer, 8 outputs a work-item)
PREFETCH_CASES = [
    ("winograd", (2, 70, 9, 37), (12, 3, 3), 1, 1, 1),
    ("winograd", (1, 6, 9, 22), (9, 3, 3), 2, 2, 1),
    ("winograd", (2, 4, 11, 20), (7, 5, 5), 2, 1, 1),
    ("winograd", (3, 9, 8, 8), (10, 3, 3), 1, 1, 1),
    ("winograd", (3, 4, 7, 9), (5, 3, 3), 1, 1, 1),
    ("direct", (2, 16, 17, 33), (16, 3, 3), 1, 1, 16),
    ("direct", (2, 8, 12, 20), (16, 3, 3), 1, 1, 2),
    ("direct", (3, 4, 9, 40), (16, 3, 3), 1, 1, 1),
]


def test_prefetch_hints_only_on_cpu_drivers(ocl):
    """vectors.cl's PREFETCH_* hints are the prefetch instructions on CPU drivers only (a GPU's
    compiler gets empty macros)."""
    hints = {"CPU_PREFETCH": 1} if ocl.is_cpu else {}
    for build in ("gemm.cl", "gemm.cl:mr_alt", "conv.cl", "conv.cl:vec16"):
        assert {k: v for k, v in ocl._programs._defines[build].items() if k == "CPU_PREFETCH"} == hints


@pytest.mark.parametrize("case", PREFETCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-d{c[4]}-g{c[5]}")
@pytest.mark.parametrize("lanes", [8, 16])
def test_prefetch_hints_change_no_result(lanes_backend, rng, case, lanes, require_kernels):
    """winograd_conv / winograd5_conv and the local-memory direct kernels built with and without
    the prefetch hints: the forward pass (bias and ReLU) and the input gradient added to dx equal
    bit for bit, and match float64."""
    algorithm, xs, (o, kh, kw), p, d, groups = case
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1] // groups, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    args = ((1, 1), (p, p), (d, d), groups)
    y_ref = conv_ref(x, wt, (1, 1), (p, p), (d, d), groups) + bias[:, None, None]
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx0 = rng.standard_normal(xs).astype(np.float32)
    dx_ref = conv_grads_ref(x, wt, dy, (1, 1), (p, p), (d, d), groups)[0] + dx0
    results = []
    for hints in (1, 0):
        b = lanes_backend(lanes, conv_algorithm=algorithm)
        if algorithm == "winograd":
            require_kernels(b, "winograd3" if kh == 3 else "winograd5")
        for build in ("gemm.cl", "gemm.cl:mr_alt", "conv.cl", "conv.cl:vec16"):
            b._programs._defines[build]["CPU_PREFETCH"] = hints
        geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, *args, "conv2d")
        assert (b._forward_algorithm(geo, groups) == "winograd") == (algorithm == "winograd")
        ws, dev_w = Workspace(), b.from_host(wt)
        y, dx = b.empty(y_ref.shape), b.from_host(dx0)
        b.conv2d(b.from_host(x), dev_w, y, *args, ws, bias=b.from_host(bias), relu=True)
        b.conv2d_backward_data(b.from_host(dy), dev_w, dx, *args, True, ws)
        results.append((b.to_host(y), b.to_host(dx)))
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(kh * kw * max(xs[1], o)))
    np.testing.assert_allclose(results[0][0], np.maximum(y_ref, 0), **tol)
    np.testing.assert_allclose(results[0][1], dx_ref, **tol)
    for with_hints, without in zip(results[0], results[1]):
        np.testing.assert_array_equal(with_hints, without)


@pytest.mark.parametrize("shape,per", [((16, 32, 12, 12), 8), ((3, 46, 9, 13), 2), ((2, 8, 10, 10), 1)],
                         ids=["eight-a-work-item", "two-where-four-do-not-divide", "one"])
def test_depthwise_direct_kernel_takes_several_groups_per_work_item(ocl, monkeypatch, rng, shape, per):
    """The local-memory direct kernel (conv_direct_fwd*_local*) runs DIRECT_LOCAL_GROUP_RUNS
    groups a work-item where a group is one run of outputs (depthwise), each group's padded
    planes copied in turn, fewer where the work-items would drop below DIRECT_LOCAL_MIN_ITEMS or
    not divide: forward (bias, ReLU) and input gradient bit for bit as one group a work-item,
    against float64. (conv_depthwise_k3_plane, which takes these 3x3 layers, is off.)"""
    from juicepy.backends.opencl import spatial as ocl_spatial

    monkeypatch.setattr(ocl, "_depthwise_plane", False)
    n, c, h, w = shape
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    args = ((1, 1), (1, 1), (1, 1), c)
    launches = []
    kernel = ocl._kernel

    def recorded(program, name):
        launch = kernel(program, name)
        return lambda queue, size, *rest: (launches.append((name, size[0])), launch(queue, size, *rest))[1]

    monkeypatch.setattr(ocl, "_kernel", recorded)
    results = []
    for runs in (ocl_spatial.DIRECT_LOCAL_GROUP_RUNS, 1):
        monkeypatch.setattr(ocl_spatial, "DIRECT_LOCAL_GROUP_RUNS", runs)
        launches.clear()
        ws, dev_w = Workspace(), ocl.from_host(wt)
        y, dx = ocl.empty(shape), ocl.from_host(np.zeros(shape, np.float32))
        ocl.conv2d(ocl.from_host(x), dev_w, y, *args, ws, bias=ocl.from_host(bias), relu=True)
        ocl.conv2d_backward_data(ocl.from_host(dy), dev_w, dx, *args, True, ws)
        results.append((ocl.to_host(y), ocl.to_host(dx)))
        local = [size for name, size in launches if name.startswith("conv_direct_fwd") and "_local" in name]
        assert local == [n * c // (per if runs > 1 else 1)] * 2, launches
    y_ref = conv_ref(x, wt, *args) + bias[:, None, None]
    dx_ref = conv_grads_ref(x, wt, dy, *args)[0]
    np.testing.assert_allclose(results[0][0], np.maximum(y_ref, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][1], dx_ref, rtol=1e-4, atol=1e-4)
    for several, one in zip(results[0], results[1]):
        np.testing.assert_array_equal(several, one)


@pytest.mark.parametrize("shape,k,stride,dilation", [
    ((4, 6, 32, 32), (3, 3), 1, 1), ((3, 5, 13, 16), (3, 3), 1, 1), ((2, 4, 9, 9), (5, 5), 1, 1),
    ((2, 6, 15, 21), (3, 3), 2, 1), ((2, 4, 14, 12), (3, 3), 1, 2), ((2, 3, 11, 10), (3, 5), 1, 1)],
    ids=["four-vectors", "odd-rows-two-vectors", "5x5-one-vector", "strided", "dilated", "3x5"])
@pytest.mark.parametrize("in_local", [True, False], ids=["local", "padded-copy"])
def test_depthwise_direct_kernel_runs_rows_in_pairs(ocl, monkeypatch, rng, shape, k, stride, dilation, in_local):
    """One-output direct kernels (depthwise layers, forward and input gradient) compute two
    output rows a work-item at a time (conv_direct_fwd*_r2*: each input vector loaded once for
    both where the stride equals the dilation), a plane's odd last row stored once: forward
    (bias, ReLU) and accumulated input gradient bit for bit as one row at a time, against
    float64, with the local-memory kernel and the padded copy. (conv_depthwise_k3_plane, which
    takes the 3x3 "same" layers, is off.)"""
    from juicepy.backends.opencl import spatial as ocl_spatial

    monkeypatch.setattr(ocl, "_depthwise_plane", False)
    n, c, h, w = shape
    padding = (dilation * (k[0] // 2), dilation * (k[1] // 2))
    args = ((stride, stride), padding, (dilation, dilation), c)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((c, 1) + k).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    y_ref = conv_ref(x, wt, *args) + bias[:, None, None]
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx0 = rng.standard_normal(shape).astype(np.float32)
    if not in_local:
        monkeypatch.setattr(ocl_spatial, "DIRECT_LOCAL_MAX_BYTES", 0)
    launches = []
    kernel = ocl._kernel
    monkeypatch.setattr(ocl, "_kernel", lambda program, name: (launches.append(name), kernel(program, name))[1])
    results = []
    for pairs in (None, False):
        monkeypatch.setattr(ocl, "_row_pairs", pairs)
        launches.clear()
        ws, dev_w = Workspace(), ocl.from_host(wt)
        y, dx = ocl.empty(y_ref.shape), ocl.from_host(dx0)
        ocl.conv2d(ocl.from_host(x), dev_w, y, *args, ws, bias=ocl.from_host(bias), relu=True)
        ocl.conv2d_backward_data(ocl.from_host(dy), dev_w, dx, *args, True, ws)
        results.append((ocl.to_host(y), ocl.to_host(dx)))
        direct = [name for name in launches if name.startswith("conv_direct_fwd")]
        assert len(direct) == (2 if stride == 1 else 1), launches   # the strided input gradient is another kernel
        assert all(("_r2" in name) == (pairs is None) and ("_local" in name) == in_local for name in direct), direct
    np.testing.assert_allclose(results[0][0], np.maximum(y_ref, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][1], dx0 + conv_grads_ref(x, wt, dy, *args)[0], rtol=1e-4, atol=1e-4)
    for paired, one in zip(results[0], results[1]):
        np.testing.assert_array_equal(paired, one)


def _depthwise_epilogue_case(b, rng, shape, args, parts):
    """(x, weights, conv2d's epilogue keywords on ``b``, the float64 result) of a depthwise 3x3
    layer with ``parts`` ("none", "bias+relu" or "bias+residual+relu")."""
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    y_ref = conv_ref(x, wt, *args)
    kwargs = {}
    if parts != "none":
        bias = rng.standard_normal(c).astype(np.float32)
        kwargs, y_ref = dict(bias=b.from_host(bias), relu=True), y_ref + bias[:, None, None]
    if parts == "bias+residual+relu":
        res = rng.standard_normal(y_ref.shape).astype(np.float32)
        kwargs["residual"], y_ref = b.from_host(res), y_ref + res
    if parts != "none":
        y_ref = np.maximum(y_ref, 0)
    return x, wt, kwargs, y_ref


def _recorded_launches(b, monkeypatch, size_of):
    """A list that ``b``'s kernel launches append (name, size_of(global size)) to."""
    launches = []
    kernel = b._kernel
    monkeypatch.setattr(b, "_kernel", lambda program, name: (
        lambda queue, size, *rest: (launches.append((name, size_of(size))), kernel(program, name)(queue, size, *rest))[1]))
    return launches


def _depthwise_forwards(b, monkeypatch, rng, shape, args, parts, switch):
    """A depthwise 3x3 layer's forward with ``parts`` of the epilogue on ``b``, with the A/B
    attribute ``switch`` left on (None) and turned off (False): (y, the launches) each way, and
    the float64 result."""
    x, wt, kwargs, y_ref = _depthwise_epilogue_case(b, rng, shape, args, parts)
    launches = _recorded_launches(b, monkeypatch, lambda size: size[0])
    results = []
    for own in (None, False):
        monkeypatch.setattr(b, switch, own)
        launches.clear()
        y = b.empty(y_ref.shape)
        b.conv2d(b.from_host(x), b.from_host(wt), y, *args, Workspace(), **kwargs)
        results.append((b.to_host(y), list(launches)))
    return results[0], results[1], y_ref


def _depthwise_gradients(b, monkeypatch, rng, shape, args, dy_shape, switch, accumulate):
    """A depthwise 3x3 layer's input and weight gradients on ``b``, stored or added to random
    starts, with the A/B attribute ``switch`` left on (None) and turned off (False): a list of
    (dx, dw, the launches) each way, and the float64 dx and dw."""
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(dy_shape).astype(np.float32)
    dx0, dw0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(wt.shape).astype(np.float32)
    dx_ref, dw_ref = conv_grads_ref(x, wt, dy, *args)
    if accumulate:
        dx_ref, dw_ref = dx_ref + dx0, dw_ref + dw0
    launches = _recorded_launches(b, monkeypatch, lambda size: size)
    results = []
    for own in (None, False):
        monkeypatch.setattr(b, switch, own)
        launches.clear()
        ws, dev_dy = Workspace(), b.from_host(dy)
        dx, dw = b.from_host(dx0), b.from_host(dw0)
        b.conv2d_backward_data(dev_dy, b.from_host(wt), dx, *args, accumulate, ws)
        b.conv2d_backward_filter(b.from_host(x), dev_dy, dw, *args, accumulate, ws)
        results.append((b.to_host(dx), b.to_host(dw), list(launches)))
    return results, dx_ref, dw_ref


def _assert_gradients(results, dx_ref, dw_ref):
    """Both ways' gradients against float64 and against each other."""
    np.testing.assert_allclose(results[0][0], dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][1], dw_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-4)


PLANE_SHAPES = [(2, 5, 7, 7), (2, 3, 8, 8), (2, 4, 14, 14), (16, 32, 8, 8), (2, 3, 1, 9), (2, 2, 6, 1),
                (1, 2, 32, 32)]
PLANE_IDS = ["7x7", "8x8", "14x14", "eight-planes-a-work-item", "one-row", "one-column", "32x32"]


@pytest.mark.parametrize("shape", PLANE_SHAPES, ids=PLANE_IDS)
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("parts", ["none", "bias+relu", "bias+residual+relu"])
def test_depthwise_3x3_same_layers_run_on_flat_planes(lanes_backend, monkeypatch, rng, shape, lanes, parts):
    """Depthwise 3x3 stride-1 padding-1 forwards run on conv_depthwise_k3_plane (each plane one
    row of vectors across row ends, its edge columns masked; DEPTHWISE_ITEM_PLANES planes a
    work-item where that leaves DIRECT_LOCAL_MIN_ITEMS): against float64 with the epilogue and
    against the local-memory direct kernels it replaces."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    b = lanes_backend(lanes)
    n, c, h, w = shape
    (y, launches), (y_old, old_launches), y_ref = _depthwise_forwards(
        b, monkeypatch, rng, shape, ((1, 1), (1, 1), (1, 1), c), parts, "_depthwise_plane")
    per = b._depthwise_items(n * c, h * w)[1]
    assert launches == [("conv_depthwise_k3_plane", n * c // per)], launches
    assert not any(name.startswith("conv_depthwise_k3_plane") for name, _ in old_launches), old_launches
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, y_old, rtol=1e-5, atol=1e-5)


def _depthwise_filter_chunks(n, c, plane_outputs):
    """The depthwise weight gradients' image chunks: each work-item takes whole planes of at
    least DEPTHWISE_FILTER_ITEM_OUTPUTS outputs, at most DIRECT_FILTER_ITEMS work-items."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    planes = math.ceil(ocl_spatial.DEPTHWISE_FILTER_ITEM_OUTPUTS / plane_outputs)
    return max(1, min(n // planes, ocl_spatial.DIRECT_FILTER_ITEMS // c))


def test_depthwise_kernels_take_up_to_32_small_planes_a_work_item_and_keep_64_work_items(ocl, monkeypatch):
    """conv_depthwise_s2_k3*, conv_depthwise_k3_plane: DEPTHWISE_ITEM_PLANES planes a work-item,
    halved while that takes over DEPTHWISE_ITEM_VALUES input values (one plane at least), leaves
    fewer than DIRECT_LOCAL_MIN_ITEMS work-items or does not divide the planes; the A/B switch sets
    the planes (the work-items' count still kept)."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    assert (ocl_spatial.DEPTHWISE_ITEM_PLANES, ocl_spatial.DEPTHWISE_ITEM_VALUES,
            ocl_spatial.DIRECT_LOCAL_MIN_ITEMS) == (32, 8192, 64)
    assert ocl._depthwise_items(32 * 960, 49) == ((960,), 32)      # MobileNetV2's 960x7x7, batch 32
    assert ocl._depthwise_items(32 * 576, 196) == ((576,), 32)     # its 14x14 layers
    assert ocl._depthwise_items(32 * 192, 784) == ((768,), 8)      # 28x28: 16 planes would take 12544 values
    assert ocl._depthwise_items(32 * 64, 1024) == ((256,), 8)      # the bench's 64-channel 32x32 layers
    assert ocl._depthwise_items(32 * 64, 64 * 64) == ((1024,), 2)
    assert ocl._depthwise_items(8, 200 * 200) == ((8,), 1)         # one plane over the values
    assert ocl._depthwise_items(16 * 32, 49) == ((64,), 8)         # 64 work-items kept
    assert ocl._depthwise_items(96, 49) == ((96,), 1)              # fewer than 128 planes: one a work-item
    assert ocl._depthwise_items(15 * 64, 49) == ((120,), 8)        # 16 would leave 60 work-items
    assert ocl._depthwise_items(1001, 49) == ((1001,), 1)          # odd: no power of two divides it
    monkeypatch.setattr(ocl, "_group_runs", 16)
    assert ocl._depthwise_items(32 * 960, 49) == ((1920,), 16)
    assert ocl._depthwise_items(32 * 64, 1024) == ((128,), 16)
    assert ocl._depthwise_items(16 * 32, 49) == ((64,), 8)


def test_depthwise_filter_chunks_give_work_items_whole_planes(ocl, monkeypatch):
    """The depthwise weight gradients split the images so that a work-item sums at least
    DEPTHWISE_FILTER_ITEM_OUTPUTS outputs (several small planes), never more chunks than images
    or DIRECT_FILTER_ITEMS work-items; the A/B switch sets the least outputs."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    assert ocl_spatial.DEPTHWISE_FILTER_ITEM_OUTPUTS == 256
    assert ocl._depthwise_filter_chunks(32, 960, 49) == 5      # MobileNetV2's 960x7x7: 6 planes a work-item
    assert ocl._depthwise_filter_chunks(32, 576, 49) == 5      # its stride-2 layer from 14x14
    assert ocl._depthwise_filter_chunks(32, 64, 256) == 32     # 16x16 planes: one a work-item
    assert ocl._depthwise_filter_chunks(32, 64, 1024) == 32
    assert ocl._depthwise_filter_chunks(3, 8, 49) == 1         # fewer images than a work-item's planes
    assert ocl._depthwise_filter_chunks(1, 4, 1) == 1
    assert ocl._depthwise_filter_chunks(64, 4096, 1024) == 8   # DIRECT_FILTER_ITEMS // c
    monkeypatch.setattr(ocl, "_filter_item_outputs", 1)
    assert ocl._depthwise_filter_chunks(32, 960, 49) == 32


@pytest.mark.parametrize("shape", PLANE_SHAPES, ids=PLANE_IDS)
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_depthwise_3x3_same_gradients_on_flat_planes(lanes_backend, monkeypatch, rng, shape, lanes, accumulate):
    """The same layers' input gradient (conv_depthwise_k3_plane with the taps reversed) and
    weight gradient (conv_depthwise_k3_plane_filter: dy against the plane's masked shifts, chunks
    summed by conv_direct_filter_sum), stored or added, against float64 and the kernels they
    replace."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    b = lanes_backend(lanes)
    n, c, h, w = shape
    results, dx_ref, dw_ref = _depthwise_gradients(b, monkeypatch, rng, shape, ((1, 1), (1, 1), (1, 1), c), shape,
                                                   "_depthwise_plane", accumulate)
    launches = results[0][2]
    chunks = _depthwise_filter_chunks(n, c, h * w)
    assert [name for name, _ in launches] == ["conv_depthwise_k3_plane", "conv_depthwise_k3_plane_filter",
                                              "conv_direct_filter_sum"], launches
    assert launches[1][1] == (c, chunks), launches
    assert not any(name.startswith("conv_depthwise_k3_plane") for name, _ in results[1][2]), results[1][2]
    _assert_gradients(results, dx_ref, dw_ref)


@pytest.mark.parametrize("shape", [(16, 32, 8, 8), (64, 32, 4, 4), (12, 3, 7, 7), (2, 3, 14, 14)],
                         ids=["eight-planes-a-work-item", "32-planes-a-work-item",
                              "several-images-a-weight-gradient-item", "14x14"])
@pytest.mark.parametrize("lanes", [8, 16])
def test_depthwise_3x3_same_plane_kernels_copy_each_plane_ahead_where_two_fit(lanes_backend, monkeypatch, shape,
                                                                            lanes):
    """The plane kernels copy each plane into local memory while the one before it is computed
    (`ahead`, two copies' room) where two copies fit (planes of at most PLANE_AHEAD_MAX_VALUES),
    one at a time where only one does: the same bits either way (forward with its epilogue, input
    and weight gradients, stored and added), and float64's; 32x32 planes one at a time."""
    b = lanes_backend(lanes)
    n, c, h, w = shape
    rng = np.random.default_rng(9)
    args = ((1, 1), (1, 1), (1, 1), c)
    x, wt = rng.standard_normal(shape).astype(np.float32), rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    dy, bias = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    start = rng.standard_normal(shape).astype(np.float32)
    kernel, aheads = b._kernel, []

    def recorded(program, name):
        def launch(queue, size, local, *rest):
            if name.startswith("conv_depthwise_k3_plane"):
                aheads.append(next(rest[i + 1] for i, arg in enumerate(rest) if isinstance(arg, b._cl.LocalMemory)))
            return kernel(program, name)(queue, size, local, *rest)
        return launch

    monkeypatch.setattr(b, "_kernel", recorded)
    one_copy = b._depthwise_plane_bytes(h, w, lanes)
    results = []
    for room, ahead in ((None, 1), (one_copy, 0)):
        if room is not None:
            monkeypatch.setattr(b, "_local_planes_bytes", lambda: room)
        aheads.clear()
        ws = Workspace()
        y, dx, dw = b.empty(shape), b.from_host(start), b.from_host(np.zeros_like(wt))
        b.conv2d(b.from_host(x), b.from_host(wt), y, *args, ws, bias=b.from_host(bias), relu=True)
        b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, *args, True, ws)
        b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, *args, False, ws)
        assert aheads == [ahead] * 3, aheads
        results.append([b.to_host(a) for a in (y, dx, dw)])
    for got, other in zip(*results):
        np.testing.assert_array_equal(got, other)
    monkeypatch.undo()
    assert b._depthwise_plane_copies(32, 32, lanes)[1] == 0 and b._depthwise_plane_copies(h, w, lanes)[1] == 1
    monkeypatch.setattr(b, "_plane_ahead", True)
    assert b._depthwise_plane_copies(32, 32, lanes)[1] == 1
    dx_ref, dw_ref = conv_grads_ref(x, wt, dy, *args)
    y_ref = np.maximum(conv_ref(x, wt, *args) + bias[:, None, None], 0)
    np.testing.assert_allclose(results[0][0], y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][1], dx_ref + start, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][2], dw_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape,stride", [((4, 16, 32, 32), 2), ((3, 8, 14, 14), 2), ((2, 8, 32, 32), 1),
                                          ((5, 6, 7, 7), 1)],
                         ids=["s2-whole-rows", "s2-rows-ending-inside-a-vector", "32x32-planes", "7x7-planes"])
@pytest.mark.parametrize("lanes", [8, 16])
def test_depthwise_next_plane_hints_change_no_result(lanes_backend, shape, stride, lanes):
    """The depthwise kernels built with and without DW_PREFETCH (the stride-2 forward's hints of
    the next plane's rows, the plane kernels' of the next plane after a copy; on past the last
    plane too): forward with bias and ReLU, input gradient added to dx and weight gradient equal
    bit for bit, and match float64."""
    n, c, h, w = shape
    rng = np.random.default_rng(12)
    args = ((stride, stride), (1, 1), (1, 1), c)
    x, wt = rng.standard_normal(shape).astype(np.float32), rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    y_ref = conv_ref(x, wt, *args) + bias[:, None, None]
    dy, start = rng.standard_normal(y_ref.shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    results = []
    for hints in (1, 0):
        b = lanes_backend(lanes)
        for build in ("conv.cl", "conv.cl:vec16"):
            b._programs._defines[build]["DW_PREFETCH"] = hints
        ws = Workspace()
        y, dx, dw = b.empty(y_ref.shape), b.from_host(start), b.from_host(np.zeros_like(wt))
        b.conv2d(b.from_host(x), b.from_host(wt), y, *args, ws, bias=b.from_host(bias), relu=True)
        b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, *args, True, ws)
        b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, *args, False, ws)
        results.append([b.to_host(a) for a in (y, dx, dw)])
    for with_hints, without in zip(*results):
        np.testing.assert_array_equal(with_hints, without)
    dx_ref, dw_ref = conv_grads_ref(x, wt, dy, *args)
    np.testing.assert_allclose(results[0][0], np.maximum(y_ref, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][1], dx_ref + start, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][2], dw_ref, rtol=1e-4, atol=1e-3)


def test_depthwise_next_plane_hints_where_the_compiler_targets_avx2(ocl, monkeypatch):
    """DW_PREFETCH goes into the convolution builds of CPU devices whose compiler targets AVX2
    (compiled_float_lanes 8), not where it targets AVX-512 (no gain measured there)."""
    from juicepy.backends.opencl import OpenCLBackend, backend as ocl_backend
    if not ocl.is_cpu:
        pytest.skip(f"{ocl.device.name} is not a CPU device: no prefetch hints")
    for lanes, hinted in ((8, 1), (16, None)):
        monkeypatch.setattr(ocl_backend, "compiled_float_lanes", lambda *a, _n=lanes: _n)
        b = OpenCLBackend(ocl.device, vector_width=8)
        for build in ("conv.cl", "conv.cl:vec16"):
            assert b._programs._defines[build].get("DW_PREFETCH") == hinted, (lanes, build)


def test_depthwise_3x3_same_plane_kernel_rule(ocl):
    """conv_depthwise_k3_plane* take only depthwise 3x3 stride-1 padding-1 undilated layers whose
    padded plane fits in local memory; the A/B switch turns them off."""
    def geo(n=2, c=8, h=14, w=14, o=8, k=3, s=1, p=1, d=1):
        ho, wo = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
        return (n, c, h, w, o, k, k, ho, wo, s, s, p, p, d, d)

    _assert_depthwise_rule(ocl, "_depthwise_plane", [(geo(), 8, 8), (geo(h=7, w=5), 8, 16)],
                           [(geo(o=16), 8, 8), (geo(), 4, 8), (geo(k=5, p=2), 8, 8), (geo(s=2), 8, 8),
                            (geo(p=0), 8, 8), (geo(d=2, p=2), 8, 8), (geo(h=4096, w=4096), 8, 8)])


def _assert_depthwise_rule(ocl, switch, taken, refused):
    """The kernel rule behind A/B attribute ``switch`` (_use + its name) takes each of ``taken``
    and none of ``refused`` ((geometry, groups, lanes) each), and none with the switch off."""
    use = getattr(ocl, "_use" + switch)
    for case in taken:
        assert use(*case), case
    for case in refused:
        assert not use(*case), case
    setattr(ocl, switch, False)
    try:
        assert not any(use(*case) for case in taken)
    finally:
        setattr(ocl, switch, None)


# planes of 2 Ho x 2 Wo; rows of whole vectors and (from "rows-of-7") rows whose last vector is
# partial at 8 or 16 lanes (MobileNet's 7 and 14, one output, a vector and a half of 8)
S2_SHAPES = [(2, 5, 32, 32), (3, 4, 16, 64), (2, 3, 8, 16), (16, 32, 8, 32), (2, 3, 14, 14), (2, 4, 28, 28),
             (3, 2, 6, 2), (2, 3, 10, 24), (16, 32, 14, 14), (64, 32, 4, 16)]
S2_IDS = ["one-16-lane-row", "rows-of-several-vectors", "8-lane-rows", "eight-planes-a-work-item", "rows-of-7",
          "rows-of-14", "rows-of-1", "rows-of-12", "rows-of-7-eight-planes-a-work-item",
          "8-lane-rows-32-planes-a-work-item"]


@pytest.mark.parametrize("shape", S2_SHAPES, ids=S2_IDS)
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("parts", ["none", "bias+relu", "bias+residual+relu"])
def test_depthwise_stride_2_kernel_splits_input_rows_in_registers(lanes_backend, monkeypatch, rng, shape, lanes,
                                                                  parts):
    """Depthwise 3x3 forwards of stride 2 and padding 1 on 2 Ho x 2 Wo planes run on
    conv_depthwise_s2_k3 (no phase planes in local memory; DEPTHWISE_ITEM_PLANES
    planes a work-item where that leaves DIRECT_LOCAL_MIN_ITEMS): against float64 with the
    epilogue, and the local-memory direct kernel (the taps summed a row of taps apart: to
    rounding), rows whose last vector is partial included (loads and stores past the row's end
    before a plane's last row, each lane past it stored over later)."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    b = lanes_backend(lanes)
    n, c, h, w = shape
    results = _depthwise_forwards(b, monkeypatch, rng, shape, ((2, 2), (1, 1), (1, 1), c), parts, "_depthwise_s2")
    for own, (_, launches) in zip((None, False), results[:2]):
        names = [name for name, _ in launches]
        if own is None:
            per = b._depthwise_items(n * c, h * w)[1]
            assert launches == [("conv_depthwise_s2_k3", n * c // per)], launches
        else:
            assert "conv_depthwise_s2_k3" not in names and any("_local" in name for name in names), launches
    np.testing.assert_allclose(results[0][0], results[2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 14, 14), (1, 2, 6, 28), (3, 1, 4, 2), (16, 32, 14, 14)],
                         ids=["rows-of-7", "rows-of-14", "rows-of-1", "rows-of-7-eight-planes-a-work-item"])
@pytest.mark.parametrize("lanes", [8, 16])
def test_depthwise_stride_2_forward_writes_nothing_past_its_planes(lanes_backend, shape, lanes):
    """The stride-2 forward's partial vectors store past a row's end only where a later store
    writes over it (past a plane's last row only into the work-item's next plane): the values
    after the output (the same buffer) are left as they were."""
    b = lanes_backend(lanes)
    n, c, h, w = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    out_shape = (n, c, h // 2, w // 2)
    size = math.prod(out_shape)
    flat = b.from_host(np.full(size + 64, 7.0, dtype=np.float32))
    y = b.flat_view(flat, 0, out_shape)
    b.conv2d(b.from_host(x), b.from_host(wt), y, (2, 2), (1, 1), (1, 1), c, Workspace())
    got = b.to_host(flat)
    np.testing.assert_array_equal(got[size:], 7.0)
    np.testing.assert_allclose(got[:size].reshape(out_shape), conv_ref(x, wt, (2, 2), (1, 1), (1, 1), c),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", S2_SHAPES, ids=S2_IDS)
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_depthwise_stride_2_gradients_from_rows_in_registers(lanes_backend, monkeypatch, rng, shape, lanes, accumulate):
    """The same layers' input gradient (conv_depthwise_s2_k3_data: dx's four stride phases from
    dy's rows and their one-lane shifts, interleaved into dx's rows) and weight gradient
    (conv_depthwise_s2_k3_filter: dy against the input rows split as the forward splits them,
    chunks summed by conv_direct_filter_sum), stored or added, against float64 and against the
    local-memory phase kernels they replace (a partial last vector of a row: no dy value to its
    right, nothing stored or added past the row, nothing summed past it)."""
    from juicepy.backends.opencl import spatial as ocl_spatial

    b = lanes_backend(lanes)
    n, c, h, w = shape
    results, dx_ref, dw_ref = _depthwise_gradients(b, monkeypatch, rng, shape, ((2, 2), (1, 1), (1, 1), c),
                                                   (n, c, h // 2, w // 2), "_depthwise_s2", accumulate)
    for own, (_, _, launches) in zip((None, False), results):
        names = [name for name, _ in launches]
        if own is None:
            per = b._depthwise_items(n * c, h * w)[1]
            chunks = _depthwise_filter_chunks(n, c, h // 2 * (w // 2))
            assert names == ["conv_depthwise_s2_k3_data", "conv_depthwise_s2_k3_filter", "conv_direct_filter_sum"], \
                launches
            assert launches[0][1] == (n * c // per,) and launches[1][1] == (c, chunks), launches
        else:
            assert not any(name.startswith("conv_depthwise_s2") for name in names), launches
            assert "conv_phase_bwd_data" in names, launches
    _assert_gradients(results, dx_ref, dw_ref)


@pytest.mark.parametrize("shape", [(2, 3, 14, 14), (1, 2, 28, 28), (2, 2, 10, 24), (3, 1, 4, 2), (16, 32, 14, 14),
                                   (2, 3, 20, 20), (2, 2, 8, 36), (16, 32, 10, 20)],
                         ids=["rows-of-7", "rows-of-14", "rows-of-12", "rows-of-1", "rows-of-7-eight-planes-a-work-item",
                              "rows-of-10", "rows-of-18", "rows-of-10-eight-planes-a-work-item"])
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_depthwise_stride_2_input_gradient_writes_nothing_past_its_planes(lanes_backend, shape, lanes, accumulate):
    """conv_depthwise_s2_k3_data's partial vectors store past a row's end (where not adding)
    only where a later store writes over it (past a plane's last row only into the work-item's
    next plane): the values after dx (the same buffer) are left as they were, and dx is the
    float64 one, stored or added. Rows of 10 (at 8 lanes) and 18 (at 8 and 16) end in a vector
    of under half the lanes, whose first store of each odd dx row is already partial: it ran past
    the plane's last row into the next work-item's plane, or past dx."""
    b = lanes_backend(lanes)
    n, c, h, w = shape
    rng = np.random.default_rng(6)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32)
    dx0 = rng.standard_normal(shape).astype(np.float32)
    size = dx0.size
    flat = b.from_host(np.concatenate([dx0.ravel(), np.full(64, 7.0, dtype=np.float32)]))
    dx = b.flat_view(flat, 0, shape)
    b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, (2, 2), (1, 1), (1, 1), c, accumulate, Workspace())
    got = b.to_host(flat)
    np.testing.assert_array_equal(got[size:], 7.0)
    dx_ref = conv_grads_ref(np.zeros(shape, np.float32), wt, dy, (2, 2), (1, 1), (1, 1), c)[0]
    np.testing.assert_allclose(got[:size].reshape(shape), dx_ref + dx0 if accumulate else dx_ref,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
def test_depthwise_stride_2_forward_whole_rows_keep_infinities_in_their_taps(lanes_backend, lanes):
    """On rows of whole vectors the 8-lane stride-2 forward computes every column's taps and
    keeps the even ones (DW_S2_FULL_ROWS; 16 lanes split the rows): the right tap's last lane reads
    the first value of the next row (and of the row's next two vectors), dropped with its column.
    Infinities there reach only the outputs whose taps read them, as in float64, and none becomes
    a NaN."""
    b = lanes_backend(lanes)
    n, c, h, w = 2, 3, 32, 32
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 1, 2, 0] = np.inf      # a row's first value: past the row above's end
    x[1, 2, 5, 16] = -np.inf    # past the first 16 columns of its row
    x[1, 0, 31, 0] = np.inf     # the last row's first value
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    y = b.empty((n, c, h // 2, w // 2))
    b.conv2d(b.from_host(x), b.from_host(wt), y, (2, 2), (1, 1), (1, 1), c, Workspace())
    got, ref = b.to_host(y), conv_ref(x, wt, (2, 2), (1, 1), (1, 1), c)
    assert not np.isnan(ref).any() and np.isinf(ref).sum() == 1 + 2 + 1   # the outputs whose taps read them
    np.testing.assert_array_equal(np.isnan(got), False)
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", [8, 16])
def test_depthwise_stride_2_weight_gradient_adds_nothing_from_past_a_row(lanes_backend, lanes):
    """conv_depthwise_s2_k3_filter's whole-vector loads of a partial vector (7-wide dy rows at 8
    lanes) zero x's values past the row, not only dy's: an infinity at the start of an input row
    reaches only the taps that read it (infinite there as in float64), not, times dy's zeros, the
    taps whose lanes run past the row before it (NaN)."""
    b = lanes_backend(lanes)
    n, c, h, w = 2, 3, 14, 14
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 1, 1, 0] = np.inf
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32)
    dw = b.from_host(np.zeros_like(wt))
    b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, (2, 2), (1, 1), (1, 1), c, False, Workspace())
    got, ref = b.to_host(dw), conv_grads_ref(x, wt, dy, (2, 2), (1, 1), (1, 1), c)[1]
    assert not np.isnan(ref).any() and np.isinf(ref).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-4, atol=1e-3)


def test_depthwise_stride_2_kernel_rule(ocl):
    """conv_depthwise_s2_k3* take only depthwise (one channel a group, one output a channel) 3x3
    stride-2 padding-1 undilated layers on inputs of exactly twice the output, whatever the
    rows' width; the A/B switch turns it off."""
    def geo(n=2, c=8, h=32, w=32, o=8, k=3, s=2, p=1, d=1):
        ho, wo = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
        return (n, c, h, w, o, k, k, ho, wo, s, s, p, p, d, d)

    _assert_depthwise_rule(ocl, "_depthwise_s2", [(geo(), 8, 8), (geo(), 8, 16), (geo(w=16), 8, 8),
                                                  (geo(w=16), 8, 16), (geo(w=14), 8, 8), (geo(w=2), 8, 16)],
                           [(geo(o=16), 8, 8), (geo(), 4, 8), (geo(k=5, p=2), 8, 8), (geo(s=1), 8, 8),
                            (geo(p=0), 8, 8), (geo(d=2, p=2), 8, 8), (geo(h=31), 8, 8), (geo(w=31), 8, 8)])


@pytest.mark.parametrize("stride,padding,width", [
    ((2, 2), (1, 1), 37), ((2, 2), (0, 3), 40), ((2, 2), (2, 2), 7), ((2, 3), (1, 2), 29), ((3, 1), (1, 0), 20)],
    ids=["s2-odd", "s2-left3", "s2-narrow", "s2x3", "s3x1"])
def test_phase_planes_lay_out_the_padded_input_by_stride_phase(ocl, rng, stride, padding, width):
    """pad_phases (phase_planes in conv.cl): phase (a, b) of each plane holds the zero-padded
    input's rows a, a + sh, ... and columns b, b + sw, ... (zeros past it), stride 2 along rows
    through the interleaved vector copy (rows of both phases, odd and even left paddings, rows
    shorter than a vector), other strides lane by lane."""
    (sh, sw), (ph, pw), kh, kw = stride, padding, 3, 3
    x = rng.standard_normal((2, 3, 9, width)).astype(np.float32)
    ho, wo = (9 + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    geo = (2, 3, 9, width, 3, kh, kw, ho, wo, sh, sw, ph, pw, 1, 1)
    out, hq, wq = ocl._phase_planes(ocl.from_host(x), geo, 0, None)
    got = ocl.to_host(out)[:6 * sh * sw * hq * wq].reshape(2, 3, sh, sw, hq, wq)
    xp = np.zeros((2, 3, hq * sh + sh, wq * sw + sw), np.float32)
    xp[:, :, ph:ph + 9, pw:pw + width] = x
    for a in range(sh):
        for b in range(sw):
            np.testing.assert_array_equal(got[:, :, a, b], xp[:, :, a::sh, b::sw][:, :, :hq, :wq])


@pytest.mark.parametrize("shape,groups,o,k,stride,padding,dilation,local_filter", [
    ((2, 8, 31, 33), 8, 8, (3, 3), (2, 2), (1, 1), (1, 1), ()),           # depthwise: rows ending mid-vector
    ((2, 4, 16, 64), 4, 4, (3, 3), (2, 2), (1, 1), (1, 1), (8, 16)),      # whole vectors, both lane counts
    ((2, 4, 12, 67), 4, 4, (3, 3), (2, 2), (1, 0), (1, 2), (8, 16)),      # ...dilated, unpadded columns
    ((1, 6, 12, 23), 3, 6, (3, 5), (2, 3), (2, 1), (1, 2), ()),           # grouped (2 outputs a group), dilated
    ((2, 4, 9, 32), 2, 8, (3, 3), (2, 2), (1, 1), (1, 1), (16,)),         # 4 outputs a group: 4 a work-item (8 lanes)
    ((2, 3, 10, 19), 3, 3, (3, 3), (3, 2), (3, 0), (1, 1), ()),           # padded past the kernel, unpadded columns
    ((1, 4, 9, 21), 4, 8, (1, 1), (2, 2), (0, 0), (1, 1), ()),            # 1x1: phases no tap reaches stay zero
], ids=["depthwise-s2", "whole-vectors", "whole-vectors-dilated", "grouped-s2x3-dilated", "grouped-4-outputs",
        "s3x2-past-kernel", "1x1-s2"])
@pytest.mark.parametrize("lanes", [8, 16])
def test_strided_direct_passes_read_phase_planes(lanes_backend, monkeypatch, rng, shape, groups, o, k, stride,
                                                 padding, dilation, local_filter, lanes):
    """Strided direct passes read the input laid out by stride phase: the local-memory forward
    kernel copies its planes into phases, the weight gradient reads pad_phases' planes (the
    row-of-taps kernels too, one output or four a work-item; 3x3
    depthwise rows of whole vectors: copies them into local memory itself,
    conv_direct_bwd_filter_local_k3), and the input gradient runs by dx's phases
    (conv_phase_bwd_data) — forward (bias, ReLU), accumulated input gradient and weight gradient
    against float64, the input gradient also against the lane-by-lane kernel it replaces
    (conv_direct_bwd_data), the local weight gradient against the one on pad_phases. (The
    depthwise 3x3 stride-2 forwards conv_depthwise_s2_k3 takes are turned off here: its own test.)"""
    b = lanes_backend(lanes)
    b.conv_algorithm = "direct"
    monkeypatch.setattr(b, "_depthwise_s2", False)
    n, c, h, w = shape
    args = (stride, padding, dilation, groups)
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((o, c // groups) + k).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    y_ref = conv_ref(x, wt, *args) + bias[:, None, None]
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx0, dw0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(wt.shape).astype(np.float32)
    dx_ref, dw_ref = conv_grads_ref(x, wt, dy, *args)
    launches = []
    kernel = b._kernel
    monkeypatch.setattr(b, "_kernel", lambda program, name: (launches.append(name), kernel(program, name))[1])
    ws, dev_x, dev_w, dev_dy = Workspace(), b.from_host(x), b.from_host(wt), b.from_host(dy)
    y, dx, dw = b.empty(y_ref.shape), b.from_host(dx0), b.from_host(dw0)
    b.conv2d(dev_x, dev_w, y, *args, ws, bias=b.from_host(bias), relu=True)
    b.conv2d_backward_data(dev_dy, dev_w, dx, *args, True, ws)
    b.conv2d_backward_filter(dev_x, dev_dy, dw, *args, True, ws)
    # the local kernel's phases, or (4 outputs a group on 8 lanes) conv_direct_fwd4_phased's
    assert any(name.startswith("conv_direct_fwd") and ("_local" in name or "_phased" in name)
               for name in launches), launches
    assert "conv_phase_bwd_data" in launches and "conv_direct_bwd_data" not in launches, launches
    local = lanes in local_filter   # the lanes where the local weight gradient takes the layer
    assert ("conv_direct_bwd_filter_local_k3" in launches) == local, launches
    assert ("pad_phases" in launches) != local, launches
    np.testing.assert_allclose(b.to_host(y), np.maximum(y_ref, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(dx), dx0 + dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(dw), dw0 + dw_ref, rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(b, "_data_phases", False)
    monkeypatch.setattr(b, "_filter_local", False)
    launches.clear()
    lane_by_lane, on_copy = b.from_host(dx0), b.from_host(dw0)
    b.conv2d_backward_data(dev_dy, dev_w, lane_by_lane, *args, True, ws)
    b.conv2d_backward_filter(dev_x, dev_dy, on_copy, *args, True, ws)
    assert "conv_direct_bwd_data" in launches and "pad_phases" in launches, launches
    np.testing.assert_allclose(b.to_host(dx), b.to_host(lane_by_lane), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.to_host(dw), b.to_host(on_copy), rtol=1e-5, atol=1e-4)


def test_winograd_5x5_only_for_wide_undilated_ungrouped_layers(ocl):
    """"auto" takes F(2x2, 5x5) for both ops of stride-1 5x5 layers of 32 input and output
    channels and 256 output pixels on 8-lane devices; narrower, smaller, dilated, grouped or
    strided layers keep the direct kernel."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)

    def chosen(c, o, size=32, s=1, d=1, groups=1):
        p = 2 * d
        ho = (size + 2 * p - 4 * d - 1) // s + 1
        geo = (2, c, size, size, o, 5, 5, ho, ho, s, s, p, p, d, d)
        return b._forward_algorithm(geo, groups) == "winograd", b._use_winograd(geo, groups, "data")

    assert chosen(32, 32) == (True, True) and chosen(64, 48) == (True, True)
    for narrow in (chosen(16, 32), chosen(32, 16), chosen(32, 32, size=15), chosen(32, 32, d=2),
                   chosen(32, 32, groups=2), chosen(32, 32, s=2)):
        assert narrow == (False, False)


def test_winograd_3x3_chosen_from_32_channels_and_64_pixels(ocl):
    """"auto" takes F(2x2, 3x3) for both ops of stride-1 3x3 layers of 32 input and output
    channels and 8x8 planes (the ResNet's and the CIFAR CNN's) on 8-lane devices; 16 channels
    (the ResNet's 32x32 stage), smaller planes, grouped or strided layers keep theirs."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)

    def chosen(c, o, size=8, s=1, groups=1):
        ho = (size - 1) // s + 1
        geo = (2, c, size, size, o, 3, 3, ho, ho, s, s, 1, 1, 1, 1)
        return b._forward_algorithm(geo, groups) == "winograd", b._use_winograd(geo, groups, "data")

    assert chosen(32, 32) == (True, True) and chosen(64, 128) == (True, True) and chosen(32, 64, 16) == (True, True)
    for narrow in (chosen(16, 16, 32), chosen(16, 32), chosen(32, 16), chosen(32, 32, size=7),
                   chosen(32, 32, groups=2), chosen(32, 32, s=2)):
        assert narrow == (False, False)


def test_8x8_weight_gradients_by_rows_of_one_vector(ocl, lanes_backend):
    """On 8-lane devices the row-of-taps weight gradient with several outputs per work-item
    takes rows of one vector (the ResNet's and the CIFAR CNN's 8x8 layers, up to 128 outputs);
    a work-item per output still needs pairs of vectors (depthwise), 256 outputs keep the GEMM."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)

    def geo(c, o, size=8):
        return (32, c, size, size, o, 3, 3, size, size, 1, 1, 1, 1, 1, 1)

    assert b._use_direct(geo(64, 64), 1, "filter") and b._use_direct(geo(64, 128), 1, "filter")
    assert not b._use_direct(geo(64, 256), 1, "filter")
    assert not b._filter_by_rows(geo(64, 64), 64)   # depthwise: one output per work-item
    assert not b._filter_by_rows(geo(64, 64, size=12), 1)   # 12 is no whole number of vectors


def test_strided_thin_layers_take_the_gemm_on_8_lanes(ocl, rng):
    """The ResNet's 1x1 stride-2 projections (inner dimension 16 and 32, at least 12 outputs)
    run the implicit GEMM forward and its phases backward on 8-lane devices, not the direct
    kernels; the input gradient (added to dx, as the residual block does) against float64."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)
    geo = (2, 16, 12, 12, 32, 1, 1, 6, 6, 2, 2, 0, 0, 1, 1)
    assert not b._use_direct(geo, 1, "forward") and not b._use_direct(geo, 1, "data")
    assert b._forward_algorithm(geo, 1) == "implicit"
    assert b._use_direct(geo[:9] + (1, 1) + geo[11:], 1, "forward")   # stride 1 keeps the rule
    x = rng.standard_normal((2, 16, 12, 11)).astype(np.float32)
    w = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
    dy = rng.standard_normal((2, 32, 6, 6)).astype(np.float32)
    dx0 = rng.standard_normal(x.shape).astype(np.float32)
    args = ((2, 2), (0, 0), (1, 1), 1)
    dx_ref, _ = conv_grads_ref(x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64), *args)
    y, dx = b.empty(dy.shape), b.from_host(dx0)
    b.conv2d(b.from_host(x), b.from_host(w), y, *args)
    b.conv2d_backward_data(b.from_host(dy), b.from_host(w), dx, *args, True)
    np.testing.assert_allclose(b.to_host(y), conv_ref(x.astype(np.float64), w.astype(np.float64), *args),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.to_host(dx), dx_ref + dx0, rtol=1e-5, atol=1e-5)


def test_16_lane_gemm_runs_the_convolutions_at_8_lanes(lanes_backend):
    """CONV_LANES: a 16-lane (AVX-512) GEMM keeps its tiles while the convolutions take the
    8-lane kernels and rules (Winograd 3x3 and 5x5, the stride-2 phases); asked explicitly,
    16-lane convolutions keep their own rules."""
    from juicepy.backends.opencl import OpenCLBackend
    from juicepy.backends.opencl.programs import CONV_LANES
    assert CONV_LANES == {16: 8, 8: 8}
    b = lanes_backend(16, conv_vector_width=None)
    assert b._gemm_tiles["VW"] == 16 and b._conv_vec == 8
    # each where its kernels fit the device's local memory at the 16-lane tiles
    fits = b.kernel_fits
    assert (b._forward_algorithm((2, 32, 32, 32, 32, 5, 5, 32, 32, 1, 1, 2, 2, 1, 1), 1) == "winograd") == fits["winograd5"]
    assert (b._forward_algorithm((2, 64, 16, 16, 64, 3, 3, 16, 16, 1, 1, 1, 1, 1, 1), 1) == "winograd") == fits["winograd3"]
    assert (b._forward_algorithm((2, 64, 32, 32, 128, 3, 3, 16, 16, 2, 2, 1, 1, 1, 1), 1) == "s2") == fits["s2_conv"]
    assert lanes_backend(16)._conv_vec == 16
    with pytest.raises(ValueError, match="conv_vector_width must be 8 or 16, got 4"):
        OpenCLBackend(b.device, conv_vector_width=4)


@pytest.mark.parametrize("local", [True, False], ids=["local", "padded"])
def test_16_lane_gemm_runs_direct_forwards_of_whole_16_lane_rows_at_16_lanes(lanes_backend, rng, monkeypatch, local):
    """On a 16-lane GEMM the direct forward kernel (and stride-1 input gradient) takes the
    16-lane build (conv.cl:vec16) where the output rows are whole 16-lane vectors, the
    8-lane one elsewhere (LeNet's 28- and 10-wide rows); both against the float64 loops."""
    from juicepy.backends.opencl import spatial

    if not local:
        monkeypatch.setattr(spatial, "DIRECT_LOCAL_MAX_BYTES", 0)
    b = lanes_backend(16, conv_vector_width=None)
    assert b._direct_forward_lanes((2, 8, 32, 32, 8, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1), 4) == 16
    assert b._direct_forward_lanes((2, 1, 28, 28, 6, 5, 5, 28, 28, 1, 1, 2, 2, 1, 1), 1) == 8
    assert lanes_backend(8)._direct_forward_lanes((2, 8, 32, 32, 8, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1), 4) == 8
    # depthwise "same" layers run on the plane kernels at the convolutions' own lanes, whole rows or not
    depthwise = (2, 8, 32, 32, 8, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1)
    assert b._depthwise_plane_layer(depthwise, 8) and b._direct_forward_lanes(depthwise, 8) == 8
    assert lanes_backend(16)._direct_forward_lanes(depthwise, 8) == 16
    for xs, o, groups in (((2, 16, 5, 32), 16, 4), ((2, 8, 6, 18), 8, 2)):
        x = rng.standard_normal(xs).astype(np.float32)
        wt = rng.standard_normal((o, xs[1] // groups, 3, 3)).astype(np.float32)
        y_ref = conv_ref(x, wt, (1, 1), (1, 1), (1, 1), groups)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        dx_ref, _ = conv_grads_ref(x, wt, dy, (1, 1), (1, 1), (1, 1), groups)
        geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, (1, 1), (1, 1), (1, 1), groups, "conv2d")
        assert b._forward_algorithm(geo, groups) == "direct"
        ws = Workspace()
        y, dx = b.empty(y_ref.shape), b.empty(x.shape)
        b.conv2d(b.from_host(x), b.from_host(wt), y, 1, 1, 1, groups, ws)
        b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, 1, 1, 1, groups, False, ws)
        np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("accumulate", [False, True])
def test_16_lane_gemm_takes_16_lane_weight_gradients_by_rows(lanes_backend, rng, accumulate):
    """On a 16-lane GEMM with 8-lane convolutions the row-of-taps weight gradient of rows of
    whole 16-lane vectors runs the 16-lane build with FILTER_ROW_OUTS_16_LANES outputs per
    work-item (3x3: 8, 5x5: 4; conv_direct_bwd_filter_k3_o8, _k5_o4), other rows the 8-lane
    one; both against the float64 loops."""
    b = lanes_backend(16, conv_vector_width=None)
    build = b._direct_filter_build
    assert build((2, 8, 32, 32, 16, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1), 1, True) == (16, 8)
    assert build((2, 8, 32, 32, 8, 5, 5, 32, 32, 1, 1, 2, 2, 1, 1), 1, True) == (16, 4)
    assert build((2, 8, 8, 8, 16, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1), 1, True) == (8, 4)      # 8-wide rows
    assert build((2, 8, 32, 32, 12, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1), 1, True) == (8, 4)  # 12 outputs
    assert lanes_backend(8)._direct_filter_build((2, 8, 32, 32, 16, 3, 3, 32, 32, 1, 1, 1, 1, 1, 1), 1, True) == (8, 4)
    for xs, (o, k), pad, dil, groups in (((2, 6, 5, 32), (16, 3), 1, 1, 2), ((2, 3, 6, 16), (8, 5), 2, 1, 1),
                                         ((1, 4, 6, 32), (8, 3), 2, 2, 1)):
        x = rng.standard_normal(xs).astype(np.float32)
        wt = rng.standard_normal((o, xs[1] // groups, k, k)).astype(np.float32)
        y_ref = conv_ref(x, wt, (1, 1), (pad, pad), (dil, dil), groups)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        _, dw_ref = conv_grads_ref(x, wt, dy, (1, 1), (pad, pad), (dil, dil), groups)
        geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, (1, 1), (pad, pad), (dil, dil), groups, "conv2d")
        assert b._use_direct(geo, groups, "filter") and b._direct_filter_build(geo, groups, True)[0] == 16
        dw0 = rng.standard_normal(wt.shape).astype(np.float32)
        dw = b.from_host(dw0)
        b.conv2d_backward_filter(b.from_host(x), b.from_host(dy), dw, 1, pad, dil, groups, accumulate, Workspace())
        np.testing.assert_allclose(b.to_host(dw), dw_ref + (dw0 if accumulate else 0.0), rtol=1e-4, atol=1e-4)


def test_winograd_5x5_not_chosen_on_16_lanes(lanes_backend):
    """Unmeasured on 16-lane convolutions: they keep the direct kernel (forced "winograd" runs there)."""
    b = lanes_backend(16)
    geo = (2, 32, 32, 32, 32, 5, 5, 32, 32, 1, 1, 2, 2, 1, 1)
    assert b._forward_algorithm(geo, 1) != "winograd" and not b._use_winograd(geo, 1, "data")


def test_stride_2_phase_winograd_only_for_wide_undilated_ungrouped_3x3(ocl):
    """"auto" takes the phase Winograd for 3x3 stride-2 layers of S2_MIN_CHANNELS input and
    output channels on 8-lane devices; narrower, dilated, grouped or other kernels keep theirs."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)

    def algorithm(c, o, k=3, s=2, d=1, groups=1):
        return b._forward_algorithm((2, c, 32, 32, o, k, k, 16, 16, s, s, 1, 1, d, d), groups)

    assert algorithm(64, 128) == "s2" and algorithm(32, 64) == "s2" and algorithm(64, 32) == "s2"
    assert algorithm(64, 128, groups=2) != "s2"
    assert algorithm(16, 128) != "s2" and algorithm(64, 16) != "s2" and algorithm(16, 32) != "s2"
    assert algorithm(64, 128, d=2) != "s2" and algorithm(64, 128, k=5) != "s2" and algorithm(64, 128, s=1) != "s2"


def test_stride_2_phase_winograd_weight_gradient_where_the_forward_takes_it(ocl, rng):
    """The weight gradient of a layer whose forward "auto" runs as the phase Winograd takes its
    adjoint (_s2_filter) on 8-lane devices; a 16-channel layer keeps its GEMM."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)
    taken = []
    real = b._s2_filter
    b._s2_filter = lambda *args: taken.append(args[3][1]) or real(*args)
    for c in (32, 16):
        x = b.from_host(rng.standard_normal((1, c, 8, 8)).astype(np.float32))
        dy = b.from_host(rng.standard_normal((1, 32, 4, 4)).astype(np.float32))
        b.conv2d_backward_filter(x, dy, b.empty((32, c, 3, 3)), (2, 2), (1, 1), (1, 1), 1)
        assert (b._forward_algorithm((1, c, 8, 8, 32, 3, 3, 4, 4, 2, 2, 1, 1, 1, 1), 1) == "s2") == (c == 32)
    assert taken == ([32] if b.kernel_fits["s2_filter"] else [])


def test_stride_2_phase_winograd_input_gradient_where_the_forward_takes_it(ocl, rng):
    """The input gradient of a layer whose forward "auto" runs as the phase Winograd takes
    _s2_data on 8-lane devices; a 16-channel layer keeps its phase GEMMs."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, vector_width=8)
    taken = []
    real = b._s2_data
    b._s2_data = lambda *args: taken.append(args[3][1]) or real(*args)
    for c in (32, 16):
        w = b.from_host(rng.standard_normal((32, c, 3, 3)).astype(np.float32))
        dy = b.from_host(rng.standard_normal((1, 32, 4, 4)).astype(np.float32))
        b.conv2d_backward_data(dy, w, b.empty((1, c, 8, 8)), (2, 2), (1, 1), (1, 1), 1)
    assert taken == ([32] if b.kernel_fits["s2_data"] else [])


def test_stride_2_phase_winograd_not_on_16_lanes(lanes_backend):
    assert lanes_backend(16)._forward_algorithm((2, 64, 32, 32, 128, 3, 3, 16, 16, 2, 2, 1, 1, 1, 1), 1) != "s2"


def test_stride_2_phase_winograd_steady_state_allocates_nothing(ocl, rng, require_kernels):
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, conv_algorithm="winograd")
    require_kernels(b, "s2_conv", "s2_filter", "s2_data")
    x = b.from_host(rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    w = b.from_host(rng.standard_normal((5, 4, 3, 3)).astype(np.float32))
    y = b.empty((2, 5, 5, 5))
    ws = Workspace()
    args = ((2, 2), (1, 1), (1, 1), 1)
    dw = b.empty((5, 4, 3, 3))
    dx = b.empty((2, 4, 9, 9))
    b.conv2d(x, w, y, *args, ws)
    b.conv2d_backward_filter(x, y, dw, *args, False, ws)
    b.conv2d_backward_data(y, w, dx, *args, False, ws)
    before = b.allocations
    for _ in range(2):
        b.conv2d(x, w, y, *args, ws)
        b.conv2d_backward_filter(x, y, dw, *args, False, ws)
        b.conv2d_backward_data(y, w, dx, *args, True, ws)
    assert b.allocations == before


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, groups: planes of whole vectors (8 and 16 lanes), one image or many per
    # K split, planes past one K slice (NT_BK: 1600 pixels), rows and columns past the micro-tiles
    ((1, 3, 4, 4), 5, 1),
    ((5, 12, 8, 8), 12, 3),
    ((3, 7, 40, 40), 9, 1),
    ((9, 64, 4, 32), 96, 2),
], ids=["batch1", "grouped", "plane-past-slice", "many-images"])
@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_pointwise_weight_gradient_reads_planes_in_place(lanes_backend, rng, case, lanes, accumulate):
    """conv_filter_gemm_pointwise (1x1, stride 1, no padding: dy's and x's planes read where
    they lie) against a float64 reference and against the run-by-run conv_filter_gemm."""
    (n, c, h, w), o, groups = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dy = rng.standard_normal((n, o, h, w)).astype(np.float32)
    dw0 = rng.standard_normal((o, c // groups, 1, 1)).astype(np.float32)
    ref = np.einsum("ngop,ngcp->goc", dy.reshape(n, groups, o // groups, -1).astype(np.float64),
                    x.reshape(n, groups, c // groups, -1).astype(np.float64)).reshape(dw0.shape)
    if accumulate:
        ref = ref + dw0
    results = []
    for in_place in (True, False):
        be = lanes_backend(lanes, conv_algorithm="implicit")
        be.pointwise_filter = in_place
        dw = be.from_host(dw0)
        be.conv2d_backward_filter(be.from_host(x), be.from_host(dy), dw, 1, 0, 1, groups, accumulate, Workspace())
        results.append(be.to_host(dw))
        np.testing.assert_allclose(results[-1], ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-4)


def conv_and_grads(ocl, x, w, dy, stride, padding, dilation, groups):
    """y, dx and dw (host arrays) of one convolution and its gradients on ``ocl``."""
    ws = Workspace()
    y, dx, dw = ocl.empty(dy.shape), ocl.empty(x.shape), ocl.empty(w.shape)
    dev_x, dev_w, dev_dy = ocl.from_host(x), ocl.from_host(w), ocl.from_host(dy)
    ocl.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws)
    ocl.conv2d_backward_data(dev_dy, dev_w, dx, stride, padding, dilation, groups, False, ws)
    ocl.conv2d_backward_filter(dev_x, dev_dy, dw, stride, padding, dilation, groups, False, ws)
    return ocl.to_host(y), ocl.to_host(dx), ocl.to_host(dw)


@pytest.mark.parametrize("case", [
    # (N, C, H, W), (O, kh, kw), stride, padding, dilation, groups: inner dimension past one
    # K slice (256) and outputs past one tile of rows (96), odd widths, several images per tile
    ((3, 40, 7, 9), (100, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 64, 9, 5), (96, 3, 3), (2, 1), (1, 2), (1, 2), 2),
    ((2, 8, 12, 12), (16, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    # stride 2 along rows of 20 outputs: runs gathered 8 at a time, the row's end one by one
    ((2, 8, 11, 41), (16, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((2, 8, 11, 40), (16, 3, 3), (2, 2), (1, 2), (1, 2), 2),
    # pointwise, GEMM tiles inside one image, channels past one K slice
    ((2, 300, 8, 16), (20, 1, 1), (1, 1), (0, 0), (1, 1), 1),
], ids=["k360-m100", "grouped-strided", "5x5", "stride2-rows", "stride2-dilated-grouped", "pointwise-k300"])
def test_larger_convolutions_match_torch(conv_ocl, rng, case):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    ocl = conv_ocl
    xs, (o, kh, kw), stride, padding, dilation, groups = case
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((o, xs[1] // groups, kh, kw)).astype(np.float32)
    xt, wt = torch.tensor(x, dtype=torch.float64, requires_grad=True), torch.tensor(w, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    y, dx, dw = conv_and_grads(ocl, x, w, dy, stride, padding, dilation, groups)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_conv_settings_are_checked(ocl):
    from juicepy.backends.opencl import OpenCLBackend

    with pytest.raises(ValueError, match="conv_algorithm must be one of .*'winograd'"):
        OpenCLBackend(ocl.device, conv_algorithm="fft")
    with pytest.raises(ValueError, match="vector_width must be 8 or 16, got 4"):
        OpenCLBackend(ocl.device, vector_width=4)


def test_conv2d_steady_state_allocates_nothing(ocl, rng):
    x = ocl.from_host(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = ocl.from_host(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    y, dx, dw = ocl.empty((2, 4, 8, 8)), ocl.empty((2, 3, 8, 8)), ocl.empty((4, 3, 3, 3))
    ws = Workspace()
    args = ((1, 1), (1, 1), (1, 1), 1)

    def step():
        ocl.conv2d(x, w, y, *args, ws)
        ocl.conv2d_backward_data(y, w, dx, *args, False, ws)
        ocl.conv2d_backward_filter(x, y, dw, *args, False, ws)

    step()
    before = ocl.allocations
    step()
    step()
    assert ocl.allocations == before


@pytest.mark.parametrize("k", [3, 5])
def test_winograd_steady_state_allocates_nothing(ocl, rng, k, require_kernels):
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device, conv_algorithm="winograd")
    require_kernels(b, "winograd3" if k == 3 else "winograd5")
    x = b.from_host(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    w = b.from_host(rng.standard_normal((5, 4, k, k)).astype(np.float32))
    y, dx = b.empty((2, 5, 8, 8)), b.empty((2, 4, 8, 8))
    ws = Workspace()
    args = ((1, 1), (k // 2, k // 2), (1, 1), 1)

    def step():
        b.conv2d(x, w, y, *args, ws)
        b.conv2d_backward_data(y, w, dx, *args, False, ws)

    step()
    before = b.allocations
    step()
    step()
    assert b.allocations == before


# ---------------------------------------------------------------------- batch norm
def bn_ref(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    var = x64.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x64 - mean.reshape(shape)) * invstd.reshape(shape)
    return xhat * gamma.reshape(shape) + beta.reshape(shape), mean, var, invstd, xhat


def test_batch_norm_without_affine_or_input_gradient(ocl, rng):
    shape = (3, 2, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, *_ = bn_ref(x, np.ones(2), np.zeros(2), 1e-5)
    out, mean, invstd = ocl.empty(shape), ocl.empty((2,)), ocl.empty((2,))
    dev_x = ocl.from_host(x)
    ocl.batch_norm_train(dev_x, None, None, out, mean, invstd, None, None, 0.1, 1e-5)
    np.testing.assert_allclose(ocl.to_host(out), y_ref, rtol=1e-4, atol=1e-5)
    dg = ocl.zeros((2,))
    dy = rng.standard_normal(shape).astype(np.float32)
    ocl.batch_norm_backward(dev_x, ocl.from_host(dy), None, mean, invstd, None, dg, None)
    np.testing.assert_allclose(ocl.to_host(dg), (dy * y_ref).sum(axis=(0, 2)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("by_planes", [True, False], ids=["plane-per-item", "element-per-item"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_batch_norm_passes_with_a_fused_relu_on_both_grids(ocl, rng, monkeypatch, by_planes, accumulate):
    """bn_apply / bn_bwd_data run a work-item per plane on CPU drivers and one per element
    elsewhere (GPUs); both grids, the ReLU applied forward and taken back as dy is read."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device)
    monkeypatch.setattr(b, "_bn_by_planes", lambda s: by_planes)
    shape = (3, 4, 5, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    dy, dx0 = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    y_ref, _, _, invstd, xhat = bn_ref(x, gamma, beta, 1e-5)
    g = np.where(y_ref > 0, dy, 0.0)
    bshape, count = (1, -1, 1, 1), x.size // 4
    sum_g, sum_gx = g.sum(axis=(0, 2, 3)), (g * xhat).sum(axis=(0, 2, 3))
    dx_ref = (gamma * invstd / count).reshape(bshape) * (count * g - sum_g.reshape(bshape)
                                                          - xhat * sum_gx.reshape(bshape))
    out, mean, inv, dg, db = b.empty(shape), b.empty((4,)), b.empty((4,)), b.zeros((4,)), b.zeros((4,))
    dev_x, dx = b.from_host(x), b.from_host(dx0)
    b.batch_norm_train(dev_x, b.from_host(gamma), b.from_host(beta), out, mean, inv, None, None, 0.1, 1e-5,
                       relu=True)
    b.batch_norm_backward(dev_x, b.from_host(dy), b.from_host(gamma), mean, inv, dx, dg, db, accumulate,
                          relu_out=out)
    np.testing.assert_allclose(b.to_host(out), np.maximum(y_ref, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.to_host(dx), (dx0 if accumulate else 0) + dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(dg), sum_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(db), sum_g, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------- torch parity
def test_conv_pool_batch_norm_match_torch(ocl, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    F = torch.nn.functional
    x = rng.standard_normal((2, 4, 11, 9)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    stride, padding, dilation, groups = (2, 1), (1, 2), (2, 1), 2
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    y, dx, dw = conv_and_grads(ocl, x, w, dy, stride, padding, dilation, groups)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=1e-4)

    ws, dev_x = Workspace(), ocl.from_host(x)
    pooled, idx = F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    out, arg = ocl.empty(tuple(pooled.shape)), ocl.empty(tuple(pooled.shape), np.int32)
    ocl.max_pool2d(dev_x, out, arg, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(ocl.to_host(out), pooled.numpy())
    np.testing.assert_array_equal(ocl.to_host(arg), idx.numpy())
    for include in (True, False):
        avg = F.avg_pool2d(torch.tensor(x), 3, 2, 1, count_include_pad=include)
        got = ocl.empty(tuple(avg.shape))
        ocl.avg_pool2d(dev_x, got, (3, 3), (2, 2), (1, 1), include)
        np.testing.assert_allclose(ocl.to_host(got), avg.numpy(), rtol=1e-5, atol=1e-6)

    gamma, beta = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    bn = F.batch_norm(torch.tensor(x), rmt, rvt, torch.tensor(gamma), torch.tensor(beta), training=True,
                      momentum=0.1, eps=1e-5)
    dev_rm, dev_rv = ocl.from_host(rm), ocl.from_host(rv)
    out, mean, invstd = ocl.empty(x.shape), ocl.empty((4,)), ocl.empty((4,))
    ocl.batch_norm_train(dev_x, ocl.from_host(gamma), ocl.from_host(beta), out, mean, invstd, dev_rm, dev_rv,
                         0.1, 1e-5, ws)
    np.testing.assert_allclose(ocl.to_host(out), bn.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ocl.to_host(dev_rm), rmt.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ocl.to_host(dev_rv), rvt.numpy(), rtol=1e-5, atol=1e-6)


def test_convolution_with_the_gpu_gemm(ocl, rng):
    """Convolutions on the cooperative GEMM GPUs get (run here on whatever device there is)."""
    from juicepy.backends.opencl import OpenCLBackend

    gpu_style = OpenCLBackend(ocl.device, gemm_variant="cooperative")
    stride, padding, dilation, groups = (2, 1), (1, 2), (1, 2), 2
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    y_ref = conv_ref(x, w, stride, padding, dilation, groups)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref = conv_grads_ref(x, w, dy, stride, padding, dilation, groups)
    ws = Workspace()
    dev_x, dev_w, dev_dy = (gpu_style.from_host(a) for a in (x, w, dy))
    y, dx, dw = gpu_style.empty(y_ref.shape), gpu_style.empty(x.shape), gpu_style.empty(w.shape)
    gpu_style.conv2d(dev_x, dev_w, y, stride, padding, dilation, groups, ws)
    gpu_style.conv2d_backward_data(dev_dy, dev_w, dx, stride, padding, dilation, groups, False, ws)
    gpu_style.conv2d_backward_filter(dev_x, dev_dy, dw, stride, padding, dilation, groups, False, ws)
    np.testing.assert_allclose(gpu_style.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_style.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_style.to_host(dw), dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [((3, 6, 14, 14), 16, 5, 0), ((2, 5, 10, 10), 32, 3, 1), ((2, 3, 12, 12), 16, 3, 0)],
                         ids=["lenet-k5-p0", "k3-p1-o32", "k3-p0"])
@pytest.mark.parametrize("epilogue", [False, True], ids=["plain", "bias+residual+relu"])
def test_output_lane_direct_forward_matches_the_reference(ocl, rng, case, epilogue):
    """conv_olanes_* (output channels in the lanes, 10-wide rows), forced on whatever the
    device's lanes, with and without its epilogue, against the float64 loops; both its paths
    (no padding: broadcasts from the input; padding: a zero-filled row)."""
    from juicepy.backends.opencl import OpenCLBackend

    xs, o, k, p = case
    b = OpenCLBackend(ocl.device)
    b._olanes = True
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1], k, k)).astype(np.float32)
    y_ref = conv_ref(x, wt, (1, 1), (p, p), (1, 1), 1)
    geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, (1, 1), (p, p), (1, 1), 1, "conv2d")
    assert b._use_olanes(geo, 1) and y_ref.shape[3] == 10
    kw = {}
    if epilogue:
        bias = rng.standard_normal(o).astype(np.float32)
        res = rng.standard_normal(y_ref.shape).astype(np.float32)
        y_ref = np.maximum(y_ref + bias[None, :, None, None] + res, 0.0)
        kw = {"bias": b.from_host(bias), "residual": b.from_host(res), "relu": True}
    ws = Workspace()
    y = b.empty(y_ref.shape)
    b._conv2d(b.from_host(x), b.from_host(wt), y, geo, 1, ws, "direct",
              kw.get("bias"), (kw.get("residual"), kw.get("relu", False)))
    np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4)


def test_output_lane_direct_forward_rule(lanes_backend):
    """On a 16-lane GEMM the direct forward pass of 10-wide rows, stride 1, one group and
    outputs in runs of 16 takes conv_olanes_* (LeNet's 6 -> 16 layer); not grouped, strided,
    dilated, of 6 outputs or of other widths; and never on an 8-lane GEMM."""
    b = lanes_backend(16, conv_vector_width=None)
    lenet = (2, 6, 14, 14, 16, 5, 5, 10, 10, 1, 1, 0, 0, 1, 1)
    assert b._forward_algorithm(lenet, 1) == "direct" and b._use_olanes(lenet, 1)
    assert b._use_olanes((2, 8, 10, 10, 32, 3, 3, 10, 10, 1, 1, 1, 1, 1, 1), 1)
    assert not b._use_olanes(lenet, 2)
    assert not b._use_olanes((2, 6, 14, 14, 6, 5, 5, 10, 10, 1, 1, 0, 0, 1, 1), 1)
    assert not b._use_olanes((2, 6, 18, 18, 16, 5, 5, 14, 14, 1, 1, 0, 0, 1, 1), 1)
    assert not b._use_olanes((2, 6, 14, 14, 16, 3, 3, 10, 10, 1, 1, 0, 0, 2, 2), 1)
    assert not b._use_olanes((2, 6, 23, 23, 16, 5, 5, 10, 10, 2, 2, 0, 0, 1, 1), 1)
    assert not lanes_backend(8)._use_olanes(lenet, 1)


# --------------------------------------------------------------------- 2x2 pooling of narrow rows
def max_pool_2x2_ref(x):
    """max_pool2d's 2x2 stride-2 windows in float64 as a scan in torch's order (top left, top right,
    bottom left, bottom right): a later value wins where larger or NaN, so the first maximum and the
    last NaN are kept. Returns (values, flat indices in the input plane)."""
    n, c, h, w = x.shape
    y, arg = np.zeros((n, c, h // 2, w // 2)), np.zeros((n, c, h // 2, w // 2), np.int64)
    for i in range(h // 2):
        for j in range(w // 2):
            taps = [(2 * i, 2 * j), (2 * i, 2 * j + 1), (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)]
            best = x[:, :, 2 * i, 2 * j].astype(np.float64)
            at = np.full((n, c), 2 * i * w + 2 * j)
            for r, q in taps[1:]:
                v = x[:, :, r, q].astype(np.float64)
                take = (v > best) | np.isnan(v)
                best, at = np.where(take, v, best), np.where(take, r * w + q, at)
            y[:, :, i, j], arg[:, :, i, j] = best, at
    return y, arg


@pytest.mark.parametrize("shape", [(1, 1, 2, 6), (2, 3, 4, 8), (1, 16, 10, 10), (3, 5, 8, 8), (1, 4, 6, 14),
                                   (2, 2, 6, 18), (1, 3, 10, 24), (1, 6, 28, 28), (2, 4, 4, 32), (1, 2, 4, 34),
                                   (1, 3, 4, 4), (2, 1, 6, 2)], ids=str)
@pytest.mark.parametrize("vectors", [True, False], ids=["vectors", "rule"])
def test_max_pool_2x2_narrow_rows_ties_nan_and_infinities(ocl, rng, shape, vectors):
    """max_pool_2x2_v4 / _v8 / _v16 (rows of 3 to 16 outputs in one vector; forced on where
    ``vectors``, else the device's rule) against the float64 scan: values drawn from a few levels
    so windows tie, with NaNs and -inf among them; the outputs around the pooled map (a view of a
    bigger buffer) stay untouched."""
    from juicepy.backends.opencl import OpenCLBackend

    b = OpenCLBackend(ocl.device)
    if vectors:
        b._pool_vec = True
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    x[rng.random(shape) < 0.05] = -np.inf
    y_ref, arg_ref = max_pool_2x2_ref(x)
    size = y_ref.size
    out_base, arg_base = b.from_host(np.full(size + 40, 7.0, np.float32)), b.from_host(np.full(size + 40, -9, np.int32))
    out, arg = b.flat_view(out_base, 20, y_ref.shape), b.flat_view(arg_base, 20, y_ref.shape)
    b.max_pool2d(b.from_host(x), out, arg, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(b.to_host(out), y_ref.astype(np.float32))
    np.testing.assert_array_equal(b.to_host(arg), arg_ref)
    got_out, got_arg = b.to_host(out_base), b.to_host(arg_base)
    assert (got_out[:20] == 7).all() and (got_out[20 + size:] == 7).all()
    assert (got_arg[:20] == -9).all() and (got_arg[20 + size:] == -9).all()


def test_max_pool_2x2_vector_rule(lanes_backend):
    """CPU devices, 16-lane and 8-lane (AVX2) alike, take the vector builds for rows of 3 to 16
    outputs, the smallest vector holding the row; other rows keep their kernels."""
    b8 = lanes_backend(8)
    if not b8.is_cpu:
        pytest.skip("the vector pooling builds are chosen on CPU devices only")
    want = [0, 0, 4, 4, 8, 8, 16, 16, 16, 0, 0]
    assert [b8._pool_lanes(wo) for wo in (1, 2, 3, 4, 5, 8, 9, 14, 16, 17, 32)] == want
    b8._pool_vec = False  # the A/B switch
    assert all(b8._pool_lanes(wo) == 0 for wo in range(1, 40))
    b16 = lanes_backend(16, conv_vector_width=8)
    assert [b16._pool_lanes(wo) for wo in (1, 2, 3, 4, 5, 8, 9, 14, 16, 17, 32)] == want


def test_vector_sums_of_batch_norm_on_cpu_drivers_only(ocl):
    """norm.cl's VEC_SUMS (the per-channel sums in float8 vectors) is built for CPU drivers only."""
    assert ocl._programs._defines["norm.cl"] == ({"VEC_SUMS": 1} if ocl.is_cpu else {})


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 8, 8), (2, 4, 3, 2), (4, 3, 37), (2, 2, 1)],
                         ids=["tail", "whole", "short", "3d", "single"])
@pytest.mark.parametrize("relu", [False, True])
def test_vector_sums_of_batch_norm_give_the_same_bits(ocl, rng, shape, relu):
    """With and without norm.cl's VEC_SUMS the per-channel reductions (bn_stats, bn_bwd_reduce
    with and without the fused ReLU, bn_sums) add the same terms in the same order: equal bit
    for bit, planes with and without a tail past the last eight values, and to the float64
    reference."""
    from juicepy.backends.opencl import OpenCLBackend

    scalar = OpenCLBackend(ocl.device)
    scalar._programs._defines["norm.cl"] = {}
    vector = OpenCLBackend(ocl.device)
    vector._programs._defines["norm.cl"] = {"VEC_SUMS": 1}
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    y_ref, mean_ref, var_ref, invstd_ref, xhat = bn_ref(x, gamma, beta, 1e-5)
    axes = (0,) + tuple(range(2, x.ndim))
    g = np.where(y_ref > 0, dy, 0.0) if relu else dy.astype(np.float64)
    shift = rng.standard_normal(c).astype(np.float32)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    dev = (x - shift.reshape(bshape)).astype(np.float64)
    results = []
    for b in (scalar, vector):
        out, mean, inv, dg, db = b.empty(shape), b.empty((c,)), b.empty((c,)), b.zeros((c,)), b.zeros((c,))
        rm, rv = b.from_host(np.zeros(c, np.float32)), b.from_host(np.ones(c, np.float32))
        dev_x = b.from_host(x)
        b.batch_norm_train(dev_x, b.from_host(gamma), b.from_host(beta), out, mean, inv, rm, rv, 0.1, 1e-5,
                           relu=relu)
        b.batch_norm_backward(dev_x, b.from_host(dy), b.from_host(gamma), mean, inv, None, dg, db,
                              relu_out=out if relu else None)
        sums = b.empty((2 * c,))
        b.batch_norm_sums(dev_x, b.from_host(shift), sums)
        results.append([b.to_host(a) for a in (mean, inv, rm, rv, dg, db, sums)])
    for got_scalar, got_vector in zip(*results):
        np.testing.assert_array_equal(got_vector, got_scalar)
    mean, inv, rm, rv, dg, db, sums = results[1]
    count = x.size // c
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inv, invstd_ref, rtol=1e-4)
    np.testing.assert_allclose(rm, 0.1 * mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * var_ref * count / max(count - 1, 1), rtol=1e-5)
    np.testing.assert_allclose(dg, (g * xhat).sum(axis=axes), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, g.sum(axis=axes), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sums, np.concatenate([dev.sum(axis=axes), (dev * dev).sum(axis=axes)]),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    # (N, C, H, W), (O, kh, kw), padding, groups, epilogue: more outputs than one tile of rows
    # (BM = 96) in one row of tiles; 128 outputs on 8-row panels (fewer padded rows than 12-row
    # ones), 130 on 12-row ones with the last panel part padding; a 3x3 layer (K = 144, one
    # slice); two groups of 100; bias, residual and ReLU in the stores; 520 outputs: past
    # WHOLE_ROWS_MAX, rows of tiles as before
    ((4, 24, 16, 16), (128, 1, 1), 0, 1, "bias"),
    ((4, 20, 16, 16), (130, 1, 1), 0, 1, "bias+residual+relu"),
    ((4, 16, 16, 16), (150, 3, 3), 1, 1, "relu"),
    ((4, 40, 16, 16), (200, 1, 1), 0, 2, "bias"),
    ((4, 8, 16, 16), (520, 1, 1), 0, 1, "none"),
    # the input gradient's 120 channels in one row of tiles (the forward's 64 outputs: one tile)
    ((4, 120, 16, 16), (64, 1, 1), 0, 1, "bias"),
], ids=["o128-mr8", "o130-epilogue", "3x3-o150", "grouped-o100", "o520-past-max", "dx-c120"])
def test_implicit_gemm_one_row_of_tiles(lanes_backend, rng, case):
    """conv_gemm with all of a group's outputs in each work-group's tile (gemm.py's
    WHOLE_ROWS_MAX: the forward pass and the input gradient of layers of more than 96 outputs
    or channels) against a float64 reference, and equal bit for bit to rows of tiles (the same
    products added in the same order per output)."""
    from juicepy.backends.opencl import gemm as gemm_mod

    xs, (o, kh, kw), p, groups, epi = case
    n, c, h, wd = xs
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal((o, c // groups, kh, kw)) / np.sqrt(c * kh * kw)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    residual = rng.standard_normal((n, o, h, wd)).astype(np.float32)
    dy = rng.standard_normal((n, o, h, wd)).astype(np.float32)
    ref = conv_ref(x, w, (1, 1), (p, p), (1, 1), groups) if kh > 1 or groups > 1 else \
        np.einsum("ncp,oc->nop", x.reshape(n, c, -1).astype(np.float64),
                  w.reshape(o, c).astype(np.float64)).reshape(n, o, h, wd)
    if "bias" in epi:
        ref = ref + bias.astype(np.float64)[None, :, None, None]
    if "residual" in epi:
        ref = ref + residual
    if "relu" in epi:
        ref = np.maximum(ref, 0.0)
    dx_ref, _ = conv_grads_ref(x, w, dy, (1, 1), (p, p), (1, 1), groups) if kh > 1 or groups > 1 else \
        (np.einsum("nop,oc->ncp", dy.reshape(n, o, -1).astype(np.float64),
                   w.reshape(o, c).astype(np.float64)).reshape(xs), None)
    results = []
    for whole in (True, False):
        be = lanes_backend(16, conv_algorithm="implicit")
        be._whole_rows = whole
        grids = []
        real = be._kernel

        def spy(filename, name, real=real, grids=grids):
            kernel = real(filename, name)
            if name != "conv_gemm":
                return kernel
            return lambda queue, grid, *args: grids.append((filename, grid)) or kernel(queue, grid, *args)

        be._kernel = spy
        ws = Workspace()
        y, dx = be.empty((n, o, h, wd)), be.empty(xs)
        be.conv2d(be.from_host(x), be.from_host(w), y, (1, 1), (p, p), (1, 1), groups, ws,
                  bias=be.from_host(bias) if "bias" in epi else None, relu="relu" in epi,
                  residual=be.from_host(residual) if "residual" in epi else None)
        be.conv2d_backward_data(be.from_host(dy), be.from_host(w), dx, (1, 1), (p, p), (1, 1), groups, False, ws)
        results.append((be.to_host(y), be.to_host(dx)))
        np.testing.assert_allclose(results[-1][0], ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(results[-1][1], dx_ref, rtol=1e-4, atol=1e-4)
        bm = be._gemm_tiles["BM"]
        for launches, rows in ((grids[:groups], o // groups), (grids[groups:], c // groups if kh == 1 else 0)):
            if rows:   # (a 3x3 layer's input gradient has K past one slice: rows of tiles)
                one_row = rows <= bm or (whole and rows <= gemm_mod.WHOLE_ROWS_MAX)
                assert [g[1] == 1 for _, g in launches] == [one_row] * groups
                if whole and rows == 128:
                    assert [f for f, _ in launches] == ["gemm.cl:mr_alt"] * groups
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, groups, padding: rows of two whole 16-lane vectors (the ResNet's 16 -> 16
    # 32x32 layer, smaller), three (the second block's last vector wholly past the row), a
    # group of 8 outputs, padding 0 (no zero rows) and 2 (past the kernel)
    ((2, 5, 6, 32), 16, 1, 1),
    ((1, 4, 5, 48), 8, 1, 1),
    ((2, 16, 4, 32), 16, 2, 1),
    ((1, 3, 7, 34), 16, 1, 0),
    ((1, 3, 3, 30), 8, 1, 2),
])
@pytest.mark.parametrize("local", [True, False], ids=["local", "padded"])
def test_eight_output_direct_forward_on_16_lanes(lanes_backend, rng, monkeypatch, case, local):
    """conv_direct_fwd8_local_u2_k3 / conv_direct_fwd8_u2_k3 (16 accumulators: 8 output planes
    times 2 vectors of a row) take the 16-lane direct forward pass and stride-1 input gradient
    of 3x3 layers with rows of at least two vectors and outputs per group in runs of 8: with the
    bias and the epilogue (residual, ReLU), accumulated, and the input gradient against the
    float64 loops; the sums keep conv_direct_fwd4's order, so its results are bit for bit the
    same as with the 4-output build (_direct8 = False)."""
    from juicepy.backends.opencl import spatial

    if not local:
        monkeypatch.setattr(spatial, "DIRECT_LOCAL_MAX_BYTES", 0)
    xs, o, groups, p = case
    b = lanes_backend(16, conv_algorithm="direct", conv_vector_width=None)
    four = lanes_backend(16, conv_algorithm="direct", conv_vector_width=None)
    four._direct8 = False
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal((o, xs[1] // groups, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    y_ref = conv_ref(x, wt, (1, 1), (p, p), (1, 1), groups)
    assert y_ref.shape[3] % 16 == 0 and y_ref.shape[3] >= 32
    res = rng.standard_normal(y_ref.shape).astype(np.float32)
    y0 = rng.standard_normal(y_ref.shape).astype(np.float32)
    launched = []
    real = b._kernel
    b._kernel = lambda program, name: launched.append((program, name)) or real(program, name)
    ws = Workspace()
    y = b.empty(y_ref.shape)
    b.conv2d(b.from_host(x), b.from_host(wt), y, 1, p, 1, groups, ws, bias=b.from_host(bias),
             residual=b.from_host(res), relu=True)
    y_host = b.to_host(y)
    name = "conv_direct_fwd8" + ("_local" if local else "") + "_u2_k3"
    assert ("conv.cl:vec16", name) in launched
    np.testing.assert_allclose(y_host, np.maximum(y_ref + bias[:, None, None] + res, 0.0), rtol=1e-4, atol=1e-4)
    y4 = four.empty(y_ref.shape)
    four.conv2d(four.from_host(x), four.from_host(wt), y4, 1, p, 1, groups, Workspace(), bias=four.from_host(bias),
                residual=four.from_host(res), relu=True)
    np.testing.assert_array_equal(y_host, four.to_host(y4))
    # accumulated into y0 through the geometry's own entry (conv2d sets its output)
    geo = b._conv_geometry(x.shape, wt.shape, y_ref.shape, (1, 1), (p, p), (1, 1), groups, "conv2d")
    ya = b.from_host(y0)
    b._direct_forward(b.from_host(x), b.from_host(wt), ya, geo, groups, False, True, ws)
    np.testing.assert_allclose(b.to_host(ya), y_ref + y0, rtol=1e-4, atol=1e-4)
    if p == 1 and xs[1] // groups % 8 == 0:   # the input gradient: the roles of C and O swap
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        dx_ref, _ = conv_grads_ref(x, wt, dy, (1, 1), (1, 1), (1, 1), groups)
        launched.clear()
        dx = b.empty(x.shape)
        b.conv2d_backward_data(b.from_host(dy), b.from_host(wt), dx, 1, 1, 1, groups, False, ws)
        assert ("conv.cl:vec16", name) in launched
        np.testing.assert_allclose(b.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)


def test_eight_output_direct_forward_rule():
    """direct_outputs: 8 only for 16 lanes, 3x3, rows of two or more vectors and runs of 8
    outputs; 4 (or 6, 1) elsewhere as before."""
    from juicepy.backends.opencl.spatial import direct_outputs

    assert direct_outputs(16, 16, 3, 2) == 8 and direct_outputs(8, 16, 3, 3) == 8
    assert direct_outputs(16, 16, 3, 1) == 4 and direct_outputs(16, 16, 5, 2) == 4 and direct_outputs(16, 16, 0, 2) == 4
    assert direct_outputs(12, 16, 3, 2) == 4 and direct_outputs(16, 8, 3, 2) == 4 and direct_outputs(6, 8) == 6
    assert direct_outputs(6, 16, 3, 2) == 1


@pytest.mark.parametrize("batch", [1, 3])
def test_16_lane_gemm_takes_the_phase_winograd_for_narrow_strided_forwards(lanes_backend, rng, batch):
    """On a 16-lane GEMM "auto" runs the 3x3 stride-2 forward pass as the phase Winograd from
    S2_FORWARD_MIN_CHANNELS_16_LANES channels (the ResNet's 16 -> 32 layer; its weight and input
    gradients keep theirs), with the inference batch norm folded in and the ReLU, against the
    float64 loops; 8 channels keep the phase-plane kernels."""
    from juicepy.backends.base import ConvNorm
    from juicepy.backends.opencl.spatial import S2_FORWARD_MIN_CHANNELS_16_LANES

    assert S2_FORWARD_MIN_CHANNELS_16_LANES == 16
    b = lanes_backend(16, conv_vector_width=None)
    geo = (batch, 16, 32, 32, 32, 3, 3, 16, 16, 2, 2, 1, 1, 1, 1)
    assert b._forward_algorithm(geo, 1) == "s2"
    assert not b._use_s2(geo, 1, "filter") and not b._use_s2(geo, 1, "data")
    assert b._forward_algorithm((batch, 8, 32, 32, 32, 3, 3, 16, 16, 2, 2, 1, 1, 1, 1), 1) != "s2"
    assert lanes_backend(8)._forward_algorithm(geo, 1) != "s2"
    b._s2_narrow = False
    assert b._forward_algorithm(geo, 1) != "s2"
    b._s2_narrow = None
    x = rng.standard_normal((batch, 16, 32, 32)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(32).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 3.0, 32).astype(np.float32)
    y_ref = conv_ref(x, wt, (2, 2), (1, 1), (1, 1), 1)
    y_ref = np.maximum((y_ref - mean[:, None, None]) / np.sqrt(var + 1e-5)[:, None, None] * gamma[:, None, None]
                       + beta[:, None, None], 0.0)
    taken = []
    real = b._s2_forward
    b._s2_forward = lambda *args, **kwargs: taken.append(1) or real(*args, **kwargs)
    y = b.empty(y_ref.shape)
    b.conv2d(b.from_host(x), b.from_host(wt), y, 2, 1, 1, 1, Workspace(),
             norm=ConvNorm(*(b.from_host(a) for a in (gamma, beta, mean, var)), 1e-5), relu=True)
    assert taken
    np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    # (N, C, H, W), O, stride, whether the weights are read in place: 1x1 convolutions without
    # padding (conv_gemm copies each k's runs from places worked out once, SUBSAMPLE_STAGE):
    # the ResNet shortcut's stride 2 on even planes (runs of 8, one vector each); odd planes of
    # 33 columns (runs of 17 split across panels: two vectors from mid-row starts, the last
    # column scalar, loads running into the next row but not past the plane); stride 3 along
    # rows (scalar copies); stride 1 with tiles across images (whole vectors of flat planes);
    # K = 300, past one slice of BK = 256
    # (the weights read in place slice by slice); outputs no multiple of the panels (packed)
    ((2, 5, 16, 16), 16, (2, 2), True),
    ((2, 3, 9, 33), 24, (2, 2), True),
    ((3, 4, 7, 10), 16, (1, 3), True),
    ((2, 6, 5, 21), 8, (1, 1), True),
    ((2, 300, 6, 10), 8, (2, 2), True),
    ((2, 5, 8, 8), 10, (2, 2), False),
], ids=["shortcut", "odd-planes", "stride-1x3", "across-images", "k300", "o10-packed"])
@pytest.mark.parametrize("lanes", [8, 16])
def test_implicit_gemm_1x1_without_padding(lanes_backend, rng, case, lanes):
    """The implicit GEMM's forward of 1x1 unpadded convolutions against a float64 reference,
    with the weights read in place (no pack_a launch) where every panel's rows are outputs,
    bit for bit the result of packing them first."""
    xs, o, stride, rows_fit = case
    n, c, h, wd = xs
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal((o, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    ref = conv_ref(x, w, stride, (0, 0), (1, 1), 1)
    results = []
    for in_place in (True, False):
        be = lanes_backend(lanes, conv_algorithm="implicit")
        be._weights_in_place = in_place
        launched = []
        real = be._kernel

        def spy(filename, name, real=real, launched=launched):
            launched.append(name)
            return real(filename, name)

        be._kernel = spy
        y = be.empty(ref.shape)
        be.conv2d(be.from_host(x), be.from_host(w), y, stride, (0, 0), (1, 1), 1, Workspace())
        results.append(be.to_host(y))
        np.testing.assert_allclose(results[-1], ref, rtol=1e-4, atol=1e-4)
        assert launched == (["conv_gemm"] if in_place and rows_fit else ["pack_a", "conv_gemm"])
    np.testing.assert_array_equal(results[0], results[1])
