"""The functional graph builder: layers applied to symbolic values, like tensors.

    x = jp.Input((64,))
    h = L.Linear(32)(x)
    y = h + L.Linear(32)(L.ReLU()(h))
    net = jp.Network(inputs=x, outputs=y)

Applying a layer records a call; nothing is computed or built. ``Network(inputs=, outputs=)``
wraps the recorded calls in a :class:`juicepy.layers.Graph` container, which expands them into
the same static Node/Junction graph every other container produces.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import ShapeError

_sequence = itertools.count()  # creation order: always a valid topological order of calls


class Symbol:
    """A symbolic value: a network input or the output of one layer call."""

    __slots__ = ("call", "input_shape", "name", "dtype", "_seq")

    def __init__(self, call=None, input_shape=None, name=None, dtype=None):
        self.call = call
        self.input_shape = input_shape
        self.name = name
        self.dtype = dtype
        self._seq = next(_sequence)

    def __add__(self, other):
        from ..layers.merge import Add

        return Add()(self, as_symbol(other, "+"))

    def __mul__(self, other):
        from ..layers.merge import Multiply

        return Multiply()(self, as_symbol(other, "*"))

    def __repr__(self):
        if self.call is None:
            return f"<Input {self.input_shape}>"
        return f"<Symbol {type(self.call.layer).__name__} output>"


def Input(shape, name: str | None = None, dtype=None) -> Symbol:
    """A network input of unit shape ``shape`` (no batch axis); ``dtype`` an integer type for
    indices (an Embedding reads them), default the network's float type."""
    shape = tuple(int(d) for d in shape)
    if any(d < 1 for d in shape):
        raise ShapeError(f"Input: unit shape must be positive, got {shape}")
    return Symbol(input_shape=shape, name=name, dtype=None if dtype is None else np.dtype(dtype))


def concat(*values, name: str | None = None) -> Symbol:
    """Concatenate symbolic values along axis 1 (channels / features)."""
    from ..layers.merge import Concat

    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    return Concat()(*values, name=name)


class Call:
    __slots__ = ("layer", "args", "name", "output")

    def __init__(self, layer, args, name):
        self.layer = layer
        self.args = tuple(args)
        self.name = name
        self.output = Symbol(call=self)


def as_symbol(value, what):
    if not isinstance(value, Symbol):
        raise TypeError(f"{what}: expected a symbolic value (from juicepy.Input or a layer call), "
                        f"got {type(value).__name__}")
    return value


def apply_layer(layer, values, name: str | None = None) -> Symbol:
    """Record ``layer(*values)``; returns its symbolic output."""
    if not values:
        raise TypeError(f"{type(layer).__name__}: called with no inputs")
    for v in values:
        as_symbol(v, f"{type(layer).__name__}(...)")
    if name is not None and (not name or "." in name):
        raise ValueError(f"layer name must be non-empty and contain no '.', got {name!r}")
    return Call(layer, values, name).output
