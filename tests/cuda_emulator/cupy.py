"""CuPy on the CUDA emulator: the part of CuPy's API the CUDA backend uses, executing for real.

Device arrays are host memory from an emulated device allocator (``malloc``, so a sanitizer
build sees their bounds, with a pool like CuPy's); ``RawModule`` compiles the CUDA source with
the emulator and launches its kernels with the backend's real grid, block and arguments;
cuBLAS GEMMs run through ``cupy_standin.gemm_column_major``; a stream capture records every
launch, GEMM, fill and copy and a graph replays them. Each launch runs its threads forward and
in reverse (``$JUICEPY_CUDA_EMULATOR_SCHEDULE=both``, the default) and fails when the results
differ: a kernel whose result depends on the thread order lacks a barrier.

``install(setitem)`` puts it in ``sys.modules`` as ``cupy`` and ``cupy_backends``.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import os
import sys
import threading
import types
import weakref

import numpy as np

import cupy_standin
from cupy_standin import CublasError, Device, FakeArray, gemm_column_major

from . import EmulatorError, Module

SCHEDULE_ENV_VAR = "JUICEPY_CUDA_EMULATOR_SCHEDULE"
WORKERS_ENV_VAR = "JUICEPY_CUDA_EMULATOR_WORKERS"
SANITIZE_ENV_VAR = "JUICEPY_CUDA_EMULATOR_SANITIZE"
POOL_ROUND = 512  # CuPy's pool rounds blocks to 512 bytes
_libc = ctypes.CDLL(None)
_libc.posix_memalign.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t)
_libc.free.argtypes = (ctypes.c_void_p,)


class CUDARuntimeError(RuntimeError):
    """An error the CUDA runtime would return (named like CuPy's)."""


# ------------------------------------------------------------------------ memory
class DeviceMemory:
    """The emulated device heap with CuPy's pool behaviour: freed blocks are cached for reuse
    until ``free_all_blocks``; ``check(ptr, nbytes)`` proves a range lies in one live block."""

    def __init__(self):
        # re-entrant: an allocation inside malloc's critical section (the ctypes pointer) can run the
        # garbage collector, whose finalizer of a dead array calls release on this same thread
        self._lock = threading.RLock()
        self._live: dict[int, int] = {}  # ptr -> requested bytes
        self._starts: list[int] = []
        self._cached: dict[int, list[int]] = {}  # exact size -> ptrs (exact: a sanitizer sees the true end)
        self._sizes: dict[int, int] = {}  # ptr -> exact size (live and cached)
        self.allocator = threading.local()

    def malloc(self, nbytes: int) -> int:
        fn = getattr(self.allocator, "fn", None)
        if fn is not None:
            fn(nbytes)  # CuPy calls the current allocator; the backend's capture refuses here
        with self._lock:
            cached = self._cached.get(nbytes)
            if cached:
                ptr = cached.pop()
            else:
                out = ctypes.c_void_p()
                if _libc.posix_memalign(ctypes.byref(out), 256, max(nbytes, 1)) != 0:
                    raise MemoryError(f"emulated device: out of memory allocating {nbytes} bytes")
                ptr = out.value
                self._sizes[ptr] = nbytes
            self._live[ptr] = nbytes
            bisect.insort(self._starts, ptr)
        ctypes.memset(ptr, 0xFF, nbytes)  # fresh device memory is garbage: NaN / -1 here
        return ptr

    def release(self, ptr: int) -> None:
        with self._lock:
            del self._live[ptr]
            self._starts.pop(bisect.bisect_left(self._starts, ptr))
            self._cached.setdefault(self._sizes[ptr], []).append(ptr)

    def check(self, ptr: int, nbytes: int, what: str) -> None:
        with self._lock:
            i = bisect.bisect_right(self._starts, ptr) - 1
            if i >= 0:
                start = self._starts[i]
                if ptr + nbytes <= start + self._live[start]:
                    return
        raise EmulatorError(f"{what}: bytes [{ptr:#x}, {ptr + nbytes:#x}) are not inside one device allocation "
                            f"(an out-of-bounds access)")

    # CuPy's MemoryPool API (its blocks are rounded to 512 bytes)
    @staticmethod
    def _rounded(nbytes):
        return max(POOL_ROUND, -(-nbytes // POOL_ROUND) * POOL_ROUND)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._rounded(n) for n in self._live.values())

    def total_bytes(self) -> int:
        with self._lock:
            return (sum(self._rounded(n) for n in self._live.values())
                    + sum(self._rounded(n) * len(v) for n, v in self._cached.items()))

    def free_all_blocks(self) -> None:
        with self._lock:
            for ptrs in self._cached.values():
                for ptr in ptrs:
                    _libc.free(ptr)
                    del self._sizes[ptr]
            self._cached.clear()


# ------------------------------------------------------------------------ streams
class Graph:
    """A captured stream: its operations, run in order by ``launch``."""

    def __init__(self, operations):
        self.operations = operations

    def launch(self, stream=None):
        for op in self.operations:
            op()


class Stream:
    _next_ptr = [0x5000]

    def __init__(self, emulator, non_blocking=False, ptr=None):
        self._emulator = emulator
        if ptr is None:
            Stream._next_ptr[0] += 16
            ptr = Stream._next_ptr[0]
        self.ptr = ptr
        self.capture = None  # the operations recorded while capturing

    def __enter__(self):
        self._emulator.streams().append(self)
        return self

    def __exit__(self, *exc):
        self._emulator.streams().pop()
        return False

    def synchronize(self):
        if self.capture is not None:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: synchronize while capturing")

    def wait_event(self, event):
        """cudaStreamWaitEvent. The emulator runs every operation when it is submitted, so the
        order holds already; the wait is logged (``Emulator.event_log``) for tests to check
        that work on another stream is ordered after what it reads."""
        if event.recorded_on is None:
            raise CUDARuntimeError("wait_event on an event never recorded: the wait orders nothing")
        self._emulator.event_log.append(("wait", self.ptr, event.id))

    def begin_capture(self):
        if self.capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is already capturing")
        self.capture = []

    def end_capture(self):
        if self.capture is None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
        graph, self.capture = Graph(self.capture), None
        return graph


class Event:
    """cupy.cuda.Event: ``record(stream)`` marks the point in a stream's work that other
    streams can wait for (``Stream.wait_event``); logged in ``Emulator.event_log``."""

    _next_id = [0]

    def __init__(self, emulator, block=False, disable_timing=False, interprocess=False):
        self._emulator = emulator
        Event._next_id[0] += 1
        self.id = Event._next_id[0]
        self.recorded_on = None  # the stream's ptr

    def record(self, stream=None):
        stream = stream or self._emulator.current_stream()
        self.recorded_on = stream.ptr
        self._emulator.event_log.append(("record", stream.ptr, self.id))

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


# ------------------------------------------------------------------------ kernels
class EmulatedKernel:
    def __init__(self, emulator, kernel):
        self._emulator = emulator
        self._kernel = kernel
        self.name = kernel.name

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        values = self._kernel.marshal(args)
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        self._emulator.submit(lambda: self._emulator.run_kernel(self._kernel, grid, block, values, shared_mem, arrays))


class EmulatedModule:
    def __init__(self, emulator, code, options):
        self._emulator = emulator
        self._module = emulator.module(code, tuple(options))

    def get_function(self, name):
        return EmulatedKernel(self._emulator, self._module.get_function(name))


class DeviceArray(FakeArray):
    """A FakeArray whose device-side operations (fill, copies, transfers) follow the stream."""

    emulator = None

    def fill(self, value):
        super_fill = super().fill
        self.emulator.submit(lambda: super_fill(value))

    def get(self):
        self.emulator.refuse_while_capturing("a device-to-host copy")
        return super().get()

    def set(self, host):
        self.emulator.refuse_while_capturing("a host-to-device copy")
        super().set(host)


def _same_bytes(a, b):
    return np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ------------------------------------------------------------------------ the module
class Emulator:
    def __init__(self):
        self.memory = DeviceMemory()
        self.sanitize = os.environ.get(SANITIZE_ENV_VAR, "") == "1"
        self.schedule = os.environ.get(SCHEDULE_ENV_VAR, "both")
        if self.schedule not in ("both", "forward", "reverse"):
            raise EmulatorError(f"${SCHEDULE_ENV_VAR}={self.schedule!r}: use both, forward or reverse")
        self.workers = int(os.environ.get(WORKERS_ENV_VAR, "1"))
        self._local = threading.local()
        self._modules: dict = {}
        self._lock = threading.Lock()
        self.default_stream = Stream(self, ptr=0)
        self.stream_by_ptr = {0: self.default_stream}
        self.event_log: list = []  # ("record", stream ptr, event id) / ("wait", stream ptr, event id)
        self.cublas_handles: dict = {}
        self.launches = 0
        self.array_type = type("DeviceArray", (DeviceArray,), {"emulator": self})

    @contextlib.contextmanager
    def scheduled(self, schedule):
        """Run launches with another schedule for a while ("forward" for long training runs
        whose every kernel the op tests already run both ways)."""
        previous, self.schedule = self.schedule, schedule
        try:
            yield
        finally:
            self.schedule = previous

    def module(self, code, options):
        key = (code, options)
        with self._lock:
            if key not in self._modules:
                self._modules[key] = Module(code, options, sanitize=self.sanitize)
            return self._modules[key]

    def streams(self) -> list:
        stack = getattr(self._local, "streams", None)
        if stack is None:
            stack = self._local.streams = []
        return stack

    def current_stream(self) -> Stream:
        stack = self.streams()
        return stack[-1] if stack else self.default_stream

    def submit(self, op, stream=None):
        """Run a device operation now, or record it when its stream is capturing."""
        stream = stream or self.current_stream()
        if stream.capture is not None:
            stream.capture.append(op)
        else:
            op()

    def refuse_while_capturing(self, what):
        if self.current_stream().capture is not None:
            raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: {what} while the stream is capturing")

    def run_kernel(self, kernel, grid, block, values, shared_mem, arrays):
        self.launches += 1
        if self.schedule != "both":
            kernel.launch(grid, block, values, shared_mem, self.schedule == "reverse", self.workers)
            return
        before = [a.copy() for a in arrays]
        kernel.launch(grid, block, values, shared_mem, False, self.workers)
        forward = [a.copy() for a in arrays]
        for a, b in zip(arrays, before):
            np.copyto(a, b)
        kernel.launch(grid, block, values, shared_mem, True, self.workers)
        for i, (a, f) in enumerate(zip(arrays, forward)):
            if not _same_bytes(a, f):
                differ = np.flatnonzero(a.view(np.uint8).reshape(-1) != f.view(np.uint8).reshape(-1))
                raise EmulatorError(
                    f"kernel {kernel.name} (grid {tuple(grid)}, block {tuple(block)}): its result depends on the "
                    f"order the threads run in: array argument {i} differs between the forward and the reverse "
                    f"schedule in {differ.size} bytes (first at byte {differ[0]}); a __syncthreads() is missing "
                    f"or threads race on the same memory")

    # ------------------------------------------------------------------ arrays
    def empty(self, shape, dtype=np.float32):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = count * dtype.itemsize
        ptr = self.memory.malloc(nbytes)
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        root = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        weakref.finalize(root, self.memory.release, ptr)
        return root.view(self.array_type)

    def zeros(self, shape, dtype=np.float32):
        arr = self.empty(shape, dtype)
        arr.fill(0)
        return arr

    def array(self, host, copy=True):
        host = np.asarray(host)
        arr = self.empty(host.shape, host.dtype)
        arr.set(np.ascontiguousarray(host))
        return arr

    def copyto(self, dst, src):
        self.submit(lambda: np.copyto(dst, src))

    # ------------------------------------------------------------------ cuBLAS
    def gemm(self, dtype, handle, transa, transb, m, n, k, alpha_ptr, a, lda, b, ldb, beta_ptr, c, ldc):
        state = self.cublas_handles[handle]
        if state["pointer_mode"] != 0:
            raise CublasError("the emulator reads alpha and beta from host memory only (CUBLAS_POINTER_MODE_HOST)")
        # host pointer mode: the scalars are read now, also when the call is captured
        alpha = cupy_standin._host_scalar(alpha_ptr, dtype)
        beta = cupy_standin._host_scalar(beta_ptr, dtype)
        stream = self.stream_by_ptr.get(state["stream"], self.default_stream)
        args = (dtype, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        self.submit(lambda: gemm_column_major(*args, check_range=self.memory.check), stream)

    def set_workspace(self, handle, ptr, nbytes):
        """cublasSetWorkspace_v2: the buffer must be device memory of that size."""
        self.memory.check(ptr, nbytes, "cublasSetWorkspace")
        return 0

    def cupy_module(self):
        cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=CUDARuntimeError),
            Device=Device, Stream=lambda non_blocking=False: self._stream(non_blocking),
            Event=lambda block=False, disable_timing=False, interprocess=False: Event(self),
            using_allocator=self.using_allocator, get_current_stream=self.current_stream,
            device=types.SimpleNamespace(get_cublas_handle=self.cublas_handle),
        )
        cupy = types.ModuleType("cupy")
        cupy.__doc__ = "CuPy on the CUDA emulator (tests/cuda_emulator/cupy.py)"
        cupy.__version__ = "the CUDA emulator (tests/cuda_emulator)"
        cupy.ndarray = self.array_type
        cupy.cuda = cuda
        cupy.empty, cupy.zeros, cupy.array, cupy.copyto = self.empty, self.zeros, self.array, self.copyto
        cupy.RawModule = lambda code, options=(): EmulatedModule(self, code, options)
        cupy.get_default_memory_pool = lambda: self.memory
        cupy.get_default_pinned_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
        cupy.emulator = self
        return cupy

    def _stream(self, non_blocking):
        stream = Stream(self, non_blocking)
        self.stream_by_ptr[stream.ptr] = stream
        return stream

    @contextlib.contextmanager
    def using_allocator(self, fn):
        previous = getattr(self.memory.allocator, "fn", None)
        self.memory.allocator.fn = fn
        try:
            yield
        finally:
            self.memory.allocator.fn = previous

    def cublas_handle(self):
        handle = getattr(self._local, "cublas", None)
        if handle is None:
            handle = self._local.cublas = len(self.cublas_handles) + 1
            self.cublas_handles[handle] = {"stream": 0, "pointer_mode": 0}
        return handle

    def _cupy_set_stream(self, handle, stream):
        # CuPy's cublas.setStream (which each of its cuBLAS wrappers calls first) refuses a
        # capturing stream; the backend calls cuBLAS itself (CublasApi) to be capturable
        if self.stream_by_ptr.get(stream, self.default_stream).capture is not None:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        self.cublas_handles[handle]["stream"] = stream

    def cublas_module(self):
        """cupy_backends.cuda.libs.cublas: CuPy's wrappers, with their refusal while capturing."""
        cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
        cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_C = 0, 1, 2
        cublas.CUBLAS_POINTER_MODE_HOST, cublas.CUBLAS_POINTER_MODE_DEVICE = 0, 1

        def wrapper(dtype):
            def gemm(handle, *args):
                self._cupy_set_stream(handle, self.current_stream().ptr)
                self.gemm(dtype, handle, *args)
            return gemm

        cublas.sgemm, cublas.dgemm = wrapper(np.float32), wrapper(np.float64)
        cublas.setStream = self._cupy_set_stream
        cublas.setPointerMode = lambda handle, mode: self.cublas_handles[handle].__setitem__("pointer_mode", mode)
        return cublas

    def cublas_api(self):
        """What juicepy.backends.cuda.device.cublas_api binds in libcublas: the C functions."""
        def set_stream(handle, stream):
            self.cublas_handles[handle]["stream"] = stream

        return types.SimpleNamespace(
            set_stream=set_stream, gemm=self.gemm, set_workspace=self.set_workspace,
            set_pointer_mode=lambda handle, mode: self.cublas_handles[handle].__setitem__("pointer_mode", mode))


def active() -> Emulator | None:
    """The emulator behind ``import cupy`` in this process, or None (real CuPy, or none)."""
    return getattr(sys.modules.get("cupy"), "emulator", None)


def install(setitem) -> Emulator:
    """Make ``import cupy`` (and cupy_backends' cuBLAS) the emulator; ``setitem`` is a
    MonkeyPatch's, so it is undone with it. Returns the emulator."""
    from juicepy.backends.cuda import device

    emulator = Emulator()
    cublas = emulator.cublas_module()
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    setitem(sys.modules, "cupy", emulator.cupy_module())
    setitem(sys.modules, "cupy_backends", types.ModuleType("cupy_backends"))
    setitem(sys.modules, "cupy_backends.cuda", types.ModuleType("cupy_backends.cuda"))
    setitem(sys.modules, "cupy_backends.cuda.libs", libs)
    setitem(sys.modules, "cupy_backends.cuda.libs.cublas", cublas)
    # the backend binds cuBLAS's C functions in libcublas by ctypes: the emulator's stand in
    # while the emulator is the cupy in use (not under another stand-in)
    cupy, real_lookup, api = sys.modules["cupy"], device.cublas_api, emulator.cublas_api()
    setitem(device.__dict__, "cublas_api", lambda: api if sys.modules.get("cupy") is cupy else real_lookup())
    return emulator
