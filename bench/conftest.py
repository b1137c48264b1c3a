"""Benchmarks are parametrized over every backend that starts here, so new backends join the
same tables. Run: pytest bench --benchmark-group-by=group --benchmark-columns=min,median,mean"""

import pytest

import juicepy as jp

AVAILABLE = jp.available_backends()


@pytest.fixture(params=AVAILABLE)
def backend(request):
    return jp.backend(request.param)
