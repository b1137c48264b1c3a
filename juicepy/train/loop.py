"""Epoch loops over a Dataset: fit with a progress bar, evaluate accuracy."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..backends import backend as get_backend
from .metrics import accuracy


def fit_epoch(trainer, backend, dataset, epoch: int = 0, seed: int = 0, progress: bool = True,
              desc: str | None = None) -> dict:
    """One pass over ``dataset`` in shuffled batches of ``trainer.batch_size`` (the last partial
    batch is dropped); returns mean loss, train accuracy (None for a regression dataset) and samples/s."""
    backend = get_backend(backend)
    n_batches = len(dataset) // trainer.batch_size
    if n_batches == 0:
        raise ValueError(f"{dataset.name}: {len(dataset)} rows, fewer than one batch of {trainer.batch_size}")
    bar = tqdm(total=n_batches * trainer.batch_size, unit="sample", unit_scale=True, disable=not progress,
               desc=desc or f"epoch {epoch + 1}", leave=True, dynamic_ncols=True)
    losses, correct, seen = 0.0, 0, 0
    classify = getattr(dataset, "task", "classification") == "classification"
    start = time.perf_counter()
    for x, y in dataset.batches(trainer.batch_size, shuffle=True, seed=seed, epoch=epoch):
        loss, outputs = trainer.train_minibatch(backend, x, y)
        losses += loss * len(y)
        seen += len(y)
        bar.update(len(y))
        if classify:
            correct += int(np.sum(np.argmax(backend.to_host(outputs), axis=1) == y))
            bar.set_postfix(loss=f"{losses / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        else:
            bar.set_postfix(loss=f"{losses / seen:.3g}", refresh=False)
    elapsed = time.perf_counter() - start
    bar.close()
    return {"loss": losses / seen, "accuracy": correct / seen if classify else None,
            "samples_per_s": seen / elapsed}


def evaluate(network, backend, dataset) -> float:
    """Test accuracy of ``network`` (eval mode) on ``dataset``."""
    return accuracy(network.transform(backend, dataset.x), dataset.y)


def mean_squared_error(network, backend, dataset) -> float:
    """Mean squared error of ``network`` (eval mode) on a regression ``dataset``."""
    pred = network.transform(backend, dataset.x).astype(np.float64)
    return float(np.mean((pred - dataset.y.reshape(pred.shape)) ** 2))


def previous_value_mse(dataset) -> float:
    """The baseline of next-value prediction: the last input step as the forecast."""
    last = dataset.x[:, -1].astype(np.float64).reshape(dataset.y.shape)
    return float(np.mean((last - dataset.y) ** 2))
