"""Bad arguments to every layer constructor and public entry point: a clear ArgumentError
(a TypeError and a ValueError) naming the owner and argument, the expected and the actual,
never a silent truncation (2.7 -> 2, True -> 1, "0.5" accepted) or a raw error from deep inside."""

import math

import numpy as np
import pytest

import juicepy as jp
import juicepy.profile
from juicepy import layers as L
from juicepy import arguments
from juicepy.errors import ArgumentError
from juicepy.train import Adam, Trainer

NAN = float("nan")


def _net():
    return jp.Network(L.Sequential(L.Linear(4), L.ReLU(), L.Linear(3)), (5,))


def _trainer(batch_size=4):
    return Trainer(_net(), L.SoftmaxCrossEntropy(), Adam(), batch_size=batch_size)


LAYERS = [
    (lambda: L.Linear(-1), "Linear: out_features", "-1"),
    (lambda: L.Linear(2.7), "Linear: out_features", "float 2.7"),
    (lambda: L.Linear(3.0), "Linear: out_features", "float 3.0"),
    (lambda: L.Linear(True), "Linear: out_features", "bool True"),
    (lambda: L.Linear("3"), "Linear: out_features", "str '3'"),
    (lambda: L.Linear(3, bias="no"), "Linear: bias", "str 'no'"),
    (lambda: L.Linear(3, in_features=0), "Linear: in_features", "0"),
    (lambda: L.Linear(3, weight_init="he"), "Linear: weight_init", "str 'he'"),
    (lambda: L.TiedLinear(L.Linear(3), bias=1), "TiedLinear: bias", "int 1"),
    (lambda: L.Conv2d(4, 2.5), "Conv2d: kernel_size", "float 2.5"),
    (lambda: L.Conv2d(4.0, 3), "Conv2d: out_channels", "float 4.0"),
    (lambda: L.Conv2d(4, (3, 0)), "Conv2d: kernel_size", "(3, 0)"),
    (lambda: L.Conv2d(4, 3, stride=0), "Conv2d: stride", "0"),
    (lambda: L.Conv2d(4, 3, padding=-1), "Conv2d: padding", "-1"),
    (lambda: L.Conv2d(4, 3, padding=1.5), "Conv2d: padding", "float 1.5"),
    (lambda: L.Conv2d(4, 3, padding="valid"), "Conv2d: padding", "'valid'"),
    (lambda: L.Conv2d(4, 3, dilation=(1, True)), "Conv2d: dilation", "(1, True)"),
    (lambda: L.Conv2d(4, 3, groups=2.0), "Conv2d: groups", "float 2.0"),
    (lambda: L.Conv2d(4, 3, bias="yes"), "Conv2d: bias", "str 'yes'"),
    (lambda: L.Conv2d(4, 3, in_channels=-2), "Conv2d: in_channels", "-2"),
    (lambda: L.Conv1d(4, 3.0), "Conv1d: kernel_size", "float 3.0"),
    (lambda: L.Conv1d(4, 3, padding=(1, 1)), "Conv1d: padding", "(1, 1)"),
    (lambda: L.MaxPool2d(2.5), "MaxPool2d: kernel_size", "float 2.5"),
    (lambda: L.MaxPool2d(2, stride=0), "MaxPool2d: stride", "0"),
    (lambda: L.AvgPool2d(2, padding=-1), "AvgPool2d: padding", "-1"),
    (lambda: L.AvgPool2d(2, count_include_pad="x"), "AvgPool2d: count_include_pad", "str 'x'"),
    (lambda: L.Dropout("0.5"), "Dropout: p", "str '0.5'"),
    (lambda: L.Dropout(1.5), "Dropout: p", "1.5"),
    (lambda: L.Dropout(NAN), "Dropout: p", "nan"),
    (lambda: L.Dropout(True), "Dropout: p", "bool True"),
    (lambda: L.LeakyReLU("0.1"), "LeakyReLU: negative_slope", "str '0.1'"),
    (lambda: L.LeakyReLU(math.inf), "LeakyReLU: negative_slope", "inf"),
    (lambda: L.Reshape((2.5, 2)), "Reshape: shape", "(2.5, 2)"),
    (lambda: L.Reshape((0, 4)), "Reshape: shape", "(0, 4)"),
    (lambda: L.Reshape((-1, -1)), "Reshape: shape", "(-1, -1)"),
    (lambda: L.Reshape("34"), "Reshape: shape", "str '34'"),
    (lambda: L.BatchNorm1d(num_features=2.5), "BatchNorm1d: num_features", "float 2.5"),
    (lambda: L.BatchNorm2d(affine="no"), "BatchNorm2d: affine", "str 'no'"),
]

