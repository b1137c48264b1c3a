"""The NumPy backend's GEMM entries (blas.py, _blas_kernels.c): NumPy's own BLAS called from C,
every layout they take against a float64 product, every one they refuse left untouched, the split
over the C lanes, and the gemm op's use of them (the conv's in test_conv_kernels.py)."""

import os
import signal

import numpy as np
import pytest

import juicepy as jp
from juicepy.backends.numpy import backend as numpy_backend, blas, kernels, threads

ENTRY = blas.gemm_entry("c")
POSITIONS = blas.positions_entry("c")
BATCH = blas.batch_entry("c")
SUM = blas.sum_entry("c")
needs_entry = pytest.mark.skipif(ENTRY is None, reason="_blas_kernels is not built or no ILP64 OpenBLAS is loaded")


def _operand(rng, rows, cols, dtype, layout):
    """A rows x cols operand laid out as ``layout``: "c" rows, "f" the transpose of rows,
    "rows" every other row of a wider array (a leading dimension past cols), "cols" a column
    slice of a wider array."""
    if layout == "c":
        return rng.standard_normal((rows, cols)).astype(dtype)
    if layout == "f":
        return rng.standard_normal((cols, rows)).astype(dtype).T
    if layout == "rows":
        return rng.standard_normal((2 * rows, cols + 3)).astype(dtype)[::2, 1:cols + 1]
    return rng.standard_normal((rows, cols + 40)).astype(dtype)[:, 17:17 + cols]


def test_the_entry_is_found_where_numpy_ships_an_ilp64_openblas():
    """NumPy's wheels bundle an ILP64 OpenBLAS (symbols ending in 64_): there the entry exists;
    elsewhere (another BLAS, no threadpoolctl, no C build) the backend stays on np.matmul."""
    libs = threads.blas_libraries()
    ilp64 = any(lib.internal_api == "openblas" and blas._address(lib.dynlib, "scipy_cblas_sgemm64_") for lib in libs)
    if ilp64 and kernels.load("_blas_kernels", "c") is not None:
        assert ENTRY is not None
        assert jp.backend("numpy").blas_gemm is ENTRY
        assert jp.backend("numpy").blas_positions is POSITIONS is not None
        assert jp.backend("numpy").blas_batch is BATCH is not None
        assert jp.backend("numpy").blas_sum is SUM is not None
    assert blas.gemm_entry("numpy") is None and blas.positions_entry("numpy") is None
    assert blas.batch_entry("numpy") is None and blas.sum_entry("numpy") is None
    assert numpy_backend.NumpyBackend(kernels="numpy").blas_gemm is None
    assert numpy_backend.NumpyBackend(kernels="numpy").blas_positions is None
    assert numpy_backend.NumpyBackend(kernels="numpy").blas_batch is None
    assert numpy_backend.NumpyBackend(kernels="numpy").blas_sum is None


@needs_entry
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout_a", ["c", "f", "rows", "cols"])
@pytest.mark.parametrize("layout_b", ["c", "f", "rows"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 1.25)])
def test_entry_takes_every_unit_stride_layout(dtype, layout_a, layout_b, alpha, beta):
    rng = np.random.default_rng(1)
    m, n, k = 23, 37, 41
    a, b = _operand(rng, m, k, dtype, layout_a), _operand(rng, k, n, dtype, layout_b)
    wide = rng.standard_normal((m, n + 5)).astype(dtype)
    out = wide[:, 2:2 + n]  # rows with a leading dimension past n
    before = wide.copy()
    assert ENTRY(a, b, out, alpha, beta) is True
    want = alpha * (a.astype(np.float64) @ b) + beta * before[:, 2:2 + n].astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 10)
    np.testing.assert_array_equal(wide[:, :2], before[:, :2])  # nothing outside out written
    np.testing.assert_array_equal(wide[:, 2 + n:], before[:, 2 + n:])


