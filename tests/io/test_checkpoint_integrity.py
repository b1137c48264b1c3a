"""Checkpoints that cannot be trusted are refused with a CheckpointError naming the file: bit
flips anywhere in the header, truncation, malformed metadata and definitions, and small files
that describe huge networks (refused before the network is allocated)."""

import json
import os
import struct
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import CheckpointError, WeightsError
from juicepy.io import checkpoint as ckpt
from juicepy.train import Adam, Trainer


def _small_trained(seed=0):
    net = jp.Network(L.Sequential(L.Linear(3), L.ReLU(), L.Dropout(0.25), L.Linear(2)), (4,), seed=seed)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=2e-3, betas=(0.8, 0.9)), batch_size=4)
    rng = np.random.default_rng(seed)
    trainer.train_minibatch("numpy", rng.standard_normal((4, 4)).astype(np.float32), np.array([0, 1, 1, 0]))
    return net, trainer


@pytest.fixture
def small(tmp_path):
    net, trainer = _small_trained()
    path = tmp_path / "small.safetensors"
    jp.save(path, net, trainer, metadata={"epoch": 3, "note": "x"})
    return path


def _rewrite(src, dst, edit_meta=None, edit_tensors=None, keep_digest=False):
    """Write src's tensors and metadata, edited, to dst with a digest that matches the edit
    (so what is tested is the check behind the checksum)."""
    tensors, meta = ckpt.read(src)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    if not keep_digest:
        meta["juicepy.sha256"] = ckpt._digest(tensors, meta)
    with open(dst, "wb") as f:
        f.write(save_tensors(tensors, metadata=meta))
    return dst


def _snapshot(ck):
    trainer_state = ck.trainer.state_dict() if ck.trainer else None
    return (jp.io.definition_json(ck.network), ck.network.get_weights(), ck.metadata,
            None if ck.trainer is None else (ck.trainer.optimizer.hyperparams(), ck.trainer.batch_size,
                                             ck.trainer.check_finite, trainer_state))


def _assert_same(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])
    if a[3] is None:
        assert b[3] is None
        return
    assert a[3][:3] == b[3][:3]
    sa, sb = a[3][3], b[3][3]
    assert (sa["step"], sa["dropout_step"]) == (sb["step"], sb["dropout_step"])
    for path, buffers in sa["optimizer"].items():
        for name, value in buffers.items():
            np.testing.assert_array_equal(value, sb["optimizer"][path][name])


def test_every_single_bit_flip_in_the_header_is_refused_or_harmless(small, tmp_path):
    data = small.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    original = _snapshot(jp.load(small))
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data)
    loaded_same = refused = 0
    fd = os.open(flipped, os.O_WRONLY)
    try:
        for byte in range(8 + header_len):
            for bit in range(8):
                os.pwrite(fd, bytes([data[byte] ^ (1 << bit)]), byte)  # one byte changed in place
                try:
                    ck = jp.load(flipped)
                except CheckpointError as err:
                    assert str(flipped) in str(err), err
                    refused += 1
                else:
                    _assert_same(_snapshot(ck), original)  # any flip that loads must change nothing
                    loaded_same += 1
            os.pwrite(fd, data[byte:byte + 1], byte)
    finally:
        os.close(fd)
    assert refused + loaded_same == 8 * (8 + header_len) and refused > 0.99 * 8 * (8 + header_len)


def test_the_checksum_covers_definition_trainer_settings_and_metadata(small, tmp_path):
    for field, old, new in [("juicepy.network", '"out_features": 3', '"out_features": 5'),
                            ("juicepy.trainer", '"lr": 0.002', '"lr": 0.003'),
                            ("juicepy.trainer", '0.8', '0.9'),
                            ("juicepy.network", '"seed": 0', '"seed": 1'),
                            ("juicepy.metadata", '"epoch": 3', '"epoch": 4')]:
        def edit(meta):
            assert old in meta[field], (field, meta[field])
            meta[field] = meta[field].replace(old, new, 1)
        bad = _rewrite(small, tmp_path / "edited.safetensors", edit_meta=edit, keep_digest=True)
        with pytest.raises(CheckpointError, match="checksum"):
            jp.load(bad)


