"""Sequence ops (axis swap, embedding, recurrent cells) on every available backend, against
float64 references written here from the formulas (PyTorch's gate equations)."""

import numpy as np
import pytest

TOL = dict(rtol=2e-5, atol=2e-5)


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _dev(backend, host):
    return backend.from_host(host.astype(np.float32))


def _host(backend, arr):
    return backend.to_host(arr).astype(np.float64)


def _rand(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("shape", [(3, 5, 4), (4, 2, 1, 3), (1, 7, 6)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_swap_leading_axes(backend, rng, shape, accumulate):
    src = _rand(rng, *shape)
    dst0 = _rand(rng, shape[1], shape[0], *shape[2:])
    dst = _dev(backend, dst0)
    backend.swap_leading_axes(_dev(backend, src), dst, accumulate=accumulate)
    expected = np.swapaxes(src, 0, 1) + (dst0 if accumulate else 0.0)
    np.testing.assert_allclose(_host(backend, dst), expected, **TOL)


def test_embedding_gathers_rows(backend, rng):
    weight = _rand(rng, 9, 5)
    idx = rng.integers(0, 9, 23).astype(np.int32)
    out = backend.empty((23, 5))
    backend.embedding(backend.from_host(idx), _dev(backend, weight), out)
    np.testing.assert_allclose(_host(backend, out), weight[idx], **TOL)


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("accumulate", [False, True])
def test_embedding_backward_scatters_and_skips_padding(backend, rng, padding_idx, accumulate):
    idx = np.array([2, 0, 2, 5, 5, 5, 1, 2, 7], np.int32)  # repeats add up; 3, 4, 6, 8 unused
    dy = _rand(rng, idx.size, 4)
    base = _rand(rng, 9, 4)
    expected = base.copy() if accumulate else np.zeros((9, 4))
    for k, i in enumerate(idx):
        if i != padding_idx:
            expected[i] += dy[k]
    dw = _dev(backend, base)
    backend.embedding_backward(backend.from_host(idx), _dev(backend, dy), dw, padding_idx, accumulate)
    np.testing.assert_allclose(_host(backend, dw), expected, **TOL)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_rnn_cell(backend, rng, nonlinearity, with_bias):
    n, hid = 5, 7
    xw, hw, b = _rand(rng, n, hid), _rand(rng, n, hid), _rand(rng, hid)
    a = xw + hw + (b if with_bias else 0.0)
    expected = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)
    h = backend.empty((n, hid))
    backend.rnn_cell(_dev(backend, xw), _dev(backend, hw), _dev(backend, b) if with_bias else None, h, nonlinearity)
    np.testing.assert_allclose(_host(backend, h), expected, **TOL)


def test_rnn_cell_refuses_an_unknown_nonlinearity(backend):
    z = backend.zeros((2, 3))
    with pytest.raises(ValueError, match="nonlinearity"):
        backend.rnn_cell(z, z, None, backend.zeros((2, 3)), "gelu")


def _lstm_reference(xw, hw, b, c_prev, dh, dc):
    hid = c_prev.shape[1]
    a = xw + hw + (b if b is not None else 0.0)
    i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
    i, f, g, o = _sig(i), _sig(f), np.tanh(g), _sig(o)
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    tc = np.tanh(c)
    dct = dc + dh * o * (1 - tc ** 2)
    dgates = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - g ** 2),
                             dh * tc * o * (1 - o)], axis=1)
    return np.concatenate([i, f, g, o], axis=1), c, h, dgates, dct * f


@pytest.mark.parametrize("with_bias", [True, False])
def test_lstm_cell_forward_and_backward(backend, rng, with_bias):
    n, hid = 6, 5
    xw, hw, b = _rand(rng, n, 4 * hid) * 2, _rand(rng, n, 4 * hid), _rand(rng, 4 * hid)
    c_prev, dh, dc = _rand(rng, n, hid), _rand(rng, n, hid), _rand(rng, n, hid)
    gates_ref, c_ref, h_ref, dg_ref, dcp_ref = _lstm_reference(xw, hw, b if with_bias else None, c_prev, dh, dc)
    gates, c, h = backend.empty((n, 4 * hid)), backend.empty((n, hid)), backend.empty((n, hid))
    cp = _dev(backend, c_prev)
    backend.lstm_cell(_dev(backend, xw), _dev(backend, hw), _dev(backend, b) if with_bias else None, cp, gates, c, h)
    np.testing.assert_allclose(_host(backend, gates), gates_ref, **TOL)
    np.testing.assert_allclose(_host(backend, c), c_ref, **TOL)
    np.testing.assert_allclose(_host(backend, h), h_ref, **TOL)
    # backward from the reference forward state, with dc_prev written over dc in place
    dgates, dcd = backend.empty((n, 4 * hid)), _dev(backend, dc)
    backend.lstm_cell_backward(_dev(backend, gates_ref), cp, _dev(backend, c_ref), _dev(backend, dh), dcd,
                               dgates, dcd)
    np.testing.assert_allclose(_host(backend, dgates), dg_ref, **TOL)
    np.testing.assert_allclose(_host(backend, dcd), dcp_ref, **TOL)


