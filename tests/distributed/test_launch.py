"""Runs the collective tests (tests/distributed/collective) under ``mpiexec -n 1`` and
``mpiexec -n 2``, so the README's plain ``pytest`` proves them on two ranks. Each run is bounded
by a timeout: a rank left waiting in a collective fails the test instead of stalling it."""

import sys

import pytest

from mpi_jobs import mpiexec_or_skip, run_job


@pytest.mark.parametrize("ranks", [1, 2])
def test_collective_tests_pass_under_mpiexec(tmp_path, ranks):
    command = [mpiexec_or_skip()]
    for rank in range(ranks):  # one --basetemp per rank (MPMD): pytest's temp folders never race
        if rank:
            command.append(":")
        command += ["-n", "1", sys.executable, "-m", "mpi4py", "-m", "pytest", "tests/distributed/collective",
                    "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / f'rank{rank}'}"]
    result = run_job(command)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert out.count(" passed") == ranks and " failed" not in out, out[-6000:]
