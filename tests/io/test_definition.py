import json

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import DefinitionError
from juicepy.io import build_network, definition_json, load_definition, network_definition, save_definition


def _functional():
    x = jp.Input((6,))
    enc = L.Linear(4)
    h = enc(x, name="enc")
    y = L.TiedLinear(enc)(L.ReLU()(h)) + L.Sequential(L.Linear(6), L.Tanh())(x)
    return jp.Network(inputs=x, outputs=jp.concat(y, enc(y)), seed=7)


MODELS = {
    "sequential": lambda: jp.Network(L.Sequential(L.Flatten(), L.Linear(8), L.LeakyReLU(0.2), L.Dropout(0.1),
                                                  L.Linear(3), L.LogSoftmax()), (2, 3), seed=1),
    "branches": lambda: jp.Network(L.Sequential(L.Linear(4), L.Residual(L.Linear(4)),
                                                L.Branches(L.Linear(2), L.Identity(), merge="concat"),
                                                L.Branches(L.Linear(3), L.Linear(3), merge=L.Multiply())), (5,)),
    "functional": _functional,
    "float64": lambda: jp.Network(L.Sequential(L.Linear(3), L.Sigmoid(), L.Reshape((3, 1))), (2,),
                                  dtype=np.float64),
}


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_rebuilds_the_same_network(name, tmp_path):
    net = MODELS[name]()
    doc = network_definition(net)
    text = json.dumps(doc)
    assert "batch" not in text
    rebuilt = build_network(text)
    assert [n.path for n in rebuilt.nodes] == [n.path for n in net.nodes]
    assert [type(n.layer) for n in rebuilt.nodes] == [type(n.layer) for n in net.nodes]
    assert list(rebuilt.params) == list(net.params)
    assert rebuilt.output_shapes == net.output_shapes and rebuilt.dtype == net.dtype
    assert network_definition(rebuilt) == doc
    rebuilt.set_weights(net.get_weights(), strict=True)
    x = [np.random.default_rng(0).standard_normal((3,) + s).astype(net.dtype) for s in net.input_shapes]
    np.testing.assert_array_equal(rebuilt.transform("numpy", x), net.transform("numpy", x))
    save_definition(tmp_path / "net.json", net)
    assert network_definition(load_definition(tmp_path / "net.json")) == doc


def test_shared_layers_come_back_as_one_object():
    net = build_network(definition_json(_functional()))
    enc_nodes = [n for n in net.nodes if n.path in ("enc", "enc@1")]
    assert len(enc_nodes) == 2 and enc_nodes[0].layer is enc_nodes[1].layer
    tied = next(n.layer for n in net.nodes if isinstance(n.layer, L.TiedLinear))
    assert tied.tied_to is enc_nodes[0].layer
    assert list(net.params) == ["enc.weight", "enc.bias", "tied_linear.bias", "sequential.0.weight",
                                "sequential.0.bias"]