@needs_entry
def test_entry_with_beta_zero_ignores_nan_in_out():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((8, 9)).astype(np.float32), rng.standard_normal((9, 7)).astype(np.float32)
    out = np.full((8, 7), np.nan, np.float32)
    assert ENTRY(a, b, out, 2.0, 0.0)
    np.testing.assert_allclose(out, 2.0 * (a.astype(np.float64) @ b), rtol=1e-5, atol=1e-5)


@needs_entry
def test_entry_refuses_what_blas_cannot_take_and_writes_nothing():
    """False, out untouched, for: no unit stride, an out whose columns are not unit-strided,
    mixed or other dtypes, an empty product, and an out overlapping an operand."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    out = np.zeros((6, 5), np.float32)
    shared = rng.standard_normal((6, 8)).astype(np.float32)
    refused = [
        (rng.standard_normal((12, 16)).astype(np.float32)[::2, ::2], b, out),  # a: no unit stride
        (a, b, np.zeros((5, 6), np.float32).T),  # out column-major
        (a.astype(np.float64), b, out),
        (a.astype(np.float16), b.astype(np.float16), out.astype(np.float16)),
        (a[:, :0], b[:0], out),  # k = 0
        (shared[:, :8], shared[:, :8].T[:8, :5].copy(), shared[:, 3:8]),  # out inside a
    ]
    for x, y, o in refused:
        before = o.copy()
        assert ENTRY(x, y, o, 1.0, 0.0) is False
        np.testing.assert_array_equal(o, before)
    assert ENTRY(a.reshape(-1), b, out, 1.0, 0.0) is False  # not 2-d: refused, not misread
    with pytest.raises(TypeError):
        ENTRY(a, b, out, 1.0)


def _positions_operands(rng, dtype, depths, n_out, n_in, p, gap=16):
    """u (positions, n_out, width), v and m (positions, vs / ms) as _tile_run lays them out, m
    filled with NaN."""
    width = max(depths) * n_in
    vs, ms = width * p + gap, n_out * p + gap
    u = rng.standard_normal((len(depths), n_out, width)).astype(dtype)
    v = rng.standard_normal((len(depths), vs)).astype(dtype)
    return u, v, np.full((len(depths), ms), np.nan, dtype), vs, ms


@needs_entry
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("depths", [(1,) * 16, (4, 2, 4, 2, 1, 2, 4, 2, 4), (3,)], ids=["uniform", "phases", "one"])
def test_positions_entry_runs_each_position_against_a_float64_product(dtype, depths):
    """Position i: m[i, :n_out*p] = u[i, :, :depths[i]*n_in] @ v[i, :depths[i]*n_in*p], each
    slice's rows as (rows, p); the columns of u past a position's depth, the rest of v and the
    gaps of m neither read nor written (NaN there stays NaN, and would spread if read)."""
    rng = np.random.default_rng(11)
    n_out, n_in, p = 7, 5, 13
    u, v, m, vs, ms = _positions_operands(rng, dtype, depths, n_out, n_in, p)
    for i, depth in enumerate(depths):
        u[i, :, depth * n_in:] = np.nan
        v[i, depth * n_in * p:] = np.nan
    assert POSITIONS(u, v, m, depths, n_out, n_in, p, vs, ms) is True
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for i, depth in enumerate(depths):
        k = depth * n_in
        want = u[i, :, :k].astype(np.float64) @ v[i, :k * p].reshape(k, p)
        np.testing.assert_allclose(m[i, :n_out * p].reshape(n_out, p), want, rtol=tol, atol=tol * 10)
        assert np.isnan(m[i, n_out * p:]).all()


@needs_entry
def test_positions_entry_refuses_what_it_cannot_take_and_writes_nothing():
    """False, m untouched, for: other or mixed dtypes, operands not C-contiguous, a depth past
    u's width or past v's slices, products past m's slices, shapes that disagree with the
    counts, a depth of 0, more than 64 positions, m overlapping v; depths that are not a
    sequence of ints raise."""
    rng = np.random.default_rng(12)
    depths, n_out, n_in, p = (2, 1, 2), 4, 3, 5
    u, v, m, vs, ms = _positions_operands(rng, np.float32, depths, n_out, n_in, p)
    args = dict(u=u, v=v, m=m, depths=depths, n_out=n_out, n_in=n_in, p=p, vs=vs, ms=ms)
    many = (1,) * 65
    shared = v.ravel().copy()
    refused = [
        dict(u=u.astype(np.float64)), dict(v=v.astype(np.float64), m=m.astype(np.float64)),
        dict(u=u.astype(np.float16), v=v.astype(np.float16), m=m.astype(np.float16)),
        dict(u=np.asfortranarray(u)), dict(depths=(3, 1, 2)), dict(n_in=n_in + 1),
        dict(p=p + 4), dict(n_out=n_out + 1), dict(vs=vs + 1), dict(depths=(2, 1)), dict(depths=(2, 0, 2)),
        dict(u=np.zeros((65, n_out, 2 * n_in), np.float32), v=np.zeros((65, vs), np.float32),
             m=np.full((65, ms), np.nan, np.float32), depths=many),
        dict(v=shared.reshape(3, vs), m=shared[:3 * ms].reshape(3, ms)),  # m inside v
    ]
    for change in refused:
        call = {**args, **change}
        before = call["m"].copy()
        assert POSITIONS(*call.values()) is False, change.keys()
        np.testing.assert_array_equal(call["m"], before)
    with pytest.raises(TypeError, match="depths"):
        POSITIONS(*{**args, "depths": 3}.values())
    with pytest.raises(TypeError):
        POSITIONS(*{**args, "depths": (2, "1", 2)}.values())


def _batch_want(a, b, shift, residual, relu):
    """float64 a @ b[i] + shift (a column) + residual[i], ReLU'd where asked."""
    want = np.einsum("mk,bkn->bmn", a.astype(np.float64), b.astype(np.float64))
    if shift is not None:
        want += shift.astype(np.float64)[:, None]
    if residual is not None:
        want += residual
    return np.maximum(want, 0) if relu else want


