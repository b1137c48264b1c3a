"""The optional C extensions of the NumPy backend (_cpu_kernels.c, _pool_kernels.c,
_conv_kernels.c, _norm_kernels.c, _rnn_kernels.c beside this file), built by setup.py where a C compiler exists."""

from __future__ import annotations

import importlib
import os

ENV_VAR = "JUICEPY_CPU_KERNELS"


CHOICES = ("c", "numpy")


def choice(kernels: str | None) -> str:
    """``kernels`` checked, or ``$JUICEPY_CPU_KERNELS`` (default "c") where it is None."""
    kernels = os.environ.get(ENV_VAR, "c") if kernels is None else kernels
    if kernels not in CHOICES:
        raise ValueError(f"numpy backend: kernels must be one of {CHOICES}, got {kernels!r}")
    return kernels


def load(name: str, kernels: str | None = None):
    """The extension module ``juicepy.backends.numpy.<name>``, or None where it was not built or
    ``kernels`` (default ``$JUICEPY_CPU_KERNELS``) is "numpy": the pure-NumPy paths."""
    if choice(kernels) == "numpy":
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
