import math

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import WeightsError


def _net():
    model = L.Sequential({"encoder": L.Sequential(L.Linear(64), L.ReLU(), L.Linear(32)),
                          "head": L.Linear(10)})
    return jp.Network(model, (128,))


def test_apply_by_subgraph_pattern_is_seeded_and_leaves_the_rest():
    a, b = _net(), _net()
    head_before = a.get_weights(["head.weight"])["head.weight"]
    set_paths = jp.init.apply(a, {"encoder.*.weight": "he_normal", "encoder.*.bias": "zeros"}, seed=1)
    jp.init.apply(b, {"encoder.*.weight": "he_normal", "encoder.*.bias": "zeros"}, seed=1)
    assert set_paths == ["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias"]
    wa, wb = a.get_weights(), b.get_weights()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    np.testing.assert_array_equal(wa["head.weight"], head_before)
    assert not wa["encoder.0.bias"].any()
    # He normal: std sqrt(2 / fan_in), fan_in 128 for the first layer
    assert abs(wa["encoder.0.weight"].std() - math.sqrt(2 / 128)) < 0.1 * math.sqrt(2 / 128)
    jp.init.apply(b, {"encoder": "he_normal"}, seed=2)
    assert not np.array_equal(b.get_weights()["encoder.0.weight"], wa["encoder.0.weight"])


@pytest.mark.parametrize("name,check", [
    ("zeros", lambda w, fi, fo: not w.any()),
    ("glorot_uniform", lambda w, fi, fo: np.abs(w).max() <= math.sqrt(6 / (fi + fo)) + 1e-7),
    ("he_uniform", lambda w, fi, fo: np.abs(w).max() <= math.sqrt(6 / fi) + 1e-7),
    ("glorot_normal", lambda w, fi, fo: abs(w.std() - math.sqrt(2 / (fi + fo))) < 0.1 * math.sqrt(2 / (fi + fo))),
])
def test_named_initialisers_have_their_distribution(name, check):
    net = _net()
    jp.init.apply(net, {"encoder.0.weight": name}, seed=0)
    assert check(net.get_weights()["encoder.0.weight"], 128, 64)


def test_callables_and_pretrained_arrays():
    net = _net()
    pretrained = np.arange(10, dtype=np.float32)
    jp.init.apply(net, {"head.bias": pretrained, "head.weight": jp.init.uniform(-0.01, 0.01)}, seed=0)
    w = net.get_weights()
    np.testing.assert_array_equal(w["head.bias"], pretrained)
    assert np.abs(w["head.weight"]).max() <= 0.01
    enc = {"0.weight": np.ones((64, 128)), "2.bias": np.full(32, 3.0)}
    assert jp.init.from_pretrained(net, enc, prefix="encoder") == ["encoder.0.weight", "encoder.2.bias"]
    np.testing.assert_array_equal(net.get_weights()["encoder.2.bias"], 3.0)


def test_errors_leave_weights_untouched():
    net = _net()
    before = net.get_weights()
    with pytest.raises(WeightsError, match=r"'decoder\.\*' match no param"):
        jp.init.apply(net, {"encoder.*": "zeros", "decoder.*": "zeros"})
    with pytest.raises(WeightsError, match=r"'head.bias' expects shape \(10,\), got \(3,\)"):
        jp.init.apply(net, {"encoder.*": "zeros", "head.bias": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown initialiser 'nope'"):
        jp.init.apply(net, {"head.weight": "nope"})
    after = net.get_weights()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_fans_follow_torch():
    assert jp.init.fans((8, 3, 5, 5)) == (75, 200)
    assert jp.init.fans((10, 4)) == (4, 10)
    torch = pytest.importorskip("torch")
    w = torch.empty(8, 3, 5, 5)
    assert jp.init.fans(w.shape) == torch.nn.init._calculate_fan_in_and_fan_out(w)


def _bn_net():
    return jp.Network(L.Sequential({"conv": L.Conv2d(4, 3), "bn": L.BatchNorm2d(), "head": L.Flatten()}),
                      (2, 6, 6))


@pytest.mark.parametrize("pattern", ["*", "bn", "bn.*"])
def test_patterns_leave_non_trained_buffers_alone(pattern):
    """BatchNorm's running statistics are buffers, not trained params: "*" or a layer path
    re-initialises the weights under it, never the statistics (a normal-initialised running_var
    would go negative and every eval output NaN)."""
    net = _bn_net()
    before = net.get_weights()
    set_paths = jp.init.apply(net, {pattern: "he_normal"}, seed=3)
    assert not any("running" in p or "num_batches" in p for p in set_paths)
    after = net.get_weights()
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert not np.array_equal(after["bn.weight"], before["bn.weight"])
    assert np.isfinite(net.transform("numpy", np.ones((2, 2, 6, 6), np.float32))).all()


def test_a_buffer_named_explicitly_is_set():
    net = _bn_net()
    assert jp.init.apply(net, {"bn.running_var": np.full(4, 2.0), "*.running_mean": "ones"}) == \
        ["bn.running_mean", "bn.running_var"]
    np.testing.assert_array_equal(net.get_weights()["bn.running_var"], 2.0)
    np.testing.assert_array_equal(net.get_weights()["bn.running_mean"], 1.0)


def test_seeds_2_to_the_32_apart_give_different_values():
    """The param streams took the seed's low 32 bits: seed 2**32 set the values of seed 0."""
    a, b, c = _net(), _net(), _net()
    jp.init.apply(a, {"*": "he_normal"}, seed=0)
    jp.init.apply(b, {"*": "he_normal"}, seed=2 ** 32)
    jp.init.apply(c, {"*": "he_normal"}, seed=0)
    wa, wb, wc = (n.get_weights(["encoder.0.weight"])["encoder.0.weight"] for n in (a, b, c))
    assert not np.array_equal(wa, wb)
    np.testing.assert_array_equal(wa, wc)