@needs_entry
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epilogue", ["none", "shift", "shift+residual+relu", "residual", "relu", "into-itself"])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("count,lanes", [(5, 2), (1, 2), (3, 8), (4, 1)])
def test_batch_entry_runs_each_product_with_its_epilogue(dtype, epilogue, trans_a, count, lanes):
    """c[i] = a @ b[i] (+ shift per row) (+ residual[i]) (ReLU) for every i, a read transposed
    too, against float64; products split into column pieces where there are fewer than lanes
    (37 columns: a partial last piece); a residual that is c itself adds to c. NaN in c is not
    read where nothing is added to it (beta = 0)."""
    rng = np.random.default_rng(13)
    m, k, n = 7, 9, 37
    a = rng.standard_normal((k, m)).astype(dtype).T if trans_a else rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((count, k, n)).astype(dtype)
    shift = rng.standard_normal(m).astype(dtype) if "shift" in epilogue else None
    c = np.full((count, m, n), np.nan, dtype)
    residual = rng.standard_normal((count, m, n)).astype(dtype) if "residual" in epilogue else None
    if epilogue == "into-itself":
        c[:] = rng.standard_normal(c.shape)
        residual = c
    want = _batch_want(a, b, shift, None if residual is None else residual.copy(), "relu" in epilogue)
    assert BATCH(a, b, c, shift, residual, "relu" in epilogue, lanes) is True
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol * 10)


@needs_entry
def test_batch_entry_starts_its_sums_from_the_epilogue_as_the_product_and_a_pass_after_it():
    """The sums start from the shift written into c (BLAS's beta = 1): the same bits as the
    product and then the shift added, where the product is one block of K."""
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal((16, 24)).astype(np.float32), rng.standard_normal((3, 24, 40)).astype(np.float32)
    shift = rng.standard_normal(16).astype(np.float32)
    c = np.empty((3, 16, 40), np.float32)
    assert BATCH(a, b, c, shift, None, False, 2) is True
    np.testing.assert_array_equal(c, np.matmul(a, b) + shift[:, None])


