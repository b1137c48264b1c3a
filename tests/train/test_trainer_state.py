"""A refused or failed step leaves every piece of training state as it was; one trainer keeps
one optimizer state whatever backend a step runs on; checkpoints taken while another thread
trains are consistent."""

import sys
import threading

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import NonFiniteError
from juicepy.train import SGD, Adam, Trainer

@pytest.fixture
def any_backend(ops_backend):
    """Every backend present, the NumPy one on both its CPU-kernel paths (tests/conftest.py)."""
    return ops_backend


def _bn_net(seed=0):
    return jp.Network(L.Sequential(L.Linear(16), L.BatchNorm1d(), L.ReLU(), L.Linear(3)),
                      input_shape=(4,), seed=seed)


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def _everything(trainer, backend):
    """Every piece of training state, as host copies: weights and buffers, optimizer moments,
    the optimizer step, the dropout counter."""
    state = trainer.state_dict()
    return {"weights": trainer.network.get_weights(), "optimizer": state["optimizer"],
            "step": state["step"], "dropout_step": state["dropout_step"], "steps": trainer.steps}


def _assert_same(before, after, where="", compare=np.testing.assert_array_equal):
    """Equal (bit-identical by default), recursively through dicts of arrays and numbers."""
    if isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for k in before:
            _assert_same(before[k], after[k], f"{where}.{k}", compare)
    else:
        compare(after, before, err_msg=where)


def _assert_close(expected, got, where=""):
    """Equal up to float32 rounding."""
    _assert_same(expected, got, where, lambda a, b, err_msg: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-6, err_msg=err_msg))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_refused_step_leaves_batchnorm_statistics_and_all_state_unchanged(any_backend):
    """lr=1e6 blows the weights up until a step's loss is NaN; that refused step must leave the
    running statistics, the batch counter, weights, moments and counters bit-identical, and eval
    outputs with them."""
    trainer = Trainer(_bn_net(), L.SoftmaxCrossEntropy(), SGD(lr=1e6, momentum=0.9), batch_size=8)
    x, y = _batch()
    for _ in range(30):
        before = _everything(trainer, any_backend)
        outputs = trainer.network.transform(any_backend, x)
        try:
            trainer.train_minibatch(any_backend, x, y)
        except NonFiniteError as err:
            assert "left unchanged" in str(err)
            break
    else:
        pytest.fail("lr=1e6 never produced a non-finite loss")
    after = _everything(trainer, any_backend)
    assert after["weights"]["1.num_batches_tracked"] == before["weights"]["1.num_batches_tracked"] > 0
    _assert_same(before, after)
    np.testing.assert_array_equal(trainer.network.transform(any_backend, x), outputs)


def _mlp(seed=0, dropout=0.25):
    return jp.Network(L.Sequential(L.Linear(16), L.ReLU(), L.Dropout(dropout), L.Linear(3)),
                      input_shape=(4,), seed=seed)


def _batches(steps, n=8):
    return [_batch(seed, n) for seed in range(steps)]


def _trained(backends, steps=8, make_net=_mlp, make_opt=lambda: Adam(lr=1e-2)):
    """A trainer after one step per entry of ``backends`` (cycled), on the same batches."""
    trainer = Trainer(make_net(), L.SoftmaxCrossEntropy(), make_opt(), batch_size=8)
    for i, (x, y) in enumerate(_batches(steps)):
        trainer.train_minibatch(backends[i % len(backends)], x, y)
    return trainer


@pytest.mark.skipif("opencl" not in jp.available_backends(), reason="needs a second backend (OpenCL: pip install '.[opencl]')")
@pytest.mark.parametrize("make_opt", [lambda: Adam(lr=1e-2), lambda: SGD(lr=0.1, momentum=0.9, nesterov=True)])
def test_alternating_backends_keep_one_optimizer_state(make_opt, tmp_path):
    """8 steps alternating NumPy and OpenCL equal 8 steps on NumPy: the optimizer moments, the
    step and the dropout counter move with the weights."""
    numpy_backend, opencl = jp.backend("numpy"), jp.backend("opencl")
    reference = _trained([numpy_backend], make_opt=make_opt)
    alternating = _trained([numpy_backend, opencl], make_opt=make_opt)
    assert alternating.steps == reference.steps == 8
    expected, got = reference.state_dict(), alternating.state_dict()
    assert (got["step"], got["dropout_step"]) == (expected["step"], expected["dropout_step"]) == (8, 8)
    _assert_close(expected["optimizer"], got["optimizer"], "optimizer")
    _assert_close(reference.network.get_weights(), alternating.network.get_weights(), "weights")
    jp.save(tmp_path / "alternating.safetensors", alternating.network, alternating)
    resumed = jp.load(tmp_path / "alternating.safetensors").trainer
    assert resumed.steps == 8
    _assert_close(expected, resumed.state_dict(), "checkpoint")


