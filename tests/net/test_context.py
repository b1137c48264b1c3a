import re
import tracemalloc

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.train import Adam, Trainer


def _mlp():
    return jp.Network(L.Sequential(L.Linear(64), L.ReLU(), L.Dropout(0.2), L.Linear(32), L.Tanh(), L.Linear(10)),
                      input_shape=(20,))


def _bn_mlp():
    """With BatchNorm: each step also saves its running statistics (for a refused step)."""
    return jp.Network(L.Sequential(L.Linear(64), L.BatchNorm1d(), L.ReLU(), L.Dropout(0.2), L.Linear(10)),
                      input_shape=(20,))


def _residual_mlp():
    """Identity shortcuts (sharing their input's buffers) and Add + ReLU pairs (fused)."""
    return jp.Network(L.Sequential(L.Linear(32), L.Residual(L.Sequential(L.Linear(32), L.BatchNorm1d(), L.ReLU(),
                                                                         L.Linear(32))), L.ReLU(),
                                   L.Residual(L.Linear(32)), L.ReLU(), L.Linear(10)), input_shape=(20,))


@pytest.mark.parametrize("make_net", [_mlp, _bn_mlp, _residual_mlp])
def test_training_step_allocates_no_backend_buffers(backend, rng, make_net):
    trainer = Trainer(make_net(), L.SoftmaxCrossEntropy(), Adam(), batch_size=16)
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    # warm-up: the first step makes the context and the optimizer state; where the backend
    # captures, the second records the step as a graph (with its own shift buffer)
    for _ in range(2):
        trainer.train_minibatch(backend, x, y)
    before = backend.allocations
    for _ in range(3):
        trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before


