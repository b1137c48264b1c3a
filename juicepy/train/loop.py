"""Epoch loops over a Dataset: fit with a progress bar, evaluate accuracy."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..backends import backend as get_backend
from ..backends.base import Workspace
from .metrics import accuracy


def fit_epoch(trainer, backend, dataset, epoch: int = 0, seed: int = 0, progress: bool = True,
              desc: str | None = None) -> dict:
    """One pass over ``dataset`` in shuffled batches of ``trainer.batch_size`` (the last partial
    batch is dropped); returns mean loss, train accuracy and samples/s."""
    backend = get_backend(backend)
    n_batches = len(dataset) // trainer.batch_size
    if n_batches == 0:
        raise ValueError(f"{dataset.name}: {len(dataset)} rows, fewer than one batch of {trainer.batch_size}")
    bar = tqdm(total=n_batches * trainer.batch_size, unit="sample", unit_scale=True, disable=not progress,
               desc=desc or f"epoch {epoch + 1}", leave=True, dynamic_ncols=True)
    losses, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in dataset.batches(trainer.batch_size, shuffle=True, seed=seed, epoch=epoch):
        loss, outputs = trainer.train_minibatch(backend, x, y)
        losses += loss * len(y)
        correct += int(np.sum(np.argmax(backend.to_host(outputs), axis=1) == y))
        seen += len(y)
        bar.update(len(y))
        bar.set_postfix(loss=f"{losses / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    elapsed = time.perf_counter() - start
    bar.close()
    return {"loss": losses / seen, "accuracy": correct / seen, "samples_per_s": seen / elapsed}


def evaluate(network, backend, dataset) -> float:
    """Test accuracy of ``network`` (eval mode) on ``dataset``."""
    return accuracy(network.transform(backend, dataset.x), dataset.y)


def evaluate_loss(network, loss, backend, dataset) -> tuple[float, float]:
    """(mean loss, accuracy) of ``network`` (eval mode) on every row of ``dataset``; the loss
    runs on the NumPy backend over the host outputs, so no batch size is involved."""
    outputs = network.transform(backend, dataset.x)
    host = get_backend("numpy")
    targets = loss.check_targets(np.asarray(dataset.y), network.output_shape, len(dataset), network.dtype)
    losses = np.empty(len(dataset), network.dtype)
    grads = np.empty_like(outputs)
    count = loss.count(len(dataset), network.output_shape)
    loss.compute(host, outputs, targets, losses, grads, 1.0 / count, Workspace())
    return float(losses.sum(dtype=np.float64)) / count, accuracy(outputs, dataset.y)
