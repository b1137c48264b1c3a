"""LearnableParams: one tensor of weights kept where it was last written, synced lazily."""

from __future__ import annotations

import threading

import numpy as np

from ..arguments import flag, number


class LearnableParams:
    """One learnable tensor (or a non-trained buffer such as BatchNorm's running mean).

    The data lives on the host and on any backend that asked for it; ``version`` counts
    writes, and each copy remembers the version it holds, so a read on another backend copies
    only when that copy is stale (Juice's SharedTensor). Device arrays, once made, keep their
    identity: a sync writes into them, so contexts may hold on to them.
    """

    def __init__(self, data, name: str = "", lr_mult: float = 1.0, trainable: bool = True):
        host = np.array(data, copy=True, order="C")
        self.name = name
        self.lr_mult = lr_mult
        self.trainable = flag("LearnableParams", "trainable", trainable)
        self._host = host
        self._version = 0
        self._host_version = 0
        self._device: dict = {}
        self._device_version: dict = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = "LearnableParams" if self.trainable else "Buffer"
        return f"<{kind} {self.name or '?'} {self.shape} {self.dtype}>"

    @property
    def lr_mult(self) -> float:
        """Multiplier of the optimizer's learning rate for this param (0 freezes it)."""
        return self._lr_mult

    @lr_mult.setter
    def lr_mult(self, value) -> None:
        self._lr_mult = number(f"param {self.name or '?'}", "lr_mult", value, low=0.0)

    @property
    def shape(self) -> tuple:
        return self._host.shape

    @property
    def dtype(self) -> np.dtype:
        return self._host.dtype

    @property
    def size(self) -> int:
        return self._host.size

    @property
    def version(self) -> int:
        return self._version

    def _freshest_device(self):
        for backend, version in self._device_version.items():
            if version == self._version:
                return backend
        raise RuntimeError(f"param {self.name}: no copy holds version {self._version}")

    def numpy(self) -> np.ndarray:
        """A host copy of the current data."""
        with self._lock:
            self._sync_host()
            return self._host.copy()

    def _sync_host(self) -> None:
        if self._host_version != self._version:
            backend = self._freshest_device()
            self._host[...] = backend.to_host(self._device[backend])
            self._host_version = self._version

    def coerced(self, data) -> np.ndarray:
        """``data`` cast to this param's dtype; ValueError when it holds a value the dtype
        cannot (an integer param is a count: whole numbers >= 0, not 2.7, NaN or -1)."""
        data = np.asarray(data)
        if self.dtype.kind in "iu" and data.size:
            with np.errstate(invalid="ignore"):
                bad = (data < 0) | ((data != np.round(data)) if data.dtype.kind in "fc" else False)
            if np.any(bad):
                raise ValueError(f"holds counts ({self.dtype}), got {np.asarray(data)[bad].flat[0].item()!r}")
        return data.astype(self.dtype)

    def set(self, data) -> None:
        """Overwrite the data from a host array of the same shape (cast to this dtype)."""
        data = np.asarray(data)
        if data.shape != self.shape:
            raise ValueError(f"param {self.name}: expected shape {self.shape}, got {data.shape}")
        with self._lock:
            self._host[...] = data
            self._version += 1
            self._host_version = self._version

    def on(self, backend):
        """This param's array on ``backend``, made or refreshed as needed."""
        array = self._device.get(backend)
        if array is not None and self._device_version[backend] == self._version:
            return array
        with self._lock:
            if array is None:
                self._sync_host()
                array = backend.from_host(self._host)
                self._device[backend] = array
            else:
                self._sync_host()
                backend.write(array, self._host)
            self._device_version[backend] = self._version
            return array

    def has_storage(self, backend) -> bool:
        return backend in self._device

    def attach(self, backend, array) -> None:
        """Use ``array`` (a view into a flat block) as this param's storage on ``backend``."""
        with self._lock:
            self._sync_host()
            backend.write(array, self._host)
            self._device[backend] = array
            self._device_version[backend] = self._version

    def mark_written(self, backend) -> None:
        """The copy on ``backend`` was updated in place (by an optimizer or a layer)."""
        self._version += 1
        self._device_version[backend] = self._version

    def save_into(self, backend, device_copy, host_copy) -> bool:
        """Copy the current data into ``device_copy`` (on ``backend``) when the copy there is
        current, else into ``host_copy``; returns whether it went to the device. Allocates
        nothing: the copies are made once by the caller (a Context's step backup)."""
        with self._lock:
            array = self._device.get(backend)
            if array is not None and self._device_version[backend] == self._version:
                backend.copy(array, device_copy)
                return True
            self._sync_host()
            np.copyto(host_copy, self._host)
            return False

    def restore_from(self, backend, on_device: bool, device_copy, host_copy) -> None:
        """Make what :meth:`save_into` saved the current data again."""
        if not on_device:
            self.set(host_copy)
            return
        with self._lock:
            backend.copy(device_copy, self._device[backend])
            self._version += 1
            self._device_version[backend] = self._version

    def release(self, backend) -> None:
        """Drop the copy on ``backend`` (after syncing it to the host if it is the freshest)."""
        with self._lock:
            if backend not in self._device:
                return
            self._sync_host()
            del self._device[backend]
            del self._device_version[backend]