def _step_peak_bytes(backend, batch, rng, make_net=_mlp):
    trainer = Trainer(make_net(), L.SoftmaxCrossEntropy(), Adam(), batch_size=batch)
    x = rng.standard_normal((batch, 20)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    trainer.train_minibatch(backend, x, y)
    tracemalloc.start()
    try:
        trainer.train_minibatch(backend, x, y)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        trainer.train_minibatch(backend, x, y)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make_net", [_mlp, _bn_mlp, _residual_mlp])
def test_numpy_step_allocates_nothing_that_grows_with_the_batch(numpy_backend, rng, make_net):
    """Stronger than the counter: NumPy reports every array to tracemalloc. A steady-state step
    may make small Python objects and NumPy's fixed-size iterator buffers (8192 elements at
    most, whatever the array size), but no array that grows with the batch: any such array
    grows by at least the logits' growth, ten times the tolerance. What is alive at the peak
    besides varies by a few KiB between runs (1.6-2.6 KiB in about 1 run in 20 of the residual
    MLP: a tolerance of a hundredth of that growth, 1.5 KiB, failed there)."""
    small, large = _step_peak_bytes(numpy_backend, 256, rng, make_net), _step_peak_bytes(numpy_backend, 4096, rng, make_net)
    smallest_growth_of_an_activation = (4096 - 256) * 10 * 4  # the logits
    assert large - small < smallest_growth_of_an_activation / 10, (small, large)


def test_intermediate_outputs_and_gradients_readable(numpy_backend, rng):
    net = jp.Network(L.Sequential(L.Linear(5), L.ReLU(), L.Linear(3)), input_shape=(4,), dtype=np.float64)
    x = rng.standard_normal((2, 4))
    ctx = net.context(numpy_backend, 2, training=True)
    ctx.set_inputs([x])
    ctx.forward()
    w0, b0 = net.get_weights()["0.weight"], net.get_weights()["0.bias"]
    np.testing.assert_allclose(ctx.output("0"), x @ w0.T + b0)
    np.testing.assert_allclose(ctx.output("1"), np.maximum(x @ w0.T + b0, 0))
    ctx.begin_backward()
    numpy_backend.fill(ctx.loss_grad(), 1.0)
    ctx.backward()
    w2 = net.get_weights()["2.weight"]
    np.testing.assert_allclose(ctx.output_grad("1"), np.ones((2, 3)) @ w2)
    with pytest.raises(KeyError, match="no layer at path '7'"):
        ctx.output("7")


def test_inference_context_keeps_no_gradients(numpy_backend):
    net = jp.Network(L.Linear(3), input_shape=(4,))
    ctx = net.context(numpy_backend, 2)
    with pytest.raises(ValueError, match="keeps no gradients"):
        ctx.output_grad()


def test_unused_output_gets_zero_gradient(numpy_backend, rng):
    """A layer whose output nobody consumed sees a zero upstream gradient, not stale memory."""
    net = jp.Network(L.Sequential(L.Linear(3), L.Tanh()), input_shape=(4,), dtype=np.float64)
    ctx = net.context(numpy_backend, 2, training=True)
    ctx.set_inputs([rng.standard_normal((2, 4))])
    ctx.forward()
    ctx.grad(net.outputs[0])[...] = np.nan  # garbage that must not leak into param grads
    ctx.begin_backward()
    ctx.backward()
    np.testing.assert_array_equal(ctx.param_grad("0.weight"), 0.0)


def test_batch_size_must_be_positive(numpy_backend):
    net = jp.Network(L.Linear(3), input_shape=(4,))
    with pytest.raises(ValueError, match="Context: batch_size must be an integer >= 1, got 0"):
        net.context(numpy_backend, 0)


class _Scratchy(L.Layer):
    """Makes a buffer in setup, or (``late=True``) tries to in a compute method."""

    def __init__(self, late=False):
        super().__init__()
        self.late = late

    def setup(self, backend, ctx):
        if not self.late:
            ctx.make_buffer("twice", (ctx.batch_size,) + ctx.input_shapes[0])

    def compute_output(self, backend, ctx):
        if self.late:
            ctx.make_buffer("late", (1,))
        twice = ctx.buffer("twice")
        backend.scale(ctx.input(), 2.0, twice)
        backend.copy(twice, ctx.output())


def test_buffers_are_made_in_setup_and_looked_up_after(numpy_backend):
    net = jp.Network(_Scratchy(), input_shape=(3,), dtype=np.float64)
    ctx = net.context(numpy_backend, 2)
    ctx.set_inputs([np.ones((2, 3))])
    ctx.forward()
    np.testing.assert_array_equal(ctx.output(), 2.0)
    node_ctx = ctx.plan[0][1]
    with pytest.raises(KeyError, match=r"no buffer 'other' \(made in setup: twice\)"):
        node_ctx.buffer("other")
    late = jp.Network(_Scratchy(late=True), input_shape=(3,)).context(numpy_backend, 2)
    with pytest.raises(RuntimeError, match=r"make_buffer\('late'\) outside Layer.setup"):
        late.forward()


def test_gradient_vocabulary(numpy_backend, rng):
    """Reads are ``*_grad`` buffers; what a layer writes is a ``*_grad_target`` (buffer, accumulate)."""
    net = jp.Network(L.Linear(2), input_shape=(3,), dtype=np.float64)
    ctx = net.context(numpy_backend, 4, training=True)
    ctx.set_inputs([rng.standard_normal((4, 3))])
    ctx.forward()
    ctx.begin_backward()
    numpy_backend.fill(ctx.loss_grad(), 1.0)
    node_ctx = ctx.plan[0][1]
    assert node_ctx.input_grad_target() == (None, False)  # the network input keeps no gradient
    target = node_ctx.param_grad_target(net.param("weight"))
    assert target.buffer is ctx.param_grad("weight") and target.accumulate is False
    assert node_ctx.param_grad_target(net.param("weight")).accumulate is True  # a second writer adds
    assert ctx.output_grad() is node_ctx.output_grad()
    with pytest.raises(ValueError, match="input_grads=True"):
        ctx.input_grad()


def _fused_chains(ctx) -> list:
    """(fused layer, its consumers...) type names of each fused step of ``ctx``."""
    return [(type(layer).__name__,) + tuple(type(c.node.layer).__name__ for c in consumers)
            for layer, _, consumers in ctx._steps if consumers]


def _trained_with_and_without_fusion(monkeypatch, backend, make_net, x, y, lr, steps) -> dict:
    """{Context.fuse: (losses of ``steps`` Adam steps on a fresh make_net(), its weights after
    them, its transform of x, the fused chains of a training and of an inference context)}."""
    from juicepy.net.context import Context

    results = {}
    for fuse in (True, False):
        monkeypatch.setattr(Context, "fuse", fuse)
        net = make_net()
        trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=lr), batch_size=len(x))
        losses = [trainer.train_minibatch(backend, x, y)[0] for _ in range(steps)]  # (loss, outputs)
        results[fuse] = (losses, net.get_weights(), net.transform(backend, x),
                         _fused_chains(net.context(backend, len(x), training=True)),
                         _fused_chains(net.context(backend, len(x))))
    return results


