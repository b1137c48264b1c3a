import numpy as np
import pytest

from juicepy.backends.numpy import NumpyBackend
from juicepy.net.params import LearnableParams


def test_lazy_sync_between_backends():
    """Two NumpyBackend instances stand for two devices: data moves only when stale."""
    dev_a, dev_b = NumpyBackend(), NumpyBackend()
    p = LearnableParams(np.arange(6.0).reshape(2, 3), name="w")
    a = p.on(dev_a)
    b = p.on(dev_b)
    np.testing.assert_array_equal(a, b)
    a += 1.0
    p.mark_written(dev_a)
    assert p.on(dev_b) is b  # same array object, refreshed in place
    np.testing.assert_array_equal(b, np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(p.numpy(), b)
    copies_before = dev_b.allocations
    p.on(dev_b)
    assert dev_b.allocations == copies_before  # fresh copies cost nothing


def test_host_write_invalidates_devices():
    dev = NumpyBackend()
    p = LearnableParams(np.zeros(3))
    arr = p.on(dev)
    p.set([1.0, 2.0, 3.0])
    assert p.on(dev) is arr
    np.testing.assert_array_equal(arr, [1, 2, 3])


def test_attach_to_flat_storage_and_release():
    dev = NumpyBackend()
    flat = dev.zeros((10,))
    p = LearnableParams(np.ones((2, 2)), name="w")
    p.attach(dev, dev.flat_view(flat, 4, (2, 2)))
    np.testing.assert_array_equal(flat, [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    flat[4] = 9.0
    p.mark_written(dev)
    p.release(dev)
    assert not p.has_storage(dev)
    assert p.numpy()[0, 0] == 9.0


def test_set_rejects_wrong_shape():
    import pytest

    p = LearnableParams(np.zeros((2, 3)), name="layer.weight")
    with pytest.raises(ValueError, match=r"param layer.weight: expected shape \(2, 3\), got \(3, 2\)"):
        p.set(np.zeros((3, 2)))


@pytest.mark.parametrize("lr_mult,message", [(float("nan"), "got nan"), (-1.0, "got -1.0"), (float("inf"), "got inf")])
def test_lr_mult_must_be_a_finite_number_at_least_zero(lr_mult, message):
    with pytest.raises(ValueError, match=rf"param w: lr_mult must be a finite number >= 0, {message}"):
        LearnableParams(np.zeros(3), name="w", lr_mult=lr_mult)
