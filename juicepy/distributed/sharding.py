"""Which rows each rank trains on: torch's DistributedSampler semantics.

One permutation per (seed, epoch), the same on every rank. It is padded by repeating its first
rows until its length divides by ``size`` (so every rank gets a share of the same length and no
rank waits at a collective for a batch another rank does not have), then rank r takes the rows
at positions r, r + size, r + 2*size, ... The shares are disjoint except for those fewer than
``size`` padded rows, and together they cover every row. Because the shares interleave, batch k
of every rank together is exactly batch k of one process with ``size`` times the batch size.
"""

from __future__ import annotations

import numpy as np


def shard_order(n: int, rank: int = 0, size: int = 1, seed: int = 0, epoch: int = 0,
                shuffle: bool = True) -> np.ndarray:
    """The row indices rank ``rank`` of ``size`` visits in ``epoch``, in order."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, size) with size >= 1, got rank={rank} size={size}")
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    if size == 1:
        return order
    pad = -n % size
    if pad:
        order = np.concatenate([order, np.resize(order, pad)]) if n else order
    return order[rank::size]


def shard_rows(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s rows of an unshuffled pass with no padding (evaluation: every row is
    counted once; shares differ by at most one row)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, size) with size >= 1, got rank={rank} size={size}")
    return slice(rank, n, size)
