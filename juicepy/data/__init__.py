"""Datasets: the embedded digits set, MNIST-format IDX files, seeded batching."""

from __future__ import annotations

from .datasets import Dataset, load_digits
from .idx import DatasetUnavailable, load_mnist, read_idx
from .sequences import load_adding, load_mackey_glass, mackey_glass_series

DATASETS = ("digits", "mnist", "fashion-mnist", "mackey-glass", "adding")


def load_dataset(name: str, data_dir=None, download: bool = True, seed: int = 0):
    """(train, test) for ``name``: "digits" (embedded, no network), "mnist", "fashion-mnist",
    and the generated "mackey-glass" (next-value regression) and "adding" (the adding problem as tokens)."""
    if name == "digits":
        return load_digits(seed=seed)
    if name == "mackey-glass":
        return load_mackey_glass()
    if name == "adding":
        return load_adding(seed=seed)
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(name, data_dir=data_dir, download=download)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


__all__ = ["Dataset", "DatasetUnavailable", "DATASETS", "load_dataset", "load_adding", "load_digits", "load_mackey_glass",
           "load_mnist", "mackey_glass_series", "read_idx"]
