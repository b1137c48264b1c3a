"""The optional fused C optimizer kernels agree with the pure-NumPy fallback, variant by variant."""

import numpy as np
import pytest

from juicepy.backends import Workspace
from juicepy.backends.numpy import NumpyBackend
from juicepy.backends.numpy.threads import CHUNK

FUSED, PLAIN = NumpyBackend(kernels="c"), NumpyBackend(kernels="numpy")
needs_kernels = pytest.mark.skipif(FUSED.cpu_kernels is None,
                                   reason="juicepy.backends.numpy._cpu_kernels was not built (no C compiler)")

ADAM = [dict(weight_decay=0.0, decoupled=False), dict(weight_decay=0.1, decoupled=False),
        dict(weight_decay=0.1, decoupled=True), dict(weight_decay=0.0, decoupled=False, amsgrad=True)]
SGD = [dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
       dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-2),
       dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.0),
       dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-3)]


def _adam_run(backend, dtype, n, amsgrad=False, **kw):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    vmax = np.zeros(n, dtype) if amsgrad else None
    ws = Workspace()
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        backend.adam_update(p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step,
                            max_exp_avg_sq=vmax, ws=ws, **kw)
    return p, m, v


def _sgd_run(backend, dtype, n, **kw):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype) if kw["momentum"] else None
    ws = Workspace()
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        backend.sgd_update(p, g, buf, lr=0.05, first_step=step == 1, ws=ws, **kw)
    return p, buf


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", ADAM, ids=["adam", "adam_l2", "adamw", "amsgrad"])
@pytest.mark.parametrize("n", [1, 1000, 3 * CHUNK + 17])  # one lane and several threaded lanes
def test_fused_adam_matches_numpy(dtype, kw, n):
    fused, plain = _adam_run(FUSED, dtype, n, **kw), _adam_run(PLAIN, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", SGD, ids=["plain", "momentum_wd", "dampening", "nesterov"])
@pytest.mark.parametrize("n", [5, 3 * CHUNK + 17])
def test_fused_sgd_matches_numpy(dtype, kw, n):
    fused, plain = _sgd_run(FUSED, dtype, n, **kw), _sgd_run(PLAIN, dtype, n, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(fused, plain):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_kernels
def test_kernels_refuse_mismatched_buffers():
    k = FUSED.cpu_kernels
    p, g = np.zeros(4, np.float32), np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="grad: dtype or length differs"):
        k.sgd(p, g, None, 0.1, 0.0, 1.0, 0.0, False, True)
    with pytest.raises(TypeError, match="expected float32 or float64"):
        k.sgd(np.zeros(4, np.int32), np.zeros(4, np.int32), None, 0.1, 0.0, 1.0, 0.0, False, True)
    with pytest.raises(TypeError, match="param: expected a contiguous writable"):
        k.adam(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32), np.zeros(4, np.float32),
               np.zeros(4, np.float32), None, 0.1, 0.999, 0.001, 0.1, 1e-8, 0.0, 1.0)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_fused_relu_backward_matches_numpy(dtype, accumulate):
    rng = np.random.default_rng(2)
    y = np.maximum(rng.standard_normal((7, 33)), 0).astype(dtype)
    dy = rng.standard_normal((7, 33)).astype(dtype)
    start = rng.standard_normal((7, 33)).astype(dtype)
    results = []
    for backend in (FUSED, PLAIN):
        dx = start.copy()
        backend.relu_backward(y, dy, dx, accumulate, Workspace())
        results.append(dx)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], (start if accumulate else 0) + np.where(y > 0, dy, 0))


needs_rnn_kernels = pytest.mark.skipif(FUSED.rnn_kernels is None,
                                       reason="juicepy.backends.numpy._rnn_kernels was not built (no C compiler)")


