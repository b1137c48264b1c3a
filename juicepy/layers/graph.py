"""The functional graph builder and the Graph container it fills.

    x = jp.Input((64,))
    h = L.Linear(32)(x)
    y = h + L.Linear(32)(L.ReLU()(h))
    net = jp.Network(inputs=x, outputs=y)

Applying a layer to symbolic values records a call; nothing is computed or built.
``Network(inputs=, outputs=)`` asks the outputs for their container (:meth:`Symbol.graph`), a
:class:`Graph`, which expands the recorded calls into the same static Node/Junction graph every
other container produces.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from .. import arguments
from ..errors import ShapeError
from ..net.descriptor import join_path
from .base import Layer
from .merge import Add, Concat, Multiply

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
        return Add()(self, as_symbol(other, "+"))

    def __mul__(self, other):
        return Multiply()(self, as_symbol(other, "*"))

    def record_call(self, layer, values, name: str | None = None) -> "Symbol":
        """Record ``layer(*values)`` (what ``Layer.__call__`` does with symbolic values)."""
        return apply_layer(layer, values, name)

    @staticmethod
    def graph(inputs, outputs) -> "Graph":
        """The container of the calls from ``inputs`` to ``outputs`` (``Network(inputs=, outputs=)``)."""
        return Graph(inputs, outputs)

    def __repr__(self):
        if self.call is None:
            return f"<Input {self.input_shape}>"
        return f"<Symbol {type(self.call.layer).__name__} output>"


def Input(shape, name: str | None = None, dtype=None) -> Symbol:
    """A network input of unit shape ``shape`` (no batch axis); ``dtype`` an integer type for
    indices (an Embedding reads them), default the network's float type."""
    shape = arguments.shape("Input", "shape", shape)
    return Symbol(input_shape=shape, name=name, dtype=None if dtype is None else np.dtype(dtype))


def concat(*values, name: str | None = None) -> Symbol:
    """Concatenate symbolic values along axis 1 (channels / features)."""
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


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", name).lower()


class Graph(Layer):
    """A layer made of recorded calls from ``inputs`` to ``outputs`` (symbols).

    Node paths are the layers' names: given ones (``layer(x, name="enc")``) or the snake-cased
    type with a counter ("linear", "linear_1", ...) in call order. A layer called again is
    the same weights at another place; that placement's path gets "@k" ("enc@1"). A Graph
    nests in any container and any container can be called inside it.
    """

    def __init__(self, inputs, outputs):
        super().__init__()
        self.inputs = [as_symbol(s, "Graph inputs") for s in _as_list(inputs)]
        self.outputs = [as_symbol(s, "Graph outputs") for s in _as_list(outputs)]
        for s in self.inputs:
            if s.call is not None:
                raise TypeError("Graph inputs must be juicepy.Input values, not layer outputs")
        if len(set(map(id, self.inputs))) != len(self.inputs):
            raise ValueError("the same Input is listed twice in inputs")
        self.calls = self._collect()
        self.paths = self._name_calls()

    @property
    def input_shapes(self) -> list:
        return [s.input_shape for s in self.inputs]

    @property
    def input_dtypes(self) -> list:
        """Each input's declared dtype (None: the network's float type)."""
        return [s.dtype for s in self.inputs]

    def _collect(self) -> list:
        listed = {id(s) for s in self.inputs}
        seen, calls, stack = set(), [], list(self.outputs)
        while stack:
            s = stack.pop()
            if id(s) in seen:
                continue
            seen.add(id(s))
            if s.call is None:
                if id(s) not in listed:
                    raise ValueError(f"the outputs depend on an Input {s.input_shape} that is not in inputs")
                continue
            calls.append(s.call)
            stack.extend(s.call.args)
        calls.sort(key=lambda c: c.output._seq)
        return calls

    def _name_calls(self) -> list:
        taken, first_name, uses, counters, paths = set(), {}, {}, {}, []
        for call in self.calls:
            layer = call.layer
            if call.name is not None:
                name = call.name
            elif id(layer) in first_name:
                uses[id(layer)] = uses.get(id(layer), 0) + 1
                name = f"{first_name[id(layer)]}@{uses[id(layer)]}"
            else:
                base = _snake(type(layer).__name__)
                k = counters.get(base, 0)
                name = base if k == 0 else f"{base}_{k}"
                while name in taken:
                    k += 1
                    name = f"{base}_{k}"
                counters[base] = k + 1
            if name in taken:
                raise ValueError(f"two layer calls are both named {name!r}; layer names must be unique")
            taken.add(name)
            first_name.setdefault(id(layer), name)
            paths.append(name)
        return paths

    def expand(self, graph, path, inputs):
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"{path or '<root>'}: Graph takes {len(self.inputs)} input(s), got {len(inputs)}")
        values = {}
        for i, (symbol, junction) in enumerate(zip(self.inputs, inputs)):
            if junction.unit_shape != symbol.input_shape:
                raise ShapeError(f"{path or '<root>'}: input {i} expects unit shape {symbol.input_shape}, "
                                 f"got {junction.unit_shape}")
            values[id(symbol)] = junction
        for call, name in zip(self.calls, self.paths):
            node_path = join_path(path, name)
            outs = call.layer.expand(graph, node_path, [values[id(a)] for a in call.args])
            if len(outs) != 1:
                raise ShapeError(f"{node_path}: a layer called on symbolic values must have one output, "
                                 f"it has {len(outs)}")
            values[id(call.output)] = outs[0]
        return [values[id(s)] for s in self.outputs]

    def config(self):
        ids = {id(s): i for i, s in enumerate(self.inputs)}
        for k, call in enumerate(self.calls):
            ids[id(call.output)] = len(self.inputs) + k
        return {
            "inputs": [list(s) for s in self.input_shapes],
            "input_dtypes": [None if d is None else d.name for d in self.input_dtypes],
            "calls": [{"layer": c.layer, "args": [ids[id(a)] for a in c.args], "name": name}
                      for c, name in zip(self.calls, self.paths)],
            "outputs": [ids[id(s)] for s in self.outputs],
        }

    @classmethod
    def from_config(cls, config):
        dtypes = config.get("input_dtypes") or [None] * len(config["inputs"])
        symbols = [Input(shape, dtype=dt) for shape, dt in zip(config["inputs"], dtypes)]
        for call in config["calls"]:
            symbols.append(apply_layer(call["layer"], [symbols[i] for i in call["args"]], name=call["name"]))
        return Graph(symbols[:len(config["inputs"])], [symbols[i] for i in config["outputs"]])

    def __repr__(self):
        inner = ",\n  ".join(f"{name}: {c.layer!r}" for c, name in zip(self.calls, self.paths))
        return f"Graph(\n  {inner}\n)"


def _as_list(values) -> list:
    return list(values) if isinstance(values, (list, tuple)) else [values]