@pytest.mark.parametrize("make_net", [_mlp, _bn_net])
def test_training_after_network_release_carries_on(backend, make_net):
    """release() drops the params' device copies under a trainer: the next step re-attaches
    (optimizer state and counters carried over) instead of updating an orphaned block."""
    reference = _trained([backend], make_net=make_net)
    trainer = Trainer(make_net(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    for i, (x, y) in enumerate(_batches(8)):
        if i in (3, 6):
            trainer.network.release(backend)
        trainer.train_minibatch(backend, x, y)
    assert trainer.steps == 8
    _assert_close(reference.state_dict(), trainer.state_dict(), "state")
    _assert_close(reference.network.get_weights(), trainer.network.get_weights(), "weights")
    x, y = _batch(99)
    np.testing.assert_allclose(trainer.evaluate_minibatch(backend, x, y)[0],
                               reference.evaluate_minibatch(backend, x, y)[0], rtol=1e-5)


def test_checkpoints_saved_while_another_thread_trains_are_consistent(tmp_path):
    """Each checkpoint's weights and trainer state belong to one and the same step: the
    training thread records both after each of its steps; every saved file must match one."""
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so a save without a lock tears
    backend = jp.backend("numpy")
    trainer = Trainer(_mlp(dropout=0.0), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    recorded = {0: (trainer.network.get_weights(), trainer.state_dict())}
    batches = _batches(4)
    stop = threading.Event()

    def train():
        while not stop.is_set():
            trainer.train_minibatch(backend, *batches[trainer.steps % 4])
            recorded[trainer.steps] = (trainer.network.get_weights(), trainer.state_dict())

    worker = threading.Thread(target=train)
    paths = [tmp_path / f"ck{i}.safetensors" for i in range(10)]
    try:
        worker.start()
        for path in paths:
            jp.save(path, trainer.network, trainer)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(previous_interval)
    for path in paths:
        ck = jp.load(path)
        weights, state = recorded[ck.trainer.steps]
        _assert_same(weights, ck.network.get_weights(), f"{path.name} weights")
        _assert_same(state, ck.trainer.state_dict(), f"{path.name} trainer")


class _FailsWhenArmed(L.Identity):
    """Passes its input on, or raises in the forward pass when armed (a device error, Ctrl-C)."""

    armed = False

    def compute_output(self, backend, ctx):
        if self.armed:
            raise KeyboardInterrupt
        super().compute_output(backend, ctx)


@pytest.mark.parametrize("graphs", [False, True], ids=["op-by-op", "while-recording"])
def test_step_failing_inside_the_forward_pass_changes_nothing(any_backend, graphs):
    """BatchNorm and Dropout ran before the failure; their statistics, the batch counter and the
    dropout counter go back with everything else. With graphs, on a backend that captures, the
    failing step is the one that records the graph (a replay runs no layer code)."""
    failing = _FailsWhenArmed()
    net = jp.Network(L.Sequential(L.Linear(16), L.BatchNorm1d(), L.Dropout(0.3), failing, L.Linear(3)),
                     input_shape=(4,))
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8, graphs=graphs)
    for x, y in _batches(1 if graphs else 2):
        trainer.train_minibatch(any_backend, x, y)
    before = _everything(trainer, any_backend)
    failing.armed = True
    with pytest.raises(KeyboardInterrupt):
        trainer.train_minibatch(any_backend, *_batch(5))
    _assert_same(before, _everything(trainer, any_backend))
    failing.armed = False  # and the next step is the step that would have come
    reference = Trainer(_copy_of(net), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    reference.load_state_dict(trainer.state_dict())
    x, y = _batch(6)
    assert trainer.train_minibatch(any_backend, x, y)[0] == reference.train_minibatch(any_backend, x, y)[0]


@pytest.mark.parametrize("loaded", [False, True], ids=["fresh", "state-loaded"])
def test_a_failed_first_step_leaves_the_trainer_as_it_was(any_backend, loaded):
    """The first step makes the training state; when it fails, the trainer must still report
    (state_dict) and later start from what it had: a fresh start, or the state loaded into it.
    It once kept the made state, so state_dict reported zero moments for every param."""
    failing = _FailsWhenArmed()
    net = jp.Network(L.Sequential(L.Linear(16), L.BatchNorm1d(), L.Dropout(0.3), failing, L.Linear(3)),
                     input_shape=(4,))
    twin = _copy_of(net)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    reference = Trainer(twin, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=8)
    if loaded:
        donor = _trained(["numpy"], steps=3, make_net=lambda: _copy_of(net))
        for t in (trainer, reference):
            t.network.set_weights(donor.network.get_weights(), strict=True)
            t.load_state_dict(donor.state_dict())
    before = _everything(trainer, any_backend)
    assert (before["step"] > 0) == loaded and bool(before["optimizer"]) == loaded
    failing.armed = True
    with pytest.raises(KeyboardInterrupt):
        trainer.train_minibatch(any_backend, *_batch(5))
    _assert_same(before, _everything(trainer, any_backend))
    failing.armed = False
    for x, y in _batches(2):
        assert trainer.train_minibatch(any_backend, x, y)[0] == reference.train_minibatch(any_backend, x, y)[0]
    _assert_same(_everything(reference, any_backend), _everything(trainer, any_backend))


def test_non_finite_regression_targets_are_refused_before_the_step():
    net = jp.Network(L.Sequential(L.Linear(2)), input_shape=(4,))
    trainer = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=8)
    x, _ = _batch()
    y = np.zeros((8, 2), np.float32)
    y[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"^targets: contain NaN or Inf \(the finite-input guard is on\)"):
        trainer.train_minibatch("numpy", x, y)
    assert trainer.state_dict() == {"step": 0, "dropout_step": 0, "optimizer": {}}
    off = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=8, check_finite=False)
    assert np.isnan(off.train_minibatch("numpy", x, y)[0])  # the guard off: the caller's NaN goes through


def _copy_of(net):
    copy = jp.Network(L.Sequential(L.Linear(16), L.BatchNorm1d(), L.Dropout(0.3), L.Identity(), L.Linear(3)),
                      input_shape=(4,))
    copy.set_weights(net.get_weights(), strict=True)
    return copy


def test_replacing_the_optimizer_after_training_started_is_refused():
    """The optimizer state (moments, step) belongs to the optimizer the steps ran with; a new
    optimizer object would find buffers it does not know, mid-step."""
    trainer = _trained([jp.backend("numpy")], steps=2)
    with pytest.raises(RuntimeError, match=r"Trainer.optimizer: cannot replace Adam\(.*\) with SGD\(.*\) after "
                                           r"2 step\(s\); make a new Trainer"):
        trainer.optimizer = SGD(lr=0.1, momentum=0.9)
    trainer.train_minibatch("numpy", *_batch(3))
    assert trainer.steps == 3 and isinstance(trainer.optimizer, Adam)
    fresh = Trainer(_mlp(), L.SoftmaxCrossEntropy(), Adam(), batch_size=8)
    fresh.optimizer = SGD(lr=0.1)  # before the first step it is just a setting
    fresh.train_minibatch("numpy", *_batch(3))
    assert fresh.state_dict()["optimizer"] == {}  # plain SGD keeps no state


def test_lr_mult_changed_after_training_started_is_refused_not_ignored():
    """A context groups params by their lr multiplier when it is made; a later change would be
    silently ignored, so the next step refuses it, naming the param."""
    trainer = _trained([jp.backend("numpy")], steps=1)
    before = _everything(trainer, "numpy")
    trainer.network.param("0.weight").lr_mult = 0.5
    with pytest.raises(ValueError, match=r"param 0.weight: lr_mult changed from 1.0 to 0.5 after training started"):
        trainer.train_minibatch("numpy", *_batch(3))
    _assert_same(before, _everything(trainer, "numpy"))
    with pytest.raises(ValueError, match=r"param 0.bias: lr_mult must be a finite number >= 0, got nan"):
        trainer.network.param("0.bias").lr_mult = float("nan")
