"""Pictures: training curves from `juicepy train --plot/--log`, and the clear error naming the
plot extra when matplotlib is missing."""

import csv
import json

import pytest

from juicepy.cli import main
from juicepy.errors import MissingExtraError
from juicepy.plot import plot_training_curves, require_pyplot



def test_training_curves_png(tmp_path, assert_png):
    history = [{"epoch": e, "train_loss": 2 / e, "test_loss": 2.2 / e, "train_accuracy": 1 - 0.5 / e,
                "test_accuracy": 1 - 0.6 / e} for e in range(1, 6)]
    plot_training_curves(history, tmp_path / "c.png", title="t")
    width, height = assert_png(tmp_path / "c.png")
    assert width > height > 200


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_train_writes_the_log_and_the_plot(tmp_path, capsys, suffix, assert_png):
    log, png = tmp_path / f"m{suffix}", tmp_path / "curves.png"
    assert main(["train", "--epochs", "3", "--batch-size", "64", "--lr", "3e-3", "--no-progress",
                 "--log", str(log), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    if suffix == ".csv":
        with open(log, newline="") as f:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    else:
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "samples_per_s"}
    for r in rows:
        assert 0 < r["train_loss"] < 5 and 0 < r["test_loss"] < 5
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 and r["samples_per_s"] > 0
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]  # it learns
    # the last epoch's test accuracy is the one the command prints
    assert f"test accuracy: {rows[-1]['test_accuracy']:.4f}" in out
    assert_png(png)


def test_unknown_log_extension_is_refused_before_training(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--log", str(tmp_path / "m.txt")]) == 1
    captured = capsys.readouterr()
    assert "--log" in captured.err and "use .csv" in captured.err and ".jsonl" in captured.err
    assert "epoch" not in captured.out


def test_missing_matplotlib_names_the_extra(no_matplotlib, tmp_path, capsys):
    with pytest.raises(MissingExtraError, match=r"pip install 'juicepy\[plot\]'"):
        require_pyplot("--plot")
    assert main(["train", "--epochs", "1", "--plot", str(tmp_path / "c.png")]) == 1
    captured = capsys.readouterr()
    assert "pip install 'juicepy[plot]'" in captured.err and "--plot" in captured.err
    assert "epoch" not in captured.out, "training ran although the plot could never be drawn"
    assert not (tmp_path / "c.png").exists()
