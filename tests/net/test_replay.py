"""Graph replay in the Trainer and Network.transform, proven on the CPU.

``TapeBackend`` is the NumPy backend with a capture that behaves like a CUDA graph: while
capturing, ops are recorded instead of run, host syncs and allocations are refused, and a
replay re-runs the tape with the dropout counter and optimizer step advanced by the shift and
the optimizer updates skipped on device-side non-finite loss. The same trainer code then runs
on the CUDA backend (tests/backends/test_cuda.py repeats the checks there).
"""

import math

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends.base import CaptureError
from juicepy.backends.numpy import NumpyBackend
from juicepy.errors import NonFiniteError
from juicepy.train import SGD, Adam, AdamW, Trainer

_REFUSED_WHILE_CAPTURING = ("empty", "zeros", "from_host", "write", "to_host", "all_finite", "synchronize")
_DEVICE_OPS = ("gemm", "add", "scale", "mul", "add_bias", "bias_grad", "sum_all", "relu", "relu_backward",
               "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
               "softmax", "softmax_backward", "log_softmax", "log_softmax_backward", "softmax_cross_entropy",
               "nll_loss", "mse_loss", "dropout", "sgd_update", "adam_update", "copy", "fill",
               "copy_channels", "slice_channels", "batch_norm_train", "batch_norm_backward", "batch_norm_infer")


class _Tape:
    def __init__(self, backend, ops):
        self.backend = backend
        self.ops = ops
        self.replays = 0

    def replay(self, shift=0):
        self.replays += 1
        for name, args, kwargs in self.ops:
            args, kwargs = list(args), dict(kwargs)
            guard = kwargs.pop("guard", None)
            if guard is not None and not math.isfinite(float(guard[0])):
                continue  # the device-side NaN guard of the optimizer kernels
            if name == "dropout":
                args[5] += shift  # counter
            if name == "adam_update":
                kwargs["step"] += shift
            getattr(NumpyBackend, name)(self.backend, *args, **kwargs)


def _recording(name):
    def op(self, *args, **kwargs):
        if self.tape is None:
            kwargs.pop("guard", None)
            return getattr(NumpyBackend, name)(self, *args, **kwargs)
        self.tape.append((name, args, kwargs))
    return op


def _refusing(name):
    def op(self, *args, **kwargs):
        if self.tape is not None:
            raise CaptureError(f"{name} while capturing")
        return getattr(NumpyBackend, name)(self, *args, **kwargs)
    return op


class TapeBackend(NumpyBackend):
    name = "numpy-tape"
    can_capture = True

    def __init__(self):
        super().__init__()
        self.tape = None
        self.captures = 0

    def capture(self, fn):
        self.tape = []
        try:
            fn()
            ops = self.tape
        finally:
            self.tape = None
        self.captures += 1
        return _Tape(self, ops)


for _name in _DEVICE_OPS:
    setattr(TapeBackend, _name, _recording(_name))
for _name in _REFUSED_WHILE_CAPTURING:
    setattr(TapeBackend, _name, _refusing(_name))


def _net(seed=0, dropout=0.3):
    return jp.Network(L.Sequential(L.Linear(32), L.ReLU(), L.Dropout(dropout), L.Linear(32), L.Tanh(),
                                   L.Linear(5)), input_shape=(12,), seed=seed)


def _batches(steps, batch=16, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 12)).astype(np.float32), rng.integers(0, 5, batch))
            for _ in range(steps)]


def _train(backend, optimizer, steps=6, graphs=True, **kw):
    trainer = Trainer(_net(), L.SoftmaxCrossEntropy(), optimizer, batch_size=16, graphs=graphs, **kw)
    losses = [trainer.train_minibatch(backend, x, y)[0] for x, y in _batches(steps)]
    return trainer, losses


