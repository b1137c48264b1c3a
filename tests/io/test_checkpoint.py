import os

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import CheckpointError, WeightsError
from juicepy.io import checkpoint as ckpt
from juicepy.train import SGD, Adam, AdamW, Trainer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 8)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]


def _trainer(optimizer):
    x = jp.Input((8,))
    h = L.Dropout(0.3)(L.ReLU()(L.Linear(16)(x)))
    y = L.Linear(3)(h + L.Linear(16)(x))
    net = jp.Network(inputs=x, outputs=y, seed=11)
    return Trainer(net, L.SoftmaxCrossEntropy(), optimizer, batch_size=16)


@pytest.mark.parametrize("make_optimizer", [lambda: Adam(lr=3e-3), lambda: AdamW(lr=3e-3, amsgrad=True),
                                            lambda: SGD(lr=0.05, momentum=0.9, nesterov=True)])
def test_resumed_training_is_bitwise_identical(tmp_path, make_optimizer):
    batches = _data()
    straight = _trainer(make_optimizer())
    straight_results = straight.run_training("numpy", batches, 14)

    first = _trainer(make_optimizer())
    first_results = first.run_training("numpy", batches, 9)  # stops mid-epoch
    jp.save(tmp_path / "ck.safetensors", first.network, first, metadata={"epoch": 1})
    loaded = jp.load(tmp_path / "ck.safetensors")
    assert loaded.metadata == {"epoch": 1} and loaded.step == 9
    assert type(loaded.trainer.optimizer) is type(first.optimizer)
    assert loaded.trainer.optimizer.hyperparams() == first.optimizer.hyperparams()
    rest = loaded.trainer.run_training("numpy", batches[3:] + batches, 5)  # batches 9.. of the stream
    assert first_results + rest == straight_results
    for k, v in straight.network.get_weights().items():
        np.testing.assert_array_equal(loaded.network.get_weights()[k], v)


def test_network_only_checkpoint_and_optimizer_names(tmp_path):
    trainer = _trainer(Adam())
    trainer.run_training("numpy", _data(), 2)
    jp.save(tmp_path / "net.safetensors", trainer.network)
    loaded = jp.load(tmp_path / "net.safetensors")
    assert loaded.trainer is None and loaded.step == 0
    x = _data()[0][0]
    np.testing.assert_array_equal(loaded.network.transform("numpy", x), trainer.network.transform("numpy", x))
    jp.save(tmp_path / "full.safetensors", trainer.network, trainer)
    tensors, meta = ckpt.read(tmp_path / "full.safetensors")
    assert "optimizer.linear.weight.exp_avg" in tensors and "optimizer.linear.weight.exp_avg_sq" in tensors
    assert "model.linear_2.bias" in tensors and "juicepy.network" in meta


def test_load_on_another_backend(tmp_path, backend):
    trainer = _trainer(SGD(lr=0.1))
    trainer.run_training("numpy", _data(), 3)
    jp.save(tmp_path / "ck.safetensors", trainer.network, trainer)
    loaded = jp.load(tmp_path / "ck.safetensors")
    x = _data()[1][0]
    np.testing.assert_allclose(loaded.network.transform(backend, x), trainer.network.transform("numpy", x),
                               rtol=1e-4, atol=1e-5)
    loss, _ = loaded.trainer.train_minibatch(backend, *_data()[3])
    assert np.isfinite(loss) and loaded.trainer.steps == 4


def _rewrite(src, dst, edit):
    tensors, meta = ckpt.read(src)
    edit(tensors)
    meta["juicepy.sha256"] = ckpt._digest(tensors, meta)
    with open(dst, "wb") as f:
        f.write(save_tensors(tensors, metadata=meta))


@pytest.fixture
def saved(tmp_path):
    trainer = _trainer(Adam())
    trainer.run_training("numpy", _data(), 1)
    path = tmp_path / "good.safetensors"
    jp.save(path, trainer.network, trainer)
    return path


def test_truncated_and_corrupted_files_are_refused(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (4, 200, len(data) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            jp.load(bad)
    flipped = bytearray(data)
    flipped[-5] ^= 0x40
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        jp.load(bad)
    header = bytearray(data)
    header[8] = ord("!")  # the opening brace of the JSON header
    bad.write_bytes(bytes(header))
    with pytest.raises(CheckpointError, match="corrupted header"):
        jp.load(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        jp.load(tmp_path / "absent.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(save_tensors({"w": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="not a juicepy checkpoint"):
        jp.load(foreign)


def test_missing_unused_and_misshapen_weights(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, lambda t: t.pop("model.linear_1.bias"))
    with pytest.raises(WeightsError, match=r"missing weight\(s\) linear_1.bias"):
        jp.load(bad)
    _rewrite(saved, bad, lambda t: t.__setitem__("model.extra.weight", np.zeros(2, np.float32)))
    with pytest.raises(WeightsError, match=r"weight\(s\) extra.weight match no param"):
        jp.load(bad)
    _rewrite(saved, bad, lambda t: t.__setitem__("model.linear.bias", np.zeros(5, np.float32)))
    with pytest.raises(WeightsError, match=r"'linear.bias' has shape \(5,\), the network expects \(16,\)"):
        jp.load(bad)
    _rewrite(saved, bad, lambda t: t.pop("optimizer.linear.bias.exp_avg_sq"))
    with pytest.raises(WeightsError, match=r"'linear.bias' misses 'exp_avg_sq'"):
        jp.load(bad)


def test_failed_save_never_clobbers_the_previous_checkpoint(saved, monkeypatch):
    before = saved.read_bytes()
    trainer = jp.load(saved).trainer
    trainer.run_training("numpy", _data(), 2)

    def write_half_then_fail(f, payload):
        f.write(payload[:len(payload) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt, "_write", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        jp.save(saved, trainer.network, trainer)
    monkeypatch.undo()

    def fail_fsync(fd):
        raise OSError("fsync failed (simulated)")

    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        jp.save(saved, trainer.network, trainer)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["good.safetensors"]  # no temp file left
    assert jp.load(saved).step == 1
    jp.save(saved, trainer.network, trainer)  # and a working save replaces it
    assert jp.load(saved).step == 3


def test_save_refuses_a_foreign_trainer(tmp_path):
    a, b = _trainer(Adam()), _trainer(Adam())
    with pytest.raises(ValueError, match="another network"):
        jp.save(tmp_path / "x.safetensors", a.network, b)


class _WithScalarBuffer(L.Identity):
    """An Identity holding a 0-d int64 buffer, like BatchNorm's num_batches_tracked."""

    def params(self):
        if not hasattr(self, "_count"):
            self._count = jp.LearnableParams(np.array(7, np.int64), trainable=False)
        return {"count": self._count}


def test_zero_dim_buffers_keep_their_shape(tmp_path):
    jp.register_layer(_WithScalarBuffer, name="test_checkpoint.WithScalarBuffer")
    try:
        net = jp.Network(L.Sequential(L.Linear(2), _WithScalarBuffer()), (3,))
        jp.save(tmp_path / "s.st", net)
        loaded = jp.load(tmp_path / "s.st").network
    finally:
        from juicepy.io.registry import LAYERS
        LAYERS.pop("test_checkpoint.WithScalarBuffer")
    count = loaded.get_weights()["1.count"]
    assert count.shape == () and count.dtype == np.int64 and int(count) == 7
