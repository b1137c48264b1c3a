"""Median ms per convolution op of the NumPy backend under the instruction set that
$JUICEPY_CPU_ISA sets (docs/numpy.md), on the workloads of test_bench_conv.py and the layers of
the CIFAR-shaped CNN and the zoo ResNet (batch 32, float32). Per op: "fwd", "data", "filter" as
the backend picks them under that ISA, and each algorithm that applies run directly
("fwd:direct", "fwd:winograd", ...). Prints one JSON object {case/op: ms}.

To compare ISAs on one machine, alternate processes:
    for r in 1 2 3; do for i in avx512 avx2; do JUICEPY_CPU_ISA=$i python bench/ab_numpy_isa.py > $i-$r.json; done; done
Arguments, both optional: the batch (default 32) and the cases to run, as comma-separated name
prefixes (default all), e.g. `python bench/ab_numpy_isa.py 8 "cnn,res"`.
"""
import json
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace, conv_output_size
from juicepy.backends.numpy import spatial as S

be = get_backend("numpy")
B = int(sys.argv[1]) if len(sys.argv) > 1 else 32
PREFIXES = sys.argv[2].split(",") if len(sys.argv) > 2 else [""]
# name -> (C, H=W, O, k, stride, padding, dilation, groups)
CASES = {"3x3": (64, 32, 64, 3, 1, 1, 1, 1), "depthwise": (64, 32, 64, 3, 1, 1, 1, 64),
         "strided": (64, 32, 128, 3, 2, 1, 1, 1), "1x1": (64, 32, 128, 1, 1, 0, 1, 1),
         "5x5": (32, 32, 32, 5, 1, 2, 1, 1), "dilated": (64, 32, 64, 3, 1, 2, 2, 1),
         "grouped": (64, 32, 64, 3, 1, 1, 1, 4),
         "cnn1 3-32": (3, 32, 32, 3, 1, 1, 1, 1), "cnn2 32-64": (32, 16, 64, 3, 1, 1, 1, 1),
         "cnn3 64-128": (64, 8, 128, 3, 1, 1, 1, 1),
         "res 16-16": (16, 32, 16, 3, 1, 1, 1, 1), "res 16-32 s2": (16, 32, 32, 3, 2, 1, 1, 1),
         "res 32-32": (32, 16, 32, 3, 1, 1, 1, 1), "res 32-64 s2": (32, 16, 64, 3, 2, 1, 1, 1),
         "res 64-64": (64, 8, 64, 3, 1, 1, 1, 1)}


def med(fn, n=9):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1e3, 3)


rng = np.random.default_rng(0)
res = {"isa": be.conv_kernels.isa}
for name, (c, h, o, k, s, p, d, g) in CASES.items():
    if not any(name.startswith(prefix) for prefix in PREFIXES):
        continue
    ho = conv_output_size(h, k, s, p, d)
    # the backend's own arrays (64-byte aligned, as a Context's): NumPy's are 16-byte aligned,
    # which split the kernels' vector loads over cache lines (docs/numpy.md, session 57)
    x = be.from_host(rng.standard_normal((B, c, h, h), dtype=np.float32))
    w = be.from_host(rng.standard_normal((o, c // g, k, k), dtype=np.float32))
    out = be.empty((B, o, ho, ho), np.float32)
    dy = be.from_host(rng.standard_normal(out.shape, dtype=np.float32))
    dx, dw = be.empty(x.shape, np.float32), be.empty(w.shape, np.float32)
    geo = ((s, s), (p, p), (d, d), g)
    ws = Workspace()
    res[f"{name}/fwd"] = med(lambda: be.conv2d(x, w, out, *geo, ws=ws))
    res[f"{name}/data"] = med(lambda: be.conv2d_backward_data(dy, w, dx, *geo, ws=ws))
    res[f"{name}/filter"] = med(lambda: be.conv2d_backward_filter(x, dy, dw, *geo, ws=ws))
    if g == c:
        continue
    plan = S._ConvPlan(x.shape, w.shape, out.shape[2:], (s, s), (p, p), (d, d), g)
    fwd = {"gemm": S._gemm_forward}
    data = {"gemm": S._gemm_backward_data}
    filt = {"gemm": S._gemm_backward_filter}
    if k > 1:
        fwd["direct"] = S._direct_forward
    if s == 1 and k > 1:
        data["direct"], filt["direct"] = S._direct_backward_data, S._direct_backward_filter
        if (k, g) == (3, 1):
            fwd["winograd"], data["winograd"] = S._winograd_forward, S._winograd_backward_data
            if d == 1:
                filt["winograd"] = S._winograd_backward_filter
        if k == 5 and g == 1:
            fwd["wg"], data["wg"] = S._wg_forward, S._wg_backward_data
    if (k, s, g, d) == (3, 2, 1, 1) and c >= 16:
        fwd["s2"] = S._s2_forward
        filt["s2"] = S._s2_backward_filter
        data["s2"] = S._s2_backward_data
    for algo, run in fwd.items():
        res[f"{name}/fwd:{algo}"] = med(lambda: run(be, x, w, plan, ws, out))
    for algo, run in data.items():
        res[f"{name}/data:{algo}"] = med(lambda: run(be, dy, w, plan, dx, False, ws))
    for algo, run in filt.items():
        res[f"{name}/filter:{algo}"] = med(lambda: run(be, x, dy, w.shape, *geo, dw, False, ws))
print(json.dumps(res))
