"""Checkpoints: one safetensors file holding a network's definition, weights and, optionally,
the trainer (loss, optimizer and its per-param state, step, dropout counter).

Layout (readable with any safetensors tool):
- tensors ``model.<param path>``: every param and buffer (PyTorch layouts);
- tensors ``optimizer.<param path>.<state>``: per-param optimizer state with torch's names
  (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer);
- header metadata ``juicepy.network``: the JSON definition (see :mod:`juicepy.io.definition`),
  ``juicepy.trainer``: JSON of the trainer's settings and counters, ``juicepy.metadata``: the
  caller's JSON extras, ``juicepy.sha256``: a digest of every tensor and every other metadata
  entry, so a flipped byte anywhere is caught, not loaded.

The file is written to a temporary file beside the target, fsynced and renamed over it, so a
failed save never clobbers the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from .. import init as initializers
from ..errors import ArgumentError, CheckpointDefinitionError, CheckpointError, CheckpointWeightsError, DefinitionError, WeightsError
from .. import arguments
from ..arguments import describe
from .atomic import atomic_path
from .definition import build_network, definition_json
from .registry import LOSSES, OPTIMIZERS, lookup, type_name

FORMAT = "juicepy.checkpoint"
VERSION = "2"  # 2: the checksum covers the header metadata too
READABLE = ("1", "2")  # version 1 files (checksum over the tensors only) still load
_CHUNK = 1 << 20
# weight values a definition may ask for beyond those its file holds: a small mismatch is then
# reported by name (missing weight, wrong shape) after the build, a huge one before it
_SLACK = 1 << 20


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
    from ..net.network import Network
    from ..train.trainer import Trainer

    arguments.instance("save", "network", network, Network, "a juicepy.Network")
    if trainer is not None:
        arguments.instance("save", "trainer", trainer, Trainer, "a juicepy.train.Trainer or None")
    if trainer is not None and trainer.network is not network:
        raise ValueError("save: the trainer trains another network than the one given")
    extras = _metadata_json(metadata)
    # weights and trainer state of one step, even while another thread trains
    weights, state = trainer.snapshot() if trainer is not None else (network.get_weights(), None)
    tensors = {f"model.{k}": _contiguous(v) for k, v in weights.items()}
    meta = {"juicepy.format": FORMAT, "juicepy.version": VERSION,
            "juicepy.network": definition_json(network, indent=None),
            "juicepy.metadata": extras}
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
    meta["juicepy.sha256"] = _digest(tensors, meta)
    payload = save_tensors(tensors, metadata=meta)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            _write(f, payload)


def _metadata_json(metadata) -> str:
    """The caller's metadata as JSON that loads back as the same dict, or an ArgumentError."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise ArgumentError(f"save: metadata must be a dict of JSON values, got {describe(metadata)}")
    odd = [k for k in metadata if not isinstance(k, str)]
    if odd:  # JSON would turn them into strings: the loaded dict would differ
        raise ArgumentError(f"save: metadata keys must be strings, got {describe(odd[0])}")
    try:
        return json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"save: metadata is not JSON ({err})") from err


