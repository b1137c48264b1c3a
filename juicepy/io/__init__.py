"""Saving and loading: weights in safetensors, written atomically."""

from .weights import load_weights, save_weights

__all__ = ["load_weights", "save_weights"]
