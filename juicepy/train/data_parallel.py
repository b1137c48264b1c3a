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
  block to divide it); every rank then applies the same fused update;
- :meth:`DataParallel.overlapped`: where the communicator reduces gradients during the
  backward pass (NCCL), the buckets and hooks it installs in the training context once;
  :meth:`DataParallel.update` then waits for those reductions instead of starting its own;
- :meth:`DataParallel.update`: that, or, where the communicator keeps the blocks in memory the
  ranks share (``Communicator.shards_update``), a sharded update: each block is
  reduce-scattered, each rank runs the fused update on its part only (params and optimizer
  state) and the updated params are allgathered. Each rank's optimizer state is then current
  in its own part only; :meth:`DataParallel.host_buffer` reads every part from its owner.
"""

from __future__ import annotations

from .optimizer import OptimizerState


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

    def zeros(self, backend):
        """The allocator for optimizer buffers: shared blocks where the update is sharded (so
        that rank 0 can read the parts other ranks keep current), else None (backend.zeros)."""
        comm = self.communicator
        if not self.active or not comm.shards_update:
            return None

        def zeros(shape, dtype):
            (size,) = shape
            block = comm.shared_block(backend, size, dtype)
            return block if block is not None else backend.zeros(shape, dtype)
        return zeros

    def overlapped(self, backend, context):
        """The communicator's :class:`~juicepy.distributed.OverlappedReduction` for ``context``
        (its hooks installed there), or None."""
        if not self.active:
            return None
        return self.communicator.overlapped_reduction(backend, context)

    def update(self, backend, optimizer, state: OptimizerState, segments, reduction=None) -> None:
        """Average the gradients over ranks and run the optimizer update (see the module doc);
        ``reduction``: the armed :meth:`overlapped` reduction that the backward pass started."""
        if reduction is not None:
            reduction.wait()
            optimizer.step(backend, state, segments)
            return
        if not self.active or not self.communicator.shards_update:
            self.reduce_gradients(backend, segments)
            optimizer.step(backend, state, segments)
            return
        comm = self.communicator
        start = state.step

        def update_chunk(seg, buffers):
            def run(a, b):
                # each chunk is updated as soon as it is reduced, then staged for the allgather,
                # while it is in cache; every chunk takes the step's number
                mine = OptimizerState(step=start, ws=state.ws)
                mine.buffers.append({name: backend.flat_view(flat, a, (b - a,)) for name, flat in buffers.items()})
                data, grad = backend.flat_view(seg.data, a, (b - a,)), backend.flat_view(seg.grad, a, (b - a,))
                optimizer.step(backend, mine, [type(seg)(seg.params, data, grad, seg.lr_mult, b - a, [])])
                backend.copy(data, grad)
            return run

        sharded, rest = [], []  # segments not in shared memory are allreduced and updated whole
        for seg, buffers in zip(segments, state.buffers):
            if comm.reduce_scatter(backend, seg.grad, update_chunk(seg, buffers)) is None:
                comm.allreduce(backend, seg.grad)
                rest.append((seg, buffers))
            else:
                sharded.append(seg)
        whole = OptimizerState(step=start, ws=state.ws, buffers=[buffers for _, buffers in rest])
        optimizer.step(backend, whole, [seg for seg, _ in rest])  # also counts the step
        state.step = whole.step
        for seg in sharded:
            comm.allgather_parts(backend, seg.grad, seg.data, staged=True)

    def host_buffer(self, backend, flat):
        """A host copy of optimizer buffer ``flat`` with each part as its owner rank keeps it
        (sharded update), or None where this rank's own copy is what to read. Needs no
        collective: the other ranks' parts are read from shared memory; they change only
        inside a step, which no rank finishes before every rank has entered it. Only valid
        once the replicas were synchronised (before, each rank's whole copy is its own)."""
        comm = self.communicator
        if not self.active or not comm.shards_update or comm.part(flat, 0) is None:
            return None
        host = backend.to_host(flat)
        for r in range(comm.size):
            values, (a, b) = comm.part(flat, r)
            host[a:b] = values
        return host

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
