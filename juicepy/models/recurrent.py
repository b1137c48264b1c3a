"""Recurrent models: a sequence read by an LSTM or GRU, classified or regressed from its last
step; and token sequences through an Embedding and a GRU."""

from __future__ import annotations

import math

from .. import layers as L


def _as_sequence(input_shape: tuple) -> list:
    """A (1, rows, cols) image is read as rows time steps of cols features."""
    if len(input_shape) == 2:
        return []
    if len(input_shape) == 3 and input_shape[0] == 1:
        return [L.Reshape(tuple(input_shape[1:]))]
    seq = input_shape[0] if input_shape else 1
    return [L.Reshape((seq, math.prod(input_shape[1:]) if len(input_shape) > 1 else 1))]


def lstm(input_shape: tuple, classes: int, hidden: int = 64, num_layers: int = 1):
    """(seq_len, features) or a one-channel image (rows as steps) -> LSTM -> last step -> Linear."""
    return L.Sequential(*_as_sequence(input_shape), L.LSTM(hidden, num_layers=num_layers), L.LastStep(),
                        L.Linear(classes))


def gru(input_shape: tuple, classes: int, hidden: int = 64, num_layers: int = 1):
    return L.Sequential(*_as_sequence(input_shape), L.GRU(hidden, num_layers=num_layers), L.LastStep(),
                        L.Linear(classes))


def embedding_gru(input_shape: tuple, classes: int, vocab: int = 0, dim: int = 16, hidden: int = 64):
    """Token sequences (seq_len,) of integers below ``vocab`` -> Embedding -> GRU -> last step -> Linear."""
    if len(input_shape) != 1 or vocab < 1:
        raise ValueError(f"embedding-gru reads token sequences (seq_len,) with a vocabulary; got input "
                         f"{tuple(input_shape)}, vocab {vocab} (use a token dataset such as adding)")
    return L.Sequential(L.Embedding(vocab, dim), L.GRU(hidden), L.LastStep(), L.Linear(classes))
