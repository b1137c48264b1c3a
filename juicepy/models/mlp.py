"""A multi-layer perceptron classifier."""

from __future__ import annotations

from .. import layers as L


def mlp(input_shape: tuple, classes: int, hidden=(256, 128), dropout: float = 0.0):
    parts = [L.Flatten()] if len(input_shape) != 1 else []
    for width in hidden:
        parts += [L.Linear(width), L.ReLU()]
        if dropout:
            parts.append(L.Dropout(dropout))
    parts.append(L.Linear(classes))
    return L.Sequential(*parts)
