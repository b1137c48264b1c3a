"""RNN, LSTM, GRU and the heads over time: gradient checks on every backend, shapes, torch's
param names, parity with torch.nn.RNN/LSTM/GRU (outputs, input and param gradients, a 5-step
Adam trajectory), stacked dropout and the allocation-free training step."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer, forward_backward
from juicepy.train import Adam, Trainer

CELLS = {"RNN": L.RNN, "LSTM": L.LSTM, "GRU": L.GRU}


def _layer(kind, hidden, **kw):
    if kind == "RNN-relu":
        return L.RNN(hidden, nonlinearity="relu", **kw)
    return CELLS[kind](hidden, **kw)


# ------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("kind", ["RNN", "RNN-relu", "LSTM", "GRU"])
@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_gradient_check_on_every_backend(kind, layers, bidirectional, bias):
    layer = _layer(kind, 3, num_layers=layers, bidirectional=bidirectional, bias=bias)
    report = check_layer(layer, (4, 5), expected_output_shape=(4, 3 * (2 if bidirectional else 1)),
                         max_coords=25)
    assert report.max_param_error < 1e-5


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional, bias", [(False, True), (True, False)])
def test_gradient_check_at_fused_sizes(kind, bidirectional, bias):
    """A hidden size that is a multiple of 16 takes OpenCL's fused per-step kernels
    (recurrent.cl); a batch of 7 leaves a partial row panel."""
    layer = _layer(kind, 16, num_layers=1, bidirectional=bidirectional, bias=bias)
    report = check_layer(layer, (4, 5), batch_size=7, expected_output_shape=(4, 16 * (2 if bidirectional else 1)),
                         max_coords=25)
    assert report.max_param_error < 1e-5


@pytest.mark.parametrize("head, expected", [(L.LastStep(), (6,)), (L.MeanOverTime(), (6,)), (L.Linear(2), (5, 2))])
def test_heads_over_time_gradient_check(head, expected):
    check_layer(head, (5, 6), expected_output_shape=expected)


def test_heads_compute_the_last_step_and_the_mean(numpy_backend, rng):
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(jp.Network(L.LastStep(), (5, 4)).transform(numpy_backend, x), x[:, -1])
    np.testing.assert_allclose(jp.Network(L.MeanOverTime(), (5, 4)).transform(numpy_backend, x), x.mean(axis=1),
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ shapes and names
def test_param_names_and_shapes_are_torchs():
    net = jp.Network(L.Sequential(L.LSTM(8, num_layers=2, bidirectional=True)), (7, 5))
    shapes = {k: v.shape for k, v in net.get_weights().items()}
    assert shapes == {
        "0.weight_ih_l0": (32, 5), "0.weight_hh_l0": (32, 8), "0.bias_ih_l0": (32,), "0.bias_hh_l0": (32,),
        "0.weight_ih_l0_reverse": (32, 5), "0.weight_hh_l0_reverse": (32, 8),
        "0.bias_ih_l0_reverse": (32,), "0.bias_hh_l0_reverse": (32,),
        "0.weight_ih_l1": (32, 16), "0.weight_hh_l1": (32, 8), "0.bias_ih_l1": (32,), "0.bias_hh_l1": (32,),
        "0.weight_ih_l1_reverse": (32, 16), "0.weight_hh_l1_reverse": (32, 8),
        "0.bias_ih_l1_reverse": (32,), "0.bias_hh_l1_reverse": (32,)}
    assert net.output_shape == (7, 16)
    bound = 1 / np.sqrt(8)
    assert all(np.abs(w).max() <= bound for w in net.get_weights().values())


def test_bad_shapes_and_arguments_are_clear_errors():
    with pytest.raises(ShapeError, match=r"^0: GRU expects unit shape \(seq_len, features\), got \(5,\)"):
        jp.Network(L.Sequential(L.GRU(4)), (5,))
    with pytest.raises(ShapeError, match=r"LSTM expects unit shape \(seq_len, 3\), got \(4, 5\)"):
        jp.Network(L.LSTM(4, input_size=3), (4, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        L.RNN(4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        L.LSTM(4, dropout=1.0)
    with pytest.raises(ShapeError, match="LastStep expects unit shape"):
        jp.Network(L.LastStep(), (5,))


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=1.5), r"^LSTM: hidden_size must be an integer >= 1, got float 1.5"),
    (dict(hidden_size=float("inf")), r"^LSTM: hidden_size must be an integer >= 1, got float inf"),
    (dict(hidden_size=0), r"^LSTM: hidden_size must be an integer >= 1, got 0"),
    (dict(hidden_size=4, num_layers=2.0), r"^LSTM: num_layers must be an integer >= 1, got float 2.0"),
    (dict(hidden_size=4, bias="no"), r"^LSTM: bias must be True or False, got str 'no'"),
    (dict(hidden_size=4, bidirectional=1), r"^LSTM: bidirectional must be True or False, got int 1"),
    (dict(hidden_size=4, dropout=float("nan")), r"^LSTM: dropout must be a finite number in \[0, 1\)"),
    (dict(hidden_size=4, dropout="0.1"), r"^LSTM: dropout must be a number"),
    (dict(hidden_size=4, input_size=0), r"^LSTM: input_size must be an integer >= 1, got 0"),
])
def test_bad_arguments_are_refused_by_name_not_truncated(kwargs, match):
    # a config read from a file reaches here too: hidden_size 1.5 once built a 1-unit layer and inf
    # raised an OverflowError out of build_network
    with pytest.raises(ValueError, match=match):
        L.LSTM(**kwargs)


# ------------------------------------------------------------------ torch parity
def _torch_pair(kind, seed, backend_name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    feat, hid, seq, batch = (int(v) for v in rng.integers(2, 7, 4))
    layers, bidir = int(rng.integers(1, 3)), bool(rng.integers(0, 2))
    torch.manual_seed(seed)
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=True)
    if kind == "RNN-relu":
        tmod = torch.nn.RNN(feat, hid, nonlinearity="relu", **kw)
    else:
        tmod = getattr(torch.nn, kind)(feat, hid, **kw)
    dtype = np.float64 if backend_name == "numpy" else np.float32
    tmod = tmod.double() if dtype == np.float64 else tmod
    net = jp.Network(L.Sequential(_layer(kind, hid, num_layers=layers, bidirectional=bidir)), (seq, feat),
                     dtype=dtype)
    net.set_weights({f"0.{k}": v for k, v in tmod.state_dict().items()}, strict=True)
    x = rng.standard_normal((batch, seq, feat)).astype(dtype)
    return torch, tmod, net, x, dtype


@pytest.mark.parametrize("kind", ["RNN", "RNN-relu", "LSTM", "GRU"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch_outputs_and_every_gradient(backend, kind, seed):
    torch, tmod, net, x, dtype = _torch_pair(kind, seed, backend.name)
    dy = np.random.default_rng(seed + 10).standard_normal((x.shape[0],) + net.output_shape).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt, _ = tmod(xt)
    yt.backward(torch.from_numpy(dy))
    outs, in_grads, p_grads = forward_backward(net, backend, [x], [dy])
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0], yt.detach().numpy(), **tol)
    np.testing.assert_allclose(in_grads[0], xt.grad.numpy(), **tol)
    for name, p in tmod.named_parameters():
        np.testing.assert_allclose(p_grads[f"0.{name}"], p.grad.numpy(), err_msg=name, **tol)


@pytest.mark.parametrize("seed", range(12))
def test_matches_torch_at_drawn_sizes_in_float32(backend, seed):
    """Sizes drawn up to 140 hidden units and 80 features (the kernels' vector and panel tails,
    fused and unfused paths), stacked, bidirectional or without bias, float32 on every backend:
    outputs and every gradient within 1e-3 of each tensor's largest value of torch's float64.
    (tanh and sigmoid only: a ReLU's kink would move one gradient between the precisions.)"""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + seed)
    kind = ("RNN", "LSTM", "GRU")[seed % 3]
    feat, hid = int(rng.integers(1, 80)), int(rng.integers(1, 140))
    hid = 16 * (hid // 16 + 1) if seed % 4 == 0 else hid   # multiples of 16: OpenCL's fused step kernels
    seq, batch, layers = int(rng.integers(1, 12)), int(rng.integers(1, 10)), int(rng.integers(1, 3))
    bidir, bias = bool(rng.random() < 0.4), bool(rng.random() < 0.8)
    torch.manual_seed(seed)
    tmod = getattr(torch.nn, kind)(feat, hid, num_layers=layers, bidirectional=bidir, bias=bias,
                                   batch_first=True).double()
    net = jp.Network(L.Sequential(_layer(kind, hid, num_layers=layers, bidirectional=bidir, bias=bias)), (seq, feat),
                     dtype=np.float32)
    net.set_weights({f"0.{k}": v.numpy().astype(np.float32) for k, v in tmod.state_dict().items()}, strict=True)
    x, dy = rng.standard_normal((batch, seq, feat)), rng.standard_normal((batch, seq, hid * (2 if bidir else 1)))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt, _ = tmod(xt)
    yt.backward(torch.from_numpy(dy))
    outs, in_grads, p_grads = forward_backward(net, backend, [x.astype(np.float32)], [dy.astype(np.float32)])
    pairs = [("output", outs[0], yt.detach().numpy()), ("input gradient", in_grads[0], xt.grad.numpy())]
    pairs += [(name, p_grads[f"0.{name}"], p.grad.numpy()) for name, p in tmod.named_parameters()]
    for what, got, want in pairs:
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)   # W_hh's is zero over one step
        assert err < 1e-3, f"{kind} {feat}->{hid} seq {seq} batch {batch} layers {layers} bidirectional {bidir} " \
                           f"bias {bias}: {what} off by {err:.2g} of its largest value"


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_five_adam_steps_follow_torch(backend, kind):
    torch, tmod, net, x, dtype = _torch_pair(kind, 3, backend.name)
    head = torch.nn.Linear(tmod.hidden_size * (2 if tmod.bidirectional else 1), 1)
    head = head.double() if dtype == np.float64 else head
    jnet = jp.Network(L.Sequential(net.root[0], L.LastStep(), L.Linear(1)), x.shape[1:], dtype=dtype)
    jnet.set_weights({"2.weight": head.weight, "2.bias": head.bias})
    target = np.random.default_rng(5).standard_normal((x.shape[0], 1)).astype(dtype)
    trainer = Trainer(jnet, L.MSE(), Adam(lr=0.05), batch_size=x.shape[0])
    opt = torch.optim.Adam(list(tmod.parameters()) + list(head.parameters()), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        out, _ = tmod(torch.from_numpy(x))
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), torch.from_numpy(target))
        loss.backward()
        opt.step()
        jloss, _ = trainer.train_minibatch(backend, x, target)
        assert jloss == pytest.approx(loss.item(), rel=1e-4 if dtype == np.float32 else 1e-9)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    weights = jnet.get_weights()
    for name, p in tmod.named_parameters():
        np.testing.assert_allclose(weights[f"0.{name}"], p.detach().numpy(), err_msg=name, **tol)


