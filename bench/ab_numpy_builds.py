"""Builds of the NumPy backend's _conv_kernels module side by side in one process: each .so is
loaded under a package of its own name, checked for the same output bits as the first, and the
Winograd input transforms timed alternating (one lane, a batch's samples one call each, medians).
Build each variant, copy its .so aside, then:

    python bench/ab_numpy_builds.py old=/tmp/old.so new=/tmp/new.so [rounds]

Transforms: wg_input of the conv bench's 5x5 layer (32 -> 32, 32x32, batch 32), winograd_input of
its 3x3 layer (64 -> 64, 32x32), the strided layer's (3x3 stride 2, 64 -> 128) s2_input,
s2_output, s2d_input, s2d_output and s2_grad_t, the dilated layer's (d2) winograd_input and
winograd_output, and the strided depthwise layer's (3x3 stride 2, 64 channels) depthwise_phase_data."""
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

    # the strided layer's other transforms (forward output, input gradient, weight gradient's dy)
    ms2 = 128 * 64 + 16
    m2 = rng.standard_normal(9 * ms2, dtype=np.float32)
    y2 = np.zeros((batch, 128, 16, 16), np.float32)
    dy2 = rng.standard_normal((batch, 128, 16, 16), dtype=np.float32)
    gd = (128, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1, 32, 32)
    ksd, rowsd = 128 * 64 + 16, np.zeros(16 * 8 + 16, np.float32)
    md = rng.standard_normal(25 * ksd, dtype=np.float32)
    dx2 = np.zeros((batch, 64, 32, 32), np.float32)
    # the dilated 3x3 layer (d2, padding 2)
    gdil = (64, 32, 32, 3, 3, 1, 1, 2, 2, 2, 2, 32, 32)
    mdil = rng.standard_normal(16 * ks3, dtype=np.float32)
    ydil = np.zeros((batch, 64, 32, 32), np.float32)

    def s2_output(m, out):
        for n in range(batch):
            m.s2_output(m2, y2, g2, 128, batch, n, n + 1, 8, 8, ms2, rows)
        out[:] = y2.ravel()

    def s2d_input(m, v):
        for n in range(batch):
            m.s2d_input(dy2, v, gd, batch, n, n + 1, 8, 8, ksd, rowsd)

    def s2d_output(m, out):
        for n in range(batch):
            m.s2d_output(md, dx2, gd, 64, batch, n, n + 1, 8, 8, ksd, False, rowsd)
        out[:] = dx2.ravel()

    def s2_grad_t(m, e):
        for n in range(0, batch, 4):
            m.s2_grad_t(e, dy2, g2, 128, batch, n, n + 4, 8, 8, 4 * ms2)

    def winograd_input_d2(m, v):
        for n in range(batch):
            m.winograd_input(x3, v, gdil, batch, n, n + 1, 16, 16, ks3)

    def winograd_output_d2(m, out):
        for n in range(batch):
            m.winograd_output(mdil, ydil, gdil, 64, batch, n, n + 1, 16, 16, ks3, False)
        out[:] = ydil.ravel()

    # the strided depthwise layer (3x3, stride 2, 64 channels): its input gradient, a sample a call
    wdw = rng.standard_normal((64, 1, 3, 3), dtype=np.float32)
    dydw = rng.standard_normal((batch, 64, 16, 16), dtype=np.float32)
    gdw = (64, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 16, 16)
    dxdw = np.zeros((batch, 64, 32, 32), np.float32)

    def depthwise_phase_data(m, out):
        for n in range(batch):
            m.depthwise_phase_data(dydw, wdw, dxdw, gdw, batch, n * 64, (n + 1) * 64, False)
        out[:] = dxdw.ravel()

    return {"wg_input 5x5 32->32": (wg_input, np.zeros(36 * ks5, np.float32)),
            "winograd_input 3x3 64->64": (winograd_input, np.zeros(16 * ks3, np.float32)),
            "s2_input 3x3 s2 64->128": (s2_input, np.zeros(9 * ks2, np.float32)),
            "s2_output 3x3 s2 64->128": (s2_output, np.zeros(y2.size, np.float32)),
            "s2d_input 3x3 s2 64->128": (s2d_input, np.zeros(25 * ksd, np.float32)),
            "s2d_output 3x3 s2 64->128": (s2d_output, np.zeros(dx2.size, np.float32)),
            "s2_grad_t 3x3 s2 64->128": (s2_grad_t, np.zeros(9 * 4 * ms2, np.float32)),
            "winograd_input 3x3 d2 64->64": (winograd_input_d2, np.zeros(16 * ks3, np.float32)),
            "winograd_output 3x3 d2 64->64": (winograd_output_d2, np.zeros(ydil.size, np.float32)),
            "depthwise_phase_data 3x3 s2 64": (depthwise_phase_data, np.zeros(dxdw.size, np.float32))}


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
