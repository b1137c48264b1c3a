"""The CUDA backend's tests once more with the emulator's AddressSanitizer + UBSan build: no
kernel reads or writes outside its device buffers (or overflows, or shifts out of range)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_emulator
from cuda_emulator import cupy as emulated

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(cuda_emulator.asan_runtime() is None, reason="the compiler has no AddressSanitizer runtime")
def test_cuda_backend_tests_are_clean_under_address_sanitizer(tmp_path):
    env = cuda_emulator.asan_environment(log_path=str(tmp_path / "sanitizer"))
    env.update({"JUICEPY_CUDA_EMULATOR": "1", emulated.SANITIZE_ENV_VAR: "1"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS / "backends" / "cuda"),
         "-k", "not nvcc and not nvrtc and not digits_training"],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=1800)
    reports = "\n".join(p.read_text() for p in tmp_path.glob("sanitizer*"))
    assert not reports, reports[-6000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]
