"""The shared pieces of juicepy/backends/base.py that are not ops: the Workspace and scratch."""

import numpy as np

from juicepy.backends import Workspace
from juicepy.backends.base import scratch
from juicepy.backends.numpy import NumpyBackend


def test_workspace_makes_each_buffer_once():
    b, ws = NumpyBackend(), Workspace()
    first = ws.get(b, "t", (4, 4), np.float32)
    assert ws.get(b, "t", (4, 4), np.float32) is first
    assert ws.get(b, "t", (4, 4), np.float64) is not first  # another dtype, another buffer
    assert b.allocations == 2


def test_scratch_without_a_workspace_is_a_fresh_temporary_and_init_runs_once():
    b, ws = NumpyBackend(), Workspace()
    calls = []
    fill = lambda buf: calls.append(buf.fill(3))  # noqa: E731
    first = scratch(ws, b, "c", (3,), np.int32, init=fill)
    first[0] = 9
    assert scratch(ws, b, "c", (3,), np.int32, init=fill) is first and first[0] == 9 and len(calls) == 1
    assert scratch(None, b, "c", (3,), np.int32) is not scratch(None, b, "c", (3,), np.int32)
