"""Device choice and the errors when OpenCL cannot run (juicepy/backends/opencl/device.py)."""

import types

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
