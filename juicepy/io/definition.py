"""Network definitions: a declarative JSON document of layer types, hyper-parameters and wiring.

    {"format": "juicepy.network", "version": 1, "dtype": "float32", "seed": 0,
     "input_shapes": [[1, 28, 28]],
     "root": {"$layer": 0},
     "layers": [{"type": "Sequential", "config": {"children": {"0": {"$layer": 1}, ...}}},
                {"type": "Linear", "config": {"out_features": 10, "bias": true, ...}}, ...]}

Every distinct layer object appears once in ``layers``; wherever a config names a layer (a
container's children, a tied layer's partner, a functional graph's calls) it says
``{"$layer": index}``, so a layer used at several places comes back as one object and its
weights stay shared. No batch size: a definition builds a Network, not a Context.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import DefinitionError
from ..layers.base import Layer
from .registry import LAYERS, lookup, type_name

FORMAT = "juicepy.network"
VERSION = 1


def network_definition(network) -> dict:
    """The definition document of ``network`` (a JSON-ready dict)."""
    table: list = []
    index: dict = {}

    def ref(layer: Layer) -> dict:
        key = index.get(id(layer))
        if key is None:
            key = index[id(layer)] = len(table)
            table.append(None)  # reserve the slot: children come after their container
            table[key] = {"type": type_name(LAYERS, "layer", layer), "config": encode(layer.config(), layer)}
        return {"$layer": key}

    def encode(value, owner):
        if isinstance(value, Layer):
            return ref(value)
        if isinstance(value, dict):
            return {str(k): encode(v, owner) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v, owner) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise DefinitionError(f"{type(owner).__name__}.config(): cannot put a {type(value).__name__} "
                              f"({value!r}) in a definition; use JSON values, tuples or layers")

    root = ref(network.root)
    return {"format": FORMAT, "version": VERSION, "dtype": np.dtype(network.dtype).name,
            "seed": network.seed, "input_shapes": [list(s) for s in network.input_shapes],
            "input_dtypes": [np.dtype(d).name for d in network.input_dtypes],
            "root": root, "layers": table}


def definition_json(network, indent: int | None = 1) -> str:
    return json.dumps(network_definition(network), indent=indent)


def build_network(doc):
    """A new Network (freshly initialised weights) from a definition dict or JSON string."""
    from ..net.network import Network

    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as err:
            raise DefinitionError(f"the network definition is not valid JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DefinitionError(f"not a juicepy network definition (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != VERSION:
        raise DefinitionError(f"network definition version {doc.get('version')!r}; this juicepy reads {VERSION}")
    try:
        table = doc["layers"]
        if not isinstance(table, list):
            raise DefinitionError(f"layers must be a list, got {type(table).__name__}")
        built: dict = {}

        def decode(value, where):
            if isinstance(value, dict):
                if set(value) == {"$layer"}:
                    return layer(value["$layer"], where)
                return {k: decode(v, where) for k, v in value.items()}
            if isinstance(value, list):
                return [decode(v, where) for v in value]
            return value

        def layer(key, where):
            if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < len(table):
                raise DefinitionError(f"{where}: layer reference {key!r} out of range (0..{len(table) - 1})")
            if key in built:
                if built[key] is None:
                    raise DefinitionError(f"{where}: layer {key} refers back to itself (a cycle)")
                return built[key]
            spec = table[key]
            if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) \
                    or not isinstance(spec.get("config", {}), dict):
                raise DefinitionError(f"layers[{key}] must be an object {{\"type\": name, \"config\": object}}, "
                                      f"got {spec!r}")
            cls = lookup(LAYERS, "layer", spec["type"])
            built[key] = None  # marks "being built"
            config = decode(spec.get("config", {}), f"layers[{key}] ({spec['type']})")
            try:
                obj = cls.from_config(config)
            except (TypeError, ValueError) as err:
                raise DefinitionError(f"layers[{key}] ({spec['type']}): cannot rebuild from config "
                                      f"{spec.get('config')!r}: {err}") from err
            built[key] = obj
            return obj

        root = decode(doc["root"], "root")
        input_shapes = doc["input_shapes"]
        if not isinstance(input_shapes, list) or not all(
                isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in s)
                for s in input_shapes):
            raise DefinitionError(f"input_shapes must be a list of lists of positive integers, got {input_shapes!r}")
        seed = doc.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DefinitionError(f"seed must be an integer, got {seed!r}")
        return Network(root, [tuple(s) for s in input_shapes], dtype=np.dtype(doc["dtype"]), seed=seed,
                       input_dtype=doc.get("input_dtypes"))
    except DefinitionError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
        # a ShapeError or DTypeError too: the definition does not build a consistent network
        raise DefinitionError(f"malformed network definition: {type(err).__name__}: {err}") from err


def save_definition(path, network) -> None:
    """Write the definition as a JSON file (atomically)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(definition_json(network))


def load_definition(path):
    """A Network (fresh weights) from a JSON definition file; a file that cannot be read or
    rebuilt raises a DefinitionError naming it."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such definition file") from None
    except IsADirectoryError:
        raise DefinitionError(f"{path}: is a directory, not a definition file") from None
    except OSError as err:
        raise DefinitionError(f"{path}: cannot read the definition ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise DefinitionError(f"{path}: not UTF-8 text ({err})") from None
    try:
        return build_network(text)
    except DefinitionError as err:
        raise DefinitionError(f"{path}: {err}") from err
