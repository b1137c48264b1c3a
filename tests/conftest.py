import numpy as np
import pytest

import juicepy as jp

AVAILABLE = jp.available_backends()


def pytest_report_header(config):
    return f"juicepy backends available here: {', '.join(AVAILABLE)}"


@pytest.fixture(params=AVAILABLE)
def backend(request):
    """Every backend that starts on this machine (numpy always)."""
    return jp.backend(request.param)


@pytest.fixture
def numpy_backend():
    return jp.backend("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
