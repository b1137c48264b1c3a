"""The tiled GEMM (juicepy/backends/opencl/gemm.cl) over awkward sizes, every transpose
combination, alpha/beta, offsets into flat buffers, and both kernel variants."""

import numpy as np
import pytest

from juicepy.backends import Workspace
from juicepy.backends.opencl import OpenCLBackend
from juicepy.backends.opencl.programs import compiled_float_lanes

SIZES = [(1, 1, 1), (1, 7, 33), (7, 33, 1), (33, 1, 7), (33, 1000, 7), (1000, 7, 33), (7, 1000, 33),
         (97, 129, 257), (96, 128, 256), (200, 130, 513), (6, 25, 5000), (13, 40, 2100),
         (600, 520, 40),  # more outputs than gemm_nt takes: A @ B^T goes the packed way
         # whole vectors of K (gemm_nt reads rows in place) with partial row and column tiles,
         # and split into a whole and a partial K slice
         (101, 37, 48), (9, 13, 1040)]
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]


@pytest.fixture(scope="module", params=[8, 16], ids=["8-lanes", "16-lanes"])
def gemm_ocl(request, lanes_backend):
    """The backend with each packed-GEMM kernel shape (6 x 16 float8 tiles for AVX2, 12 x 32
    float16 for AVX-512), whichever this device would pick: both must be right anywhere."""
    return lanes_backend(request.param)


def reference(a, b, c, ta, tb, alpha, beta):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return alpha * ((a64.T if ta else a64) @ (b64.T if tb else b64)) + beta * c.astype(np.float64)


def run_gemm(backend, a, b, c, ta, tb, alpha, beta):
    out = backend.from_host(c)
    backend.gemm(backend.from_host(a), backend.from_host(b), out, ta, tb, alpha, beta)
    return backend.to_host(out)


def operands(rng, m, n, k, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    return a, b, c


def assert_close(got, want, k):
    # float32 sums of k products: error grows like sqrt(k) * eps * |terms|
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * max(1.0, np.sqrt(k)) * 4)


@pytest.mark.parametrize("m,n,k", SIZES)
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_awkward_sizes_and_transposes(gemm_ocl, rng, m, n, k, ta, tb):
    a, b, c = operands(rng, m, n, k, ta, tb)
    assert_close(run_gemm(gemm_ocl, a, b, c, ta, tb, 1.0, 0.0), reference(a, b, c, ta, tb, 1.0, 0.0), k)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0), (-1.5, 0.25), (0.0, 1.0), (2.0, 0.0)])
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_alpha_beta(gemm_ocl, rng, alpha, beta, ta, tb):
    m, n, k = 45, 70, 129
    a, b, c = operands(rng, m, n, k, ta, tb)
    assert_close(run_gemm(gemm_ocl, a, b, c, ta, tb, alpha, beta), reference(a, b, c, ta, tb, alpha, beta), k)


def test_beta_zero_ignores_nan_in_out(ocl, rng):
    a, b, _ = operands(rng, 9, 11, 13, False, False)
    c = np.full((9, 11), np.nan, np.float32)
    got = run_gemm(ocl, a, b, c, False, False, 1.0, 0.0)
    assert np.all(np.isfinite(got))


def test_k_zero_scales_out_by_beta(ocl, rng):
    c = rng.standard_normal((3, 4)).astype(np.float32)
    got = run_gemm(ocl, np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c, False, False, 1.0, 0.5)
    np.testing.assert_allclose(got, 0.5 * c)


def test_operands_at_offsets_in_one_flat_buffer(ocl, rng):
    m, n, k = 37, 21, 50
    a, b, c = operands(rng, m, n, k, False, True)
    flat = ocl.zeros((64 * 70,))
    va = ocl.flat_view(flat, 64, a.shape)
    vb = ocl.flat_view(flat, 64 * 31, b.shape)
    vc = ocl.flat_view(flat, 64 * 48, c.shape)
    for view, host in ((va, a), (vb, b), (vc, c)):
        ocl.write(view, host)
    ocl.gemm(va, vb, vc, trans_b=True, alpha=1.0, beta=1.0)
    assert_close(ocl.to_host(vc), reference(a, b, c, False, True, 1.0, 1.0), k)
    np.testing.assert_array_equal(ocl.to_host(va), a)  # inputs untouched
    np.testing.assert_array_equal(ocl.to_host(vb), b)


