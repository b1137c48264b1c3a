"""Single conv layers, forward + backward (input and weight gradients) and forward only, juicepy
on every backend vs PyTorch CPU eager: 3x3 64->64 on 32x32 (batch 32), its depthwise twin, a
strided one, pointwise 1x1, 5x5, dilated and grouped.

    pytest bench/test_bench_conv.py --benchmark-json=conv.json && python bench/report.py conv.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L

from benchutil import require_torch

BATCH = 32
# name -> (in channels, H=W, Conv2d arguments)
CASES = {
    "3x3 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1)),
    "depthwise 3x3 64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1, groups=64)),
    "strided 3x3 s2 64->128 32x32 b32": (64, 32, dict(out_channels=128, kernel_size=3, stride=2, padding=1)),
    "1x1 64->128 32x32 b32": (64, 32, dict(out_channels=128, kernel_size=1)),
    "5x5 32->32 32x32 b32": (32, 32, dict(out_channels=32, kernel_size=5, padding=2)),
    "dilated 3x3 d2 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=2, dilation=2)),
    "grouped 3x3 g4 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1, groups=4)),
}


def _flops(channels, size, args, out_hw):
    """Multiply-adds x2 of forward, input gradient and weight gradient."""
    k = args["kernel_size"]
    per_output = channels // args.get("groups", 1) * k * k
    return 3 * 2 * BATCH * args["out_channels"] * out_hw[0] * out_hw[1] * per_output


@pytest.mark.parametrize("case", list(CASES))
def test_conv_fwd_bwd_juicepy(benchmark, backend, case):
    channels, size, args = CASES[case]
    benchmark.group = f"conv {case} fwd+bwd"
    net = jp.Network(L.Conv2d(**args), (channels, size, size))
    ctx = net.context(backend, BATCH, training=True, input_grads=True)
    rng = np.random.default_rng(0)
    ctx.set_inputs([rng.standard_normal((BATCH, channels, size, size), dtype=np.float32)])
    upstream = backend.from_host(rng.standard_normal((BATCH,) + net.output_shape, dtype=np.float32))

    def step():
        ctx.forward()
        ctx.begin_backward()
        backend.copy(upstream, ctx.loss_grad())
        ctx.backward()
        backend.synchronize()

    step()
    benchmark(step)
    benchmark.extra_info["flops"] = _flops(channels, size, args, net.output_shape[1:])


@pytest.mark.parametrize("case", list(CASES))
def test_conv_fwd_bwd_torch(benchmark, case):
    torch = require_torch()
    channels, size, args = CASES[case]
    benchmark.group = f"conv {case} fwd+bwd"
    conv = torch.nn.Conv2d(channels, **args)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, channels, size, size), dtype=np.float32)).requires_grad_(True)
    with torch.no_grad():
        out_shape = conv(x).shape
    upstream = torch.from_numpy(rng.standard_normal(tuple(out_shape), dtype=np.float32))

    def step():
        x.grad = None
        conv.zero_grad(set_to_none=True)
        conv(x).backward(upstream)

    step()
    benchmark(step)
    benchmark.extra_info["flops"] = _flops(channels, size, args, tuple(out_shape[2:]))


@pytest.mark.parametrize("case", list(CASES))
def test_conv_forward_juicepy(benchmark, backend, case):
    channels, size, args = CASES[case]
    benchmark.group = f"conv {case} forward"
    net = jp.Network(L.Conv2d(**args), (channels, size, size))
    ctx = net.context(backend, BATCH)
    rng = np.random.default_rng(0)
    ctx.set_inputs([rng.standard_normal((BATCH, channels, size, size), dtype=np.float32)])

    def forward():
        ctx.forward()
        backend.synchronize()

    forward()
    benchmark(forward)


@pytest.mark.parametrize("case", list(CASES))
def test_conv_forward_torch(benchmark, case):
    torch = require_torch()
    channels, size, args = CASES[case]
    benchmark.group = f"conv {case} forward"
    conv = torch.nn.Conv2d(channels, **args)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, channels, size, size), dtype=np.float32))

    def forward():
        with torch.no_grad():
            conv(x)

    forward()
    benchmark(forward)
