"""Builds of the NumPy backend's _conv_kernels module side by side in one process: each .so is
loaded under a package of its own name, checked for the same output bits as the first, and the
Winograd input transforms timed alternating (one lane, a batch's samples one call each, medians).
Build each variant, copy its .so aside, then:

    python bench/ab_numpy_builds.py old=/tmp/old.so new=/tmp/new.so [rounds]

Transforms: wg_input of the conv bench's 5x5 layer (32 -> 32, 32x32, batch 32), winograd_input of
its 3x3 layer (64 -> 64, 32x32) and s2_input of its strided layer (3x3 stride 2, 64 -> 128)."""
import importlib.util
import statistics
import sys
import time

import numpy as np

from juicepy.backends.numpy import spatial as S


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(f"{name}._conv_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def transforms(batch=32):
    """name -> (call(module, out), output buffer)."""
    rng = np.random.default_rng(0)
    x5 = rng.standard_normal((batch, 32, 32, 32), dtype=np.float32)
    g5 = (32, 32, 32, 5, 5, 1, 1, 2, 2, 1, 1, 32, 32)
    ks5, mats = 32 * 256 + 16, S._wg_matrices(2, 5)
    x3 = rng.standard_normal((batch, 64, 32, 32), dtype=np.float32)
    g3 = (64, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 32, 32)
    ks3 = 64 * 256 + 16

    def wg_input(m, v):
        for n in range(batch):
            m.wg_input(x5, v, g5, batch, n, n + 1, 16, 16, ks5, 2, mats)

    def winograd_input(m, v):
        for n in range(batch):
            m.winograd_input(x3, v, g3, batch, n, n + 1, 16, 16, ks3)

    x2 = rng.standard_normal((batch, 64, 32, 32), dtype=np.float32)
    g2 = (64, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 16, 16)
    ks2, rows = 4 * 64 * 64 + 16, np.zeros(7 * (4 * 8 + 4), np.float32)

    def s2_input(m, v):
        for n in range(batch):
            m.s2_input(x2, v, g2, batch, n, n + 1, 8, 8, ks2, rows)

    return {"wg_input 5x5 32->32": (wg_input, np.zeros(36 * ks5, np.float32)),
            "winograd_input 3x3 64->64": (winograd_input, np.zeros(16 * ks3, np.float32)),
            "s2_input 3x3 s2 64->128": (s2_input, np.zeros(9 * ks2, np.float32))}


def main(argv) -> int:
    pairs = [a.split("=", 1) for a in argv if "=" in a]
    rounds = int(next((a for a in argv if "=" not in a), 15))
    if len(pairs) < 2:
        print(__doc__)
        return 2
    modules = {name: load(name, path) for name, path in pairs}
    for label, (call, out) in transforms().items():
        first = None
        for name, module in modules.items():
            out[:] = 0
            call(module, out)
            if first is None:
                first = out.copy()
            elif not np.array_equal(out, first):
                print(f"{label}: {name} differs from {pairs[0][0]}")
        times = {name: [] for name in modules}
        for _ in range(rounds):
            for name, module in modules.items():
                start = time.perf_counter()
                call(module, out)
                times[name].append(time.perf_counter() - start)
        print(f"{label}: " + ", ".join(f"{name} {statistics.median(t) * 1e3:.3f} ms" for name, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
