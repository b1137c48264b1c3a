"""OpenCL programs: the .cl files next to this module, compiled once per context and cached."""

from __future__ import annotations

import threading
import warnings
from importlib import resources

import numpy as np

# OpenCL C scalar type -> the NumPy type pyopencl packs a Python number into
_SCALARS = {"int": np.int32, "uint": np.uint32, "float": np.float32}

# CPU drivers (PoCL) get big packed tiles (their local memory is ordinary cache-backed RAM),
# with micro-kernels shaped by the vector width (VW floats; see gemm.cl): 12 x 32 and 4 x 4
# float16 for 16-lane devices (AVX-512), 6 x 16 and 2 x 4 float8 for 8-lane ones (AVX2);
# STAGE_B_ROWS, DIRECT_PACKED, GATHER_STRIDE2, STAGE_A_T and STAGE_A_ROWS (gemm.cl, gemm.py):
# measured on AVX2 first, then on AVX-512 (PoCL 3.1 on Zen 5), where they helped every
# convolution of bench/test_bench_conv.py too (docs/opencl.md, session 33).
# GPUs only use the cooperative kernel, so the CPU tiles are shrunk to fit their local memory.
# S2_BM and S2K: output rows and input channels per work-group and slice of s2_winograd_conv
# (132 rows: a 128-channel layer transforms its input tiles once; 64 channels per slice measured
# faster than 32 and 16 on AVX2). S2F_TS, S2F_BC and S2F_BO: tiles per slice, input and output
# channels per work-group of s2_winograd_filter (the 64->128 layer's position in one block).
# S2DK: output channels per slice of s2_winograd_data (128 measured faster than 64 on AVX2's
# 64->128 layer; 16-lane builds keep 64: 630 KB of local memory already, and 128 measured no
# faster on PoCL 3.1 / Zen 5's strided layer, docs/opencl.md session 33).
# WF_TS, WF_BC and WF_BO: the same of winograd_filter (the stride-1 3x3 weight gradient; 64 x 64
# channels a work-group, dy's tiles transformed once for a 64-channel layer, measured faster than
# 32 x 128 on PoCL 3.1 / Zen 5, docs/opencl.md session 36).
CPU_S2_FILTER = {"S2F_TS": 32, "S2F_BC": 32, "S2F_BO": 128, "WF_TS": 32, "WF_BC": 64, "WF_BO": 64}
CPU_STAGING = {"STAGE_B_ROWS": 1, "DIRECT_PACKED": 1, "GATHER_STRIDE2": 1, "STAGE_A_T": 1, "STAGE_A_ROWS": 128}
CPU_GEMM = {16: {"BM": 96, "BN": 128, "BK": 256, "MR": 12, "VW": 16, "DR": 4, "DC": 4, **CPU_STAGING,
                 "S2_BM": 132, "S2K": 64, "S2DK": 64, **CPU_S2_FILTER},
            8: {"BM": 96, "BN": 128, "BK": 256, "MR": 6, "VW": 8, "DR": 2, "DC": 4, **CPU_STAGING,
                "S2_BM": 132, "S2K": 64, "S2DK": 128, **CPU_S2_FILTER}}
GPU_GEMM = {"BM": 24, "BN": 32, "BK": 16, "MR": 12, "VW": 16, "DR": 4, "DC": 4, "S2_BM": 24, "S2K": 4, "S2DK": 4,
            "S2F_TS": 16, "S2F_BC": 1, "S2F_BO": 32, "WF_TS": 16, "WF_BC": 1, "WF_BO": 32}
# float lanes of the direct convolutions' vectors (conv.cl's VEC) and of the selection rules of
# spatial.py (Winograd, the stride-2 phases, the direct kernels' 8-lane rules) per GEMM vector
# width: 16-lane (AVX-512) devices keep the 16-lane GEMM but run the convolutions as 8-lane
# devices do; on PoCL 3.1 / Zen 5 that was faster on every convolution of bench/test_bench_conv.py
# but the depthwise one (a tie) and on the CIFAR CNN, the ResNet and LeNet (docs/opencl.md)
CONV_LANES = {16: 8, 8: 8}
# rows of the second build of gemm.cl ("gemm.cl:mr_alt") whose panels the implicit-GEMM
# convolution takes where they pad fewer rows than MR (16 outputs per group), per MR
ALT_MR = {12: 8, 6: 4}


