"""The static graph: junctions (unit shapes), nodes (one placement of a leaf layer) and the builder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .params import LearnableParams


def join_path(path: str, name) -> str:
    return f"{path}.{name}" if path else str(name)


@dataclass(eq=False)
class Junction:
    """A value flowing between layers: its unit shape (no batch axis) and who makes it."""

    index: int
    unit_shape: tuple
    dtype: np.dtype
    producer: str  # path of the node that writes it ("<input>" for network inputs)

    def __repr__(self) -> str:
        return f"<Junction {self.producer} {self.unit_shape}>"


@dataclass(eq=False)
class Descriptor:
    """What one placement of a leaf layer declares: its junctions and its params."""

    path: str
    inputs: list
    outputs: list
    params: dict = field(default_factory=dict)  # local name -> LearnableParams

    @property
    def input_shapes(self) -> list:
        return [j.unit_shape for j in self.inputs]

    @property
    def output_shapes(self) -> list:
        return [j.unit_shape for j in self.outputs]


@dataclass(eq=False)
class Node:
    layer: object
    descriptor: Descriptor
    index: int

    @property
    def path(self) -> str:
        return self.descriptor.path


class GraphBuilder:
    """Collects nodes and junctions while containers expand; knows the init RNG and dtype."""

    def __init__(self, dtype=np.float32, rng: np.random.Generator | None = None):
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.junctions: list[Junction] = []
        self.nodes: list[Node] = []
        self.params: dict[str, LearnableParams] = {}  # first path of each distinct param
        self._param_ids: set[int] = set()

    def junction(self, unit_shape, producer: str, dtype=None) -> Junction:
        """A new junction; ``dtype`` defaults to the graph's float type (int32: indices)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        j = Junction(len(self.junctions), tuple(int(d) for d in unit_shape), dtype, producer)
        self.junctions.append(j)
        return j

    def add_node(self, layer, path: str, inputs: list, output_shapes: list, params: dict) -> list:
        outputs = [self.junction(shape, path) for shape in output_shapes]
        descriptor = Descriptor(path, list(inputs), outputs, dict(params))
        self.nodes.append(Node(layer, descriptor, len(self.nodes)))
        for local, param in params.items():
            if id(param) not in self._param_ids:
                self._param_ids.add(id(param))
                full = join_path(path, local)
                if not param.name:
                    param.name = full
                self.params[full] = param
        return outputs

