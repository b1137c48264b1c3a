"""Kernels by the device's local memory (local_memory.py): the footprints agree with the .cl
declarations, the real device keeps every kernel, and the PoCL device made to report a small
local memory (device_limits replaced) gets the fallbacks, whose results match float64 references."""

import re

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable, Workspace
from juicepy.backends.opencl import local_memory as lm
from juicepy.backends.opencl.programs import CPU_GEMM, GPU_GEMM, source
from juicepy.train import SGD, Trainer

CL_FILES = ("gemm.cl", "conv.cl", "rows.cl", "recurrent.cl", "norm.cl", "elementwise.cl")


# ----------------------------------------------------------- the .cl declarations
def _constants(text, tiles):
    """Object-like #defines of ``text`` (the first of each name), the tile constants passed to the build winning."""
    found = {}
    for name, expr in re.findall(r"^#define ([A-Z][A-Z0-9_]*)[ \t]+([^\n\\]+)$", text, re.M):
        found.setdefault(name, expr.split("//")[0].strip())
    found.update({k: str(v) for k, v in tiles.items()})
    return found


def _value(expr, consts):
    """An integer expression of the .cl source, its constants substituted (C's integer division)."""
    for _ in range(10):
        expr = re.sub(r"\b[A-Z][A-Z0-9_]*\b", lambda m: f"({consts[m.group(0)]})", expr)
    return eval(expr.replace("/", "//"), {})


def _kernel_local_bytes(text, tiles):
    """kernel name -> bytes of its static __local arrays (macros such as PACKED_TILE_LOCALS expanded)."""
    consts = _constants(text, tiles)
    sizes = {"float": 4, "int": 4, "uint": 4, "float8": 32, "floatv": 4 * int(consts.get("VW", 16))}
    macros = dict(re.findall(r"^#define ([A-Z_]+_LOCALS) (.*?[^\\])$", text, re.M | re.S))
    found = {}
    for name, body in re.findall(r"^void (\w+)\((.*?)^}$", text, re.M | re.S):
        for macro, expansion in macros.items():
            body = re.sub(rf"\b{macro}\b", expansion, body)
        decls = re.findall(r"__local (\w+) \w+\[([^\]]+)\](?:\[([^\]]+)\])?;", body)
        found[name] = sum(sizes[t] * _value(a, consts) * (_value(b, consts) if b else 1) for t, a, b in decls)
    return found


@pytest.mark.parametrize("tiles", [CPU_GEMM[8], CPU_GEMM[16], GPU_GEMM, {**CPU_GEMM[8], "MR": 4}],
                         ids=["cpu8", "cpu16", "gpu", "cpu8_mr_alt"])
def test_footprints_match_the_cl_declarations(tiles):
    declared = _kernel_local_bytes(source("gemm.cl"), tiles)
    for family, (kernels, define, size) in lm.OPTIONAL_FAMILIES.items():
        for kernel in kernels:
            assert declared[kernel] == size(tiles), (family, kernel)
        assert f"#if {define}" in source("gemm.cl")
    consts = _constants(source("gemm.cl"), {})
    assert int(consts["WK"]) == lm.WINOGRAD_SLICE and int(consts["TS"]) == lm.COOPERATIVE_TILE
    assert int(_constants(source("rows.cl"), {})["REDUCE_WG"]) == lm.REDUCE_WG


def test_every_kernel_with_local_arrays_is_planned_for():
    planned = {k for kernels, _, _ in lm.OPTIONAL_FAMILIES.values() for k in kernels}
    required = {k: (f, local) for f, kernels, local, _ in lm.REQUIRED_KERNELS for k in kernels}
    for filename in CL_FILES:
        for kernel, local in _kernel_local_bytes(source(filename), CPU_GEMM[8]).items():
            if local:
                assert kernel in planned or required[kernel] == (filename, local), (filename, kernel, local)


def test_the_figures_of_the_docs():
    """docs/opencl.md quotes these (KiB, 8-lane CPU tiles)."""
    assert {k: v / 1024 for k, v in lm.family_bytes(CPU_GEMM[8]).items()} == {
        "packed": 272, "winograd3": 162, "winograd5": 364.5, "s2_conv": 175.375, "s2_filter": 677.75,
        "s2_data": 409.375, "winograd3_filter": 548}