@needs_entry
def test_batch_entry_refuses_what_it_cannot_take_and_writes_nothing():
    """False, c untouched, for: other or mixed dtypes, b or c not C-contiguous, a without a unit
    stride, shapes that disagree, a shift or residual of another size or dtype, an empty
    product, c overlapping a, b or (not being it) the residual."""
    rng = np.random.default_rng(15)
    a, b = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((2, 6, 5)).astype(np.float32)
    c, shift = np.zeros((2, 4, 5), np.float32), np.zeros(4, np.float32)
    args = dict(a=a, b=b, c=c, shift=shift, residual=None, relu=False, lanes=2)
    wide = np.zeros((2, 4, 10), np.float32)
    shared = np.zeros(200, np.float32)
    refused = [
        dict(a=a.astype(np.float64)), dict(c=c.astype(np.float64)), dict(shift=shift.astype(np.float64)),
        dict(b=np.ascontiguousarray(b.transpose(0, 2, 1)).transpose(0, 2, 1)), dict(c=wide[:, :, :5]),
        dict(a=rng.standard_normal((8, 12)).astype(np.float32)[::2, ::2]), dict(a=a[:3]), dict(b=b[:, :5]),
        dict(shift=np.zeros(5, np.float32)), dict(residual=np.zeros((2, 4, 6), np.float32)),
        dict(a=a[:, :0], b=b[:, :0]), dict(b=shared[:60].reshape(2, 6, 5), c=shared[40:80].reshape(2, 4, 5)),
        dict(residual=shared[:40].reshape(2, 4, 5), c=shared[1:41].reshape(2, 4, 5)),
    ]
    for change in refused:
        call = {**args, **change}
        before = call["c"].copy()
        assert BATCH(*call.values()) is False, change.keys()
        np.testing.assert_array_equal(call["c"], before)


