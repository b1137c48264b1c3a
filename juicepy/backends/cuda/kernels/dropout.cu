// Dropout with the shared counter-based hash. The counter is counter_base + *counter_shift:
// eager launches point counter_shift at a zero, a replayed CUDA graph at its replay offset,
// so one captured step serves every later step.
#include "common.cuh"
#include "rng.cuh"

extern "C" {

__global__ void dropout_forward(const real* x, real* out, real* mask, i64 n, unsigned int seed,
                                i64 counter_base, const i64* counter_shift, unsigned int threshold,
                                real keep_scale) {
    const unsigned int key = stream_key(seed, (unsigned long long)(counter_base + *counter_shift));
    GRID_STRIDE(i, n) {
        const unsigned int bits = hash32(hash32((unsigned int)i ^ key) + JUICEPY_GOLDEN) >> 8;
        const real m = bits >= threshold ? keep_scale : (real)0;
        mask[i] = m;
        out[i] = x[i] * m;
    }
}

}  // extern "C"
