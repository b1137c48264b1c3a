"""In-process A/B of the NumPy backend's stride-1 3x3 weight gradient (float32, batch 32): Winograd
F(3x3, 2x2) (_winograd_backward_filter) with its GEMMs on np.matmul and on tile_gemm
(WINOGRAD_FILTER_TILE_GEMM_ISAS emptied / set), and the direct kernel, alternated every round;
per layer the median ms of each and the largest difference of the tile_gemm result from the
direct kernel's, relative to its largest tap.

    python bench/ab_numpy_wino_filter.py [ROUNDS]
"""
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as S

# name -> (C, H=W, O, dilation, padding)
CASES = {"3x3 64->64 32x32": (64, 32, 64, 1, 1), "dilated d2 64->64 32x32": (64, 32, 64, 2, 2),
         "ResNet 32->32 16x16": (32, 16, 32, 1, 1), "CIFAR 32->64 16x16": (32, 16, 64, 1, 1),
         "CIFAR 64->128 8x8": (64, 8, 128, 1, 1), "ResNet 64->64 8x8": (64, 8, 64, 1, 1)}


def main(rounds: int) -> None:
    backend = get_backend("numpy")
    blocked = S.WINOGRAD_FILTER_TILE_GEMM_ISAS
    rng = np.random.default_rng(0)
    for name, (c, h, o, d, p) in CASES.items():
        x = rng.standard_normal((32, c, h, h), dtype=np.float32)
        dy = rng.standard_normal((32, o, h, h), dtype=np.float32)
        dw = np.empty((o, c, 3, 3), np.float32)
        ws = Workspace()
        geo = ((1, 1), (p, p), (d, d), 1)

        def winograd(isas):
            def run():
                S.WINOGRAD_FILTER_TILE_GEMM_ISAS = isas
                S._winograd_backward_filter(backend, x, dy, dw.shape, *geo, dw, False, ws)
            return run

        variants = {"np.matmul": winograd(()), "tile_gemm": winograd(blocked),
                    "direct": lambda: S._direct_backward_filter(backend, x, dy, dw.shape, *geo, dw, False, ws)}
        results = {}
        for key, run in variants.items():
            run()
            results[key] = dw.copy()
        times = {key: [] for key in variants}
        for _ in range(rounds):
            for key, run in variants.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        S.WINOGRAD_FILTER_TILE_GEMM_ISAS = blocked
        error = np.abs(results["tile_gemm"] - results["direct"]).max() / np.abs(results["direct"]).max()
        print(f"{name:24s} " + "  ".join(f"{k} {statistics.median(t) * 1e3:.3f} ms" for k, t in times.items())
              + f"  tile_gemm vs direct {error:.1e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
