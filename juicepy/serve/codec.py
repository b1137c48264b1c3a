"""Request bodies to input arrays and outputs back to response bodies, in the request's form.

- JSON: the rows as nested lists, or ``{"inputs": rows}``; a network with several inputs takes
  a list with one such array per input. The answer has the same form: nested lists, or
  ``{"outputs": ...}`` (a list of arrays where the network has several outputs).
- .npy (``Content-Type: application/x-npy`` or ``application/octet-stream``): one array of
  rows in the network's dtype; the answer is an .npy of the outputs. Networks with one input
  and one output only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

JSON_TYPE = "application/json"
NPY_TYPES = ("application/x-npy", "application/octet-stream")
NPY_MAGIC = b"\x93NUMPY"


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass
class Decoded:
    inputs: list  # one array per network input, rows first
    form: str  # "list", "object" or "npy": how to answer


def decode(body: bytes, content_type: str | None, n_inputs: int, n_outputs: int, dtype) -> Decoded:
    media = (content_type or "").split(";")[0].strip().lower()
    if media in NPY_TYPES or (not media and body.startswith(NPY_MAGIC)):
        return Decoded([_npy_array(body, n_inputs, n_outputs)], "npy")
    if media in (JSON_TYPE, "") or media.endswith("+json"):
        return _json_inputs(body, n_inputs, dtype)
    raise BadRequest(415, f"unsupported Content-Type {content_type!r}; send {JSON_TYPE} "
                          f"(nested lists or {{\"inputs\": ...}}) or application/x-npy (an .npy file)")


def _npy_array(body: bytes, n_inputs: int, n_outputs: int) -> np.ndarray:
    if n_inputs != 1 or n_outputs != 1:
        raise BadRequest(415, f"this network takes {n_inputs} input(s) and gives {n_outputs} output(s); "
                              f".npy bodies carry one array each way, send JSON {{\"inputs\": ...}}")
    try:
        # the dtype is checked against the network's, without casting, like Network.transform
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise BadRequest(400, f"malformed .npy body ({err})") from None


def _json_inputs(body: bytes, n_inputs: int, dtype) -> Decoded:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"malformed JSON body ({err})") from None
    except RecursionError:
        raise BadRequest(400, "malformed JSON body (nested too deeply)") from None
    form = "list"
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"inputs"})
        if "inputs" not in doc or unknown:
            raise BadRequest(400, "a JSON object body must be {\"inputs\": rows}"
                                  + (f"; unknown keys: {', '.join(unknown)}" if unknown else "; no \"inputs\" key"))
        doc, form = doc["inputs"], "object"
    if n_inputs == 1:
        return Decoded([_json_array(doc, "inputs", dtype)], form)
    if not isinstance(doc, list) or len(doc) != n_inputs:
        got = f"a list of {len(doc)}" if isinstance(doc, list) else type(doc).__name__
        raise BadRequest(400, f"this network takes {n_inputs} inputs: send a list of {n_inputs} arrays, got {got}")
    return Decoded([_json_array(x, f"inputs[{i}]", dtype) for i, x in enumerate(doc)], form)


def _json_array(value, name: str, dtype) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nesting
        raise BadRequest(400, f"{name}: not a rectangular array of numbers ({err})") from None
    if array.dtype.kind not in "iuf":
        raise BadRequest(400, f"{name}: expected numbers (dtype {np.dtype(dtype)}), got "
                              f"{_kind_name(array)}")
    return array.astype(dtype)


def _kind_name(array: np.ndarray) -> str:
    names = {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed values or nulls"}
    return names.get(array.dtype.kind, f"dtype {array.dtype}")


def encode(outputs: list, form: str) -> tuple[bytes, str]:
    """(body, content type) of ``outputs`` in the form the request came in."""
    if form == "npy":  # decode() let only one-output networks answer in .npy
        buf = io.BytesIO()
        np.save(buf, outputs[0], allow_pickle=False)
        return buf.getvalue(), NPY_TYPES[0]
    values = [out.tolist() for out in outputs]
    value = values[0] if len(values) == 1 else values
    doc = {"outputs": value} if form == "object" else value
    return json.dumps(doc).encode(), JSON_TYPE


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()
