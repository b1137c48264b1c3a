"""Datasets: the embedded digits set, MNIST-format IDX files, seeded batching."""

from __future__ import annotations

from .datasets import Dataset, load_digits
from .idx import DatasetUnavailable, load_mnist, read_idx

DATASETS = ("digits", "mnist", "fashion-mnist")


def load_dataset(name: str, data_dir=None, download: bool = True, seed: int = 0):
    """(train, test) for ``name``: "digits" (embedded, no network), "mnist", "fashion-mnist"."""
    if name == "digits":
        return load_digits(seed=seed)
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(name, data_dir=data_dir, download=download)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


__all__ = ["Dataset", "DatasetUnavailable", "DATASETS", "load_dataset", "load_digits", "load_mnist", "read_idx"]
