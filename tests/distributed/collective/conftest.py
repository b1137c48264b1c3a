"""Tests here use collectives: they run in the plain test run (one rank) and, through
tests/distributed/test_launch.py, under ``mpiexec -n 2``. A test body runs through
``on_every_rank``, which reduces pass/fail over ranks before asserting, so a failure on one
rank fails the test on every rank instead of leaving the others waiting in a collective."""

import pytest

import juicepy as jp
from juicepy.distributed import communicator


@pytest.fixture(scope="session")
def comm():
    return communicator()


@pytest.fixture
def numpy_backend():
    return jp.backend("numpy")


@pytest.fixture
def on_every_rank(comm):
    def run(body, *args):
        try:
            body(*args)
            error = None
        except BaseException as err:  # noqa: BLE001 - reported on every rank below
            error = err
        messages = comm.allgather_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
        if failed:
            pytest.fail("failed on another rank: " + "; ".join(failed))
    return run


@pytest.fixture
def shared_tmp(comm, tmp_path):
    """A folder every rank sees: rank 0's tmp_path (the ranks share one machine here)."""
    return comm.bcast_object(tmp_path)
