"""Which communicator ``juicepy.distributed.communicator()`` gives outside an MPI job."""

import sys

import pytest

from juicepy.distributed import Communicator, communicator


def test_without_mpi4py_it_is_a_size_one_communicator(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    comm = communicator()
    assert type(comm) is Communicator and (comm.rank, comm.size, comm.kind) == (0, 1, "local")


def test_the_environment_switch_forces_a_size_one_communicator(monkeypatch):
    monkeypatch.setenv("JUICEPY_DISTRIBUTED", "0")
    assert type(communicator()) is Communicator


def test_outside_mpiexec_mpi4py_gives_one_rank_of_kind_mpi():
    pytest.importorskip("mpi4py", reason="pip install '.[distributed]'")
    comm = communicator("cuda")  # NCCL only for a job of several ranks
    assert (comm.kind, comm.rank, comm.size, comm.local_rank) == ("mpi", 0, 1, 0)
