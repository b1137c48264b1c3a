"""Micro-batching: concurrent small requests run as one transform.

A single worker thread takes the oldest waiting request and every request queued behind it,
up to ``max_rows`` rows in all, concatenates their inputs, runs one transform and hands each
request its rows of the outputs. When fewer than ``max_rows`` rows are waiting, the worker
waits for more until the oldest request has waited ``max_wait_s`` (the bound on the latency
micro-batching adds); a request that already waited that long while the worker was busy
leaves with whatever is queued at once. Under load, batches therefore form from the requests
that arrive while the previous batch runs, without any added wait.

Requests of ``max_rows`` rows or more gain nothing from company and run on their own thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class _Pending:
    __slots__ = ("inputs", "rows", "arrived", "done", "outputs", "error")

    def __init__(self, inputs: list, rows: int):
        self.inputs, self.rows, self.arrived = inputs, rows, time.monotonic()
        self.done = threading.Event()
        self.outputs = self.error = None


class MicroBatcher:
    """Runs ``run(inputs) -> outputs`` (lists of arrays, one per network input / output) for
    requests from many threads, batching the small ones."""

    def __init__(self, run, max_rows: int, max_wait_s: float):
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2 to batch anything, got {max_rows}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._run, self.max_rows, self.max_wait_s = run, int(max_rows), float(max_wait_s)
        self._queue: deque[_Pending] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batches = 0  # transforms run by the worker
        self.batched_requests = 0  # requests those transforms answered
        self._worker = threading.Thread(target=self._loop, name="juicepy-microbatcher", daemon=True)
        self._worker.start()

    def submit(self, inputs: list) -> list:
        """Outputs for ``inputs`` (validated arrays with equal row counts); blocks until they
        are ready and raises what the transform raised."""
        rows = int(inputs[0].shape[0])
        if rows >= self.max_rows:
            return self._run(inputs)
        item = _Pending(inputs, rows)
        with self._wake:
            if self._closed:
                raise RuntimeError("the micro-batcher is closed (the server is stopping)")
            self._queue.append(item)
            self._wake.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.outputs

    @property
    def pending(self) -> int:
        """Requests waiting for the worker."""
        with self._wake:
            return len(self._queue)

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._answer(batch)

    def _next_batch(self) -> list[_Pending] | None:
        with self._wake:
            while not self._queue:
                if self._closed:
                    return None
                self._wake.wait()
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            deadline = batch[0].arrived + self.max_wait_s
            while rows < self.max_rows:
                if self._queue:
                    if rows + self._queue[0].rows > self.max_rows:
                        break
                    item = self._queue.popleft()
                    batch.append(item)
                    rows += item.rows
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._wake.wait(remaining)
            return batch

    def _answer(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                outputs = [self._run(batch[0].inputs)]
            else:
                inputs = [np.concatenate(parts) for parts in zip(*(item.inputs for item in batch))]
                joined = self._run(inputs)
                offsets = np.cumsum([0] + [item.rows for item in batch])
                outputs = [[out[a:b] for out in joined] for a, b in zip(offsets[:-1], offsets[1:])]
            for item, out in zip(batch, outputs):
                item.outputs = out
        except Exception as err:  # every request of the batch gets the error; the worker lives on
            for item in batch:
                item.error = err
        self.batches += 1
        self.batched_requests += len(batch)
        for item in batch:
            item.done.set()