# A kernel every OpenCL C compiler builds: a device whose build of it fails cannot run the backend
# (PoCL 3.0's LLVM 14 asks for target CPU 'generic' on CPUs it does not know, such as AMD Zen 5).
_COMPILE_PROBE = "__kernel void compile_probe(__global float *p) { p[0] = 1.0f; }"
_compile_failures: dict = {}  # device pointer -> compile_failure


def compile_failure(cl, device) -> str | None:
    """Why ``device`` cannot build a trivial kernel (its compiler's error lines and the driver
    version), or None where it can; asked once per device."""
    key = device.int_ptr
    if key not in _compile_failures:
        try:
            context = cl.Context([device])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cl.CompilerWarning)
                cl.Program(context, _COMPILE_PROBE).build(devices=[device])
            reason = None
        except cl.Error as exc:
            lines = [line.strip() for line in str(exc).splitlines()]
            errors = [line for line in lines if line.startswith("error")] or lines[:1]
            reason = f"{'; '.join(dict.fromkeys(errors))} (driver {device.driver_version}, {device.version})"
        _compile_failures[key] = reason
    return _compile_failures[key]


# A float16 passed to a function that is not inlined: clang warns that its ABI changes when the
# target it compiles for lacks AVX-512. PoCL 3.0 (LLVM 14) compiles for znver3 on Zen 4 while it
# reports the CPU's 16 preferred float lanes and links its AVX-512 builtins; there conv.cl's
# 16-lane build comes back from PoCL's kernel cache as a program without kernels.
_LANES_PROBE = """
__attribute__((noinline)) float16 twice(float16 v) { return v + v; }
__kernel void lanes_probe(__global float16 *p) { p[0] = twice(p[0]); }
"""
_probed_lanes: dict = {}  # device pointer -> compiled_float_lanes; the probe prints clang's warning count


def compiled_float_lanes(cl, context, device) -> int:
    """16 where the device's compiler keeps a float16 in one register (it targets AVX-512), else
    8; devices preferring fewer than 16 lanes are not asked."""
    if device.preferred_vector_width_float < 16:
        return 8
    lanes = _probed_lanes.get(device.int_ptr)
    if lanes is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program = cl.Program(context, _LANES_PROBE).build(devices=[device])
        log = program.get_build_info(device, cl.program_build_info.LOG) or ""
        lanes = _probed_lanes[device.int_ptr] = 8 if "avx512f" in log else 16
    return lanes


def refuses_float_lanes(cl, context, device, lanes: int) -> bool:
    """Whether ``lanes`` cannot be built for the device: more than its compiler targets on a
    device that reports 16 (PoCL's znver3 target on Zen 4, above). Devices reporting fewer
    build 16-lane programs correctly, split into narrower vectors."""
    return device.preferred_vector_width_float >= 16 and lanes > compiled_float_lanes(cl, context, device)


def wide_register_defines(cl, context, device, lanes: int) -> dict:
    """gemm.cl's WIDE_REGS for 16-lane builds on a compiler that targets AVX-512: its micro-kernels
    then keep float16 values in zmm registers, where LLVM's 256-bit preference for the CPU PoCL
    names (skylake-avx512) split each into two ymm registers and the 12 x 32 and 4 x 4 tiles
    spilled. Elsewhere (8 lanes, or 16 split by a compiler without AVX-512) nothing changes."""
    return {"WIDE_REGS": 1} if lanes == 16 and compiled_float_lanes(cl, context, device) == 16 else {}


def source(filename: str) -> str:
    return resources.files(__package__).joinpath(filename).read_text()


_VECTOR_TYPES = "vectors.cl"


