// Shared helpers of juicepy's CUDA kernels. `real` is the element type: the backend compiles
// every source twice, with -Dreal=float and -Dreal=double.
#pragma once
#ifndef real
#define real float
#endif

typedef long long i64;

// NVRTC has no <math.h> macros: infinity and NaN by their bits.
#define JP_INF __int_as_float(0x7f800000)
#define JP_NAN __int_as_float(0x7fffffff)

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

__device__ __forceinline__ real warp_sum(real v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// NaN wins, as in NumPy's max, so a row holding NaN stays NaN.
__device__ __forceinline__ real nan_max(real a, real b) { return (a != a || a > b) ? a : b; }

__device__ __forceinline__ real warp_max(real v) {
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the result.
__device__ real block_sum(real v, real* scratch32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch32 may still be read by a previous call
    if (lane == 0) scratch32[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? scratch32[threadIdx.x] : (real)0;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch32[0] = v;
    __syncthreads();
    return scratch32[0];
}

// Max over the block; every thread gets the result.
__device__ real block_max(real v, real* scratch32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch32[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? scratch32[threadIdx.x] : (real)(-JP_INF);
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) scratch32[0] = v;
    __syncthreads();
    return scratch32[0];
}

// Sum over the warp of every lane's v, returned to every lane (the same value in each: the
// shuffle tree adds in one fixed order).
__device__ __forceinline__ real warp_sum_all(real v) {
    return __shfl_sync(0xffffffffu, warp_sum(v), 0);
}

// The total of p[0..n) over the calling warp (every lane of it must call), in a fixed order:
// lane l adds p[l], p[l + 32], ... then the warp's shuffle tree. Every warp that calls it on
// the same values gets the same bits, so blocks need not exchange the result.
__device__ __forceinline__ real warp_total(const real* p, i64 n) {
    real v = 0;
    for (i64 j = threadIdx.x & 31; j < n; j += 32) v += p[j];
    return warp_sum_all(v);
}

// The values of channel c of an (N, C, inner) array with flat per-channel positions
// k = n * inner + s in [start, end) that this thread visits: k = start + threadIdx.x, then
// every blockDim.x. The index is stepped, so the loop pays one 64-bit division per thread,
// not one per value.
struct ChannelWalk {
    i64 k, end, s, index, inner, step_s, jump, wrap;
    __device__ ChannelWalk(i64 start, i64 end_, i64 c, i64 channels, i64 inner_)
        : k(start + threadIdx.x), end(end_), inner(inner_ > 0 ? inner_ : 1) {  // inner 0: nothing to walk
        const i64 row = channels * inner, n = k / inner, step_n = blockDim.x / inner;
        s = k - n * inner;
        index = n * row + c * inner + s;
        step_s = blockDim.x - step_n * inner;
        jump = step_n * row + step_s;
        wrap = row - inner;
    }
    __device__ __forceinline__ bool more() const { return k < end; }
    __device__ __forceinline__ void next() {
        k += blockDim.x;
        s += step_s;
        index += jump;
        if (s >= inner) {
            s -= inner;
            index += wrap;
        }
    }
};
