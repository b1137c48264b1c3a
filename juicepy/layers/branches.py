"""Branches: feed one input through several sub-networks and merge their outputs."""

from __future__ import annotations

from ..errors import ShapeError
from ..net.descriptor import join_path
from .base import Layer
from .merge import Add, Concat, Identity

_MERGES = {"add": Add, "concat": Concat}


def _merge_layer(merge) -> Layer:
    if isinstance(merge, Layer):
        return merge
    try:
        return _MERGES[merge]()
    except (KeyError, TypeError):
        raise ValueError(f"merge must be 'add', 'concat' or a Layer taking several inputs, got {merge!r}") from None


class Branches(Layer):
    """Every branch gets the same input(s); ``merge`` ("add", "concat" or any merge Layer, e.g.
    a user's own) combines their outputs. Branches are named "0", "1", ... (or by the keys of a
    dict) and the merge layer "merge", so paths read "block.1.weight", "block.merge"."""

    def __init__(self, *branches, merge="add"):
        super().__init__()
        if len(branches) == 1 and isinstance(branches[0], dict):
            self.branches = dict(branches[0])
        else:
            self.branches = {str(i): b for i, b in enumerate(branches)}
        if not self.branches:
            raise ValueError("Branches needs at least one branch")
        for name, layer in self.branches.items():
            if not isinstance(layer, Layer):
                raise TypeError(f"Branches child {name!r} is not a Layer: {layer!r}")
        self.merge = _merge_layer(merge)
        if "merge" in self.branches:
            raise ValueError("a branch may not be called 'merge' (that is the merge layer's path)")

    def expand(self, graph, path, inputs):
        outputs = []
        for name, layer in self.branches.items():
            out = layer.expand(graph, join_path(path, name), inputs)
            if len(out) != 1:
                raise ShapeError(f"{join_path(path, name)}: a branch must have one output, it has {len(out)}")
            outputs += out
        return self.merge.expand(graph, join_path(path, "merge"), outputs)

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.branches.values())[key]
        return self.branches[key]

    def config(self):
        return {"branches": dict(self.branches), "merge": self.merge}

    @classmethod
    def from_config(cls, config):
        return cls(dict(config["branches"]), merge=config["merge"])

    def __repr__(self):
        inner = ",\n  ".join(f"{k}: {v!r}" for k, v in self.branches.items())
        return f"{type(self).__name__}(\n  {inner},\n  merge={self.merge!r}\n)"


class Residual(Branches):
    """``block(x) + shortcut(x)``; the shortcut defaults to the identity (a ResNet skip)."""

    def __init__(self, block: Layer, shortcut: Layer | None = None):
        super().__init__({"shortcut": shortcut if shortcut is not None else Identity(), "block": block},
                         merge=Add())

    def config(self):
        shortcut = self.branches["shortcut"]
        return {"block": self.branches["block"],
                "shortcut": None if type(shortcut) is Identity else shortcut}

    @classmethod
    def from_config(cls, config):
        return cls(config["block"], config.get("shortcut"))
