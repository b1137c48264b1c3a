"""``juicepy serve``: a network served over HTTP, hot-swapped from checkpoints.

- :mod:`.model`: the served model (a Predictor plus what /health reports) and its swaps;
- :mod:`.batcher`: micro-batching of concurrent small requests;
- :mod:`.codec`: JSON / .npy bodies to arrays and back;
- :mod:`.watcher`: --watch, swapping when the checkpoint file is replaced;
- :mod:`.handler`: routes, limits and connections on the standard library's HTTP server;
- :mod:`.server`: :class:`ModelServer`, which starts and stops them together.
"""

from .model import ServedModel, SwapRefused, definition_sha256
from .server import ModelServer

__all__ = ["ModelServer", "ServedModel", "SwapRefused", "definition_sha256"]
