"""Backend registry: ``juicepy.backend(name)`` returns one shared instance per name."""

from __future__ import annotations

import os
import threading
from typing import Callable

from .base import Backend, BackendUnavailable, CaptureError, Workspace

_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_LOCK = threading.Lock()
ENV_VAR = "JUICEPY_BACKEND"


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``backend(name)`` build its instance with ``factory`` (called once, lazily)."""
    _FACTORIES[name] = factory


def registered_backends() -> list[str]:
    """Every backend name juicepy knows, whether or not it can run on this machine."""
    return sorted(_FACTORIES)


def available_backends() -> list[str]:
    """The backends that start on this machine (imports and probes each one once)."""
    names = []
    for name in registered_backends():
        try:
            backend(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name``; default: ``$JUICEPY_BACKEND``, else ``"numpy"``."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get(ENV_VAR) or "numpy"
    elif not isinstance(name, str):
        from ..errors import ArgumentError
        from ..arguments import describe

        raise ArgumentError(f"backend must be a backend name ({', '.join(registered_backends())}) or a "
                            f"Backend, got {describe(name)}; the backend is the first "
                            f"argument: transform(backend, inputs), train_minibatch(backend, x, y)")
    key = name.lower()
    with _LOCK:
        if key in _INSTANCES:
            return _INSTANCES[key]
        factory = _FACTORIES.get(key)
        if factory is None:
            raise ValueError(
                f"unknown backend {name!r}; registered backends: {', '.join(registered_backends())}"
            )
        instance = factory()
        _INSTANCES[key] = instance
        return instance


def _numpy() -> Backend:
    from .numpy import NumpyBackend

    return NumpyBackend()


def _opencl() -> Backend:
    # the package import itself needs nothing beyond NumPy; pyopencl is imported (and its
    # absence reported as BackendUnavailable) when the backend is made
    from .opencl import OpenCLBackend

    return OpenCLBackend()


def _cuda() -> Backend:
    # the package imports CuPy only inside CudaBackend(), which raises BackendUnavailable
    from .cuda import CudaBackend

    return CudaBackend()


register_backend("numpy", _numpy)
register_backend("opencl", _opencl)
register_backend("cuda", _cuda)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "CaptureError",
    "Workspace",
    "available_backends",
    "backend",
    "register_backend",
    "registered_backends",
]
