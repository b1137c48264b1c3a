"""The CUDA backend (CuPy): backend.py (the op class), spatial.py (convolution, pooling, batch
norm), device.py (CuPy, device choice, cuBLAS plumbing), capture.py (CUDA graphs), kernels.py
and kernels/*.cu (the CUDA C sources). Importing this package never imports CuPy;
``CudaBackend()`` does, and raises BackendUnavailable with the install hint where CuPy or a GPU
is missing."""

from .backend import CudaBackend
from .device import DEVICE_ENV_VAR, INSTALL_HINT

__all__ = ["CudaBackend", "DEVICE_ENV_VAR", "INSTALL_HINT"]
