"""What the NumPy backend runs on: its C kernels' build and CPU kind, its thread lanes, and the
BLAS libraries NumPy loaded (its GEMMs, hence every BLAS-bound op, run at their speed)."""

from __future__ import annotations

import os

from . import kernels
from .blas import gemm_entry
from .threads import num_threads

#: the C kernels' builds by their ``isa`` number, as JUICEPY_CPU_ISA names them (_conv_kernels.c)
ISA_NAMES = ("baseline", "avx2", "avx512")

#: OpenBLAS kernel families older than its AVX-512 ones: an OPENBLAS_CORETYPE naming one of them
#: on a CPU with AVX-512 holds OpenBLAS to half-width kernels
OPENBLAS_PRE_AVX512 = {"prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "haswell",
                       "zen", "barcelona", "bulldozer", "piledriver", "steamroller", "excavator", "atom"}


def runtime_info() -> dict:
    """{"c_kernels": {isa, isa_name, cpu_isa, cpu_vendor, cpu_family} or None where the C
    kernels are not built, "threads": lanes, "blas": [{internal_api, version, architecture,
    num_threads}] (threadpoolctl; a string saying why where it cannot look), "gemm_entry": whether
    the gemm op calls NumPy's OpenBLAS from C (blas.py) rather than np.matmul, "openblas_env":
    the OPENBLAS_* variables, "notes": [what slows this setup, in words]}. threadpoolctl sees only
    loaded libraries: NumPy's BLAS is, since kernels.py imports NumPy."""
    conv = kernels.load("_conv_kernels")
    info: dict = {"threads": num_threads(),
                  "openblas_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")}}
    info["c_kernels"] = None if conv is None else {
        "isa": conv.isa, "isa_name": ISA_NAMES[conv.isa], "cpu_isa": ISA_NAMES[conv.cpu_isa],
        "cpu_vendor": conv.cpu_vendor, "cpu_family": conv.cpu_family}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["blas"] = "threadpoolctl is not installed"
    else:
        info["blas"] = [{key: lib.get(key) for key in ("internal_api", "version", "architecture", "num_threads")}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    info["gemm_entry"] = gemm_entry() is not None
    info["notes"] = _notes(info)
    return info


def _notes(info: dict) -> list[str]:
    notes = []
    c = info["c_kernels"]
    if c is None:
        notes.append("the C kernels are not built: convolutions, pooling and norms run as pure NumPy "
                     "(pip install . from a source tree with a C compiler builds them)")
    elif c["isa"] != ISA_NAMES.index(c["cpu_isa"]):
        notes.append(f"JUICEPY_CPU_ISA holds the C kernels to {c['isa_name']} on a CPU that runs {c['cpu_isa']}")
    if c is not None and not info.get("gemm_entry", True):
        notes.append("the gemm op runs on np.matmul (no ILP64 OpenBLAS found to call from C): products of 2^22 "
                     "to 2^26 multiply-adds run on BLAS's own threads, which keep spinning after each call and "
                     "slow the convolution and batch-norm passes after them")
    coretype = info["openblas_env"].get("OPENBLAS_CORETYPE", "")
    if c is not None and c["cpu_isa"] == "avx512" and coretype.lower() in OPENBLAS_PRE_AVX512:
        notes.append(f"OPENBLAS_CORETYPE={coretype} holds OpenBLAS to kernels without AVX-512 on a CPU "
                     "with it: NumPy's GEMMs run slower (unset it where this OpenBLAS runs correctly)")
    return notes


def describe(info: dict) -> list[str]:
    """runtime_info as lines of text."""
    c = info["c_kernels"]
    lines = [f"C kernels: {'not built' if c is None else c['isa_name'] + ' build'}"
             + ("" if c is None else f" (CPU: {c['cpu_vendor']} family {c['cpu_family']:#x}, runs {c['cpu_isa']})"),
             f"thread lanes: {info['threads']}"]
    blas = info["blas"]
    if isinstance(blas, str):
        lines.append(f"BLAS: unknown ({blas})")
    else:
        for lib in blas or [{"internal_api": "none found", "version": None, "architecture": None, "num_threads": None}]:
            lines.append(f"BLAS: {lib['internal_api']} {lib['version'] or ''}, {lib['architecture'] or '?'} kernels, "
                         f"{lib['num_threads']} threads".replace(" ,", ","))
    if "gemm_entry" in info:
        lines.append("GEMM: " + ("NumPy's OpenBLAS called from C, mid-sized and larger products split over the lanes"
                                 if info["gemm_entry"] else "np.matmul"))
    env = ", ".join(f"{k}={v}" for k, v in info["openblas_env"].items())
    lines.append(f"OpenBLAS variables: {env or 'none set'}")
    lines += [f"note: {note}" for note in info["notes"]]
    return lines
