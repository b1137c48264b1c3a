"""A stand-in for CuPy that runs on the CPU, for checking the CUDA backend's plumbing where no
GPU exists.

It does NOT execute the CUDA kernels. Every kernel launch is checked against the C signature of
the kernel it names (parsed from the real sources): argument count, and for each argument the C
type it will be read as (a wrong NumPy scalar type would be silently misread on a GPU). GEMMs
run for real through a column-major cuBLAS emulation, so the row-major mapping is checked too.
Arrays are NumPy arrays with CuPy's ``data.ptr`` / ``get`` / ``set``.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import types

import numpy as np

from juicepy.backends.cuda import kernels


class FakeArray(np.ndarray):
    """A NumPy array that answers CuPy's ndarray API used by the backend."""

    @property
    def data(self):  # CuPy: a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, host):
        assert host.shape == self.shape and host.dtype == self.dtype, (host.shape, host.dtype, self.shape, self.dtype)
        self[...] = host


def _signatures() -> dict:
    """kernel name -> list of C parameter types, from the assembled source (macros expanded)."""
    source = kernels.module_source()
    macros = {}
    for match in re.finditer(r"#define (\w+_ARGS) ((?:.*\\\n)*.*)", source):
        macros[match.group(1)] = match.group(2).replace("\\\n", " ")
    signatures = {}
    for match in re.finditer(r"__global__ void (\w+)\(([^)]*)\)", source):
        params = match.group(2)
        for name, text in macros.items():
            params = params.replace(name, text)
        types_ = []
        for param in params.split(","):
            words = param.replace("*", " * ").split()
            ctype = " ".join(w for w in words[:-1] if w != "const").replace(" *", "*")
            types_.append(ctype)
        signatures[match.group(1)] = types_
    return signatures


SIGNATURES = _signatures()
_SCALARS = {"i64": np.int64, "int": np.int32, "unsigned int": np.uint32, "double": np.float64}


class FakeKernel:
    def __init__(self, name, real, log):
        self.name = name
        self.real = np.float32 if real == "float" else np.float64
        self.params = SIGNATURES[name]
        self.log = log

    def _check(self, i, ctype, arg):
        where = f"{self.name} argument {i} ({ctype})"
        if ctype.endswith("*"):
            base = ctype[:-1].strip()
            if isinstance(arg, np.uint64):
                assert arg == 0, f"{where}: a non-null raw pointer"
                return
            assert isinstance(arg, FakeArray), f"{where}: got {type(arg).__name__}"
            expected = {"real": self.real, "int": np.int32, "i64": np.int64}[base]
            assert arg.dtype == expected, f"{where}: array of {arg.dtype}, kernel reads {np.dtype(expected)}"
            assert arg.flags.c_contiguous, f"{where}: not contiguous"
            return
        expected = self.real if ctype == "real" else _SCALARS[ctype]
        assert type(arg) is expected, f"{where}: got {type(arg).__name__}, kernel reads {np.dtype(expected)}"

    def __call__(self, grid, block, args):
        assert len(grid) == 1 and len(block) == 1 and grid[0] >= 1, (self.name, grid, block)
        assert block[0] % 32 == 0 and block[0] <= 1024, (self.name, block)
        assert len(args) == len(self.params), f"{self.name}: {len(args)} arguments, kernel takes {len(self.params)}"
        for i, (ctype, arg) in enumerate(zip(self.params, args)):
            self._check(i, ctype, arg)
        self.log.append(self.name)


class FakeModule:
    def __init__(self, code, options, log):
        assert code == kernels.module_source()
        self.real = next(o.split("=")[1] for o in options if o.startswith("-Dreal="))
        self.log = log

    def get_function(self, name):
        if name not in SIGNATURES:
            raise KeyError(f"no kernel {name!r} in the sources")
        return FakeKernel(name, self.real, self.log)


class Device:
    """cupy.cuda.Device of a machine with one GPU (index 0)."""

    def __init__(self, index=0):
        if index != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {index} (this stand-in has one)")
        self.id = index
        # as an H200 reports it (docs/cuda.md section 4), so the launch grids are the GPU's
        self.attributes = {"MultiProcessorCount": 132}

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _matrix(ptr, dtype, rows, cols, ld):
    """The column-major rows x cols matrix at ptr with leading dimension ld, as a NumPy view."""
    itemsize = np.dtype(dtype).itemsize
    size = ld * (cols - 1) + rows
    buf = (ctypes.c_byte * (size * itemsize)).from_address(ptr)
    flat = np.frombuffer(buf, dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (itemsize, ld * itemsize))


class CublasError(RuntimeError):
    """What cuBLAS would return as an error status."""