ENTRY_POINTS = [
    (lambda: jp.Network(L.Linear(2), input_shape=(2.5,)), "Network: input_shape", "(2.5,)"),
    (lambda: jp.Network(L.Linear(2), input_shape=(0,)), "Network: input_shape", "(0,)"),
    (lambda: jp.Network(L.Linear(2), input_shape=[(3,), (2.0,)]), "Network: input_shape", "(2.0,)"),
    (lambda: jp.Network(L.Linear(2), (3,), seed=1.5), "Network: seed", "float 1.5"),
    (lambda: jp.Network("linear", (3,)), "Network: root", "str 'linear'"),
    (lambda: jp.Input((2.5,)), "Input: shape", "(2.5,)"),
    (lambda: _trainer(batch_size=2.5), "Trainer: batch_size", "float 2.5"),
    (lambda: _trainer(batch_size=True), "Trainer: batch_size", "bool True"),
    (lambda: _trainer(batch_size=0), "Trainer: batch_size", "0"),
    (lambda: Trainer(_net(), L.SoftmaxCrossEntropy(), Adam(), 4, check_finite="yes"), "Trainer: check_finite",
     "str 'yes'"),
    (lambda: _net().context("numpy", 2.5), "Context: batch_size", "float 2.5"),
    (lambda: _net().context("numpy", -3), "Context: batch_size", "-3"),
    (lambda: _net().context("numpy", 4, training="yes"), "Context: training", "str 'yes'"),
    (lambda: jp.LearnableParams(np.zeros(3), trainable="no"), "LearnableParams: trainable", "str 'no'"),
    (lambda: _net().transform("numpy", np.zeros((2, 5), np.float32), check_finite="no"), "transform: check_finite",
     "'no'"),
    (lambda: _net().transform(3, np.zeros((2, 5), np.float32)), "backend", "int 3"),
    (lambda: _net().transform(np.zeros((2, 5), np.float32), "numpy"), "backend", "ndarray"),
    (lambda: _net().get_weights(keys="0.weight"), "get_weights: keys", "str '0.weight'"),
    (lambda: _net().set_weights([("0.bias", np.zeros(4))]), "set_weights: weights", "a list of 1 tuples"),
    (lambda: _trainer().run_training("numpy", [], 2.5), "n_steps", "float 2.5"),
    (lambda: jp.init.apply(_net(), {"*.bias": "zeros"}, seed=0.5), "init.apply: seed", "float 0.5"),
    (lambda: jp.Predictor(_net(), "numpy").swap(_net(), warmup_rows=2.5), "swap: warmup_rows", "float 2.5"),
    (lambda: jp.Network(L.Linear(2), (3,), dtype="float99"), "Network: dtype", "str 'float99'"),
    (lambda: _with_max_batch(0).transform("numpy", np.zeros((2, 5), np.float32)), "Network: max_batch", "0"),
    (lambda: _with_max_batch(2.5).transform("numpy", np.zeros((2, 5), np.float32)), "Network: max_batch",
     "float 2.5"),
    (lambda: jp.profile.profile(_net(), "numpy", batch_size=2.5), "profile: batch_size", "float 2.5"),
    (lambda: jp.profile.profile(_net(), "numpy", 4, steps=0), "profile: steps", "0"),
    (lambda: jp.profile.profile(_net(), "numpy", 4, warmup=-1), "profile: warmup", "-1"),
    (lambda: next(_digits().batches(2.5)), "batches: batch_size", "float 2.5"),
    (lambda: next(_digits().batches(0)), "batches: batch_size", "0"),
    (lambda: _digits().split(1.5), "split: fraction", "1.5"),
    (lambda: _digits().split(0.5, seed=0.5), "split: seed", "float 0.5"),
    (lambda: jp.data.load_digits(test_fraction="0.2"), "load_digits: test_fraction", "str '0.2'"),
    (lambda: Trainer(_net(), Adam(), L.SoftmaxCrossEntropy(), 4), "Trainer: loss", "Adam"),
    (lambda: Trainer(_net(), L.SoftmaxCrossEntropy(), "adam", 4), "Trainer: optimizer", "str 'adam'"),
    (lambda: Trainer(L.Linear(3), L.SoftmaxCrossEntropy(), Adam(), 4), "Trainer: network", "Linear"),
    (lambda: jp.save("unused.safetensors", L.Linear(3)), "save: network", "Linear"),
    (lambda: jp.save("unused.safetensors", _net(), trainer="t"), "save: trainer", "str 't'"),
    (lambda: jp.Predictor(L.Linear(3), "numpy"), "Predictor: network", "Linear"),
    (lambda: jp.Predictor(_net(), "numpy").swap("ck.safetensors"), "Predictor.swap: network", "str"),
    (lambda: _net().set_weights({}, strict="yes"), "set_weights: strict", "str 'yes'"),
    (lambda: jp.init.apply(_net(), ["*.bias"]), "init.apply: rules", "list ['*.bias']"),
]


