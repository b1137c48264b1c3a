"""TrainingHistory and evaluate_loss: per-epoch rows, log formats, a loss on every test row."""

import csv
import json

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data.datasets import Dataset
from juicepy.train.history import TrainingHistory, log_format
from juicepy.train.loop import evaluate_loss

TRAIN = {"loss": 0.5, "accuracy": 0.8, "samples_per_s": 1000.0}


@pytest.mark.parametrize("name,fmt", [("a.csv", "csv"), ("a.jsonl", "jsonl"), ("a.JSON", "jsonl"),
                                      ("a.ndjson", "jsonl")])
def test_log_format_from_extension(name, fmt):
    assert log_format(name) == fmt


def test_log_rows_are_appended_per_epoch_and_restart_with_a_new_history(tmp_path):
    path = tmp_path / "m.csv"
    for _ in range(2):  # a second command rewrites the file
        history = TrainingHistory(path)
        for epoch in (1, 2):
            history.record(epoch, TRAIN, 0.25 * epoch, 0.9)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert float(rows[1]["test_loss"]) == 0.5 and float(rows[0]["train_accuracy"]) == 0.8


def test_jsonl_log(tmp_path):
    history = TrainingHistory(tmp_path / "m.jsonl")
    history.record(1, TRAIN, 0.3, 0.7)
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.3, "test_accuracy": 0.7,
         "samples_per_s": 1000.0}]


def test_nothing_wanted_writes_nothing(tmp_path):
    history = TrainingHistory()
    assert not history.wanted
    history.record(1, TRAIN, 0.3, 0.7)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_loss_is_the_mean_cross_entropy_over_every_row(backend):
    rng = np.random.default_rng(0)
    net = jp.Network(L.Sequential(L.Linear(5)), (3,), seed=1)
    data = Dataset(rng.standard_normal((37, 3)).astype(np.float32), rng.integers(0, 5, 37), "t", 5)
    loss, acc = evaluate_loss(net, L.SoftmaxCrossEntropy(), backend, data)
    logits = net.transform("numpy", data.x).astype(np.float64)  # the reference, in float64
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(37), data.y].mean()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx(np.mean(logits.argmax(axis=1) == data.y))
