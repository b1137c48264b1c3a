"""In one process, the OpenCL 3x3 stride-2 input gradient as Winograd on dx's phases
(s2_winograd_data) against the per-phase GEMMs it replaced (the selection threshold
spatial.S2_MIN_CHANNELS toggled per call), interleaved with the NumPy backend's; prints the
medians in ms and the median of the per-round ratios.

    python bench/ab_opencl_s2_data.py N C H O ROUNDS      # e.g. 32 64 32 128 15 (the bench's layer)
"""
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.opencl import spatial

n, c, h, o, rounds = map(int, sys.argv[1:6])
ocl, npb = get_backend("opencl"), get_backend("numpy")
rng = np.random.default_rng(0)
ho = (h + 2 - 3) // 2 + 1
w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
dy = rng.standard_normal((n, o, ho, ho), dtype=np.float32)
dx = np.zeros((n, c, h, h), np.float32)
geometry = ((2, 2), (1, 1), (1, 1), 1)   # stride, padding, dilation, groups
w_ocl, dy_ocl, dx_new, dx_old = ocl.from_host(w), ocl.from_host(dy), ocl.from_host(dx), ocl.from_host(dx)
spaces = [Workspace() for _ in range(3)]
threshold = spatial.S2_MIN_CHANNELS


def winograd():
    spatial.S2_MIN_CHANNELS = threshold
    ocl.conv2d_backward_data(dy_ocl, w_ocl, dx_new, *geometry, ws=spaces[0])


def phase_gemms():
    spatial.S2_MIN_CHANNELS = 1 << 30
    ocl.conv2d_backward_data(dy_ocl, w_ocl, dx_old, *geometry, ws=spaces[1])


def numpy_backend():
    npb.conv2d_backward_data(dy, w, dx, *geometry, ws=spaces[2])


cases = {"s2_winograd_data": winograd, "phase GEMMs": phase_gemms, "numpy": numpy_backend}
for fn in cases.values():
    fn()
ocl.synchronize()
new, old = ocl.to_host(dx_new), ocl.to_host(dx_old)
print("max relative difference", float(np.abs(new - old).max() / np.abs(old).max()))
times = {name: [] for name in cases}
for _ in range(rounds):
    for name, fn in cases.items():
        ocl.synchronize()
        start = time.perf_counter()
        fn()
        ocl.synchronize()
        times[name].append(time.perf_counter() - start)
spatial.S2_MIN_CHANNELS = threshold
pairs = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
print(f"N C H O = {n} {c} {h} {o}: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.2f} ms" for k, v in times.items()))
print(f"pairs s2_winograd_data / phase GEMMs {pairs('s2_winograd_data', 'phase GEMMs'):.3f}, "
      f"/ numpy {pairs('s2_winograd_data', 'numpy'):.3f}")
