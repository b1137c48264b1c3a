"""ModelServer: the served model, the micro-batcher, the watcher and the HTTP server, started
and stopped together."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from .. import arguments
from .batcher import MicroBatcher
from .handler import BoundedHTTPServer, InFlight
from .model import ServedModel
from .watcher import CheckpointWatcher

log = logging.getLogger("juicepy.serve")

DEFAULT_MAX_BATCH = 32
# Micro-batching pays where one transform has a fixed cost (kernel launches, transfers and
# synchronisation on a device). On the NumPy backend a batch-1 transform costs little beside
# parsing the request, and a few-row GEMM wakes BLAS threads that then compete with the request
# threads, so it is off there by default (bench/test_bench_serve.py measures both).
BATCHING_BACKENDS_OFF = ("numpy",)
DEFAULT_BATCH_WAIT_MS = 0.0  # measured: waiting grew batches little and cost throughput
DEFAULT_MAX_BODY_BYTES = 16 << 20
DEFAULT_MAX_CONNECTIONS = 64


class _Unbatched:
    """What :meth:`ModelServer.arriving` yields with micro-batching off."""

    def __init__(self, run):
        self.submit = run


class ModelServer:
    """Serves a checkpoint over HTTP: ``POST /predict``, ``GET /health``, ``POST /swap``.

    ``max_batch`` rows is the most micro-batching joins into one transform (1 turns it off;
    None: :data:`DEFAULT_MAX_BATCH`, or off on the backends in :data:`BATCHING_BACKENDS_OFF`);
    ``batch_wait_ms`` bounds how long a request waits for others to join it. ``port=0`` takes
    a free port (see :attr:`port`). Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, path, backend=None, host: str = "127.0.0.1", port: int = 8000, *,
                 watch: bool = False, watch_interval_s: float = 1.0,
                 max_batch: int | None = None, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, check_finite: bool = True):
        owner = "ModelServer"
        max_batch = arguments.optional_integer(owner, "max_batch", max_batch, 1)
        max_body_bytes = arguments.integer(owner, "max_body_bytes", max_body_bytes, 1)
        max_connections = arguments.integer(owner, "max_connections", max_connections, 1)
        batch_wait_ms = arguments.number(owner, "batch_wait_ms", batch_wait_ms, low=0.0)
        watch_interval_s = arguments.number(owner, "watch_interval_s", watch_interval_s, low=0.0, low_open=True)
        port = arguments.integer(owner, "port", port, 0, 65535)
        watch = arguments.flag(owner, "watch", watch)
        check_finite = arguments.flag(owner, "check_finite", check_finite)
        self.path = path
        self.model = ServedModel(path, backend, check_finite=check_finite)
        if max_batch is None:
            max_batch = 1 if self.model.predictor.backend.name in BATCHING_BACKENDS_OFF else DEFAULT_MAX_BATCH
        self.max_batch, self.batch_wait_ms = max_batch, batch_wait_ms
        self.max_body_bytes = max_body_bytes
        self.tracker = InFlight()
        self.stopping = False
        self._watch, self._watch_interval_s = watch, watch_interval_s
        self._batcher = self._watcher = self._thread = None
        self._http = BoundedHTTPServer((host, port), self, max_connections)

    @property
    def host(self) -> str:
        return self._http.server_address[0]

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    @property
    def open_connections(self) -> int:
        return self._http.open_connections

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ requests
    def arriving(self):
        """A request on its way: ``with server.arriving() as a: ... a.submit(inputs)`` runs
        the validated inputs, through the micro-batcher when it is on."""
        if self._batcher is not None:
            return self._batcher.arriving()
        return contextlib.nullcontext(_Unbatched(self.model.transform))

    def health(self) -> dict:
        doc = self.model.health()
        batcher = self._batcher
        doc["micro_batching"] = {
            "on": batcher is not None, "max_batch": self.max_batch, "max_wait_ms": self.batch_wait_ms,
            "batches": batcher.batches if batcher else 0,
            "batched_requests": batcher.batched_requests if batcher else 0}
        doc["watching"] = self._watcher.path if self._watcher else None
        return doc

    # ----------------------------------------------------------- lifecycle
    def start(self) -> "ModelServer":
        if self.max_batch > 1:
            self._batcher = MicroBatcher(self.model.transform, self.max_batch, self.batch_wait_ms / 1e3)
        if self._watch:
            self._watcher = CheckpointWatcher(self.path, self.model.swap_from, self._watch_interval_s)
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="juicepy-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace_s``), close the rest."""
        self.stopping = True
        if self._thread is not None:
            self._http.shutdown()  # returns once the accept loop has ended
            self._thread.join()
        if not self.tracker.wait_idle(grace_s):
            log.warning("stop: requests still running after %.0f s; closing their connections", grace_s)
        if not self._http.close_connections(timeout=5.0):
            log.warning("stop: some connection threads had not ended after 5 s")
        self._http.server_close()
        if self._watcher is not None:
            self._watcher.close()
        if self._batcher is not None:
            self._batcher.close()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_until_signal(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly (call from the main thread)."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
