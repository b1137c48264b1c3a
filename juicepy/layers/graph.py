"""Graph: a container made of layer calls recorded by the functional builder."""

from __future__ import annotations

import re

from ..errors import ShapeError
from ..net.descriptor import join_path
from ..net.functional import Input, apply_layer, as_symbol
from .base import Layer


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
