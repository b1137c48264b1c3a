"""base.py is the one contract: every backend class offers exactly its public ops, with the same
signatures (so a layer or optimizer written against one backend runs on all)."""

import inspect

import pytest

from juicepy.backends.base import Backend
from juicepy.backends.cuda import CudaBackend
from juicepy.backends.numpy import NumpyBackend
from juicepy.backends.opencl import OpenCLBackend

CLASSES = [NumpyBackend, OpenCLBackend, CudaBackend]


def _public_methods(cls) -> dict:
    return {name: getattr(cls, name) for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))}


def _params(fn) -> list:
    """Names, kinds and defaults of the parameters (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_public_methods_match_the_contract(cls):
    contract, offered = _public_methods(Backend), _public_methods(cls)
    assert sorted(set(offered) - set(contract)) == [], f"{cls.__name__} has public methods base.py does not declare"
    for name, declared in contract.items():
        assert _params(offered[name]) == _params(declared), \
            f"{cls.__name__}.{name}{inspect.signature(offered[name])} != Backend.{name}{inspect.signature(declared)}"


def test_the_check_can_fail():
    """A backend with an op whose signature drifted is caught."""
    class Drifted(NumpyBackend):
        def relu(self, x, out, inplace=False):
            return super().relu(x, out)

    with pytest.raises(AssertionError, match=r"Drifted.relu"):
        test_public_methods_match_the_contract(Drifted)
