"""Scratch arrays for NumPy ops: from the caller's Workspace, or fresh outside a context."""

from __future__ import annotations

import numpy as np

from .base import Workspace


def scratch(ws: Workspace | None, backend, tag, shape, dtype, init=None):
    """The workspace buffer for (tag, shape, dtype); ``init(buf)`` fills a new one once."""
    if ws is None:  # callers outside a context (tests, tools) get a fresh temporary
        buf = np.empty(shape, dtype)
        if init is not None:
            init(buf)
        return buf
    return ws.get(backend, tag, shape, dtype, init)
