"""Sequential: a chain of layers (any of which may itself be a container)."""

from __future__ import annotations

from ..net.descriptor import join_path
from .base import Layer


class Sequential(Layer):
    """Children are named "0", "1", ... (or by the keys of a dict), as in torch.nn.Sequential,
    so param paths match a torch state_dict of the same structure."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            self.children = dict(layers[0])
        else:
            self.children = {str(i): layer for i, layer in enumerate(layers)}
        for name, layer in self.children.items():
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential child {name!r} is not a Layer: {layer!r}")

    def expand(self, graph, path, inputs):
        for name, layer in self.children.items():
            inputs = layer.expand(graph, join_path(path, name), inputs)
        return inputs

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.children.values())[key]
        return self.children[key]

    def __len__(self):
        return len(self.children)

    def __iter__(self):
        return iter(self.children.values())

    def config(self):
        return {"children": dict(self.children)}

    @classmethod
    def from_config(cls, config):
        return cls(dict(config["children"]))

    def __repr__(self):
        inner = ",\n  ".join(f"{k}: {v!r}" for k, v in self.children.items())
        return f"Sequential(\n  {inner}\n)"