def _cell_run(backend, dtype, rows, hid, with_bias):
    """Every fused cell op forward and backward on fixed data; the outputs, as float64."""
    rng = np.random.default_rng(hid)
    f = lambda *shape, s=1.0: (rng.standard_normal(shape) * s).astype(dtype)  # noqa: E731
    xw4, hw4, b4, c_prev, dh, dc = f(rows, 4 * hid, s=3.0), f(rows, 4 * hid), f(4 * hid), f(rows, hid), \
        f(rows, hid), f(rows, hid)
    xw3, hw3, b3, h_prev = f(rows, 3 * hid, s=3.0), f(rows, 3 * hid), f(3 * hid), f(rows, hid)
    out = {}
    gates, c, h = np.empty_like(xw4), np.empty_like(c_prev), np.empty_like(c_prev)
    backend.lstm_cell(xw4, hw4, b4 if with_bias else None, c_prev, gates, c, h, ws=Workspace())
    dgates, dcp = np.empty_like(xw4), dc.copy()
    backend.lstm_cell_backward(gates, c_prev, c, dh, dcp, dgates, dcp, ws=Workspace())
    out.update(lstm_gates=gates, lstm_c=c, lstm_h=h, lstm_dgates=dgates, lstm_dc_prev=dcp)
    ggates, gh = np.empty((rows, 4 * hid), dtype), np.empty_like(h_prev)
    backend.gru_cell(xw3, hw3, b3 if with_bias else None, h_prev, ggates, gh, ws=Workspace())
    dxw, dhw, dhp = np.empty_like(xw3), np.empty_like(xw3), dh.copy()
    backend.gru_cell_backward(ggates, h_prev, dhp, dxw, dhw, dhp, ws=Workspace())
    out.update(gru_gates=ggates, gru_h=gh, gru_dxw=dxw, gru_dhw=dhw, gru_dh_prev=dhp)
    for act in ("tanh", "relu"):
        rh = np.empty_like(h_prev)
        backend.rnn_cell(xw3[:, :hid].copy(), hw3[:, :hid].copy(), b3[:hid] if with_bias else None, rh, act)
        out["rnn_" + act] = rh
    return {k: v.astype(np.float64) for k, v in out.items()}


@needs_rnn_kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hid", [1, 8, 21, 64])  # tails only, full vectors only, both, several groups
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_cells_match_numpy(dtype, hid, with_bias):
    fused, plain = _cell_run(FUSED, dtype, 5, hid, with_bias), _cell_run(PLAIN, dtype, 5, hid, with_bias)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for name in plain:
        np.testing.assert_allclose(fused[name], plain[name], err_msg=name, **tol)


