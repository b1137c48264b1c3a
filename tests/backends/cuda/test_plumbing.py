"""The CUDA backend's host side, run against a CPU stand-in for CuPy (tests/cupy_standin.py).

No kernel runs here: each launch is checked against the C signature of the kernel it names, so
an argument of the wrong count or C type (which a GPU would silently misread) fails. GEMMs run
through a column-major cuBLAS emulation and are compared with NumPy. On a GPU machine,
tests/backends/test_ops.py checks the results of the kernels themselves.
"""

import threading

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.backends.base import BackendUnavailable, CaptureError
from juicepy.backends.cuda import device
from juicepy.backends.cuda.backend import CudaBackend
import cupy_standin
from juicepy.train import SGD, Adam, AdamW, Trainer


@pytest.fixture
def standin(monkeypatch):
    log = cupy_standin.install(monkeypatch)
    return CudaBackend(), log


def test_signature_parser_sees_every_kernel():
    assert len(cupy_standin.SIGNATURES) >= 38
    assert cupy_standin.SIGNATURES["im2col"][:3] == ["real*", "real*", "int"]
    assert cupy_standin.SIGNATURES["adam_update"][-3:] == ["i64", "i64*", "real*"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_maps_row_major_onto_cublas(standin, rng, dtype, trans_a, trans_b):
    backend, _ = standin
    a = rng.standard_normal((5, 7) if trans_a else (7, 5)).astype(dtype)
    b = rng.standard_normal((9, 5) if trans_b else (5, 9)).astype(dtype)
    c = rng.standard_normal((7, 9)).astype(dtype)
    expected = 0.5 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + 2.0 * c
    out = backend.from_host(c)
    backend.gemm(backend.from_host(a), backend.from_host(b), out, trans_a, trans_b, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(backend.to_host(out), expected, rtol=1e-5)


def test_gemm_on_row_blocks_and_shape_errors(standin, rng):
    backend, _ = standin
    w = backend.from_host(rng.standard_normal((6, 4)).astype(np.float32))
    x = backend.from_host(rng.standard_normal((4, 3)).astype(np.float32))
    out = backend.zeros((6, 3))
    backend.gemm(w[2:4], x, out[2:4])  # the per-group row blocks conv2d uses
    np.testing.assert_allclose(backend.to_host(out)[2:4], backend.to_host(w)[2:4] @ backend.to_host(x), rtol=1e-5)
    assert not backend.to_host(out)[[0, 1, 4, 5]].any()
    with pytest.raises(ValueError, match="gemm"):
        backend.gemm(w, w, out)


def test_all_finite_as_a_dtypes_first_launch_builds_its_kernels(standin):
    """all_finite on float64 before any other float64 op (its kernel set not built yet) returns:
    it held the lock that building a kernel set takes, and deadlocked there."""
    backend, _ = standin
    x = backend.zeros((3,), np.float64)
    result = []
    worker = threading.Thread(target=lambda: result.append(backend.all_finite(x)), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and result == [True]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_launches_its_kernels_with_matching_arguments(standin, monkeypatch, dtype):
    backend, log = standin
    z = lambda *s, dt=dtype: backend.zeros(s, dt)  # noqa: E731
    x, y, d, o = z(4, 10), z(4, 10), z(4, 10), z(4, 10)
    backend.add(x, y, o)
    backend.scale(x, 2.0, o)
    backend.mul(x, y, o, accumulate=True)
    backend.add_bias(z(4, 3, 5), z(3))
    backend.bias_grad(z(4, 3, 5), z(3), accumulate=True)
    backend.sum_all(x, z(1))
    assert backend.all_finite(x)
    for name in ("relu", "sigmoid", "tanh"):
        getattr(backend, name)(x, o)
        getattr(backend, f"{name}_backward")(y, d, o, accumulate=True)
    backend.leaky_relu(x, o, 0.1)
    backend.leaky_relu_backward(x, d, o, 0.1)
    for name in ("softmax", "log_softmax"):
        getattr(backend, name)(x, o)
        getattr(backend, f"{name}_backward")(y, d, o)
    labels = backend.zeros((4,), np.int32)
    backend.softmax_cross_entropy(x, labels, z(4), o, 0.25)
    backend.nll_loss(x, labels, z(4), o, 0.25)
    backend.mse_loss(x, y, z(4), o, 0.25)
    backend.dropout(x, o, d, 0.3, 2 ** 31 + 5, 7)
    backend.sgd_update(z(100), z(100), z(100), lr=0.1, momentum=0.9, dampening=0.0, nesterov=True,
                       weight_decay=1e-4, first_step=False)
    backend.sgd_update(z(100), z(100), None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                       weight_decay=0.0, first_step=True, guard=z(1))
    for ams in (None, z(100)):
        backend.adam_update(z(100), z(100), z(100), z(100), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                            weight_decay=1e-2, decoupled=True, step=3, max_exp_avg_sq=ams, guard=z(1))
    xi, w = z(2, 4, 9, 8), z(6, 2, 3, 3)
    yo = z(2, 6, 5, 8)
    backend.conv2d(xi, w, yo, (2, 1), (1, 1), (1, 1), 2)
    backend.conv2d_backward_data(yo, w, xi, (2, 1), (1, 1), (1, 1), 2, accumulate=True)
    backend.conv2d_backward_filter(xi, yo, w, (2, 1), (1, 1), (1, 1), 2, accumulate=True)
    pooled, argmax = z(2, 4, 4, 4), z(2, 4, 4, 4, dt=np.int32)
    backend.max_pool2d(xi, pooled, argmax, (2, 2), (2, 2), (0, 0))
    backend.max_pool2d_backward(pooled, argmax, xi, (2, 2), (2, 2), (0, 0), accumulate=True)
    averaged = z(2, 4, 5, 4)
    backend.avg_pool2d(xi, averaged, (3, 2), (2, 2), (1, 0), count_include_pad=False)
    backend.avg_pool2d_backward(averaged, xi, (3, 2), (2, 2), (1, 0), count_include_pad=False, accumulate=True)
    c = (z(4),) * 2
    backend.batch_norm_train(xi, *c, z(2, 4, 9, 8), z(4), z(4), z(4), z(4), 0.1, 1e-5)
    backend.batch_norm_train(xi, *c, z(2, 4, 9, 8), z(4), z(4), None, None, 0.1, 1e-5)
    backend.batch_norm_infer(xi, *c, z(4), z(4), 1e-5, z(2, 4, 9, 8))
    backend.batch_norm_backward(xi, z(2, 4, 9, 8), z(4), z(4), z(4), None, z(4), z(4))
    backend.batch_norm_sums(xi, z(4), z(8))
    backend.batch_norm_stats(z(8), 144, z(4), z(4), z(4), z(4), z(4), 0.1, 1e-5)
    backend.batch_norm_stats(z(8), 144, z(4), z(4), z(4), None, None, 0.0, 1e-5)
    backend.batch_norm_apply(xi, *c, z(4), z(4), z(2, 4, 9, 8))
    backend.batch_norm_backward_reduce(xi, z(2, 4, 9, 8), z(4), z(4), z(8), z(4), z(4), accumulate_params=True)
    backend.batch_norm_backward_reduce(xi, z(2, 4, 9, 8), z(4), z(4), z(8))
    backend.batch_norm_backward_data(xi, z(2, 4, 9, 8), z(4), z(4), z(4), z(8), 144, z(2, 4, 9, 8), accumulate=True)
    backend.copy_channels(z(2, 3, 4), z(2, 7, 4), 2, accumulate=True)
    backend.slice_channels(z(2, 7, 4), z(2, 3, 4), 4)
    # the forms for channels split over several blocks (device.channel_chunks) and (N, C) biases
    monkeypatch.setattr(device, "CHUNK_MIN", device.BLOCK)
    monkeypatch.setattr(device, "SPLIT_MIN", device.BLOCK)
    big = lambda: z(2, 4, 20, 20)  # noqa: E731  (800 values a channel: 4 chunks)
    backend.bias_grad(big(), z(4), accumulate=True)
    backend.bias_grad(x, z(10))
    backend.batch_norm_train(big(), *c, big(), z(4), z(4), z(4), z(4), 0.1, 1e-5)
    backend.batch_norm_train(big(), *c, big(), z(4), z(4), None, None, 0.1, 1e-5)
    backend.batch_norm_backward(big(), big(), z(4), z(4), z(4), big(), z(4), z(4), True, True)
    backend.batch_norm_backward(big(), big(), z(4), z(4), z(4), None, None, z(4))
    backend.batch_norm_sums(big(), z(4), z(8))
    backend.batch_norm_backward_reduce(big(), big(), z(4), z(4), z(8), z(4), z(4), accumulate_params=True)
    _launch_sequence_ops(backend, z)
    launched = {entry for entry in log if isinstance(entry, str)}
    assert launched >= set(cupy_standin.SIGNATURES) - {"fill_array"}, \
        f"never launched: {set(cupy_standin.SIGNATURES) - launched}"


def test_kernels_refuse_strided_arrays(standin):
    backend, _ = standin
    wide = backend.zeros((4, 8))
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.relu(wide[:, :4], backend.zeros((4, 4)))


def _net(dropout):
    return jp.Network(L.Sequential(L.Linear(16), L.LeakyReLU(0.1), L.Dropout(dropout), L.Linear(16), L.Sigmoid(),
                                   L.Linear(4), L.LogSoftmax()), input_shape=(8,), seed=0)


@pytest.mark.parametrize("make_opt", [lambda: SGD(lr=0.1, momentum=0.9), lambda: Adam(), lambda: AdamW(amsgrad=True)])
def test_training_records_once_then_replays(standin, rng, make_opt):
    backend, log = standin
    trainer = Trainer(_net(0.2), L.NegativeLogLikelihood(), make_opt(), batch_size=4, check_finite=False)
    for _ in range(4):
        trainer.train_minibatch(backend, rng.standard_normal((4, 8)).astype(np.float32), rng.integers(0, 4, 4))
    graph_launches = [entry for entry in log if isinstance(entry, tuple)]
    replay = trainer.state(backend).replay
    assert replay.failure is None and len(graph_launches) == 3
    assert graph_launches[0][1] > 10  # the whole step: forward, loss, backward, update
    assert trainer.steps == 4


def test_inference_records_once_then_replays(standin, rng):
    backend, log = standin
    net = _net(0.5)
    x = rng.standard_normal((8, 8)).astype(np.float32)  # 8 rows: one pass in one context (10 would be 8 + 2)
    for _ in range(3):
        net.transform(backend, x)
    # 6 kernels per pass (3 bias adds, 3 activations; GEMMs and the eval-mode dropout copy are
    # not kernels of ours); the first pass runs op by op, the second is recorded and replayed
    assert [entry for entry in log if isinstance(entry, tuple)] == [("graph", 6)] * 2


def test_an_allocation_while_capturing_is_refused(standin):
    backend, _ = standin
    with pytest.raises(CaptureError, match="allocated"):
        backend.capture(lambda: backend.relu(backend.zeros((3,)), backend.zeros((3,))))
    graph = backend.capture(lambda: None)  # the backend still captures afterwards
    graph.replay(2)


def test_release_empties_the_pools(standin):
    backend, log = standin
    backend.release()
    assert log.count("free_all_blocks") == 2


def test_cublas_gets_a_fixed_workspace_only_while_capturing(standin, monkeypatch, rng):
    from juicepy.backends.cuda import device as cuda_device

    calls = []
    monkeypatch.setattr(cuda_device, "cublas_api", lambda: cupy_standin.cublas_api(calls))
    backend = CudaBackend()
    a, out = backend.from_host(rng.standard_normal((3, 3)).astype(np.float32)), backend.zeros((3, 3))
    backend.gemm(a, a, out)
    assert calls == []
    backend.capture(lambda: backend.gemm(a, a, out))
    assert len(calls) == 1 and calls[0][2] == 32 << 20
    backend.gemm(a, a, out)  # eager again: cuBLAS back on its own workspace
    assert len(calls) == 1


def test_a_failing_capture_is_a_capture_error_and_leaves_eager_mode(standin):
    backend, log = standin
    with pytest.raises(CaptureError, match="could not be captured") as err:
        backend.capture(lambda: 1 / 0)
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    backend.relu(backend.zeros((4,)), backend.zeros((4,)))
    assert log[-1] == "relu_forward"  # ran, not recorded


def _launch_sequence_ops(backend, z):
    n, hid = 3, 5
    backend.swap_leading_axes(z(2, 3, 4), z(3, 2, 4), accumulate=True)
    idx = backend.zeros((6,), np.int32)
    backend.embedding(idx, z(7, 4), z(6, 4))
    backend.embedding_backward(idx, z(6, 4), z(7, 4), padding_idx=0, accumulate=False)
    backend.embedding_backward(idx, z(6, 4), z(7, 4))
    for bias in (z(hid), None):
        backend.rnn_cell(z(n, hid), z(n, hid), bias, z(n, hid), "relu")
    for bias in (z(4 * hid), None):
        backend.lstm_cell(z(n, 4 * hid), z(n, 4 * hid), bias, z(n, hid), z(n, 4 * hid), z(n, hid), z(n, hid))
    backend.lstm_cell_backward(z(n, 4 * hid), z(n, hid), z(n, hid), z(n, hid), z(n, hid), z(n, 4 * hid), z(n, hid))
    for bias in (z(3 * hid), None):
        backend.gru_cell(z(n, 3 * hid), z(n, 3 * hid), bias, z(n, hid), z(n, 4 * hid), z(n, hid))
    backend.gru_cell_backward(z(n, 4 * hid), z(n, hid), z(n, hid), z(n, 3 * hid), z(n, 3 * hid), z(n, hid))


def test_rnn_cell_refuses_an_unknown_nonlinearity(standin):
    backend, _ = standin
    z = lambda *s: backend.zeros(s, np.float32)  # noqa: E731
    n, hid = 3, 5
    with pytest.raises(ValueError, match="nonlinearity"):
        backend.rnn_cell(z(n, hid), z(n, hid), None, z(n, hid), "gelu")


class _FakeCublasLibrary:
    """ctypes-like functions of libcublas: each records its call and returns ``status``."""

    def __init__(self, status=0):
        self.calls = []

        def function(name):
            def fn(*args):
                self.calls.append((name, args))
                return status
            return fn

        for name in ("cublasSetStream_v2", "cublasSetPointerMode_v2", "cublasSetWorkspace_v2",
                     "cublasSgemm_v2", "cublasDgemm_v2"):
            setattr(self, name, function(name))


def test_cublas_api_calls_the_c_function_of_the_dtype_and_names_a_failing_status():
    from juicepy.backends.cuda.device import CublasApi, CublasError

    library = _FakeCublasLibrary()
    api = CublasApi(library)
    api.gemm(np.float64, 1, 0, 1, 2, 3, 4, 10, 11, 2, 12, 3, 13, 14, 2)
    api.set_workspace(1, 99, 32 << 20)
    assert [name for name, _ in library.calls] == ["cublasDgemm_v2", "cublasSetWorkspace_v2"]
    assert library.calls[0][1] == (1, 0, 1, 2, 3, 4, 10, 11, 2, 12, 3, 13, 14, 2)
    with pytest.raises(CublasError, match="cublasSgemm_v2 failed: CUBLAS_STATUS_INVALID_VALUE"):
        CublasApi(_FakeCublasLibrary(status=7)).gemm(np.float32, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1)


def test_without_a_cublas_library_the_backend_is_unavailable_naming_what_it_tried(monkeypatch):
    from juicepy.backends.cuda import device as cuda_device

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(cuda_device.ctypes, "CDLL", no_library)
    with pytest.raises(BackendUnavailable, match=r"no cuBLAS library .*libcublas\.so\.13.*libcublas\.so\.12"):
        cuda_device.open_cublas(("libcublas.so.13", "libcublas.so.12"))
