import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import DTypeError, NonFiniteError, ShapeError, WeightsError


def _net(**kw):
    return jp.Network(L.Sequential(L.Linear(8), L.ReLU(), L.Linear(3)), input_shape=(5,), **kw)


def test_transform_any_number_of_rows(backend, rng):
    net = _net()
    net.max_batch = 64  # force several chunks and a remainder context
    x = rng.standard_normal((150, 5)).astype(np.float32)
    full = net.transform(backend, x)
    assert full.shape == (150, 3)
    np.testing.assert_allclose(net.transform(backend, x[:1]), full[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.transform(backend, x[70:71]), full[70:71], rtol=1e-5, atol=1e-6)
    assert set(k[1] for k in net._contexts) == {64, 22, 1}


def test_transform_matches_host_math(numpy_backend, rng):
    net = _net()
    w = net.get_weights()
    x = rng.standard_normal((4, 5)).astype(np.float32)
    expected = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0) @ w["2.weight"].T + w["2.bias"]
    np.testing.assert_allclose(net.transform(numpy_backend, x), expected, rtol=1e-5, atol=1e-6)


def test_transform_rejects_bad_input(numpy_backend):
    net = _net()
    with pytest.raises(ShapeError, match=r"input: expected shape \(batch, 5\), got \(2, 4\)"):
        net.transform(numpy_backend, np.zeros((2, 4), np.float32))
    with pytest.raises(DTypeError, match="input: expected dtype float32, got float64"):
        net.transform(numpy_backend, np.zeros((2, 5)))
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        net.transform(numpy_backend, np.full((2, 5), np.nan, np.float32), check_finite=True)


def test_build_time_shape_mismatch_names_layer_and_both_shapes():
    with pytest.raises(ShapeError) as err:
        jp.Network(L.Sequential(L.Linear(8), L.Reshape((3, 3))), input_shape=(5,))
    assert "1:" in str(err.value) and "(8,)" in str(err.value) and "(3, 3)" in str(err.value)


def test_float_dtype_required():
    with pytest.raises(DTypeError, match="float type"):
        jp.Network(L.Linear(2), input_shape=(3,), dtype=np.int32)


def test_seed_makes_init_reproducible():
    a, b, c = _net(seed=1).get_weights(), _net(seed=1).get_weights(), _net(seed=2).get_weights()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_get_and_set_weights_round_trip():
    src, dst = _net(seed=1), _net(seed=2)
    dst.set_weights(src.get_weights(), strict=True)
    for k, v in src.get_weights().items():
        np.testing.assert_array_equal(dst.get_weights()[k], v)
    assert list(src.get_weights(keys=["2.bias"])) == ["2.bias"]


def test_set_weights_updates_only_named_and_validates_first():
    net = _net()
    before = net.get_weights()
    bias = np.arange(3, dtype=np.float32)
    net.set_weights({"2.bias": bias})
    np.testing.assert_array_equal(net.get_weights()["2.bias"], bias)
    np.testing.assert_array_equal(net.get_weights()["0.weight"], before["0.weight"])
    after_first = net.get_weights()
    with pytest.raises(WeightsError, match=r"unknown param '9.weight'"):
        net.set_weights({"2.bias": bias + 1, "9.weight": np.zeros(1)})
    with pytest.raises(WeightsError, match=r"'0.weight' expects shape \(8, 5\), got \(5, 8\)"):
        net.set_weights({"2.bias": bias + 1, "0.weight": np.zeros((5, 8))})
    with pytest.raises(WeightsError, match="missing params"):
        net.set_weights({"2.bias": bias + 1}, strict=True)
    for k, v in net.get_weights().items():  # nothing changed by the refused calls
        np.testing.assert_array_equal(v, after_first[k])
    with pytest.raises(WeightsError, match="unknown param 'nope'"):
        net.get_weights(keys=["nope"])


def test_set_weights_reaches_existing_device_contexts(numpy_backend, rng):
    net = _net()
    x = rng.standard_normal((2, 5)).astype(np.float32)
    net.transform(numpy_backend, x)  # contexts and device copies exist now
    net.set_weights({k: np.zeros_like(v) for k, v in net.get_weights().items()})
    np.testing.assert_array_equal(net.transform(numpy_backend, x), 0.0)


def test_torch_state_dict_loads_as_is(numpy_backend, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    ref = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net = _net()
    net.set_weights(ref.state_dict(), strict=True)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(net.transform(numpy_backend, x), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    back = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    back.load_state_dict({k: torch.tensor(v) for k, v in net.get_weights().items()})  # and back again


def test_summary_lists_layers_and_counts():
    text = _net().summary()
    assert "Linear" in text and "ReLU" in text and "(3,)" in text
    assert f"{5 * 8 + 8 + 8 * 3 + 3:,}" in text


def test_multiple_inputs_are_counted():
    net = _net()
    with pytest.raises(ShapeError, match="network takes 1 input"):
        net.check_inputs([np.zeros((1, 5), np.float32)] * 2)


def test_net_imports_nothing_above_it():
    """net/ sits below layers/: none of its modules imports from juicepy.layers (or higher)."""
    import ast
    import pathlib

    import juicepy.net

    above = ("layers", "train", "io", "testing", "models", "predictor", "profile", "cli")
    for path in pathlib.Path(juicepy.net.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] not in above, f"{path.name} imports ..{node.module}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("juicepy.") and n.split(".")[1] in above for n in names), path.name
