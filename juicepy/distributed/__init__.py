"""Data-parallel training across processes (MPI, mpi4py) and GPUs (NCCL through CuPy).

``communicator()`` gives the job's communicator; pass it to ``Trainer(..., communicator=comm)``
and shard the data with ``dataset.batches(..., rank=comm.rank, size=comm.size)``. See
docs/distributed.md.
"""

from .communicators import (BUCKET_BYTES, HOST_BUCKET_BYTES, Communicator, MPICommunicator, NCCLCommunicator,
                            communicator)
from .overlap import Bucket, NCCLOverlap, OverlappedReduction, plan_buckets
from .sharding import shard_order, shard_rows

__all__ = ["BUCKET_BYTES", "HOST_BUCKET_BYTES", "Communicator", "MPICommunicator", "NCCLCommunicator",
           "communicator", "shard_order", "shard_rows", "Bucket", "NCCLOverlap",
           "OverlappedReduction", "plan_buckets"]
