"""The optional C extensions of the NumPy backend (_cpu_kernels.c, _pool_kernels.c beside this file), built by setup.py where a C compiler exists."""

from __future__ import annotations

import importlib
import os

ENV_VAR = "JUICEPY_CPU_KERNELS"


def load(name: str):
    """The extension module ``juicepy.backends.numpy.<name>``, or None where it was not built or
    ``$JUICEPY_CPU_KERNELS=numpy`` asks for the pure-NumPy paths."""
    if os.environ.get(ENV_VAR, "c") == "numpy":
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
