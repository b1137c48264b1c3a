"""Finding an OpenCL device: ``$JUICEPY_OPENCL_DEVICE`` ("platform:device"), else the first
GPU, else the first device of any kind, skipping devices whose compiler cannot build a kernel
(PoCL 3.0's LLVM 14 does not know CPUs newer than it, AMD Zen 5 among them)."""

from __future__ import annotations

import os

from ..base import BackendUnavailable

DEVICE_ENV = "JUICEPY_OPENCL_DEVICE"
INSTALL_HINT = ("pip install juicepy[opencl] (brings pyopencl and pocl-binary-distribution, "
                "a CPU OpenCL driver)")
COMPILER_HINT = ("a PoCL whose LLVM knows this CPU, or one that picks its target by CPU features, "
                 "compiles here (Debian/Ubuntu: apt install pocl-opencl-icd; pyopencl lists its "
                 "platform beside its own)")


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


def pick_device(cl, spec: str | None = None, check=None):
    """The device named by ``spec`` (or the environment variable), else the default choice.
    ``check(device)``: why a device cannot be used (str), or None; a named device that fails it
    is refused, the default choice moves on to the next device that passes."""
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
        named = [entry for entry in devices if entry[:2] == want]
        if not named:
            raise BackendUnavailable(f"opencl backend: no device {spec!r}; devices here: {describe(devices)}")
        candidates = named
    else:
        is_gpu = [bool(d.type & cl.device_type.GPU) for _, _, d in devices]
        candidates = ([e for e, gpu in zip(devices, is_gpu) if gpu]
                      + [e for e, gpu in zip(devices, is_gpu) if not gpu])
    refused = []
    for pi, di, d in candidates:
        reason = check(d) if check is not None else None
        if reason is None:
            return d
        refused.append(f"{pi}:{di} {d.platform.name} / {d.name}: {reason}")
    raise BackendUnavailable(f"opencl backend: no usable device ({'; '.join(refused)}); {COMPILER_HINT}")
