"""Layers (leaf layers and containers) and losses."""

from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .branches import Branches, Residual
from .conv import Conv1d, Conv2d
from .dropout import Dropout
from .embedding import Embedding
from .graph import Graph
from .linear import Linear, TiedLinear
from .merge import Add, Concat, Identity, Multiply
from .loss import (MSE, CrossEntropyLoss, Loss, MSELoss, NegativeLogLikelihood, NLLLoss,
                   SoftmaxCrossEntropy)
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .recurrent import GRU, LSTM, RNN, LastStep, MeanOverTime
from .reshape import Flatten, Reshape
from .sequential import Sequential

__all__ = [
    "Layer", "Linear", "TiedLinear", "Conv1d", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "BatchNorm1d", "BatchNorm2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Dropout", "Identity", "Add", "Concat", "Multiply", "Branches", "Residual", "Graph",
    "Flatten", "Reshape", "Sequential", "Loss", "SoftmaxCrossEntropy", "CrossEntropyLoss",
    "NegativeLogLikelihood", "NLLLoss", "MSE", "MSELoss", "RNN", "LSTM", "GRU", "LastStep", "MeanOverTime",
    "Embedding",
]
