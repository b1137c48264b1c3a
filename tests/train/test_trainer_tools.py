import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import Dataset
from juicepy.errors import WeightsError
from juicepy.train import SGD, Adam, Trainer


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def _trainer(opt=None):
    net = jp.Network(L.Sequential(L.Linear(16), L.ReLU(), L.Dropout(0.2), L.Linear(2)), (6,), seed=3)
    return Trainer(net, L.SoftmaxCrossEntropy(), opt or Adam(lr=1e-2), batch_size=16)


def test_run_training_returns_loss_and_accuracy_per_step(backend):
    x, y = _data()
    trainer = _trainer()
    results = trainer.run_training(backend, Dataset(x, y, classes=2), n_steps=40)
    assert len(results) == 40  # 4 batches per epoch: the source restarts for 10 epochs
    losses = [loss for loss, _ in results]
    assert all(0.0 <= score <= 1.0 for _, score in results)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert trainer.steps == 40


def test_run_inference_leaves_weights_alone_and_matches_transform(backend):
    x, y = _data()
    trainer = _trainer()
    before = trainer.network.get_weights()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    results = trainer.run_inference(backend, batches, n_steps=6)
    assert len(results) == 6 and results[0] == results[4]  # the list restarts after 4 batches
    for k, v in trainer.network.get_weights().items():
        np.testing.assert_array_equal(v, before[k])
    logits = trainer.network.transform(backend, x[:16])
    expected_acc = float(np.mean(np.argmax(logits, 1) == y[:16]))
    assert results[0][1] == pytest.approx(expected_acc)
    z = logits - logits.max(1, keepdims=True)
    nll = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(16), y[:16]].mean()
    assert results[0][0] == pytest.approx(float(nll), rel=1e-5)


def test_score_is_none_for_regression():
    net = jp.Network(L.Linear(3), (3,))
    trainer = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=4)
    x = np.ones((4, 3), np.float32)
    (loss, score), = trainer.run_training("numpy", [(x, x)], n_steps=1)
    assert score is None and loss > 0


def test_empty_data_source_is_an_error():
    with pytest.raises(ValueError, match="yielded no batch"):
        _trainer().run_training("numpy", [], n_steps=1)


def test_state_dict_round_trip_continues_identically():
    x, y = _data()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    a = _trainer()
    a.run_training("numpy", batches, 5)
    state, weights = a.state_dict(), a.network.get_weights()
    assert state["step"] == 5 and state["dropout_step"] == 5
    assert set(state["optimizer"]["0.weight"]) == {"exp_avg", "exp_avg_sq"}
    b = _trainer()
    b.network.set_weights(weights)
    b.load_state_dict(state)
    ra = a.run_training("numpy", batches, 3)
    rb = b.run_training("numpy", batches, 3)
    assert ra == rb
    for k, v in a.network.get_weights().items():
        np.testing.assert_array_equal(v, b.network.get_weights()[k])


def test_bad_state_is_refused():
    trainer = _trainer()
    state = _trainer().state_dict()
    state["step"] = 2
    with pytest.raises(WeightsError, match=r"'0.weight' misses 'exp_avg'"):
        trainer.load_state_dict(state)
    with pytest.raises(WeightsError, match="unknown param"):
        trainer.load_state_dict({"step": 0, "optimizer": {"nope.weight": {}}})


def test_restored_state_steps_once_op_by_op_before_recording_a_graph(monkeypatch):
    # CUDA's host side through the CPU stand-in for CuPy: a restored state already counts
    # steps, but its workspaces are cold, so its first step must not be captured
    from juicepy.backends.cuda.backend import CudaBackend
    import cupy_standin

    x, y = _data()
    source = _trainer()
    source.run_training("numpy", [(x[:16], y[:16])], 3)
    log = cupy_standin.install(monkeypatch)
    backend = CudaBackend()
    restored = _trainer()
    restored.network.set_weights(source.network.get_weights())
    restored.load_state_dict(source.state_dict())
    graphs = lambda: [entry for entry in log if isinstance(entry, tuple)]  # noqa: E731
    restored.train_minibatch(backend, x[:16], y[:16])
    assert graphs() == [] and restored.steps == 4
    restored.train_minibatch(backend, x[:16], y[:16])
    assert len(graphs()) == 1 and restored.steps == 5


@pytest.mark.parametrize("step", [0, 3])
def test_a_state_that_cannot_be_restored_whole_is_refused_before_any_part_is(step):
    """A wrong shape or a state name the optimizer does not keep, however many steps: refused
    whole, with the current state untouched (not some buffers restored and others not)."""
    trainer = _trainer()
    x, y = _data()
    trainer.run_training("numpy", [(x[:16], y[:16])], 2)
    before = trainer.state_dict()
    good = {k: {n: v + 1 for n, v in bufs.items()} for k, bufs in before["optimizer"].items()}
    last = list(good)[-1]
    for broken, message in [
        ({**good, last: {"exp_avg": np.zeros(3), "exp_avg_sq": good[last]["exp_avg_sq"]}},
         rf"optimizer state: {last}.exp_avg expects shape"),
        ({**good, last: {**good[last], "momentum_buffer": good[last]["exp_avg"]}},
         rf"optimizer state: {last}.momentum_buffer: Adam keeps exp_avg, exp_avg_sq"),
    ]:
        with pytest.raises(WeightsError, match=message):
            trainer.load_state_dict({"step": step, "dropout_step": step, "optimizer": broken})
        after = trainer.state_dict()
        assert (after["step"], after["dropout_step"]) == (2, 2)
        for k, bufs in before["optimizer"].items():
            for n, v in bufs.items():
                np.testing.assert_array_equal(after["optimizer"][k][n], v, err_msg=f"{k}.{n}")


def test_a_loaded_state_is_a_copy():
    """Arrays the caller reuses after load_state_dict do not change the trainer's state."""
    source = _trainer()
    x, y = _data()
    source.run_training("numpy", [(x[:16], y[:16])], 2)
    state = source.state_dict()
    trainer = _trainer()
    trainer.load_state_dict(state)
    expected = {k: {n: v.copy() for n, v in b.items()} for k, b in state["optimizer"].items()}
    for bufs in state["optimizer"].values():
        for v in bufs.values():
            v[...] = 7.0
    got = trainer.state_dict()["optimizer"]
    for k, bufs in expected.items():
        for n, v in bufs.items():
            np.testing.assert_array_equal(got[k][n], v)