def _gru_reference(xw, hw, b, h_prev, dh):
    hid = h_prev.shape[1]
    b = np.zeros(3 * hid) if b is None else b
    r = _sig(xw[:, :hid] + hw[:, :hid] + b[:hid])
    z = _sig(xw[:, hid:2 * hid] + hw[:, hid:2 * hid] + b[hid:2 * hid])
    hn = hw[:, 2 * hid:] + b[2 * hid:]
    n = np.tanh(xw[:, 2 * hid:] + r * hn)
    h = (1 - z) * n + z * h_prev
    dn = dh * (1 - z) * (1 - n ** 2)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dxw = np.concatenate([dr, dz, dn], axis=1)
    dhw = np.concatenate([dr, dz, dn * r], axis=1)
    return np.concatenate([r, z, n, hn], axis=1), h, dxw, dhw, dh * z


@pytest.mark.parametrize("with_bias", [True, False])
def test_gru_cell_forward_and_backward(backend, rng, with_bias):
    n, hid = 4, 6
    xw, hw, b = _rand(rng, n, 3 * hid) * 2, _rand(rng, n, 3 * hid), _rand(rng, 3 * hid)
    h_prev, dh = _rand(rng, n, hid), _rand(rng, n, hid)
    gates_ref, h_ref, dxw_ref, dhw_ref, dhp_ref = _gru_reference(xw, hw, b if with_bias else None, h_prev, dh)
    gates, h = backend.empty((n, 4 * hid)), backend.empty((n, hid))
    hp = _dev(backend, h_prev)
    backend.gru_cell(_dev(backend, xw), _dev(backend, hw), _dev(backend, b) if with_bias else None, hp, gates, h)
    np.testing.assert_allclose(_host(backend, gates), gates_ref, **TOL)
    np.testing.assert_allclose(_host(backend, h), h_ref, **TOL)
    dxw, dhw, dhd = backend.empty((n, 3 * hid)), backend.empty((n, 3 * hid)), _dev(backend, dh)
    backend.gru_cell_backward(_dev(backend, gates_ref), hp, dhd, dxw, dhw, dhd)  # dh_prev over dh
    np.testing.assert_allclose(_host(backend, dxw), dxw_ref, **TOL)
    np.testing.assert_allclose(_host(backend, dhw), dhw_ref, **TOL)
    np.testing.assert_allclose(_host(backend, dhd), dhp_ref, **TOL)


def test_cells_in_float64_match_the_reference_closely(numpy_backend, rng):
    """The NumPy backend computes in float64 too (the gradient checks rely on it)."""
    n, hid = 3, 4
    xw, hw, b = _rand(rng, n, 4 * hid), _rand(rng, n, 4 * hid), _rand(rng, 4 * hid)
    c_prev, dh, dc = _rand(rng, n, hid), _rand(rng, n, hid), _rand(rng, n, hid)
    gates_ref, c_ref, h_ref, dg_ref, dcp_ref = _lstm_reference(xw, hw, b, c_prev, dh, dc)
    gates, c, h = np.empty((n, 4 * hid)), np.empty((n, hid)), np.empty((n, hid))
    numpy_backend.lstm_cell(xw, hw, b, c_prev, gates, c, h)
    np.testing.assert_allclose(h, h_ref, rtol=1e-13, atol=1e-13)
    dgates, dcp = np.empty((n, 4 * hid)), np.empty((n, hid))
    numpy_backend.lstm_cell_backward(gates, c_prev, c, dh, dc, dgates, dcp)
    np.testing.assert_allclose(dgates, dg_ref, rtol=1e-12, atol=1e-12)
    xg, hg = _rand(rng, n, 3 * hid), _rand(rng, n, 3 * hid)
    gref, href, dxref, dhref, dpref = _gru_reference(xg, hg, b[:3 * hid], c_prev, dh)
    g, hh = np.empty((n, 4 * hid)), np.empty((n, hid))
    numpy_backend.gru_cell(xg, hg, b[:3 * hid], c_prev, g, hh)
    np.testing.assert_allclose(hh, href, rtol=1e-13, atol=1e-13)


def test_sequence_ops_allocate_nothing_with_a_workspace(backend, rng):
    from juicepy.backends.base import Workspace

    ws, n, hid = Workspace(), 4, 3
    z = lambda *s: _dev(backend, _rand(rng, *s))  # noqa: E731
    args_lstm = (z(n, 4 * hid), z(n, 4 * hid), z(4 * hid), z(n, hid), z(n, 4 * hid), z(n, hid), z(n, hid))
    args_gru = (z(n, 3 * hid), z(n, 3 * hid), z(3 * hid), z(n, hid), z(n, 4 * hid), z(n, hid))
    dxw, dhw, dh, dc, dg = z(n, 3 * hid), z(n, 3 * hid), z(n, hid), z(n, hid), z(n, 4 * hid)
    idx = backend.from_host(np.array([1, 0, 1], np.int32))
    emb, dy, dw = z(3, 5), z(3, 5), z(4, 5)
    tm, bm = z(2, 3, 4), z(3, 2, 4)

    def run():
        backend.lstm_cell(*args_lstm, ws=ws)
        backend.lstm_cell_backward(args_lstm[4], args_lstm[3], args_lstm[5], dh, dc, dg, dc, ws=ws)
        backend.gru_cell(*args_gru, ws=ws)
        backend.gru_cell_backward(args_gru[4], args_gru[3], dh, dxw, dhw, dh, ws=ws)
        backend.rnn_cell(dh, dh, None, dc, "tanh")
        backend.embedding(idx, dw, emb)
        backend.embedding_backward(idx, dy, dw, padding_idx=1, accumulate=True, ws=ws)
        backend.swap_leading_axes(tm, bm, accumulate=True)

    run()
    before = backend.allocations
    run()
    assert backend.allocations == before
