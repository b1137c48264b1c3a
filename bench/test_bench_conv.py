"""Single conv layers, forward + backward (input and weight gradients) and forward only, juicepy
on every backend vs PyTorch CPU eager: 3x3 64->64 on 32x32 (batch 32), its depthwise twin and
that twin at stride 2 (a MobileNet block's downsampling), a strided one, pointwise 1x1, 5x5,
dilated and grouped, the zoo ResNet's 32->64 downsampling
layer and its 1x1 strided shortcut (16x16 inputs), and MobileNetV2's last depthwise layers (7x7
planes, and the stride-2 one from 14x14). The paired tests time each workload with
its reference's calls interleaved (PyTorch for the NumPy backend, the NumPy backend for others).

    pytest bench/test_bench_conv.py --benchmark-json=conv.json && python bench/report.py conv.json
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L

from benchutil import PAIRED_PREFIX, paired_reference, require_torch

BATCH = 32
# name -> (in channels, H=W, Conv2d arguments)
CASES = {
    "3x3 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1)),
    "depthwise 3x3 64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1, groups=64)),
    "depthwise strided 3x3 s2 64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, stride=2, padding=1,
                                                          groups=64)),
    "strided 3x3 s2 64->128 32x32 b32": (64, 32, dict(out_channels=128, kernel_size=3, stride=2, padding=1)),
    "1x1 64->128 32x32 b32": (64, 32, dict(out_channels=128, kernel_size=1)),
    "5x5 32->32 32x32 b32": (32, 32, dict(out_channels=32, kernel_size=5, padding=2)),
    "dilated 3x3 d2 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=2, dilation=2)),
    "grouped 3x3 g4 64->64 32x32 b32": (64, 32, dict(out_channels=64, kernel_size=3, padding=1, groups=4)),
    "resnet strided 3x3 s2 32->64 16x16 b32": (32, 16, dict(out_channels=64, kernel_size=3, stride=2, padding=1)),
    "resnet shortcut 1x1 s2 32->64 16x16 b32": (32, 16, dict(out_channels=64, kernel_size=1, stride=2)),
    # MobileNetV2's (224x224 input) last depthwise layers: small planes, rows narrower than a vector
    "depthwise last 3x3 960 7x7 b32": (960, 7, dict(out_channels=960, kernel_size=3, padding=1, groups=960)),
    "depthwise downsampling 3x3 s2 576 14x14 b32": (576, 14, dict(out_channels=576, kernel_size=3, stride=2,
                                                                  padding=1, groups=576)),
}


def _network(case):
    channels, size, args = CASES[case]
    return jp.Network(L.Conv2d(**args), (channels, size, size))


def _flops(case):
    """Multiply-adds x2 of forward, input gradient and weight gradient."""
    channels, _, args = CASES[case]
    k = args["kernel_size"]
    per_output = channels // args.get("groups", 1) * k * k
    out_channels, out_h, out_w = _network(case).output_shape
    return 3 * 2 * BATCH * out_channels * out_h * out_w * per_output


def _input(case, rng):
    channels, size, _ = CASES[case]
    return rng.standard_normal((BATCH, channels, size, size), dtype=np.float32)


def juicepy_fwd_bwd(backend, case):
    """A forward + backward of the layer on `backend` from a fixed upstream gradient, run once."""
    net = _network(case)
    ctx = net.context(backend, BATCH, training=True, input_grads=True)
    rng = np.random.default_rng(0)
    ctx.set_inputs([_input(case, rng)])
    upstream = backend.from_host(rng.standard_normal((BATCH,) + net.output_shape, dtype=np.float32))

    def step():
        ctx.forward()
        ctx.begin_backward()
        backend.copy(upstream, ctx.loss_grad())
        ctx.backward()
        backend.synchronize()

    step()
    return step


def torch_fwd_bwd(torch, case):
    channels, _, args = CASES[case]
    conv = torch.nn.Conv2d(channels, **args)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(_input(case, rng)).requires_grad_(True)
    with torch.no_grad():
        out_shape = conv(x).shape
    upstream = torch.from_numpy(rng.standard_normal(tuple(out_shape), dtype=np.float32))

    def step():
        x.grad = None
        conv.zero_grad(set_to_none=True)
        conv(x).backward(upstream)

    step()
    return step


def juicepy_forward(backend, case):
    ctx = _network(case).context(backend, BATCH)
    ctx.set_inputs([_input(case, np.random.default_rng(0))])

    def forward():
        ctx.forward()
        backend.synchronize()

    forward()
    return forward


def torch_forward(torch, case):
    channels, _, args = CASES[case]
    conv = torch.nn.Conv2d(channels, **args)
    x = torch.from_numpy(_input(case, np.random.default_rng(0)))

    def forward():
        with torch.no_grad():
            conv(x)

    forward()
    return forward


# mode -> (juicepy builder, PyTorch builder)
MODES = {"fwd+bwd": (juicepy_fwd_bwd, torch_fwd_bwd), "forward": (juicepy_forward, torch_forward)}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_fwd_bwd_juicepy(benchmark, backend, case):
    benchmark.group = f"conv {case} fwd+bwd"
    benchmark(juicepy_fwd_bwd(backend, case))
    benchmark.extra_info["flops"] = _flops(case)


@pytest.mark.parametrize("case", list(CASES))
def test_conv_fwd_bwd_torch(benchmark, case):
    torch = require_torch()
    benchmark.group = f"conv {case} fwd+bwd"
    benchmark(torch_fwd_bwd(torch, case))
    benchmark.extra_info["flops"] = _flops(case)


@pytest.mark.parametrize("case", list(CASES))
def test_conv_forward_juicepy(benchmark, backend, case):
    benchmark.group = f"conv {case} forward"
    benchmark(juicepy_forward(backend, case))


@pytest.mark.parametrize("case", list(CASES))
def test_conv_forward_torch(benchmark, case):
    torch = require_torch()
    benchmark.group = f"conv {case} forward"
    benchmark(torch_forward(torch, case))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_conv_paired(benchmark, paired, backend, case, mode):
    benchmark.group = f"{PAIRED_PREFIX}conv {case} {mode}"
    build, build_torch = MODES[mode]
    reference, name = paired_reference(backend, lambda be: build(be, case), lambda torch: build_torch(torch, case))
    paired(build(backend, case), reference, name)
