"""In-process A/B of the NumPy backend's 3x3 stride-2 weight gradient on the phase Winograd
(_s2_backward_filter, float32, padding 1): its GEMMs on tile_gemm (S2_FILTER_TILE_GEMM_ISAS as
set) against np.matmul (emptied), alternated every round. Prints per layer the median ms of
each and their ratio.

    python bench/ab_numpy_s2_filter.py [ROUNDS]
"""
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as S

# name -> (batch, C, H=W, O)
CASES = {"64->128 32x32 (the bench's strided)": (32, 64, 32, 128), "128->256 16x16": (32, 128, 16, 256),
         "64->128 16x16": (32, 64, 16, 128), "32->64 16x16 (ResNet)": (32, 32, 16, 64)}


def main(rounds: int) -> None:
    backend = get_backend("numpy")
    tile_isas = S.S2_FILTER_TILE_GEMM_ISAS
    rng = np.random.default_rng(0)
    for name, (n, c, h, o) in CASES.items():
        ho = (h + 2 - 3) // 2 + 1
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        dy = rng.standard_normal((n, o, ho, ho), dtype=np.float32)
        dw = np.empty((o, c, 3, 3), np.float32)
        ws = Workspace()
        times = {"np.matmul": [], "tile_gemm": []}
        variants = {"np.matmul": (), "tile_gemm": tile_isas}
        for isas in variants.values():
            S.S2_FILTER_TILE_GEMM_ISAS = isas
            S._s2_backward_filter(backend, x, dy, dw.shape, (2, 2), (1, 1), (1, 1), 1, dw, False, ws)
        for _ in range(rounds):
            for key, isas in variants.items():
                S.S2_FILTER_TILE_GEMM_ISAS = isas
                start = time.perf_counter()
                S._s2_backward_filter(backend, x, dy, dw.shape, (2, 2), (1, 1), (1, 1), 1, dw, False, ws)
                times[key].append(time.perf_counter() - start)
        S.S2_FILTER_TILE_GEMM_ISAS = tile_isas
        old, new = (statistics.median(t) * 1e3 for t in times.values())
        print(f"{name:38s} np.matmul {old:7.3f} ms  tile_gemm {new:7.3f} ms  ratio {new / old:.3f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21)
