"""The served model: a Predictor plus what /health reports about the network it serves."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

from ..errors import JuicepyError, ShapeError
from ..io.checkpoint import load
from ..io.definition import definition_json
from ..predictor import Predictor


class SwapRefused(JuicepyError):
    """The checkpoint's network takes or gives other unit shapes or dtype than the served one."""


@dataclass(frozen=True)
class ModelInfo:
    """What is known about the network being served (replaced whole on every swap)."""

    path: str
    definition_sha256: str
    step: int
    metadata: dict = field(default_factory=dict)
    loaded_at: float = 0.0


def definition_sha256(network) -> str:
    """A digest of the network's definition (layers, wiring, shapes; not its weights)."""
    return hashlib.sha256(definition_json(network, indent=None).encode()).hexdigest()


class ServedModel:
    """Serves a checkpoint with a :class:`~juicepy.Predictor` and swaps in others.

    Requests go straight to the Predictor, which reads its network once per call, so a request
    runs wholly on the old or wholly on the new network. ``_lock`` only keeps swaps and the
    info /health reports in step with each other.
    """

    def __init__(self, path, backend=None, check_finite: bool = True):
        checkpoint = load(path)
        self.predictor = Predictor(checkpoint.network, backend)
        self.check_finite = check_finite
        self._lock = threading.Lock()
        self._info = self._describe(path, checkpoint)
        self._swaps = 0

    @staticmethod
    def _describe(path, checkpoint) -> ModelInfo:
        return ModelInfo(str(path), definition_sha256(checkpoint.network), checkpoint.step,
                         dict(checkpoint.metadata), time.time())

    @property
    def network(self):
        return self.predictor.network

    def check_inputs(self, inputs) -> list:
        """Inputs validated against the served unit shapes and dtype (the same for every network
        that can be swapped in), with the finite-input guard when it is on."""
        return self.network.check_inputs(inputs, check_finite=self.check_finite)

    def transform(self, inputs) -> list:
        """Outputs (a list, one array per network output) for validated inputs."""
        outputs = self.predictor.transform(inputs)
        return list(outputs) if isinstance(outputs, list) else [outputs]

    def swap_from(self, path) -> ModelInfo:
        """Load ``path`` and serve it from now on.

        Raises :class:`SwapRefused` when its unit shapes or dtype differ, and the checkpoint
        errors of :func:`juicepy.load` when it cannot be read; either way the old network keeps
        serving.
        """
        checkpoint = load(path)  # outside the lock: reading a file must not hold up /health
        with self._lock:
            try:
                self.predictor.swap(checkpoint.network, warmup_rows=1)
            except ShapeError as err:
                raise SwapRefused(f"{path}: {err}") from None
            self._info = self._describe(path, checkpoint)
            self._swaps += 1
            return self._info

    def health(self) -> dict:
        with self._lock:
            info, swaps, network = self._info, self._swaps, self.predictor.network
        dtype = str(network.dtype)
        return {
            "status": "ok",
            "definition_sha256": info.definition_sha256,
            "inputs": [{"shape": list(s), "dtype": dtype} for s in network.input_shapes],
            "outputs": [{"shape": list(s), "dtype": dtype} for s in network.output_shapes],
            "backend": self.predictor.backend.name,
            "checkpoint": {"path": info.path, "step": info.step, "metadata": info.metadata,
                           "loaded_at": info.loaded_at},
            "swaps": swaps,
            "finite_check": self.check_finite,
        }
