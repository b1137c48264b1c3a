"""Program building and caching (juicepy/backends/opencl/programs.py)."""

import threading

import numpy as np
import pytest

from juicepy.backends.opencl import programs


def test_kernels_are_built_once_and_cached(ocl):
    first = ocl._programs.kernel("elementwise.cl", "relu_fwd")
    assert ocl._programs.kernel("elementwise.cl", "relu_fwd") is first


def test_every_kernel_file_ships_with_the_package():
    for name in ("elementwise.cl", "rows.cl", "gemm.cl", "conv.cl", "norm.cl", "recurrent.cl"):
        assert "__kernel" in programs.source(name)
    assert "typedef float8 float8_u" in programs.source("vectors.cl")


def test_every_program_is_built_behind_the_shared_vector_types():
    text = programs.program_text("norm.cl")
    assert text.startswith(programs.source("vectors.cl"))
    assert text.endswith(programs.source("norm.cl"))
    assert '#line 1 "norm.cl"' in text


def test_a_variant_is_the_same_source_built_with_its_own_defines(ocl, monkeypatch):
    built = []
    real = programs.source
    monkeypatch.setattr(programs, "source", lambda name: built.append(name) or real(name))
    cache = programs.ProgramCache(ocl._cl, ocl.context, ocl.device,
                                  {"conv.cl": {"VEC": ocl._conv_vec}, "conv.cl:narrow": {"VEC": 8}})
    wide, narrow = cache.kernel("conv.cl", "conv_direct_fwd"), cache.kernel("conv.cl:narrow", "conv_direct_fwd")
    assert [name for name in built if name != "vectors.cl"] == ["conv.cl", "conv.cl"] and wide is not narrow
    assert cache.kernel("conv.cl:narrow", "conv_direct_fwd") is narrow


def test_a_build_failure_names_the_file_and_device(ocl, monkeypatch):
    cache = programs.ProgramCache(ocl._cl, ocl.context, ocl.device, {})
    monkeypatch.setattr(programs, "source", lambda name: "" if name == "vectors.cl" else "\n__kernel void broken( { }")
    with pytest.raises(RuntimeError, match=r"building broken\.cl for .*failed") as failure:
        cache.kernel("broken.cl", "broken")
    assert "broken.cl:2:" in str(failure.value)  # the file's own line, not the program's


def test_a_missing_kernel_names_the_file_the_kernel_and_the_device(ocl):
    cache = programs.ProgramCache(ocl._cl, ocl.context, ocl.device, {})
    with pytest.raises(RuntimeError, match=r"elementwise\.cl built for .* has no kernel 'no_such_kernel'; it has \d+ kernels"):
        cache.kernel("elementwise.cl", "no_such_kernel")
    assert cache.kernel("elementwise.cl", "relu_fwd") is not None  # the program itself stays usable


class _RecordingKernel:
    """What a launcher touches of a pyopencl Kernel: set_args, here recorded (or refused)."""

    def __init__(self):
        self.set, self.refuse = [], False

    def set_args(self, *args):
        if self.refuse:
            raise TypeError("refused")
        self.set.append(args)


def test_a_launch_sets_the_arguments_only_where_they_differ_from_the_last_ones():
    kernel, enqueued = _RecordingKernel(), []
    launch = programs._Launcher(kernel, threading.Lock(), lambda *a: enqueued.append(a) or len(enqueued))
    a, b = object(), object()
    assert launch("q", (4,), (1,), a, 3) == 1
    launch("q", (8,), (1,), a, 3)      # same arguments, other sizes: only enqueued
    launch("q", (4,), (1,), a, 4)      # a scalar changed
    launch("q", (4,), (1,), b, 4)      # a buffer changed
    launch("q", (4,), (1,), a, 4)      # back to the first buffer
    assert kernel.set == [(a, 3), (a, 4), (b, 4), (a, 4)]
    assert [e[2] for e in enqueued] == [(4,), (8,), (4,), (4,), (4,)] and all(e[1] is kernel for e in enqueued)
    launch.forget_arguments()
    launch("q", (4,), (1,), a, 4)
    assert kernel.set[-1] == (a, 4) and len(kernel.set) == 5
    kernel.refuse = True               # a failed set leaves nothing taken as set
    with pytest.raises(TypeError):
        launch("q", (4,), (1,), a, 5)
    kernel.refuse = False
    launch("q", (4,), (1,), a, 4)
    assert len(kernel.set) == 6 and len(enqueued) == 7