def program_text(filename: str) -> str:
    """``filename``'s source behind vectors.cl's types (shared by every program); #line keeps
    the compiler's messages on the file's own line numbers."""
    return f"{source(_VECTOR_TYPES)}\n#line 1 \"{filename}\"\n{source(filename)}"


class _Launcher:
    """A kernel whose argument setting and enqueue happen under one lock: a pyopencl Kernel
    keeps its arguments between calls, so two threads launching it at once could mix them.
    A launch with the same arguments as this kernel's last one only enqueues it (a Context's
    buffers and sizes are the same every step, and setting a kernel's thirty-odd arguments
    again took longer than the enqueue: docs/opencl.md, session 51). The last arguments are held
    until the next launch with others or ``forget_arguments``, which keeps their buffers alive,
    so that a handle compared equal is always the same buffer."""

    __slots__ = ("kernel", "_lock", "_enqueue", "_args")

    def __init__(self, kernel, lock, enqueue):
        self.kernel = kernel
        self._lock = lock
        self._enqueue = enqueue
        self._args = None

    def __call__(self, queue, global_size, local_size, *args):
        with self._lock:
            if args != self._args:
                self._args = None  # set_args may fail part way
                self.kernel.set_args(*args)
                self._args = args
            return self._enqueue(queue, self.kernel, global_size, local_size)

    def forget_arguments(self) -> None:
        with self._lock:
            self._args = None


class ProgramCache:
    """Kernels by (file, name) for one context; each file is built on first use."""

    def __init__(self, cl, context, device, defines: dict[str, dict]):
        self._cl = cl
        self._context = context
        self._device = device
        self._defines = defines
        self._kernels: dict = {}
        self._programs: dict = {}
        self._lock = threading.Lock()
        self._launch_lock = threading.Lock()

    def _build(self, filename: str):
        """``filename`` may name a variant, "file.cl:variant": the same source built with the
        defines given under that key."""
        options = ["-cl-kernel-arg-info"]
        options += [f"-D{k}={v}" for k, v in self._defines.get(filename, {}).items()]
        try:
            return self._cl.Program(self._context, program_text(filename.split(":")[0])).build(
                options=options, devices=[self._device])
        except self._cl.RuntimeError as exc:
            raise RuntimeError(f"opencl backend: building {filename} for {self._device.name} failed:\n{exc}") from exc

    def kernel(self, filename: str, name: str):
        key = (filename, name)
        k = self._kernels.get(key)
        if k is not None:
            return k
        with self._lock:
            program = self._programs.get(filename)
            if program is None:
                program = self._programs[filename] = self._build(filename)
            names = [n for n in program.kernel_names.split(";") if n]
            if name not in names:
                log = program.get_build_info(self._device, self._cl.program_build_info.LOG) or ""
                raise RuntimeError(f"opencl backend: {filename} built for {self._device.name} "
                                   f"({self._defines.get(filename, {})}) has no kernel {name!r}; it has "
                                   f"{len(names)} kernels. Build log (first 2000 characters):\n{log[:2000]}")
            kernel = self._cl.Kernel(program, name)
            kernel.set_scalar_arg_dtypes([self._scalar_type(kernel, i) for i in range(kernel.num_args)])
            k = self._kernels[key] = _Launcher(kernel, self._launch_lock, self._cl.enqueue_nd_range_kernel)
            return k

    def forget_arguments(self) -> None:
        """Let go of every kernel's last arguments (and so of their buffers)."""
        with self._lock:
            launchers = list(self._kernels.values())
        for launcher in launchers:
            launcher.forget_arguments()

    def _scalar_type(self, kernel, index):
        type_name = kernel.get_arg_info(index, self._cl.kernel_arg_info.TYPE_NAME).strip()
        if type_name.endswith("*"):
            return None
        try:
            return _SCALARS[type_name]
        except KeyError:
            raise TypeError(f"kernel {kernel.function_name}: unsupported scalar argument type {type_name!r}") from None
