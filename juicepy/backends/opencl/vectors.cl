// Built ahead of every program of this backend (programs.py): vector types aligned like their
// scalar, so one dereference is one unaligned vector load or store at any offset. The kernels
// use them in place of vloadn/vstoren: PyPI's PoCL 3.0 leaves those (and select, isgreater,
// isnan) as out-of-line calls where its LLVM names the CPU apart from its kernel library's
// variant (an AVX-512 Xeon under KVM read as rocketlake), each call spilling the vector
// registers live across it (docs/opencl.md, session 43).
typedef float4 float4_u __attribute__((aligned(4)));
typedef float8 float8_u __attribute__((aligned(4)));
typedef float16 float16_u __attribute__((aligned(4)));
typedef int4 int4_u __attribute__((aligned(4)));
typedef int8 int8_u __attribute__((aligned(4)));
typedef int16 int16_u __attribute__((aligned(4)));