def _depthwise_reference(x, w, stride=1):
    """3x3 depthwise, padding 1, in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2:]
    return sum(w[None, :, 0, i, j, None, None] * xp[:, :, i:i + h:stride, j:j + wd:stride]
               for i in range(3) for j in range(3))


def test_kernels_launched_again_on_other_buffers_and_back_compute_on_each(ocl, rng):
    """Real launches: the same kernels on two sets of arrays in turn, one of them taking local
    memory, each result against NumPy; release() lets go of every kernel's last arguments."""
    sets = []
    for _ in range(2):
        x, y = rng.standard_normal((2, 3, 9, 9)).astype(np.float32), rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
        w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
        sets.append(((x, y, w), [ocl.from_host(v) for v in (x, y, w)], ocl.empty((2, 3, 9, 9)), ocl.empty((2, 3, 9, 9))))
    for _ in range(2):
        for _, (x, y, w), total, conv in sets:
            ocl.add(x, y, total)
            ocl.conv2d(x, w, conv, (1, 1), (1, 1), (1, 1), 3)
    ocl.synchronize()
    # the depthwise forward, its plane in local memory
    assert any(name == "conv_depthwise_k3_plane" for _, name in ocl._programs._kernels)
    for (x, y, w), _, total, conv in sets:
        np.testing.assert_array_equal(ocl.to_host(total), x + y)
        np.testing.assert_allclose(ocl.to_host(conv), _depthwise_reference(x, w), rtol=1e-5, atol=1e-5)
    ocl.release()
    assert all(k._args is None for k in ocl._programs._kernels.values())


def test_a_local_memory_kernel_launched_again_on_the_same_arrays_sets_no_arguments(ocl, rng):
    """The direct forward's __local argument is the same object for the same size, so a second
    launch on the same arrays compares equal to the first and only enqueues (the kept arguments
    are the first launch's tuple); the result is still right."""
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    xd, wd, out = ocl.from_host(x), ocl.from_host(w), ocl.empty((2, 3, 5, 5))
    ocl.conv2d(xd, wd, out, (2, 2), (1, 1), (1, 1), 3)
    launcher = next(k for (_, name), k in ocl._programs._kernels.items() if "_local" in name and k._args)
    first = launcher._args
    ocl.copy(ocl.from_host(np.zeros((2, 3, 5, 5), np.float32)), out)
    ocl.conv2d(xd, wd, out, (2, 2), (1, 1), (1, 1), 3)
    assert launcher._args is first
    np.testing.assert_allclose(ocl.to_host(out), _depthwise_reference(x, w, stride=2), rtol=1e-5, atol=1e-5)


def test_local_memory_arguments_are_one_object_per_size_and_bounded(ocl):
    from juicepy.backends.opencl.spatial import LOCAL_MEMORY_SIZES
    a = ocl._local_memory(1024)
    assert ocl._local_memory(1024) is a and ocl._local_memory(2048) is not a
    for size in range(4, 4 * (2 * LOCAL_MEMORY_SIZES + 3), 4):
        assert ocl._local_memory(size).size == size
        assert len(ocl._local_memory_args) <= LOCAL_MEMORY_SIZES


class _FakeCL:
    """Just what compiled_float_lanes touches of pyopencl: a Program whose build log is given."""

    class CompilerWarning(UserWarning):
        pass

    class program_build_info:
        LOG = "log"

    def __init__(self, log):
        self.log, self.built = log, 0

    def Program(self, context, src):
        cl = self

        class Built:
            def build(self, devices):
                cl.built += 1
                assert "float16" in src
                return self

            def get_build_info(self, device, what):
                return cl.log
        return Built()


