"""Shards with DistributedSampler semantics (no MPI needed: rank and size are arguments)."""

import numpy as np
import pytest

from juicepy.data import Dataset
from juicepy.distributed import shard_order, shard_rows


@pytest.mark.parametrize("n,size", [(40, 2), (41, 2), (41, 4), (3, 4), (0, 3), (17, 1)])
def test_shards_are_equal_cover_every_row_and_overlap_only_in_the_padding(n, size):
    shards = [shard_order(n, r, size, seed=1, epoch=0) for r in range(size)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == -(-n // size)
    joined = np.concatenate(shards)
    assert set(joined.tolist()) == set(range(n))
    assert len(joined) - n == (-n % size if n else 0)  # repeats: fewer than `size` padded rows


def test_shards_are_disjoint_when_the_rows_divide_evenly():
    shards = [set(shard_order(40, r, 4, seed=2, epoch=3).tolist()) for r in range(4)]
    assert all(not (a & b) for i, a in enumerate(shards) for b in shards[i + 1:])


def test_one_permutation_per_seed_and_epoch():
    a = shard_order(50, 0, 2, seed=0, epoch=0)
    assert np.array_equal(a, shard_order(50, 0, 2, seed=0, epoch=0))
    assert not np.array_equal(a, shard_order(50, 0, 2, seed=0, epoch=1))
    assert not np.array_equal(a, shard_order(50, 0, 2, seed=1, epoch=0))
    np.testing.assert_array_equal(shard_order(50, 1, 2, shuffle=False), np.arange(1, 50, 2))


def test_batch_k_of_every_rank_together_is_batch_k_of_one_process():
    rng = np.random.default_rng(0)
    data = Dataset(rng.standard_normal((50, 3)).astype(np.float32), np.arange(50) % 5)
    size, b = 2, 4
    alone = list(data.batches(size * b, seed=3, epoch=2))
    ranks = [list(data.batches(b, seed=3, epoch=2, rank=r, size=size)) for r in range(size)]
    assert all(len(r) == len(alone) == 6 for r in ranks)
    for k, (_, y) in enumerate(alone):
        assert sorted(np.concatenate([ranks[r][k][1] for r in range(size)]).tolist()) == sorted(y.tolist())


def test_bad_rank_or_size_is_refused():
    with pytest.raises(ValueError, match="rank=2 size=2"):
        shard_order(10, 2, 2)
    with pytest.raises(ValueError, match="rank=0 size=0"):
        shard_rows(10, 0, 0)


def test_evaluation_rows_count_every_row_once():
    rows = [np.arange(11)[shard_rows(11, r, 3)] for r in range(3)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(11))
