"""juicepy: a small deep-learning training engine with swappable backends."""

from . import errors, init, layers, train
from .backends import available_backends, backend, register_backend, registered_backends
from .net import Context, LearnableParams, Network
from .io import Checkpoint, load, register_layer, save
from .layers.graph import Input, concat
from .predictor import Predictor

__version__ = "0.1.0"

__all__ = [
    "Network", "Input", "concat", "Context", "LearnableParams", "save", "load", "Checkpoint",
    "register_layer", "Predictor", "backend", "available_backends", "register_backend",
    "registered_backends", "layers", "train", "errors", "init", "__version__",
]
