import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer


def test_branches_add_gradients_and_parity():
    block = L.Branches(L.Sequential(L.Linear(4), L.Tanh()), L.Linear(4), merge="add")
    check_layer(block, (3,), expected_output_shape=(4,))


def test_branches_concat_gradients_and_parity():
    block = L.Branches(L.Linear(2), L.Sequential(L.Linear(3), L.Sigmoid()), L.Identity(), merge="concat")
    check_layer(block, (5,), expected_output_shape=(10,))


def test_branches_with_a_user_merge_layer():
    check_layer(L.Branches(L.Linear(4), L.Sequential(L.Linear(4), L.Sigmoid()), merge=L.Multiply()),
                (3,), expected_output_shape=(4,))


def test_residual_is_identity_plus_block(backend, rng):
    inner = L.Linear(3)
    net = jp.Network(L.Residual(inner), (3,))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = net.get_weights()
    expected = x + x @ w["block.weight"].T + w["block.bias"]
    np.testing.assert_allclose(net.transform(backend, x), expected, rtol=1e-5, atol=1e-6)
    check_layer(L.Residual(L.Sequential(L.Linear(3), L.Tanh()), shortcut=L.Linear(3)), (3,))


def test_branch_paths_and_nesting():
    net = jp.Network(L.Sequential(L.Linear(4), L.Residual(L.Branches(L.Linear(4), L.Linear(4)))), (2,))
    assert list(net.params) == ["0.weight", "0.bias", "1.block.0.weight", "1.block.0.bias",
                                "1.block.1.weight", "1.block.1.bias"]
    assert [n.path for n in net.nodes][-2:] == ["1.block.merge", "1.merge"]


def test_branch_shape_mismatch_names_the_merge_path():
    with pytest.raises(ShapeError, match=r"^0\.merge: Add expects"):
        jp.Network(L.Sequential(L.Branches(L.Linear(4), L.Linear(5))), (2,))


def test_bad_merge_is_refused():
    with pytest.raises(ValueError, match="merge must be 'add', 'concat' or a Layer"):
        L.Branches(L.Linear(2), merge="max")
    with pytest.raises(TypeError, match="not a Layer"):
        L.Branches(L.Linear(2), "relu")


def test_branches_match_torch(rng):
    torch = pytest.importorskip("torch")
    net = jp.Network(L.Branches(L.Linear(4), L.Sequential(L.Linear(4), L.ReLU()), merge="concat"), (3,))
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    with torch.no_grad():
        for mod, prefix in ((a, "0."), (b, "1.0.")):
            mod.weight.copy_(torch.from_numpy(net.get_weights()[prefix + "weight"]))
            mod.bias.copy_(torch.from_numpy(net.get_weights()[prefix + "bias"]))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    xt = torch.from_numpy(x)
    expected = torch.cat([a(xt), torch.relu(b(xt))], dim=1).detach().numpy()
    np.testing.assert_allclose(net.transform("numpy", x), expected, rtol=1e-5, atol=1e-6)


class Difference(L.Layer):
    """A user's own merge layer: the first input minus the second, through backend ops only."""

    n_inputs = 2

    def compute_output(self, backend, ctx):
        y = ctx.output()
        backend.scale(ctx.input(1), -1.0, y)
        backend.add(y, ctx.input(0), y)

    def compute_gradients(self, backend, ctx):
        dy = ctx.output_grad()
        for i, sign in ((0, 1.0), (1, -1.0)):
            dx, acc = ctx.input_grad_target(i)
            if dx is None:
                continue
            if acc:
                scratch = ctx.ws.get(backend, "difference", dx.shape, dx.dtype)
                backend.scale(dy, sign, scratch)
                backend.add(dx, scratch, dx)
            else:
                backend.scale(dy, sign, dx)


def test_user_merge_layer_in_branches_and_checkpoint(tmp_path):
    block = L.Branches(L.Linear(3), L.Sequential(L.Linear(3), L.Tanh()), merge=Difference())
    check_layer(block, (4,), expected_output_shape=(3,))
    net = jp.Network(block, (4,))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    w = net.get_weights()
    expected = (x @ w["0.weight"].T + w["0.bias"]) - np.tanh(x @ w["1.0.weight"].T + w["1.0.bias"])
    np.testing.assert_allclose(net.transform("numpy", x), expected, rtol=1e-5, atol=1e-6)
    jp.register_layer(Difference, name="test_branches.Difference")
    try:
        jp.save(tmp_path / "d.st", net)
        np.testing.assert_array_equal(jp.load(tmp_path / "d.st").network.transform("numpy", x),
                                      net.transform("numpy", x))
    finally:
        from juicepy.io.registry import LAYERS
        LAYERS.pop("test_branches.Difference")
