"""CUDA graph capture: record a whole step's launches once, replay them with a shift applied to
the step-like kernel arguments (dropout counter, optimizer step)."""

from __future__ import annotations

import threading

import numpy as np

from ..base import CaptureError
from .device import CUBLAS_WORKSPACE_BYTES


def refuse_allocation(size):
    raise CaptureError(f"an op allocated {size} bytes of device memory while a CUDA graph was "
                       f"being captured (buffers must come from the context or its workspace)")


class Captured:
    """A captured CUDA graph; ``replay(shift)`` runs it with step-like arguments advanced by shift."""

    def __init__(self, graph, shift_buffer):
        self._graph = graph
        self._shift = shift_buffer
        self._shift_value = 0

    def replay(self, shift: int = 0) -> None:
        if shift != self._shift_value:
            self._shift.set(np.array([shift], np.int64))
            self._shift_value = shift
        self._graph.launch()


class GraphCapture:
    """The capture state of one backend: the shift buffer of the capture running on this thread
    (None outside a capture) and the fixed cuBLAS workspace captured GEMMs use."""

    def __init__(self, cupy, backend) -> None:
        self._cp = cupy
        self._backend = backend
        self._local = threading.local()
        self.cublas_workspace = None  # the captured GEMMs' workspace, made at the first capture

    @property
    def shift(self):
        """The shift buffer of the capture in progress on this thread, or None."""
        return getattr(self._local, "shift", None)

    def capture(self, fn) -> Captured:
        """Record the device work of ``fn()`` as a CUDA graph and return it unlaunched.

        ``fn`` must not synchronize with the host nor allocate device memory (an allocation
        raises CaptureError). Dropout counters and optimizer steps passed while capturing are
        read at replay time as ``value + shift`` (``replay(shift)``), so one capture serves
        every later step. Raises CaptureError when the work cannot be captured; the device
        state is then unchanged (captured work does not run).
        """
        cp, backend = self._cp, self._backend
        shift = backend.zeros((1,), np.int64)
        if self.cublas_workspace is None:
            self.cublas_workspace = backend.empty((CUBLAS_WORKSPACE_BYTES,), np.uint8)
        stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()
        self._local.shift = shift
        graph = None
        try:
            with stream, cp.cuda.using_allocator(refuse_allocation):
                stream.begin_capture()
                try:
                    fn()
                finally:
                    try:
                        graph = stream.end_capture()
                    except Exception:
                        graph = None
        except CaptureError:
            raise
        except Exception as exc:
            raise CaptureError(f"cuda backend: the step could not be captured as a CUDA graph ({exc})") from exc
        finally:
            self._local.shift = None
        if graph is None:
            raise CaptureError("cuda backend: CUDA graph capture ended without a graph")
        return Captured(graph, shift)
