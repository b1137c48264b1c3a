"""The CUDA emulator itself: CUDA's semantics (indices, barriers, shared memory, warp
collectives, atomics) on small kernels written here, each misuse reported by name, the forward
vs reverse schedule check, the build cache, and the column-major cuBLAS GEMM."""

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cuda_emulator
from cuda_emulator import EmulatorError, Module
from cuda_emulator import cupy as emulated
from cupy_standin import CublasError, gemm_column_major

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None, reason="no C++ compiler for the CUDA emulator")

SOURCE = r"""
typedef long long i64;
extern "C" {

__global__ void indices(int* out) {  // (block, thread) coordinates of every thread, 3-D
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int i = b * blockDim.x * blockDim.y * blockDim.z + t;
    out[4 * i] = b; out[4 * i + 1] = threadIdx.x; out[4 * i + 2] = threadIdx.y; out[4 * i + 3] = threadIdx.z;
}

__global__ void block_sum(const float* x, float* out, int n) {  // tree reduction in shared memory
    __shared__ float s[256];
    float v = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
    s[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

__global__ void dynamic_reverse(const double* x, double* out) {  // extern __shared__ sized at launch
    extern __shared__ double buf[];
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

__global__ void shuffles(const int* x, int* out, int width) {
    const int v = x[threadIdx.x], lane = threadIdx.x & 31;
    int* o = out + 8 * threadIdx.x;
    o[0] = __shfl_down_sync(0xffffffffu, v, 3, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, 5, width);
    o[2] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    o[3] = __shfl_sync(0xffffffffu, v, 7, width);
    o[4] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    o[5] = __any_sync(0xffffffffu, v == 40);
    o[6] = __all_sync(0xffffffffu, v >= 0);
    __syncwarp();
    o[7] = lane;
}

__global__ void count_atomically(unsigned* counter, float* total, i64* big) {
    atomicAdd(counter, 1u);
    atomicAdd(total, 0.5f);
    atomicMax(big, (i64)(blockIdx.x * blockDim.x + threadIdx.x));
}

__global__ void half_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void two_barriers(float* out) {
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void mask_without_me(int* out) {
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);
}

__global__ void mask_disagrees(int* out) {
    const unsigned mask = threadIdx.x == 0 ? 0xffffffffu : 0xfffffffeu;
    out[threadIdx.x] = __shfl_down_sync(mask, (int)threadIdx.x, 1);
}

__global__ void reads_outside_mask(int* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, (int)threadIdx.x, 8);
}

__global__ void shuffle_never_completed(int* out) {
    if (threadIdx.x < 31) out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void missing_barrier(const float* x, float* out) {
    __shared__ float first;
    if (threadIdx.x == 0) first = x[blockIdx.x];
    // no __syncthreads(): the other threads may read `first` before thread 0 wrote it
    out[blockIdx.x * blockDim.x + threadIdx.x] = first;
}

__global__ void last_writer_wins(int* out) { out[0] = threadIdx.x; }

__global__ void scalar_types(double* out, float f, double d, int i, unsigned u, i64 l) {
    out[0] = f; out[1] = d; out[2] = i; out[3] = u; out[4] = (double)l;
}
}
"""


@pytest.fixture(scope="module")
def module():
    return Module(SOURCE)


class Dev:
    """A host array handed to a kernel the way CuPy arrays are (``.data.ptr``)."""

    def __init__(self, array):
        self.array = array
        self.data = type("Pointer", (), {"ptr": array.ctypes.data})()


def run(module, name, grid, block, *args, shared=0, reverse=False):
    kernel = module.get_function(name)
    kernel.launch(grid, block, kernel.marshal([Dev(a) if isinstance(a, np.ndarray) else a for a in args]),
                  shared, reverse)


ORDERS = pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])


