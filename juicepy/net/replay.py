"""Graph replay: run a fixed sequence of device work once as recorded, then replay it.

A Context's buffers never move, so on a backend that captures graphs (``backend.can_capture``,
CUDA) a whole training step or inference pass can be recorded once and replayed with one
launch. :class:`GraphReplay` keeps one such recording and the bookkeeping the host would
otherwise do while issuing the ops (params the recorded work updates in place).
"""

from __future__ import annotations

import os

from ..backends.base import CaptureError

GRAPHS_ENV_VAR = "JUICEPY_GRAPHS"


def graphs_wanted(flag: bool, backend) -> bool:
    """Replay graphs on ``backend``: it can capture, the caller's flag is on and
    ``$JUICEPY_GRAPHS`` is not 0/false/off."""
    if not flag or not getattr(backend, "can_capture", False):
        return False
    return os.environ.get(GRAPHS_ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


class GraphReplay:
    """One recorded piece of device work of ``network`` on ``backend``.

    ``key`` describes what the recording baked in (hyperparameters, flags); a different key
    means record again. A failed capture is remembered (``failure``) and never retried.
    """

    def __init__(self, network, backend):
        self.network = network
        self.backend = backend
        self.graph = None
        self.key = None
        self.failure: str | None = None
        self.eager_runs = 0  # runs before the first recording (warm-up: workspaces, kernels)
        self.base_step = 0  # the step count the recording was made at (replay shift origin)
        self._written: list = []

    def ready(self, key) -> bool:
        return self.graph is not None and self.key == key

    def sync_params(self) -> None:
        """Refresh device copies made stale by host writes (set_weights), as ``ctx.param`` would."""
        for p in self.network.params.values():
            p.on(self.backend)

    def record(self, key, body) -> bool:
        """Capture ``body()`` (its device work does not run); False when it cannot be captured."""
        host_state = [n.path for n in self.network.nodes if not getattr(n.layer, "capturable", True)]
        if host_state:
            self.graph, self.key = None, None
            self.failure = f"layers keeping host-side state cannot be replayed: {', '.join(host_state)}"
            return False
        self.sync_params()  # no host-to-device copy may happen inside the capture
        before = {p: p.version for p in self.network.params.values()}
        try:
            graph = self.backend.capture(body)
        except CaptureError as exc:
            self.graph, self.key, self.failure = None, None, str(exc)
            return False
        self._written = [p for p, v in before.items() if p.version != v]
        self.graph, self.key = graph, key
        return True

    def replay(self, shift: int = 0) -> None:
        self.sync_params()
        self.graph.replay(shift)
        for p in self._written:  # e.g. BatchNorm's running statistics
            p.mark_written(self.backend)
