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
// Hints that the cache lines at global float pointer p (PREFETCH_READ, PREFETCH_WRITE), or those
// spanning n floats from p (PREFETCH_SPAN), are wanted soon, for kernels whose reads jump from
// plane to plane faster than the hardware prefetchers follow. On CPU drivers (CPU_PREFETCH,
// backend.py) they are the compiler's prefetch instructions, through an integer because
// __builtin_prefetch takes a private pointer (one address space there; OpenCL's own prefetch()
// does nothing on PoCL); elsewhere nothing.
#if CPU_PREFETCH
#define PREFETCH_READ(p) __builtin_prefetch((const void *)(size_t)(p), 0)
#define PREFETCH_WRITE(p) __builtin_prefetch((const void *)(size_t)(p), 1)
#else
#define PREFETCH_READ(p)
#define PREFETCH_WRITE(p)
#endif
#define PREFETCH_SPAN(HINT, p, n) { \
        for (int pf_ = 0; pf_ < (n); pf_ += 16) HINT((p) + pf_); \
        HINT((p) + (n) - 1); }
