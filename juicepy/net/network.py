"""Network: the static graph of a model plus its params, independent of any backend or batch size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .. import arguments
from ..backends.base import host_all_finite
from ..errors import ArgumentError, DTypeError, NonFiniteError, ShapeError, WeightsError
from .context import Context
from .descriptor import GraphBuilder
from .replay import GraphReplay, graphs_wanted

#: every dtype some backend computes in (each lists its own in Backend.dtypes)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
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
    if isinstance(input_shape, (tuple, list)) and len(input_shape) and all(
            isinstance(s, (tuple, list)) for s in input_shape):
        return [arguments.shape("Network", "input_shape", s) for s in input_shape]
    return [arguments.shape("Network", "input_shape", input_shape)]


class Network:
    """A model's static graph: built once from a root layer and the input unit shape(s).

    Shapes are inferred layer by layer from ``input_shape`` (without the batch axis); a
    mismatch raises :class:`~juicepy.errors.ShapeError` naming the layer path.
    """

    max_batch = 1024  # rows per inference context in transform()
    #: inference contexts kept per backend for a network with a layer that mixes rows (which
    #: must run every request size exactly); the least recently used one goes first
    max_exact_contexts = 4
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
        if not hasattr(root, "expand"):
            raise ArgumentError(f"Network: root must be a Layer, got {arguments.describe(root)}")
        self.root = root
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ArgumentError(f"Network: dtype must be a NumPy float dtype such as np.float32, got "
                                f"{arguments.describe(dtype)}") from None
        if self.dtype not in DTYPES:
            raise DTypeError(f"network dtype must be one of {', '.join(d.name for d in DTYPES)} (the dtypes "
                             f"juicepy's backends compute in), got {self.dtype.name}")
        self.seed = arguments.integer("Network", "seed", seed, 0)
        graph = GraphBuilder(self.dtype, np.random.default_rng(self.seed))
        shapes = _as_shape_list(input_shape)
        self.inputs = [graph.junction(shape, "<input>", d)
                       for shape, d in zip(shapes, _input_dtypes(input_dtype, len(shapes), self.dtype))]
        self.outputs = list(root.expand(graph, "", self.inputs))
        self._finish(graph)

    def _finish(self, graph: GraphBuilder) -> None:
        self.junctions = graph.junctions
        self.nodes = graph.nodes
        self.params = graph.params  # dotted path -> LearnableParams, each distinct param once
        self._nodes_by_path = {n.path: n for n in self.nodes}
        # (layer input index, node) of every placement reading each integer network input
        self._index_readers = {j.index: [(k, n) for n in self.nodes for k, i in enumerate(n.descriptor.inputs)
                                         if i is j] for j in self.inputs if j.dtype.kind == "i"}
        self._groups: dict = {}
        # (backend, capacity) -> inference Context / GraphReplay of it, least recently used first
        self._contexts: OrderedDict = OrderedDict()
        self._replays: dict = {}
        # eval mode never mixes rows: a request may run padded inside a bigger context
        self._rows_independent = all(getattr(n.layer, "rows_independent", True) for n in self.nodes)
        self._lock = threading.RLock()

    @property
    def lock(self):
        """Held by whatever reads or writes the params as a whole (training steps, inference,
        get/set_weights, checkpoint snapshots), so none of them sees half a step."""
        return self._lock

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
            if self.dtype not in [np.dtype(d) for d in backend.dtypes]:
                raise DTypeError(f"network dtype {self.dtype.name}: the {backend.name} backend computes in "
                                 f"{', '.join(np.dtype(d).name for d in backend.dtypes)} only; build the "
                                 f"network with dtype=np.{np.dtype(backend.dtypes[0]).name} or use another backend")
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

    def placement(self, backend):
        """The current placement of the trainable params on ``backend`` (their flat blocks),
        None before :meth:`materialize` or after :meth:`release`: a context made under
        another placement no longer holds the params."""
        return self._groups.get(backend)

    def param_groups(self, backend) -> list[ParamGroup]:
        self.materialize(backend)
        return self._groups[backend]

    def release(self, backend) -> None:
        """Drop this network's contexts and param copies on ``backend`` (host keeps the data)."""
        with self._lock:
            self._contexts = OrderedDict((k, v) for k, v in self._contexts.items() if k[0] is not backend)
            self._replays = {k: v for k, v in self._replays.items() if k[0] is not backend}
            for p in self.params.values():
                p.release(backend)
            self._groups.pop(backend, None)
            backend.release()

    # ------------------------------------------------------------ contexts
    def context(self, backend, batch_size: int, training: bool = False, input_grads: bool = False) -> Context:
        """A new context (all buffers for ``batch_size`` rows on ``backend``)."""
        from ..backends import backend as get_backend

        return Context(self, get_backend(backend), batch_size, training=training, input_grads=input_grads)

    def check_inputs(self, inputs, backend=None, batch_size: int | None = None,
                     check_finite: bool = False) -> list:
        """Inputs as a list, validated against the input unit shapes and dtype.

        One input is an array; several are a list or tuple of arrays. A nested list of numbers
        (``x.tolist()``) is refused rather than read as a list of inputs."""
        given = inputs
        if len(self.inputs) == 1 and not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        inputs = list(inputs)
        names = ["input"] if len(self.inputs) == 1 else [f"input {i}" for i in range(len(self.inputs))]
        for name, x, junction in zip(names, inputs, self.inputs):
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):  # ndarray, device array, tensor
                shape = ", ".join(["batch", *map(str, junction.unit_shape)])
                what = given if len(self.inputs) == 1 else x  # a list of rows, not a list of inputs
                raise ArgumentError(f"{name} must be an array of shape ({shape}) and dtype {self.dtype}, got "
                                    f"{arguments.describe(what)}; convert with np.asarray(x, dtype=np.{self.dtype.name})")
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"network takes {len(self.inputs)} input(s), got {len(inputs)}")
        checked = []
        for name, x, junction in zip(names, inputs, self.inputs):
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
        """Inference (eval mode) on any number of rows; returns host array(s).

        Requests run in contexts of power-of-two capacities up to ``max_batch`` rows, so serving
        every size from 1 to N keeps at most 2N rows of buffers, not one context per size. A
        pass of r rows runs in the context of the next power of two (the rest zero rows) when r is
        more than 1.5 times the power of two below it, else the lower power of two runs first and
        the rest follows: at most a third of the rows computed are padding."""
        from ..backends import backend as get_backend

        backend = get_backend(backend)
        check_finite = arguments.flag("transform", "check_finite", check_finite)
        max_batch = arguments.integer("Network", "max_batch", self.max_batch, 1)
        xs = self.check_inputs(inputs, backend, check_finite=check_finite)
        n = int(xs[0].shape[0])
        if any(int(x.shape[0]) != n for x in xs):
            raise ShapeError(f"inputs have different row counts: {[x.shape[0] for x in xs]}")
        results = [np.empty((n,) + j.unit_shape, self.dtype) for j in self.outputs]
        start = 0
        while start < n:
            rows = min(max_batch, n - start)
            low = 1 << (rows.bit_length() - 1)  # the largest power of two <= rows
            if self._rows_independent and low < rows <= low + low // 2:
                rows = low  # padding the pass to 2 * low would be mostly padding: run low rows first
            with self._lock:
                ctx = self._inference_context(backend, rows, max_batch)
                for junction, x in zip(self.inputs, xs):
                    buf = ctx.data(junction)
                    _write_rows(backend, buf, x[start:start + rows])
                    if rows < ctx.batch_size:
                        backend.fill(_rows(backend, buf, rows, ctx.batch_size), 0.0)
                self._forward(backend, ctx)
                for out, junction in zip(results, self.outputs):
                    out[start:start + rows] = backend.to_host(_rows(backend, ctx.data(junction), 0, rows))
            start += rows
        return results[0] if len(results) == 1 else results

    def inference_capacities(self, backend) -> list[int]:
        """Row capacities of the inference contexts transform() keeps on ``backend``."""
        with self._lock:
            return [capacity for b, capacity in self._contexts if b is backend]

    def _forward(self, backend, ctx: Context) -> None:
        """ctx.forward(), replayed from a recorded graph from the second pass on where it can be."""
        if not graphs_wanted(self.graphs, backend):
            ctx.forward()
            return
        key = (backend, ctx.batch_size)
        rep = self._replays.get(key)
        if rep is None:
            rep = self._replays[key] = GraphReplay(self, backend, training=False)
        if rep.failure is None and rep.eager_runs > 0 and (rep.ready(()) or rep.record((), ctx.forward)):
            rep.replay()
            return
        rep.eager_runs += 1  # the first pass fills workspaces and compiles kernels
        ctx.forward()

    def _inference_context(self, backend, rows: int, max_batch: int) -> Context:
        if self._rows_independent:
            capacity = min(1 << (rows - 1).bit_length(), max_batch)  # rows <= max_batch
        else:
            capacity = rows
        key = (backend, capacity)
        ctx = self._contexts.pop(key, None)
        if ctx is None:
            ctx = Context(self, backend, capacity, training=False)
        self._contexts[key] = ctx  # now the most recently used
        if not self._rows_independent:
            kept = [k for k in self._contexts if k[0] is backend]
            for old in kept[:-self.max_exact_contexts]:
                del self._contexts[old]
                self._replays.pop(old, None)
        return ctx

    # -------------------------------------------------------------- weights
    def get_weights(self, keys=None) -> dict:
        """Host copies of params and buffers by dotted path (PyTorch layouts); ``keys``: a list
        of paths (default: all)."""
        if isinstance(keys, (str, bytes)) or not (keys is None or hasattr(keys, "__iter__")):
            raise ArgumentError(f"get_weights: keys must be a list of param paths, got {arguments.describe(keys)}; "
                                f"for one param pass keys=[{keys!r}]")
        names = list(self.params) if keys is None else list(keys)
        for k in names:
            if k not in self.params:
                raise WeightsError(f"get_weights: unknown param {k!r}; known: {', '.join(self.params)}")
        with self._lock:  # all of one step, never half of one
            return {k: self.params[k].numpy() for k in names}

    def set_weights(self, weights: dict, strict: bool = False) -> None:
        """Update the params that ``weights`` names (all checked before any is written).

        Values may be NumPy arrays or PyTorch tensors, so an equivalent torch model's
        ``state_dict()`` loads as is. ``strict=True`` also requires every param to be named.
        """
        if not hasattr(weights, "items"):
            raise ArgumentError(f"set_weights: weights must be a dict of param path -> array, got "
                                f"{arguments.describe(weights)}")
        strict = arguments.flag("set_weights", "strict", strict)
        staged = {}
        for key, value in weights.items():
            if key not in self.params:
                raise WeightsError(f"set_weights: unknown param {key!r}; known: {', '.join(self.params)}")
            array = to_numpy(value, f"set_weights: {key!r}")
            param = self.params[key]
            if array.shape != param.shape:
                raise WeightsError(f"set_weights: {key!r} expects shape {param.shape}, got {array.shape}")
            if array.dtype.kind not in "fiub":
                raise WeightsError(f"set_weights: {key!r} expects a numeric array, got dtype {array.dtype}")
            try:
                staged[key] = param.coerced(array)
            except ValueError as err:
                raise WeightsError(f"set_weights: {key!r} {err}") from None
        if strict:
            missing = [k for k in self.params if k not in staged]
            if missing:
                raise WeightsError(f"set_weights: missing params {', '.join(missing)}")
        with self._lock:
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


def _rows(backend, buf, start: int, stop: int):
    """A view of rows start..stop of a context buffer."""
    row = buf.size // buf.shape[0]
    return backend.flat_view(backend.reshape(buf, (buf.size,)), start * row, (stop - start,) + tuple(buf.shape[1:]))


def _write_rows(backend, buf, x) -> None:
    """Copy x (host or this backend's array) into the first rows of ``buf``."""
    dst = buf if x.shape[0] == buf.shape[0] else _rows(backend, buf, 0, x.shape[0])
    if backend.is_array(x):
        backend.copy(x, dst)
    else:
        backend.write(dst, x)


def to_numpy(value, name: str = "value") -> np.ndarray:
    """A host array of a NumPy array or a PyTorch tensor (bfloat16 widened exactly to float32)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except TypeError as err:  # float8 and other dtypes NumPy cannot hold
            raise WeightsError(f"{name}: a tensor of {tensor.dtype} has no NumPy equivalent; convert it "
                               f"first, e.g. tensor.float() ({err})") from None
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