@pytest.mark.parametrize("make_opt", [lambda: Adam(lr=1e-2), lambda: AdamW(lr=1e-2, amsgrad=True),
                                      lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_replayed_steps_equal_op_by_op_steps(make_opt):
    eager_trainer, eager_losses = _train(jp.backend("numpy"), make_opt())
    backend = TapeBackend()
    replay_trainer, replay_losses = _train(backend, make_opt())
    st = replay_trainer.state(backend)
    assert backend.captures == 1 and st.replay.graph.replays == 5  # step 1 op by op, then replays
    assert replay_losses == eager_losses  # dropout counters and Adam steps advance as op by op
    for k, v in eager_trainer.network.get_weights().items():
        np.testing.assert_array_equal(replay_trainer.network.get_weights()[k], v, err_msg=k)
    assert replay_trainer.steps == eager_trainer.steps == 6
    assert st.context.step == eager_trainer.state(jp.backend("numpy")).context.step


def test_graphs_flag_and_env_var_turn_replay_off(monkeypatch):
    backend = TapeBackend()
    _train(backend, Adam(), steps=3, graphs=False)
    assert backend.captures == 0
    monkeypatch.setenv("JUICEPY_GRAPHS", "0")
    _train(backend, Adam(), steps=3)
    assert backend.captures == 0


def test_changed_hyperparameters_record_again():
    backend = TapeBackend()
    trainer, _ = _train(backend, SGD(lr=0.1), steps=3)
    assert backend.captures == 1
    trainer.optimizer.lr = 0.05
    x, y = _batches(1, seed=7)[0]
    trainer.train_minibatch(backend, x, y)
    assert backend.captures == 2
    reference = Trainer(_net(), L.SoftmaxCrossEntropy(), SGD(lr=0.1), batch_size=16)
    numpy_backend = jp.backend("numpy")
    for x0, y0 in _batches(3):
        reference.train_minibatch(numpy_backend, x0, y0)
    reference.optimizer.lr = 0.05
    reference.train_minibatch(numpy_backend, x, y)
    for k, v in reference.network.get_weights().items():
        np.testing.assert_array_equal(trainer.network.get_weights()[k], v, err_msg=k)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_non_finite_loss_in_a_replayed_step_changes_nothing():
    backend = TapeBackend()
    trainer, _ = _train(backend, Adam(lr=1e-2), steps=3)
    st = trainer.state(backend)
    weights = trainer.network.get_weights()
    moments = [{k: v.copy() for k, v in bufs.items()} for bufs in st.optimizer.buffers]
    steps, ctx_step = st.optimizer.step, st.context.step
    huge = np.full((16, 12), 3e38, np.float32)  # finite input, infinite logits
    with pytest.raises(NonFiniteError, match="left unchanged"):
        trainer.train_minibatch(backend, huge, np.zeros(16, np.int64))
    assert st.replay.graph.replays >= 3  # the refused step was a replay, not the op-by-op path
    for k, v in weights.items():
        np.testing.assert_array_equal(trainer.network.get_weights()[k], v, err_msg=k)
    for before, bufs in zip(moments, st.optimizer.buffers):
        for k in before:
            np.testing.assert_array_equal(bufs[k], before[k], err_msg=k)
    assert (st.optimizer.step, st.context.step) == (steps, ctx_step)


def test_set_weights_between_replays_is_seen():
    backend = TapeBackend()
    trainer, _ = _train(backend, SGD(lr=0.0), steps=3)  # lr 0: weights only change by set_weights
    zeros = {k: np.zeros_like(v) for k, v in trainer.network.get_weights().items()}
    trainer.network.set_weights(zeros)
    x, y = _batches(1, seed=3)[0]
    loss, out = trainer.train_minibatch(backend, x, y)
    np.testing.assert_array_equal(backend.to_host(out), 0.0)
    assert loss == pytest.approx(math.log(5), rel=1e-6)


def test_replayed_steady_state_allocates_nothing():
    backend = TapeBackend()
    trainer, _ = _train(backend, Adam(), steps=3)
    before = backend.allocations
    for x, y in _batches(4, seed=9):
        trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before


def test_transform_replays_inference_and_matches_eager():
    net = _net(dropout=0.5)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    expected = net.transform(jp.backend("numpy"), x)
    backend = TapeBackend()
    first = net.transform(backend, x)
    again = net.transform(backend, x)  # second pass of the same contexts: recorded, then replayed
    assert backend.captures == len(net.inference_capacities(backend)) == 2  # 40 rows: passes of 32 and 8
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    net.set_weights({k: v * 2 for k, v in net.get_weights().items()})
    np.testing.assert_array_equal(net.transform(backend, x), net.transform(jp.backend("numpy"), x))


def test_a_step_that_cannot_be_captured_runs_op_by_op():
    class NoCapture(TapeBackend):
        def capture(self, fn):
            raise CaptureError("not today")

    backend = NoCapture()
    eager_trainer, eager_losses = _train(jp.backend("numpy"), Adam(lr=1e-2), steps=4)
    trainer, losses = _train(backend, Adam(lr=1e-2), steps=4)
    assert losses == eager_losses
    assert trainer.state(backend).replay.failure == "not today"


def _bn_trainer(momentum=0.1, shared=False):
    bn = L.BatchNorm1d(momentum=momentum)
    body = [L.Linear(16), bn, L.ReLU()] + ([L.Linear(16), bn] if shared else []) + [L.Linear(5)]
    net = jp.Network(L.Sequential(*body), input_shape=(12,))
    return Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), batch_size=16)


