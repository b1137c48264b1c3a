"""The NumPy backend's CPU-kind rules (spatial.FULL_WIDTH_CPUS and DIRECT_FAVOURED_CPUS) measured on
this machine, in one process, alternating: (1) per layer, the direct kernel against Winograd (F(2x2, 3x3), or
F(2x2, 5x5) for 5x5) for the forward and the input gradient, batch 32, Winograd with its GEMMs
as the rules place them and forced onto np.matmul (BLAS); (2) whole workloads with the rules on
(this CPU's kind as listed) and off (the rules of every other kind), and with F(2x2, 3x3) from
32 channels summed over where the kind asks for DIRECT_FAVOURED_WINOGRAD_MIN_IN (the rule
session 35 measured and kept off). Medians in ms and their ratio; below 1 the second column wins.

    python bench/ab_numpy_cpu_kind.py [rounds]
"""
import os
import statistics
import sys
import time

import numpy as np

from juicepy.backends import backend as get_backend
from juicepy.backends.base import Workspace
from juicepy.backends.numpy import spatial as S

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bench_cnn as cnn  # noqa: E402
import test_bench_conv as conv  # noqa: E402

B = 32
# name -> (input channels, output channels, plane side, kernel size)
LAYERS = {"res 32->32 16x16": (32, 32, 16, 3), "cifar 32->64 16x16": (32, 64, 16, 3),
          "res 64->64 8x8": (64, 64, 8, 3), "cifar 64->128 8x8": (64, 128, 8, 3),
          "res 16->16 32x32": (16, 16, 32, 3), "32->32 32x32": (32, 32, 32, 3),
          "64->64 16x16": (64, 64, 16, 3), "64->64 32x32": (64, 64, 32, 3), "5x5 32->32 32x32": (32, 32, 32, 5)}


def alternate(runs: dict, rounds: int) -> dict:
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            run()
            times[name].append((time.perf_counter() - start) / 2)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def layers(backend, rounds):
    rng = np.random.default_rng(0)
    print(f"CPU {backend.conv_kernels.cpu_vendor} family {backend.conv_kernels.cpu_family:#x}, "
          f"isa {backend.conv_kernels.isa}; per layer, ms: direct, Winograd, Winograd / direct, "
          f"Winograd with its GEMMs on np.matmul")
    for name, (c, o, hw, k) in LAYERS.items():
        # the backend's own arrays (64-byte aligned, as a Context's; see ab_numpy_isa.py)
        x = backend.from_host(rng.standard_normal((B, c, hw, hw), dtype=np.float32))
        w = backend.from_host(rng.standard_normal((o, c, k, k), dtype=np.float32))
        out = backend.empty((B, o, hw, hw), np.float32)
        dy = backend.from_host(rng.standard_normal(out.shape, dtype=np.float32))
        dx = backend.empty(x.shape, np.float32)
        plan = S._ConvPlan(x.shape, w.shape, (hw, hw), (1, 1), (k // 2, k // 2), (1, 1), 1)
        ws = Workspace()
        wino_fwd, wino_data = (S._wg_forward, S._wg_backward_data) if k == 5 else \
            (S._winograd_forward, S._winograd_backward_data)
        m = alternate({"fwd direct": lambda: S._direct_forward(backend, x, w, plan, ws, out),
                       "fwd winograd": lambda: wino_fwd(backend, x, w, plan, ws, out),
                       "fwd blas": on_blas(lambda: wino_fwd(backend, x, w, plan, ws, out)),
                       "data direct": lambda: S._direct_backward_data(backend, dy, w, plan, dx, False, ws),
                       "data winograd": lambda: wino_data(backend, dy, w, plan, dx, False, ws),
                       "data blas": on_blas(lambda: wino_data(backend, dy, w, plan, dx, False, ws))}, rounds)
        print(f"  {name:20s} forward {m['fwd direct']:7.3f} {m['fwd winograd']:7.3f} "
              f"{m['fwd winograd'] / m['fwd direct']:5.2f} {m['fwd blas']:7.3f}   input gradient "
              f"{m['data direct']:7.3f} {m['data winograd']:7.3f} {m['data winograd'] / m['data direct']:5.2f} "
              f"{m['data blas']:7.3f}", flush=True)


def on_blas(run):
    """run with _tile_run's GEMMs on np.matmul whatever the rules say."""
    def timed():
        saved = S.TILE_GEMM_MIN_DEPTH, S.FULL_WIDTH_TILE_GEMM_MIN_DEPTH
        S.TILE_GEMM_MIN_DEPTH = S.FULL_WIDTH_TILE_GEMM_MIN_DEPTH = 1 << 30
        try:
            run()
        finally:
            S.TILE_GEMM_MIN_DEPTH, S.FULL_WIDTH_TILE_GEMM_MIN_DEPTH = saved
    return timed


def workloads(backend, rounds):
    listed = {rule: set(getattr(S, rule)) for rule in ("FULL_WIDTH_CPUS", "DIRECT_FAVOURED_CPUS")}
    runs = {}
    for model in cnn.MODELS:
        runs[f"{model} adam step"] = cnn.juicepy_step(backend, model)
        runs[f"{model} forward"] = cnn.juicepy_forward(backend, model)
    for case in ("5x5 32->32 32x32 b32", "3x3 64->64 32x32 b32"):
        runs[f"conv {case} fwd+bwd"] = conv.juicepy_fwd_bwd(backend, case)
    print("workloads, ms: rules off, rules on, on / off")
    for name, run in runs.items():
        def rules(on, run=run):
            def timed():
                for rule, kinds in listed.items():
                    getattr(S, rule).clear()
                    if on:
                        getattr(S, rule).update(kinds)
                run()
            return timed
        m = alternate({"off": rules(False), "on": rules(True)}, rounds)
        print(f"  {name:45s} {m['off']:8.3f} {m['on']:8.3f} {m['on'] / m['off']:6.3f}", flush=True)
    for rule, kinds in listed.items():
        getattr(S, rule).update(kinds)
    if not S._direct_favoured(backend):
        return
    kept = S.DIRECT_FAVOURED_WINOGRAD_MIN_IN
    print(f"workloads, ms: F(2x2, 3x3) from {kept} channels summed over (the rule), from 32, 32 / {kept}")
    for name, run in runs.items():
        def min_in(value, run=run):
            def timed():
                S.DIRECT_FAVOURED_WINOGRAD_MIN_IN = value
                try:
                    run()
                finally:
                    S.DIRECT_FAVOURED_WINOGRAD_MIN_IN = kept
            return timed
        m = alternate({"kept": min_in(kept), "32": min_in(32)}, rounds)
        print(f"  {name:45s} {m['kept']:8.3f} {m['32']:8.3f} {m['32'] / m['kept']:6.3f}", flush=True)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    numpy_backend = get_backend("numpy")
    if numpy_backend.conv_kernels is None:
        sys.exit("the C kernels are not built here (pip install . builds them)")
    layers(numpy_backend, rounds)
    workloads(numpy_backend, rounds)
