"""Epoch loops over a Dataset: fit with a progress bar, evaluate accuracy.

With a data-parallel trainer (``Trainer(communicator=...)``) every rank takes its shard of each
epoch, the figures returned are over all ranks, and only rank 0 draws the progress bar.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..backends import backend as get_backend
from ..backends.base import Workspace
from ..distributed.sharding import shard_rows
from .data_parallel import DataParallel
from .metrics import accuracy


def fit_epoch(trainer, backend, dataset, epoch: int = 0, seed: int = 0, progress: bool = True,
              desc: str | None = None) -> dict:
    """One pass over ``dataset`` in shuffled batches of ``trainer.batch_size`` (the last partial
    batch is dropped); returns mean loss, train accuracy (None for a regression dataset) and
    samples/s (all ranks together)."""
    backend = get_backend(backend)
    replicas = DataParallel(trainer.communicator)
    shard = replicas.shard
    size = shard.get("size", 1)
    n_batches = -(-len(dataset) // size) // trainer.batch_size
    if n_batches == 0:
        raise ValueError(f"{dataset.name}: {len(dataset)} rows, fewer than one batch of {trainer.batch_size}"
                         + (f" on each of {size} ranks" if size > 1 else ""))
    bar = tqdm(total=n_batches * trainer.batch_size * size, unit="sample", unit_scale=True,
               disable=not progress or shard.get("rank", 0) != 0,
               desc=desc or f"epoch {epoch + 1}", leave=True, dynamic_ncols=True)
    losses, correct, seen = 0.0, 0, 0
    classify = getattr(dataset, "task", "classification") == "classification"
    start = time.perf_counter()
    for x, y in dataset.batches(trainer.batch_size, shuffle=True, seed=seed, epoch=epoch, **shard):
        loss, outputs = trainer.train_minibatch(backend, x, y)  # loss: the mean over ranks
        losses += loss * len(y)
        seen += len(y)
        bar.update(len(y) * size)
        if classify:
            correct += int(np.sum(np.argmax(backend.to_host(outputs), axis=1) == y))
            bar.set_postfix(loss=f"{losses / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        else:
            bar.set_postfix(loss=f"{losses / seen:.3g}", refresh=False)
    elapsed = time.perf_counter() - start
    bar.close()
    if replicas.active:
        correct, seen_all = (int(v) for v in trainer.communicator.allreduce_host(np.array([correct, seen])))
        elapsed = float(trainer.communicator.allreduce_host(np.array([elapsed]), "max")[0])
        return {"loss": losses / seen, "accuracy": correct / seen_all if classify else None,
                "samples_per_s": seen_all / elapsed}
    return {"loss": losses / seen, "accuracy": correct / seen if classify else None, "samples_per_s": seen / elapsed}


def evaluate(network, backend, dataset, communicator=None) -> float:
    """Test accuracy of ``network`` (eval mode) on ``dataset``; with a ``communicator`` each
    rank scores its share of the rows and the counts are summed over ranks."""
    if communicator is None or communicator.size == 1:
        return accuracy(network.transform(backend, dataset.x), dataset.y)
    rows = shard_rows(len(dataset), communicator.rank, communicator.size)
    x, y = dataset.x[rows], dataset.y[rows]
    correct = int(np.sum(np.argmax(network.transform(backend, x), axis=1) == y)) if len(y) else 0
    correct, total = communicator.allreduce_host(np.array([correct, len(y)]))
    return float(correct / total) if total else float("nan")


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
    classify = getattr(dataset, "task", "classification") == "classification"
    return float(losses.sum(dtype=np.float64)) / count, accuracy(outputs, dataset.y) if classify else None


def mean_squared_error(network, backend, dataset) -> float:
    """Mean squared error of ``network`` (eval mode) on a regression ``dataset``."""
    pred = network.transform(backend, dataset.x).astype(np.float64)
    return float(np.mean((pred - dataset.y.reshape(pred.shape)) ** 2))


def previous_value_mse(dataset) -> float:
    """The baseline of next-value prediction: the last input step as the forecast."""
    last = dataset.x[:, -1].astype(np.float64).reshape(dataset.y.shape)
    return float(np.mean((last - dataset.y) ** 2))
