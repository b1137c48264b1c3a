"""The OpenCL backend (PyOpenCL): kernels in the .cl files of this package.

``juicepy.backend("opencl")`` picks ``$JUICEPY_OPENCL_DEVICE`` ("platform:device"), else the
first GPU, else the first device; PoCL (``pip install juicepy[opencl]``) gives a CPU device.
"""

from .backend import OpenCLBackend
from .device import COMPILER_HINT, DEVICE_ENV, INSTALL_HINT, list_devices, pick_device

__all__ = ["OpenCLBackend", "COMPILER_HINT", "DEVICE_ENV", "INSTALL_HINT", "list_devices", "pick_device"]
