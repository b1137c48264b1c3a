"""The CUDA C sources of the backend and their compilation (NVRTC through CuPy).

Every ``.cu`` file in ``kernels/`` is plain CUDA C with ``extern "C"`` kernels over a ``real``
element type; the backend compiles them as one module per dtype (``-Dreal=float`` /
``-Dreal=double``). ``module_source`` inlines the ``#include "x.cuh"`` headers so NVRTC needs no
include path and CuPy's kernel cache keys on the full text; tests feed the same text to nvcc.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).with_name("kernels")
SOURCE_FILES = ("elementwise.cu", "rowwise.cu", "dropout.cu", "optim.cu", "conv.cu", "pool.cu",
                "batchnorm.cu", "recurrent.cu")
# No FMA contraction: the fused kernels then round like the NumPy backend's separate operations.
COMPILE_OPTIONS = ("--fmad=false",)
_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)
_REAL = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def real_type(dtype) -> str:
    """The C type a dtype computes in; raises TypeError for dtypes the kernels do not cover."""
    try:
        return _REAL[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"cuda backend: dtype {np.dtype(dtype)} is not supported "
                        f"(float32 and float64 are)") from None


@lru_cache(maxsize=None)
def module_source() -> str:
    """Every kernel file in one translation unit, each header inlined once."""
    seen: set[str] = set()

    def inline(match: re.Match) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _INCLUDE.sub(inline, (KERNEL_DIR / name).read_text().replace("#pragma once\n", ""))

    parts = [_INCLUDE.sub(inline, (KERNEL_DIR / name).read_text()) for name in SOURCE_FILES]
    return "\n".join(parts)


def compile_options(dtype) -> tuple:
    return COMPILE_OPTIONS + (f"-Dreal={real_type(dtype)}",)


class KernelSet:
    """The compiled module for one dtype; kernels are looked up once and kept."""

    def __init__(self, cupy, dtype):
        self.dtype = np.dtype(dtype)
        self._module = cupy.RawModule(code=module_source(), options=compile_options(dtype))
        self._functions: dict = {}

    def compile(self) -> None:
        """Force compilation now (the first lookup compiles the whole module)."""
        self.get("fill_array")

    def get(self, name: str):
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = self._module.get_function(name)
        return fn
