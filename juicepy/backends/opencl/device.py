"""Finding an OpenCL device: ``$JUICEPY_OPENCL_DEVICE`` ("platform:device"), else the first
GPU, else the first device of any kind."""

from __future__ import annotations

import os

from ..base import BackendUnavailable

DEVICE_ENV = "JUICEPY_OPENCL_DEVICE"
INSTALL_HINT = ("pip install juicepy[opencl] (brings pyopencl and pocl-binary-distribution, "
                "a CPU OpenCL driver)")


def import_pyopencl():
    try:
        import pyopencl
    except ImportError as exc:
        raise BackendUnavailable(f"opencl backend: pyopencl is not installed ({exc}); {INSTALL_HINT}") from None
    return pyopencl


def list_devices(cl) -> list[tuple[int, int, object]]:
    """(platform index, device index, device) of every device on every platform."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # the ICD loader reports "no platforms" as an error
        raise BackendUnavailable(f"opencl backend: no OpenCL platform found ({exc}); {INSTALL_HINT}") from None
    found = []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        found.extend((pi, di, d) for di, d in enumerate(devices))
    return found


def describe(devices) -> str:
    return "; ".join(f"{pi}:{di} {d.platform.name} / {d.name}" for pi, di, d in devices) or "none"


def pick_device(cl, spec: str | None = None):
    """The device named by ``spec`` (or the environment variable), else the default choice."""
    devices = list_devices(cl)
    if not devices:
        raise BackendUnavailable(f"opencl backend: no OpenCL device found; {INSTALL_HINT}")
    spec = spec if spec is not None else os.environ.get(DEVICE_ENV)
    if spec:
        try:
            want = tuple(int(part) for part in spec.split(":"))
            if len(want) != 2:
                raise ValueError
        except ValueError:
            raise ValueError(f"{DEVICE_ENV}={spec!r}: expected 'platform:device' indices such as '0:0'; "
                             f"devices here: {describe(devices)}") from None
        for pi, di, d in devices:
            if (pi, di) == want:
                return d
        raise BackendUnavailable(f"opencl backend: no device {spec!r}; devices here: {describe(devices)}")
    for _, _, d in devices:
        if d.type & cl.device_type.GPU:
            return d
    return devices[0][2]
