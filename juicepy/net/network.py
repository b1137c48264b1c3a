"""Network: the static graph of a model plus its params, independent of any backend or batch size."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..backends.base import host_all_finite
from ..errors import DTypeError, NonFiniteError, ShapeError, WeightsError
from .context import Context
from .descriptor import GraphBuilder
from .replay import GraphReplay, graphs_wanted

_ALIGN = 64  # elements: params in a flat block start on 256-byte boundaries (float32)


@dataclass(eq=False)
class ParamGroup:
    """Trainable params stored contiguously in one flat array on one backend."""

    params: list
    data: object
    size: int
    offsets: list


def _input_dtypes(input_dtype, count: int, dtype: np.dtype) -> list:
    """The junction dtype of each input: the network's float type, or int32 for indices."""
    given = input_dtype if isinstance(input_dtype, (list, tuple)) else [input_dtype] * count
    if len(given) != count:
        raise ShapeError(f"input_dtype lists {len(given)} dtype(s) for {count} input(s)")
    dtypes = []
    for i, d in enumerate(given):
        d = dtype if d is None else np.dtype(d)
        if d.kind in "iu":
            dtypes.append(np.dtype(np.int32))  # indices travel as int32 on every backend
        elif d == dtype:
            dtypes.append(d)
        else:
            raise DTypeError(f"input {i}: input_dtype must be an integer type (indices) or the network's "
                             f"{dtype}, got {d}")
    return dtypes


def _as_shape_list(input_shape) -> list[tuple]:
    if len(input_shape) and all(isinstance(s, (tuple, list)) for s in input_shape):
        return [tuple(int(d) for d in s) for s in input_shape]
    return [tuple(int(d) for d in input_shape)]