def _header_only(path, header: bytes, tail: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + tail)
    return path


@pytest.mark.parametrize("header", [
    b"[1, 2]", b'"text"', b"null", b'{"__metadata__": [1, 2]}', b'{"__metadata__": "abc"}',
    b'{"__metadata__": {"juicepy.format": 7}}', b'{"__metadata__": null}',
    b'{"__metadata__": {"juicepy.format": "juicepy.checkpoint", "juicepy.version": "2"}}',
    b'\xff\xfe{}', b'{"a": ',
])
def test_malformed_headers_are_checkpoint_errors(tmp_path, header):
    path = _header_only(tmp_path / "bad.safetensors", header)
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        jp.load(path)


def _set(field, value):
    return lambda meta: meta.__setitem__(field, value)


def _drop(field):
    return lambda meta: meta.pop(field)


def _json_edit(field, fn):
    """An edit of the JSON document in metadata ``field`` by ``fn(document)``."""
    def edit(meta):
        doc = json.loads(meta[field])
        fn(doc)
        meta[field] = json.dumps(doc)
    return edit


def _trainer_edit(fn):
    return _json_edit("juicepy.trainer", fn)


def _network_edit(fn):
    return _json_edit("juicepy.network", fn)


MALFORMED = {
    "metadata not JSON": (_set("juicepy.metadata", "{not json"), "juicepy.metadata"),
    "metadata not an object": (_set("juicepy.metadata", "[1, 2]"), "juicepy.metadata"),
    "no definition": (_drop("juicepy.network"), "juicepy.network"),
    "definition not JSON": (_set("juicepy.network", "{"), "juicepy.network"),
    "definition a list": (_set("juicepy.network", "[]"), "juicepy.network"),
    "definition layers missing": (_network_edit(lambda d: d.pop("layers")), "juicepy.network"),
    "layer spec not an object": (_network_edit(lambda d: d["layers"].__setitem__(1, [1])), "juicepy.network"),
    "layer config not an object": (_network_edit(lambda d: d["layers"][1].__setitem__("config", 3)),
                                   "juicepy.network"),
    "layer config wrong type": (_network_edit(lambda d: d["layers"][1]["config"].__setitem__("out_features", "x")),
                                "juicepy.network"),
    "layer config unknown key": (_network_edit(lambda d: d["layers"][1]["config"].__setitem__("colour", 1)),
                                 "juicepy.network"),
    "input shape not a list": (_network_edit(lambda d: d.__setitem__("input_shapes", 4)), "juicepy.network"),
    "dtype unknown": (_network_edit(lambda d: d.__setitem__("dtype", "float99")), "juicepy.network"),
    "seed a string": (_network_edit(lambda d: d.__setitem__("seed", "zero")), "juicepy.network"),
    "trainer not JSON": (_set("juicepy.trainer", "nope"), "juicepy.trainer"),
    "trainer a list": (_set("juicepy.trainer", "[]"), "juicepy.trainer"),
    "trainer loss missing": (_trainer_edit(lambda s: s.pop("loss")), "loss"),
    "trainer loss type unknown": (_trainer_edit(lambda s: s["loss"].__setitem__("type", "Nope")), "loss"),
    "optimizer config a list": (_trainer_edit(lambda s: s["optimizer"].__setitem__("config", [1])), "optimizer"),
    "optimizer config unknown key": (_trainer_edit(lambda s: s["optimizer"]["config"].__setitem__("colour", 1)),
                                     "optimizer"),
    "batch_size a float": (_trainer_edit(lambda s: s.__setitem__("batch_size", 2.5)), "batch_size"),
    "batch_size zero": (_trainer_edit(lambda s: s.__setitem__("batch_size", 0)), "batch_size"),
    "check_finite a string": (_trainer_edit(lambda s: s.__setitem__("check_finite", "yes")), "check_finite"),
    "step negative": (_trainer_edit(lambda s: s.__setitem__("step", -1)), "step"),
    "step None": (_trainer_edit(lambda s: s.__setitem__("step", None)), "step"),
    "dropout_step a float": (_trainer_edit(lambda s: s.__setitem__("dropout_step", 1.5)), "dropout_step"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_fields_name_the_file_and_the_field(small, tmp_path, case):
    edit, field = MALFORMED[case]
    bad = _rewrite(small, tmp_path / "bad.safetensors", edit_meta=edit)
    with pytest.raises(CheckpointError) as err:
        jp.load(bad)
    assert str(bad) in str(err.value) and field in str(err.value), str(err.value)


def test_weights_of_the_wrong_dtype_are_refused(small, tmp_path):
    bad = _rewrite(small, tmp_path / "bad.safetensors",
                   edit_tensors=lambda t: t.__setitem__("model.0.bias", t["model.0.bias"].astype(np.float64)))
    with pytest.raises(CheckpointError, match=r"0.bias.*float64.*float32"):
        jp.load(bad)
    bad = _rewrite(small, tmp_path / "bad.safetensors", edit_tensors=lambda t: t.pop("model.0.bias"))
    with pytest.raises(WeightsError, match="missing weight"):  # still a WeightsError, and a CheckpointError
        jp.load(bad)
    with pytest.raises(CheckpointError, match="missing weight"):
        jp.load(bad)


def _peak_bytes_of_refused_load(path, match) -> int:
    """Peak traced allocation of a jp.load(path) that must fail with a CheckpointError."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            jp.load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_header_length_is_checked_before_the_file_is_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"\0" * (32 << 20))
    peak = _peak_bytes_of_refused_load(path, "truncated")
    assert peak < (1 << 20), peak


def test_a_small_file_describing_a_huge_network_is_refused_before_allocating(small, tmp_path):
    """The definition asks for a 4000x10000 Linear (160 MB) that the file does not hold."""
    def huge(doc):
        doc["input_shapes"] = [[10000]]
        doc["layers"][1]["config"]["out_features"] = 4000
        doc["layers"][1]["config"]["in_features"] = None
    bad = _rewrite(small, tmp_path / "huge.safetensors", edit_meta=_network_edit(huge))
    assert bad.stat().st_size < 8192
    peak = _peak_bytes_of_refused_load(bad, r"shape \(4000, 10000\)")
    assert peak < (4 << 20), peak


def test_loading_does_not_spend_time_initialising_weights_it_overwrites(small, monkeypatch):
    import juicepy.init as initializers

    def refuse(*args):
        raise AssertionError("an initialiser ran while loading")

    monkeypatch.setitem(initializers.BY_NAME, "torch", refuse)
    ck = jp.load(small)
    assert ck.network.get_weights()["0.weight"].shape == (3, 4)
    with pytest.raises(AssertionError):  # building a fresh network still initialises
        jp.Network(L.Linear(3), (4,))


def test_version_1_files_without_a_header_checksum_still_load(small, tmp_path):
    old = tmp_path / "v1.safetensors"
    tensors, meta = ckpt.read(small)
    meta["juicepy.version"] = "1"
    meta["juicepy.sha256"] = ckpt._digest(tensors)  # version 1 covered the tensors only
    old.write_bytes(save_tensors(tensors, metadata=meta))
    _assert_same(_snapshot(jp.load(old)), _snapshot(jp.load(small)))


def test_unreadable_paths_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        jp.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        jp.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("metadata, needle", [
    ([1, 2], "metadata must be a dict"), ({"a": object()}, "not JSON"), ({1: "a"}, "keys must be strings"),
])
def test_save_refuses_metadata_that_would_not_load_and_writes_nothing(tmp_path, metadata, needle):
    net, trainer = _small_trained()
    with pytest.raises(jp.errors.ArgumentError, match=needle):
        jp.save(tmp_path / "ck.safetensors", net, trainer, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_saving_onto_a_directory_is_a_clear_error_that_leaks_nothing(tmp_path):
    net, _ = _small_trained()
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        jp.save(tmp_path / "d", net)
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []


def test_corrupted_weights_files_are_checkpoint_errors(tmp_path):
    net, _ = _small_trained()
    path = tmp_path / "w.safetensors"
    jp.io.save_weights(path, net)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"{path}: cannot read weights"):
        jp.io.load_weights(path, net)
    with pytest.raises(CheckpointError, match="is a directory"):
        jp.io.load_weights(tmp_path, net)
