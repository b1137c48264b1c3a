"""What only the CUDA backend does (its ops are proven by tests/backends/test_ops.py): import
behaviour, graph replay == op by op, and (anywhere nvcc exists) a compile check of every kernel
source.

Tests that need a GPU are skipped with the reason "no CUDA device" where none is present; the
checks of import behaviour, kernel names and kernel sources run everywhere.
"""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends import BackendUnavailable
from juicepy.backends.cuda import CudaBackend
from juicepy.backends.cuda import device as cuda_device
from juicepy.backends.cuda import kernels
from juicepy.train import SGD, Adam, AdamW, Trainer


def _cuda_or_reason():
    try:
        return jp.backend("cuda"), ""
    except BackendUnavailable as exc:
        return None, str(exc)


CUDA, WHY_NOT = _cuda_or_reason()
needs_gpu = pytest.mark.skipif(CUDA is None, reason=f"no CUDA device ({WHY_NOT[:160]})")


# ------------------------------------------------------------------ everywhere
def test_unavailable_cuda_is_a_clear_error_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    with pytest.raises(BackendUnavailable, match=r"pip install 'juicepy\[cuda12\]'.*'juicepy\[cuda13\]'"):
        CudaBackend()


def test_registered_even_where_it_cannot_start():
    assert "cuda" in jp.registered_backends()
    if CUDA is None:
        assert "cuda" not in jp.available_backends()
        with pytest.raises(BackendUnavailable, match="cuda backend"):
            jp.backend("cuda")


@pytest.mark.parametrize("value, message", [("x", "not a device number"), ("7", "has 2 CUDA device")])
def test_device_env_var_is_checked(monkeypatch, value, message):
    monkeypatch.setenv("JUICEPY_CUDA_DEVICE", value)
    with pytest.raises(BackendUnavailable, match=message):
        cuda_device.device_index(2)
    monkeypatch.setenv("JUICEPY_CUDA_DEVICE", "1")
    assert cuda_device.device_index(2) == 1


def _kernel_names_in_sources():
    return set(re.findall(r"__global__ void (\w+)\(", kernels.module_source()))


def test_headers_are_inlined_once():
    source = kernels.module_source()
    assert "#include" not in source
    assert source.count("__device__ real block_sum(") == 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_sources_compile_with_nvcc(tmp_path, dtype):
    """The exact text NVRTC gets, and every .cu file on its own, compile to PTX."""
    assembled = tmp_path / "juicepy_kernels.cu"
    assembled.write_text(kernels.module_source())
    files = [assembled] + [kernels.KERNEL_DIR / name for name in kernels.SOURCE_FILES]
    for source in files:
        ptx = tmp_path / (source.stem + ".ptx")
        cmd = ["nvcc", "-ptx", "-arch=sm_80", *kernels.compile_options(dtype), "-o", str(ptx), str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"
        entries = set(re.findall(r"\.entry (\w+)\(", ptx.read_text()))
        if source == assembled:
            assert entries == _kernel_names_in_sources()


def test_dtype_outside_the_kernels_is_refused():
    with pytest.raises(TypeError, match="float16"):
        kernels.real_type(np.float16)


# ------------------------------------------------- CUDA's own rules on arrays
@needs_gpu
def test_views_that_need_a_copy_are_refused():
    with pytest.raises(ValueError, match="cuda backend reshape: .*strides"):
        CUDA.reshape(CUDA.zeros((4, 4))[:, :2], (8,))


# ------------------------------------------------------------- graph replay
def _trainer(optimizer, graphs, check_finite=True):
    net = jp.Network(L.Sequential(L.Linear(64), L.ReLU(), L.Dropout(0.2), L.Linear(64), L.Tanh(), L.Linear(10)),
                     input_shape=(20,), seed=3)
    return Trainer(net, L.SoftmaxCrossEntropy(), optimizer, batch_size=32, graphs=graphs, check_finite=check_finite)


def _batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((32, 20)).astype(np.float32), rng.integers(0, 10, 32)) for _ in range(steps)]


@needs_gpu
@pytest.mark.parametrize("make_opt", [lambda: Adam(lr=1e-3), lambda: AdamW(lr=1e-3, amsgrad=True),
                                      lambda: SGD(lr=0.05, momentum=0.9, nesterov=True)])
def test_graph_replay_equals_op_by_op(make_opt):
    eager, replayed = _trainer(make_opt(), graphs=False), _trainer(make_opt(), graphs=True)
    data = _batches(8)
    eager_losses = [eager.train_minibatch(CUDA, x, y)[0] for x, y in data]
    replay_losses = [replayed.train_minibatch(CUDA, x, y)[0] for x, y in data]
    st = replayed.state(CUDA)
    assert st.replay.graph is not None, st.replay.failure
    np.testing.assert_allclose(replay_losses, eager_losses, rtol=1e-6)
    for k, v in eager.network.get_weights().items():
        np.testing.assert_allclose(replayed.network.get_weights()[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    numpy_run = _trainer(make_opt(), graphs=False)
    numpy_losses = [numpy_run.train_minibatch(jp.backend("numpy"), x, y)[0] for x, y in data]
    np.testing.assert_allclose(replay_losses, numpy_losses, rtol=1e-4)


@needs_gpu
def test_replayed_steps_allocate_nothing():
    trainer = _trainer(Adam(), graphs=True)
    data = _batches(6)
    for x, y in data[:3]:
        trainer.train_minibatch(CUDA, x, y)
    import cupy

    pool = cupy.get_default_memory_pool()
    CUDA.synchronize()
    before = (CUDA.allocations, pool.total_bytes())
    for x, y in data[3:]:
        trainer.train_minibatch(CUDA, x, y)
    CUDA.synchronize()
    assert (CUDA.allocations, pool.total_bytes()) == before


@needs_gpu
def test_non_finite_loss_in_a_replayed_step_leaves_state_unchanged():
    trainer = _trainer(Adam(lr=1e-2), graphs=True)
    for x, y in _batches(3):
        trainer.train_minibatch(CUDA, x, y)
    st = trainer.state(CUDA)
    assert st.replay.graph is not None, st.replay.failure
    weights = trainer.network.get_weights()
    moments = [{k: CUDA.to_host(v) for k, v in b.items()} for b in st.optimizer.buffers]
    with pytest.raises(jp.errors.NonFiniteError):
        trainer.train_minibatch(CUDA, np.full((32, 20), 3e38, np.float32), np.zeros(32, np.int64))
    for k, v in weights.items():
        np.testing.assert_array_equal(trainer.network.get_weights()[k], v, err_msg=k)
    for before, bufs in zip(moments, st.optimizer.buffers):
        for k in before:
            np.testing.assert_array_equal(CUDA.to_host(bufs[k]), before[k], err_msg=k)


@needs_gpu
def test_transform_replay_equals_eager():
    net = _trainer(Adam(), graphs=True).network
    x = np.random.default_rng(5).standard_normal((100, 20)).astype(np.float32)
    expected = net.transform(jp.backend("numpy"), x)
    first, second = net.transform(CUDA, x), net.transform(CUDA, x)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second, first)


@needs_gpu
def test_release_frees_cached_blocks():
    import cupy

    pool = cupy.get_default_memory_pool()
    a = CUDA.empty((1 << 20,))
    nbytes = a.nbytes
    del a
    held = pool.total_bytes()
    assert held - pool.used_bytes() >= nbytes
    CUDA.release()
    # the freed array's block went back to the driver; CuPy keeps the free pieces of chunks that
    # are still partly in use, so the pool need not end all in use
    assert pool.total_bytes() <= held - nbytes
