"""Optimizer updates against values worked out by hand, and against torch.optim."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.net.context import Segment
from juicepy.net.params import LearnableParams
from juicepy.train import SGD, Adam, AdamW, Trainer


def _run(opt, grads, backend, p0=1.0):
    """Apply ``opt`` to a one-element param with the given gradient sequence."""
    p = LearnableParams(np.array([p0], np.float64))
    data = p.on(backend)
    grad = backend.from_host(np.zeros(1))
    seg = Segment([p], data, grad, 1.0, 1, [0])
    state = opt.init_state(backend, [seg])
    out = []
    for g in grads:
        backend.write(grad, np.array([g]))
        opt.step(backend, state, [seg])
        out.append(float(backend.to_host(data)[0]))
    return out


def test_sgd_plain(numpy_backend):
    # p <- p - lr * g: 1 - 0.1*0.5 = 0.95, then 0.95 - 0.1*(-1) = 1.05
    assert _run(SGD(lr=0.1), [0.5, -1.0], numpy_backend) == pytest.approx([0.95, 1.05])


def test_sgd_momentum(numpy_backend):
    # buf = g = 0.5, p = 0.95; buf = 0.9*0.5 + 0.5 = 0.95, p = 0.95 - 0.095 = 0.855
    assert _run(SGD(lr=0.1, momentum=0.9), [0.5, 0.5], numpy_backend) == pytest.approx([0.95, 0.855])


def test_sgd_nesterov(numpy_backend):
    # step 1: buf = 0.5, d = 0.5 + 0.9*0.5 = 0.95, p = 1 - 0.095 = 0.905
    # step 2: buf = 0.95, d = 0.5 + 0.855 = 1.355, p = 0.905 - 0.1355 = 0.7695
    assert _run(SGD(lr=0.1, momentum=0.9, nesterov=True), [0.5, 0.5], numpy_backend) == pytest.approx([0.905, 0.7695])


def test_sgd_dampening_and_weight_decay(numpy_backend):
    # g' = g + wd*p = 0.5 + 0.1 = 0.6; buf = 0.6 (first step ignores dampening); p = 1 - 0.06 = 0.94
    # g' = 0.5 + 0.094 = 0.594; buf = 0.9*0.6 + 0.5*0.594 = 0.837; p = 0.94 - 0.0837 = 0.8563
    opt = SGD(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    assert _run(opt, [0.5, 0.5], numpy_backend) == pytest.approx([0.94, 0.8563])


def test_adam_constant_gradient_moves_lr_per_step(numpy_backend):
    # with bias correction, m_hat = g and v_hat = g^2 for a constant g: each step is lr * g/(|g|+eps)
    got = _run(Adam(lr=0.01), [0.5, 0.5, 0.5], numpy_backend)
    assert got == pytest.approx([0.99, 0.98, 0.97], abs=1e-9)


def test_adam_first_steps_by_hand(numpy_backend):
    # step 1, g=0.5: m=0.05, v=0.00025, m_hat=0.5, v_hat=0.25 -> p = 1 - 0.1*0.5/(0.5+1e-8)
    # step 2, g=-1:  m=0.045-0.1=-0.055, v=0.00024975+0.001=0.00124975
    #                m_hat=-0.055/0.19, v_hat=0.00124975/0.001999 -> p -= 0.1*m_hat/(sqrt(v_hat)+1e-8)
    p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    m_hat, v_hat = -0.055 / 0.19, 0.00124975 / 0.001999
    p2 = p1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    assert _run(Adam(lr=0.1), [0.5, -1.0], numpy_backend) == pytest.approx([p1, p2], rel=1e-12)


def test_adam_l2_vs_adamw_decoupled(numpy_backend):
    # Adam folds wd*p into g: g = 0.5 + 0.5*1 = 1.0, one step moves lr: p = 1 - 0.01
    assert _run(Adam(lr=0.01, weight_decay=0.5), [0.5], numpy_backend) == pytest.approx([0.99], abs=1e-9)
    # AdamW shrinks first, p = 1*(1 - 0.01*0.5) = 0.995, then moves lr: 0.985
    assert _run(AdamW(lr=0.01, weight_decay=0.5), [0.5], numpy_backend) == pytest.approx([0.985], abs=1e-9)


def test_amsgrad_uses_running_max(numpy_backend):
    # after a big gradient the max of v keeps later steps small
    plain = _run(Adam(lr=0.1), [10.0, 0.1, 0.1], numpy_backend)
    ams = _run(Adam(lr=0.1, amsgrad=True), [10.0, 0.1, 0.1], numpy_backend)
    assert plain[0] == pytest.approx(ams[0])
    assert abs(ams[2] - ams[1]) < abs(plain[2] - plain[1])


def _torch_pair(torch, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    net = jp.Network(L.Sequential(L.Linear(16), L.Tanh(), L.Linear(4)), input_shape=(6,))
    net.set_weights(ref.state_dict(), strict=True)
    return ref, net


@pytest.mark.parametrize("name,ours,theirs", [
    ("sgd", lambda: SGD(lr=0.1), lambda p, t: t.optim.SGD(p, lr=0.1)),
    ("sgd_momentum_wd", lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
     lambda p, t: t.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("nesterov", lambda: SGD(lr=0.05, momentum=0.8, nesterov=True),
     lambda p, t: t.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    ("adam", lambda: Adam(lr=1e-2), lambda p, t: t.optim.Adam(p, lr=1e-2)),
    ("adam_l2_amsgrad", lambda: Adam(lr=1e-2, weight_decay=1e-2, amsgrad=True),
     lambda p, t: t.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("adamw", lambda: AdamW(lr=1e-2, weight_decay=0.1), lambda p, t: t.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
])
def test_several_steps_match_torch(name, ours, theirs, backend, rng):
    """On every backend present: float32 kernels other than NumPy's may round differently."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    weight_tol = 1e-5 if backend.name == "numpy" else 1e-4
    ref, net = _torch_pair(torch)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), ours(), batch_size=8)
    opt = theirs(ref.parameters(), torch)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(5):
        x = rng.standard_normal((8, 6)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        loss, _ = trainer.train_minibatch(backend, x, y)
        opt.zero_grad()
        ref_loss = loss_fn(ref(torch.tensor(x)), torch.tensor(y))
        ref_loss.backward()
        opt.step()
        assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for k, v in net.get_weights().items():
        np.testing.assert_allclose(v, ref.state_dict()[k].numpy(), rtol=weight_tol, atol=weight_tol / 10, err_msg=k)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make,message", [
    (lambda: SGD(lr=NAN), r"SGD: lr must be a finite number >= 0, got nan"),
    (lambda: SGD(lr=INF), r"SGD: lr must be a finite number >= 0, got inf"),
    (lambda: SGD(lr=-0.1), r"SGD: lr must be a finite number >= 0, got -0.1"),
    (lambda: SGD(momentum=-0.9), r"SGD: momentum must be a finite number >= 0, got -0.9"),
    (lambda: SGD(momentum=NAN), r"SGD: momentum must be a finite number >= 0, got nan"),
    (lambda: SGD(dampening=1.5), r"SGD: dampening must be a finite number in \[0, 1\], got 1.5"),
    (lambda: SGD(weight_decay=-1e-4), r"SGD: weight_decay must be a finite number >= 0, got -0.0001"),
    (lambda: SGD(nesterov=True), r"SGD: nesterov needs momentum > 0 and dampening 0, got momentum 0.0, dampening 0.0"),
    (lambda: SGD(momentum=0.9, dampening=0.1, nesterov=True), r"SGD: nesterov needs momentum > 0 and dampening 0"),
    (lambda: Adam(lr=NAN), r"Adam: lr must be a finite number >= 0, got nan"),
    (lambda: Adam(eps=0.0), r"Adam: eps must be a finite number > 0, got 0.0"),
    (lambda: Adam(eps=NAN), r"Adam: eps must be a finite number > 0, got nan"),
    (lambda: Adam(weight_decay=-0.1), r"Adam: weight_decay must be a finite number >= 0, got -0.1"),
    (lambda: Adam(betas=(1.0, 0.999)), r"Adam: betas\[0\] must be a finite number in \[0, 1\), got 1.0"),
    (lambda: Adam(betas=(0.9, -0.1)), r"Adam: betas\[1\] must be a finite number in \[0, 1\), got -0.1"),
    (lambda: Adam(betas=(0.9, NAN)), r"Adam: betas\[1\] must be a finite number in \[0, 1\), got nan"),
    (lambda: Adam(betas=(0.9,)), r"Adam: betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (lambda: AdamW(lr=-1.0), r"AdamW: lr must be a finite number >= 0, got -1.0"),
])
def test_bad_hyperparameters_are_refused_with_the_argument_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make,message", [
    (lambda: SGD(lr="0.1"), r"SGD: lr must be a number, got str '0.1'"),
    (lambda: Adam(eps=None), r"Adam: eps must be a number, got NoneType None"),
    (lambda: SGD(nesterov="yes", momentum=0.9), r"SGD: nesterov must be True or False, got str 'yes'"),
    (lambda: Adam(amsgrad=1), r"Adam: amsgrad must be True or False, got int 1"),
])
def test_hyperparameters_that_are_not_numbers_are_refused(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_hyperparameters_accepted_by_torch_are_accepted():
    SGD(lr=0.0, momentum=0.0, dampening=1.0, weight_decay=0.0)
    SGD(lr=1, momentum=0.9, nesterov=True)
    Adam(lr=0.0, betas=[0.0, 0.0], eps=1e-30)
    AdamW(betas=np.array([0.5, 0.5]), weight_decay=0)


@pytest.mark.parametrize("attr,value,message", [
    ("lr", float("nan"), r"Adam: lr must be a finite number >= 0, got nan"),
    ("eps", -1.0, r"Adam: eps must be a finite number > 0, got -1.0"),
    ("beta2", 1.0, r"Adam: betas\[1\] must be a finite number in \[0, 1\), got 1.0"),
])
def test_hyperparameters_changed_later_are_checked_before_the_step(numpy_backend, attr, value, message):
    net = jp.Network(L.Sequential(L.Linear(4), L.Dropout(0.2), L.Linear(2)), input_shape=(3,))
    trainer = Trainer(net, L.MSE(), Adam(lr=1e-2), batch_size=4)
    x, t = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    trainer.train_minibatch(numpy_backend, x, t)
    weights, state = net.get_weights(), trainer.state_dict()
    setattr(trainer.optimizer, attr, value)
    with pytest.raises(ValueError, match=message):
        trainer.train_minibatch(numpy_backend, x, t)
    for k, v in weights.items():
        np.testing.assert_array_equal(net.get_weights()[k], v, err_msg=k)
    assert (trainer.state_dict()["step"], trainer.state_dict()["dropout_step"]) == (state["step"], state["dropout_step"])


def test_momentum_switched_on_later_is_refused(numpy_backend):
    """An SGD made without momentum keeps no momentum buffer: turning momentum on later would
    silently do nothing."""
    opt = SGD(lr=0.1)
    opt.momentum = 0.9
    with pytest.raises(ValueError, match=r"SGD: momentum 0.9 set after the optimizer was made without momentum"):
        opt.check()
