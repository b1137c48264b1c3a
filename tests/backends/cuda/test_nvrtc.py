"""Every kernel module compiled by NVRTC, the compiler CuPy runs at run time, with the options the
backend passes plus those CuPy adds itself, for the GPUs we target (sm_80, sm_90), to binaries
(cubin) as CuPy does. No GPU is needed: NVRTC comes from the ``cuda-bindings`` and
``nvidia-cuda-nvrtc-cu12`` wheels (the test extra).

Warnings fail; ptxas's per-kernel report (registers, spills, shared memory) is parsed, and a
spill or static shared memory over 48 KiB fails. ``python tests/backends/cuda/test_nvrtc.py``
prints the table.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest

from juicepy.backends.cuda import kernels

try:
    from cuda.bindings import nvrtc
except Exception as exc:  # not installed, or no libnvrtc beside it
    nvrtc, WHY_NOT = None, f"{type(exc).__name__}: {exc}"
else:
    WHY_NOT = ""

ARCHES = (80, 90)
DTYPES = (np.float32, np.float64)
MAX_STATIC_SHARED = 48 * 1024
pytestmark = pytest.mark.skipif(nvrtc is None, reason=f"NVRTC (cuda-bindings) not installed: {WHY_NOT[:160]}")


def cupy_options(options: tuple, arch: int, nvrtc_major: int) -> tuple:
    """What CuPy's RawModule hands NVRTC for ``options``: cupy.cuda.compiler's
    _compile_with_cache_cuda appends -ftz=true, compile_using_nvrtc adds
    --device-as-default-execution-space (NVRTC >= 12) and -arch=sm_XX (a cubin, not PTX,
    whenever NVRTC knows the device's architecture)."""
    extra = ("--device-as-default-execution-space",) if nvrtc_major >= 12 else ()
    return tuple(options) + ("-ftz=true",) + extra + (f"-arch=sm_{arch}",)


def _check(result, what):
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {result[0]}")
    return result[1:]


def nvrtc_version() -> tuple:
    return tuple(_check(nvrtc.nvrtcVersion(), "nvrtcVersion"))


@lru_cache(maxsize=None)
def compile_module(dtype_name: str, arch: int):
    """(NVRTC result, log, cubin size, options) for one kernel module."""
    return compile_source(kernels.module_source(), kernels.compile_options(np.dtype(dtype_name)), arch)


def compile_source(source: str, backend_options: tuple, arch: int):
    major, _ = nvrtc_version()
    options = cupy_options(backend_options, arch, major) + ("--ptxas-options=-v",)
    (prog,) = _check(nvrtc.nvrtcCreateProgram(source.encode(), b"juicepy_kernels.cu", 0, [], []),
                     "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        (size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        cubin = 0
        if result == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            (cubin,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        return result, log.decode(errors="replace").rstrip("\0 \n"), cubin, options
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def ptxas_report(log: str) -> dict:
    """kernel -> {registers, barriers, smem, stack, spill_stores, spill_loads} from ptxas -v."""
    report, current = {}, None
    for line in log.splitlines():
        if (m := _ENTRY.search(line)):
            current = report.setdefault(m.group(1), {"smem": 0, "barriers": 0})
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USAGE.search(line)):
            current.update(registers=int(m.group(1)), barriers=int(m.group(2) or 0), smem=int(m.group(3) or 0))
    return report


def warnings_in(log: str) -> list:
    """Compiler and ptxas warnings (ptxas's "info" lines are the -v report, not warnings)."""
    return [line for line in log.splitlines() if re.search(r"\bwarning\b", line, re.IGNORECASE)]


CASES = [(np.dtype(d).name, arch) for d in DTYPES for arch in ARCHES]


@pytest.mark.parametrize("dtype_name, arch", CASES)
def test_every_module_compiles_with_nvrtc_to_a_cubin_without_warnings(dtype_name, arch):
    result, log, cubin, options = compile_module(dtype_name, arch)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"NVRTC {nvrtc_version()} with {options}:\n{log}"
    assert cubin > 0
    assert warnings_in(log) == [], "\n".join(warnings_in(log))


@pytest.mark.parametrize("dtype_name, arch", CASES)
def test_no_kernel_spills_or_uses_too_much_static_shared_memory(dtype_name, arch):
    report = ptxas_report(compile_module(dtype_name, arch)[1])
    assert set(report) == set(re.findall(r"__global__ void (\w+)\(", kernels.module_source()))
    for name, row in report.items():
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{name} spills on sm_{arch}: {row}"
        assert row["smem"] <= MAX_STATIC_SHARED, f"{name} uses {row['smem']} bytes of static shared memory"
        assert row["registers"] <= 255


def test_a_warning_is_seen_and_a_spill_is_parsed():
    source = ('extern "C" __global__ void k(float* x) {\n    int unused = 3;\n'
              '    volatile float big[512];\n    for (int i = 0; i < 512; ++i) big[i] = x[i];\n'
              '    x[threadIdx.x] = big[threadIdx.x];\n}\n')
    result, log, _, _ = compile_source(source, (), 80)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log
    assert any("unused" in line for line in warnings_in(log)), log
    assert ptxas_report(log)["k"]["stack"] >= 2048  # the local array lives in the stack frame


def test_the_options_are_cupys():
    assert cupy_options(("--fmad=false", "-Dreal=float"), 90, 12) == (
        "--fmad=false", "-Dreal=float", "-ftz=true", "--device-as-default-execution-space", "-arch=sm_90")


def table() -> str:
    """The per-kernel resource table (markdown) for every dtype and architecture."""
    major, minor = nvrtc_version()
    lines = [f"NVRTC {major}.{minor}; registers / static shared bytes / stack bytes / spill bytes", "",
             "| kernel | " + " | ".join(f"{d} sm_{a}" for d, a in CASES) + " |",
             "|---" * (len(CASES) + 1) + "|"]
    reports = [ptxas_report(compile_module(d, a)[1]) for d, a in CASES]
    for name in sorted(reports[0]):
        cells = []
        for report in reports:
            r = report[name]
            cells.append(f"{r['registers']} / {r['smem']} / {r['stack']} / {r['spill_stores'] + r['spill_loads']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
