import tracemalloc

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.train import Adam, Trainer


def _mlp():
    return jp.Network(L.Sequential(L.Linear(64), L.ReLU(), L.Dropout(0.2), L.Linear(32), L.Tanh(), L.Linear(10)),
                      input_shape=(20,))


def test_training_step_allocates_no_backend_buffers(backend, rng):
    trainer = Trainer(_mlp(), L.SoftmaxCrossEntropy(), Adam(), batch_size=16)
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    trainer.train_minibatch(backend, x, y)  # makes the context and the optimizer state
    before = backend.allocations
    for _ in range(3):
        trainer.train_minibatch(backend, x, y)
    assert backend.allocations == before


def _step_peak_bytes(backend, batch, rng):
    trainer = Trainer(_mlp(), L.SoftmaxCrossEntropy(), Adam(), batch_size=batch)
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


def test_numpy_step_allocates_nothing_that_grows_with_the_batch(numpy_backend, rng):
    """Stronger than the counter: NumPy reports every array to tracemalloc. A steady-state step
    may make small Python objects and NumPy's fixed-size iterator buffers (8192 elements at
    most, whatever the array size), but no array that grows with the batch."""
    small, large = _step_peak_bytes(numpy_backend, 256, rng), _step_peak_bytes(numpy_backend, 4096, rng)
    smallest_growth_of_an_activation = (4096 - 256) * 10 * 4  # the logits
    assert large - small < smallest_growth_of_an_activation / 100, (small, large)


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
    numpy_backend.fill(ctx.output_gradient(), 1.0)
    ctx.backward()
    w2 = net.get_weights()["2.weight"]
    np.testing.assert_allclose(ctx.gradient("1"), np.ones((2, 3)) @ w2)
    with pytest.raises(KeyError, match="no layer at path '7'"):
        ctx.output("7")


def test_inference_context_keeps_no_gradients(numpy_backend):
    net = jp.Network(L.Linear(3), input_shape=(4,))
    ctx = net.context(numpy_backend, 2)
    with pytest.raises(ValueError, match="keeps no gradients"):
        ctx.gradient()


def test_unused_output_gets_zero_gradient(numpy_backend, rng):
    """A layer whose output nobody consumed sees a zero upstream gradient, not stale memory."""
    net = jp.Network(L.Sequential(L.Linear(3), L.Tanh()), input_shape=(4,), dtype=np.float64)
    ctx = net.context(numpy_backend, 2, training=True)
    ctx.set_inputs([rng.standard_normal((2, 4))])
    ctx.forward()
    ctx._grads[net.outputs[0].index][...] = np.nan  # garbage that must not leak into param grads
    ctx.begin_backward()
    ctx.backward()
    np.testing.assert_array_equal(ctx.param_gradient("0.weight"), 0.0)


def test_batch_size_must_be_positive(numpy_backend):
    net = jp.Network(L.Linear(3), input_shape=(4,))
    with pytest.raises(ValueError, match="Context: batch_size must be an integer >= 1, got 0"):
        net.context(numpy_backend, 0)


def test_check_batch_message(numpy_backend):
    ctx = jp.Network(L.Linear(3), input_shape=(4,)).context(numpy_backend, 8)
    with pytest.raises(ShapeError, match="batch of 5 rows given to a context sized for 8"):
        ctx.check_batch(5)