# ------------------------------------------------------------------ small devices
@pytest.fixture
def limited(ocl, lanes_backend, monkeypatch):
    """A factory: the backend on this device as if it had ``local`` bytes of local memory (and
    work-groups of at most ``group``)."""
    from juicepy.backends.opencl import backend

    def make(local, group=None, lanes=8, **kwargs):
        limits = lm.DeviceLimits(local, group or ocl.device.max_work_group_size)
        monkeypatch.setattr(backend, "device_limits", lambda device: limits)
        return lanes_backend(lanes, **kwargs)
    return make


def _geo(b, x_shape, w_shape, stride, padding):
    n, c, h, w = x_shape
    o, _, k, _ = w_shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    return b._conv_geometry(x_shape, w_shape, (n, o, ho, wo), (stride,) * 2, (padding,) * 2, (1, 1), 1, "conv2d")


def _conv_refs(x, w, dy, stride, padding):
    """y, dx, dw of an ungrouped, undilated convolution in float64 (windows; taps scattered back)."""
    k = w.shape[2]
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    xp = np.pad(x64, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = dy.shape[2:]
    win = win[:, :, :ho, :wo]
    y = np.einsum("nchwij,ocij->nohw", win, w64)
    dw = np.einsum("nchwij,nohw->ocij", win, dy64)
    dxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += np.einsum("nohw,oc->nchw", dy64, w64[:, :, i, j])
    return y, dxp[:, :, padding:padding + x.shape[2], padding:padding + x.shape[3]], dw


def _check_conv(b, rng, x_shape, w_shape, stride, padding):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    n, o = x_shape[0], w_shape[0]
    ho = (x_shape[2] + 2 * padding - w_shape[2]) // stride + 1
    wo = (x_shape[3] + 2 * padding - w_shape[3]) // stride + 1
    dy = rng.standard_normal((n, o, ho, wo)).astype(np.float32)
    y_ref, dx_ref, dw_ref = _conv_refs(x, w, dy, stride, padding)
    ws = Workspace()
    dev_x, dev_w, dev_dy = (b.from_host(a) for a in (x, w, dy))
    y, dx, dw = b.empty(y_ref.shape), b.empty(x.shape), b.empty(w.shape)
    args = ((stride,) * 2, (padding,) * 2, (1, 1), 1)
    b.conv2d(dev_x, dev_w, y, *args, ws)
    b.conv2d_backward_data(dev_dy, dev_w, dx, *args, False, ws)
    b.conv2d_backward_filter(dev_x, dev_dy, dw, *args, False, ws)
    np.testing.assert_allclose(b.to_host(y), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.to_host(dw), dw_ref, rtol=1e-4, atol=2e-4)


S2_LAYER = ((2, 32, 15, 15), (64, 32, 3, 3), 2, 1)     # 3x3 stride 2, 32 -> 64 channels: the s2 kernels
WINO5_LAYER = ((1, 32, 16, 16), (32, 32, 5, 5), 1, 2)  # 5x5, 256-pixel planes: winograd5_conv
WINO3_LAYER = ((2, 32, 8, 8), (32, 32, 3, 3), 1, 1)    # 3x3, 32 channels, 8x8: winograd_conv, winograd_filter


def test_the_real_limits_keep_every_kernel(ocl, lanes_backend):
    b = lanes_backend(8)
    assert b.limits == lm.device_limits(ocl.device)
    if b.limits.local_mem_size < max(lm.family_bytes(CPU_GEMM[8]).values()):
        pytest.skip(f"{ocl.device.name} has {b.limits.local_mem_size} bytes of local memory")
    assert all(b.kernel_fits.values()) and lm.build_defines(b.kernel_fits) == {}
    assert b.gemm_variant == ("packed" if b.is_cpu else "cooperative")
    if b.is_cpu:
        s2 = _geo(b, S2_LAYER[0], S2_LAYER[1], *S2_LAYER[2:])
        assert b._forward_algorithm(s2, 1) == "s2" and b._use_s2(s2, 1, "filter") and b._use_s2(s2, 1, "data")
        assert b._forward_algorithm(_geo(b, WINO5_LAYER[0], WINO5_LAYER[1], *WINO5_LAYER[2:]), 1) == "winograd"
        assert b._use_winograd_filter(_geo(b, WINO3_LAYER[0], WINO3_LAYER[1], *WINO3_LAYER[2:]), 1)


def test_packed_gemm_without_the_big_winograd_kernels(limited, rng):
    """300 KiB: the packed GEMM, F(2x2, 3x3) and the stride-2 forward fit; F(2x2, 5x5), F(3x3, 2x2)
    and the stride-2 weight and input gradients do not, are left out of the build and fall back."""
    b = limited(300 * 1024)
    assert b.gemm_variant == "packed"
    assert b.kernel_fits == {"packed": True, "winograd3": True, "winograd5": False, "s2_conv": True,
                             "s2_filter": False, "s2_data": False, "winograd3_filter": False}
    for kernel in ("s2_winograd_filter", "winograd_filter"):
        with pytest.raises(RuntimeError, match=f"no kernel '{kernel}'"):
            b._kernel("gemm.cl", kernel)
    wino3 = _geo(b, WINO3_LAYER[0], WINO3_LAYER[1], *WINO3_LAYER[2:])
    assert b._forward_algorithm(wino3, 1) == "winograd" and not b._use_winograd_filter(wino3, 1)
    _check_conv(b, rng, *WINO3_LAYER)
    s2 = _geo(b, S2_LAYER[0], S2_LAYER[1], *S2_LAYER[2:])
    assert b._forward_algorithm(s2, 1) == "s2" and not b._use_s2(s2, 1, "filter") and not b._use_s2(s2, 1, "data")
    assert b._forward_algorithm(_geo(b, WINO5_LAYER[0], WINO5_LAYER[1], *WINO5_LAYER[2:]), 1) != "winograd"
    _check_conv(b, rng, *S2_LAYER)
    _check_conv(b, rng, *WINO5_LAYER)


@pytest.mark.parametrize("local", [48 * 1024, 32 * 1024])
def test_gpu_sized_local_memory_gets_the_cooperative_kernels(limited, rng, local):
    """A CPU runtime with a GPU's local memory: the cooperative GEMM and im2col, right results."""
    b = limited(local)
    assert b.gemm_variant == "cooperative"
    assert b.kernel_fits == {"packed": True, "winograd3": False, "winograd5": False, "s2_conv": local >= 41600,
                             "s2_filter": local >= 43968, "s2_data": False, "winograd3_filter": False}
    s2 = _geo(b, S2_LAYER[0], S2_LAYER[1], *S2_LAYER[2:])
    assert b._forward_algorithm(s2, 1) == "gemm"
    for m, n, k, ta, tb in [(37, 45, 70, False, False), (1, 33, 17, True, False), (64, 50, 96, False, True),
                            (20, 31, 9, True, True)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        bm = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        c0 = rng.standard_normal((m, n)).astype(np.float32)
        ref = 0.5 * (a.T if ta else a).astype(np.float64) @ (bm.T if tb else bm).astype(np.float64) + 2.0 * c0
        out = b.from_host(c0)
        b.gemm(b.from_host(a), b.from_host(bm), out, ta, tb, alpha=0.5, beta=2.0)
        np.testing.assert_allclose(b.to_host(out), ref, rtol=1e-4, atol=1e-4)
    _check_conv(b, rng, *S2_LAYER)


def test_a_training_step_on_a_small_device_matches_numpy(limited):
    b = limited(48 * 1024)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 5, 4)

    def train(backend):
        net = jp.Network(L.Sequential(L.Conv2d(32, 3, padding=1), L.ReLU(), L.Conv2d(32, 3, stride=2, padding=1),
                                      L.ReLU(), L.Flatten(), L.Linear(5)), input_shape=(3, 12, 12), seed=2)
        trainer = Trainer(net, L.SoftmaxCrossEntropy(), SGD(lr=0.05, momentum=0.9), batch_size=4)
        losses = [trainer.train_minibatch(backend, x, y)[0] for _ in range(3)]
        return losses, net.get_weights()

    want_losses, want = train(jp.backend("numpy"))
    got_losses, got = train(b)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-4)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_packed_is_refused_where_it_does_not_fit(limited):
    with pytest.raises(ValueError, match=r"gemm_packed.*278528 bytes of local memory; the device has 65536"):
        limited(64 * 1024, gemm_variant="packed")


@pytest.mark.parametrize("local, group, kernel", [(1024, None, "gemm_tiled_gpu"), (1 << 20, 128, "gemm_tiled_gpu")])
def test_a_device_too_small_for_any_path_is_unavailable(limited, local, group, kernel):
    with pytest.raises(BackendUnavailable, match=kernel):
        limited(local, group)
