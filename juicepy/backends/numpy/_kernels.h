/* What the NumPy backend's C kernels share: Python.h first (as CPython asks), the C headers
 * they use, and VECTOR_CLONES, which compiles a function for AVX-512, AVX2 and baseline x86-64
 * and picks the best one when the module loads. */
#ifndef JUICEPY_KERNELS_H
#define JUICEPY_KERNELS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#endif
