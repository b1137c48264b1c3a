// The counter-based stream of juicepy/backends/rng.py, line for line: element i draws
// hash32(hash32(i ^ stream_key(seed, counter)) + GOLDEN). Every backend draws the same bits.
#pragma once

#define JUICEPY_GOLDEN 0x9E3779B9u

__device__ __forceinline__ unsigned int hash32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

// counter is taken modulo 2^32 before the hash, as (counter + GOLDEN) & 0xFFFFFFFF in Python.
__device__ __forceinline__ unsigned int stream_key(unsigned int seed, unsigned long long counter) {
    return hash32(seed ^ hash32((unsigned int)(counter + JUICEPY_GOLDEN)));
}