@needs_rnn_kernels
def test_fused_tanh_is_accurate_over_the_float32_range():
    """The C cells' own float32 tanh (the RNN cell is act(xw)) against float64 tanh, far into
    both saturated ends and down to tiny arguments, where tanh(x) ~ x must keep its digits."""
    x = np.concatenate([np.linspace(-100, 100, 20001), np.linspace(-1, 1, 20001),
                        np.logspace(-30, 1, 501), -np.logspace(-30, 1, 501)]).astype(np.float32)
    x = x[: x.size // 3 * 3].reshape(-1, 3)
    h = np.empty_like(x)
    FUSED.rnn_cell(x, np.zeros_like(x), None, h, "tanh")
    want = np.tanh(x.astype(np.float64))
    assert np.all(np.abs(h - want) <= 2 * np.spacing(np.abs(want).astype(np.float32)))


@needs_rnn_kernels
def test_fused_cells_refuse_mismatched_buffers():
    k = FUSED.rnn_kernels
    z = lambda *s, dt=np.float32: np.zeros(s, dt)  # noqa: E731
    with pytest.raises(ValueError, match="c_prev"):
        k.lstm_cell(z(2, 12), z(2, 12), None, z(2, 4), z(2, 12), z(2, 3), z(2, 3), 2, 3)
    with pytest.raises(ValueError, match="xw"):
        k.gru_cell(z(2, 9, dt=np.float64), z(2, 9), None, z(2, 3), z(2, 12), z(2, 3), 2, 3)
    with pytest.raises(TypeError, match="dgates"):
        k.lstm_cell_backward(z(2, 12), z(2, 3), z(2, 3), z(2, 3), z(2, 3), z(4, 12)[::2], z(2, 3), 2, 3)


def _sequence_run(backend, gru, steps, rows, hid, reverse):
    """One LSTM/GRU direction forward and backward through the sequence ops; outputs as float64."""
    rng = np.random.default_rng(hid)
    blocks = 3 if gru else 4
    f = lambda *shape, s=1.0: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    xw, w, b = f(steps, rows, blocks * hid, s=2.0), f(blocks * hid, hid, s=1.5 / np.sqrt(hid)), f(blocks * hid)
    dout = f(steps, rows, 2 * hid)
    h, c, gates = (np.zeros((steps + 1, rows, hid), np.float32), np.zeros((steps + 1, rows, hid), np.float32),
                   np.zeros((steps, rows, 4 * hid), np.float32))
    dx, dhw = np.zeros((steps, rows, blocks * hid), np.float32), np.zeros((steps, rows, blocks * hid), np.float32)
    ws = Workspace()
    if gru:
        backend.gru_sequence(xw, w, b, h, gates, reverse=reverse, ws=ws)
        backend.gru_sequence_backward(w, gates, h, dout, hid, dx, dhw, reverse=reverse, ws=ws)
    else:
        backend.lstm_sequence(xw, w, b, h, c, gates, reverse=reverse, ws=ws)
        backend.lstm_sequence_backward(w, gates, c, dout, hid, dx, reverse=reverse, ws=ws)
    out = dict(h=h, c=c, gates=gates, dx=dx, dhw=dhw)
    # the same from the inputs (x_t W_ih inside the steps), with the weight and bias gradients
    x, w_ih, b_ih = f(steps, rows, 9), f(blocks * hid, 9, s=0.7), f(blocks * hid)
    hi, ci, gi, h_inf = (np.zeros_like(a) for a in (h, c, gates, h))
    dxi, dw_ih, dw_hh = np.zeros_like(dx), np.zeros_like(w_ih), np.zeros_like(w)
    db, db_ih = np.zeros_like(b), np.zeros_like(b)
    if gru:
        backend.gru_input_sequence(x, w_ih, b_ih, w, b, hi, gi, reverse=reverse, ws=ws)
        backend.gru_input_sequence(x, w_ih, b_ih, w, b, h_inf, None, reverse=reverse, ws=ws)
        backend.gru_input_sequence_backward(x, w, gi, hi, dout, hid, dw_ih, dw_hh, db_ih, db, dxi, reverse=reverse,
                                            ws=ws)
    else:
        backend.lstm_input_sequence(x, w_ih, w, b, hi, ci, gi, reverse=reverse, ws=ws)
        backend.lstm_input_sequence(x, w_ih, w, b, h_inf, None, None, reverse=reverse, ws=ws)
        backend.lstm_input_sequence_backward(x, w, gi, hi, ci, dout, hid, dw_ih, dw_hh, db, dxi, reverse=reverse,
                                             ws=ws)
    out.update(in_h=hi, in_c=ci, in_gates=gi, in_h_inference=h_inf, in_dx=dxi, dw_ih=dw_ih, dw_hh=dw_hh, db=db,
               db_ih=db_ih)
    return {name: a.astype(np.float64) for name, a in out.items()}


@needs_rnn_kernels
@pytest.mark.parametrize("gru", [False, True], ids=["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: lanes of unequal unit counts for hid 40
@pytest.mark.parametrize("steps, rows, hid, reverse", [(5, 7, 40, False), (3, 13, 5, True), (2, 64, 256, False)])
def test_fused_sequences_match_numpy_for_any_thread_count(monkeypatch, gru, threads, steps, rows, hid, reverse):
    """The one-call recurrences (own GEMM, hidden units split over the lanes; from xw or from the
    inputs with the weight gradients) agree with base.py's composition of NumPy GEMMs and cells,
    and repeat bit for bit."""
    monkeypatch.setenv("JUICEPY_NUM_THREADS", str(threads))
    fused, again = (_sequence_run(FUSED, gru, steps, rows, hid, reverse) for _ in range(2))
    plain = _sequence_run(PLAIN, gru, steps, rows, hid, reverse)
    for name in plain:
        atol = 2e-5 * (rows * steps if name.startswith(("dw", "db")) else 1)  # sums over all rows and steps
        np.testing.assert_allclose(fused[name], plain[name], rtol=1e-4, atol=atol, err_msg=name)
        np.testing.assert_array_equal(fused[name], again[name], err_msg=name)


@needs_rnn_kernels
def test_fused_sequences_refuse_mismatched_buffers():
    k = FUSED.rnn_kernels
    z = lambda *s, dt=np.float32: np.zeros(s, dt)  # noqa: E731
    scratch = z(k.sequence_scratch(False, False, 2, 3, 0, 1))
    with pytest.raises(ValueError, match="gates"):
        k.sequence(False, z(4, 2, 12), None, None, z(12, 3), None, None, z(5, 2, 3), z(5, 2, 3), z(4, 2, 9), 4, 2, 3,
                   0, False, False, 1, scratch)
    one_lane = z(k.sequence_scratch(False, False, 2, 40, 0, 1))  # 40 units: 3 chunks, so 2 lanes lay out otherwise
    with pytest.raises(ValueError, match="scratch"):
        k.sequence(False, z(4, 2, 160), None, None, z(160, 40), None, None, z(5, 2, 40), z(5, 2, 40), z(4, 2, 160), 4,
                   2, 40, 0, False, False, 2, one_lane)
    with pytest.raises(TypeError, match="float32"):
        k.sequence(True, z(4, 2, 9, dt=np.float64), None, None, z(9, 3, dt=np.float64), None, None,
                   z(5, 2, 3, dt=np.float64), None, z(4, 2, 12, dt=np.float64), 4, 2, 3, 0, False, False, 1,
                   z(k.sequence_scratch(True, False, 2, 3, 0, 1), dt=np.float64))
    with pytest.raises(ValueError, match="either xw"):  # xw and x both given
        k.sequence(False, z(4, 2, 12), z(4, 2, 5), z(12, 5), z(12, 3), None, None, z(5, 2, 3), z(5, 2, 3),
                   z(4, 2, 12), 4, 2, 3, 5, False, False, 1, z(k.sequence_scratch(False, False, 2, 3, 5, 1)))
    with pytest.raises(ValueError, match="w_ih"):
        k.sequence(False, None, z(4, 2, 5), z(12, 4), z(12, 3), None, None, z(5, 2, 3), None, None, 4, 2, 3, 5,
                   False, False, 1, z(k.sequence_scratch(False, False, 2, 3, 5, 1)))
    with pytest.raises(ValueError, match="dout"):
        k.sequence_backward(True, z(9, 3), z(4, 2, 12), z(5, 2, 3), None, z(4, 2, 3), 3, 1, z(4, 2, 9), z(4, 2, 9),
                            None, None, None, None, None, 4, 2, 3, 0, False, False, 1,
                            z(k.sequence_scratch(True, True, 2, 3, 0, 1)))
    with pytest.raises(ValueError, match="dw_hh"):
        k.sequence_backward(False, z(12, 3), z(4, 2, 12), z(5, 2, 3), z(5, 2, 3), z(4, 2, 3), 3, 0, None, None,
                            z(4, 2, 5), z(12, 5), z(12, 5), None, None, 4, 2, 3, 5, False, False, 1,
                            z(k.sequence_scratch(False, True, 2, 3, 5, 1)))
