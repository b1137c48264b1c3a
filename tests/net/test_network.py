import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import DTypeError, NonFiniteError, ShapeError, WeightsError


def _net(**kw):
    return jp.Network(L.Sequential(L.Linear(8), L.ReLU(), L.Linear(3)), input_shape=(5,), **kw)


def test_transform_any_number_of_rows(backend, rng):
    net = _net()
    net.max_batch = 64  # force several chunks and a remainder context
    x = rng.standard_normal((150, 5)).astype(np.float32)
    full = net.transform(backend, x)
    assert full.shape == (150, 3)
    np.testing.assert_allclose(net.transform(backend, x[:1]), full[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.transform(backend, x[70:71]), full[70:71], rtol=1e-5, atol=1e-6)
    # 150 = 64 + 64 + 16 + 4 + 2 (a pass never pads more than a third), then 1 and 1
    assert sorted(net.inference_capacities(backend)) == [1, 2, 4, 16, 64]


def test_transform_matches_host_math(numpy_backend, rng):
    net = _net()
    w = net.get_weights()
    x = rng.standard_normal((4, 5)).astype(np.float32)
    expected = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0) @ w["2.weight"].T + w["2.bias"]
    np.testing.assert_allclose(net.transform(numpy_backend, x), expected, rtol=1e-5, atol=1e-6)


def test_transform_rejects_bad_input(numpy_backend):
    net = _net()
    with pytest.raises(ShapeError, match=r"input: expected shape \(batch, 5\), got \(2, 4\)"):
        net.transform(numpy_backend, np.zeros((2, 4), np.float32))
    with pytest.raises(DTypeError, match="input: expected dtype float32, got float64"):
        net.transform(numpy_backend, np.zeros((2, 5)))
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        net.transform(numpy_backend, np.full((2, 5), np.nan, np.float32), check_finite=True)


def test_build_time_shape_mismatch_names_layer_and_both_shapes():
    with pytest.raises(ShapeError) as err:
        jp.Network(L.Sequential(L.Linear(8), L.Reshape((3, 3))), input_shape=(5,))
    assert "1:" in str(err.value) and "(8,)" in str(err.value) and "(3, 3)" in str(err.value)


def test_float_dtype_required():
    with pytest.raises(DTypeError, match="must be one of float32, float64 .*, got int32"):
        jp.Network(L.Linear(2), input_shape=(3,), dtype=np.int32)


def test_seed_makes_init_reproducible():
    a, b, c = _net(seed=1).get_weights(), _net(seed=1).get_weights(), _net(seed=2).get_weights()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_get_and_set_weights_round_trip():
    src, dst = _net(seed=1), _net(seed=2)
    dst.set_weights(src.get_weights(), strict=True)
    for k, v in src.get_weights().items():
        np.testing.assert_array_equal(dst.get_weights()[k], v)
    assert list(src.get_weights(keys=["2.bias"])) == ["2.bias"]


def test_set_weights_updates_only_named_and_validates_first():
    net = _net()
    before = net.get_weights()
    bias = np.arange(3, dtype=np.float32)
    net.set_weights({"2.bias": bias})
    np.testing.assert_array_equal(net.get_weights()["2.bias"], bias)
    np.testing.assert_array_equal(net.get_weights()["0.weight"], before["0.weight"])
    after_first = net.get_weights()
    with pytest.raises(WeightsError, match=r"unknown param '9.weight'"):
        net.set_weights({"2.bias": bias + 1, "9.weight": np.zeros(1)})
    with pytest.raises(WeightsError, match=r"'0.weight' expects shape \(8, 5\), got \(5, 8\)"):
        net.set_weights({"2.bias": bias + 1, "0.weight": np.zeros((5, 8))})
    with pytest.raises(WeightsError, match="missing params"):
        net.set_weights({"2.bias": bias + 1}, strict=True)
    for k, v in net.get_weights().items():  # nothing changed by the refused calls
        np.testing.assert_array_equal(v, after_first[k])
    with pytest.raises(WeightsError, match="unknown param 'nope'"):
        net.get_weights(keys=["nope"])


def test_set_weights_reaches_existing_device_contexts(numpy_backend, rng):
    net = _net()
    x = rng.standard_normal((2, 5)).astype(np.float32)
    net.transform(numpy_backend, x)  # contexts and device copies exist now
    net.set_weights({k: np.zeros_like(v) for k, v in net.get_weights().items()})
    np.testing.assert_array_equal(net.transform(numpy_backend, x), 0.0)