# ------------------------------------------------------------------ dropout between layers
def test_dropout_between_stacked_layers_only_in_training(numpy_backend, rng):
    net = jp.Network(L.LSTM(6, num_layers=2, dropout=0.5), (4, 3), seed=1)
    plain = jp.Network(L.LSTM(6, num_layers=2), (4, 3), seed=1)
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(net.transform(numpy_backend, x), plain.transform(numpy_backend, x))
    up = [np.ones((5, 4, 6), np.float32)]
    first = forward_backward(net, numpy_backend, [x], up, step=0)
    again = forward_backward(net, numpy_backend, [x], up, step=0)
    other = forward_backward(net, numpy_backend, [x], up, step=1)
    np.testing.assert_array_equal(first[0][0], again[0][0])  # the seeded stream: same step, same mask
    assert not np.allclose(first[0][0], other[0][0])
    assert not np.allclose(first[0][0], plain.transform(numpy_backend, x))


def test_dropout_gradients_check_through_the_mask():
    check_layer(L.GRU(3, num_layers=2, dropout=0.3), (4, 2), max_coords=20)


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("hidden", [8, 16])  # 16: OpenCL's fused per-step kernels
def test_steady_training_step_allocates_nothing(backend, kind, hidden, rng):
    net = jp.Network(L.Sequential(_layer(kind, hidden, num_layers=2, bidirectional=True, dropout=0.2), L.LastStep(),
                                  L.Linear(1)), (6, 3))
    trainer = Trainer(net, L.MSE(), Adam(lr=1e-3), batch_size=4)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    # warm-up: the first step makes the context and optimizer state; where the backend captures,
    # the second records the step as a graph
    for _ in range(2):
        trainer.train_minibatch(backend, x, y)
    before = backend.allocations
    for _ in range(3):
        trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before