@pytest.mark.parametrize("shared", [False, True], ids=["one-placement", "placed-twice"])
def test_batchnorm_networks_replay_with_their_batch_counter(shared):
    """The batch counter lives on the host: each replayed step adds one per placement, as op by op."""
    tape, plain = TapeBackend(), NumpyBackend()
    replayed, eager = _bn_trainer(shared=shared), _bn_trainer(shared=shared)
    for x, y in _batches(5):
        assert replayed.train_minibatch(tape, x, y)[0] == eager.train_minibatch(plain, x, y)[0]
    assert tape.captures == 1 and replayed.state(tape).replay.graph.replays == 4
    for k, v in eager.network.get_weights().items():
        np.testing.assert_array_equal(replayed.network.get_weights()[k], v, err_msg=k)
    assert int(replayed.network.get_weights()["1.num_batches_tracked"]) == (10 if shared else 5)
    counter = replayed.network.params["1.num_batches_tracked"]
    writes = []
    tape.write = lambda array, host: writes.append(host)  # what sync_params would copy
    replayed.train_minibatch(tape, *_batches(1, seed=2)[0])
    assert writes == [] and int(counter.numpy()) == (12 if shared else 6)  # host-only: copied nowhere


def test_cumulative_average_batchnorm_trains_op_by_op():
    """momentum=None weighs each batch by 1 / num_batches_tracked, a kernel argument a recorded
    step would freeze: such a network runs op by op, exactly as eager."""
    tape, plain = TapeBackend(), NumpyBackend()
    replayed, eager = _bn_trainer(momentum=None), _bn_trainer(momentum=None)
    for x, y in _batches(4):
        assert replayed.train_minibatch(tape, x, y)[0] == eager.train_minibatch(plain, x, y)[0]
    assert tape.captures == 0
    failure = replayed.state(tape).replay.failure
    assert "1" in failure and "host-side state" in failure
    for k, v in eager.network.get_weights().items():
        np.testing.assert_array_equal(replayed.network.get_weights()[k], v, err_msg=k)
    # in eval mode the same layer keeps no host state: inference passes replay
    x = np.random.default_rng(8).standard_normal((16, 12)).astype(np.float32)
    expected = eager.network.transform(plain, x)
    for _ in range(3):
        np.testing.assert_array_equal(replayed.network.transform(tape, x), expected)
    assert tape.captures == 1


def test_transform_replays_are_bounded_like_its_contexts():
    net = _net(dropout=0.5)
    x = np.random.default_rng(5).standard_normal((300, 12)).astype(np.float32)
    backend = TapeBackend()
    for _ in range(2):  # the second round replays
        for rows in range(1, 301):
            np.testing.assert_allclose(net.transform(backend, x[:rows]), net.transform("numpy", x[:rows]),
                                       rtol=1e-5, atol=1e-6)
    assert backend.captures <= 10  # one recording per power-of-two capacity, none per request size


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
@pytest.mark.parametrize("momentum", [0.1, None], ids=["replayed", "op-by-op"])
def test_refused_step_of_a_batchnorm_network_on_a_capturing_backend_changes_nothing(momentum):
    """A refused step, replayed or op by op, restores the running statistics and the batch
    counter as on any backend."""
    trainer = _bn_trainer(momentum=momentum)
    net = trainer.network
    backend = TapeBackend()
    for x, y in _batches(3):
        trainer.train_minibatch(backend, x, y)
    assert backend.captures == (1 if momentum else 0)
    before, state = net.get_weights(), trainer.state_dict()
    with pytest.raises(NonFiniteError, match="left unchanged"):
        trainer.train_minibatch(backend, np.full((16, 12), 3e38, np.float32), np.zeros(16, np.int64))
    if momentum:
        assert trainer.state(backend).replay.graph.replays == 3  # the refused step was replayed
    for k, v in before.items():
        np.testing.assert_array_equal(net.get_weights()[k], v, err_msg=k)
    assert (trainer.state_dict()["step"], trainer.state_dict()["dropout_step"]) == (state["step"], state["dropout_step"]) == (3, 3)


def test_a_state_restored_over_a_recorded_step_runs_its_first_step_op_by_op():
    """Loading a fresh state (step 0) after a step was recorded: SGD's first momentum step skips
    the dampening the recorded later ones apply, so it must not be replayed."""
    make = lambda: SGD(lr=0.1, momentum=0.9, dampening=0.5)  # noqa: E731
    backend = TapeBackend()
    trainer, _ = _train(backend, make(), steps=3)
    trainer.load_state_dict({"step": 0, "dropout_step": 0, "optimizer": {}})
    reference = Trainer(_net(), L.SoftmaxCrossEntropy(), make(), batch_size=16)
    reference.network.set_weights(trainer.network.get_weights())
    for x, y in _batches(3, seed=5):
        assert trainer.train_minibatch(backend, x, y)[0] == reference.train_minibatch(jp.backend("numpy"), x, y)[0]
    for k, v in reference.network.get_weights().items():
        np.testing.assert_array_equal(trainer.network.get_weights()[k], v, err_msg=k)