def _with_max_batch(value):
    net = _net()
    net.max_batch = value  # a class attribute users set; checked when transform reads it
    return net


def _digits():
    from juicepy.data import load_digits

    return load_digits()[1]


@pytest.mark.parametrize("make, where, actual", LAYERS + ENTRY_POINTS,
                         ids=[f"{i}:{w}" for i, (_, w, _) in enumerate(LAYERS + ENTRY_POINTS)])
def test_bad_arguments_name_argument_expected_and_actual(make, where, actual):
    with pytest.raises(ArgumentError) as err:
        make()
    message = str(err.value)
    assert where in message and actual in message and "must be" in message, message
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("step", [-1, None, 2.5, "3", True])
@pytest.mark.parametrize("field", ["step", "dropout_step"])
def test_load_state_dict_refuses_bad_counters_and_changes_nothing(field, step):
    trainer = _trainer()
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    trainer.train_minibatch("numpy", x, np.array([0, 1, 2, 0]))
    state = trainer.state_dict()
    with pytest.raises(ArgumentError, match=f"load_state_dict: {field} must be an integer >= 0, got"):
        trainer.load_state_dict({**state, field: step})
    after = trainer.state_dict()
    assert (after["step"], after["dropout_step"]) == (state["step"], state["dropout_step"]) == (1, 1)


def test_a_list_of_rows_is_not_read_as_several_inputs():
    net = _net()
    x = np.zeros((3, 5), np.float32)
    with pytest.raises(ArgumentError, match=r"input must be an array of shape \(batch, 5\).*list of 3 lists"):
        net.transform("numpy", x.tolist())
    with pytest.raises(ArgumentError, match=r"input must be an array.*float"):
        net.transform("numpy", 3.0)
    np.testing.assert_array_equal(net.transform("numpy", [x]), net.transform("numpy", x))  # a list of inputs
    two = jp.Network(inputs=[a := jp.Input((2,)), b := jp.Input((2,))], outputs=a + b)
    with pytest.raises(ArgumentError, match=r"input 1 must be an array of shape \(batch, 2\).*list"):
        two.transform("numpy", [np.zeros((1, 2), np.float32), [[0.0, 0.0]]])


def test_bfloat16_torch_tensors_load_exactly_and_unconvertible_dtypes_are_named():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    net = _net()
    values = torch.arange(4, dtype=torch.bfloat16) / 8  # exact in bfloat16 and float32
    net.set_weights({"0.bias": values})
    np.testing.assert_array_equal(net.get_weights()["0.bias"], [0, 0.125, 0.25, 0.375])
    before = net.get_weights()
    with pytest.raises(jp.errors.WeightsError, match=r"set_weights: '0.bias' .*complex64"):
        net.set_weights({"0.weight": torch.zeros(4, 5), "0.bias": torch.zeros(4, dtype=torch.complex64)})
    with pytest.raises(jp.errors.WeightsError, match=r"set_weights: '2.bias'.*float8"):
        net.set_weights({"2.bias": torch.zeros(3).to(torch.float8_e4m3fn)})
    for k, v in net.get_weights().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("value, ok", [(3, True), (np.int64(3), True), (3.0, False), (True, False),
                                       (np.bool_(True), False), ("3", False), (None, False)])
def test_integer_helper(value, ok):
    if ok:
        assert arguments.integer("X", "n", value, 1) == 3
    else:
        with pytest.raises(ArgumentError, match="X: n must be an integer >= 1"):
            arguments.integer("X", "n", value, 1)


def test_number_helper_ranges():
    assert arguments.number("X", "p", 0, 0, 1) == 0.0
    assert arguments.number("X", "p", np.float32(0.5), 0, 1, high_open=True) == 0.5
    for bad in (1, NAN, math.inf, "0.5", True, None):
        with pytest.raises(ArgumentError, match=r"X: p must be a (finite )?number in \[0, 1\)|X: p must be a number"):
            arguments.number("X", "p", bad, 0, 1, high_open=True)
