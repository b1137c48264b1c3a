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
    """One recorded piece of device work of ``network`` on ``backend``: a training pass (forward,
    backward, update) where ``training``, else an inference pass.

    ``key`` describes what the recording baked in (hyperparameters, flags); a different key
    means record again. A failed capture is remembered (``failure``) and never retried.
    """

    def __init__(self, network, backend, training: bool):
        self.network = network
        self.backend = backend
        self.training = training
        self.graph = None
        self.key = None
        self.failure: str | None = None
        self.eager_runs = 0  # runs before the first recording (warm-up: workspaces, kernels)
        self.base_step = 0  # the step count the recording was made at (replay shift origin)
        self._written: list = []
        # one entry per placement: a layer placed twice counts twice per pass
        self._counters = [c for n in network.nodes for c in n.layer.step_counters()] if training else []
        self._counter_ids = {id(c) for c in self._counters}

    def ready(self, key) -> bool:
        return self.graph is not None and self.key == key

    def sync_params(self) -> None:
        """Refresh device copies made stale by host writes (set_weights), as ``ctx.param`` would;
        not the step counters, which only the host reads (a copy would cost a transfer each step)."""
        for p in self.network.params.values():
            if id(p) not in self._counter_ids:
                p.on(self.backend)

    def record(self, key, body) -> bool:
        """Capture ``body()`` (its device work does not run); False when it cannot be captured."""
        refused = [n.path for n in self.network.nodes if not n.layer.capturable(self.training)]
        if refused:
            self.graph, self.key = None, None
            self.failure = f"layers keeping host-side state cannot be replayed: {', '.join(refused)}"
            return False
        self.sync_params()  # no host-to-device copy may happen inside the capture
        counted = {id(c): c.numpy().copy() for c in self._counters}
        before = {p: p.version for p in self.network.params.values() if id(p) not in self._counter_ids}
        try:
            graph = self.backend.capture(body)
        except CaptureError as exc:
            self.graph, self.key, self.failure = None, None, str(exc)
            return False
        finally:  # recording ran the host side only: what it counted did not happen
            for c in self._counters:
                c.set(counted[id(c)])
        self._written = [p for p, v in before.items() if p.version != v]
        self.graph, self.key = graph, key
        return True

    def replay(self, shift: int = 0) -> None:
        self.sync_params()
        self.graph.replay(shift)
        for p in self._written:  # e.g. BatchNorm's running statistics
            p.mark_written(self.backend)
        for c in self._counters:
            c.set(c.numpy() + 1)
