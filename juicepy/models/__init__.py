"""The model zoo: builders by name, used by ``juicepy train --model NAME``.

A builder takes the dataset's input unit shape and class count and returns the root layer.
"""

from __future__ import annotations

from typing import Callable

from .lenet import lenet
from .mlp import mlp
from .resnet import resnet

MODELS: dict[str, Callable] = {}


def register_model(name: str, builder: Callable) -> None:
    MODELS[name] = builder


def build_model(name: str, input_shape: tuple, classes: int):
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None
    return builder(input_shape, classes)


register_model("mlp", mlp)
register_model("lenet", lenet)
register_model("resnet", resnet)

__all__ = ["MODELS", "build_model", "register_model", "lenet", "mlp", "resnet"]
