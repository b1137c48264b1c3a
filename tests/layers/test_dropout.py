import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends.rng import keep_threshold, uniform_hash
from juicepy.testing import check_layer


def test_dropout_gradient_check_and_parity():
    check_layer(L.Dropout(0.3), (10,), batch_size=4, expected_output_shape=(10,))


def _train_forward(p, x, backend, step=0, seed=0):
    net = jp.Network(L.Dropout(p), input_shape=x.shape[1:], seed=seed)
    ctx = net.context(backend, x.shape[0], training=True)
    ctx.step = step
    ctx.set_inputs([x])
    ctx.forward()
    return backend.to_host(ctx.output())


def test_eval_mode_is_identity(backend, rng):
    x = rng.standard_normal((8, 20)).astype(np.float32)
    net = jp.Network(L.Dropout(0.5), input_shape=(20,))
    np.testing.assert_array_equal(net.transform(backend, x), x)


def test_train_mode_drops_about_p_and_rescales(backend):
    x = np.ones((200, 100), np.float32)
    y = _train_forward(0.3, x, backend)
    dropped = np.mean(y == 0)
    assert 0.28 < dropped < 0.32
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.03  # the expectation is preserved


def test_mask_follows_the_shared_counter_based_stream(backend):
    from juicepy.backends.rng import stream_key

    x = np.ones((4, 50), np.float32)
    y = _train_forward(0.5, x, backend, step=7, seed=11)
    u = uniform_hash(stream_key(11, 0), 7, x.size).reshape(x.shape)
    np.testing.assert_array_equal(y != 0, u >= keep_threshold(0.5) / 16777216.0)


def test_same_seed_and_step_same_mask_new_step_new_mask(backend):
    x = np.ones((16, 64), np.float32)
    a, b = _train_forward(0.5, x, backend, step=3), _train_forward(0.5, x, backend, step=3)
    c = _train_forward(0.5, x, backend, step=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_extreme_probabilities(backend, p):
    x = np.full((3, 10), 2.0, np.float32)
    y = _train_forward(p, x, backend)
    np.testing.assert_array_equal(y, x if p == 0.0 else np.zeros_like(x))


@pytest.mark.parametrize("p,error,message", [
    (float("nan"), ValueError, r"Dropout: p must be a finite number in \[0, 1\], got nan"),
    (1.5, ValueError, r"Dropout: p must be a finite number in \[0, 1\], got 1.5"),
    (-0.1, ValueError, r"Dropout: p must be a finite number in \[0, 1\], got -0.1"),
    ("0.5", TypeError, r"Dropout: p must be a number, got str '0.5'"),
])
def test_bad_probability_is_refused_with_the_argument_named(p, error, message):
    with pytest.raises(error, match=message):
        L.Dropout(p)