def test_shape_mismatch_is_refused(ocl):
    with pytest.raises(ValueError, match="gemm"):
        ocl.gemm(ocl.empty((3, 4)), ocl.empty((5, 6)), ocl.empty((3, 6)))
    with pytest.raises(ValueError, match="gemm"):
        ocl.gemm(ocl.empty((3, 4)), ocl.empty((4, 6)), ocl.empty((3, 5)))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (33, 7, 1000), (70, 45, 129)])
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_cooperative_gpu_variant(ocl, rng, m, n, k, ta, tb):
    """The 16x16 work-group kernel GPUs use, run here on whatever device there is."""
    coop = OpenCLBackend(ocl.device, gemm_variant="cooperative")
    a, b, c = operands(rng, m, n, k, ta, tb)
    assert_close(run_gemm(coop, a, b, c, ta, tb, 1.5, 0.5), reference(a, b, c, ta, tb, 1.5, 0.5), k)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, -1.0)])
def test_split_k_for_few_tiles_and_long_k(gemm_ocl, rng, ta, tb, alpha, beta):
    """A few outputs over a long K (a conv weight gradient) is summed in K slabs in parallel."""

    m, n, k = 6, 25, 7000
    a, b, c = operands(rng, m, n, k, ta, tb)
    ocl = gemm_ocl
    ws = Workspace()
    out = ocl.from_host(c)
    ocl.gemm(ocl.from_host(a), ocl.from_host(b), out, ta, tb, alpha, beta, ws=ws)
    assert any(key[0] == "gemm_split" for key in ws._buffers)  # the split-K path ran
    assert_close(ocl.to_host(out), reference(a, b, c, ta, tb, alpha, beta), k)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (33, 1000, 7), (97, 129, 257), (6, 25, 5000)])
@pytest.mark.parametrize("ta", [False, True])
def test_packed_b_instead_of_direct_staging(gemm_ocl, rng, m, n, k, ta):
    """B (not transposed) is normally staged straight from memory; the packed route gives the same."""
    packed = OpenCLBackend(gemm_ocl.device, vector_width=gemm_ocl._conv_vec)
    packed.direct_staging = False
    a, b, c = operands(rng, m, n, k, ta, False)
    want = reference(a, b, c, ta, False, 1.0, 0.5)
    assert_close(run_gemm(packed, a, b, c, ta, False, 1.0, 0.5), want, k)
    assert_close(run_gemm(gemm_ocl, a, b, c, ta, False, 1.0, 0.5), want, k)


@pytest.mark.parametrize("m,n,k,ta", [(64, 256, 1024, False), (61, 70, 300, False), (96, 33, 513, False),
                                      (128, 70, 64, False), (1024, 256, 2048, True), (97, 129, 257, True),
                                      (5, 40, 700, True)])
def test_a_staged_straight_from_memory(ocl, rng, m, n, k, ta):
    """On 8-lane tiles A^T, and A with at most STAGE_A_ROWS rows (a batch of up to 128 rows),
    are staged into the tiles straight from A: no pack_a pass, the packed route's results."""
    direct = OpenCLBackend(ocl.device, vector_width=8)
    packed = OpenCLBackend(ocl.device, vector_width=8)
    packed.direct_staging = False
    a, b, c = operands(rng, m, n, k, ta, False)
    want = reference(a, b, c, ta, False, 1.0, 0.5)
    ws = Workspace()
    out = direct.from_host(c)
    direct.gemm(direct.from_host(a), direct.from_host(b), out, ta, False, 1.0, 0.5, ws=ws)
    assert not any(key[0] == "gemm_pack_a" for key in ws._buffers)
    assert_close(direct.to_host(out), want, k)
    assert_close(run_gemm(packed, a, b, c, ta, False, 1.0, 0.5), want, k)


def test_kernel_shape_follows_the_device_vector_width(ocl, lanes_backend):
    """AVX-512 devices (16 preferred float lanes, a compiler targeting AVX-512) get the 12 x 32
    float16 tiles, others the 6 x 16 float8 ones; the choice is the device's, never a timing."""
    want = compiled_float_lanes(ocl._cl, ocl.context, ocl.device)
    assert ocl._gemm_tiles["VW"] == want
    assert ocl._conv_vec == 8   # CONV_LANES: 16-lane devices run the convolutions at 8 lanes
    assert ocl._gemm_tiles["MR"] == {16: 12, 8: 6}[want]
    assert lanes_backend(8)._gemm_tiles["MR"] == 6


