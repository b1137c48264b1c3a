"""Communicator collectives on every rank (see conftest.py for how these run)."""

import os

import numpy as np
import pytest

import juicepy as jp
from juicepy.distributed import Communicator, MPICommunicator
from juicepy.errors import DistributedError


def test_ranks_size_and_kind(comm, on_every_rank):
    def body():
        expected = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1)))
        assert comm.size == expected
        assert 0 <= comm.rank < comm.size and 0 <= comm.local_rank < comm.size
        assert comm.kind in ("mpi", "local")
        assert comm.allgather_object(comm.rank) == list(range(comm.size))
    on_every_rank(body)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_sums_and_averages_in_place(comm, on_every_rank, numpy_backend, dtype):
    def body():
        base = np.arange(10, dtype=dtype)
        x = base + comm.rank
        comm.allreduce(numpy_backend, x)
        offset = sum(range(comm.size))
        np.testing.assert_array_equal(x, base * comm.size + offset)
        y = base * (comm.rank + 1)
        comm.allreduce(numpy_backend, y, average=True)
        np.testing.assert_allclose(y, base * (comm.size + 1) / 2, rtol=1e-6)
    on_every_rank(body)


def test_allreduce_refuses_a_non_flat_array(comm, numpy_backend):
    with pytest.raises(ValueError, match=r"1-D array.*\(2, 3\)"):
        comm.allreduce(numpy_backend, np.zeros((2, 3), np.float32))


def test_buckets_split_a_large_block_and_give_the_same_sum(comm, on_every_rank, numpy_backend):
    if comm.kind != "mpi":
        pytest.skip("needs mpi4py (pip install '.[distributed]')")

    def body():
        small = MPICommunicator(bucket_bytes=64)  # 16 float32 per bucket
        assert len(small._buckets(1001, 4)) == 63
        x = np.linspace(-1, 1, 1001, dtype=np.float32) * (comm.rank + 1)
        expected = np.linspace(-1, 1, 1001, dtype=np.float32) * sum(r + 1 for r in range(comm.size))
        small.allreduce(numpy_backend, x)
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    on_every_rank(body)


def test_default_buckets_are_small_for_numpy_arrays_and_large_for_device_copies(comm, on_every_rank, numpy_backend):
    """NumPy blocks go to MPI in HOST_BUCKET_BYTES pieces (the sum is the same), device arrays'
    host copies in BUCKET_BYTES pieces."""
    if comm.kind != "mpi":
        pytest.skip("needs mpi4py (pip install '.[distributed]')")
    from juicepy.distributed import BUCKET_BYTES, HOST_BUCKET_BYTES

    def body():
        n = 5 * HOST_BUCKET_BYTES // 8  # two and a half buckets of float32
        assert len(comm._buckets(n, 4, HOST_BUCKET_BYTES)) == 3 and len(comm._buckets(n, 4)) == 1
        assert len(comm._buckets(BUCKET_BYTES // 4 + 1, 4)) == 2
        x = np.arange(n, dtype=np.float32) % 1000 * (comm.rank + 1)
        comm.allreduce(numpy_backend, x)
        expected = np.arange(n, dtype=np.float32) % 1000 * sum(r + 1 for r in range(comm.size))
        np.testing.assert_array_equal(x, expected)
    on_every_rank(body)


def test_device_arrays_are_staged_through_the_host(comm, on_every_rank):
    """A non-NumPy backend's arrays go through host buckets (OpenCL on PoCL here)."""
    if "opencl" not in jp.available_backends():
        pytest.skip("no OpenCL platform (pip install '.[opencl]')")

    def body():
        cl = jp.backend("opencl")
        small = comm if comm.kind != "mpi" else MPICommunicator(bucket_bytes=40)
        x = cl.from_host(np.arange(25, dtype=np.float32) + comm.rank)
        small.allreduce(cl, x, average=True)
        np.testing.assert_allclose(cl.to_host(x), np.arange(25) + (comm.size - 1) / 2, rtol=1e-6)
        y = cl.from_host(np.full(7, comm.rank, np.float32))
        small.broadcast(cl, y, root=comm.size - 1)
        np.testing.assert_array_equal(cl.to_host(y), np.full(7, comm.size - 1))
    on_every_rank(body)


def test_broadcast_takes_the_roots_values(comm, on_every_rank, numpy_backend):
    def body():
        x = np.full((3, 4), comm.rank, np.float64)
        comm.broadcast(numpy_backend, x, root=0)
        np.testing.assert_array_equal(x, 0)
        n = np.array(comm.rank + 5, np.int64)  # 0-d, like num_batches_tracked
        comm.broadcast(numpy_backend, n, root=comm.size - 1)
        assert int(n) == comm.size + 4
    on_every_rank(body)


def test_host_reductions(comm, on_every_rank):
    if comm.kind != "mpi":
        pytest.skip("needs mpi4py (pip install '.[distributed]')")

    def body():
        v = np.array([comm.rank, -comm.rank, 1])
        np.testing.assert_array_equal(comm.allreduce_host(v, "max"), [comm.size - 1, 0, 1])
        np.testing.assert_array_equal(comm.allreduce_host(v, "min"), [0, 1 - comm.size, 1])
        assert comm.sum(0.5) == 0.5 * comm.size
        with pytest.raises(ValueError, match="sum, min, max"):
            comm.allreduce_host(v, "prod")
    on_every_rank(body)


def test_agree_raises_on_every_rank_when_one_rank_fails(comm, on_every_rank):
    def body():
        comm.agree(None)  # everyone fine: returns
        last = comm.size - 1
        error = ValueError("inputs: expected (8, 4), got (8, 5)") if comm.rank == last else None
        if comm.rank == last:
            with pytest.raises(ValueError, match=r"expected \(8, 4\)"):
                comm.agree(error, "training step")
        else:
            with pytest.raises(DistributedError, match=rf"training step refused on every rank because rank "
                                                       rf"{last} failed: ValueError: inputs: expected"):
                comm.agree(error, "training step")
    on_every_rank(body)


def test_size_one_communicator_returns_its_input(numpy_backend):
    solo = Communicator()
    assert (solo.rank, solo.size, solo.local_rank) == (0, 1, 0)
    x = np.arange(4, dtype=np.float32)
    solo.allreduce(numpy_backend, x, average=True)
    solo.broadcast(numpy_backend, x)
    np.testing.assert_array_equal(x, np.arange(4))
    assert solo.sum(2.5) == 2.5 and solo.allgather_object("a") == ["a"] and solo.bcast_object(3) == 3
    with pytest.raises(KeyError):
        solo.agree(KeyError("x"))
