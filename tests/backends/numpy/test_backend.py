"""The NumPy backend's memory: arrays start on a cache line (ALIGNMENT); large contiguous copies
split over the lanes (threads.split) give np.copyto's result whatever the lane count, layout,
dtype pair or overlap; refusals name the shapes or dtypes and leave the destination as it was."""

import math

import numpy as np
import pytest

from juicepy.backends.numpy import backend as numpy_backend, threads


@pytest.fixture
def split_calls(monkeypatch):
    """Lane counts of every threads.split the backend runs; splits from 4 Ki elements on 3
    lanes, so that small arrays take the split path and its uneven bounds."""
    calls = []

    def counted(size, work):
        lanes = min(3, max(1, size // 1024)) if size >= 4096 else 1
        bounds = [size * k // lanes for k in range(lanes + 1)]
        calls.append(lanes)
        threads.parallel([(work, (bounds[k], bounds[k + 1])) for k in range(lanes)])

    monkeypatch.setattr(numpy_backend, "_split", counted)
    monkeypatch.setattr(numpy_backend, "CHUNK", 4096)
    return calls


@pytest.mark.parametrize("size", [4095, 4096, 10007])
def test_copy_over_lanes_matches_copyto(split_calls, rng, size):
    b = numpy_backend.NumpyBackend()
    src = rng.standard_normal(size).astype(np.float32)
    dst = np.full(size, np.nan, np.float32)
    b.copy(src, dst)
    np.testing.assert_array_equal(dst, src)
    assert split_calls == ([] if size < 4096 else [min(3, size // 1024)])


def test_copy_reshapes_and_leaves_strided_arrays_to_copyto(split_calls, rng):
    b = numpy_backend.NumpyBackend()
    src = rng.standard_normal((8, 16, 64)).astype(np.float32)
    flat = np.empty(src.size, np.float32)
    b.copy(src, flat)  # a reshaped contiguous source splits
    np.testing.assert_array_equal(flat, src.reshape(-1))
    assert split_calls == [3]
    strided = np.zeros((8, 16, 128), np.float32)
    b.copy(src, strided[:, :, ::2])  # a strided destination: one np.copyto
    np.testing.assert_array_equal(strided[:, :, ::2], src)
    assert not strided[:, :, 1::2].any()
    assert split_calls == [3]


def test_an_overlapping_copy_keeps_copyto_semantics(split_calls):
    b = numpy_backend.NumpyBackend()
    buf = np.arange(12000, dtype=np.float32)
    expected = buf.copy()
    expected[1000:11000] = buf[:10000]
    b.copy(buf[:10000], buf[1000:11000])  # split lanes would read values another lane already overwrote
    np.testing.assert_array_equal(buf, expected)
    assert split_calls == []


def test_write_casts_host_values_same_kind_over_lanes(split_calls, rng):
    b = numpy_backend.NumpyBackend()
    host = rng.standard_normal((100, 100))  # float64 into float32
    dst = np.empty(10000, np.float32)
    b.write(dst, host)
    np.testing.assert_array_equal(dst, host.reshape(-1).astype(np.float32))
    assert split_calls == [3]


def test_refused_copies_and_writes_name_the_problem_and_leave_dst(split_calls):
    b = numpy_backend.NumpyBackend()
    dst = np.full(8192, 7, np.int32)
    with pytest.raises(TypeError, match="float32 values into a int32 array"):
        b.write(dst, np.ones(8192, np.float32))
    with pytest.raises(ValueError, match=r"\(8191,\) into \(8192,\)"):
        b.copy(np.ones(8191, np.int32), dst)
    with pytest.raises(ValueError, match="8191 values for an array of 8192"):
        b.write(dst, np.ones(8191, np.int32))
    assert (dst == 7).all() and split_calls == []


def test_copy_over_the_real_lanes(rng):
    """At threads.split's own threshold, with the machine's lanes."""
    b = numpy_backend.NumpyBackend()
    src = rng.standard_normal(threads.SPLIT_MIN + 5).astype(np.float32)
    dst = np.zeros_like(src)
    b.copy(src, dst)
    np.testing.assert_array_equal(dst, src)


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float32), (7, np.float64), ((2, 0, 4), np.float32),
                                          ((), np.float64), ((4, 3), np.int32), ((32, 64, 32, 32), np.float32)])
def test_arrays_start_on_a_cache_line(shape, dtype):
    b = numpy_backend.NumpyBackend()
    empty, zeros = b.empty(shape, dtype), b.zeros(shape, dtype)
    host = np.arange(math.prod(np.atleast_1d(shape)), dtype=dtype).reshape(shape)
    copied = b.from_host(host)
    for a in (empty, zeros, copied):
        assert a.shape == np.empty(shape).shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        if a.size:
            assert a.ctypes.data % numpy_backend.ALIGNMENT == 0
    assert not zeros.any()
    np.testing.assert_array_equal(copied, host)
    assert not np.shares_memory(copied, host)
    assert b.allocations == 3


def test_from_host_keeps_the_host_dtype_and_takes_lists():
    b = numpy_backend.NumpyBackend()
    assert b.from_host(np.ones((2, 2), np.float64)).dtype == np.float64
    assert b.from_host([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("shape", [(-1, 4), (2, -4), -3])
def test_negative_dimensions_are_refused_as_numpy_refuses_them(shape):
    b = numpy_backend.NumpyBackend()
    for allocate in (b.empty, b.zeros):
        with pytest.raises(ValueError, match="negative dimensions"):
            allocate(shape)
