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