def _contiguous(value) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d buffer (BatchNorm's num_batches_tracked) into 1-d
    return np.array(value, order="C", copy=True)


def _write(f, payload: bytes) -> None:
    view = memoryview(payload)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def _digest(tensors: dict, meta: dict | None = None) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and every metadata entry but the
    digest itself, so a flipped bit anywhere in a file is caught."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())  # C order whatever the layout
    if meta is not None:
        h.update(json.dumps(sorted((k, v) for k, v in meta.items() if k != "juicepy.sha256")).encode())
    return h.hexdigest()


def read(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint file, verified: a truncated, corrupted or foreign
    file raises :class:`~juicepy.errors.CheckpointError` naming it."""
    data = read_file(path)
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupted header ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted header (a JSON {type(header).__name__}, not an object)")
    meta = header.get("__metadata__")
    if meta is None:
        raise CheckpointError(f"{path}: not a juicepy checkpoint (no __metadata__ in its header)")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: corrupted header (__metadata__ must be an object of strings, "
                              f"got {_brief(meta)})")
    if meta.get("juicepy.format") != FORMAT:
        raise CheckpointError(f"{path}: not a juicepy checkpoint (no juicepy.format={FORMAT!r} in its metadata)")
    version = meta.get("juicepy.version")
    if version not in READABLE:
        raise CheckpointError(f"{path}: checkpoint version {version!r}; this juicepy reads "
                              f"{', '.join(READABLE)}")
    try:
        tensors = load_tensors(data)
    except Exception as err:  # safetensors raises its own error type for bad offsets/lengths
        raise CheckpointError(f"{path}: truncated or corrupted tensor data ({err})") from err
    covered = meta if version != "1" else None  # version 1 files carry a checksum of the tensors only
    if _digest(tensors, covered) != meta.get("juicepy.sha256"):
        raise CheckpointError(f"{path}: corrupted (the {'header and ' if covered else ''}tensors do not "
                              f"match the checksum stored with them)")
    return tensors, meta


def read_file(path, what: str = "checkpoint") -> bytes:
    """The whole safetensors file, once its 8-byte header length is known to fit in it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated ({len(head)} bytes; not even a safetensors header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: truncated (header claims {header_len} bytes, file has {size - 8})")
            return head + f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a {what} file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the {what} ({err.strerror or err})") from err


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_object(path, meta: dict, key: str, default: str | None = None) -> dict:
    """A JSON-object field of the header metadata, or a CheckpointError naming it."""
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"{path}: no {key} in the checkpoint's metadata")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: {key} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {key} must be a JSON object, got {_brief(value)}")
    return value


def load(path) -> Checkpoint:
    """The network (and trainer, when saved) from a checkpoint written by :func:`save`.

    Weights must match the definition exactly: a missing weight, an unused one, a shape or
    dtype mismatch is a :class:`~juicepy.errors.CheckpointWeightsError` (both a CheckpointError
    and a WeightsError). The network is built without running its initialisers and may not
    allocate more weight values than the file holds, so a small file describing a huge network
    is refused before the network is allocated (beyond about 4 MB of slack). The network is backend-free: run it or train it
    on any backend.
    """
    tensors, meta = read(path)
    definition = _json_object(path, meta, "juicepy.network")
    metadata = _json_object(path, meta, "juicepy.metadata", default="{}")
    settings = _json_object(path, meta, "juicepy.trainer") if "juicepy.trainer" in meta else None
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}

    def refuse(shape, size, left):
        raise CheckpointDefinitionError(f"{path}: the network definition needs a param of shape {shape} ({size:,} values) "
                              f"where the file holds only {left:,} more weight values; the definition and the "
                              f"weights do not match")

    try:
        with initializers.values_from_file(sum(v.size for v in weights.values()) + _SLACK, refuse):
            network = build_network(definition)
    except CheckpointError:
        raise
    except DefinitionError as err:
        raise CheckpointDefinitionError(f"{path}: juicepy.network: {err}") from err
    _check_weights(path, network, weights)
    network.set_weights(weights, strict=True)
    trainer = None
    if settings is not None:
        trainer = _rebuild_trainer(path, network, settings, tensors)
    elif any(k.startswith("optimizer.") for k in tensors):
        raise CheckpointError(f"{path}: optimizer tensors without trainer settings")
    return Checkpoint(network, trainer, metadata)


def _check_weights(path, network, weights: dict) -> None:
    missing = [k for k in network.params if k not in weights]
    unused = [k for k in weights if k not in network.params]
    if missing:
        raise CheckpointWeightsError(f"{path}: missing weight(s) {', '.join(missing)}")
    if unused:
        raise CheckpointWeightsError(f"{path}: weight(s) {', '.join(unused)} match no param of the network; "
                                     f"params: {', '.join(network.params)}")
    for k, v in weights.items():
        param = network.params[k]
        if tuple(v.shape) != param.shape:
            raise CheckpointWeightsError(f"{path}: weight {k!r} has shape {tuple(v.shape)}, the network expects "
                                         f"{param.shape}")
        if v.dtype != param.dtype:
            raise CheckpointWeightsError(f"{path}: weight {k!r} has dtype {v.dtype}, the network expects "
                                         f"{param.dtype}")


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


_TRAINER_FIELDS = {
    "loss": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str) and isinstance(v.get("config"), dict),
             'an object {"type": name, "config": object}'),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str)
                  and isinstance(v.get("config"), dict), 'an object {"type": name, "config": object}'),
    "batch_size": (lambda v: _is_count(v, 1), "an integer >= 1"),
    "check_finite": (lambda v: isinstance(v, bool), "true or false"),
    "step": (lambda v: _is_count(v, 0), "an integer >= 0"),
    "dropout_step": (lambda v: _is_count(v, 0), "an integer >= 0"),
}


def _rebuild_trainer(path, network, settings: dict, tensors: dict):
    from ..train.trainer import Trainer

    for key, (valid, expected) in _TRAINER_FIELDS.items():
        if key not in settings:
            raise CheckpointError(f"{path}: juicepy.trainer has no field {key!r} ({expected})")
        if not valid(settings[key]):
            raise CheckpointError(f"{path}: juicepy.trainer field {key!r} must be {expected}, "
                                  f"got {_brief(settings[key])}")
    parts = {}
    for key, table in (("loss", LOSSES), ("optimizer", OPTIMIZERS)):
        spec = settings[key]
        try:
            parts[key] = lookup(table, key, spec["type"])(**spec["config"])
        except (DefinitionError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: juicepy.trainer field {key!r} ({_brief(spec)}) does not "
                                  f"build: {err}") from err
    state = {"step": settings["step"], "dropout_step": settings["dropout_step"], "optimizer": {}}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            param_path, _, name = key[len("optimizer."):].rpartition(".")
            if not param_path:
                raise CheckpointError(f"{path}: optimizer tensor {key!r} names no param (optimizer.<param>.<state>)")
            state["optimizer"].setdefault(param_path, {})[name] = value
    try:
        trainer = Trainer(network, parts["loss"], parts["optimizer"], batch_size=settings["batch_size"],
                          check_finite=settings["check_finite"])
        trainer.load_state_dict(state)
    except WeightsError as err:
        raise CheckpointWeightsError(f"{path}: {err}") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: juicepy.trainer does not fit the network: {err}") from err
    return trainer
