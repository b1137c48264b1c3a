import subprocess
import sys

import pytest

from juicepy.cli import build_parser, main


def test_help_explains_every_flag():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help text"
    text = train.format_help()
    for flag in ("--backend", "--model", "--dataset", "--epochs", "--batch-size", "--lr", "--optimizer",
                 "--seed", "--save", "--data"):
        assert flag in text


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "juicepy", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout


def test_train_digits_end_to_end(tmp_path, capsys):
    save = tmp_path / "w.safetensors"
    assert main(["train", "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--seed", "1",
                 "--no-progress", "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "samples/s" in out
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.85
    from safetensors.numpy import load_file

    weights = load_file(str(save))
    assert weights["1.weight"].shape == (256, 64)


def test_progress_bar_shows_loss_accuracy_rate(capsys):
    assert main(["train", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.05"]) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "acc=" in err and "sample/s" in err


def test_unknown_backend_is_a_clear_error(capsys):
    assert main(["train", "--backend", "tpu", "--epochs", "1"]) == 1
    assert "unknown backend 'tpu'; registered backends: " in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JUICEPY_CACHE", str(tmp_path))
    assert main(["train", "--dataset", "mnist", "--data", str(tmp_path), "--no-download"]) == 1
    assert "downloading is off" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--optimizer", "rmsprop"], ["train", "--epochs", "x"]])
def test_argument_errors(argv):
    with pytest.raises(SystemExit):
        main(argv)
