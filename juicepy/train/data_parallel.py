"""What a Trainer does differently when it is one replica of a data-parallel job.

The trainer calls these hooks at fixed points of a step; with no communicator (or a size-1 one)
each hook is a no-op, so single-process training runs exactly as before:

- :meth:`DataParallel.checked`: the batch checks, agreed over ranks before anything runs
  (a bad batch on one rank fails every rank, before any collective a failing rank would skip);
- :meth:`DataParallel.synchronize`: rank 0's weights, buffers, optimizer state and counters to
  every rank before the first step (and after a state is loaded);
- :meth:`DataParallel.mean`: the step's loss averaged over ranks (so a non-finite loss on one
  rank refuses the step on all of them);
- :attr:`DataParallel.grad_scale`: the factor 1 / N the loss gradient carries, so that the
  backward pass yields each rank's share of the mean gradient;
- :meth:`DataParallel.reduce_gradients`: between backward and the optimizer update, every flat
  gradient block summed over ranks (which makes it the mean over ranks, with no pass over the
  block to divide it); every rank then applies the same fused update.
"""

from __future__ import annotations


class DataParallel:
    def __init__(self, communicator=None):
        self.communicator = communicator

    @property
    def active(self) -> bool:
        return self.communicator is not None and self.communicator.size > 1

    @property
    def shard(self) -> dict:
        """``rank`` / ``size`` keyword arguments for ``Dataset.batches`` ({} alone)."""
        comm = self.communicator
        return {"rank": comm.rank, "size": comm.size} if self.active else {}

    def checked(self, check, what: str = "step"):
        """``check()``'s result, or its error raised on every rank (the others name the rank)."""
        if not self.active:
            return check()
        try:
            result = check()
        except Exception as err:
            self.communicator.agree(err, what)
            raise  # agree raised already; keeps linters sure nothing falls through
        self.communicator.agree(None, what)
        return result

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        return self.communicator.sum(value) / self.communicator.size

    @property
    def grad_scale(self) -> float:
        """What the loss gradient is multiplied by: 1 / N in a job of N ranks, else 1. Backward
        is linear in the loss gradient, so the parameter gradients come out divided by N (exactly
        so for N a power of two) and their sum over ranks is the mean the optimizer takes; the
        division costs nothing instead of a pass over every gradient block."""
        return 1.0 / self.communicator.size if self.active else 1.0

    def reduce_gradients(self, backend, segments) -> None:
        """Sum every flat gradient block over ranks (already scaled by :attr:`grad_scale`)."""
        if self.active:
            for seg in segments:
                self.communicator.allreduce(backend, seg.grad)

    def synchronize(self, backend, network, context, optimizer_state) -> None:
        """Every rank takes rank 0's params (trainable blocks and buffers such as running
        statistics), optimizer buffers and step counters."""
        if not self.active:
            return
        comm = self.communicator
        for group in network.param_groups(backend):
            comm.broadcast(backend, group.data)
            for p in group.params:
                p.mark_written(backend)
        for p in network.params.values():
            if not p.trainable:
                comm.broadcast(backend, p.on(backend))
                p.mark_written(backend)
        for buffers in optimizer_state.buffers:
            for flat in buffers.values():
                comm.broadcast(backend, flat)
        optimizer_state.step, context.step = comm.bcast_object((optimizer_state.step, context.step))
