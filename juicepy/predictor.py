"""Predictor: serves a network on one backend and swaps in another while requests run."""

from __future__ import annotations

import threading

import numpy as np

from . import arguments
from .backends import backend as get_backend
from .errors import ShapeError


class Predictor:
    """Answers ``transform(inputs)`` calls from any number of threads with the current network.

    Swapping never waits for requests: a request reads the current network once and runs to
    its end on it (each network keeps its own contexts behind its own lock), while ``swap``
    only prepares the new network on the serving backend and then replaces one reference.
    So a request in flight during a swap finishes on the old network, later ones use the new
    one, and no request ever mixes the two. The network may come from training on another
    backend: its params are copied to the serving backend when it is swapped in.
    """

    def __init__(self, network, backend=None):
        from .net.network import Network

        arguments.instance("Predictor", "network", network, Network, "a juicepy.Network")
        self._backend = get_backend(backend)
        self._swap_lock = threading.Lock()  # serialises swaps only, never requests
        network.materialize(self._backend)
        self._network = network

    @property
    def network(self):
        return self._network

    @property
    def backend(self):
        return self._backend

    def transform(self, inputs):
        """Inference on any number of rows (host arrays in, host arrays out)."""
        network = self._network  # one read: the whole request runs on this network
        return network.transform(self._backend, inputs)

    def swap(self, network, warmup_rows: int | None = None):
        """Serve ``network`` from now on; returns the network it replaced.

        The new network must take and give the same unit shapes and dtype, else a ShapeError
        says what differs and the old network keeps serving. ``warmup_rows`` runs one request
        of that many zero rows first, so the new network's first real request finds its
        context already made.
        """
        from .net.network import Network

        arguments.instance("Predictor.swap", "network", network, Network, "a juicepy.Network")
        warmup_rows = arguments.optional_integer("Predictor.swap", "warmup_rows", warmup_rows, 0)
        with self._swap_lock:
            old = self._network
            problems = []
            if network.input_shapes != old.input_shapes:
                problems.append(f"input unit shapes {network.input_shapes}, serving {old.input_shapes}")
            if network.output_shapes != old.output_shapes:
                problems.append(f"output unit shapes {network.output_shapes}, serving {old.output_shapes}")
            if network.input_dtypes != old.input_dtypes:
                problems.append(f"input dtypes {[str(d) for d in network.input_dtypes]}, serving "
                                f"{[str(d) for d in old.input_dtypes]}")
            if np.dtype(network.dtype) != np.dtype(old.dtype):
                problems.append(f"dtype {np.dtype(network.dtype)}, serving {np.dtype(old.dtype)}")
            if problems:
                raise ShapeError("Predictor.swap refused the new network (" + "; ".join(problems) +
                                 "); the old network keeps serving")
            network.materialize(self._backend)
            if warmup_rows:
                network.transform(self._backend, [np.zeros((warmup_rows,) + s, d)  # index 0 is valid
                                                  for s, d in zip(network.input_shapes, network.input_dtypes)])
            self._network = network
            return old

    def swap_from(self, path, warmup_rows: int | None = None):
        """Load a checkpoint (``juicepy.save``) and swap its network in; returns the old one."""
        from .io.checkpoint import load

        return self.swap(load(path).network, warmup_rows=warmup_rows)

    def __repr__(self) -> str:
        return f"<Predictor {self._network!r} on {self._backend.name}>"
