"""Communicators: collectives over the ranks of a data-parallel job.

Every rank holds a full replica of the network and trains on its own share of each batch; the
collectives here keep the replicas equal (broadcast before the first step, averaged gradients
after every backward). Two kinds share one interface:

- ``MPICommunicator`` (``kind == "mpi"``): mpi4py over ``MPI.COMM_WORLD``, for every backend.
  NumPy arrays go to MPI as they are; other backends' arrays are staged through host buffers
  one bucket at a time.
- ``NCCLCommunicator`` (``kind == "nccl"``): CuPy's NCCL binding for the CUDA backend; the
  unique id is broadcast over MPI, which also carries the small host-side collectives.

Outside ``mpiexec`` (or without mpi4py) :func:`communicator` returns a size-1 communicator whose
collectives return their input.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DistributedError

#: device arrays reduced over MPI go through host buffers of at most this many bytes (PyTorch
#: DDP's default bucket size): bounds the host memory a step uses
BUCKET_BYTES = 25 * 1024 * 1024
#: NumPy arrays are reduced in place in buckets of at most this many bytes: MPICH's
#: shared-memory allreduce of two ranks then keeps its halves and temporaries in cache, where
#: 25 MB buckets stream them through memory (docs/distributed.md has the A/B)
HOST_BUCKET_BYTES = 2 * 1024 * 1024


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


_MPI_OPS = ("sum", "min", "max")


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator (``MPI.COMM_WORLD`` by default)."""

    kind = "mpi"

    def __init__(self, comm=None, bucket_bytes: int | None = None):
        """``bucket_bytes``: the bucket size for every array; by default HOST_BUCKET_BYTES for
        NumPy arrays and BUCKET_BYTES for the host copies of device arrays."""
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank = local.rank
        local.Free()
        super().__init__(self.comm.rank, self.comm.size, local_rank)
        self.bucket_bytes = None if bucket_bytes is None else int(bucket_bytes)

    def _op(self, op: str):
        if op not in _MPI_OPS:
            raise ValueError(f"reduction op must be one of {', '.join(_MPI_OPS)}, got {op!r}")
        return {"sum": self.MPI.SUM, "min": self.MPI.MIN, "max": self.MPI.MAX}[op]

    def _buckets(self, n: int, itemsize: int, default: int = BUCKET_BYTES):
        step = max(1, (default if self.bucket_bytes is None else self.bucket_bytes) // itemsize)
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def allreduce(self, backend, array, average: bool = False) -> None:
        check_flat(array)
        if self.size > 1:
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
    handle) and ``pointer`` (array -> device address) default to CuPy's."""

    kind = "nccl"

    def __init__(self, comm=None, nccl=None, stream=None, pointer=None):
        super().__init__(comm)
        if nccl is None:
            from cupy.cuda import nccl
        if stream is None:
            import cupy

            def stream():
                return cupy.cuda.get_current_stream().ptr
        self.nccl = nccl
        self._stream = stream
        self._pointer = pointer or (lambda a: a.data.ptr)
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.comm.bcast(unique_id, root=0)  # NCCL's rendezvous goes over MPI
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

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
