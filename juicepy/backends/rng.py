"""The counter-based random stream shared by every backend.

Dropout masks come from a stateless hash of (seed, counter, element index), so the NumPy,
OpenCL and CUDA backends draw bit-identical masks and a step is reproducible from its seed and
counter alone. The hash is Chris Wellons' "lowbias32"; element i draws
``hash32(hash32(i ^ key) + GOLDEN)`` (two rounds: one round leaves a small correlation between
neighbouring indices). Kernels in other backends copy this line for line.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B9


def _hash32_scalar(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def stream_key(seed: int, counter: int) -> int:
    """The 32-bit key of one draw: every element index is hashed with it."""
    return _hash32_scalar((seed & 0xFFFFFFFF) ^ _hash32_scalar((counter + GOLDEN) & 0xFFFFFFFF))


def hash32_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """lowbias32 over a uint32 array, in place (``tmp`` is a uint32 scratch of the same shape)."""
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, np.uint32(0x7FEB352D), out=x)
    np.right_shift(x, 15, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, np.uint32(0x846CA68B), out=x)
    np.right_shift(x, 16, out=tmp)
    np.bitwise_xor(x, tmp, out=x)


def element_bits(bits: np.ndarray, key: int, tmp: np.ndarray) -> None:
    """In place: element indices -> their 32 random bits under ``key``."""
    np.bitwise_xor(bits, np.uint32(key), out=bits)
    hash32_inplace(bits, tmp)
    np.add(bits, np.uint32(GOLDEN), out=bits)
    hash32_inplace(bits, tmp)


def uniform_hash(seed: int, counter: int, n: int) -> np.ndarray:
    """Reference: n uniforms in [0, 1) as float32 (24 random bits each)."""
    bits = np.arange(n, dtype=np.uint32)
    element_bits(bits, stream_key(seed, counter), np.empty_like(bits))
    return (bits >> 8).astype(np.float32) * np.float32(1.0 / 16777216.0)


def keep_threshold(p: float) -> int:
    """An element is kept when its 24 random bits (hash >> 8) are >= this threshold."""
    import math

    return min(int(math.ceil(p * 16777216.0)), 16777216)
