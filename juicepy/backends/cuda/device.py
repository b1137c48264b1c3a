"""CUDA device plumbing: importing CuPy, choosing the device, the cuBLAS calls, and the
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

# The per-channel reductions (batch norm, a convolution's bias gradient) split each channel's
# values over several blocks (channel_chunks): enough blocks to give every SM about
# CHUNK_BLOCKS_PER_SM of them, at most CHUNK_MAX per channel, no chunk of fewer than CHUNK_MIN
# values, and no split of a channel of SPLIT_MIN values or fewer, where one block with one
# launch was measured faster than the split's two (docs/cuda.md, section 5). Tests lower
# CHUNK_MIN and SPLIT_MIN to reach several chunks with small inputs.
CHUNK_BLOCKS_PER_SM = 2
CHUNK_MAX = 64
CHUNK_MIN = 4 * BLOCK
SPLIT_MIN = 16 * BLOCK


def channel_chunks(count: int, channels: int, sms: int) -> tuple[int, int]:
    """(chunks, chunk): each of ``channels`` channels of ``count`` values is cut into ``chunks``
    runs of ``chunk`` values (a multiple of BLOCK; the last run shorter), one block each; (1, count)
    where one block per channel is the better form."""
    if count <= max(SPLIT_MIN, CHUNK_MIN) or channels < 1:
        return 1, count
    chunks = min(-(-CHUNK_BLOCKS_PER_SM * sms // channels), CHUNK_MAX, -(-count // CHUNK_MIN))
    if chunks <= 1:
        return 1, count
    chunk = -(-count // chunks)
    chunk = -(-chunk // BLOCK) * BLOCK
    chunks = -(-count // chunk)
    return (chunks, chunk) if chunks > 1 else (1, count)


CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_POINTER_MODE_HOST = 0
_CUBLAS_LIBRARIES = ("libcublas.so.13", "libcublas.so.12", "libcublas.so", "cublas64_13.dll", "cublas64_12.dll")
_CUBLAS_STATUS = {1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
                  11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED",
                  16: "LICENSE_ERROR"}


class CublasError(RuntimeError):
    pass


class CublasApi:
    """The cuBLAS C functions the backend calls, bound by ctypes in the libcublas CuPy loaded.

    Not CuPy's wrappers: each of them re-binds the handle's stream through ``cublas.setStream``,
    which refuses to run while that stream captures a CUDA graph, although cuBLAS calls can be
    captured once the handle has a fixed workspace (cuBLAS's "CUDA Graphs Support").
    """

    def __init__(self, library) -> None:
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        gemm_args = (pointer, integer, integer, integer, integer, integer, pointer, pointer, integer,
                     pointer, integer, pointer, pointer, integer)
        self._set_stream = self._bind(library, "cublasSetStream_v2", pointer, pointer)
        self._set_pointer_mode = self._bind(library, "cublasSetPointerMode_v2", pointer, integer)
        self._set_workspace = self._bind(library, "cublasSetWorkspace_v2", pointer, pointer, ctypes.c_size_t)
        self._gemm = {np.dtype(np.float32): self._bind(library, "cublasSgemm_v2", *gemm_args),
                      np.dtype(np.float64): self._bind(library, "cublasDgemm_v2", *gemm_args)}

    @staticmethod
    def _bind(library, name, *argtypes):
        fn = getattr(library, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int

        def call(*args):
            status = fn(*args)
            if status != 0:
                raise CublasError(f"cuBLAS {name} failed: CUBLAS_STATUS_{_CUBLAS_STATUS.get(status, status)}")
        return call

    def set_stream(self, handle: int, stream: int) -> None:
        """Bind the handle to a stream; this also puts it back on cuBLAS's own workspace."""
        self._set_stream(handle, stream)

    def set_pointer_mode(self, handle: int, mode: int) -> None:
        self._set_pointer_mode(handle, mode)

    def set_workspace(self, handle: int, ptr: int, nbytes: int) -> None:
        self._set_workspace(handle, ptr, nbytes)

    def gemm(self, dtype, handle, transa, transb, m, n, k, alpha_ptr, a, lda, b, ldb, beta_ptr, c, ldc) -> None:
        """cublasSgemm_v2 / cublasDgemm_v2 by dtype (column-major, device pointers as ints)."""
        self._gemm[np.dtype(dtype)](handle, transa, transb, m, n, k, alpha_ptr, a, lda, b, ldb, beta_ptr, c, ldc)


def cublas_api() -> CublasApi:
    """The cuBLAS functions of the library CuPy's cuBLAS module loaded (import that module first:
    a library already loaded is found by its name without a search path)."""
    return open_cublas(_CUBLAS_LIBRARIES)


def open_cublas(names) -> CublasApi:
    """The first of the named libraries that opens and has the functions; BackendUnavailable else."""
    errors = []
    for name in names:
        try:
            return CublasApi(ctypes.CDLL(name))
        except (OSError, AttributeError) as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailable(f"cuda backend: no cuBLAS library with the functions it calls ({'; '.join(errors)}); "
                             f"{INSTALL_HINT}")


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
