"""Starting MPI jobs from tests: a clean environment and a timeout, so a rank left waiting in a
collective fails the test instead of stalling the run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mpiexec_or_skip() -> str:
    pytest.importorskip("mpi4py", reason="pip install '.[distributed]' (mpi4py and MPICH)")
    from juicepy.cli import mpiexec_path

    try:
        return mpiexec_path()
    except ValueError as err:
        pytest.skip(str(err))


def mpi_env() -> dict:
    # one thread per rank (the ranks share the cores); the children form their own job
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", POCL_MAX_PTHREAD_COUNT="1",
               JUICEPY_NUM_THREADS="1")
    for key in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "JUICEPY_DISTRIBUTED"):
        env.pop(key, None)
    return env


def run_job(command: list, timeout: float = 180) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s (a rank hung?):\n{out[-3000:]}")
