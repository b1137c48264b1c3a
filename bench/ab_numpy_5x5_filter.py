"""In-process A/B of the NumPy backend's 5x5 stride-1 weight gradient (float32, padding 2): the
direct kernel (_direct_backward_filter) against Winograd F(5x5, 2x2) (_wg_backward_filter, its
GEMMs on tile_gemm), alternated every round, and with ``--tiles`` the latter's chunk size
(WG_FILTER_TILES) too. Prints per layer the median ms of each and the ratio to the direct kernel.

    python bench/ab_numpy_5x5_filter.py [ROUNDS] [--tiles]
"""
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as S

# name -> (batch, C, H=W, O)
CASES = {"32->32 32x32 (the bench's 5x5)": (32, 32, 32, 32), "32->32 16x16": (32, 32, 16, 32),
         "64->64 16x16": (32, 64, 16, 64), "32->64 32x32": (32, 32, 32, 64)}


def main(rounds: int, tiles: bool) -> None:
    backend = get_backend("numpy")
    rng = np.random.default_rng(0)
    chunk_tiles = (256, 512, 1024, 2048) if tiles else (S.WG_FILTER_TILES,)
    default = S.WG_FILTER_TILES
    for name, (n, c, h, o) in CASES.items():
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        dy = rng.standard_normal((n, o, h, h), dtype=np.float32)
        dw = np.empty((o, c, 5, 5), np.float32)
        ws = Workspace()
        args = (backend, x, dy, dw.shape, (1, 1), (2, 2), (1, 1), 1, dw, False, ws)
        variants = {"direct": (S._direct_backward_filter, default)}
        variants.update({f"wg/{t}": (S._wg_backward_filter, t) for t in chunk_tiles})
        times = {key: [] for key in variants}
        for run, t in variants.values():
            S.WG_FILTER_TILES = t
            run(*args)
        for _ in range(rounds):
            for key, (run, t) in variants.items():
                S.WG_FILTER_TILES = t
                start = time.perf_counter()
                run(*args)
                times[key].append(time.perf_counter() - start)
        S.WG_FILTER_TILES = default
        base = statistics.median(times["direct"])
        print(name + ": " + ", ".join(f"{key} {statistics.median(v) * 1e3:.3f} ms ({statistics.median(v) / base:.3f})"
                                      for key, v in times.items()))


if __name__ == "__main__":
    main(int(next((a for a in sys.argv[1:] if a.isdigit()), 15)), "--tiles" in sys.argv)
