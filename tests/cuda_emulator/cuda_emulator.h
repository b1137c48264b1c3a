// The CUDA emulator's device-side header: what a kernel source sees when the host C++ compiler
// builds it (tests/cuda_emulator, test infrastructure only, never part of the package).
//
// Every CUDA thread of a block runs as a fiber on one OS thread (a worker); __syncthreads and
// the warp collectives switch fibers, so barriers and shuffles keep CUDA's semantics and their
// misuse is reported by name (see runtime.cpp).
#pragma once

// Every standard header of the emulator's units, before the CUDA qualifier macros below:
// libstdc++ 13 and later write __noinline__ in its own attributes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

namespace jp_emu {

struct dim3 {
    unsigned int x, y, z;
};

// initial-exec: the kernels read these in every loop test; a dlopen'ed library has room for
// this much static TLS, and the general model would call __tls_get_addr on each read.
// (They live in the runtime library, whose static TLS is these few bytes; a kernel module's own
// TLS, its __shared__ arrays, stays dynamic.)
#define JP_EMU_TLS __attribute__((tls_model("initial-exec"), visibility("default"))) thread_local
extern JP_EMU_TLS dim3 block_idx, block_dim, grid_dim, thread_idx;

#define JP_EMU_RUNTIME __attribute__((visibility("default")))
JP_EMU_RUNTIME void syncthreads(const char* func, int line);
JP_EMU_RUNTIME void syncwarp(unsigned mask, const char* func, int line);
JP_EMU_RUNTIME void* dynamic_shared();
JP_EMU_RUNTIME unsigned lane_mask_active();

enum WarpOp { SHFL_IDX = 0, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, SYNCWARP };
// One lane's part in a warp collective; returns the lane's result (64 value bits).
JP_EMU_RUNTIME unsigned long long warp_collective(int op, unsigned mask, unsigned long long value, int param, int width,
                                   const char* func, int line);

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <typename T>
inline T from_bits(unsigned long long bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

template <typename T>
inline T shfl(int op, unsigned mask, T v, int param, int width, const char* func, int line) {
    return from_bits<T>(warp_collective(op, mask, to_bits(v), param, width, func, line));
}

// Atomics: real atomic read-modify-writes (blocks of one launch may run on several workers).
template <typename T, typename F>
inline T atomic_update(T* address, F f) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on a type of unsupported size");
    using Bits = typename std::conditional<sizeof(T) == 4, unsigned int, unsigned long long>::type;
    Bits* raw = reinterpret_cast<Bits*>(address);
    Bits old_bits = __atomic_load_n(raw, __ATOMIC_RELAXED);
    for (;;) {
        const T old = from_bits<T>(old_bits);
        const Bits new_bits = static_cast<Bits>(to_bits(f(old)));
        if (__atomic_compare_exchange_n(raw, &old_bits, new_bits, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            return old;
    }
}

}  // namespace jp_emu

using jp_emu::dim3;

#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __constant__
#define __align__(n) alignas(n)
// One copy per worker OS thread = one per block in flight (a worker runs one block at a time).
#define __shared__ static thread_local

#define threadIdx (::jp_emu::thread_idx)
#define blockIdx (::jp_emu::block_idx)
#define blockDim (::jp_emu::block_dim)
#define gridDim (::jp_emu::grid_dim)
#define warpSize 32

#define __syncthreads() ::jp_emu::syncthreads(__func__, __LINE__)
#define __syncwarp(...) ::jp_emu::syncwarp(jp_emu_mask_or_full(__VA_ARGS__), __func__, __LINE__)
inline unsigned jp_emu_mask_or_full(unsigned mask = 0xffffffffu) { return mask; }
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __activemask() ::jp_emu::lane_mask_active()

#define __shfl_sync(mask, v, lane, ...) \
    ::jp_emu::shfl(::jp_emu::SHFL_IDX, (mask), (v), (lane), jp_emu_width(__VA_ARGS__), __func__, __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
    ::jp_emu::shfl(::jp_emu::SHFL_UP, (mask), (v), (delta), jp_emu_width(__VA_ARGS__), __func__, __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
    ::jp_emu::shfl(::jp_emu::SHFL_DOWN, (mask), (v), (delta), jp_emu_width(__VA_ARGS__), __func__, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
    ::jp_emu::shfl(::jp_emu::SHFL_XOR, (mask), (v), (lane_mask), jp_emu_width(__VA_ARGS__), __func__, __LINE__)
inline int jp_emu_width(int width = 32) { return width; }
#define __ballot_sync(mask, pred) \
    ((unsigned)::jp_emu::warp_collective(::jp_emu::BALLOT, (mask), (pred) ? 1 : 0, 0, 32, __func__, __LINE__))
#define __any_sync(mask, pred) \
    ((int)::jp_emu::warp_collective(::jp_emu::ANY, (mask), (pred) ? 1 : 0, 0, 32, __func__, __LINE__))
#define __all_sync(mask, pred) \
    ((int)::jp_emu::warp_collective(::jp_emu::ALL, (mask), (pred) ? 1 : 0, 0, 32, __func__, __LINE__))

// The math the kernels use: C++'s overloads pick the float or double version, as CUDA's do.
using std::abs;
using std::ceil;
using std::cos;
using std::exp;
using std::expm1;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::pow;
using std::sin;
using std::sqrt;
using std::tanh;
using std::erf;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline float __int_as_float(int i) { return jp_emu::from_bits<float>((unsigned)i); }
inline int __float_as_int(float f) { return (int)(unsigned)jp_emu::to_bits(f); }
inline unsigned __float_as_uint(float f) { return (unsigned)jp_emu::to_bits(f); }
inline float __uint_as_float(unsigned u) { return jp_emu::from_bits<float>(u); }
inline double __longlong_as_double(long long i) { return jp_emu::from_bits<double>((unsigned long long)i); }
inline long long __double_as_longlong(double d) { return (long long)jp_emu::to_bits(d); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

template <typename T>
inline T atomicAdd(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old + v; }); }
template <typename T>
inline T atomicSub(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old - v; }); }
template <typename T>
inline T atomicExch(T* a, T v) { return jp_emu::atomic_update(a, [v](T) { return v; }); }
template <typename T>
inline T atomicMax(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old > v ? old : v; }); }
template <typename T>
inline T atomicMin(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old < v ? old : v; }); }
template <typename T>
inline T atomicAnd(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old & v; }); }
template <typename T>
inline T atomicOr(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old | v; }); }
template <typename T>
inline T atomicXor(T* a, T v) { return jp_emu::atomic_update(a, [v](T old) { return old ^ v; }); }
template <typename T>
inline T atomicCAS(T* a, T compare, T v) {
    T expected = compare;
    __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
