"""The NumPy backend's GEMM entry (_blas_kernels.c): NumPy's own OpenBLAS called from C, so that
its GIL release is counted for the lanes' hand-over (_gil_hint.h) and alpha, beta and strided
operands run inside BLAS. Found through threadpoolctl's handle on the loaded library; only an
ILP64 OpenBLAS whose CBLAS symbols end in ``64_`` (NumPy's wheels) is taken, where the integer
width is known: anything else leaves the backend on np.matmul."""

from __future__ import annotations

import ctypes
import os

import numpy as np

from . import kernels as _kernels
from .threads import blas_libraries

#: (prefix, suffix) of the ILP64 CBLAS names tried, NumPy 2's scipy-openblas first
_NAMINGS = (("scipy_", "64_"), ("", "64_"))
_found: dict = {}


def _address(library, name: str) -> int | None:
    try:
        return ctypes.cast(getattr(library, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _numpy_first(libraries):
    """The loaded BLAS libraries, the one shipped inside NumPy's wheel first (the one np.matmul
    calls: same library, same results)."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    inside = [lib for lib in libraries if os.path.abspath(lib.filepath).startswith(os.path.join(home, "numpy"))]
    return inside + [lib for lib in libraries if lib not in inside]


def find_cblas() -> tuple[int, int] | None:
    """Addresses of the ILP64 cblas_sgemm and cblas_dgemm of a loaded OpenBLAS, or None."""
    for lib in _numpy_first(blas_libraries()):
        if getattr(lib, "internal_api", None) != "openblas" or getattr(lib, "dynlib", None) is None:
            continue
        for prefix, suffix in _NAMINGS:
            sgemm = _address(lib.dynlib, f"{prefix}cblas_sgemm{suffix}")
            dgemm = _address(lib.dynlib, f"{prefix}cblas_dgemm{suffix}")
            if sgemm and dgemm:
                return sgemm, dgemm
    return None


def _registered(kernels: str | None):
    """_blas_kernels with NumPy's BLAS registered, or None where the extension is not built or
    not wanted (``kernels``, kernels.load) or no ILP64 OpenBLAS is loaded."""
    module = _kernels.load("_blas_kernels", kernels)
    if module is None:
        return None
    if "cblas" not in _found:
        _found["cblas"] = find_cblas()
        if _found["cblas"] is not None:
            module.set_gemm(*_found["cblas"])
    return module if _found["cblas"] is not None else None


def gemm_entry(kernels: str | None = None):
    """_blas_kernels.gemm(a, b, out, alpha, beta) -> bool with NumPy's BLAS registered, or None
    (_registered)."""
    module = _registered(kernels)
    return None if module is None else module.gemm


def batch_entry(kernels: str | None = None):
    """_blas_kernels.gemm_batch(a, b, c, shift, residual, relu, lanes) -> bool (a 1x1 conv's
    per-sample products and its epilogue in one call) with NumPy's BLAS registered, or None
    (_registered)."""
    module = _registered(kernels)
    return None if module is None else module.gemm_batch


def sum_entry(kernels: str | None = None):
    """_blas_kernels.gemm_sum(a, b, parts, lanes) -> bool (a 1x1 conv's weight gradient: the
    samples' products summed in parts) with NumPy's BLAS registered, or None (_registered)."""
    module = _registered(kernels)
    return None if module is None else module.gemm_sum


def positions_entry(kernels: str | None = None):
    """_blas_kernels.gemm_positions(u, v, m, depths, n_out, n_in, p, vs, ms) -> bool (the GEMMs
    of one chunk of spatial._tile_run in one call) with NumPy's BLAS registered, or None
    (_registered)."""
    module = _registered(kernels)
    return None if module is None else module.gemm_positions
