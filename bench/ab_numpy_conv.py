"""Median ms of juicepy's NumPy backend and of PyTorch, in one process, on the convolution
workloads of test_bench_conv.py (training step of one layer, forward), the CIFAR-shaped CNN
(inference forward) and the zoo ResNet (inference forward, Adam step); prints one JSON object {workload: [juicepy ms, torch ms]}.

To compare two checkouts on a noisy machine, alternate processes and compare within each:
    for r in 1 2 3; do for c in OLD NEW; do PYTHONPATH=$c python bench/ab_numpy_conv.py > $c-$r.json; done; done
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import backend as get_backend
from juicepy.models import resnet
from juicepy.train import Adam, Trainer
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import torch_adam_step  # noqa: E402
from test_bench_cnn import _cnn, _data, _torch_cnn, _torch_resnet  # noqa: E402

torch.set_num_threads(2)
be = get_backend("numpy")
B = 32
CASES = {"3x3": (64, dict(out_channels=64, kernel_size=3, padding=1)),
         "depthwise": (64, dict(out_channels=64, kernel_size=3, padding=1, groups=64)),
         "strided": (64, dict(out_channels=128, kernel_size=3, stride=2, padding=1)),
         "1x1": (64, dict(out_channels=128, kernel_size=1)),
         "5x5": (32, dict(out_channels=32, kernel_size=5, padding=2)),
         "dilated": (64, dict(out_channels=64, kernel_size=3, padding=2, dilation=2)),
         "grouped": (64, dict(out_channels=64, kernel_size=3, padding=1, groups=4))}
def med(fn, n=15):
    fn(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
rng = np.random.default_rng(0)
res = {}
for name, (c, args) in CASES.items():
    net = jp.Network(L.Conv2d(**args), (c, 32, 32))
    ctx = net.context(be, B, training=True, input_grads=True)
    x = rng.standard_normal((B, c, 32, 32), dtype=np.float32); ctx.set_inputs([x])
    up = rng.standard_normal((B,) + net.output_shape, dtype=np.float32)
    def step():
        ctx.forward(); ctx.begin_backward(); be.copy(up, ctx.loss_grad()); ctx.backward()
    fctx = net.context(be, B); fctx.set_inputs([x])
    conv = torch.nn.Conv2d(c, **args); xt = torch.from_numpy(x).requires_grad_(True); upt = torch.from_numpy(up)
    def tstep():
        xt.grad = None; conv.zero_grad(set_to_none=True); conv(xt).backward(upt)
    def tfwd():
        with torch.no_grad(): conv(xt)
    res[name + " step"] = (med(step), med(tstep))
    res[name + " fwd"] = (med(fctx.forward), med(tfwd))
SHAPE = (3, 32, 32)
x, y = _data()
cnn = jp.Network(_cnn(), SHAPE); cnn.transform(be, x)
tcnn = _torch_cnn(torch).eval()
def tcf():
    with torch.no_grad(): return tcnn(torch.from_numpy(x)).numpy()
res["cnn fwd"] = (med(lambda: cnn.transform(be, x), 30), med(tcf, 30))
net = jp.Network(resnet(SHAPE, 10), SHAPE); net.transform(be, x)
tn = _torch_resnet(torch).eval(); xt = torch.from_numpy(x)
def tf():
    with torch.no_grad(): tn(xt)
res["resnet fwd"] = (med(lambda: net.transform(be, x), 30), med(tf, 30))
tr = Trainer(jp.Network(resnet(SHAPE, 10), SHAPE), L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=B)
res["resnet step"] = (med(lambda: tr.train_minibatch(be, x, y)), med(torch_adam_step(torch, _torch_resnet(torch), x, y)))
print(json.dumps(res))
