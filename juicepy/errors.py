"""Exceptions juicepy raises for bad input; each message names the place, the expected and the actual."""


class JuicepyError(Exception):
    """Base class of juicepy's own errors."""


class ShapeError(JuicepyError, ValueError):
    """An array or a layer's input has the wrong shape."""


class DTypeError(JuicepyError, TypeError):
    """An array has the wrong dtype."""


class LabelError(JuicepyError, ValueError):
    """Integer labels out of range for the loss."""


class IndicesError(JuicepyError, ValueError):
    """Integer inputs out of range for the layer that reads them (an Embedding)."""


class NonFiniteError(JuicepyError, FloatingPointError):
    """NaN or Inf where the guard forbids it (inputs or loss)."""


class WeightsError(JuicepyError, KeyError):
    """A weights dict names an unknown param, misses one or has a wrong shape."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class DefinitionError(JuicepyError, ValueError):
    """A network definition names an unknown layer type or cannot be encoded or read."""


class CheckpointError(JuicepyError, ValueError):
    """A checkpoint or weights file is truncated, corrupted or not a juicepy file."""


class CheckpointWeightsError(CheckpointError, WeightsError):
    """A checkpoint's weights or optimizer state do not fit the network it defines."""


class CheckpointDefinitionError(CheckpointError, DefinitionError):
    """A checkpoint's network definition cannot be rebuilt (unknown layer type, bad config)."""


class ArgumentError(JuicepyError, TypeError, ValueError):
    """A constructor or function argument of the wrong type or out of range (catch it as either
    a TypeError or a ValueError)."""


class MissingExtraError(JuicepyError, ImportError):
    """An optional feature needs a package that is not installed; the message names the extra."""


class DistributedError(JuicepyError, RuntimeError):
    """Another rank of a data-parallel job failed, or ranks disagree (a collective cannot go on)."""
