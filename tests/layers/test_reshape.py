import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import ShapeError
from juicepy.testing import check_layer


def test_flatten_gradients_and_shape():
    check_layer(L.Flatten(), (2, 3, 4), batch_size=2, expected_output_shape=(24,))


@pytest.mark.parametrize("target,expected", [((4, 6), (4, 6)), ((-1, 2), (12, 2)), ((24,), (24,))])
def test_reshape_infers_shape(target, expected):
    check_layer(L.Reshape(target), (2, 3, 4), batch_size=2, expected_output_shape=expected)


def test_flatten_keeps_row_major_order(backend, rng):
    x = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(jp.Network(L.Flatten(), (2, 3, 4)).transform(backend, x), x.reshape(3, -1))


@pytest.mark.parametrize("target", [(5, 5), (-1, 5), (7, -1)])
def test_reshape_size_mismatch_names_path(target):
    with pytest.raises(ShapeError, match=r"^0: cannot reshape unit shape \(2, 3, 4\) \(24 values\)"):
        jp.Network(L.Sequential(L.Reshape(target)), input_shape=(2, 3, 4))


def test_reshape_two_unknowns():
    with pytest.raises(ValueError, match="at most one -1"):
        L.Reshape((-1, -1))
