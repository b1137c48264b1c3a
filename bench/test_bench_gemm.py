"""GEMM throughput per backend, with NumPy's float32 matmul (and torch's, where importable) in
the same run. The flop count lands in extra_info, so report.py prints GFLOP/s and ratios:

    pytest bench/test_bench_gemm.py --benchmark-json=gemm.json && python bench/report.py gemm.json
"""

import numpy as np
import pytest


# (M, N, K, trans_a, trans_b): square NN, and the three products of a Linear(784 -> 512) step
SHAPES = {
    "1024x1024x1024": (1024, 1024, 1024, False, False),
    "fwd 128x512x784 (x @ W.T)": (128, 512, 784, False, True),
    "dW 512x784x128 (dy.T @ x)": (512, 784, 128, True, False),
    "dx 128x784x512 (dy @ W)": (128, 784, 512, False, False),
}


def _operands(m, n, k, ta, tb):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _record(benchmark, m, n, k):
    benchmark.extra_info["flops"] = 2 * m * n * k
    if benchmark.stats is not None:  # None under --benchmark-disable (CI runs each body once)
        benchmark.extra_info["gflops_median"] = round(2.0 * m * n * k / benchmark.stats.stats.median / 1e9, 1)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gemm(benchmark, backend, shape):
    m, n, k, ta, tb = SHAPES[shape]
    a, b = _operands(m, n, k, ta, tb)
    da, db, out = backend.from_host(a), backend.from_host(b), backend.empty((m, n))

    def step():
        backend.gemm(da, db, out, trans_a=ta, trans_b=tb)
        backend.synchronize()

    step()
    benchmark.group = f"gemm {shape}"
    benchmark(step)
    _record(benchmark, m, n, k)
    want = (a.T if ta else a) @ (b.T if tb else b)
    np.testing.assert_allclose(backend.to_host(out), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_numpy_matmul_reference(benchmark, shape):
    """Plain np.matmul into a preallocated out: the bar the backends are measured against."""
    m, n, k, ta, tb = SHAPES[shape]
    a, b = _operands(m, n, k, ta, tb)
    a, b = (a.T if ta else a), (b.T if tb else b)
    out = np.empty((m, n), np.float32)
    benchmark.group = f"gemm {shape}"
    benchmark(np.matmul, a, b, out=out)
    _record(benchmark, m, n, k)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_torch_matmul_reference(benchmark, shape):
    torch = pytest.importorskip("torch", reason="torch is not installed: no outside reference")
    m, n, k, ta, tb = SHAPES[shape]
    a, b = (torch.from_numpy(v) for v in _operands(m, n, k, ta, tb))
    a, b = (a.T if ta else a), (b.T if tb else b)
    out = torch.empty((m, n))
    benchmark.group = f"gemm {shape}"
    benchmark(torch.matmul, a, b, out=out)
    _record(benchmark, m, n, k)
