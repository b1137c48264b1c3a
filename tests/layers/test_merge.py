import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer


def _run(layer, shapes, xs, backend):
    net = jp.Network(layer, shapes)
    return net.transform(backend, xs)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_add_gradients_and_parity(n):
    report = check_layer(L.Add(), [(3, 4)] * n, expected_output_shape=(3, 4))
    assert report.max_input_error < 1e-6


def test_add_sums_inputs(backend, rng):
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    got = _run(L.Add(), [(4,)] * 3, xs, backend)
    np.testing.assert_allclose(got, xs[0] + xs[1] + xs[2], rtol=1e-6, atol=1e-6)


def test_add_refuses_mismatched_shapes():
    with pytest.raises(ShapeError, match=r"Add expects every input to have unit shape \(4,\).*\(5,\) for input 1"):
        jp.Network(L.Add(), [(4,), (5,)])


def test_identity_gradients_and_copy(backend, rng):
    check_layer(L.Identity(), (2, 3), expected_output_shape=(2, 3))
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(L.Identity(), (2, 3), x, backend), x)


def test_multiply_gradients_and_values(backend, rng):
    check_layer(L.Multiply(), [(5,), (5,)], expected_output_shape=(5,))
    a, b = (rng.standard_normal((3, 5)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(_run(L.Multiply(), [(5,), (5,)], [a, b], backend), a * b, rtol=1e-6)


def test_multiply_refuses_mismatch():
    with pytest.raises(ShapeError, match="Multiply expects both inputs"):
        jp.Network(L.Multiply(), [(5,), (4,)])


@pytest.mark.parametrize("shapes", [[(2,), (3,)], [(1, 2, 2), (3, 2, 2), (2, 2, 2)]])
def test_concat_gradients_and_parity(shapes):
    total = sum(s[0] for s in shapes)
    check_layer(L.Concat(), shapes, expected_output_shape=(total,) + shapes[0][1:])


def test_concat_matches_numpy(backend, rng):
    xs = [rng.standard_normal((2, c, 3, 3)).astype(np.float32) for c in (1, 4, 2)]
    got = _run(L.Concat(), [x.shape[1:] for x in xs], xs, backend)
    np.testing.assert_array_equal(got, np.concatenate(xs, axis=1))


def test_concat_refuses_mismatched_spatial_shapes():
    with pytest.raises(ShapeError, match=r"Concat expects unit shapes \(C, 3, 3\).*\(2, 3, 4\) for input 1"):
        jp.Network(L.Concat(), [(1, 3, 3), (2, 3, 4)])


def test_same_junction_twice_gets_both_gradients():
    # x + x and x * x: the two gradient writes into one junction must add up
    x = jp.Input((3,))
    net = jp.Network(inputs=x, outputs=(x + x) * x)
    numpy_backend = jp.backend("numpy")
    ctx = net.context(numpy_backend, 2, training=True, input_grads=True)
    xv = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], np.float32)
    ctx.set_inputs([xv])
    ctx.forward()
    np.testing.assert_allclose(numpy_backend.to_host(ctx.output()), 2 * xv * xv)
    ctx.begin_backward()
    numpy_backend.write(ctx.loss_grad(), np.ones_like(xv))
    ctx.backward()
    np.testing.assert_allclose(numpy_backend.to_host(ctx.input_grad()), 4 * xv, rtol=1e-6)


def test_merge_layers_match_torch(rng):
    torch = pytest.importorskip("torch")
    a, b = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(2))
    got = _run(L.Concat(), [(3, 4), (3, 4)], [a, b], "numpy")
    np.testing.assert_array_equal(got, torch.cat([torch.from_numpy(a), torch.from_numpy(b)], dim=1).numpy())
    got = _run(L.Add(), [(3, 4), (3, 4)], [a, b], "numpy")
    np.testing.assert_array_equal(got, (torch.from_numpy(a) + torch.from_numpy(b)).numpy())
