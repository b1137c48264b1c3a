"""Device choice and the errors when OpenCL cannot run (juicepy/backends/opencl/device.py)."""

import types

import numpy as np

import pytest

from juicepy.backends import BackendUnavailable
from juicepy.backends.opencl import device as dev


class _FakeError(Exception):
    pass


def _fake_cl(platforms):
    class FakeCL(types.SimpleNamespace):
        Error = _FakeError
        device_type = types.SimpleNamespace(GPU=4, CPU=2)

    def get_platforms():
        if platforms is None:
            raise _FakeError("PLATFORM_NOT_FOUND_KHR")
        return platforms

    return FakeCL(get_platforms=get_platforms)


def _platform(name, devices):
    plat = types.SimpleNamespace(name=name)
    devs = [types.SimpleNamespace(name=n, type=t, platform=plat) for n, t in devices]
    plat.get_devices = lambda: devs
    return plat


def test_no_platform_is_backend_unavailable_with_install_hint():
    with pytest.raises(BackendUnavailable, match=r"no OpenCL platform.*pip install juicepy\[opencl\]"):
        dev.pick_device(_fake_cl(None))


def test_platform_without_devices_is_backend_unavailable():
    with pytest.raises(BackendUnavailable, match=r"no OpenCL device.*pip install juicepy\[opencl\]"):
        dev.pick_device(_fake_cl([_platform("empty", [])]))


