"""Checkpoints: one safetensors file holding a network's definition, weights and, optionally,
the trainer (loss, optimizer and its per-param state, step, dropout counter).

Layout (readable with any safetensors tool):
- tensors ``model.<param path>``: every param and buffer (PyTorch layouts);
- tensors ``optimizer.<param path>.<state>``: per-param optimizer state with torch's names
  (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer);
- header metadata ``juicepy.network``: the JSON definition (see :mod:`juicepy.io.definition`),
  ``juicepy.trainer``: JSON of the trainer's settings and counters, ``juicepy.metadata``: the
  caller's JSON extras, ``juicepy.sha256``: a digest of every tensor, so a flipped byte anywhere
  is caught, not loaded.

The file is written to a temporary file beside the target, fsynced and renamed over it, so a
failed save never clobbers the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from ..errors import CheckpointError, DefinitionError, WeightsError
from .atomic import atomic_path
from .definition import build_network, definition_json
from .registry import LOSSES, OPTIMIZERS, lookup, type_name

FORMAT = "juicepy.checkpoint"
VERSION = "1"
_CHUNK = 1 << 20


@dataclass
class Checkpoint:
    """What :func:`load` returns: the network, the trainer (None when none was saved) and the
    caller's metadata dict."""

    network: object
    trainer: object = None
    metadata: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.trainer.steps if self.trainer is not None else 0


def save(path, network, trainer=None, metadata: dict | None = None) -> None:
    """Write ``network`` (and ``trainer``'s state, when given) to ``path`` atomically."""
    if trainer is not None and trainer.network is not network:
        raise ValueError("save: the trainer trains another network than the one given")
    # weights and trainer state of one step, even while another thread trains
    weights, state = trainer.snapshot() if trainer is not None else (network.get_weights(), None)
    tensors = {f"model.{k}": _contiguous(v) for k, v in weights.items()}
    meta = {"juicepy.format": FORMAT, "juicepy.version": VERSION,
            "juicepy.network": definition_json(network, indent=None),
            "juicepy.metadata": json.dumps(metadata or {})}
    if trainer is not None:
        for param_path, buffers in state["optimizer"].items():
            for name, value in buffers.items():
                tensors[f"optimizer.{param_path}.{name}"] = _contiguous(value)
        meta["juicepy.trainer"] = json.dumps({
            "loss": {"type": type_name(LOSSES, "loss", trainer.loss), "config": trainer.loss.config()},
            "optimizer": {"type": type_name(OPTIMIZERS, "optimizer", trainer.optimizer),
                          "config": trainer.optimizer.hyperparams()},
            "batch_size": trainer.batch_size, "check_finite": trainer.check_finite,
            "step": state["step"], "dropout_step": state["dropout_step"]})
    meta["juicepy.sha256"] = _digest(tensors)
    payload = save_tensors(tensors, metadata=meta)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            _write(f, payload)


def _contiguous(value) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d buffer (BatchNorm's num_batches_tracked) into 1-d
    return np.array(value, order="C", copy=True)


def _write(f, payload: bytes) -> None:
    view = memoryview(payload)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())  # C order whatever the layout
    return h.hexdigest()


def read(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint file, verified: a truncated, corrupted or foreign
    file raises :class:`~juicepy.errors.CheckpointError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated ({len(data)} bytes; not even a safetensors header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise CheckpointError(f"{path}: truncated (header claims {header_len} bytes, file has {len(data) - 8})")
    try:
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: corrupted header ({err})") from err
    if meta.get("juicepy.format") != FORMAT:
        raise CheckpointError(f"{path}: not a juicepy checkpoint (no juicepy.format={FORMAT!r} in its metadata)")
    if meta.get("juicepy.version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('juicepy.version')!r}; this juicepy reads {VERSION}")
    try:
        tensors = load_tensors(data)
    except Exception as err:  # safetensors raises its own error type for bad offsets/lengths
        raise CheckpointError(f"{path}: truncated or corrupted tensor data ({err})") from err
    if _digest(tensors) != meta.get("juicepy.sha256"):
        raise CheckpointError(f"{path}: corrupted (the tensors do not match the checksum stored with them)")
    return tensors, meta


def load(path) -> Checkpoint:
    """The network (and trainer, when saved) from a checkpoint written by :func:`save`.

    Weights must match the definition exactly: a missing weight, an unused one or a shape
    mismatch is a :class:`~juicepy.errors.WeightsError`. The network is backend-free: run it
    or train it on any backend.
    """
    tensors, meta = read(path)
    try:
        network = build_network(meta["juicepy.network"])
    except KeyError:
        raise CheckpointError(f"{path}: no network definition in the checkpoint") from None
    except DefinitionError as err:
        raise DefinitionError(f"{path}: {err}") from err
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_weights(path, network, weights)
    network.set_weights(weights, strict=True)
    metadata = json.loads(meta.get("juicepy.metadata", "{}"))
    trainer = None
    if "juicepy.trainer" in meta:
        trainer = _rebuild_trainer(path, network, json.loads(meta["juicepy.trainer"]), tensors)
    elif any(k.startswith("optimizer.") for k in tensors):
        raise CheckpointError(f"{path}: optimizer tensors without trainer settings")
    return Checkpoint(network, trainer, metadata)


def _check_weights(path, network, weights: dict) -> None:
    missing = [k for k in network.params if k not in weights]
    unused = [k for k in weights if k not in network.params]
    if missing:
        raise WeightsError(f"{path}: missing weight(s) {', '.join(missing)}")
    if unused:
        raise WeightsError(f"{path}: weight(s) {', '.join(unused)} match no param of the network; "
                           f"params: {', '.join(network.params)}")
    for k, v in weights.items():
        if tuple(v.shape) != network.params[k].shape:
            raise WeightsError(f"{path}: weight {k!r} has shape {tuple(v.shape)}, the network expects "
                               f"{network.params[k].shape}")


def _rebuild_trainer(path, network, settings: dict, tensors: dict):
    from ..train.trainer import Trainer

    loss = lookup(LOSSES, "loss", settings["loss"]["type"])(**settings["loss"]["config"])
    optimizer = lookup(OPTIMIZERS, "optimizer", settings["optimizer"]["type"])(**settings["optimizer"]["config"])
    trainer = Trainer(network, loss, optimizer, batch_size=settings["batch_size"],
                      check_finite=settings["check_finite"])
    state = {"step": settings["step"], "dropout_step": settings["dropout_step"], "optimizer": {}}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            param_path, name = key[len("optimizer."):].rsplit(".", 1)
            state["optimizer"].setdefault(param_path, {})[name] = value
    try:
        trainer.load_state_dict(state)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    return trainer
