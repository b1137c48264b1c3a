"""The OpenCL backend's 16-lane GEMM configurations side by side, in one process:

    python bench/ab_opencl_gemm.py gemm|mlp|conv [ROUNDS] [VARIANT ...]
        gemm: the MLP 784-512-512-10 b128 step's products (x @ W^T, dY @ W, dY^T @ X) and 1024^3;
        mlp: that Adam step; conv: the workloads of bench/test_bench_conv.py (fwd+bwd and
        forward), the CIFAR CNN, the ResNet and LeNet-5 (ONLY=substring picks some).
        A variant is `cur` (the defaults), `narrow` (without gemm.cl's WIDE_REGS) or
        `KEY=VALUE[+KEY=VALUE]` overriding programs.CPU_GEMM[16] (BM, BN, BK, MR, DR, ...) or
        `DOT=n` (gemm.DOT_MAX_OUTPUTS); default `narrow cur`. Each variant is its own backend;
        rounds alternate them (two calls per sample) and the medians in ms are printed.

Run from the repository root under the cpu lock where the machine is shared; the NumPy backend
is not timed here (OpenBLAS's spinning threads would take a core from the next call).
"""
import os
import sys

sys.path.insert(0, "bench")

import numpy as np  # noqa: E402

from ab_numpy_cpu_kind import alternate  # noqa: E402
from juicepy.backends.opencl import OpenCLBackend, gemm, programs  # noqa: E402
from juicepy.backends.opencl import backend as backend_module  # noqa: E402

PRODUCTS = [(128, 512, 784, False, True), (128, 512, 512, False, True), (128, 10, 512, False, True),
            (128, 512, 512, False, False), (512, 784, 128, True, False), (512, 512, 128, True, False),
            (1024, 1024, 1024, False, False)]


def make(variant):
    """(backend, DOT_MAX_OUTPUTS) of a variant."""
    tiles, dot, wide = dict(programs.CPU_GEMM[16]), gemm.DOT_MAX_OUTPUTS, backend_module.wide_register_defines
    if variant == "narrow":
        wide = lambda *args: {}  # noqa: E731
    elif variant != "cur":
        for item in variant.split("+"):
            key, value = item.split("=")
            if key == "DOT":
                dot = int(value)
            else:
                tiles[key] = int(value)
    saved = programs.CPU_GEMM[16], backend_module.wide_register_defines
    programs.CPU_GEMM[16], backend_module.wide_register_defines = tiles, wide
    try:
        return OpenCLBackend(vector_width=16), dot
    finally:
        programs.CPU_GEMM[16], backend_module.wide_register_defines = saved


def timed(backend, dot, run):
    def f():
        gemm.DOT_MAX_OUTPUTS = dot
        run()
        backend.synchronize()
    return f


def main():
    what = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    variants = {v: make(v) for v in (sys.argv[3:] or ["narrow", "cur"])}
    rng = np.random.default_rng(0)
    if what == "gemm":
        work = []
        for m, n, k, ta, tb in PRODUCTS:
            def build(b, m=m, n=n, k=k, ta=ta, tb=tb):
                a = b.from_host(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
                w = b.from_host(rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32))
                c = b.empty((m, n))
                return lambda: b.gemm(a, w, c, ta, tb)
            work.append((f"{m}x{n}x{k} ta={int(ta)} tb={int(tb)}", build))
    elif what == "mlp":
        import test_bench_mlp as mlp
        work = [("mlp 784-512-512-10 b128 step", mlp.juicepy_small_step)]
    else:
        import test_bench_cnn as cnn
        import test_bench_conv as conv
        import test_bench_lenet as lenet
        work = [(f"conv {case} {mode}", lambda b, case=case, mode=mode:
                 (conv.juicepy_fwd_bwd if mode == "fwd+bwd" else conv.juicepy_forward)(b, case))
                for case in conv.CASES for mode in ("fwd+bwd", "forward")]
        work += [(f"{model} {mode}", lambda b, model=model, mode=mode:
                  (cnn.juicepy_step if mode == "step" else cnn.juicepy_forward)(b, model))
                 for model in cnn.MODELS for mode in ("step", "forward")]
        work += [("lenet step", lenet.juicepy_step), ("lenet forward", lenet.juicepy_forward)]
        work = [w for w in work if os.environ.get("ONLY", "") in w[0]]
    for name, build in work:
        medians = alternate({v: timed(b, dot, build(b)) for v, (b, dot) in variants.items()}, rounds)
        print(f"{name:44s}", "  ".join(f"{v} {t:.3f}" for v, t in medians.items()), flush=True)


if __name__ == "__main__":
    main()
