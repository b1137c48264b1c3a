/* What the NumPy backend's C kernels share: Python.h first (as CPython asks), the C headers
 * they use, VECTOR_CLONES, the GCC vector types, which compiles a function for AVX-512, AVX2 and baseline x86-64
 * and picks the best one when the module loads, and the polling wait of their thread hand-offs
 * (with _gil_hint.h, the GIL releases they count for those hand-offs). */
#ifndef JUICEPY_KERNELS_H
#define JUICEPY_KERNELS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "_gil_hint.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* GCC vector types of the kernels' explicit vector code, and an unaligned load of one */
typedef float vf32x16 __attribute__((vector_size(64)));
typedef double vf64x8 __attribute__((vector_size(64)));
typedef float vf32x8 __attribute__((vector_size(32)));
typedef double vf64x4 __attribute__((vector_size(32)));
typedef float vf32x4 __attribute__((vector_size(16)));
typedef double vf64x2 __attribute__((vector_size(16)));
typedef int vi32x8 __attribute__((vector_size(32)));
#define LOADV(V, P) ({ V v_; memcpy(&v_, (P), sizeof v_); v_; })

/* Polls while the int64 *word still equals value, for at most ``seconds``; 1 once it changed.
 * Threads that hand work over poll rather than block: a thread blocked in the kernel wakes far
 * later than a polling one on the project's VMs (docs/numpy.md). sched_yield every 16 polls gives
 * the core to any other runnable thread (an OpenBLAS worker, another process). */
static inline void cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Seconds since ``start`` */
static inline double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

static inline int spin_while_equal(const long long *word, long long value, double seconds)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned long i = 0;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) return 1;
        if ((i & 15) == 15) {
            if (seconds_since(&start) > seconds) return 0;
            sched_yield();
        }
        cpu_pause();
    }
}

#endif