def _conv_bn_relu():
    return jp.Network(L.Sequential(L.Conv2d(6, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.MaxPool2d(2),
                                   L.Conv2d(4, 3, padding=1), L.BatchNorm2d(affine=False), L.ReLU(),
                                   L.Flatten(), L.Linear(5)), input_shape=(3, 8, 8), seed=3)


@pytest.mark.parametrize("kernels", ["c", "numpy"])
def test_fused_batch_norm_relu_computes_the_same_bits_as_the_two_layers(rng, monkeypatch, kernels):
    """A BatchNorm whose only reader is a ReLU runs both as one op (Context._steps): training
    steps and running statistics are exactly what the layers give one by one; inference, where
    the convolution absorbs the batch norm and ReLU, equals them within float32 rounding."""
    from juicepy.backends.numpy import NumpyBackend, spatial

    backend = NumpyBackend(kernels=kernels)
    monkeypatch.setattr(spatial, "NORM_MIN_INNER", 1)  # the C passes on the 4x4 planes too
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    results = _trained_with_and_without_fusion(monkeypatch, backend, _conv_bn_relu, x, y, lr=0.01, steps=3)
    for fuse, (*_, training_chains, inference_chains) in results.items():
        assert training_chains == ([("BatchNorm2d", "ReLU")] * 2 if fuse else [])
        assert inference_chains == ([("Conv2d", "BatchNorm2d", "ReLU")] * 2 if fuse else [])
    (losses, weights, out, *_), (losses0, weights0, out0, *_) = results[True], results[False]
    assert losses == losses0
    np.testing.assert_allclose(out, out0, rtol=1e-5, atol=1e-5 * np.abs(out0).max())
    for name in weights0:
        np.testing.assert_array_equal(weights[name], weights0[name], err_msg=name)


def test_a_batch_norm_whose_output_is_read_twice_or_is_a_network_output_is_not_fused():
    from juicepy.net.context import Context

    nets = {0: [L.Sequential(L.Linear(4), L.BatchNorm1d(), L.Branches(L.ReLU(), L.Identity())),  # two readers
                L.Sequential(L.Linear(4), L.BatchNorm1d()),  # the network's output
                L.Sequential(L.Linear(4), L.BatchNorm1d(sync=True), L.ReLU())],  # sums over ranks in between
            1: [L.Sequential(L.Linear(4), L.BatchNorm1d(), L.ReLU())]}
    for fused, roots in nets.items():
        for root in roots:
            ctx = Context(jp.Network(root, input_shape=(3,)), jp.backend("numpy"), 4, training=True)
            assert sum(bool(consumers) for _, _, consumers in ctx._steps) == fused, root


def test_reading_the_output_a_fusion_skips_is_an_error_not_stale_values(monkeypatch):
    """The BatchNorm of a fused BatchNorm + ReLU never writes its own output or its gradient:
    the context refuses to hand those buffers out, names the fused pair, and keeps them when
    fusion is off."""
    from juicepy.net.context import Context

    net = _conv_bn_relu()
    backend = jp.backend("numpy")
    ctx = Context(net, backend, 2, training=True)
    fused_pairs = [(nctx.path, consumers[0].path) for _, nctx, consumers in ctx._steps if consumers]
    bn_path, relu_path = fused_pairs[0]
    for read in (ctx.output, ctx.output_grad):
        with pytest.raises(ValueError, match=re.escape(f"{bn_path}: its output is not kept") + ".*" + re.escape(f"fused with {relu_path}")):
            read(bn_path)
    ctx.output(relu_path)  # the fused op writes the consumer's output
    monkeypatch.setattr(Context, "fuse", False)
    unfused = Context(net, backend, 2, training=True)
    assert unfused.output(bn_path).shape == ctx.output(relu_path).shape


def _with_norms_far_from_init(net, seed):
    """``net`` with its norms' running statistics, scales and all biases drawn far from their
    initial 0 and 1, so that a fused epilogue that skipped or misplaced one would show."""
    rng = np.random.default_rng(seed)
    weights = net.get_weights()
    for name, value in weights.items():
        if name.endswith(("running_var", ".weight")) and value.ndim == 1:
            weights[name] = rng.uniform(0.3, 3.0, value.shape).astype(value.dtype)
        elif name.endswith(("running_mean", "bias")):
            weights[name] = rng.normal(0.0, 0.5, value.shape).astype(value.dtype)
    net.set_weights(weights)
    return net


def _conv_norm_net(seed=4):
    """Convolutions followed by a batch norm (and a ReLU): with a bias, without an affine
    norm, depthwise, strided 1x1, and a Conv1d with a BatchNorm1d; running statistics and
    affine params far from their initial 0 and 1; the network's output is the last ReLU's."""
    net = jp.Network(L.Sequential(
        L.Conv2d(8, 3, padding=1), L.BatchNorm2d(), L.ReLU(),
        L.Conv2d(8, 3, padding=1, groups=8, bias=False), L.BatchNorm2d(affine=False), L.ReLU(),
        L.Conv2d(6, 1, stride=2), L.BatchNorm2d(),
        L.Reshape((6, 16)), L.Conv1d(5, 3, padding=1), L.BatchNorm1d(), L.ReLU()), input_shape=(3, 8, 8), seed=seed)
    return _with_norms_far_from_init(net, seed)


def test_inference_convolution_absorbs_its_batch_norm_and_relu(rng, monkeypatch, backend):
    """In inference each Conv2d/Conv1d runs its BatchNorm (and the ReLU after it) as one op
    (conv2d's epilogue), on every backend: the outputs equal those of the layers one by one
    within float32 rounding, the absorbed outputs are refused instead of stale, the running
    statistics are untouched, a steady pass allocates nothing, and training contexts keep the
    convolution apart (their batch norm needs its output's statistics)."""
    from juicepy.net.context import Context

    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    net = _conv_norm_net()
    before = net.get_weights()
    ctx = net.context(backend, 4)
    chains = [(nctx.path, [c.path for c in consumers]) for _, nctx, consumers in ctx._steps if consumers]
    assert [len(c) for _, c in chains] == [2, 2, 1, 2]
    assert all(type(net.node(head).layer).__name__.startswith("Conv") for head, _ in chains)
    out = net.transform(backend, x)
    for head, consumers in chains:
        for path in [head] + consumers[:-1]:
            with pytest.raises(ValueError, match=re.escape(f"{path}: its output is not kept")):
                ctx.output(path)
    net.transform(backend, x)  # where the backend captures, the second pass records the graph
    allocations = backend.allocations
    again = net.transform(backend, x)
    assert backend.allocations == allocations
    np.testing.assert_array_equal(again, out)
    after = net.get_weights()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    training = net.context(backend, 4, training=True)
    assert [type(layer).__name__ for layer, _, consumers in training._steps if consumers] == ["BatchNorm2d"] * 2 \
        + ["BatchNorm1d"]
    monkeypatch.setattr(Context, "fuse", False)
    unfused = _conv_norm_net().transform(backend, x)
    assert 0.2 < (unfused == 0).mean() < 0.8  # the network's output is a fused ReLU's
    np.testing.assert_allclose(out, unfused, rtol=1e-5, atol=1e-5 * np.abs(unfused).max())


def test_a_convolution_is_not_fused_with_a_synced_or_twice_read_batch_norm_or_when_subclassed():
    from juicepy.net.context import Context

    for root in [L.Sequential(L.Conv2d(2, 3), L.BatchNorm2d(sync=True), L.ReLU()),
                 L.Sequential(L.Conv2d(2, 3), L.Branches(L.BatchNorm2d(), L.Identity())),
                 L.Sequential(L.Conv2d(2, 3), L.ReLU(), L.BatchNorm2d()),
                 L.Sequential(_ScaledConv(2, 3), L.BatchNorm2d(), L.ReLU())]:
        ctx = Context(jp.Network(root, input_shape=(1, 8, 8)), jp.backend("numpy"), 2)
        assert not any(isinstance(layer, L.Conv2d) and consumers for layer, _, consumers in ctx._steps), root


def _residual_net(seed=6):
    """The zoo's ResNet (identity and projection shortcuts) with batch norms far from their
    initial statistics, and a block whose second conv has a bias and no batch norm."""
    from juicepy.models.resnet import resnet

    x = jp.Input((3, 8, 8))
    h = resnet((3, 8, 8), 5, widths=(4, 8)).children["stage2"](
        resnet((3, 8, 8), 5, widths=(4,)).children["stem"](x, name="stem"), name="stage")
    body = L.Sequential(L.Conv2d(8, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.Conv2d(8, 3, padding=1))
    h = L.ReLU()(L.Residual(body)(h, name="plain"), name="relu")
    out = L.Linear(5)(L.GlobalAvgPool2d()(h, name="pool"), name="fc")
    net = jp.Network(inputs=x, outputs=out, seed=seed)
    return _with_norms_far_from_init(net, seed)


def test_inference_convolution_absorbs_the_residual_add_and_relu(rng, monkeypatch, backend):
    """In inference a residual block's second conv runs its BatchNorm, the Add of the skip
    input (an identity or a projection, written before) and the ReLU as one conv2d on every
    backend, with or without a batch norm: the outputs equal the layers one by one within
    float32 rounding, the skipped outputs are refused, a steady pass allocates nothing."""
    from juicepy.net.context import Context

    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    net = _residual_net()
    ctx = net.context(backend, 4)
    assert _fused_chains(ctx) == [("Conv2d", "BatchNorm2d", "ReLU"),  # stem
                                  ("Conv2d", "BatchNorm2d"),  # the projection
                                  ("Conv2d", "BatchNorm2d", "ReLU"), ("Conv2d", "BatchNorm2d", "Add", "ReLU"),
                                  ("Conv2d", "BatchNorm2d", "ReLU"), ("Conv2d", "Add", "ReLU")]
    out = net.transform(backend, x)
    for path in ("stage.0.0.block.4", "stage.0.0.merge", "plain.block.3", "plain.merge"):
        with pytest.raises(ValueError, match=re.escape(f"{path}: its output is not kept")):
            ctx.output(path)
    net.transform(backend, x)  # where the backend captures, the second pass records the graph
    allocations = backend.allocations
    np.testing.assert_array_equal(net.transform(backend, x), out)
    assert backend.allocations == allocations
    monkeypatch.setattr(Context, "fuse", False)
    unfused = _residual_net()
    assert _fused_chains(unfused.context(backend, 4)) == []
    want = unfused.transform(backend, x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_residual_add_is_absorbed_only_where_its_other_input_is_written_before():
    """The chain runs in its first placement's turn: an Add whose other input a later
    placement writes stays out of it (that placement's own conv takes the Add instead), and
    so does an Add of three inputs or of one input twice."""
    from juicepy.net.context import Context

    x = jp.Input((2, 6, 6))
    early = L.BatchNorm2d()(L.Conv2d(3, 3, padding=1)(x, name="early"), name="norm")
    late = L.Conv2d(3, 1)(x, name="late")
    net = jp.Network(inputs=x, outputs=L.ReLU()(L.Add()(early, late, name="sum"), name="relu"))
    ctx = Context(net, jp.backend("numpy"), 2)
    assert [(nctx.path, [c.path for c in consumers]) for _, nctx, consumers in ctx._steps if consumers] == \
        [("early", ["norm"]), ("late", ["sum", "relu"])]
    x = jp.Input((2, 6, 6))
    p, q = L.Conv2d(3, 1)(x, name="p"), L.Conv2d(3, 1)(x, name="q")
    a = L.BatchNorm2d()(L.Conv2d(3, 3, padding=1)(x, name="conv"), name="norm")
    for out in (L.Add()(a, p, q, name="sum"), L.Add()(a, a, name="sum")):
        ctx = Context(jp.Network(inputs=x, outputs=L.ReLU()(out, name="relu")), jp.backend("numpy"), 2)
        assert [(nctx.path, [c.path for c in consumers]) for _, nctx, consumers in ctx._steps if consumers] == \
            [("conv", ["norm"]), ("sum", ["relu"])]


class _ScaledConv(L.Conv2d):
    """Computes its output otherwise: the fused op would skip that."""

    def compute_output(self, backend, ctx):
        super().compute_output(backend, ctx)
        backend.scale(ctx.output(), 2.0, ctx.output())


def _relu_pool_net():
    return jp.Network(L.Sequential(L.Conv2d(4, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                                   L.Conv2d(5, 3), L.ReLU(), L.MaxPool2d(3, stride=1, padding=1),
                                   L.Flatten(), L.Linear(6), L.ReLU(), L.Linear(3)), input_shape=(2, 8, 8), seed=5)


def test_fused_relu_max_pool_computes_the_same_bits_as_the_two_layers(rng, monkeypatch, backend):
    """A ReLU whose only reader is a MaxPool2d runs as pool then ReLU on the pooled map (max
    commutes with ReLU): losses, weights after training and outputs are the bits of the layers
    one by one, on every backend, with windows whose maximum is negative, zero or tied (the
    input's half of zeros and the shift make many)."""
    x = rng.standard_normal((6, 2, 8, 8)).astype(np.float32) - 0.5
    x[:, :, :, ::2] = 0.0
    y = rng.integers(0, 3, 6)
    results = _trained_with_and_without_fusion(monkeypatch, backend, _relu_pool_net, x, y, lr=0.05, steps=4)
    for fuse, (*_, training_chains, _) in results.items():
        assert training_chains == ([("ReLU", "MaxPool2d")] * 2 if fuse else [])
    (losses, weights, out, *_), (losses0, weights0, out0, *_) = results[True], results[False]
    assert losses == losses0
    np.testing.assert_array_equal(out, out0)
    for name in weights0:
        np.testing.assert_array_equal(weights[name], weights0[name], err_msg=name)
    assert not np.array_equal(weights0["0.weight"], _relu_pool_net().get_weights()["0.weight"])  # it trained


def test_a_relu_before_another_pool_or_read_twice_is_not_fused():
    from juicepy.net.context import Context

    for root in [L.Sequential(L.Conv2d(2, 3), L.ReLU(), L.AvgPool2d(2)),
                 L.Sequential(L.Conv2d(2, 3), L.ReLU(), L.Branches(L.MaxPool2d(2), L.MaxPool2d(2))),
                 L.Sequential(L.Conv2d(2, 3), L.LeakyReLU(), L.MaxPool2d(2))]:
        ctx = Context(jp.Network(root, input_shape=(1, 8, 8)), jp.backend("numpy"), 2, training=True)
        assert not any(consumers for _, _, consumers in ctx._steps), root


def _shortcut_net(dtype=np.float32):
    """Identity in every role: a ResNet-style block (Add + ReLU), a chain of two, fan-out of one
    Identity to two readers, an Identity straight off the network input, and one as a network
    output (which keeps its own buffers)."""
    from juicepy.models.resnet import basic_block

    x = jp.Input((3, 6, 6))
    h = L.Identity()(x, name="first")  # reads the network input
    h = L.Conv2d(4, 3, padding=1)(h, name="stem")
    h = basic_block(4)(h, name="block")
    chain = L.Identity()(L.Identity()(h, name="chain0"), name="chain1")
    twice = L.Identity()(h, name="twice")
    h = L.Add()(chain, L.Conv2d(4, 1)(twice, name="proj"), twice, name="sum")
    h = L.ReLU()(h, name="relu")
    out = L.Linear(5)(L.Flatten()(h, name="flat"), name="fc")
    return jp.Network(inputs=x, outputs=[out, L.Identity()(out, name="last")], dtype=dtype, seed=2)


def _run_shortcut_net(backend, rng, monkeypatch, alias, fuse):
    from juicepy.net.context import Context

    monkeypatch.setattr(Context, "alias", alias)
    monkeypatch.setattr(Context, "fuse", fuse)
    net = _shortcut_net(np.float64 if np.float64 in [np.dtype(d) for d in backend.dtypes] else np.float32)
    ctx = net.context(backend, 4, training=True, input_grads=True)
    x = np.random.default_rng(5).standard_normal((4, 3, 6, 6))
    g0, g1 = np.random.default_rng(6).standard_normal((2, 4, 5))
    results = []
    for _ in range(2):  # twice: the 'written' marks must start over each pass
        ctx.set_inputs([x.astype(net.dtype)])
        ctx.forward()
        ctx.begin_backward()
        backend.write(ctx.loss_grad(0), g0.astype(net.dtype))
        backend.write(ctx.loss_grad(1), g1.astype(net.dtype))
        ctx.backward()
        results.append([backend.to_host(a).copy() for a in
                        (ctx.output(), ctx.data(net.outputs[1]), ctx.input_grad(), ctx.param_grad("proj.weight"),
                         ctx.param_grad("stem.weight"), ctx.output("chain1"), ctx.output("twice"))])
    return net, ctx, results


def test_identity_shares_its_input_buffers_and_gradients_still_add_up(ops_backend, rng, monkeypatch):
    """An Identity's output is its input's buffer (data and gradient) unless it is a network
    output; every reader's gradient still reaches the input, in any order and through chains,
    so outputs and gradients are those of Identities that copy (Context.alias off), on every
    backend, with and without the Add + ReLU fusion."""
    net, ctx, shared = _run_shortcut_net(ops_backend, rng, monkeypatch, alias=True, fuse=True)
    data = {n.path: n.descriptor for n in net.nodes}
    block = data["block.1"].outputs[0]  # the block's last ReLU
    for path in ("chain0", "chain1", "twice"):
        assert ctx.output(path) is ctx.data(block) and ctx.output_grad(path) is ctx.grad(block)
    assert ctx.output("first") is ctx.data(net.inputs[0]) and ctx.output_grad("first") is ctx.input_grad()
    assert ctx.data(net.outputs[1]) is not ctx.data(net.outputs[0])  # the network output keeps its own
    for step in shared:
        np.testing.assert_array_equal(step[1], step[0])
        np.testing.assert_array_equal(step[5], step[6])
    tol = dict(rtol=1e-10, atol=1e-12) if net.dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for alias, fuse in ((False, False), (False, True), (True, False)):
        _, other_ctx, copied = _run_shortcut_net(ops_backend, rng, monkeypatch, alias=alias, fuse=fuse)
        if not alias:
            assert other_ctx.output("chain1") is not other_ctx.output("chain0")
        for a, b in zip(shared, copied):
            for got, want in zip(a[:5], b[:5]):  # the shared and the copying Identities' own outputs differ in kind
                np.testing.assert_allclose(got, want, **tol)
    assert np.abs(shared[0][2]).max() > 0 and np.isfinite(shared[0][2]).all()


def test_identity_input_gradient_against_finite_differences(rng):
    """d(loss)/d(x) through shared-buffer Identities (fan-out, a chain, a residual sum) matches
    central differences in float64."""
    net = _shortcut_net(np.float64)
    backend = jp.backend("numpy")
    x = rng.standard_normal((2, 3, 6, 6))
    g0, g1 = rng.standard_normal((2, 2, 5))
    ctx = net.context(backend, 2, training=True, input_grads=True)

    def loss(values):
        ctx.set_inputs([values])
        ctx.forward()
        return float((ctx.output() * g0).sum() + (ctx.data(net.outputs[1]) * g1).sum())

    loss(x)
    ctx.begin_backward()
    backend.write(ctx.loss_grad(0), g0)
    backend.write(ctx.loss_grad(1), g1)
    ctx.backward()
    analytic = ctx.input_grad().copy()
    # BatchNorm in training mode normalises over the batch: every element of x matters
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 5, 5), (1, 0, 2, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        numeric = (loss(plus) - loss(minus)) / 2e-6
        assert abs(numeric - analytic[idx]) < 1e-5 * max(1.0, abs(numeric)), idx


def test_add_relu_fuses_only_a_relu_that_is_the_only_reader():
    from juicepy.net.context import Context

    def fused(root, shapes=((4,), (4,))):
        return _fused_chains(Context(jp.Network(root, input_shape=list(shapes)), jp.backend("numpy"), 2, training=True))

    assert fused(L.Sequential(L.Add(), L.ReLU(), L.Linear(3))) == [("Add", "ReLU")]
    assert fused(L.Sequential(L.Add(), L.LeakyReLU(), L.Linear(3))) == []
    assert fused(L.Sequential(L.Add(), L.Branches(L.ReLU(), L.Identity()))) == []  # read twice
    assert fused(L.Sequential(L.Add(), L.ReLU()), shapes=((4,), (4,), (4,))) == [("Add", "ReLU")]
    assert fused(L.Add()) == []


@pytest.mark.parametrize("n_inputs", [1, 2, 3])
def test_fused_add_relu_computes_the_same_bits_as_the_two_layers(ops_backend, rng, monkeypatch, n_inputs):
    """Add + ReLU as one op: the ReLU's output and every input gradient are the bits of the two
    layers run one by one, with sums of exactly zero and negative ones, for 1, 2 and 3 inputs."""
    from juicepy.net.context import Context

    dtype = np.float32
    xs = [rng.standard_normal((5, 7)).astype(dtype) for _ in range(n_inputs)]
    if n_inputs > 1:
        xs[1][:, ::3] = -sum(xs[i] for i in range(n_inputs) if i != 1)[:, ::3]  # zero sums
    dy = rng.standard_normal((5, 7)).astype(dtype)
    results = {}
    for fuse in (True, False):
        monkeypatch.setattr(Context, "fuse", fuse)
        net = jp.Network(L.Sequential(L.Add(), L.ReLU(), L.Identity()), input_shape=[(7,)] * n_inputs)
        ctx = net.context(ops_backend, 5, training=True, input_grads=True)
        assert bool(ctx._steps[0][2]) is fuse
        ctx.set_inputs(xs)
        ctx.forward()
        ctx.begin_backward()
        ops_backend.write(ctx.loss_grad(), dy)
        ctx.backward()
        results[fuse] = [ops_backend.to_host(ctx.output())] + [ops_backend.to_host(ctx.input_grad(i))
                                                                 for i in range(n_inputs)]
        for i, x in enumerate(xs):  # the sum runs in the output, never in an input's buffer
            np.testing.assert_array_equal(ops_backend.to_host(ctx.data(net.inputs[i])), x)
    for got, want in zip(results[True], results[False]):
        np.testing.assert_array_equal(got, want)
    total = sum(x.astype(np.float64) for x in xs)
    np.testing.assert_allclose(results[True][0], np.maximum(total, 0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results[True][1], np.where(results[True][0] > 0, dy, 0))


@pytest.mark.parametrize("first_read_later", [True, False])
def test_fused_add_relu_gradient_into_a_buffer_that_already_holds_one(ops_backend, rng, monkeypatch, first_read_later):
    """The fused Add + ReLU writes the masked gradient straight into its first input's gradient
    buffer only where that buffer is written, not added to: where a later reader of that input
    has already put its gradient there (its backward runs first), the gradients still add up to
    the two layers' bits, and so they do where another input is the one read twice."""
    from juicepy.net.context import Context

    x, y = jp.Input((7,)), jp.Input((7,))
    results = {}
    for fuse in (True, False):
        monkeypatch.setattr(Context, "fuse", fuse)
        h = L.Linear(7)(x, name="h")
        s = L.ReLU()(L.Add()(h, y, name="sum") if first_read_later else L.Add()(y, h, name="sum"), name="relu")
        net = jp.Network(inputs=[x, y], outputs=L.Add()(s, h, name="out"), seed=4)
        ctx = net.context(ops_backend, 5, training=True, input_grads=True)
        assert _fused_chains(ctx) == ([("Add", "ReLU")] if fuse else [])
        ctx.set_inputs([np.random.default_rng(seed).standard_normal((5, 7)).astype(np.float32) for seed in (8, 9)])
        ctx.forward()
        ctx.begin_backward()
        ops_backend.write(ctx.loss_grad(), np.random.default_rng(10).standard_normal((5, 7)).astype(np.float32))
        ctx.backward()
        results[fuse] = [ops_backend.to_host(a).copy() for a in
                         (ctx.input_grad(0), ctx.input_grad(1), ctx.param_grad("h.weight"), ctx.output())]
    for got, want in zip(results[True], results[False]):
        np.testing.assert_array_equal(got, want)
    assert np.abs(results[True][0]).max() > 0
