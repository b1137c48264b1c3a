#!/bin/sh
# Runs a command with every library held to AVX2 + FMA on an AVX-512 x86 CPU: the instructions of
# issue #13's AMD AVX2 machine kind, where none is at hand (docs/numpy.md and docs/opencl.md,
# session 47). Not its caches, clock or memory: ratios measured so are a stand-in, not that machine.
#
#     sh bench/hold_avx2.sh pytest bench -k paired --benchmark-json=avx2.json
#
# juicepy's C kernels (JUICEPY_CPU_ISA), NumPy's OpenBLAS and its own SIMD loops, PyTorch (ATen,
# oneDNN, MKL), and PoCL where it is Debian's build (pocl-opencl-icd: it ships kernel libraries
# per instruction set and reads POCL_LLVM_CPU_NAME/POCL_KERNELLIB_NAME; PyPI's pocl-binary-distribution
# does not, and targets the CPU it runs on). JUICEPY_OPENCL_DEVICE picks Debian's platform: see
# `juicepy info`, or python -c "import pyopencl as cl; print(cl.get_platforms())".
export JUICEPY_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" \
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
    POCL_LLVM_CPU_NAME=znver3 POCL_KERNELLIB_NAME=avx2
exec "$@"