@needs_entry
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count,parts,lanes", [(5, 1, 2), (5, 2, 2), (7, 3, 2), (4, 4, 8), (3, 2, 1)])
def test_sum_entry_sums_each_part_of_the_products_in_order(dtype, count, parts, lanes):
    """parts[k] = the sum of a[i] @ b[i]^T over the k-th of ``parts`` equal runs of i (ranges
    count k / parts to count (k + 1) / parts), each run in order: the same bits as those
    products added one by one on one BLAS thread, and against float64. NaN in parts is not read."""
    rng = np.random.default_rng(17)
    m, n, k = 6, 11, 29
    a, b = rng.standard_normal((count, m, k)).astype(dtype), rng.standard_normal((count, n, k)).astype(dtype)
    out = np.full((parts, m, n), np.nan, dtype)
    with threads.single_threaded_blas():
        assert SUM(a, b, out, lanes) is True
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for part in range(parts):
        run = range(count * part // parts, count * (part + 1) // parts)
        want = sum(a[i].astype(np.float64) @ b[i].T.astype(np.float64) for i in run)
        np.testing.assert_allclose(out[part], want, rtol=tol, atol=tol * 10)
        one_by_one = np.zeros((m, n), dtype)
        for i in run:
            with threads.single_threaded_blas():
                assert ENTRY(a[i], b[i].T, one_by_one, 1.0, 1.0 if i > run[0] else 0.0)
        np.testing.assert_array_equal(out[part], one_by_one)


@needs_entry
def test_sum_entry_refuses_what_it_cannot_take_and_writes_nothing():
    """False, parts untouched, for: other or mixed dtypes, operands not C-contiguous, shapes that
    disagree, no parts or more parts than products, parts overlapping a or b."""
    rng = np.random.default_rng(18)
    a, b = rng.standard_normal((3, 4, 6)).astype(np.float32), rng.standard_normal((3, 5, 6)).astype(np.float32)
    parts = np.zeros((2, 4, 5), np.float32)
    shared = np.zeros(200, np.float32)
    refused = [
        dict(a=a.astype(np.float64)), dict(parts=parts.astype(np.float64)), dict(b=b.astype(np.float16)),
        dict(a=np.asfortranarray(a)), dict(b=b[:, :, :5]), dict(b=b[:2]), dict(parts=np.zeros((2, 5, 4), np.float32)),
        dict(parts=np.zeros((0, 4, 5), np.float32)), dict(parts=np.zeros((4, 4, 5), np.float32)),
        dict(a=shared[:72].reshape(3, 4, 6), parts=shared[50:90].reshape(2, 4, 5)),
    ]
    for change in refused:
        call = {**dict(a=a, b=b, parts=parts, lanes=2), **change}
        before = call["parts"].copy()
        assert SUM(*call.values()) is False, change.keys()
        np.testing.assert_array_equal(call["parts"], before)


@needs_entry
@pytest.mark.parametrize("by_columns", [False, True])
@pytest.mark.parametrize("lanes,grain", [(2, 0), (2, 1), (2, 3), (3, 2), (8, 0)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
def test_entry_split_over_its_lanes(by_columns, lanes, grain, trans_a, trans_b):
    """Pieces of 16 rows or columns dealt over the C lanes (partial last unit included) give the
    product; BLAS on one thread as the backend sets it."""
    rng = np.random.default_rng(4)
    m, n, k = 77, 93, 130
    a = _operand(rng, m, k, np.float32, "f" if trans_a else "c")
    b = _operand(rng, k, n, np.float32, "f" if trans_b else "rows")
    out = rng.standard_normal((m, n)).astype(np.float32)
    want = 0.75 * (a.astype(np.float64) @ b) - 2.0 * out
    with threads.single_threaded_blas():
        for _ in range(3):  # the first call starts the workers, the next find them awake
            o = out.copy()
            assert ENTRY(a, b, o, 0.75, -2.0, lanes, by_columns, grain)
            np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-4)


@needs_entry
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_entry_lanes_in_a_forked_child():
    """A forked child has none of the parent's lane threads: it starts its own."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((40, 300)).astype(np.float32), rng.standard_normal((300, 200)).astype(np.float32)
    want = np.empty((40, 200), np.float32)
    with threads.single_threaded_blas():
        assert ENTRY(a, b, want, 1.0, 0.0, 2, True, 0)  # the parent's workers are started
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        signal.alarm(30)
        out = np.empty_like(want)
        with threads.single_threaded_blas():
            ok = ENTRY(a, b, out, 1.0, 0.0, 2, True, 0) and np.allclose(out, want, rtol=1e-5, atol=1e-5)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@needs_entry
@pytest.mark.skipif(not threads.blas_libraries(), reason="threadpoolctl finds no BLAS library to limit in this process")
def test_gemm_op_splits_a_mid_sized_product_over_the_entry_lanes(monkeypatch):
    """Past LANE_GEMM_MIN the gemm op runs on the entry's lanes with BLAS on one thread (OpenBLAS's
    own threads spin on after a call and slow the next ops' lanes): by columns where a has few
    rows, by rows where b has few columns; at most LANE_GEMM_MIN, or inside a lane, on this
    thread alone. BLAS's thread counts are restored after, and the results are the product
    either way."""
    from threadpoolctl import threadpool_limits

    calls = []

    def recording(a, b, out, alpha, beta, lanes=1, by_columns=False, grain=0):
        calls.append((lanes, by_columns, tuple(lib.get_num_threads() for lib in threads.blas_libraries())))
        return ENTRY(a, b, out, alpha, beta, lanes, by_columns, grain)

    backend = numpy_backend.NumpyBackend(kernels="c")
    monkeypatch.setattr(backend, "blas_gemm", recording)
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    rng = np.random.default_rng(6)
    libs = len(threads.blas_libraries())
    with threadpool_limits(limits=2, user_api="blas"):
        for (m, n, k), want_call in (((32, 512, 784), (2, True)), ((512, 784, 32 * 11), (2, False)),
                                     ((400, 100, 200), (2, False)), ((32, 64, 512), (1, False))):
            a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            calls.clear()
            backend.gemm(a, b, out, trans_b=True)
            assert [c[:2] for c in calls] == [want_call], (m, n, k)
            if want_call[0] == 2:
                assert calls[0][2] == (1,) * libs
            np.testing.assert_allclose(out, a.astype(np.float64) @ b.T, rtol=1e-4, atol=1e-3)
            assert {lib.get_num_threads() for lib in threads.blas_libraries()} == {2}
        a, b = rng.standard_normal((32, 784)).astype(np.float32), rng.standard_normal((784, 512)).astype(np.float32)
        out = np.empty((32, 512), np.float32)
        calls.clear()  # called from inside a lane, whose siblings hold the other cores: one thread
        threads.parallel([(lambda: None, ()), (backend.gemm, (a, b, out))])
        assert [c[0] for c in calls] == [1]
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@needs_entry
def test_gemm_op_runs_what_the_entry_refuses_on_matmul(monkeypatch):
    """A product the entry refuses (here a without a unit stride) still comes out, split or not,
    alpha and beta included."""
    backend = numpy_backend.NumpyBackend(kernels="c")
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    rng = np.random.default_rng(7)
    for m, n, k in ((8, 9, 10), (64, 512, 300)):
        a = rng.standard_normal((m, 2 * k)).astype(np.float32)[:, ::2]
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = rng.standard_normal((m, n)).astype(np.float32)
        want = 0.5 * (a.astype(np.float64) @ b) + 3.0 * out
        backend.gemm(a, b, out, alpha=0.5, beta=3.0)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def test_without_the_entry_the_gemm_op_keeps_matmul(monkeypatch):
    backend = numpy_backend.NumpyBackend(kernels="c")
    monkeypatch.setattr(backend, "blas_gemm", None)
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((300, 512)).astype(np.float32)
    out = np.ones((64, 512), np.float32)
    backend.gemm(a, b, out, alpha=2.0, beta=-1.0)
    np.testing.assert_allclose(out, 2.0 * (a.astype(np.float64) @ b) - 1.0, rtol=1e-4, atol=1e-3)


@needs_entry
def test_split_products_from_two_threads_at_once(monkeypatch):
    """Two threads' split products at the same time (a server's requests): one takes the C lanes,
    the other runs its call alone; both get their products."""
    import threading

    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    backend = numpy_backend.NumpyBackend(kernels="c")
    rng = np.random.default_rng(9)
    problems = [(rng.standard_normal((32, 600)).astype(np.float32), rng.standard_normal((600, 384)).astype(np.float32))
                for _ in range(2)]
    wants = [a.astype(np.float64) @ b for a, b in problems]
    bad = []

    def run(index):
        a, b = problems[index]
        out = np.empty((32, 384), np.float32)
        for _ in range(30):
            out.fill(np.nan)
            backend.gemm(a, b, out)
            if not np.allclose(out, wants[index], rtol=1e-4, atol=1e-3):
                bad.append(index)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert bad == []


@needs_entry
def test_split_products_run_on_the_polling_python_lanes(monkeypatch):
    """While threads.py's lanes poll, the entry hands them its other pieces (_side_lanes.h)."""
    cpu = kernels.load("_cpu_kernels", "c")
    if threads._spin_while() is None or not hasattr(cpu, "side_tasks_done"):
        pytest.skip("the C polling lanes are not built")
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((32, 600)).astype(np.float32), rng.standard_normal((600, 384)).astype(np.float32)
    out = np.empty((32, 384), np.float32)
    for by_columns in (True, False):
        for _ in range(100):  # a lane polls again a moment after the region (sooner on a quiet machine)
            threads.parallel([(lambda: None, ())] * 2)
            before = cpu.side_tasks_done()
            out.fill(np.nan)
            with threads.single_threaded_blas():
                assert ENTRY(a, b, out, 1.0, 0.0, 2, by_columns, 0)
            np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
            if cpu.side_tasks_done() == before + 1:
                break
        assert cpu.side_tasks_done() == before + 1
