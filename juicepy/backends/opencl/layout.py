"""Small shared helpers for launching kernels."""

import numpy as np

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m
