"""Per-layer forward and backward time of a network on one backend and batch size."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from . import arguments
from .backends import backend as get_backend


@dataclass
class LayerTiming:
    """Median seconds of one placement's compute_output / compute_gradients over the runs."""

    path: str
    layer: str
    output_shape: tuple
    forward_s: float
    backward_s: float


def profile(network, backend, batch_size: int, steps: int = 10, warmup: int = 2,
            seed: int = 0) -> list[LayerTiming]:
    """Time every layer placement of ``network`` (training mode, random inputs and output
    gradients); rows follow the forward order. The backend is synchronised around each layer,
    so asynchronous GPU work is charged to the layer that queued it."""
    batch_size = arguments.integer("profile", "batch_size", batch_size, 1)
    steps = arguments.integer("profile", "steps", steps, 1)
    warmup = arguments.integer("profile", "warmup", warmup, 0)
    seed = arguments.integer("profile", "seed", seed, 0)
    backend = get_backend(backend)
    ctx = network.context(backend, batch_size, training=True)
    rng = np.random.default_rng(seed)
    ctx.set_inputs([rng.standard_normal((batch_size,) + j.unit_shape).astype(network.dtype)
                    if j.dtype.kind == "f" else np.zeros((batch_size,) + j.unit_shape, j.dtype)  # index 0 is valid
                    for j in network.inputs])
    upstream = [rng.standard_normal((batch_size,) + j.unit_shape).astype(network.dtype)
                for j in network.outputs]
    plan = ctx.plan
    forward = [[] for _ in plan]
    backward = [[] for _ in plan]
    ctx.save_state()  # the passes below must not change the network (BatchNorm's statistics)
    try:
        _run(backend, ctx, plan, upstream, warmup, steps, forward, backward)
    finally:
        ctx.restore_state()
    return [LayerTiming(nctx.path or "<root>", type(layer).__name__, nctx.output_shapes[0],
                        statistics.median(f), statistics.median(b))
            for (layer, nctx), f, b in zip(plan, forward, backward)]


def _run(backend, ctx, plan, upstream, warmup, steps, forward, backward) -> None:
    for run in range(warmup + steps):
        keep = run >= warmup
        for k, (layer, nctx) in enumerate(plan):
            elapsed = _timed(backend, layer.compute_output, nctx)
            if keep:
                forward[k].append(elapsed)
        ctx.step += 1
        ctx.begin_backward()
        for i, g in enumerate(upstream):
            backend.write(ctx.loss_grad(i), g)
        for k in reversed(range(len(plan))):
            layer, nctx = plan[k]
            elapsed = _timed(backend, layer.compute_gradients, nctx)
            if keep:
                backward[k].append(elapsed)


def _timed(backend, method, nctx) -> float:
    backend.synchronize()
    start = time.perf_counter()
    method(backend, nctx)
    backend.synchronize()
    return time.perf_counter() - start


def format_table(rows: list[LayerTiming], title: str = "") -> str:
    """A plain-text table of the rows with totals and each layer's share of the step."""
    total_f = sum(r.forward_s for r in rows)
    total_b = sum(r.backward_s for r in rows)
    total = (total_f + total_b) or 1.0
    table = [("path", "layer", "output", "forward ms", "backward ms", "share")]
    for r in rows:
        table.append((r.path, r.layer, str(r.output_shape), f"{r.forward_s * 1e3:.3f}",
                      f"{r.backward_s * 1e3:.3f}", f"{(r.forward_s + r.backward_s) / total:.1%}"))
    table.append(("total", "", "", f"{total_f * 1e3:.3f}", f"{total_b * 1e3:.3f}", "100.0%"))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    right = {3, 4, 5}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(([title] if title else []) + lines)