def test_sequence_classifier_learns_a_memory_task(numpy_backend):
    """The class is the sign of the first step's value, read out after the last step: only
    a state carried through every step can solve it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8, 1)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    net = jp.Network(L.Sequential(L.GRU(16), L.LastStep(), L.Linear(2)), (8, 1))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=32)
    for epoch in range(15):
        for k in range(0, 256, 32):
            trainer.train_minibatch(numpy_backend, x[k:k + 32], y[k:k + 32])
    assert np.mean(np.argmax(net.transform(numpy_backend, x), axis=1) == y) > 0.95


def test_save_load_summary_and_profile(tmp_path, numpy_backend, rng):
    from juicepy.profile import profile

    net = jp.Network(L.Sequential(L.GRU(5, num_layers=2, bidirectional=True, dropout=0.1), L.Linear(3),
                                  L.MeanOverTime(), L.Linear(2)), (4, 3), seed=3)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    path = tmp_path / "gru.juicepy"
    jp.save(path, net)
    loaded = jp.load(path).network
    assert repr(loaded.root[0]) == repr(net.root[0])
    np.testing.assert_array_equal(loaded.transform(numpy_backend, x), net.transform(numpy_backend, x))
    summary = net.summary()
    assert "GRU" in summary and "MeanOverTime" in summary and "(4, 10)" in summary
    rows = profile(net, numpy_backend, 4, steps=1, warmup=0)
    assert [r.layer for r in rows] == ["GRU", "Linear", "MeanOverTime", "Linear"]


def test_training_steps_keep_host_memory_flat(numpy_backend, rng):
    """On NumPy every buffer is host memory: after warm-up, steps neither grow the traced memory
    nor make large temporaries (the per-step gates and states live in the Context)."""
    import tracemalloc

    net = jp.Network(L.Sequential(L.Embedding(20, 8), L.LSTM(32, num_layers=2, bidirectional=True, dropout=0.1),
                                  L.LastStep(), L.Linear(3)), (12,), input_dtype=np.int64)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=16)
    x, y = rng.integers(0, 20, (16, 12)), rng.integers(0, 3, 16)
    tracemalloc.start()
    try:
        for _ in range(20):
            trainer.train_minibatch(numpy_backend, x, y)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(100):
            trainer.train_minibatch(numpy_backend, x, y)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 32_000 and peak - base < 128_000, (base, current - base, peak - base)
