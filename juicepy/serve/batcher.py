"""Micro-batching: concurrent small requests run as one transform.

A single worker thread takes the oldest waiting request and every request queued behind it,
up to ``max_rows`` rows in all, concatenates their inputs, runs one transform and hands each
request its rows of the outputs. Under load, batches form from the requests that arrive while
the previous batch runs, without any added wait.

The worker waits for more only while other requests are *arriving* (announced by
:meth:`MicroBatcher.arriving`: their bodies are being read and checked), and only until the
oldest request of the batch has waited ``max_wait_s``: the bound on the latency
micro-batching adds. Waiting when nothing is on its way would only add latency: with a few
clients that each wait for their answer before asking again, every client may already be in
the batch.

Requests of ``max_rows`` rows or more gain nothing from company and run on their own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import numpy as np

from .. import arguments


class _Pending:
    __slots__ = ("inputs", "rows", "arrived", "done", "outputs", "error")

    def __init__(self, inputs: list, rows: int):
        self.inputs, self.rows, self.arrived = inputs, rows, time.monotonic()
        self.done = threading.Event()
        self.outputs = self.error = None

    def result(self) -> list:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.outputs


class Arrival:
    """A request on its way to the batcher: :meth:`submit` its inputs once they are checked,
    or leave the ``with`` block without (a refused request)."""

    def __init__(self, batcher: "MicroBatcher"):
        self._batcher, self._counted = batcher, True

    def submit(self, inputs: list) -> list:
        """Outputs for ``inputs``; blocks until they are ready."""
        return self._batcher._submit(inputs, self)

    def _leave(self) -> None:  # called with the batcher's lock held
        if self._counted:
            self._counted = False
            self._batcher._arriving -= 1


class MicroBatcher:
    """Runs ``run(inputs) -> outputs`` (lists of arrays, one per network input / output) for
    requests from many threads, batching the small ones."""

    def __init__(self, run, max_rows: int, max_wait_s: float):
        self.max_rows = arguments.integer("MicroBatcher", "max_rows", max_rows, 2)  # 1 would batch nothing
        self.max_wait_s = arguments.number("MicroBatcher", "max_wait_s", max_wait_s, low=0)
        self._run = run
        self._queue: deque[_Pending] = deque()
        self._arriving = 0  # announced requests not yet queued
        self._wake = threading.Condition()
        self._closed = False
        self.batches = 0  # transforms run by the worker
        self.batched_requests = 0  # requests those transforms answered
        self._worker = threading.Thread(target=self._loop, name="juicepy-microbatcher", daemon=True)
        self._worker.start()

    @contextlib.contextmanager
    def arriving(self):
        """Announce a request while its body is read and checked; yields an :class:`Arrival`."""
        arrival = Arrival(self)
        with self._wake:
            self._arriving += 1
        try:
            yield arrival
        finally:
            with self._wake:
                arrival._leave()
                self._wake.notify()

    def submit(self, inputs: list) -> list:
        """Outputs for ``inputs`` (validated arrays with equal row counts); blocks until they
        are ready and raises what the transform raised."""
        with self.arriving() as arrival:
            return arrival.submit(inputs)

    def _submit(self, inputs: list, arrival: Arrival) -> list:
        rows = int(inputs[0].shape[0])
        item = _Pending(inputs, rows)
        with self._wake:
            arrival._leave()  # queued from now on (or run alone), no longer arriving
            if self._closed:
                raise RuntimeError("the micro-batcher is closed (the server is stopping)")
            if rows < self.max_rows:
                self._queue.append(item)
            self._wake.notify()
        if rows >= self.max_rows:
            return self._run(inputs)
        return item.result()

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
                if remaining <= 0 or self._closed or self._arriving == 0:
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