def test_sixteen_lanes_get_the_avx512_tiles(lanes_backend):
    assert lanes_backend(16)._gemm_tiles["MR"] == 12


@pytest.mark.parametrize("m,n,k,tb", [(97, 129, 257, False), (45, 70, 600, True), (600, 520, 40, True)])
def test_results_are_bitwise_repeatable(gemm_ocl, rng, m, n, k, tb):
    a, b, c = operands(rng, m, n, k, False, tb)
    first = run_gemm(gemm_ocl, a, b, c, False, tb, 1.0, 0.5)
    np.testing.assert_array_equal(run_gemm(gemm_ocl, a, b, c, False, tb, 1.0, 0.5), first)


def test_tiles_dealt_from_one_counter_across_calls(gemm_ocl, rng):
    """gemm_packed and gemm_nt take their tiles from a counter that is never reset: the host
    predicts its value after each launch, so every later call (packed, dot-product, split-K,
    one tile or many, a work-group per compute unit or fewer) still computes every tile."""
    ocl = gemm_ocl
    calls = [(5, 3, 4, False, False), (130, 70, 64, False, True), (6, 25, 5000, True, False),
             (200, 130, 513, False, False), (1, 1, 1, False, True), (9, 13, 1040, False, True)] * 2
    for m, n, k, ta, tb in calls:
        a, b, c = operands(rng, m, n, k, ta, tb)
        assert_close(run_gemm(ocl, a, b, c, ta, tb, 1.0, 0.5), reference(a, b, c, ta, tb, 1.0, 0.5), k)
    assert int(ocl.to_host(ocl._gemm_ticket)[0]) == ocl._gemm_ticket_next


# the Linear layers of an MLP 784-512-512-10 at batch 128 (x @ W^T, dY^T @ X, dY @ W), and the
# same products with rows, columns and K off the tiles and off whole vectors
LINEAR_SHAPES = [(128, 512, 784, False, True), (128, 10, 512, False, True), (512, 784, 128, True, False),
                 (10, 512, 128, True, False), (128, 512, 512, False, False), (128, 512, 10, False, False),
                 (127, 509, 785, False, True), (509, 781, 127, True, False), (127, 509, 509, False, False)]


@pytest.mark.parametrize("m,n,k,ta,tb", LINEAR_SHAPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 1.0)])
def test_linear_layer_products(gemm_ocl, rng, m, n, k, ta, tb, alpha, beta):
    a, b, c = operands(rng, m, n, k, ta, tb)
    assert_close(run_gemm(gemm_ocl, a, b, c, ta, tb, alpha, beta), reference(a, b, c, ta, tb, alpha, beta), k)


def test_wide_registers_where_the_compiler_targets_avx512(ocl, lanes_backend):
    """WIDE_REGS (gemm.cl) is asked for by 16-lane builds on a compiler targeting AVX-512 only."""
    wide = compiled_float_lanes(ocl._cl, ocl.context, ocl.device) == 16
    assert bool(lanes_backend(16)._programs._defines["gemm.cl"].get("WIDE_REGS")) == wide
    assert "WIDE_REGS" not in lanes_backend(8)._programs._defines["gemm.cl"]


@pytest.mark.parametrize("m,n,k,ta,tb", LINEAR_SHAPES[::2] + [(97, 129, 257, False, False), (6, 25, 5000, True, False),
                                                           (45, 70, 600, False, True)])
def test_wide_registers_give_the_same_sums(lanes_backend, rng, monkeypatch, m, n, k, ta, tb):
    """With and without WIDE_REGS the 16-lane kernels add the same products in the same order:
    equal bit for bit, and to the float64 reference."""
    from juicepy.backends.opencl import backend as backend_module
    wide = lanes_backend(16)
    monkeypatch.setattr(backend_module, "wide_register_defines", lambda *args: {})
    narrow = lanes_backend(16)
    assert "WIDE_REGS" not in narrow._programs._defines["gemm.cl"]
    a, b, c = operands(rng, m, n, k, ta, tb)
    got = run_gemm(wide, a, b, c, ta, tb, 1.0, 0.5)
    np.testing.assert_array_equal(got, run_gemm(narrow, a, b, c, ta, tb, 1.0, 0.5))
    assert_close(got, reference(a, b, c, ta, tb, 1.0, 0.5), k)