def gemm_column_major(dtype, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, check_range=None):
    """cublas<t>gemm on host memory, argument by argument as cuBLAS documents it:
    C = alpha * op(A) @ op(B) + beta * C, every matrix column-major at its pointer with its
    leading dimension; op(X) is X (CUBLAS_OP_N = 0) or its transpose (CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2 for real types). CUBLAS_STATUS_INVALID_VALUE cases raise CublasError; with
    beta == 0, C is not read. ``check_range(ptr, nbytes, what)`` may check each matrix lies in
    device memory."""
    name = "sgemm" if np.dtype(dtype) == np.float32 else "dgemm"
    if transa not in (0, 1, 2) or transb not in (0, 1, 2):
        raise CublasError(f"cuBLAS {name}: CUBLAS_STATUS_INVALID_VALUE (transa={transa}, transb={transb})")
    if m < 0 or n < 0 or k < 0:
        raise CublasError(f"cuBLAS {name}: CUBLAS_STATUS_INVALID_VALUE (m={m}, n={n}, k={k})")
    a_rows, a_cols = (m, k) if transa == 0 else (k, m)
    b_rows, b_cols = (k, n) if transb == 0 else (n, k)
    for what, ld, rows in (("lda", lda, a_rows), ("ldb", ldb, b_rows), ("ldc", ldc, m)):
        if ld < max(1, rows):
            raise CublasError(f"cuBLAS {name}: CUBLAS_STATUS_INVALID_VALUE ({what}={ld} < max(1, {rows}))")
    if m == 0 or n == 0 or ((alpha == 0 or k == 0) and beta == 1):
        return
    itemsize = np.dtype(dtype).itemsize
    if check_range is not None:
        for what, ptr, ld, rows, cols in (("A", a, lda, a_rows, a_cols), ("B", b, ldb, b_rows, b_cols),
                                          ("C", c, ldc, m, n)):
            if rows and cols and (what == "C" or (alpha != 0 and k != 0)):
                check_range(ptr, (ld * (cols - 1) + rows) * itemsize, f"cuBLAS {name} {what}")
    out = _matrix(c, dtype, m, n, ldc)
    if alpha == 0 or k == 0:
        product = np.zeros((m, n), dtype)
    else:
        op_a = _matrix(a, dtype, a_rows, a_cols, lda)
        op_b = _matrix(b, dtype, b_rows, b_cols, ldb)
        with np.errstate(all="ignore"):  # a GPU does not warn about overflow either
            product = (op_a.T if transa else op_a) @ (op_b.T if transb else op_b)
    result = dtype(alpha) * product
    if beta != 0:
        result = result + dtype(beta) * out
    out[...] = result


def _host_scalar(ptr, dtype):
    return np.frombuffer((ctypes.c_byte * np.dtype(dtype).itemsize).from_address(ptr), dtype)[0]


def gemm(dtype, handle, transa, transb, m, n, k, alpha_ptr, a, lda, b, ldb, beta_ptr, c, ldc):
    """cublasSgemm_v2 / cublasDgemm_v2 as juicepy's CublasApi.gemm takes them."""
    gemm_column_major(dtype, transa, transb, m, n, k, _host_scalar(alpha_ptr, dtype), a, lda, b, ldb,
                      _host_scalar(beta_ptr, dtype), c, ldc)


def cublas_api(workspaces=None):
    """A stand-in for juicepy.backends.cuda.device.cublas_api(); ``workspaces`` (a list) gets
    every cublasSetWorkspace_v2 call's arguments."""
    record = workspaces.append if workspaces is not None else (lambda args: None)
    return types.SimpleNamespace(gemm=gemm, set_stream=lambda handle, stream: None,
                                 set_pointer_mode=lambda handle, mode: None,
                                 set_workspace=lambda *args: record(args))


def install(monkeypatch) -> list:
    """Put the stand-in in sys.modules for ``cupy`` and ``cupy_backends``; returns the launch log."""
    import sys

    from juicepy.backends.cuda import device as cuda_device

    log: list = []
    allocator: list = [None]

    def make(shape, dtype, fill=None):
        if allocator[0] is not None:
            allocator[0](int(np.prod(shape)) * np.dtype(dtype).itemsize)
        arr = np.zeros(shape, dtype).view(FakeArray)  # kernels do not run: keep contents tame
        if fill is not None:
            arr.fill(fill)
        return arr

    @contextlib.contextmanager
    def using_allocator(fn):
        allocator[0] = fn
        try:
            yield
        finally:
            allocator[0] = None

    class Graph:
        def __init__(self, launches):
            self.launches = launches

        def launch(self, stream=None):
            log.append(("graph", len(self.launches)))

    class Stream:
        ptr = 1234

        def __init__(self, non_blocking=False):
            self.capturing_from = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

        def begin_capture(self):
            self.capturing_from = len(log)

        def end_capture(self):
            graph = Graph(log[self.capturing_from:])
            del log[self.capturing_from:]  # captured work does not run
            return graph

    pool = types.SimpleNamespace(free_all_blocks=lambda: log.append("free_all_blocks"))
    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=Device, Stream=Stream, using_allocator=using_allocator,
        get_current_stream=lambda: Stream(),
        device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
    )
    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    cupy.cuda = cuda
    cupy.empty = lambda shape, dtype=np.float32: make(shape, dtype)
    cupy.zeros = lambda shape, dtype=np.float32: make(shape, dtype, 0)
    cupy.array = lambda host, copy=True: _copy_in(make, host)
    cupy.copyto = lambda dst, src: np.copyto(dst, src)
    cupy.RawModule = lambda code, options: FakeModule(code, options, log)
    cupy.get_default_memory_pool = lambda: pool
    cupy.get_default_pinned_memory_pool = lambda: pool
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")  # imported only to load libcublas
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy_backends", types.ModuleType("cupy_backends"))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda", types.ModuleType("cupy_backends.cuda"))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs", libs)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", cublas)
    monkeypatch.setattr(cuda_device, "cublas_api", cublas_api)
    return log


def _copy_in(make, host):
    arr = make(host.shape, host.dtype)
    arr[...] = host
    return arr
