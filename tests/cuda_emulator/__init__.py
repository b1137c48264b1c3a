"""The CUDA emulator: CUDA C kernel sources compiled by the host C++ compiler and run on the CPU.

Test infrastructure only (it is not part of the installed package): ``build(code, options)``
compiles the text a CUDA module would get from NVRTC against ``cuda_emulator.h`` and returns a
:class:`Module` whose kernels launch with CUDA's grid/block/argument conventions. Every CUDA
thread runs as a fiber, each block cooperatively on one worker (``runtime.cpp``), so barriers and
warp shuffles keep their semantics and their misuse is reported by name. ``sanitize=True`` builds
with AddressSanitizer (the process must have ``libasan`` preloaded; ``asan_environment()``).

Builds are cached by the hash of everything that goes into them under
``$JUICEPY_CUDA_EMULATOR_CACHE`` (default ``~/.cache/juicepy/cuda-emulator``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SUPPORT_FILES = ("cuda_emulator.h", "kernel_table.h", "runtime.cpp")
CACHE_ENV_VAR = "JUICEPY_CUDA_EMULATOR_CACHE"
COMPILER_ENV_VAR = "CXX"
_KERNEL = re.compile(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)\s*\(")
_EXTERN_SHARED = re.compile(r"extern[ \t]+__shared__[ \t]+(?:__align__\(\s*\d+\s*\)[ \t]+)?([\w \t]+?)[ \t]*(\w+)[ \t]*"
                            r"\[[ \t]*\][ \t]*;")
# NVRTC options with no host-compiler meaning; every other option is refused (a new one must be
# thought about, not silently dropped). FMA contraction is always off on the host (see docs).
_IGNORED_OPTIONS = re.compile(r"^(--fmad=(true|false)|-ftz=(true|false)|--ftz=(true|false)|-prec-div=\w+|"
                              r"-prec-sqrt=\w+|--device-as-default-execution-space|-default-device|"
                              r"--std=c\+\+\d+|-std=c\+\+\d+|-arch=\w+|--gpu-architecture=\w+|-lineinfo|"
                              r"--generate-line-info|-G|--device-debug|--ptxas-options=.*|-Xptxas=.*|"
                              r"--restrict|-restrict|-w|--disable-warnings)$")
_CTYPES = {"f32": ctypes.c_float, "f64": ctypes.c_double, "i8": ctypes.c_int8, "u8": ctypes.c_uint8,
           "b8": ctypes.c_bool, "i16": ctypes.c_int16, "u16": ctypes.c_uint16, "i32": ctypes.c_int32,
           "u32": ctypes.c_uint32, "i64": ctypes.c_int64, "u64": ctypes.c_uint64}
_NUMPY = {"f32": np.float32, "f64": np.float64, "i8": np.int8, "u8": np.uint8, "b8": np.bool_, "i16": np.int16,
          "u16": np.uint16, "i32": np.int32, "u32": np.uint32, "i64": np.int64, "u64": np.uint64}


class EmulatorError(RuntimeError):
    """A kernel did something CUDA leaves undefined (or the build failed); the message says what."""


def compiler() -> str | None:
    """The host C++ compiler the emulator uses ($CXX, else g++ or c++), or None."""
    for name in (os.environ.get(COMPILER_ENV_VAR), "g++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def cache_dir() -> Path:
    raw = os.environ.get(CACHE_ENV_VAR)
    path = Path(raw) if raw else Path.home() / ".cache" / "juicepy" / "cuda-emulator"
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_names(code: str) -> list[str]:
    return _KERNEL.findall(code)


def host_flags(options) -> list[str]:
    """The host compiler flags for NVRTC-style options (-D/-U/-I pass through)."""
    flags = []
    for option in options:
        if re.match(r"^-[DUI]\S", option):
            flags.append(option)
        elif not _IGNORED_OPTIONS.match(option):
            raise EmulatorError(f"the CUDA emulator does not know the compile option {option!r}")
    return flags


def translation_unit(code: str) -> str:
    """The C++ text the host compiler gets: the emulation header, the source (extern __shared__
    arrays become pointers to the launch's dynamic shared memory) and the kernel table."""
    names = kernel_names(code)
    if not names:
        raise EmulatorError("no __global__ kernel in the source")
    body = _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = ({m.group(1)}*)::jp_emu::dynamic_shared();",
                              code)
    table = ", ".join(f"JP_EMU_KERNEL({name})" for name in names)
    return (f'#include "cuda_emulator.h"\n#line 1 "kernels.cu"\n{body}\n#line 1 "kernel_table"\n'
            f'#include "kernel_table.h"\nJP_EMU_EXPORT_TABLE({table})\n')


