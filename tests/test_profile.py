import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.profile import format_table, profile


def test_profile_rows_cover_every_layer(backend):
    net = jp.Network(L.Sequential(L.Linear(64), L.ReLU(), L.Residual(L.Linear(64)), L.Linear(10)), (32,))
    rows = profile(net, backend, batch_size=16, steps=3, warmup=1)
    assert [r.path for r in rows] == [n.path for n in net.nodes]
    assert [r.layer for r in rows] == [type(n.layer).__name__ for n in net.nodes]
    assert rows[-1].output_shape == (10,)
    assert all(r.forward_s > 0 and r.backward_s > 0 for r in rows)
    table = format_table(rows, title="numpy")
    assert table.splitlines()[0] == "numpy"
    assert "2.block" in table and "total" in table.splitlines()[-1]


def test_profile_allocates_nothing_after_the_context():
    net = jp.Network(L.Sequential(L.Linear(8), L.Tanh()), (4,))
    b = jp.backend("numpy")
    profile(net, b, batch_size=4, steps=1, warmup=0)
    before = b.allocations
    rows = profile(net, b, batch_size=4, steps=5, warmup=0)
    # a new context per profile() call, nothing per step: 5 steps cost what 1 step costs
    after_five = b.allocations - before
    before = b.allocations
    profile(net, b, batch_size=4, steps=1, warmup=0)
    assert after_five == b.allocations - before
    assert len(rows) == 2


def test_profile_refuses_zero_steps():
    net = jp.Network(L.Linear(2), (2,))
    with pytest.raises(ValueError, match="profile: steps must be an integer >= 1, got 0"):
        profile(net, "numpy", 2, steps=0)
    with pytest.raises(ValueError, match="profile: seed must be an integer >= 0, got -1"):
        profile(net, "numpy", 2, seed=-1)  # NumPy's "expected non-negative integer" before


def test_profiling_leaves_the_network_as_it_was(backend):
    """Profiling runs training-mode passes; BatchNorm's running statistics and batch counter
    of the profiled (perhaps trained) network must not change."""
    import numpy as np

    net = jp.Network(L.Sequential(L.Linear(16), L.BatchNorm1d(), L.Dropout(0.5), L.Linear(4)), (8,))
    before = net.get_weights()
    profile(net, backend, batch_size=8, steps=2, warmup=1)
    after = net.get_weights()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
