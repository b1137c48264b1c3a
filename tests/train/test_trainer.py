import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import load_dataset
from juicepy.errors import DTypeError, LabelError, NonFiniteError, ShapeError
from juicepy.models import build_model
from juicepy.train import SGD, Adam, Trainer
from juicepy.train.loop import evaluate, fit_epoch


def _trainer(opt=None, seed=0, batch=8, dropout=0.0):
    parts = [L.Linear(16), L.ReLU()] + ([L.Dropout(dropout)] if dropout else []) + [L.Linear(3)]
    net = jp.Network(L.Sequential(*parts), input_shape=(4,), seed=seed)
    return Trainer(net, L.SoftmaxCrossEntropy(), opt or Adam(lr=1e-2), batch_size=batch)


def _batch(rng, n=8):
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _snapshot(trainer, backend):
    st = trainer.state(backend)
    weights = trainer.network.get_weights()
    opt = [{k: backend.to_host(v) for k, v in bufs.items()} for bufs in st.optimizer.buffers]
    return weights, opt, st.optimizer.step


def _assert_unchanged(before, after):
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k], err_msg=k)
    for a, b in zip(before[1], after[1]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert before[2] == after[2]


def test_loss_goes_down(backend, rng):
    trainer = _trainer()
    x, y = _batch(rng)
    losses = [trainer.train_minibatch(backend, x, y)[0] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.steps == 30


def test_returns_float_loss_and_outputs(numpy_backend, rng):
    trainer = _trainer()
    x, y = _batch(rng)
    loss, outputs = trainer.train_minibatch(numpy_backend, x, y)
    assert isinstance(loss, float)
    assert numpy_backend.to_host(outputs).shape == (8, 3)


@pytest.mark.parametrize("case", ["shape", "dtype", "batch", "label_range", "label_dtype", "nan", "inf"])
def test_bad_input_is_refused_before_any_state_changes(case, numpy_backend, rng):
    trainer = _trainer()
    x, y = _batch(rng)
    trainer.train_minibatch(numpy_backend, x, y)  # optimizer state exists and is non-trivial
    before = _snapshot(trainer, numpy_backend)
    bad_x, bad_y = x, y
    expected = {
        "shape": (ShapeError, r"input: expected shape \(batch, 4\), got \(8, 5\)"),
        "dtype": (DTypeError, "input: expected dtype float32, got float64"),
        "batch": (ShapeError, "input: expected a batch of 8 rows, got 7"),
        "label_range": (LabelError, r"label 3 out of range \[0, 3\)"),
        "label_dtype": (DTypeError, "expected integer class labels"),
        "nan": (NonFiniteError, "NaN or Inf"),
        "inf": (NonFiniteError, "NaN or Inf"),
    }[case]
    if case == "shape":
        bad_x = np.zeros((8, 5), np.float32)
    elif case == "dtype":
        bad_x = x.astype(np.float64)
    elif case == "batch":
        bad_x, bad_y = x[:7], y[:7]
    elif case == "label_range":
        bad_y = y.copy()
        bad_y[2] = 3
    elif case == "label_dtype":
        bad_y = y.astype(np.float32)
    elif case in ("nan", "inf"):
        bad_x = x.copy()
        bad_x[3, 1] = np.nan if case == "nan" else np.inf
    with pytest.raises(expected[0], match=expected[1]):
        trainer.train_minibatch(numpy_backend, bad_x, bad_y)
    _assert_unchanged(before, _snapshot(trainer, numpy_backend))
    trainer.train_minibatch(numpy_backend, x, y)  # and the trainer still works


def test_non_finite_loss_leaves_state_unchanged(numpy_backend, rng):
    trainer = _trainer()
    x, y = _batch(rng)
    trainer.train_minibatch(numpy_backend, x, y)
    before = _snapshot(trainer, numpy_backend)
    huge = np.full_like(x, 3e38)  # finite input whose logits overflow to inf - inf = NaN
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(NonFiniteError, match="loss is (nan|inf) at step 2; the step was refused: weights, buffers, optimizer state and counters were left"):
        trainer.train_minibatch(numpy_backend, huge, y)
    _assert_unchanged(before, _snapshot(trainer, numpy_backend))


def test_the_backward_pass_is_queued_before_the_loss_is_read_back(numpy_backend, rng, monkeypatch):
    """In one process the step reads its loss once, after queueing the backward pass (an
    asynchronous backend runs it while the host waits), and updates the weights after that."""
    trainer = _trainer()
    x, y = _batch(rng)
    trainer.train_minibatch(numpy_backend, x, y)
    st = trainer.state(numpy_backend)
    order = []
    context_type = type(st.context)
    backward, to_host, step = context_type.backward, numpy_backend.to_host, trainer.optimizer.step

    def recorded(name, fn):
        def call(*args, **kwargs):
            order.append(name)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(context_type, "backward", recorded("backward", backward))
    monkeypatch.setattr(numpy_backend, "to_host",
                        lambda a: recorded("loss" if a is st.loss_sum else "other", to_host)(a))
    monkeypatch.setattr(trainer.optimizer, "step", recorded("update", step))
    trainer.train_minibatch(numpy_backend, x, y)
    assert [name for name in order if name != "other"] == ["backward", "loss", "update"]


def test_seeded_runs_are_reproducible_with_dropout(numpy_backend, rng):
    x, y = _batch(rng)
    runs = []
    for _ in range(2):
        trainer = _trainer(seed=5, dropout=0.3)
        runs.append([trainer.train_minibatch(numpy_backend, x, y)[0] for _ in range(5)])
    assert runs[0] == runs[1]
    other = _trainer(seed=6, dropout=0.3)
    assert [other.train_minibatch(numpy_backend, x, y)[0] for _ in range(5)] != runs[0]


def test_shared_layer_updated_once_per_step(numpy_backend, rng):
    """One layer at two places: one param, its two gradients summed, one SGD update."""
    shared = L.Linear(4, bias=False)
    net = jp.Network(L.Sequential(shared, shared), input_shape=(4,), dtype=np.float64)
    trainer = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=2)
    w = net.get_weights()["0.weight"]
    x, t = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    trainer.train_minibatch(numpy_backend, x, t)
    h = x @ w.T
    y = h @ w.T
    dy = 2 * (y - t) / y.size
    grad = dy.T @ h + (dy @ w).T @ x
    np.testing.assert_allclose(net.get_weights()["0.weight"], w - 0.1 * grad, rtol=1e-12)
    assert len(trainer.state(numpy_backend).context.segments[0].params) == 1


def test_mlp_reaches_96_percent_on_digits(numpy_backend):
    train, test = load_dataset("digits")
    net = jp.Network(build_model("mlp", train.input_shape, 10), input_shape=train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=64)
    for epoch in range(20):
        fit_epoch(trainer, numpy_backend, train, epoch=epoch, progress=False)
    assert evaluate(net, numpy_backend, test) >= 0.96


def test_fit_epoch_refuses_dataset_smaller_than_batch(numpy_backend):
    train, _ = load_dataset("digits")
    small = type(train)(train.x[:10], train.y[:10], "tiny", 10)
    net = jp.Network(build_model("mlp", train.input_shape, 10), input_shape=train.input_shape)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        fit_epoch(Trainer(net, L.SoftmaxCrossEntropy(), Adam(), 64), numpy_backend, small, progress=False)