class Network:
    """A model's static graph: built once from a root layer and the input unit shape(s).

    Shapes are inferred layer by layer from ``input_shape`` (without the batch axis); a
    mismatch raises :class:`~juicepy.errors.ShapeError` naming the layer path.
    """

    max_batch = 1024  # rows per inference context in transform()
    #: replay each inference context's forward pass as a recorded graph where the backend
    #: captures them (CUDA); ``$JUICEPY_GRAPHS=0`` turns it off everywhere
    graphs = True

    def __init__(self, root=None, input_shape=None, dtype=np.float32, seed: int = 0, *,
                 input_dtype=None, inputs=None, outputs=None):
        if inputs is not None or outputs is not None:  # the functional builder
            if root is not None or input_shape is not None or inputs is None or outputs is None:
                raise TypeError("Network takes either (root, input_shape) or inputs= and outputs= "
                                "(symbolic values from juicepy.Input)")
            root = _functional_root(inputs, outputs)
            input_shape = root.input_shapes
            input_dtype = root.input_dtypes
        elif root is None or input_shape is None:
            raise TypeError("Network needs a root layer and the input unit shape (or inputs=, outputs=)")
        self.root = root
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise DTypeError(f"network dtype must be a float type, got {self.dtype}")
        self.seed = int(seed)
        graph = GraphBuilder(self.dtype, np.random.default_rng(self.seed))
        shapes = _as_shape_list(input_shape)
        self.inputs = [graph.junction(shape, "<input>", d)
                       for shape, d in zip(shapes, _input_dtypes(input_dtype, len(shapes), self.dtype))]
        self.outputs = list(root.expand(graph, "", self.inputs))
        self._finish(graph)

    @classmethod
    def from_graph(cls, root, graph: GraphBuilder, inputs, outputs, seed: int = 0) -> "Network":
        """A network over a graph someone else expanded (the functional builder)."""
        self = cls.__new__(cls)
        self.root = root
        self.dtype = graph.dtype
        self.seed = int(seed)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._finish(graph)
        return self

    def _finish(self, graph: GraphBuilder) -> None:
        self.junctions = graph.junctions
        self.nodes = graph.nodes
        self.params = graph.params  # dotted path -> LearnableParams, each distinct param once
        self._nodes_by_path = {n.path: n for n in self.nodes}
        # (layer input index, node) of every placement reading each integer network input
        self._index_readers = {j.index: [(k, n) for n in self.nodes for k, i in enumerate(n.descriptor.inputs)
                                         if i is j] for j in self.inputs if j.dtype.kind == "i"}
        self._groups: dict = {}
        self._contexts: dict = {}
        self._replays: dict = {}  # (backend, rows) -> GraphReplay of that inference context
        self._lock = threading.RLock()

    # -------------------------------------------------------------- shapes
    @property
    def input_shape(self) -> tuple:
        return self.inputs[0].unit_shape

    @property
    def output_shape(self) -> tuple:
        return self.outputs[0].unit_shape

    @property
    def input_shapes(self) -> list:
        return [j.unit_shape for j in self.inputs]

    @property
    def input_dtypes(self) -> list:
        """Each input's dtype: the network's float type, or int32 for indices."""
        return [j.dtype for j in self.inputs]

    @property
    def output_shapes(self) -> list:
        return [j.unit_shape for j in self.outputs]

    def node(self, path: str):
        try:
            return self._nodes_by_path[path]
        except KeyError:
            raise KeyError(f"no layer at path {path!r}; layers: {', '.join(self._nodes_by_path)}") from None

    def param(self, name: str):
        try:
            return self.params[name]
        except KeyError:
            raise WeightsError(f"no param {name!r}; params: {', '.join(self.params)}") from None

    def trainable_params(self) -> dict:
        return {k: p for k, p in self.params.items() if p.trainable}

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(p.size for p in self.params.values() if p.trainable or not trainable_only)

    # ------------------------------------------------------- param storage
    def materialize(self, backend) -> None:
        """Put every param on ``backend``; trainable ones new there share one flat array so
        optimizers update them with a single fused op."""
        with self._lock:
            if backend in self._groups:
                return
            groups = []
            trainable = [p for p in self.params.values() if p.trainable]
            fresh = [p for p in trainable if not p.has_storage(backend)]
            for dtype in sorted({p.dtype.str for p in fresh}):
                members = [p for p in fresh if p.dtype.str == dtype]
                offsets, size = [], 0
                for p in members:
                    offsets.append(size)
                    size += -(-p.size // _ALIGN) * _ALIGN
                flat = backend.zeros((size,), np.dtype(dtype))  # zeroed gaps stay zero forever
                for p, off in zip(members, offsets):
                    p.attach(backend, backend.flat_view(flat, off, p.shape))
                groups.append(ParamGroup(members, flat, size, offsets))
            for p in trainable:
                if p not in fresh:  # shared with a network that placed it already
                    groups.append(ParamGroup([p], backend.reshape(p.on(backend), (p.size,)), p.size, [0]))
            for p in self.params.values():
                if not p.trainable:
                    p.on(backend)
            self._groups[backend] = groups

    def param_groups(self, backend) -> list[ParamGroup]:
        self.materialize(backend)
        return self._groups[backend]

    def release(self, backend) -> None:
        """Drop this network's contexts and param copies on ``backend`` (host keeps the data)."""
        with self._lock:
            self._contexts = {k: v for k, v in self._contexts.items() if k[0] is not backend}
            self._replays = {k: v for k, v in self._replays.items() if k[0] is not backend}
            for p in self.params.values():
                p.release(backend)
            self._groups.pop(backend, None)
            backend.release()

    # ------------------------------------------------------------ contexts
    def context(self, backend, batch_size: int, training: bool = False, input_grads: bool = False) -> Context:
        """A new context (all buffers for ``batch_size`` rows on ``backend``)."""
        return Context(self, backend, batch_size, training=training, input_grads=input_grads)

    def check_inputs(self, inputs, backend=None, batch_size: int | None = None,
                     check_finite: bool = False) -> list:
        """Inputs as a list, validated against the input unit shapes and dtype."""
        if len(self.inputs) == 1 and not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"network takes {len(self.inputs)} input(s), got {len(inputs)}")
        checked = []
        for i, (x, junction) in enumerate(zip(inputs, self.inputs)):
            name = "input" if len(self.inputs) == 1 else f"input {i}"
            on_device = backend is not None and backend.is_array(x)
            if not on_device:
                x = np.asarray(x)
            check_array(name, x, junction.unit_shape, junction.dtype, batch_size)
            if junction.dtype.kind == "i":
                checked.append(self._checked_indices(name, x, junction, backend, on_device))
                continue
            if check_finite:
                finite = backend.all_finite(x) if on_device else host_all_finite(x)
                if not finite:
                    raise NonFiniteError(f"{name}: contains NaN or Inf (the finite-input guard is on)")
            checked.append(x)
        return checked

    def _checked_indices(self, name, x, junction, backend, on_device):
        """Integer inputs: every layer reading them checks the values (an Embedding its range);
        host arrays come back as int32, the dtype the device buffers hold."""
        on_device = on_device and not isinstance(x, np.ndarray)  # NumPy's "device" arrays are host arrays
        if on_device and np.dtype(x.dtype) != junction.dtype:
            raise DTypeError(f"{name}: a device array of indices must be {junction.dtype}, got {x.dtype}")
        host = backend.to_host(x) if on_device else x
        for k, node in self._index_readers[junction.index]:
            node.layer.check_input_values(node.path, k, host)
        return x if on_device else host.astype(junction.dtype, copy=False)

    def transform(self, backend, inputs, check_finite: bool = False):
        """Inference (eval mode) on any number of rows; returns host array(s)."""
        from ..backends import backend as get_backend

        backend = get_backend(backend)
        xs = self.check_inputs(inputs, backend, check_finite=check_finite)
        n = int(xs[0].shape[0])
        if any(int(x.shape[0]) != n for x in xs):
            raise ShapeError(f"inputs have different row counts: {[x.shape[0] for x in xs]}")
        results = [np.empty((n,) + j.unit_shape, self.dtype) for j in self.outputs]
        start = 0
        while start < n:
            rows = min(self.max_batch, n - start)
            with self._lock:
                ctx = self._inference_context(backend, rows)
                ctx.set_inputs([x[start:start + rows] for x in xs])
                self._forward(backend, ctx)
                for out, junction in zip(results, self.outputs):
                    out[start:start + rows] = backend.to_host(ctx.data(junction))
            start += rows
        return results[0] if len(results) == 1 else results

    def _forward(self, backend, ctx: Context) -> None:
        """ctx.forward(), replayed from a recorded graph from the second pass on where it can be."""
        if not graphs_wanted(self.graphs, backend):
            ctx.forward()
            return
        key = (backend, ctx.batch_size)
        rep = self._replays.get(key)
        if rep is None:
            rep = self._replays[key] = GraphReplay(self, backend)
        if rep.failure is None and rep.eager_runs > 0 and (rep.ready(()) or rep.record((), ctx.forward)):
            rep.replay()
            return
        rep.eager_runs += 1  # the first pass fills workspaces and compiles kernels
        ctx.forward()

    def _inference_context(self, backend, rows: int) -> Context:
        key = (backend, rows)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = Context(self, backend, rows, training=False)
        return ctx

    # -------------------------------------------------------------- weights
    def get_weights(self, keys=None) -> dict:
        """Host copies of params and buffers by dotted path (PyTorch layouts)."""
        names = list(self.params) if keys is None else list(keys)
        for k in names:
            if k not in self.params:
                raise WeightsError(f"get_weights: unknown param {k!r}; known: {', '.join(self.params)}")
        return {k: self.params[k].numpy() for k in names}

    def set_weights(self, weights: dict, strict: bool = False) -> None:
        """Update the params that ``weights`` names (all checked before any is written).

        Values may be NumPy arrays or PyTorch tensors, so an equivalent torch model's
        ``state_dict()`` loads as is. ``strict=True`` also requires every param to be named.
        """
        staged = {}
        for key, value in weights.items():
            if key not in self.params:
                raise WeightsError(f"set_weights: unknown param {key!r}; known: {', '.join(self.params)}")
            array = to_numpy(value)
            param = self.params[key]
            if array.shape != param.shape:
                raise WeightsError(f"set_weights: {key!r} expects shape {param.shape}, got {array.shape}")
            if array.dtype.kind not in "fiub":
                raise WeightsError(f"set_weights: {key!r} expects a numeric array, got dtype {array.dtype}")
            staged[key] = array
        if strict:
            missing = [k for k in self.params if k not in staged]
            if missing:
                raise WeightsError(f"set_weights: missing params {', '.join(missing)}")
        for key, array in staged.items():
            self.params[key].set(array)

    # -------------------------------------------------------------- summary
    def summary(self) -> str:
        rows = [("path", "layer", "output shape", "params", "inputs from")]
        listed = set()
        for node in self.nodes:
            # a param shared with an earlier layer (tied or reused weights) is counted there
            fresh = [p for p in node.descriptor.params.values() if p.trainable and id(p) not in listed]
            listed.update(id(p) for p in node.descriptor.params.values())
            count = sum(p.size for p in fresh)
            shapes = ", ".join(str(s) for s in node.descriptor.output_shapes)
            sources = ", ".join(j.producer or "<root>" for j in node.descriptor.inputs)
            rows.append((node.path or "<root>", type(node.layer).__name__, shapes, f"{count:,}", sources))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        ints = [i for i, j in enumerate(self.inputs) if j.dtype.kind == "i"]
        lines.append(f"input {self.input_shapes}{f' (integer indices: input {ints})' if ints else ''}  output {self.output_shapes}  "
                     f"trainable params {self.num_params():,}  dtype {self.dtype}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Network {self.input_shapes} -> {self.output_shapes}, {len(self.nodes)} layers>"


def _functional_root(inputs, outputs):
    """The container of the functional builder's calls. The symbolic values make it themselves
    (``juicepy.layers.graph.Symbol.graph``), so net/ needs nothing from layers/."""
    first = outputs[0] if isinstance(outputs, (list, tuple)) and outputs else outputs
    make = getattr(first, "graph", None)
    if make is None:
        raise TypeError(f"Network outputs=: expected symbolic values (from juicepy.Input or a layer call), "
                        f"got {type(first).__name__}")
    return make(inputs, outputs)


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def check_array(name: str, x, unit_shape: tuple, dtype, batch_size: int | None = None) -> None:
    """Raise a clear error unless x is (batch, *unit_shape) of ``dtype``."""
    shape = tuple(x.shape)
    if len(shape) != len(unit_shape) + 1 or shape[1:] != tuple(unit_shape):
        raise ShapeError(f"{name}: expected shape (batch, {', '.join(map(str, unit_shape))}), got {shape}")
    if batch_size is not None and shape[0] != batch_size:
        raise ShapeError(f"{name}: expected a batch of {batch_size} rows, got {shape[0]}")
    if np.dtype(dtype).kind == "i":
        if np.dtype(x.dtype).kind not in "iu":
            raise DTypeError(f"{name}: expected integer indices, got dtype {np.dtype(x.dtype)}")
        return
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise DTypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {np.dtype(x.dtype)} "
                         f"(convert with x.astype(np.{np.dtype(dtype).name}))")
