"""A stand-in for ``cupy.cuda.nccl`` for testing the NCCL communicator where no GPU exists.

It answers the calls juicepy makes (``get_unique_id``, ``NcclCommunicator(ndev, id, rank)``,
``allReduce``, ``bcast``) on host memory addressed by raw pointers, carrying the data over
MPI. It checks what a real NCCL would need: every rank built its communicator from the same
unique id with the job's size and its own rank, and counts and datatypes match the buffers.
Every call is logged in ``CALLS``.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
from mpi4py import MPI

# cupy.cuda.nccl's constants (NCCL's ncclDataType_t / ncclRedOp_t values)
NCCL_INT32, NCCL_INT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 2, 4, 6, 7, 8
NCCL_SUM = 0
_DTYPES = {NCCL_INT32: np.int32, NCCL_INT64: np.int64, NCCL_FLOAT16: np.float16,
           NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}

CALLS: list = []


def get_unique_id() -> tuple:
    return tuple(os.urandom(128))  # CuPy returns the 128-byte ncclUniqueId as a tuple


def _host(ptr: int, count: int, datatype: int) -> np.ndarray:
    dtype = np.dtype(_DTYPES[datatype])
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count)


class NcclCommunicator:
    def __init__(self, ndev: int, comm_id: tuple, rank: int):
        world = MPI.COMM_WORLD
        if ndev != world.size or rank != world.rank:
            raise RuntimeError(f"fake NCCL: communicator for rank {rank} of {ndev} in an MPI job where this "
                               f"is rank {world.rank} of {world.size}")
        ids = world.allgather(comm_id)
        if any(i != ids[0] for i in ids) or len(comm_id) != 128:
            raise RuntimeError("fake NCCL: ranks did not get the same unique id (it must be broadcast)")
        self.comm = world
        CALLS.append(("init", ndev, rank))

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int):
        if op != NCCL_SUM:
            raise RuntimeError(f"fake NCCL: only NCCL_SUM is emulated, got op {op}")
        send, recv = _host(sendbuf, count, datatype), _host(recvbuf, count, datatype)
        self.comm.Allreduce(MPI.IN_PLACE if sendbuf == recvbuf else send.copy(), recv, MPI.SUM)
        CALLS.append(("allReduce", count, datatype, stream))

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int):
        self.comm.Bcast(_host(buff, count, datatype), root=root)
        CALLS.append(("bcast", count, datatype, root, stream))