class Scale(L.Layer):
    """A user's own layer: y = factor * x."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def compute_output(self, backend, ctx):
        backend.scale(ctx.input(), self.factor, ctx.output())

    def compute_gradients(self, backend, ctx):
        dx, acc = ctx.input_grad_target()
        if dx is None:
            return
        target = ctx.ws.get(backend, "scale", dx.shape, dx.dtype) if acc else dx
        backend.scale(ctx.output_grad(), self.factor, target)
        if acc:
            backend.add(dx, target, dx)

    def config(self):
        return {"factor": self.factor}


def test_user_layer_needs_registration_then_round_trips():
    net = jp.Network(L.Sequential(L.Linear(3), Scale(2.5)), (2,))
    with pytest.raises(DefinitionError, match=r"Scale is not registered; decorate the class with @juicepy.register_layer"):
        network_definition(net)
    text_before = None
    jp.register_layer(Scale, name="test_definition.Scale")
    try:
        text_before = definition_json(net)
        rebuilt = build_network(text_before)
        assert isinstance(rebuilt.nodes[1].layer, Scale) and rebuilt.nodes[1].layer.factor == 2.5
    finally:
        from juicepy.io.registry import LAYERS
        LAYERS.pop("test_definition.Scale")
    with pytest.raises(DefinitionError, match=r"unknown layer type 'test_definition.Scale'.*register the class"):
        build_network(text_before)


def test_register_refuses_a_second_class_under_one_name():
    class Linear(L.Layer):
        pass

    with pytest.raises(ValueError, match="already registered"):
        jp.register_layer(Linear)


@pytest.mark.parametrize("bad,match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a juicepy network definition"),
    ('{"format": "juicepy.network", "version": 99}', "version 99"),
    ('{"format": "juicepy.network", "version": 1, "root": {"$layer": 3}, "layers": [], "dtype": "float32",'
     ' "input_shapes": [[2]]}', "out of range"),
    ('{"format": "juicepy.network", "version": 1, "root": {"$layer": 0}, "dtype": "float32", "input_shapes": [[2]],'
     ' "layers": [{"type": "Linear", "config": {"units": 3}}]}', r"layers\[0\] \(Linear\): cannot rebuild"),
    ('{"format": "juicepy.network", "version": 1, "root": {"$layer": 0}, "dtype": "float32", "input_shapes": [[2]],'
     ' "layers": [{"type": "Sequential", "config": {"children": {"0": {"$layer": 0}}}}]}', "cycle"),
])
def test_bad_definitions_are_clear_errors(bad, match):
    with pytest.raises(DefinitionError, match=match):
        build_network(bad)


def test_unreadable_or_malformed_definition_files_name_the_file(tmp_path):
    with pytest.raises(DefinitionError, match=f"{tmp_path}: is a directory"):
        load_definition(tmp_path)
    with pytest.raises(DefinitionError, match="absent.json: no such definition file"):
        load_definition(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    for text, needle in [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not UTF-8"),
                         (b'{"format": "juicepy.network", "version": 1, "layers": 3, "root": {"$layer": 0}}',
                          "layers must be a list")]:
        bad.write_bytes(text)
        with pytest.raises(DefinitionError, match=f"{bad}: .*{needle}"):
            load_definition(bad)


def _leaf_paths(node, path=()):
    """Paths of every value in a JSON document (containers too), root excluded."""
    if path:
        yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _leaf_paths(value, path + (key,))


EDITS = [0, -1, 2.5, float("inf"), float("nan"), 2**63, "x", None, True, [], {"$layer": 99}]
EDITED = {
    "conv": lambda: jp.Network(L.Sequential(L.Conv2d(4, 3, padding=1), L.BatchNorm2d(), L.Conv2d(5, 1), L.ReLU(),
                                            L.MaxPool2d(2), L.AvgPool2d(2, stride=1), L.Dropout(0.2), L.Flatten(),
                                            L.Linear(3)), (2, 6, 6)),
    "sequence": lambda: jp.Network(L.Sequential(L.Embedding(7, 3, padding_idx=0), L.LSTM(4, bidirectional=True),
                                                L.GRU(3), L.RNN(2, nonlinearity="relu"), L.LastStep(), L.Linear(2)),
                                   (5,), input_dtype=np.int64),
}


@pytest.mark.parametrize("name", EDITED)
def test_a_definition_edited_anywhere_builds_or_is_a_definition_error(name):
    """Each value of the definition in turn replaced by each of EDITS (a hand-edited or damaged
    file): build_network gives a DefinitionError or a network whose inference runs. An
    LSTM's hidden_size of inf once raised OverflowError out of build_network, and a 1x1 Conv2d's
    stride of 2**63 built and then raised OverflowError from inside the NumPy backend's kernel."""
    doc = network_definition(EDITED[name]())
    refused = built = 0
    for path in _leaf_paths(doc):
        for value in EDITS:
            if value == 2**63 and (path[-1] == "num_layers" or path[0] == "input_shapes" and name == "sequence"):
                # a valid network of 2**63 layers (built until memory runs out, as torch's would;
                # load() bounds a checkpoint's by its file) or of 2**63 steps (no context fits)
                continue
            edited = json.loads(json.dumps(doc))
            node = edited
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            try:
                net = build_network(json.dumps(edited))
            except DefinitionError:
                refused += 1
                continue
            built += 1
            x = [np.ones((2,) + s, d) for s, d in zip(net.input_shapes, net.input_dtypes)]
            net.transform("numpy", x[0] if len(x) == 1 else x)
    assert refused > 10 * built > 0
