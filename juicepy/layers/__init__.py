"""Layers (leaf layers and containers) and losses."""

from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .branches import Branches, Residual
from .dropout import Dropout
from .graph import Graph
from .linear import Linear, TiedLinear
from .merge import Add, Concat, Identity, Multiply
from .loss import (MSE, CrossEntropyLoss, Loss, MSELoss, NegativeLogLikelihood, NLLLoss,
                   SoftmaxCrossEntropy)
from .reshape import Flatten, Reshape
from .sequential import Sequential

__all__ = [
    "Layer", "Linear", "TiedLinear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Dropout", "Identity", "Add", "Concat", "Multiply", "Branches", "Residual", "Graph",
    "Flatten", "Reshape", "Sequential", "Loss", "SoftmaxCrossEntropy", "CrossEntropyLoss",
    "NegativeLogLikelihood", "NLLLoss", "MSE", "MSELoss",
]
