"""Gradient checks and backend parity for layers and losses.

Write the layer once; ``check_layer`` then proves it: output shapes, finite-difference gradients
of inputs and params (float64 on NumPy), determinism, parity of every other available backend
with NumPy (float32, same weights) and, given ``expected=``, the forward against an oracle.
Every finite difference goes through :func:`finite_difference_error`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..backends import available_backends, backend as get_backend
from ..net.network import Network


@dataclass
class LayerReport:
    output_shapes: list
    max_input_error: float = 0.0
    max_param_error: float = 0.0
    parity: dict = field(default_factory=dict)  # backend name -> max abs difference


def _loss_and_grads(net, backend, x, upstream, step, need_params=True):
    """sum(output * upstream) and its analytic gradients for inputs and params."""
    ctx = net.context(backend, x[0].shape[0], training=True, input_grads=True)
    ctx.step = step
    ctx.set_inputs(x)
    ctx.forward()
    outputs = [backend.to_host(ctx.data(j)) for j in net.outputs]
    ctx.begin_backward()
    for i, g in enumerate(upstream):
        backend.write(ctx.loss_grad(i), g)
    ctx.backward()
    input_grads = [backend.to_host(ctx.input_grad(i)) if j.dtype.kind == "f" else None  # no gradient of indices
                   for i, j in enumerate(net.inputs)]
    param_grads = {name: backend.to_host(ctx.param_grad(name))
                   for name, p in net.params.items() if p.trainable} if need_params else {}
    return outputs, input_grads, param_grads


def forward_backward(net, backend, inputs, upstream, step: int = 0):
    """One training-mode forward and backward pass of ``net`` on host ``inputs`` with the output
    gradients ``upstream``; returns host copies (outputs, input gradients, {param name: gradient})."""
    return _loss_and_grads(net, backend, list(inputs), list(upstream), step)


def _objective(ctx, backend, x, upstream, step):
    net = ctx.network
    ctx.step = step
    ctx.set_inputs(x)
    ctx.forward()
    return sum(float(np.sum(backend.to_host(ctx.data(j)).astype(np.float64) * g))
               for j, g in zip(net.outputs, upstream))


def _sample(size, limit, rng):
    return np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)


def finite_difference_error(flat, analytic, objective, indices, eps=1e-6, changed=None) -> float:
    """The largest |analytic - numeric| / max(1, |numeric|) over ``indices`` of the 1-D array
    ``flat``, where numeric is the central difference of ``objective()`` with flat[idx] moved by
    +-eps (``changed()`` runs after each move, e.g. to push a param's new value)."""
    worst = 0.0
    for idx in indices:
        orig = flat[idx]
        values = []
        for moved in (orig + eps, orig - eps):
            flat[idx] = moved
            if changed is not None:
                changed()
            values.append(objective())
        flat[idx] = orig
        if changed is not None:
            changed()
        numeric = (values[0] - values[1]) / (2 * eps)
        worst = max(worst, abs(analytic[idx] - numeric) / max(1.0, abs(numeric)))
    return worst


def numeric_check(net, backend, x, upstream, eps=1e-6, max_coords=60, seed=0, step=0):
    """Compare analytic and central-difference gradients; returns (input error, param error):
    the largest |analytic - numeric| / max(1, |numeric|) over the sampled coordinates."""
    rng = np.random.default_rng(seed)
    _, input_grads, param_grads = _loss_and_grads(net, backend, x, upstream, step)
    ctx = net.context(backend, x[0].shape[0], training=True)

    def objective():
        return _objective(ctx, backend, x, upstream, step)

    worst_in = 0.0
    for xk, grad in zip(x, input_grads):
        if grad is None:  # indices: nothing to differentiate
            continue
        flat = xk.reshape(-1)
        worst_in = max(worst_in, finite_difference_error(flat, grad.reshape(-1), objective,
                                                         _sample(flat.size, max_coords, rng), eps))
    worst_p = 0.0
    for name, grad in param_grads.items():
        p = net.params[name]
        data = p.numpy()
        flat = data.reshape(-1)
        worst_p = max(worst_p, finite_difference_error(flat, grad.reshape(-1), objective,
                                                       _sample(flat.size, max_coords, rng), eps,
                                                       changed=lambda p=p, data=data: p.set(data)))
    return worst_in, worst_p


def random_inputs(net, batch_size, seed=0, scale=1.0, distinct=False):
    """Standard-normal inputs times ``scale``; ``distinct=True`` gives a shuffled even grid in
    [-scale, scale] instead, so no two values are closer than 2*scale/size and a finite-difference
    step never reorders them (no near-ties for max pooling)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for j in net.inputs:
        shape = (batch_size,) + j.unit_shape
        if j.dtype.kind != "f":
            raise ValueError("random_inputs: the network takes integer indices; pass inputs= with valid ones")
        if distinct:
            size = int(np.prod(shape))
            values = (rng.permutation(size) / max(size - 1, 1) * 2.0 - 1.0) * scale
            inputs.append(values.reshape(shape).astype(net.dtype))
        else:
            inputs.append((rng.standard_normal(shape) * scale).astype(net.dtype))
    return inputs


def check_layer(layer, input_shape, backends=None, batch_size: int = 2, seed: int = 0,
                expected_output_shape=None, grad_tol: float = 1e-5, parity_tol: float = 1e-4,
                max_coords: int = 60, input_scale: float = 1.0, inputs=None,
                distinct_inputs: bool = False, expected=None, expected_tol: float = 1e-8) -> LayerReport:
    """Prove a layer: shapes, finite-difference gradients (float64, NumPy), determinism and
    parity of each backend in ``backends`` (default: every available one) with NumPy.

    ``expected(inputs, weights)``, optional, is a forward oracle written independently of the
    layer (Chainer's forward_expected): it gets the float64 host inputs and the network's weights
    by dotted path ("weight", "0.bias") and returns the expected output (a list for several
    outputs). NumPy's float64 output must match it within ``expected_tol`` and every other
    backend's float32 output within ``parity_tol``.

    ``layer`` is deep-copied for each network, so the object passed in stays unbuilt.
    ``inputs`` (optional host arrays) replace the random ones, e.g. to keep away from kinks;
    ``distinct_inputs=True`` draws well-separated random values (max pooling: no near-ties).
    Layers that behave differently in training (BatchNorm, Dropout) are checked in training mode.
    Raises AssertionError with the details on any failure.
    """
    numpy_backend = get_backend("numpy")
    # integer arrays among ``inputs`` are indices (an Embedding's): those inputs are declared integer
    input_dtype = None if inputs is None else [np.asarray(a).dtype if np.asarray(a).dtype.kind in "iu" else None
                                               for a in inputs]
    net64 = Network(copy.deepcopy(layer), input_shape, dtype=np.float64, seed=seed, input_dtype=input_dtype)
    report = LayerReport(output_shapes=net64.output_shapes)
    if expected_output_shape is not None:
        want_shapes = [tuple(expected_output_shape)] if not isinstance(expected_output_shape[0], (tuple, list)) \
            else [tuple(s) for s in expected_output_shape]
        assert net64.output_shapes == want_shapes, f"output unit shapes {net64.output_shapes}, expected {want_shapes}"

    x64 = [_as_float(a, np.float64) for a in inputs] if inputs is not None else random_inputs(net64, batch_size, seed, input_scale, distinct_inputs)
    rng = np.random.default_rng(seed + 1)
    upstream = [rng.standard_normal((x64[0].shape[0],) + j.unit_shape) for j in net64.outputs]

    # shapes of the buffers the context made
    out64, in_grads, _ = _loss_and_grads(net64, numpy_backend, x64, upstream, step=0)
    for out, j in zip(out64, net64.outputs):
        assert out.shape == (x64[0].shape[0],) + j.unit_shape, f"output buffer shape {out.shape}"
    oracle = None
    if expected is not None:
        oracle = expected([a.copy() for a in x64], net64.get_weights())
        oracle = [np.asarray(o, np.float64) for o in (oracle if isinstance(oracle, (list, tuple)) else [oracle])]
        for k, (out, want) in enumerate(zip(out64, oracle)):
            assert out.shape == want.shape, f"output {k}: shape {out.shape}, expected {want.shape}"
            diff = float(np.max(np.abs(out - want) / (1.0 + np.abs(want)))) if want.size else 0.0
            assert diff < expected_tol, f"numpy: output {k} differs from expected by {diff:.3g}"
    for g, xk in zip(in_grads, x64):
        assert g is None or g.shape == xk.shape, f"input gradient shape {g.shape}, input {xk.shape}"

    report.max_input_error, report.max_param_error = numeric_check(
        net64, numpy_backend, x64, upstream, max_coords=max_coords, seed=seed)
    assert report.max_input_error < grad_tol, f"input gradient off by {report.max_input_error:.3g}"
    assert report.max_param_error < grad_tol, f"param gradient off by {report.max_param_error:.3g}"

    # determinism: same inputs, same step -> bit-identical results
    again = _loss_and_grads(net64, numpy_backend, x64, upstream, step=0)
    for a, b in zip(out64, again[0]):
        assert np.array_equal(a, b), "forward is not deterministic"

    # parity with NumPy in float32, the same params object on every backend
    net32 = Network(copy.deepcopy(layer), input_shape, dtype=np.float32, seed=seed, input_dtype=input_dtype)
    x32 = [_as_float(a, np.float32) for a in x64]
    up32 = [u.astype(np.float32) for u in upstream]
    reference = _loss_and_grads(net32, numpy_backend, x32, up32, step=0)
    names = available_backends() if backends is None else list(backends)
    for name in names:
        if name == "numpy":
            continue
        other = get_backend(name)
        got = _loss_and_grads(net32, other, x32, up32, step=0)
        worst = 0.0
        for k, want in enumerate(oracle or []):
            diff = float(np.max(np.abs(got[0][k] - want) / (1.0 + np.abs(want)))) if want.size else 0.0
            assert diff < parity_tol, f"{name}: output {k} differs from expected by {diff:.3g}"
        for ref_group, got_group, what in zip(reference, got, ("output", "input grad", "param grad")):
            ref_items = ref_group.items() if isinstance(ref_group, dict) else enumerate(ref_group)
            for key, ref in ref_items:
                if ref is None:  # indices have no gradient
                    continue
                diff = float(np.max(np.abs(got_group[key] - ref) / (1.0 + np.abs(ref)))) if ref.size else 0.0
                assert diff < parity_tol, f"{name}: {what} {key} differs from numpy by {diff:.3g}"
                worst = max(worst, diff)
        report.parity[name] = worst
    return report


def _as_float(a, dtype):
    """Float inputs in ``dtype``; integer indices stay as they are."""
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def check_loss(loss, output_shape, targets, backends=None, seed: int = 0, grad_tol: float = 1e-6,
               parity_tol: float = 1e-5, outputs=None):
    """Finite-difference check of a loss's gradient (float64) and parity across backends.

    ``targets`` is a host array for a batch; returns the float64 mean loss on NumPy.
    """
    numpy_backend = get_backend("numpy")
    batch = len(targets)
    rng = np.random.default_rng(seed)
    z = outputs.astype(np.float64) if outputs is not None else rng.standard_normal((batch,) + tuple(output_shape))

    def run(backend, values, dtype):
        values = values.astype(dtype)
        tgt = np.asarray(targets)
        tgt = tgt.astype(dtype) if tgt.dtype.kind == "f" else tgt
        tgt = loss.check_targets(tgt, tuple(output_shape), batch, dtype)
        dev_out = backend.from_host(values)
        dev_tgt = backend.from_host(tgt)
        losses = backend.empty((batch,), dtype)
        dx = backend.empty(values.shape, dtype)
        count = loss.count(batch, tuple(output_shape))
        loss.compute(backend, dev_out, dev_tgt, losses, dx, 1.0 / count, None)
        return float(np.sum(backend.to_host(losses))) / count, backend.to_host(dx)

    value, grad = run(numpy_backend, z, np.float64)
    error = finite_difference_error(z.reshape(-1), grad.reshape(-1), lambda: run(numpy_backend, z, np.float64)[0],
                                    _sample(z.size, 80, rng))
    assert error < grad_tol, f"{type(loss).__name__}: gradient off by {error:.3g}"
    ref_value, ref_grad = run(numpy_backend, z, np.float32)
    for name in (available_backends() if backends is None else backends):
        if name == "numpy":
            continue
        got_value, got_grad = run(get_backend(name), z, np.float32)
        assert abs(got_value - ref_value) <= parity_tol * (1 + abs(ref_value)), f"{name}: loss {got_value} vs {ref_value}"
        assert np.allclose(got_grad, ref_grad, rtol=parity_tol, atol=parity_tol), f"{name}: loss gradient differs"
    return value
