"""Training: the Trainer, optimizers and metrics."""

from .adam import Adam, AdamW
from .metrics import accuracy
from .optimizer import Optimizer, OptimizerState
from .sgd import SGD
from .trainer import Trainer, TrainState

__all__ = ["Trainer", "TrainState", "Optimizer", "OptimizerState", "SGD", "Adam", "AdamW", "accuracy"]
