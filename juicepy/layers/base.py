"""The Layer base class: static description (shapes, params) plus compute methods that get the
backend and a per-placement context on every call."""

from __future__ import annotations

from ..errors import DTypeError, ShapeError
from ..net.descriptor import GraphBuilder, Junction


class Layer:
    """A leaf layer. Subclasses override :meth:`infer_shape` (or :meth:`infer_shapes` for several
    inputs), :meth:`create_params` when they learn something, :meth:`compute_output` and
    :meth:`compute_gradients`.

    The backend is an argument of every compute call and is never stored. ``ctx`` is the
    :class:`~juicepy.net.context.NodeContext` of one placement of this layer: it hands out the
    input/output buffers, their gradients, param arrays and scratch space.
    """

    n_inputs = 1  # None: any number >= 1 (merge layers)
    #: True for layers that read integer indices (Embedding) instead of float values
    integer_input = False
    #: False when, in eval mode, an output row depends on other rows of the batch: transform()
    #: then runs each request size exactly instead of padded inside a bigger context
    rows_independent = True
    #: True when the output is always the input unchanged (Identity): a Context then gives the
    #: output junction the input's buffers and the compute methods find nothing to do
    output_is_input = False

    def __init__(self) -> None:
        self._built_for: tuple | None = None

    # --------------------------------------------------------------- building
    def __call__(self, *values, name: str | None = None):
        """Apply to symbolic values of the functional graph builder (``juicepy.Input``);
        ``name`` fixes this layer's path in the network (default: type name and a counter).
        The values record the call themselves (see :mod:`juicepy.layers.graph`)."""
        record = getattr(values[0], "record_call", None) if values else None
        if record is None:
            got = type(values[0]).__name__ if values else "no inputs"
            raise TypeError(f"{type(self).__name__}(...): expected a symbolic value (from juicepy.Input or a "
                            f"layer call), got {got}")
        return record(self, values, name)

    def expand(self, graph: GraphBuilder, path: str, inputs: list[Junction]) -> list[Junction]:
        in_shapes = [j.unit_shape for j in inputs]
        if self.n_inputs is None:
            if not in_shapes:
                raise ShapeError(f"{path or '<root>'}: {type(self).__name__} needs at least one input")
        elif len(in_shapes) != self.n_inputs:
            raise ShapeError(f"{path or '<root>'}: {type(self).__name__} takes {self.n_inputs} "
                             f"input(s), got {len(in_shapes)}")
        for j in inputs:
            if (j.dtype.kind in "iu") != self.integer_input:
                raise DTypeError(
                    f"{path or '<root>'}: {type(self).__name__} takes integer indices, got {j.dtype} values; "
                    f"declare the network input as integers (input_dtype=np.int64 or Input(..., dtype=np.int64))"
                    if self.integer_input else
                    f"{path or '<root>'}: {type(self).__name__} takes float values, got integer indices "
                    f"({j.dtype}); an Embedding turns indices into vectors")
        if self._built_for is None:
            out_shapes = [tuple(s) for s in self.infer_shapes(in_shapes, path)]
            self.create_params(in_shapes, graph)
            self._built_for = (in_shapes, out_shapes, graph.dtype)
        else:
            built_in, out_shapes, built_dtype = self._built_for
            if built_in != in_shapes:
                raise ShapeError(
                    f"{path or '<root>'}: {type(self).__name__} is shared and was built for input "
                    f"unit shape(s) {built_in}, got {in_shapes}")
            if built_dtype != graph.dtype:
                raise ShapeError(f"{path}: shared layer built for {built_dtype}, used with {graph.dtype}")
        return graph.add_node(self, path, inputs, out_shapes, self.params())

    def infer_shapes(self, input_shapes: list[tuple], path: str) -> list[tuple]:
        """Output unit shapes from the input unit shapes; raise ShapeError naming ``path``.
        Only checks and computes: params are made in :meth:`create_params`."""
        return [self.infer_shape(input_shapes[0], path)]

    def infer_shape(self, unit_shape: tuple, path: str) -> tuple:
        """:meth:`infer_shapes` for a layer with one input and one output."""
        return unit_shape

    def create_params(self, input_shapes: list[tuple], graph: GraphBuilder) -> None:
        """Make this layer's params for these (already checked) input unit shapes, drawing
        initial values from ``graph.rng`` in ``graph.dtype``. Called once, on the first placement."""

    def params(self) -> dict:
        """Local name -> LearnableParams (trainable params and non-trained buffers)."""
        return {}

    def check_input_values(self, path: str, index: int, values) -> None:
        """Refuse bad integer inputs (host array ``values`` of network input feeding input
        ``index`` of this layer) before anything changes: raise naming ``path``."""

    def training_state(self) -> list:
        """The params a training forward pass changes in place (BatchNorm's running statistics
        and batch counter). A training Context saves them before each step and puts them back
        when the step fails or is refused, so such a step changes nothing."""
        return []

    def capturable(self, training: bool) -> bool:
        """Whether a recorded graph of a pass (a training pass where ``training``) replays this
        layer as running it op by op would; a network holding a layer that says no runs op by op."""
        return True

    def step_counters(self) -> list:
        """Host-side counters (LearnableParams) each training pass adds one to (BatchNorm's
        num_batches_tracked): a replayed pass advances them as the pass op by op would."""
        return []

    def setup(self, backend, ctx) -> None:
        """Make per-placement buffers with ``ctx.make_buffer`` (called once per context)."""

    # -------------------------------------------------------------- computing
    def compute_output(self, backend, ctx) -> None:
        raise NotImplementedError(type(self).__name__)

    def compute_gradients(self, backend, ctx) -> None:
        raise NotImplementedError(type(self).__name__)

    # A layer may run the layers that consume its output in the same backend op (BatchNorm a
    # ReLU: one pass over the data instead of two; an inference Conv2d its BatchNorm2d and
    # ReLU). A Context fuses a placement with the next ones in the plan while each is the only
    # reader of the previous one's output, which is not a network output; the consumers'
    # compute methods are then not called, and the outputs inside the chain are not written
    # (the fused op writes the last consumer's).
    def fuses(self, consumers: tuple, training: bool) -> bool:
        """Whether :meth:`compute_output_fused` can run ``consumers`` (Layers, each reading the
        previous one's output, the first this one's) too, in a training context or not. A
        consumer may read one more input, which the Context has written before the chain runs
        (a residual block's Add: its skip input)."""
        return False

    def compute_output_fused(self, backend, ctx, consumers) -> None:
        """compute_output of this layer and then of the consumers (``consumers`` their
        NodeContexts), writing the last one's output."""
        raise NotImplementedError(type(self).__name__)

    def compute_gradients_fused(self, backend, ctx, consumers) -> None:
        """compute_gradients of the consumers, last first, and then of this layer, reading the
        gradient of the last one's output (training contexts only)."""
        raise NotImplementedError(type(self).__name__)

    # ------------------------------------------------------------ description
    def config(self) -> dict:
        """The constructor arguments that recreate this layer (for network definitions).

        Values may be JSON types, tuples, and other Layer objects (containers list their
        children here; a tied layer names the layer it shares weights with)."""
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        """The inverse of :meth:`config` (override when the constructor differs)."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def bias_gradient(backend, ctx, bias, dy) -> None:
    """d(loss)/d(bias) from the output gradient ``dy`` into the bias's gradient buffer (added
    to it where another placement wrote first); nothing where the bias is not trained here."""
    db, accumulate = ctx.param_grad_target(bias)
    if db is not None:
        backend.bias_grad(dy, db, accumulate=accumulate, ws=ctx.ws)