class _FakeDevice:
    def __init__(self, preferred, ptr):
        self.preferred_vector_width_float, self.int_ptr = preferred, ptr


@pytest.mark.parametrize("preferred,log,want,builds", [
    (16, "", 16, 1),
    (16, "warning: AVX vector argument of type 'float16' without 'avx512f' enabled changes the ABI", 8, 1),
    (8, "", 8, 0),   # devices preferring 8 lanes are not asked
])
def test_the_default_lanes_are_what_the_compiler_targets(monkeypatch, preferred, log, want, builds):
    monkeypatch.setattr(programs, "_probed_lanes", {})
    cl = _FakeCL(log)
    device = _FakeDevice(preferred, 1234)
    assert programs.compiled_float_lanes(cl, None, device) == want
    assert programs.compiled_float_lanes(cl, None, device) == want
    assert cl.built == builds   # one probe per device
    assert programs.refuses_float_lanes(cl, None, device, 16) == (preferred >= 16 and want < 16)
    assert not programs.refuses_float_lanes(cl, None, device, 8)


def test_sixteen_lanes_are_refused_where_the_compiler_targets_no_avx512(ocl, monkeypatch):
    """A device reporting 16 lanes whose compiler targets no AVX-512 (PoCL 3.0 on Zen 4) gets 8 by
    default and a clear error when 16 are asked for, instead of programs without kernels."""
    from juicepy.backends.opencl import OpenCLBackend, backend

    if ocl.device.preferred_vector_width_float < 16:
        pytest.skip(f"{ocl.device.name} prefers {ocl.device.preferred_vector_width_float} float lanes: "
                    "16 are never refused there")
    for module in (backend, programs):   # the default, and the refusal (refuses_float_lanes)
        monkeypatch.setattr(module, "compiled_float_lanes", lambda cl, context, device: 8)
    assert OpenCLBackend(ocl.device)._conv_vec == 8
    with pytest.raises(ValueError, match=r"vector_width=16 on .*compiler targets no AVX-512.*use vector_width=8"):
        OpenCLBackend(ocl.device, vector_width=16)


def _default_builds(ocl):
    import os

    from juicepy.backends.opencl import programs as module
    here = os.path.dirname(module.__file__)
    files = {f for f in os.listdir(here) if f.endswith(".cl") and f != module._VECTOR_TYPES}
    return sorted(files | set(ocl._programs._defines))


def test_every_build_keeps_its_kernels_when_built_again(ocl):
    """Each program as the backend builds it (every file, every variant), built twice: the second
    build comes from the drivers' caches (pyopencl's and PoCL's), where PoCL 3.0 on Zen 4 returned
    elementwise.cl without kernels once it passed float16 across a call (adam_step16)."""
    import warnings

    for name in _default_builds(ocl):
        counts = []
        for _ in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ocl._cl.CompilerWarning)
                counts.append(len([k for k in ocl._programs._build(name).kernel_names.split(";") if k]))
        assert counts[0] > 0 and counts[1] == counts[0], f"{name}: kernels {counts} ({ocl.device.name})"


def test_scalar_arguments_take_python_numbers(ocl):
    x = ocl.from_host(np.array([-1.0, 2.0], np.float32))
    out = ocl.empty((2,))
    kernel = ocl._programs.kernel("elementwise.cl", "scale_f32")
    kernel(ocl.queue, (2,), None, 2, x.base_data, 0, 3.0, out.base_data, 0)  # ints/floats, no numpy wrappers
    np.testing.assert_array_equal(ocl.to_host(out), [-3.0, 6.0])


def test_concurrent_launches_keep_their_own_arguments(ocl):
    """Threads sharing one backend (and its cached kernels) each get their own results."""
    import threading

    results = {}

    def work(t):
        x = ocl.from_host(np.full(1000, float(t), np.float32))
        out = ocl.empty((1000,))
        for _ in range(50):
            ocl.scale(x, 2.0, out)
        results[t] = ocl.to_host(out)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(4):
        np.testing.assert_array_equal(results[t], np.full(1000, 2.0 * t, np.float32))
