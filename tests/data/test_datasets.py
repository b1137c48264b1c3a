import numpy as np
import pytest

from juicepy.data import Dataset, load_dataset, load_digits


def test_digits_is_embedded_and_split():
    train, test = load_digits()
    assert len(train) + len(test) == 1797
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == np.float32
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert set(np.unique(train.y)) == set(range(10)) and train.classes == 10
    assert len(test) == pytest.approx(0.2 * 1797, abs=1)


def test_digits_split_is_seeded():
    a, _ = load_digits(seed=0)
    b, _ = load_digits(seed=0)
    c, _ = load_digits(seed=1)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.y, c.y)


def test_batches_drop_last_and_cover_each_row_once():
    ds = Dataset(np.arange(10, dtype=np.float32)[:, None], np.arange(10), "toy")
    batches = list(ds.batches(3, seed=1))
    assert [len(b[0]) for b in batches] == [3, 3, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert len(set(seen)) == 9
    all_rows = list(ds.batches(3, drop_last=False, shuffle=False))
    assert [len(b[1]) for b in all_rows] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in all_rows]), np.arange(10))


def test_shuffle_depends_on_seed_and_epoch_only():
    ds = Dataset(np.zeros((20, 1), np.float32), np.arange(20), "toy")
    order = lambda **kw: np.concatenate([y for _, y in ds.batches(5, **kw)])  # noqa: E731
    np.testing.assert_array_equal(order(seed=3, epoch=1), order(seed=3, epoch=1))
    assert not np.array_equal(order(seed=3, epoch=1), order(seed=3, epoch=2))
    assert not np.array_equal(order(seed=3, epoch=1), order(seed=4, epoch=1))


def test_dataset_validation():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        Dataset(np.zeros((3, 1)), np.zeros(2, int))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        next(Dataset(np.zeros((3, 1)), np.zeros(3, int)).batches(0))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize("call, needle", [
    (lambda d: next(d.batches(8, seed=-1)), "digits-train.batches: seed must be an integer >= 0, got -1"),
    (lambda d: next(d.batches(8, epoch=-2)), "digits-train.batches: epoch must be an integer >= 0, got -2"),
    (lambda d: next(d.batches(8, epoch=1.5)), "epoch must be an integer >= 0, got float 1.5"),
    (lambda d: d.split(0.5, seed=-1), "digits-train.split: seed must be an integer >= 0, got -1"),
])
def test_seeds_and_epochs_are_checked_by_name(call, needle):
    """NumPy's "expected non-negative integer" (or a TypeError) came out naming nothing."""
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        call(load_digits()[0])
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        load_dataset("digits", seed=-1)
