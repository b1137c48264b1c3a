"""The CUDA backend (CuPy). Importing this package never imports CuPy; ``CudaBackend()`` does,
and raises BackendUnavailable with the install hint where CuPy or a GPU is missing."""

from .backend import DEVICE_ENV_VAR, INSTALL_HINT, CudaBackend

__all__ = ["CudaBackend", "DEVICE_ENV_VAR", "INSTALL_HINT"]
