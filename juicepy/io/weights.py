"""Network weights as a safetensors file keyed by dotted param paths (PyTorch layouts)."""

from __future__ import annotations

from safetensors.numpy import load as load_tensors
from safetensors.numpy import save_file

from ..errors import CheckpointWeightsError
from .atomic import atomic_path
from .checkpoint import read_file


def save_weights(path, network) -> None:
    """Write every param and buffer of ``network`` to ``path`` atomically."""
    tensors = {k: v for k, v in network.get_weights().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path, network, strict: bool = True) -> None:
    """Load weights saved by :func:`save_weights` (or a torch model saved with safetensors)."""
    data = read_file(path, "weights")
    try:
        tensors = load_tensors(data)
    except Exception as err:  # safetensors reports truncation/corruption with its own types
        raise CheckpointWeightsError(f"{path}: cannot read weights ({err})") from err
    network.set_weights(tensors, strict=strict)
