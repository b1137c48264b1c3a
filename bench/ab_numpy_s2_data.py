"""In-process A/B of the NumPy backend's 3x3 stride-2 input gradient (float32, batch 32, padding 1):
_s2_backward_data (F(2x2, 2x2) on dx's phases) against the path it replaces (im2col + GEMM +
col2im), alternated every round, S2_DATA_MIN_CHANNELS and S2_DATA_MIN_INPUTS toggled so that each layer is forced onto
one or the other. Prints per layer the median ms of each and the median of the per-round ratios
new/old ("pairs"), for each chunk size (S2_DATA_TILES) given.

    python bench/ab_numpy_s2_data.py [ROUNDS [TILES ...]]     (CASES="strided,res 32-64 s2": a subset)
"""
import os
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as S

be = get_backend("numpy")
B = 32
# name -> (C, H=W, O)
CASES = {"strided": (64, 32, 128), "res 16-32 s2": (16, 32, 32), "res 32-64 s2": (32, 16, 64),
         "64-64 16x16": (64, 16, 64), "128-256 16x16": (128, 16, 256), "64-128 17x17": (64, 17, 128)}
if os.environ.get("CASES"):
    CASES = {k: v for k, v in CASES.items() if k in os.environ["CASES"].split(",")}
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 9
tiles = [int(a) for a in sys.argv[2:]] or [S.S2_DATA_TILES]
rng = np.random.default_rng(0)
for name, (c, h, o) in CASES.items():
    ho = (h + 2 - 3) // 2 + 1
    w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
    dy = rng.standard_normal((B, o, ho, ho), dtype=np.float32)
    dx = np.empty((B, c, h, h), np.float32)
    ws = Workspace()
    variants = [("old", 10**9, S.S2_DATA_TILES)] + [(f"new/{t}", 1, t) for t in tiles]
    times = {v[0]: [] for v in variants}

    def run(threshold, chunk_tiles):
        S.S2_DATA_MIN_CHANNELS, S.S2_DATA_MIN_INPUTS, S.S2_DATA_TILES = threshold, threshold, chunk_tiles
        be.conv2d_backward_data(dy, w, dx, (2, 2), (1, 1), (1, 1), 1, ws=ws)

    for v in variants:
        run(*v[1:])
        run(*v[1:])
    for r in range(ROUNDS):
        for v in variants:
            run(*v[1:])
            t0 = time.perf_counter()
            for _ in range(3):
                run(*v[1:])
            times[v[0]].append((time.perf_counter() - t0) / 3 * 1e3)
    old = times["old"]
    print(name, " ".join(f"{k} {statistics.median(t):.3f} ms (pairs {statistics.median([a / b for a, b in zip(t, old)]):.3f})"
                         for k, t in times.items()))
