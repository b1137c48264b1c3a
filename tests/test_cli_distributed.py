"""``juicepy train`` as a data-parallel job: ``--workers N`` and ``mpiexec -n N juicepy train``."""

import re
import sys
from pathlib import Path

import juicepy as jp
from juicepy.cli import main
from mpi_jobs import mpiexec_or_skip, run_job

TRAIN = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "10", "--no-progress", "--seed", "1"]


def juicepy_command() -> list:
    script = Path(sys.executable).with_name("juicepy")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "juicepy"]


def reported_accuracy(text: str) -> float:
    found = re.findall(r"test accuracy: ([0-9.]+)", text)
    assert len(found) == 1, f"expected one 'test accuracy' line (rank 0 only), got:\n{text}"
    return float(found[0])


def test_two_workers_reach_the_accuracy_of_one_process_at_the_same_global_batch():
    mpiexec_or_skip()
    one = run_job(juicepy_command() + TRAIN + ["--batch-size", "64"])  # one thread, like each worker
    assert one.returncode == 0, one.stderr
    alone = reported_accuracy(one.stdout)
    two = run_job(juicepy_command() + TRAIN + ["--batch-size", "32", "--workers", "2"])
    assert two.returncode == 0, two.stderr
    out = two.stdout
    assert "data-parallel: 2 ranks (mpi), batch 32 per rank, 64 per step" in out
    assert out.count("epoch 10/10") == 1
    assert abs(reported_accuracy(out) - alone) <= 0.03 and alone > 0.9


def test_mpiexec_juicepy_train_saves_on_rank_zero_and_resumes_on_one_process(tmp_path, capsys):
    mpiexec = mpiexec_or_skip()
    ck = tmp_path / "two.safetensors"
    result = run_job([mpiexec, "-n", "2"] + juicepy_command() + TRAIN + ["--epochs", "2", "--batch-size", "16",
                                                                       "--save", str(ck)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("saved checkpoint") == 1 and reported_accuracy(result.stdout) > 0.5
    saved = jp.load(ck)
    assert saved.metadata["ranks"] == 2 and saved.metadata["epoch"] == 2
    assert saved.trainer.steps == 2 * ((1438 + 1) // 2 // 16)
    assert main(["train", "--resume", str(ck), "--epochs", "3", "--no-progress"]) == 0
    assert "after epoch 2" in capsys.readouterr().out


def test_a_rank_that_fails_ends_the_whole_job():
    """Rank 1 cannot start (unknown backend) while rank 0 trains: rank 0 must not wait forever
    at its first collective."""
    mpiexec = mpiexec_or_skip()
    args = TRAIN + ["--epochs", "50"]
    result = run_job([mpiexec, "-n", "1"] + juicepy_command() + args + [":", "-n", "1"] + juicepy_command() + args
                     + ["--backend", "no-such-backend"], timeout=60)
    assert result.returncode != 0
    assert "error on rank 1 of 2" in result.stderr and "no-such-backend" in result.stderr


def test_workers_inside_a_running_job_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert main(TRAIN + ["--workers", "2"]) == 1
    assert "already one of 2 MPI ranks" in capsys.readouterr().err


def test_workers_share_the_cores_between_blas_and_the_numpy_lanes(monkeypatch):
    """Each of N workers gets cores / N threads for BLAS and for the NumPy backend's own lanes
    (which default to every core), unless the caller set them."""
    import os
    import subprocess

    import pytest

    pytest.importorskip("mpi4py", reason="--workers needs mpi4py (pip install '.[distributed]')")
    mpiexec_or_skip()
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda command, env: seen.update(env) or 0)
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMP_NUM_THREADS", "JUICEPY_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert main(TRAIN + ["--workers", "2"]) == 0
    assert seen["OMP_NUM_THREADS"] == seen["JUICEPY_NUM_THREADS"] == "4"
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "3")
    assert main(TRAIN + ["--workers", "4"]) == 0
    assert seen["OMP_NUM_THREADS"] == "2" and seen["JUICEPY_NUM_THREADS"] == "3"
