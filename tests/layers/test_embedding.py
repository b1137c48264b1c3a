"""Embedding and integer network inputs end to end: gradient check, torch parity, padding row,
bad indices refused before anything changes, Trainer/transform/Predictor/save-load."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import DTypeError, IndicesError
from juicepy.testing import check_layer, forward_backward
from juicepy.train import Adam, Trainer


def _tokens(rng, n, seq, vocab):
    return rng.integers(0, vocab, (n, seq))


def test_gradient_check_on_every_backend(rng):
    idx = np.array([[0, 3, 3, 1], [5, 2, 0, 3]])
    # the padding row (by design no gradient although it is read) does not occur here
    report = check_layer(L.Embedding(6, 3, padding_idx=4), (4,), inputs=[idx], expected_output_shape=(4, 3))
    assert report.max_param_error < 1e-6


def test_lookup_and_padding_row_like_torch(backend, rng):
    torch = pytest.importorskip("torch")
    temb = torch.nn.Embedding(7, 4, padding_idx=1)
    net = jp.Network(L.Sequential(L.Embedding(7, 4, padding_idx=1)), (5,), input_dtype=np.int64)
    assert not net.get_weights()["0.weight"][1].any()  # the padding row starts at zero
    net.set_weights(temb.state_dict() and {"0.weight": temb.weight})
    idx = np.array([[1, 2, 2, 6, 0], [1, 1, 3, 4, 5], [6, 6, 6, 1, 2]])
    dy = rng.standard_normal((3, 5, 4)).astype(np.float32)
    out = temb(torch.from_numpy(idx))
    out.backward(torch.from_numpy(dy))
    outs, in_grads, p_grads = forward_backward(net, backend, [idx.astype(np.int32)], [dy])
    np.testing.assert_allclose(outs[0], out.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(p_grads["0.weight"], temb.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert not p_grads["0.weight"][1].any() and in_grads == [None]


def _token_net():
    return jp.Network(L.Sequential(L.Embedding(10, 4, padding_idx=0), L.GRU(5), L.LastStep(), L.Linear(2)),
                      (6,), input_dtype=np.int64, seed=2)


@pytest.mark.parametrize("bad, error, match", [
    (np.full((4, 6), 10), IndicesError, r"^0: Embedding indices must lie in \[0, 10\), got values from 10 to 10"),
    (np.full((4, 6), -1), IndicesError, r"got values from -1 to -1"),
    (np.zeros((4, 6), np.float32), DTypeError, "expected integer indices, got dtype float32"),
])
def test_bad_indices_are_refused_before_anything_changes(backend, rng, bad, error, match):
    net = _token_net()
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=0.1), batch_size=4)
    x, y = _tokens(rng, 4, 6, 10), rng.integers(0, 2, 4)
    trainer.train_minibatch(backend, x, y)
    before, state = net.get_weights(), trainer.state_dict()
    with pytest.raises(error, match=match):
        trainer.train_minibatch(backend, bad, y)
    with pytest.raises(error, match=match):
        net.transform(backend, bad)
    after = trainer.state_dict()
    assert after["step"] == state["step"] and after["dropout_step"] == state["dropout_step"]
    for k, v in net.get_weights().items():
        np.testing.assert_array_equal(v, before[k])


def test_integer_input_must_feed_an_embedding_and_an_embedding_needs_one():
    with pytest.raises(DTypeError, match=r"^0: Linear takes float values, got integer indices"):
        jp.Network(L.Sequential(L.Linear(3)), (4,), input_dtype=np.int32)
    with pytest.raises(DTypeError, match=r"^0: Embedding takes integer indices, got float32 values; declare"):
        jp.Network(L.Sequential(L.Embedding(5, 2)), (4,))
    with pytest.raises(ValueError, match="padding_idx"):
        L.Embedding(5, 2, padding_idx=5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_embeddings=2.5, embedding_dim=3), r"Embedding: num_embeddings must be an integer >= 1, got float 2.5"),
    (dict(num_embeddings=float("inf"), embedding_dim=3), "num_embeddings must be an integer"),
    (dict(num_embeddings=5, embedding_dim=0), r"embedding_dim must be an integer >= 1, got 0"),
    (dict(num_embeddings=5, embedding_dim=True), r"embedding_dim must be an integer >= 1, got bool"),
    (dict(num_embeddings=5, embedding_dim=2, padding_idx=-6), r"padding_idx \(within num_embeddings\) must be "
                                                               r"an integer >= -5 and <= 4, got -6"),
    (dict(num_embeddings=5, embedding_dim=2, padding_idx=1.0), "padding_idx .* must be an integer"),
    (dict(num_embeddings=5, embedding_dim=2, weight_init="nope"), r"weight_init \('normal', torch's\) must be"),
    (dict(num_embeddings=5, embedding_dim=2, weight_init=np.zeros(2)), "weight_init .* got ndarray"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    # a config read from a file reaches here too: a float such as 2.5 or inf is refused, not truncated
    with pytest.raises(ValueError, match=match):
        L.Embedding(**kwargs)


def test_a_negative_padding_index_counts_from_the_end_as_in_torch():
    assert L.Embedding(5, 2, padding_idx=-5).padding_idx == 0
    assert L.Embedding(5, 2, padding_idx=-1).padding_idx == 4


def test_functional_input_dtype_and_save_load_and_predictor(tmp_path, backend, rng):
    tokens = jp.Input((6,), dtype=np.int64)
    h = L.LastStep()(L.LSTM(5)(L.Embedding(10, 3)(tokens)))
    net = jp.Network(inputs=tokens, outputs=L.Linear(2)(h))
    assert net.input_dtypes == [np.dtype(np.int32)]
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=0.1), batch_size=4)
    x, y = _tokens(rng, 4, 6, 10), rng.integers(0, 2, 4)
    trainer.train_minibatch(backend, x, y)
    path = tmp_path / "tokens.juicepy"
    jp.save(path, net, trainer)
    loaded = jp.load(path).network
    assert loaded.input_dtypes == net.input_dtypes
    np.testing.assert_allclose(loaded.transform(backend, x), net.transform(backend, x), rtol=1e-6)
    predictor = jp.Predictor(net, backend)
    predictor.swap(loaded, warmup_rows=2)
    np.testing.assert_allclose(predictor.transform(x.astype(np.int16)), net.transform(backend, x), rtol=1e-6)
    with pytest.raises(jp.errors.ShapeError, match="input dtypes"):
        predictor.swap(jp.Network(L.Sequential(L.Reshape((6, 1)), L.LSTM(5), L.LastStep(), L.Linear(2)), (6,)))
    assert "Embedding" in net.summary()


def test_embedding_gru_learns_a_token_task(numpy_backend):
    """Parity of the count of token 1 in a sequence of 0s and 1s: needs the whole sequence."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (512, 6))
    y = x.sum(axis=1) % 2
    net = jp.Network(L.Sequential(L.Embedding(2, 8), L.GRU(24), L.LastStep(), L.Linear(2)), (6,),
                     input_dtype=np.int64)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=32)
    for epoch in range(30):
        for k in range(0, 512, 32):
            trainer.train_minibatch(numpy_backend, x[k:k + 32], y[k:k + 32])
    assert np.mean(np.argmax(net.transform(numpy_backend, x), axis=1) == y) > 0.95