# ------------------------------------------------------------------ CUDA semantics
@ORDERS
def test_every_thread_sees_its_own_3d_coordinates(module, reverse):
    grid, block = (2, 3, 2), (4, 2, 3)
    n = 12 * 24
    out = np.full((n, 4), -1, np.int32)
    run(module, "indices", grid, block, out, reverse=reverse)
    t = np.arange(24)
    expected = np.stack([np.repeat(np.arange(12), 24), np.tile(t % 4, 12), np.tile(t // 4 % 2, 12),
                         np.tile(t // 8, 12)], axis=1)
    np.testing.assert_array_equal(out, expected)


@ORDERS
def test_barriers_make_a_shared_memory_reduction_exact(module, reverse, rng):
    x = rng.integers(-100, 100, (5, 1000)).astype(np.float32)  # integers: the sum is exact in any order
    out = np.zeros(5, np.float32)
    run(module, "block_sum", (5,), (256,), x, out, np.int32(1000), reverse=reverse)
    np.testing.assert_array_equal(out, x.sum(axis=1))


def test_dynamic_shared_memory_is_sized_by_the_launch(module, rng):
    x = rng.standard_normal(96)
    out = np.zeros(96)
    run(module, "dynamic_reverse", (1,), (96,), x, out, shared=96 * 8)
    np.testing.assert_array_equal(out, x[::-1])


@ORDERS
@pytest.mark.parametrize("width", [32, 16, 8])
def test_warp_collectives_follow_the_cuda_definitions(module, reverse, width, rng):
    x = rng.integers(0, 50, 64).astype(np.int32)
    x[5] = 40
    out = np.zeros((64, 8), np.int32)
    run(module, "shuffles", (1,), (64,), x, out, np.int32(width), reverse=reverse)
    for t in range(64):
        warp, lane = divmod(t, 32)
        seg = lane // width * width
        src = lambda lane_: x[warp * 32 + lane_]  # noqa: E731
        rel = lane - seg
        assert out[t, 0] == (src(lane + 3) if rel + 3 < width else x[t])
        assert out[t, 1] == (src(lane - 5) if rel >= 5 else x[t])
        assert out[t, 2] == (src(lane ^ 6) if (lane ^ 6) // width == lane // width else x[t])
        assert out[t, 3] == src(seg + 7 % width)
        ballot = sum(1 << i for i in range(32) if x[warp * 32 + i] % 3 == 0)
        assert out[t, 4] == np.int32(np.uint32(ballot).view(np.int32))
        assert out[t, 5] == (1 if warp == 0 else int((x[32:] == 40).any()))
        assert out[t, 6] == 1 and out[t, 7] == lane


@pytest.mark.parametrize("workers", [1, 2])
def test_atomics_count_every_thread_across_workers(module, workers):
    counter, total, big = np.zeros(1, np.uint32), np.zeros(1, np.float32), np.zeros(1, np.int64)
    kernel = module.get_function("count_atomically")
    kernel.launch((40,), (128,), kernel.marshal([Dev(counter), Dev(total), Dev(big)]), workers=workers)
    assert counter[0] == 40 * 128 and total[0] == 40 * 128 * 0.5 and big[0] == 40 * 128 - 1


def test_scalar_arguments_arrive_with_their_c_types(module):
    out = np.zeros(5)
    run(module, "scalar_types", (1,), (32,), out, np.float32(1.5), np.float64(-2.25), np.int32(-7),
        np.uint32(2 ** 32 - 1), np.int64(-(2 ** 40)))
    np.testing.assert_array_equal(out, [1.5, -2.25, -7, 2 ** 32 - 1, -(2 ** 40)])


def test_argument_types_are_checked_like_a_gpu_would_need(module):
    kernel = module.get_function("scalar_types")
    out = Dev(np.zeros(5))
    with pytest.raises(EmulatorError, match=r"argument 1 \(f32\): got float64, the kernel reads float32"):
        kernel.marshal([out, np.float64(1), np.float64(1), np.int32(1), np.uint32(1), np.int64(1)])
    with pytest.raises(EmulatorError, match="5 arguments, it takes 6"):
        kernel.marshal([out, np.float32(1), np.float64(1), np.int32(1), np.uint32(1)])


def test_launch_configuration_is_checked(module):
    out = np.zeros(4096, np.float32)
    with pytest.raises(EmulatorError, match="invalid block"):
        run(module, "half_barrier", (1,), (2048,), out)
    with pytest.raises(EmulatorError, match="invalid grid"):
        run(module, "half_barrier", (0,), (32,), out)


# ------------------------------------------------------------------ misuse, reported by name
@ORDERS
@pytest.mark.parametrize("name, message", [
    ("half_barrier", r"__syncthreads\(\) in half_barrier line \d+ is not reached by every thread of the block: "
                     r"threads 0..15 wait there, threads 16..31 have exited"),
    ("two_barriers", r"threads of one block wait at different __syncthreads\(\)"),
    ("mask_without_me", r"__shfl_sync in mask_without_me line \d+: lane (16|31) of warp 0 calls it with mask "
                        r"0x0000ffff, which leaves the calling lane out"),
    ("reads_outside_mask", r"lane 8 of warp 0 reads lane 16, which is not in the mask 0x0000ffff"),
    ("shuffle_never_completed", r"__shfl_down_sync\(mask 0xffffffff\) in shuffle_never_completed line \d+ is never "
                                r"completed: lanes 31 of warp 0 do not reach it \(lane 31 exited\)"),
])
def test_undefined_synchronisation_is_reported_by_name(module, reverse, name, message):
    with pytest.raises(EmulatorError, match=message) as err:
        run(module, name, (2,), (32,), np.zeros(64, np.int32 if "mask" in name or "shuffle" in name else np.float32),
            reverse=reverse)
    assert f"kernel {name}, block (" in str(err.value)
    assert "\n    line " in str(err.value)  # the offending source line is quoted


def test_inconsistent_masks_are_reported(module):
    with pytest.raises(EmulatorError, match=r"inconsistent warp collective in warp 0: lane 1 calls "
                                            r"__shfl_down_sync\(mask 0xfffffffe, width 32\).*lanes 0 wait in "
                                            r"__shfl_down_sync\(mask 0xffffffff"):
        run(module, "mask_disagrees", (1,), (32,), np.zeros(32, np.int32))


def test_the_module_stays_usable_after_a_report(module, rng):
    with pytest.raises(EmulatorError):
        run(module, "half_barrier", (3,), (256,), np.zeros(256, np.float32))
    test_barriers_make_a_shared_memory_reduction_exact(module, True, rng)


@pytest.fixture
def emulator():
    return emulated.Emulator()


def _launch_both(emulator, module, name, grid, block, arrays, scalars=()):
    kernel = module.get_function(name)
    emulator.run_kernel(kernel, grid, block, kernel.marshal([Dev(a) for a in arrays] + list(scalars)), 0, arrays)


@pytest.mark.parametrize("name, arrays", [
    ("missing_barrier", lambda: [np.arange(4, dtype=np.float32) + 1, np.zeros(4 * 64, np.float32)]),
    ("last_writer_wins", lambda: [np.zeros(1, np.int32)]),
])
def test_a_result_that_depends_on_the_thread_order_is_reported(module, emulator, name, arrays):
    with pytest.raises(EmulatorError, match=rf"kernel {name} .*depends on the order the threads run in.*"
                                            r"__syncthreads\(\) is missing or threads race"):
        _launch_both(emulator, module, name, (4,), (64,), arrays())


def test_a_correct_kernel_passes_the_order_check(module, emulator, rng):
    x = rng.integers(-9, 9, (3, 500)).astype(np.float32)
    out = np.zeros(3, np.float32)
    _launch_both(emulator, module, "block_sum", (3,), (128,), [x, out], [np.int32(500)])
    np.testing.assert_array_equal(out, x.sum(axis=1))


# ------------------------------------------------------------------ building
def test_builds_are_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv(cuda_emulator.CACHE_ENV_VAR, str(tmp_path))
    source = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = 1; }\n'
    first = cuda_emulator.build_library(source, ("-Dunused=1",))
    stamp = first.stat().st_mtime_ns
    assert cuda_emulator.build_library(source, ("-Dunused=1",)) == first and first.stat().st_mtime_ns == stamp
    assert cuda_emulator.build_library(source + "// changed\n", ("-Dunused=1",)) != first
    assert cuda_emulator.build_library(source, ("-Dunused=2",)) != first
    assert tmp_path in first.parents and Path(cuda_emulator.__file__).parent not in first.parents


def test_unknown_compile_options_are_refused():
    assert cuda_emulator.host_flags(["-Dreal=float", "--fmad=false", "-ftz=true"]) == ["-Dreal=float"]
    with pytest.raises(EmulatorError, match="does not know the compile option '--use_fast_math'"):
        cuda_emulator.host_flags(["--use_fast_math"])


def test_a_compile_error_is_reported_with_the_compiler_output():
    with pytest.raises(EmulatorError, match="(?s)could not compile.*undeclared_name"):
        Module('extern "C" __global__ void k(float* x) { x[0] = undeclared_name; }\n')


# ------------------------------------------------------------------ cuBLAS
def _col_major(rng, rows, cols, ld, dtype):
    """A column-major rows x cols matrix in a buffer of ld * cols, padding filled with NaN."""
    buf = np.full((cols, ld), np.nan, dtype)
    values = rng.standard_normal((rows, cols)).astype(dtype)
    buf[:, :rows] = values.T
    return buf, values


def _ptr(a):
    return a.ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transa, transb", [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0)])
def test_gemm_honours_transposes_and_leading_dimensions(rng, dtype, transa, transb):
    m, n, k = 5, 4, 3
    a_buf, a = _col_major(rng, *((m, k) if transa == 0 else (k, m)), 7, dtype)
    b_buf, b = _col_major(rng, *((k, n) if transb == 0 else (n, k)), 6, dtype)
    c_buf, c = _col_major(rng, m, n, 9, dtype)
    op = lambda x, t: x if t == 0 else x.T  # noqa: E731
    expected = 0.5 * (op(a, transa).astype(np.float64) @ op(b, transb)) - 2.0 * c
    gemm_column_major(dtype, transa, transb, m, n, k, 0.5, _ptr(a_buf), 7, _ptr(b_buf), 6, -2.0, _ptr(c_buf), 9)
    np.testing.assert_allclose(c_buf[:, :m].T, expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(c_buf[:, m:]).all()  # the padding rows of C stay untouched


def test_gemm_with_beta_zero_does_not_read_c(rng):
    a = np.ones((2, 2), np.float32)
    c = np.full((2, 2), np.nan, np.float32)
    gemm_column_major(np.float32, 0, 0, 2, 2, 2, 1.0, _ptr(a), 2, _ptr(a), 2, 0.0, _ptr(c), 2)
    np.testing.assert_array_equal(c, np.full((2, 2), 2.0))


@pytest.mark.parametrize("args, message", [
    (dict(lda=2), r"lda=2 < max\(1, 3\)"), (dict(ldb=1), r"ldb=1 < max\(1, 2\)"), (dict(ldc=2), r"ldc=2 < max\(1, 3\)"),
    (dict(transa=3), "transa=3"), (dict(k=-1), "k=-1"),
])
def test_gemm_refuses_what_cublas_refuses(args, message):
    a = np.zeros(64, np.float32)
    call = dict(transa=0, transb=0, m=3, n=4, k=2, lda=3, ldb=2, ldc=3) | args
    with pytest.raises(CublasError, match=message):
        gemm_column_major(np.float32, call["transa"], call["transb"], call["m"], call["n"], call["k"], 1.0, _ptr(a),
                          call["lda"], _ptr(a), call["ldb"], 0.0, _ptr(a), call["ldc"])


def test_gemm_reaching_past_its_allocation_is_an_out_of_bounds_access(emulator):
    a, c = emulator.zeros((3, 4)), emulator.zeros((3, 3))  # A is read as 4 x 3 (transposed), lda 4
    gemm_column_major(np.float32, 1, 0, 3, 3, 4, 1.0, a.data.ptr, 4, a.data.ptr, 4, 0.0, c.data.ptr, 3,
                      check_range=emulator.memory.check)
    with pytest.raises(EmulatorError, match=r"cuBLAS sgemm A: .* not inside one device allocation"):
        gemm_column_major(np.float32, 1, 0, 3, 3, 4, 1.0, a.data.ptr, 5, a.data.ptr, 4, 0.0, c.data.ptr, 3,
                          check_range=emulator.memory.check)


# ------------------------------------------------------------------ capture
def test_a_captured_stream_runs_nothing_until_the_graph_is_launched(emulator):
    module = emulator.cupy_module()
    x = module.zeros((4,))
    stream = module.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        x.fill(3.0)
        with pytest.raises(emulated.CUDARuntimeError, match="capturing"):
            x.get()
        graph = stream.end_capture()
    assert (x.get() == 0).all()
    graph.launch()
    assert (x.get() == 3).all()


def test_cublas_is_captured_through_its_c_functions_but_cupys_wrappers_refuse(emulator):
    # CuPy 14's cuBLAS wrappers refuse a capturing stream (seen on an H200); the C functions do not
    module, cublas, api = emulator.cupy_module(), emulator.cublas_module(), emulator.cublas_api()
    a, c = module.array(np.eye(2, dtype=np.float32) * 2), module.zeros((2, 2))
    scalars = np.array([1.0, 0.0], np.float32)
    args = (0, 0, 2, 2, 2, scalars.ctypes.data, a.data.ptr, 2, a.data.ptr, 2, scalars.ctypes.data + 4, c.data.ptr, 2)
    handle, stream = emulator.cublas_handle(), module.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="during stream capture"):
            cublas.sgemm(handle, *args)
        api.set_stream(handle, stream.ptr)
        api.gemm(np.float32, handle, *args)
        graph = stream.end_capture()
    assert (c.get() == 0).all()
    graph.launch()
    np.testing.assert_array_equal(c.get(), np.eye(2) * 4)


def test_new_device_memory_is_garbage_not_zeros(emulator):
    assert np.isnan(emulator.empty((8,), np.float32).get()).all()
    assert (emulator.empty((8,), np.int32).get() == -1).all()


def test_the_pool_caches_freed_blocks_until_freed(emulator):
    memory = emulator.memory
    a = emulator.empty((1000,), np.float32)
    assert memory.used_bytes() == memory.total_bytes() == 4096
    del a
    assert memory.used_bytes() == 0 and memory.total_bytes() == 4096
    b = emulator.empty((1000,), np.float32)  # the cached block is reused
    assert memory.total_bytes() == 4096
    del b
    memory.free_all_blocks()
    assert memory.total_bytes() == 0


# ------------------------------------------------------------------ AddressSanitizer
OOB_SCRIPT = textwrap.dedent("""
    import numpy as np, sys
    sys.path.insert(0, {tests!r})
    from cuda_emulator import cupy as emulated, Module
    emulator = emulated.Emulator()
    module = Module('extern "C" __global__ void k(float* x, long long n) '
                    '{{ long long i = blockIdx.x * blockDim.x + threadIdx.x; if (i <= n) x[i] = 1; }}',
                    sanitize=True)
    x = emulator.empty((100,), np.float32)
    kernel = module.get_function("k")
    kernel.launch((1,), (128,), kernel.marshal([x, np.int64(100)]))
    print("NOT DETECTED")
""")


@pytest.mark.skipif(cuda_emulator.asan_runtime() is None, reason="the compiler has no AddressSanitizer runtime")
def test_the_sanitizer_build_reports_an_out_of_bounds_store(tmp_path):
    script = tmp_path / "oob.py"
    script.write_text(OOB_SCRIPT.format(tests=str(Path(__file__).parents[1])))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                            env=cuda_emulator.asan_environment())
    assert "NOT DETECTED" not in result.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-3000:]
    assert "WRITE of size 4" in result.stderr and " in k " in result.stderr
