"""The open registry of layer, loss and optimizer types that definitions and checkpoints name.

juicepy's own classes are registered under their class names; a user's class joins with
``@juicepy.register_layer`` (or ``register_loss`` / ``register_optimizer``) and then saves and
loads like a built-in one.
"""

from __future__ import annotations

from ..errors import DefinitionError

LAYERS: dict[str, type] = {}
LOSSES: dict[str, type] = {}
OPTIMIZERS: dict[str, type] = {}


def _register(table: dict, kind: str, cls, name: str | None):
    def add(cls):
        key = name or cls.__name__
        if table.get(key, cls) is not cls:
            raise ValueError(f"{kind} type name {key!r} is already registered for {table[key].__module__}."
                             f"{table[key].__qualname__}; pass name= to register {cls.__qualname__}")
        table[key] = cls
        return cls

    return add(cls) if cls is not None else add


def register_layer(cls=None, *, name: str | None = None):
    """Make a Layer class nameable in network definitions (usable as a decorator)."""
    return _register(LAYERS, "layer", cls, name)


def register_loss(cls=None, *, name: str | None = None):
    return _register(LOSSES, "loss", cls, name)


def register_optimizer(cls=None, *, name: str | None = None):
    return _register(OPTIMIZERS, "optimizer", cls, name)


def type_name(table: dict, kind: str, obj) -> str:
    cls = type(obj)
    for key, registered in table.items():
        if registered is cls:
            return key
    decorator = f"@juicepy.register_{kind}"
    raise DefinitionError(f"{kind} type {cls.__module__}.{cls.__qualname__} is not registered; decorate the "
                          f"class with {decorator} so a saved definition can name it")


def lookup(table: dict, kind: str, key: str) -> type:
    try:
        return table[key]
    except KeyError:
        raise DefinitionError(f"unknown {kind} type {key!r} in the definition; register the class with "
                              f"@juicepy.register_{kind} before loading (known: {', '.join(sorted(table))})") from None


def _register_builtins() -> None:
    from .. import layers as L
    from ..train import SGD, Adam, AdamW

    for name in L.__all__:
        obj = getattr(L, name)
        if isinstance(obj, type) and issubclass(obj, L.Layer) and obj is not L.Layer:
            register_layer(obj)
        elif isinstance(obj, type) and issubclass(obj, L.Loss) and obj is not L.Loss and obj.__name__ == name:
            register_loss(obj)
    for cls in (SGD, Adam, AdamW):
        register_optimizer(cls)


_register_builtins()