def test_missing_pyopencl_names_the_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyopencl(name, *args, **kwargs):
        if name == "pyopencl" or name.startswith("pyopencl."):
            raise ImportError("No module named 'pyopencl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyopencl)
    with pytest.raises(BackendUnavailable, match=r"pyopencl is not installed.*juicepy\[opencl\]"):
        dev.import_pyopencl()


def test_default_prefers_the_first_gpu_then_the_first_device(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    cl = _fake_cl([_platform("cpu", [("cpu0", 2)]), _platform("gpu", [("gpu0", 4), ("gpu1", 4)])])
    assert dev.pick_device(cl).name == "gpu0"
    cl = _fake_cl([_platform("cpu", [("cpu0", 2), ("cpu1", 2)])])
    assert dev.pick_device(cl).name == "cpu0"


def test_environment_picks_platform_and_device(monkeypatch):
    cl = _fake_cl([_platform("a", [("a0", 2)]), _platform("b", [("b0", 4), ("b1", 2)])])
    monkeypatch.setenv(dev.DEVICE_ENV, "1:1")
    assert dev.pick_device(cl).name == "b1"
    assert dev.pick_device(cl, "0:0").name == "a0"  # an explicit spec wins over the environment


@pytest.mark.parametrize("spec", ["x", "1", "0:0:0", "a:b"])
def test_malformed_spec_lists_the_devices(spec):
    cl = _fake_cl([_platform("a", [("a0", 2)])])
    with pytest.raises(ValueError, match=r"platform:device.*0:0 a / a0"):
        dev.pick_device(cl, spec)


def test_unknown_device_index_lists_the_devices():
    cl = _fake_cl([_platform("a", [("a0", 2)])])
    with pytest.raises(BackendUnavailable, match=r"no device '3:0'.*0:0 a / a0"):
        dev.pick_device(cl, "3:0")


def test_real_backend_reports_its_device(ocl):
    assert "opencl" in repr(ocl)
    assert ocl.device.name in repr(ocl)


def _check_refusing(*names):
    """A device check that refuses the devices called ``names``, recording what it was asked."""
    asked = []

    def check(device):
        asked.append(device.name)
        return "error: unknown target CPU 'generic'" if device.name in names else None
    return check, asked


def test_default_skips_a_device_that_cannot_build_kernels(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    cl = _fake_cl([_platform("old pocl", [("cpu0", 2)]), _platform("gpu", [("gpu0", 4)]),
                   _platform("new pocl", [("cpu1", 2)])])
    check, asked = _check_refusing("gpu0", "cpu0")
    assert dev.pick_device(cl, check=check).name == "cpu1"
    assert asked == ["gpu0", "cpu0", "cpu1"]  # GPUs first, then the rest in platform order


def test_no_device_that_builds_kernels_names_each_and_why(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    cl = _fake_cl([_platform("old pocl", [("cpu0", 2)]), _platform("other", [("cpu1", 2)])])
    check, _ = _check_refusing("cpu0", "cpu1")
    with pytest.raises(BackendUnavailable, match=r"no usable device \(0:0 old pocl / cpu0: error: unknown target "
                                                 r"CPU 'generic'; 1:0 other / cpu1: .*apt install pocl-opencl-icd"):
        dev.pick_device(cl, check=check)


def test_a_named_device_that_cannot_build_kernels_is_refused_not_replaced(monkeypatch):
    cl = _fake_cl([_platform("old pocl", [("cpu0", 2)]), _platform("new pocl", [("cpu1", 2)])])
    check, asked = _check_refusing("cpu0")
    monkeypatch.setenv(dev.DEVICE_ENV, "0:0")
    with pytest.raises(BackendUnavailable, match=r"0:0 old pocl / cpu0: error: unknown target CPU"):
        dev.pick_device(cl, check=check)
    assert asked == ["cpu0"]
    assert dev.pick_device(cl, "1:0", check=check).name == "cpu1"


def test_compile_failure_reports_the_compilers_errors_once_per_device(monkeypatch):
    from juicepy.backends.opencl import programs

    builds = []

    class FakeProgram:
        def __init__(self, context, source):
            self.source = source

        def build(self, devices):
            builds.append(devices[0].name)
            if devices[0].name == "old":
                raise _FakeError("clBuildProgram failed: BUILD_PROGRAM_FAILURE\n\nBuild on <old>:\n\n"
                                 "error: unknown target CPU 'generic'\nDevice old failed to build the program")

    cl = types.SimpleNamespace(Error=_FakeError, CompilerWarning=UserWarning, Context=lambda devices: object(),
                               Program=FakeProgram)
    old = types.SimpleNamespace(name="old", int_ptr=1, driver_version="3.0-rc2", version="OpenCL 3.0 PoCL generic")
    new = types.SimpleNamespace(name="new", int_ptr=2, driver_version="6.0", version="OpenCL 3.0 PoCL znver5")
    monkeypatch.setattr(programs, "_compile_failures", {})
    for _ in range(2):
        assert programs.compile_failure(cl, old) == ("error: unknown target CPU 'generic' "
                                                     "(driver 3.0-rc2, OpenCL 3.0 PoCL generic)")
        assert programs.compile_failure(cl, new) is None
    assert builds == ["old", "new"]


def _real_devices():
    try:
        cl = dev.import_pyopencl()
        return [pytest.param(d, id=f"{pi}:{di}") for pi, di, d in dev.list_devices(cl)]
    except BackendUnavailable as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no OpenCL here: {exc}"))]


@pytest.mark.parametrize("device", _real_devices())
def test_each_real_device_either_builds_kernels_or_is_refused_by_name(device):
    """On every device here: where a trivial kernel builds the backend starts on it; where it does
    not (PoCL 3.0 on a CPU its LLVM does not know), the backend refuses it, naming the device and
    the compiler's error, instead of failing at its first kernel."""
    from juicepy.backends.opencl import OpenCLBackend
    from juicepy.backends.opencl.programs import compile_failure

    cl = dev.import_pyopencl()
    reason = compile_failure(cl, device)
    if reason is None:
        backend = OpenCLBackend(device)
        x = backend.from_host(np.array([[1.0, -2.0]], np.float32))
        backend.relu(x, x)
        assert backend.to_host(x).tolist() == [[1.0, 0.0]]
    else:
        assert reason.startswith("error")
        with pytest.raises(BackendUnavailable, match=f"{device.name!r} cannot build kernels: .*{dev.COMPILER_HINT[:20]}"):
            OpenCLBackend(device)
