"""In one process, an OpenCL 3x3 stride-2 op of the phase Winograd kernels (gemm.cl) built from
the working tree against the same op built from gemm.cl at an older commit (the patch gathers
of session 37, docs/opencl.md: s2_winograd_conv's and s2_winograd_filter's runs of 8 tiles,
s2_winograd_data's runs on 16 lanes), calls alternated in rounds of 4; prints each side's
median ms, the median of the per-round ratios (tree / base) and whether the results are the
same bits.

    python bench/ab_opencl_s2_gather.py OP ROUNDS [BASE]   # OP: forward, filter or data
    python bench/ab_opencl_s2_gather.py forward 21 b321fcc # the bench's 64->128 32x32 b32 layer

Run from the repository root (it reads BASE's gemm.cl with git), under the cpu lock where the
machine is shared. Two PoCL contexts share the CPU threads: compare the two sides, not these
times against a single-backend run.
"""
import statistics
import subprocess
import sys
import time

import numpy as np

from juicepy.backends.base import Workspace
from juicepy.backends.opencl import OpenCLBackend, programs

N, C, H, O = 32, 64, 32, 128   # bench/test_bench_conv.py's strided layer
GEOMETRY = ((2, 2), (1, 1), (1, 1), 1)   # stride, padding, dilation, groups


def backend_with(gemm_source):
    """An OpenCLBackend whose gemm.cl is ``gemm_source`` (None: the tree's), built at once."""
    original = programs.source
    if gemm_source is not None:
        programs.source = lambda name: gemm_source if name == "gemm.cl" else original(name)
    try:
        b = OpenCLBackend()
        b._kernel("gemm.cl", "s2_winograd_conv")
        return b
    finally:
        programs.source = original


def op_call(b, op, x, w, dy):
    ws = Workspace()
    xb, wb, dyb = b.from_host(x), b.from_host(w), b.from_host(dy)
    if op == "forward":
        out = b.from_host(np.zeros(dy.shape, np.float32))
        return out, lambda: b.conv2d(xb, wb, out, *GEOMETRY, ws=ws)
    if op == "filter":
        out = b.from_host(np.zeros(w.shape, np.float32))
        return out, lambda: b.conv2d_backward_filter(xb, dyb, out, *GEOMETRY, ws=ws)
    if op == "data":
        out = b.from_host(np.zeros(x.shape, np.float32))
        return out, lambda: b.conv2d_backward_data(dyb, wb, out, *GEOMETRY, ws=ws)
    raise SystemExit(f"OP must be forward, filter or data, not {op!r}")


def main(op, rounds, base):
    old = subprocess.run(["git", "show", f"{base}:juicepy/backends/opencl/gemm.cl"], check=True,
                         capture_output=True, text=True).stdout
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((O, C, 3, 3), dtype=np.float32)
    dy = rng.standard_normal((N, O, H // 2, H // 2), dtype=np.float32)
    sides = {}
    for name, src in (("base", old), ("tree", None)):
        b = backend_with(src)
        out, call = op_call(b, op, x, w, dy)
        call()
        b.synchronize()
        sides[name] = (b, out, call)
    same = np.array_equal(sides["base"][0].to_host(sides["base"][1]), sides["tree"][0].to_host(sides["tree"][1]))
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (b, _, call) in sides.items():
            b.synchronize()
            start = time.perf_counter()
            for _ in range(4):
                call()
            b.synchronize()
            times[name].append((time.perf_counter() - start) / 4 * 1e3)
    ratio = statistics.median(t / s for t, s in zip(times["tree"], times["base"]))
    print(f"{op}: base ({base}) {statistics.median(times['base']):.3f} ms, tree {statistics.median(times['tree']):.3f} ms, "
          f"median ratio tree/base {ratio:.3f}, same bits: {same}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "b321fcc")