def _flags(sanitize: bool) -> list[str]:
    common = ["-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-fno-fast-math",
              "-fno-strict-aliasing", "-pthread", f"-I{HERE}"]
    if sanitize:
        return common + ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                         "-fno-sanitize-recover=undefined"]
    return common + ["-O2"]


_BUILD_LOCK = threading.Lock()


def _compile(cxx: str, unit: str, args: list, name: str) -> Path:
    """Compile ``unit`` with ``args`` into the cache as ``name`` unless it is there already."""
    target = cache_dir() / name
    with _BUILD_LOCK:
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            source = Path(tmp) / "unit.cpp"
            source.write_text(unit)
            out = Path(tmp) / "lib.so"
            result = subprocess.run([cxx, str(source), "-o", str(out), *args], capture_output=True, text=True)
            if result.returncode != 0:
                raise EmulatorError(f"the CUDA emulator could not compile {name}:\n{result.stderr[-4000:]}")
            os.replace(out, target)  # atomic: concurrent sessions never load a half-written file
    return target


def _key(*parts) -> str:
    key = hashlib.sha256()
    for part in parts:
        key.update(part.encode())
        key.update(b"\0")
    return key.hexdigest()[:24]


def _cxx() -> str:
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("the CUDA emulator needs a C++ compiler (g++ or $CXX)")
    return cxx


def build_runtime(sanitize: bool = False) -> Path:
    """The runtime library (scheduler, fibers, device API), built once per source hash."""
    cxx = _cxx()
    flags = _flags(sanitize)
    sources = [(HERE / f).read_text() for f in SUPPORT_FILES]
    tag = "-asan" if sanitize else ""
    return _compile(cxx, '#include "runtime.cpp"\n', flags,
                    f"runtime-{_key(' '.join(flags), _compiler_version(cxx), *sources)}{tag}.so")


def build_library(code: str, options=(), sanitize: bool = False) -> Path:
    """Compile (or find in the cache) the kernel library for ``code`` built with ``options``."""
    cxx = _cxx()
    runtime = build_runtime(sanitize)
    unit = translation_unit(code)
    flags = _flags(sanitize) + host_flags(options)
    link = [f"-L{runtime.parent}", f"-l:{runtime.name}", f"-Wl,-rpath,{runtime.parent}"]
    sources = [(HERE / f).read_text() for f in SUPPORT_FILES]
    tag = "-asan" if sanitize else ""
    return _compile(cxx, unit, flags + link,
                    f"kernels-{_key(unit, ' '.join(flags), runtime.name, _compiler_version(cxx), *sources)}{tag}.so")


@lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def _runtime_library(name: str) -> str | None:
    cxx = compiler()
    if cxx is None:
        return None
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def asan_runtime() -> str | None:
    """The path of the compiler's AddressSanitizer runtime (to preload), or None."""
    return _runtime_library("libasan.so")


def asan_environment(log_path: str | None = None) -> dict:
    """Environment for a Python process that loads sanitizer builds (reports go to
    ``log_path.<pid>`` when given, else to stderr)."""
    runtime = asan_runtime()
    if runtime is None:
        raise EmulatorError("the compiler has no AddressSanitizer runtime (libasan.so)")
    env = dict(os.environ)
    # libstdc++ right after the runtime: ASan must find __cxa_throw for C++ extensions that throw
    env["LD_PRELOAD"] = " ".join(p for p in (runtime, _runtime_library("libstdc++.so")) if p)
    # Python and NumPy themselves are not leak-clean; the fibers switch stacks (annotated)
    options = "detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1"
    env["ASAN_OPTIONS"] = options + (f":log_path={log_path}" if log_path else "")
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1" + (f":log_path={log_path}" if log_path else "")
    return env


