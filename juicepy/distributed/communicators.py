"""Communicators: collectives over the ranks of a data-parallel job.

Every rank holds a full replica of the network and trains on its own share of each batch; the
collectives here keep the replicas equal (broadcast before the first step, averaged gradients
after every backward). Two kinds share one interface:

- ``MPICommunicator`` (``kind == "mpi"``): mpi4py over ``MPI.COMM_WORLD``, for every backend.
  When every rank runs on one machine, the NumPy gradient blocks of a training context live in
  an MPI-3 shared-memory window (:meth:`MPICommunicator.gradient_block`) and are reduced there
  by plain memory reads (:class:`SharedBlocks`); other NumPy arrays go to ``MPI_Allreduce`` as
  they are; other backends' arrays are staged through host buffers one bucket at a time.
- ``NCCLCommunicator`` (``kind == "nccl"``): CuPy's NCCL binding for the CUDA backend; the
  unique id is broadcast over MPI, which also carries the small host-side collectives.

Outside ``mpiexec`` (or without mpi4py) :func:`communicator` returns a size-1 communicator whose
collectives return their input.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from ..errors import DistributedError

#: device arrays reduced over MPI go through host buffers of at most this many bytes (PyTorch
#: DDP's default bucket size): bounds the host memory a step uses
BUCKET_BYTES = 25 * 1024 * 1024
#: NumPy arrays are reduced in place in buckets of at most this many bytes: MPICH's
#: shared-memory allreduce of two ranks then keeps its halves and temporaries in cache, where
#: 25 MB buckets stream them through memory (docs/distributed.md has the A/B)
HOST_BUCKET_BYTES = 2 * 1024 * 1024
#: shared-memory reductions split a block between the ranks at multiples of this many bytes
#: (whole pages: no two ranks write the same cache line or page)
SHARED_ALIGN_BYTES = 4096
#: the sharded update reduces, updates and stages its part in chunks of this many bytes, so the
#: update and the staging copy read what the step before wrote from cache (docs/distributed.md)
SHARED_CHUNK_BYTES = 1024 * 1024
#: $JUICEPY_SHARED_MEMORY / MPICommunicator(shared_memory=): "1" (default): gradient blocks in
#: shared memory, reduce-scatter, each rank updates its part, allgather of the params;
#: "allreduce": the blocks reduced in shared memory, every rank updates all of it; "0": MPI_Allreduce
SHARED_MEMORY_MODES = ("1", "true", "shard", "allreduce", "0", "false")


def check_flat(array) -> None:
    """Collectives work on flat blocks (the trainer's gradient block is one)."""
    if array.ndim != 1:
        raise ValueError(f"allreduce takes a 1-D array (a flat block), got shape {tuple(array.shape)}")


class Communicator:
    """The ranks of one job. ``rank`` / ``size`` over all processes, ``local_rank`` among the
    processes of this machine (the GPU a rank uses), ``kind`` the transport."""

    kind = "local"

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = int(rank), int(size), int(local_rank)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} rank={self.rank} size={self.size}>"

    # ------------------------------------------------------- device arrays
    def allreduce(self, backend, array, average: bool = False) -> None:
        """Sum (or average) the 1-D ``array`` over every rank, in place; every rank gets the
        same bits."""
        check_flat(array)
        if average and self.size > 1:
            backend.scale(array, 1.0 / self.size, array)

    def broadcast(self, backend, array, root: int = 0) -> None:
        """Overwrite ``array`` on every rank with its value on ``root``."""

    #: the optimizer update is split between the ranks (reduce_scatter / allgather_parts)
    shards_update = False

    def shared_block(self, backend, size: int, dtype):
        """A zeroed flat array of ``size`` elements that the collectives below reduce in place
        without copies (shared memory), or None where the backend's own ``zeros`` is the right
        place (the default). Collective: every rank asks for the same blocks in the same order."""
        return None

    def gradient_block(self, backend, size: int, dtype):
        """Where a training context keeps a flat gradient block (:meth:`shared_block`)."""
        return self.shared_block(backend, size, dtype)

    def reduce_scatter(self, backend, array, then=None):
        """Collective on a :meth:`shared_block` (or a contiguous piece of one) when
        :attr:`shards_update`: sums this rank's part of ``array`` over the ranks in place and
        returns its (start, end) in ``array``; the other parts are left as they are. ``then(a, b)``
        runs on each reduced chunk [a, b) of the part as soon as it is summed. None (and nothing
        done) for any other array: the caller allreduces it instead."""
        return None

    def allgather_parts(self, backend, array, values, staged: bool = False) -> None:
        """Collective after :meth:`reduce_scatter` of ``array``: ``values`` (as long as
        ``array``) gets every other rank's part of itself, while this rank's part goes to the
        others through ``array``'s own part (used as scratch; ``staged``: the caller copied
        its part of ``values`` there already)."""
        raise NotImplementedError

    def overlapped_reduction(self, backend, context):
        """An :class:`~juicepy.distributed.overlap.OverlappedReduction` that reduces the
        gradient blocks of training ``context`` bucket by bucket during its backward pass, or
        None where this communicator reduces them after the backward pass (:meth:`allreduce`)."""
        return None

    def part(self, array, rank: int):
        """(rank ``rank``'s copy of its part of the shared block piece ``array``, (start, end))
        or None: lets one rank read what another rank keeps, without a collective."""
        return None

    # --------------------------------------------------------- host values
    def allreduce_host(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """``values`` (a NumPy array) reduced elementwise over ranks with "sum", "min" or "max";
        returns a new array."""
        return np.array(values, copy=True)

    def bcast_object(self, obj, root: int = 0):
        """A picklable object from ``root`` on every rank."""
        return obj

    def allgather_object(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def agree(self, error: BaseException | None, what: str = "step") -> None:
        """Collective: raise on every rank when any rank passes an error.

        The rank whose error it is re-raises it; the others raise a :class:`DistributedError`
        naming that rank and its message. Costs one small allreduce when every rank is fine.
        """
        failed = self.allreduce_host(np.array([0 if error is None else 1], np.int32), "max")[0]
        if failed == 0:
            return
        messages = self.allgather_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        first = next(r for r, m in enumerate(messages) if m is not None)
        raise DistributedError(f"{what} refused on every rank because rank {first} failed: {messages[first]}")

    def sum(self, value: float) -> float:
        """A float summed over ranks."""
        return float(self.allreduce_host(np.array([value], np.float64))[0])

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (a rank that cannot go on must not leave the others waiting)."""
        raise SystemExit(code)


class SharedBlocks:
    """Flat blocks in MPI-3 shared-memory windows over the ranks of one machine, summed over
    the ranks without MPI messages.

    Each rank's block is its own segment of one window (``MPI_Win_allocate_shared``), mapped
    into every rank of the node. A sum is a reduce-scatter followed by an allgather, both plain
    memory traffic: rank r adds the other ranks' part r into its own part r (in rank order),
    then copies every other rank's reduced part into its own block. Every part is reduced by
    one rank only, so every rank ends with the same bits. Barriers with ``MPI_Win_sync`` on
    both sides order the phases (the unified memory model's recipe for load/store access).

    Windows are freed collectively: a block whose array is gone is freed at the next
    allocation once it is gone on every rank.
    """

    def __init__(self, node, MPI):
        self.node, self.MPI = node, MPI
        self._blocks: list = []  # [window, start address, end address, itemsize, every rank's array, alive]

    def allocate(self, size: int, dtype) -> np.ndarray:
        MPI, node = self.MPI, self.node
        self._free_dead()
        dtype = np.dtype(dtype)
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each rank's segment page-aligned, on its own pages
        try:
            win = MPI.Win.Allocate_shared(size * dtype.itemsize, dtype.itemsize, info, comm=node)
        finally:
            info.Free()
        win.Lock_all(MPI.MODE_NOCHECK)  # passive-target epoch for the window's lifetime: load/store + Win_sync
        arrays = []
        for r in range(node.size):
            buf, _ = win.Shared_query(r)
            arrays.append(np.frombuffer(buf, dtype, count=size))
        # the caller's array is another object on the same memory: when the caller drops it
        # (its context is gone) the window may go too
        own = np.frombuffer(win.Shared_query(node.rank)[0], dtype, count=size)
        own.fill(0)  # alignment gaps between params must read 0 for ever
        start = own.__array_interface__["data"][0]
        entry = [win, start, start + own.nbytes, dtype.itemsize, arrays, True]
        self._blocks.append(entry)
        weakref.finalize(own, _mark_dead, entry)  # noqa: B023 - the entry of this block
        self.fence()
        return own

    def _free_dead(self) -> None:
        """Free the windows whose arrays are gone on every rank (collective, same order)."""
        if not self._blocks:
            return
        MPI = self.MPI
        dead = np.array([0 if entry[5] else 1 for entry in self._blocks], np.int32)
        self.node.Allreduce(MPI.IN_PLACE, dead, MPI.MIN)
        kept = []
        for entry, gone in zip(self._blocks, dead):
            if gone:
                entry[0].Unlock_all()
                entry[0].Free()
            else:
                kept.append(entry)
        self._blocks = kept

    def find(self, array):
        """(block entry, element offset) when ``array`` is a contiguous piece of a block here."""
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or not self._blocks:
            return None
        address = array.__array_interface__["data"][0]
        for entry in self._blocks:
            _, start, end, itemsize, arrays, _ = entry
            if start <= address < end and array.dtype == arrays[0].dtype and address + array.nbytes <= end:
                return entry, (address - start) // itemsize
        return None

    def fence(self) -> None:
        """Every rank's stores to the windows before this are seen by every rank's loads after it."""
        for entry in self._blocks:
            entry[0].Sync()
        self.node.Barrier()
        for entry in self._blocks:
            entry[0].Sync()

    def parts(self, lo: int, hi: int, itemsize: int) -> list:
        """[lo, hi) split into one part per rank, at page multiples."""
        n = self.node.size
        step = max(1, SHARED_ALIGN_BYTES // itemsize)
        per = -(-(hi - lo) // (n * step)) * step
        return [(min(hi, lo + r * per), min(hi, lo + (r + 1) * per)) for r in range(n)]

    def reduce_part(self, entry, lo: int, hi: int, then=None) -> tuple[int, int]:
        """Reduce-scatter: this rank's part [a, b) of elements [lo, hi) of its block becomes
        the sum over the ranks (added in rank order, skipping its own); returns (a, b). The
        rank reads only the other ranks' part of its own index, which no one writes now.
        ``then(c, d)``, if given, runs on each reduced chunk [c, d) of the part (SHARED_CHUNK_BYTES)
        while it is still in cache."""
        arrays, rank = entry[4], self.node.rank
        own = arrays[rank]
        self.fence()  # every rank's block holds its final gradient
        a, b = self.parts(lo, hi, entry[3])[rank]
        step = max(1, SHARED_CHUNK_BYTES // entry[3]) if then is not None else max(1, b - a)
        for c in range(a, b, step):
            d = min(b, c + step)
            for r, other in enumerate(arrays):
                if r != rank:
                    np.add(own[c:d], other[c:d], out=own[c:d])
            if then is not None:
                then(c, d)
        return a, b

    def gather_parts(self, entry, lo: int, hi: int, values, staged: bool = False) -> None:
        """Allgather: ``values`` (an array of hi - lo elements, this rank's part already final
        in it) gets every other rank's part of it. Each rank stages its part in its own block
        (whose part it has consumed; ``staged``: the caller did), and the others copy it from there."""
        arrays, rank = entry[4], self.node.rank
        parts = self.parts(lo, hi, entry[3])
        a, b = parts[rank]
        if b > a and not staged:
            np.copyto(arrays[rank][a:b], values[a - lo:b - lo])
        self.fence()  # every part is staged
        for r, other in enumerate(arrays):
            a, b = parts[r]
            if r != rank and b > a:
                np.copyto(values[a - lo:b - lo], other[a:b])
        self.fence()  # no rank writes its block again (next backward) while another still reads it

    def allreduce(self, entry, lo: int, hi: int) -> None:
        """Sum elements [lo, hi) of every rank's block over the ranks, in place on every rank."""
        arrays, rank = entry[4], self.node.rank
        own = arrays[rank]
        parts = self.parts(lo, hi, entry[3])
        self.reduce_part(entry, lo, hi)
        self.fence()  # every part is reduced
        for r, other in enumerate(arrays):
            a, b = parts[r]
            if r != rank and b > a:
                np.copyto(own[a:b], other[a:b])
        self.fence()  # no rank writes its block again (next backward) while another still reads it


def _mark_dead(entry) -> None:
    entry[5] = False


_MPI_OPS = ("sum", "min", "max")


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator (``MPI.COMM_WORLD`` by default)."""

    kind = "mpi"

    def __init__(self, comm=None, bucket_bytes: int | None = None, shared_memory: bool | None = None):
        """``bucket_bytes``: the bucket size for every array; by default HOST_BUCKET_BYTES for
        NumPy arrays and BUCKET_BYTES for the host copies of device arrays.

        ``shared_memory``: NumPy gradient blocks in MPI-3 shared memory, reduced by memory reads
        (:class:`SharedBlocks`), when every rank of ``comm`` runs on this machine. Default: on,
        unless ``$JUICEPY_SHARED_MEMORY`` is 0. Ranks spread over several machines always take
        ``MPI_Allreduce``."""
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        super().__init__(self.comm.rank, self.comm.size, local.rank)
        self.bucket_bytes = None if bucket_bytes is None else int(bucket_bytes)
        if shared_memory is None:
            shared_memory = os.environ.get("JUICEPY_SHARED_MEMORY", "1")
        shared_memory = str(shared_memory).lower()
        if shared_memory not in SHARED_MEMORY_MODES:
            raise ValueError(f"shared_memory (or $JUICEPY_SHARED_MEMORY) must be one of "
                             f"{', '.join(SHARED_MEMORY_MODES)}, got {shared_memory!r}")
        #: each rank updates only its part of a shared gradient block (see DataParallel)
        self.shards_update = shared_memory in ("1", "true", "shard") and self.size > 1
        # collective decision: a rank never takes a path another rank does not
        one_node = self.comm.allreduce(int(local.size == self.comm.size), op=MPI.MIN) == 1
        if shared_memory not in ("0", "false") and one_node and self.size > 1:
            self.shared = SharedBlocks(local, MPI)
        else:
            self.shared = None
            local.Free()

    def shared_block(self, backend, size: int, dtype):
        if self.shared is None or getattr(backend, "name", None) != "numpy":
            return None
        return self.shared.allocate(int(size), dtype)

    def reduce_scatter(self, backend, array, then=None):
        found = self.shared.find(array) if self.shared is not None and self.shards_update else None
        if found is None:
            return None
        entry, lo = found
        each = None if then is None else (lambda c, d: then(c - lo, d - lo))
        a, b = self.shared.reduce_part(entry, lo, lo + array.size, each)
        return a - lo, b - lo

    def allgather_parts(self, backend, array, values, staged: bool = False) -> None:
        entry, lo = self.shared.find(array)
        self.shared.gather_parts(entry, lo, lo + array.size, values, staged)

    def part(self, array, rank: int):
        found = self.shared.find(array) if self.shared is not None else None
        if found is None:
            return None
        entry, lo = found
        a, b = self.shared.parts(lo, lo + array.size, entry[3])[rank]
        return entry[4][rank][a:b], (a - lo, b - lo)

    def _op(self, op: str):
        if op not in _MPI_OPS:
            raise ValueError(f"reduction op must be one of {', '.join(_MPI_OPS)}, got {op!r}")
        return {"sum": self.MPI.SUM, "min": self.MPI.MIN, "max": self.MPI.MAX}[op]

    def _buckets(self, n: int, itemsize: int, default: int = BUCKET_BYTES):
        step = max(1, (default if self.bucket_bytes is None else self.bucket_bytes) // itemsize)
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def allreduce(self, backend, array, average: bool = False) -> None:
        check_flat(array)
        found = self.shared.find(array) if self.shared is not None and self.size > 1 else None
        if found is not None:
            entry, lo = found
            self.shared.allreduce(entry, lo, lo + array.size)
        elif self.size > 1:
            if isinstance(array, np.ndarray):
                # one blocking allreduce per bucket, in place; all buckets in flight at once
                # (Iallreduce) interleave them through memory and take longer (docs/distributed.md)
                for lo, hi in self._buckets(array.size, array.itemsize, HOST_BUCKET_BYTES):
                    self.comm.Allreduce(self.MPI.IN_PLACE, array[lo:hi], self.MPI.SUM)
            else:  # a device array: through the host one bucket at a time (bounded host memory)
                for lo, hi in self._buckets(array.size, np.dtype(array.dtype).itemsize):
                    view = backend.flat_view(array, lo, (hi - lo,))
                    host = np.ascontiguousarray(backend.to_host(view))
                    self.comm.Allreduce(self.MPI.IN_PLACE, host, self.MPI.SUM)
                    backend.write(view, host)
        super().allreduce(backend, array, average)

    def broadcast(self, backend, array, root: int = 0) -> None:
        if self.size == 1:
            return
        if isinstance(array, np.ndarray):
            self.comm.Bcast(array, root=root)
            return
        host = np.ascontiguousarray(backend.to_host(array))
        self.comm.Bcast(host, root=root)
        if self.rank != root:
            backend.write(array, host)

    def allreduce_host(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        out = np.array(values, copy=True)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, self._op(op))
        return out

    def bcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


class NCCLCommunicator(MPICommunicator):
    """Device arrays reduced by NCCL (CuPy's ``cupy.cuda.nccl``) on the current CUDA stream;
    host values and objects over MPI. ``nccl``, ``stream`` (a callable returning the stream
    handle), ``pointer`` (array -> device address) and ``cuda`` (streams and events) default
    to CuPy's.

    A trainer's gradient blocks on the CUDA backend are reduced during the backward pass
    (:class:`~juicepy.distributed.overlap.NCCLOverlap`): in buckets of ``bucket_bytes``
    (BUCKET_BYTES), each allreduce on a reduction stream as soon as the bucket's gradients are
    written, ordered with events; ``overlap=False`` reduces each block after the backward pass."""

    kind = "nccl"

    def __init__(self, comm=None, nccl=None, stream=None, pointer=None, cuda=None, bucket_bytes: int | None = None,
                 overlap: bool = True):
        super().__init__(comm, bucket_bytes=bucket_bytes, shared_memory="0")
        self.overlap = bool(overlap)
        if nccl is None:
            from cupy.cuda import nccl
        if stream is None:
            import cupy

            def stream():
                return cupy.cuda.get_current_stream().ptr
        self.nccl = nccl
        self._cuda = cuda
        self._stream = stream
        self._pointer = pointer or (lambda a: a.data.ptr)
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.comm.bcast(unique_id, root=0)  # NCCL's rendezvous goes over MPI
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def shared_block(self, backend, size: int, dtype):
        return None  # NCCL reduces device blocks where the backend put them

    def overlapped_reduction(self, backend, context):
        if not self.overlap or self.size == 1 or getattr(backend, "name", None) != "cuda":
            return None
        cuda = self._cuda
        if cuda is None:
            import cupy

            cuda = cupy.cuda
        from .overlap import NCCLOverlap

        return NCCLOverlap(self, backend, context, self.bucket_bytes or BUCKET_BYTES, cuda)

    def _dtype(self, dtype) -> int:
        codes = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64,
                 "int32": self.nccl.NCCL_INT32, "int64": self.nccl.NCCL_INT64,
                 "float16": self.nccl.NCCL_FLOAT16}
        name = np.dtype(dtype).name
        if name not in codes:
            raise DistributedError(f"NCCL cannot reduce dtype {name}; it takes {', '.join(codes)}")
        return codes[name]

    def allreduce(self, backend, array, average: bool = False) -> None:
        check_flat(array)
        if self.size > 1:
            ptr = self._pointer(array)
            self.nccl_comm.allReduce(ptr, ptr, int(array.size), self._dtype(array.dtype),
                                     self.nccl.NCCL_SUM, self._stream())
        Communicator.allreduce(self, backend, array, average)

    def broadcast(self, backend, array, root: int = 0) -> None:
        if self.size > 1:
            self.nccl_comm.bcast(self._pointer(array), int(array.size), self._dtype(array.dtype), root,
                                 self._stream())


def _nccl_available() -> bool:
    try:
        from cupy.cuda import nccl  # noqa: F401
    except Exception:  # ImportError, or CuPy without a loadable libnccl
        return False
    return bool(getattr(nccl, "available", True))


_WORLD: dict = {}  # kind -> the process's communicator of that kind (making one is collective)


def communicator(backend=None) -> Communicator:
    """The communicator over ``MPI.COMM_WORLD``: NCCL when ``backend`` is the CUDA backend, the
    job has more than one rank and CuPy's NCCL binding loads; MPI otherwise; a size-1
    ``kind == "local"`` communicator without mpi4py. ``$JUICEPY_DISTRIBUTED=0`` forces the
    size-1 one (for a process started by mpiexec that must not join the job).

    Collective the first time for each kind (every rank must call it); later calls return the
    same object."""
    if os.environ.get("JUICEPY_DISTRIBUTED", "1") == "0":
        return Communicator()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return Communicator()
    from mpi4py import MPI

    name = getattr(backend, "name", backend)
    kind = "nccl" if name == "cuda" and MPI.COMM_WORLD.size > 1 and _nccl_available() else "mpi"
    if kind not in _WORLD:
        _WORLD[kind] = NCCLCommunicator() if kind == "nccl" else MPICommunicator()
    return _WORLD[kind]
