"""The NumPy backend: backend.py (memory, GEMM, elementwise, row-wise ops, optimizers),
spatial.py (convolution, pooling, batch norm), threads.py (thread lanes), kernels.py (the
optional C extensions beside it)."""

from .backend import NumpyBackend

__all__ = ["NumpyBackend"]
