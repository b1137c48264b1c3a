"""The optional C extensions of the NumPy backend (_cpu_kernels.c, _pool_kernels.c,
_conv_kernels.c, _norm_kernels.c, _rnn_kernels.c beside this file), built by setup.py where a C compiler exists."""

from __future__ import annotations

import importlib
import os

import numpy as np

ENV_VAR = "JUICEPY_CPU_KERNELS"


CHOICES = ("c", "numpy")

#: how many times the C kernels have released the GIL (each module counts into it once loaded,
#: _gil_hint.h): threads.py's lanes take the GIL once it moved past its value when their work
#: was posted, so they find the GIL free rather than sleep on it
GIL_RELEASES = np.zeros(1, np.int64)


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
        module = importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
    count = getattr(module, "count_gil_releases", None)  # absent from a build older than the hint
    if count is not None:
        count(GIL_RELEASES)
    use_side_lanes = getattr(module, "use_side_lanes", None)
    if use_side_lanes is not None:  # its splits go to threads.py's polling lanes (_side_lanes.h)
        lanes = getattr(load("_cpu_kernels", kernels), "side_lanes", None)
        if lanes is not None:
            use_side_lanes(lanes)
    return module
