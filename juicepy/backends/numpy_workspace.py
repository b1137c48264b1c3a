"""Scratch arrays for NumPy ops: from the caller's Workspace, or fresh outside a context."""

from __future__ import annotations

import numpy as np

from .base import Workspace


def scratch(ws: Workspace | None, backend, tag, shape, dtype):
    if ws is None:  # callers outside a context (tests, tools) get a fresh temporary
        return np.empty(shape, dtype)
    return ws.get(backend, tag, shape, dtype)