class Kernel:
    """One compiled kernel: its name and the C type of each parameter ("f32", "p:i32", ...)."""

    def __init__(self, module, info, name, kinds):
        self.module, self.name, self.kinds = module, name, kinds
        self.info = info  # the address of its KernelInfo in the module

    def marshal(self, args) -> list:
        """ctypes values for ``args``: pointers as ints (or objects with ``.data.ptr``), scalars
        of exactly the NumPy type the kernel reads (a wrong type would be misread on a GPU)."""
        if len(args) != len(self.kinds):
            raise EmulatorError(f"kernel {self.name}: {len(args)} arguments, it takes {len(self.kinds)}")
        values = []
        for i, (kind, arg) in enumerate(zip(self.kinds, args)):
            where = f"kernel {self.name} argument {i} ({kind})"
            if kind.startswith("p:"):
                ptr = getattr(getattr(arg, "data", None), "ptr", None)
                if ptr is None:
                    if not isinstance(arg, (int, np.integer)):
                        raise EmulatorError(f"{where}: a pointer, got {type(arg).__name__}")
                    ptr = int(arg)
                values.append(ctypes.c_void_p(ptr))
                continue
            expected = _NUMPY.get(kind)
            if expected is None:
                raise EmulatorError(f"{where}: the emulator cannot pass parameters of this type")
            if type(arg) is not expected:
                raise EmulatorError(f"{where}: got {type(arg).__name__}, the kernel reads {np.dtype(expected)}")
            values.append(_CTYPES[kind](arg.item()))
        return values

    def launch(self, grid, block, values, shared_mem=0, reverse=False, workers=1):
        """Run the kernel on marshalled ``values``; raises EmulatorError with the report."""
        grid3 = (ctypes.c_uint * 3)(*(tuple(grid) + (1, 1, 1))[:3])
        block3 = (ctypes.c_uint * 3)(*(tuple(block) + (1, 1, 1))[:3])
        argv = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        error = ctypes.create_string_buffer(2048)
        rc = self.module.runtime.jp_emu_launch(self.info, grid3, block3, ctypes.c_size_t(shared_mem), argv,
                                               int(reverse), int(workers), error, ctypes.c_size_t(len(error)))
        if rc != 0:
            raise EmulatorError(self.module.explain(error.value.decode()))


class _KernelInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("function", ctypes.c_void_p), ("invoke", ctypes.c_void_p),
                ("param_count", ctypes.c_int), ("param_kinds", ctypes.POINTER(ctypes.c_char_p))]


@lru_cache(maxsize=None)
def _runtime(sanitize: bool):
    lib = ctypes.CDLL(str(build_runtime(sanitize)), mode=ctypes.RTLD_GLOBAL)
    lib.jp_emu_launch.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int,
                                  ctypes.c_char_p, ctypes.c_size_t)
    return lib


class Module:
    """The kernels of one source compiled with one set of options."""

    def __init__(self, code: str, options=(), sanitize: bool = False):
        self.code = code
        runtime = _runtime(sanitize)
        self.path = build_library(code, options, sanitize)
        lib = self.lib = ctypes.CDLL(str(self.path))
        lib.jp_emu_kernel.restype = ctypes.POINTER(_KernelInfo)
        self.runtime = runtime
        self.kernels = {}
        for i in range(lib.jp_emu_kernel_count()):
            info = lib.jp_emu_kernel(i)
            name = info.contents.name.decode()
            kinds = [info.contents.param_kinds[p].decode() for p in range(info.contents.param_count)]
            self.kernels[name] = Kernel(self, ctypes.cast(info, ctypes.c_void_p).value, name, kinds)

    def get_function(self, name: str) -> Kernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise EmulatorError(f"no kernel {name!r} in the module") from None

    def explain(self, message: str) -> str:
        """Add the source line a report names (``... line N``) to the message."""
        lines = self.code.splitlines()
        match = re.search(r" line (\d+)", message)
        if match and 0 < int(match.group(1)) <= len(lines):
            message += f"\n    line {match.group(1)}: {lines[int(match.group(1)) - 1].strip()}"
        return message
