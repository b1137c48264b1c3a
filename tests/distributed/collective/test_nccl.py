"""The NCCL communicator's path, on a fake NCCL module (tests/fake_nccl.py) carried over MPI:
the unique id travels over MPI, device pointers, counts and datatypes reach NCCL, and training
through it matches one process with the global batch. The real NCCL runs in the GPU
acceptance command on a multi-GPU machine. Training through it: test_data_parallel.py."""

import numpy as np
import pytest

from juicepy.distributed import NCCLCommunicator

pytest.importorskip("mpi4py", reason="the NCCL communicator needs mpi4py (pip install '.[distributed]')")
import fake_nccl  # noqa: E402  (imports mpi4py)


def nccl_communicator():
    return NCCLCommunicator(nccl=fake_nccl, stream=lambda: 1234, pointer=lambda a: a.ctypes.data)


def test_nccl_communicator_reduces_and_broadcasts_device_buffers(comm, on_every_rank, numpy_backend):
    def body():
        fake_nccl.CALLS.clear()
        nccl = nccl_communicator()
        assert (nccl.kind, nccl.rank, nccl.size) == ("nccl", comm.rank, comm.size)
        x = np.arange(6, dtype=np.float32) * (comm.rank + 1)
        nccl.allreduce(numpy_backend, x, average=True)
        np.testing.assert_allclose(x, np.arange(6) * (comm.size + 1) / 2)
        n = np.full(3, comm.rank, np.int64)
        nccl.broadcast(numpy_backend, n, root=comm.size - 1)
        np.testing.assert_array_equal(n, comm.size - 1)
        calls = fake_nccl.CALLS
        assert calls[0] == ("init", comm.size, comm.rank)
        if comm.size > 1:  # one rank needs no NCCL call at all
            assert calls[1:] == [("allReduce", 6, fake_nccl.NCCL_FLOAT32, 1234),
                                 ("bcast", 3, fake_nccl.NCCL_INT64, comm.size - 1, 1234)]
        with pytest.raises(Exception, match="NCCL cannot reduce dtype bool"):
            nccl._dtype(np.bool_)
    on_every_rank(body)


def test_communicator_picks_nccl_for_cuda_ranks_when_cupy_has_it(comm, on_every_rank, monkeypatch):
    """With CuPy's NCCL importable (the fake here), a multi-rank job on the cuda backend gets the
    NCCL communicator; one rank, or another backend, gets MPI."""
    import sys
    import types

    from juicepy.distributed import communicator, communicators

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(nccl=fake_nccl, get_current_stream=lambda: types.SimpleNamespace(ptr=7))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", fake_nccl)
    monkeypatch.setattr(communicators, "_WORLD", {})

    def body():
        chosen = communicator("cuda")
        assert chosen.kind == ("nccl" if comm.size > 1 else "mpi")
        assert communicator("cuda") is chosen  # made once: creating one is collective
        assert communicator("numpy").kind == "mpi"
    on_every_rank(body)
