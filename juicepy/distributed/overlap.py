"""Gradient reduction that overlaps the backward pass: each flat gradient block is cut into
buckets, and a bucket's allreduce starts as soon as the last of its gradients is final, while
the backward pass goes on with earlier layers (PyTorch DDP's and Horovod's scheme).

The training context knows, from the params each placement holds, after which op of its
backward plan each gradient is final (``Context.grad_final_op``) and calls hooks there
(``Context.add_backward_hook``); the network knows nothing of ranks. Buckets are contiguous
ranges of a block, filled from its end (the last layers' params, whose gradients the backward
pass finishes first) towards its start, closed once they hold ``bucket_bytes``. Every rank makes
the same buckets and reaches the same hooks in the same order, so the collectives match.

``NCCLOverlap``: each bucket's allreduce goes on a stream of its own, after an event recorded
on the compute stream when the bucket's last gradient is written; the compute stream waits for
the reduction stream before the optimizer update. CPU ranks reduce after the backward pass:
``MPI_Iallreduce`` per bucket progressed by ``MPI_Test`` between backward ops measured slower
(docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Bucket:
    segment: int  # index into context.segments
    lo: int  # element range [lo, hi) of the segment's gradient block
    hi: int
    view: object  # that range as a backend array (made once)
    ready: int  # the backward op after which every gradient in it is final


def plan_buckets(backend, context, bucket_bytes: int) -> list[Bucket]:
    """Buckets tiling every gradient block of ``context`` (alignment gaps included: they are 0
    on every rank), in the order their reductions start: by the op that makes them final, then
    from the end of each block."""
    buckets = []
    for si, seg in enumerate(context.segments):
        itemsize = np.dtype(seg.grad.dtype).itemsize
        hi, ready, lo = seg.size, -1, seg.size
        for off, p in sorted(zip(seg.offsets, seg.params), key=lambda pair: -pair[0]):
            ready, lo = max(ready, context.grad_final_op(p)), off
            if (hi - lo) * itemsize >= bucket_bytes:
                buckets.append(Bucket(si, lo, hi, None, ready))
                hi, ready = lo, -1
        if hi > 0:
            if ready < 0:  # only an alignment gap is left: it joins the bucket above it
                buckets[-1].lo = 0
            else:
                buckets.append(Bucket(si, 0, hi, None, ready))
    order = sorted(range(len(buckets)), key=lambda i: (buckets[i].ready, i))
    buckets = [buckets[i] for i in order]
    for b in buckets:
        b.view = backend.flat_view(context.segments[b.segment].grad, b.lo, (b.hi - b.lo,))
    return buckets


class OverlappedReduction:
    """The buckets of one training context and their hooks. A step calls :meth:`arm` before
    the backward pass (hooks fire only while armed: the context may run a backward pass for
    other reasons) and :meth:`wait` before the optimizer update; :meth:`disarm` after a failed
    step."""

    def __init__(self, backend, context, bucket_bytes: int):
        self.backend = backend
        self.buckets = plan_buckets(backend, context, bucket_bytes)
        self.armed = False
        self.started = 0  # buckets started in this step
        self.log: list | None = None  # tests: (event, bucket index) in the order they happen
        for i, b in enumerate(self.buckets):
            context.add_backward_hook(b.ready, self._starter(i))

    def _starter(self, i: int):
        def start():
            if self.armed:
                if self.started != i:
                    raise RuntimeError(f"gradient bucket {i} final before bucket {self.started}")
                self.start(i)
                self.started += 1
                if self.log is not None:
                    self.log.append(("start", i))
        return start

    def arm(self) -> None:
        self.armed, self.started = True, 0

    def disarm(self) -> None:
        self.armed = False

    def wait(self) -> None:
        """After the backward pass: every bucket was started; the update may read the sums."""
        if not self.armed or self.started != len(self.buckets):
            raise RuntimeError(f"gradient reduction: {self.started} of {len(self.buckets)} buckets started "
                               f"(armed: {self.armed}); the backward pass did not run its hooks")
        self.finish()
        self.armed = False
        if self.log is not None:
            self.log.append(("wait", len(self.buckets)))

    # the transport
    def start(self, i: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class NCCLOverlap(OverlappedReduction):
    """NCCL allreduces on a reduction stream, ordered after the compute stream with events.
    ``cuda``: CuPy's ``cupy.cuda`` (Stream, Event, get_current_stream)."""

    def __init__(self, communicator, backend, context, bucket_bytes: int, cuda):
        super().__init__(backend, context, bucket_bytes)
        self.comm, self.cuda = communicator, cuda
        self.stream = cuda.Stream(non_blocking=True)
        self.ready_events = [cuda.Event(disable_timing=True) for _ in self.buckets]
        self.done_event = cuda.Event(disable_timing=True)
        self.calls = [(communicator._pointer(b.view), int(b.hi - b.lo), communicator._dtype(b.view.dtype))
                      for b in self.buckets]

    def start(self, i: int) -> None:
        event = self.ready_events[i]
        event.record(self.cuda.get_current_stream())  # after the ops that wrote the bucket
        self.stream.wait_event(event)
        ptr, count, dtype = self.calls[i]
        nccl = self.comm.nccl
        self.comm.nccl_comm.allReduce(ptr, ptr, count, dtype, nccl.NCCL_SUM, self.stream.ptr)

    def finish(self) -> None:
        # the update (and the next step's backward, which overwrites the block) run after the sums
        self.done_event.record(self.stream)
        self.cuda.get_current_stream().wait_event(self.done_event)
