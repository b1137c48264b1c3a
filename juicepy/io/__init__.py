"""Saving and loading: network definitions (JSON), weights and checkpoints (safetensors),
written atomically; the open registry of layer, loss and optimizer types they name."""

from .checkpoint import Checkpoint, load, read, save
from .definition import build_network, definition_json, load_definition, network_definition, save_definition
from .registry import register_layer, register_loss, register_optimizer
from .weights import load_weights, save_weights

__all__ = ["Checkpoint", "save", "load", "read", "network_definition", "definition_json", "build_network",
           "save_definition", "load_definition", "register_layer", "register_loss", "register_optimizer",
           "load_weights", "save_weights"]
