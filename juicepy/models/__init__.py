"""The model zoo: builders by name, used by ``juicepy train --model NAME``.

A builder takes the dataset's input unit shape and output width (its classes, or a regression
target's size) and returns the root layer; ``options`` (such as a token dataset's ``vocab``)
reach the builders that use them.
"""

from __future__ import annotations

import inspect
from typing import Callable

from .lenet import lenet
from .mlp import mlp
from .recurrent import embedding_gru, gru, lstm
from .resnet import resnet

MODELS: dict[str, Callable] = {}


def register_model(name: str, builder: Callable) -> None:
    MODELS[name] = builder


def build_model(name: str, input_shape: tuple, classes: int, **options):
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None
    accepted = inspect.signature(builder).parameters
    return builder(input_shape, classes, **{k: v for k, v in options.items() if k in accepted})


register_model("mlp", mlp)
register_model("lenet", lenet)
register_model("resnet", resnet)
register_model("lstm", lstm)
register_model("gru", gru)
register_model("embedding-gru", embedding_gru)

__all__ = ["MODELS", "build_model", "register_model", "embedding_gru", "gru", "lenet", "lstm", "mlp", "resnet"]
