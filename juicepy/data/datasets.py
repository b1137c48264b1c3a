"""In-memory datasets with seeded shuffling and fixed-size batching."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import arguments
from ..distributed.sharding import shard_order


@dataclass
class Dataset:
    """Inputs ``x`` (N, *unit_shape) (float32, or integer tokens below ``vocab``) and targets
    ``y``: integer labels (N,) for ``task="classification"``, float rows for ``"regression"``."""

    x: np.ndarray
    y: np.ndarray
    name: str = "dataset"
    classes: int = 0
    task: str = "classification"
    vocab: int = 0  # token inputs: how many distinct tokens (an Embedding's num_embeddings)

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"{self.name}: task must be 'classification' or 'regression', got {self.task!r}")
        if not self.classes and self.task == "classification":
            self.classes = int(self.y.max()) + 1 if len(self.y) else 0

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    @property
    def outputs(self) -> int:
        """The width a model's output needs: the classes, or the regression target's size."""
        return self.classes if self.task == "classification" else int(np.prod(self.y.shape[1:]))

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                drop_last: bool = True, rank: int = 0, size: int = 1):
        """Yield (x, y) batches; the order depends only on (seed, epoch).

        ``drop_last`` keeps every batch at exactly ``batch_size`` rows, as a Trainer needs.
        ``rank`` / ``size``: this rank's share of a data-parallel job (DistributedSampler
        semantics, see :mod:`juicepy.distributed.sharding`): every rank yields the same number
        of batches.
        """
        batch_size = arguments.integer(f"{self.name}.batches", "batch_size", batch_size, 1)
        seed = arguments.integer(f"{self.name}.batches", "seed", seed, 0)
        epoch = arguments.integer(f"{self.name}.batches", "epoch", epoch, 0)
        order = shard_order(len(self), rank, size, seed=seed, epoch=epoch, shuffle=shuffle)
        n = len(order)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]

    def split(self, fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """A seeded random split into (first, second) with ``fraction`` of the rows in first."""
        fraction = arguments.number(f"{self.name}.split", "fraction", fraction, 0.0, 1.0)
        seed = arguments.integer(f"{self.name}.split", "seed", seed, 0)
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(len(self) * fraction))
        a, b = order[:cut], order[cut:]
        return (Dataset(self.x[a], self.y[a], f"{self.name}[:{cut}]", self.classes, self.task, self.vocab),
                Dataset(self.x[b], self.y[b], f"{self.name}[{cut}:]", self.classes, self.task, self.vocab))


_DIGITS = Path(__file__).with_name("digits.npz")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The UCI optical-recognition handwritten digits (as shipped by scikit-learn): 1,797
    8x8 images, 10 classes, embedded in the package. Returns (train, test), x in [0, 1]
    with shape (N, 1, 8, 8)."""
    test_fraction = arguments.number("load_digits", "test_fraction", test_fraction, 0.0, 1.0)
    with np.load(_DIGITS) as data:
        images, labels = data["images"], data["labels"]
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    full = Dataset(x, labels.astype(np.int64), "digits", 10)
    train, test = full.split(1.0 - test_fraction, seed=seed)
    train.name, test.name = "digits-train", "digits-test"
    return train, test
