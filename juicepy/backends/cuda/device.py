"""CUDA device plumbing: importing CuPy, choosing the device, cuBLAS's workspace, and the
launch constants shared by the backend's op modules."""

from __future__ import annotations

import ctypes
import os

import numpy as np

from ..base import BackendUnavailable

DEVICE_ENV_VAR = "JUICEPY_CUDA_DEVICE"
INSTALL_HINT = ("install CuPy for your CUDA toolkit: pip install 'juicepy[cuda12]' (CUDA 12.x) "
                "or 'juicepy[cuda13]' (CUDA 13.x)")
BLOCK = 256  # threads per block of the elementwise kernels
MAX_BLOCKS = 65535 * 4  # grid-stride loops cover the rest
NULL = np.uint64(0)  # a null pointer kernel argument
CUBLAS_WORKSPACE_BYTES = 32 << 20  # what cuBLAS asks for on Hopper


def cublas_set_workspace():
    """cublasSetWorkspace_v2 from the libcublas CuPy loaded (CuPy does not wrap it), or None."""
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            fn = ctypes.CDLL(name).cublasSetWorkspace_v2
        except (OSError, AttributeError):
            continue
        fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        fn.restype = ctypes.c_int
        return fn
    return None


def import_cupy():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install failing inside the import
        raise BackendUnavailable(f"cuda backend: CuPy cannot be imported ({exc}); {INSTALL_HINT}") from exc
    return cupy


def device_index(count: int) -> int:
    raw = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if not raw:
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise BackendUnavailable(f"cuda backend: ${DEVICE_ENV_VAR}={raw!r} is not a device number") from None
    if not 0 <= index < count:
        raise BackendUnavailable(f"cuda backend: ${DEVICE_ENV_VAR}={index} but this machine has "
                                 f"{count} CUDA device(s) (0..{count - 1})")
    return index