def test_torch_state_dict_loads_as_is(numpy_backend, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    ref = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net = _net()
    net.set_weights(ref.state_dict(), strict=True)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(net.transform(numpy_backend, x), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    back = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    back.load_state_dict({k: torch.tensor(v) for k, v in net.get_weights().items()})  # and back again


def test_summary_lists_layers_and_counts():
    text = _net().summary()
    assert "Linear" in text and "ReLU" in text and "(3,)" in text
    assert f"{5 * 8 + 8 + 8 * 3 + 3:,}" in text


def test_multiple_inputs_are_counted():
    net = _net()
    with pytest.raises(ShapeError, match="network takes 1 input"):
        net.check_inputs([np.zeros((1, 5), np.float32)] * 2)


def _every_layer_net():
    """Every kind of leaf layer that runs in eval mode, so row independence is proven for each."""
    x = jp.Input((2, 8, 8))
    h = L.Conv2d(4, 3, padding=1)(x)
    h = L.ReLU()(L.BatchNorm2d()(h))
    h = jp.concat(L.MaxPool2d(2)(h), L.AvgPool2d(2)(h))
    h = L.Flatten()(L.Conv2d(4, 3, groups=2)(h))
    h = L.Dropout(0.5)(L.LeakyReLU(0.1)(L.Linear(12)(h)))
    h = h + L.Tanh()(L.Linear(12)(h))
    h = L.Multiply()(h, L.Sigmoid()(L.Identity()(h)))
    encoder = L.Linear(6)
    h = L.TiedLinear(encoder)(encoder(h))
    seq = L.Flatten()(L.Conv1d(2, 3)(L.Reshape((3, 4))(h)))
    return jp.Network(inputs=x, outputs=L.LogSoftmax()(L.Linear(5)(L.BatchNorm1d()(seq))), seed=3)


def test_every_layer_is_row_independent_in_eval_mode(backend, rng):
    """transform may run a small request padded inside a bigger context only because no layer
    mixes rows in eval mode; this proves it for every layer kind (the padded rows are garbage)."""
    net = _every_layer_net()
    with_stats = {k: rng.uniform(0.5, 2.0, v.shape).astype(v.dtype) if k.endswith("running_var") else v
                  for k, v in net.get_weights().items()}
    net.set_weights(with_stats)
    x = rng.standard_normal((13, 2, 8, 8)).astype(np.float32)
    alone = np.concatenate([net.transform(backend, x[i:i + 1]) for i in range(13)])
    ctx = net.context(backend, 16)  # an explicit context, its last three rows never written
    ctx.set_inputs([np.concatenate([x, 100 * rng.standard_normal((3, 2, 8, 8)).astype(np.float32)])])
    ctx.forward()
    np.testing.assert_allclose(backend.to_host(ctx.output())[:13], alone, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(net.transform(backend, x), alone, rtol=2e-5, atol=2e-6)


def _small_conv_net():
    return jp.Network(L.Sequential(L.Conv2d(8, 3, padding=1), L.BatchNorm2d(), L.ReLU(), L.MaxPool2d(2),
                                   L.Flatten(), L.Dropout(0.2), L.Linear(10)), (3, 16, 16), seed=5)


def test_serving_every_request_size_keeps_memory_bounded(backend, rng):
    """Requests of 1..300 rows once each: a few contexts at power-of-two capacities, not one per size."""
    x = rng.standard_normal((300, 3, 16, 16)).astype(np.float32)
    one = _small_conv_net()
    before = backend.allocations
    expected = one.transform(backend, x)
    single = backend.allocations - before  # params, one context and its workspaces

    net = _small_conv_net()
    before = backend.allocations
    for rows in range(1, 301):
        np.testing.assert_allclose(net.transform(backend, x[:rows]), expected[:rows], rtol=1e-4, atol=1e-5)
    # capacities 1, 2, 4, ..., 512: ten contexts, each at most as big as the one for 300 rows
    assert backend.allocations - before <= 10 * single
    assert len(net.inference_capacities(backend)) <= 10


def test_serving_every_request_size_bounds_peak_host_memory(numpy_backend, rng):
    import tracemalloc

    x = rng.standard_normal((300, 3, 16, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        net = _small_conv_net()
        net.transform(numpy_backend, x)
        _, one_request = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for rows in range(1, 301):
            net.transform(numpy_backend, x[:rows])
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the 512-row context serves 257..300, the smaller ones together hold less than it does
    assert peak <= 2.5 * one_request, (peak, one_request)


def test_inference_capacities_stay_within_max_batch(numpy_backend, rng):
    net = _net()
    net.max_batch = 100
    x = rng.standard_normal((250, 5)).astype(np.float32)
    full = net.transform(numpy_backend, x)
    np.testing.assert_allclose(net.transform(numpy_backend, x[:70]), full[:70], rtol=1e-5, atol=1e-6)
    capacities = net.inference_capacities(numpy_backend)
    assert max(capacities) == 100 and len(capacities) <= 5, capacities  # never above max_batch


class _MixesRows(L.Identity):
    """A layer whose eval output depends on other rows (each row minus the batch mean)."""

    rows_independent = False

    def compute_output(self, backend, ctx):
        host = backend.to_host(ctx.input())
        backend.write(ctx.output(), host - host.mean(axis=0, keepdims=True))


def test_a_layer_that_mixes_rows_runs_exact_sizes_in_a_few_contexts(numpy_backend, rng):
    net = jp.Network(L.Sequential(L.Linear(4), _MixesRows()), (5,))
    x = rng.standard_normal((40, 5)).astype(np.float32)
    for rows in range(1, 41):
        got = net.transform(numpy_backend, x[:rows])
        np.testing.assert_allclose(got.mean(axis=0), 0.0, atol=1e-5)  # not diluted by padding rows
    assert len(net.inference_capacities(numpy_backend)) <= net.max_exact_contexts


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_dtypes_no_backend_computes_in_are_refused_at_build(dtype):
    with pytest.raises(DTypeError, match=rf"network dtype must be one of float32, float64 \(the dtypes juicepy's "
                                         rf"backends compute in\), got {np.dtype(dtype).name}"):
        jp.Network(L.Sequential(L.Linear(3), L.Dropout(0.2)), input_shape=(4,), dtype=dtype)


class _Float32Only(type(jp.backend("numpy"))):
    """A backend that computes in float32 only, as the OpenCL one does."""

    name = "float32-only"
    dtypes = (np.float32,)


def _backends_without_float64():
    return [_Float32Only()] + [jp.backend(b) for b in jp.available_backends()
                               if np.float64 not in jp.backend(b).dtypes]


@pytest.mark.parametrize("backend", _backends_without_float64(), ids=lambda b: b.name)
def test_a_dtype_the_backend_does_not_compute_in_is_refused_when_placed(backend):
    """Refused before a context, a counter or a param copy is made on that backend."""
    from juicepy.train import SGD, Trainer

    net = jp.Network(L.Sequential(L.Linear(3), L.Dropout(0.2)), input_shape=(4,), dtype=np.float64)
    trainer = Trainer(net, L.MSE(), SGD(lr=0.1), batch_size=2)
    message = rf"network dtype float64: the {backend.name} backend computes in float32 only"
    before = backend.allocations
    with pytest.raises(DTypeError, match=message):
        trainer.train_minibatch(backend, np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(DTypeError, match=message):
        net.transform(backend, np.ones((2, 4)))
    assert backend.allocations == before
    assert trainer.steps == 0 and trainer.state_dict()["dropout_step"] == 0
    trainer.train_minibatch("numpy", np.ones((2, 4)), np.ones((2, 3)))  # fine where float64 runs
    assert trainer.steps == 1


def test_net_imports_nothing_above_it():
    """net/ sits below layers/: none of its modules imports from juicepy.layers (or higher)."""
    import ast
    import pathlib

    import juicepy.net

    above = ("layers", "train", "io", "testing", "models", "predictor", "profile", "cli")
    for path in pathlib.Path(juicepy.net.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] not in above, f"{path.name} imports ..{node.module}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("juicepy.") and n.split(".")[1] in above for n in names), path.name


@pytest.mark.parametrize("value,message", [(2.7, "2.7"), (float("nan"), "nan"), (-1, "-1")])
def test_an_integer_buffer_refuses_values_it_cannot_hold_before_any_write(value, message):
    """BatchNorm's batch counter is an int64: 2.7 would be truncated and NaN become garbage."""
    net = jp.Network(L.Sequential(L.Linear(4), L.BatchNorm1d()), input_shape=(3,))
    before = net.get_weights()
    bad = {"0.weight": np.zeros((4, 3)), "1.num_batches_tracked": np.array(value)}
    with pytest.raises(WeightsError, match=rf"set_weights: '1.num_batches_tracked' holds counts \(int64\), "
                                           rf"got {message}"):
        net.set_weights(bad)
    with pytest.raises(WeightsError, match=rf"init.apply: '1.num_batches_tracked' holds counts \(int64\), got {message}"):
        jp.init.apply(net, {"0.weight": "zeros", "1.num_batches_tracked": np.array(value)})
    for k, v in before.items():
        np.testing.assert_array_equal(net.get_weights()[k], v, err_msg=k)
    net.set_weights({"1.num_batches_tracked": np.array(3.0)})  # a whole float is a count
    assert net.get_weights()["1.num_batches_tracked"] == 3


class _CountsRows(L.Identity):
    """Identity that counts the rows of every eval pass it runs in."""

    def __init__(self):
        super().__init__()
        self.passes = []

    def compute_output(self, backend, ctx):
        self.passes.append(ctx.batch_size)
        super().compute_output(backend, ctx)


def test_padding_is_at_most_a_third_of_the_rows_computed(numpy_backend, rng):
    counter = _CountsRows()
    net = jp.Network(L.Sequential(L.Linear(3), counter), (4,))
    x = rng.standard_normal((700, 4)).astype(np.float32)
    for n in range(1, 701):
        counter.passes.clear()
        assert net.transform(numpy_backend, x[:n]).shape == (n, 3)
        computed = sum(counter.passes)
        assert n <= computed <= 4 / 3 * n and len(counter.passes) <= n.bit_length(), (n, counter.passes)


def test_a_negative_seed_is_refused_by_name():
    """NumPy's "expected non-negative integer" came out of the constructor naming nothing."""
    with pytest.raises(ValueError, match="Network: seed must be an integer >= 0, got -1"):
        jp.Network(L.Linear(3), (4,), seed=-1)
    with pytest.raises(ValueError, match="init.apply: seed must be an integer >= 0, got -5"):
        jp.init.apply(jp.Network(L.Linear(3), (4,)), {"*": "zeros"}, seed=-5)
