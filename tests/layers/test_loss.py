import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import DTypeError, LabelError, ShapeError
from juicepy.testing import check_loss


def test_softmax_cross_entropy_gradient_and_parity():
    check_loss(L.SoftmaxCrossEntropy(), (5,), np.array([0, 4, 2, 1]))


def test_nll_gradient_and_parity():
    check_loss(L.NegativeLogLikelihood(), (5,), np.array([3, 0, 2]))


def test_mse_gradient_and_parity(rng):
    check_loss(L.MSE(), (6,), rng.standard_normal((4, 6)))


def test_mse_on_images(rng):
    check_loss(L.MSE(), (2, 3, 3), rng.standard_normal((2, 2, 3, 3)))


def test_cross_entropy_value_is_negative_log_softmax(rng):
    z = rng.standard_normal((6, 4)) * 3
    y = np.array([0, 1, 2, 3, 3, 1])
    expected = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), y])
    assert check_loss(L.SoftmaxCrossEntropy(), (4,), y, outputs=z) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_is_nonnegative_and_small_when_confident():
    z = np.array([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0]])
    loss = check_loss(L.SoftmaxCrossEntropy(), (3,), np.array([0, 2]), outputs=z)
    assert 0 <= loss < 1e-8


def test_cross_entropy_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4]])
    loss = check_loss(L.SoftmaxCrossEntropy(), (3,), np.array([1]), outputs=z)
    assert loss == pytest.approx(1e4)


def test_mse_value(rng):
    p, t = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    assert check_loss(L.MSE(), (5,), t, outputs=p) == pytest.approx(np.mean((p - t) ** 2), rel=1e-12)


def test_label_errors():
    loss = L.SoftmaxCrossEntropy()
    with pytest.raises(LabelError, match=r"label 5 out of range \[0, 5\)"):
        loss.check_targets(np.array([0, 5]), (5,), 2, np.float32)
    with pytest.raises(LabelError, match=r"label -1 out of range"):
        loss.check_targets(np.array([-1, 0]), (5,), 2, np.float32)
    with pytest.raises(DTypeError, match="expected integer class labels, got dtype float32"):
        loss.check_targets(np.array([0.0, 1.0], np.float32), (5,), 2, np.float32)
    with pytest.raises(ShapeError, match=r"expected shape \(2,\), got \(2, 1\)"):
        loss.check_targets(np.zeros((2, 1), np.int64), (5,), 2, np.float32)


def test_cross_entropy_needs_class_vector():
    from juicepy.train import SGD, Trainer

    with pytest.raises(ShapeError, match="unit shape \\(classes,\\), got \\(2, 3\\)"):
        Trainer(jp.Network(L.Reshape((2, 3)), input_shape=(6,)), L.SoftmaxCrossEntropy(), SGD(), 4)


@pytest.mark.parametrize("ours,theirs,kind", [
    (L.SoftmaxCrossEntropy, "CrossEntropyLoss", "labels"), (L.NegativeLogLikelihood, "NLLLoss", "labels"),
    (L.MSE, "MSELoss", "values")])
def test_torch_parity(ours, theirs, kind, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    z = rng.standard_normal((8, 5))
    if theirs == "NLLLoss":
        z = z - np.log(np.exp(z).sum(1, keepdims=True))
    t = rng.integers(0, 5, 8) if kind == "labels" else rng.standard_normal((8, 5))
    backend = jp.backend("numpy")
    loss = ours()
    losses, dx = backend.empty((8,), np.float64), backend.empty((8, 5), np.float64)
    count = loss.count(8, (5,))
    loss.compute(backend, z, loss.check_targets(t, (5,), 8, np.float64), losses, dx, 1.0 / count, None)
    zt = torch.tensor(z, requires_grad=True)
    ref = getattr(torch.nn, theirs)()(zt, torch.tensor(t))
    ref.backward()
    assert losses.sum() / count == pytest.approx(ref.item(), rel=1e-10)
    np.testing.assert_allclose(dx, zt.grad.numpy(), rtol=1e-10, atol=1e-12)
