"""Layers (leaf layers and containers) and losses."""

from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .dropout import Dropout
from .linear import Linear
from .loss import (MSE, CrossEntropyLoss, Loss, MSELoss, NegativeLogLikelihood, NLLLoss,
                   SoftmaxCrossEntropy)
from .reshape import Flatten, Reshape
from .sequential import Sequential

__all__ = [
    "Layer", "Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Dropout",
    "Flatten", "Reshape", "Sequential", "Loss", "SoftmaxCrossEntropy", "CrossEntropyLoss",
    "NegativeLogLikelihood", "NLLLoss", "MSE", "MSELoss",
]
