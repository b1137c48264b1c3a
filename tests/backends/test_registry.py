import pytest

import juicepy as jp
from juicepy.backends import BackendUnavailable, register_backend
from juicepy.backends.numpy import NumpyBackend


def test_numpy_is_default_and_shared(monkeypatch):
    monkeypatch.delenv("JUICEPY_BACKEND", raising=False)
    assert jp.backend().name == "numpy"
    assert jp.backend("numpy") is jp.backend("NumPy") is jp.backend()


def test_env_var_picks_default(monkeypatch):
    monkeypatch.setenv("JUICEPY_BACKEND", "numpy")
    assert jp.backend().name == "numpy"
    monkeypatch.setenv("JUICEPY_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        jp.backend()


def test_unknown_name_lists_registered_backends():
    with pytest.raises(ValueError) as err:
        jp.backend("tpu")
    assert "numpy" in str(err.value) and "registered backends" in str(err.value)


def test_unavailable_backends_are_left_out_of_available(monkeypatch):
    def broken():
        raise BackendUnavailable("no such device here")

    register_backend("broken-test", broken)
    try:
        assert "broken-test" in jp.registered_backends()
        assert "broken-test" not in jp.available_backends()
        with pytest.raises(BackendUnavailable, match="no such device"):
            jp.backend("broken-test")
    finally:
        from juicepy import backends

        backends._FACTORIES.pop("broken-test")


def test_backend_instance_passes_through():
    b = NumpyBackend()
    assert jp.backend(b) is b
