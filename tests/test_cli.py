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
    import juicepy as jp

    weights = jp.load(save).network.get_weights()
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


def test_train_lstm_on_mackey_glass_reports_mse_beside_the_baseline(capsys):
    assert main(["train", "--model", "lstm", "--dataset", "mackey-glass", "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lstm on mackey-glass (35192 train / 8798 test)" in out and "lr=0.003" in out
    mse = float(out.split("test MSE:")[1].split()[0])
    baseline = float(out.split("previous-value baseline")[1].split(";")[0])
    assert baseline == pytest.approx(1.337e-3, rel=1e-3)
    assert mse < 0.5 * baseline  # one epoch; the default four reach about 0.02 of it


def test_train_embedding_gru_on_the_adding_problem_then_predict(tmp_path, capsys):
    import numpy as np

    save = tmp_path / "adding.safetensors"
    assert main(["train", "--model", "embedding-gru", "--dataset", "adding", "--epochs", "1", "--no-progress",
                 "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert "embedding-gru on adding (8192 train / 2048 test)" in out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.3  # chance is 1/19; five epochs reach 1.0
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.array([[3, 14, 0, 0, 0, 0, 0, 12, 0, 0]]))  # marked digits 4 and 2
    assert main(["predict", "--model", str(save), "--input", str(tokens)]) == 0
    row, cls = capsys.readouterr().out.split()
    assert row == "0" and 0 <= int(cls) <= 18
    np.save(tokens, np.zeros((1, 10), np.float32))
    assert main(["predict", "--model", str(save), "--input", str(tokens)]) == 1
    assert "reads integer tokens" in capsys.readouterr().err


def test_embedding_gru_needs_a_token_dataset(capsys):
    assert main(["train", "--model", "embedding-gru", "--dataset", "digits", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "token sequences" in err and "such as adding" in err


def test_info_lists_every_backend_and_what_the_numpy_backend_runs_on(capsys, monkeypatch):
    """`juicepy info`: each registered backend, started (its device) or not (why), and the NumPy
    backend's C kernels, lanes, BLAS and OpenBLAS variables; --json gives the same as one object."""
    import json

    import juicepy as jp
    from juicepy.backends import registered_backends

    monkeypatch.setenv("OPENBLAS_VERBOSE", "0")
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    started = set(jp.available_backends())
    for name in registered_backends():
        line = next(line for line in out if line.startswith(f"{name}: "))
        assert (f"juicepy backend '{name}'" in line) == (name in started)
        assert ("unavailable (" in line) == (name not in started)
    assert "numpy backend:" in out
    assert "OPENBLAS_VERBOSE=0" in next(line for line in out if line.startswith("  OpenBLAS variables: "))
    assert any(line.startswith("  BLAS: ") for line in out) and any(line.startswith("  C kernels: ") for line in out)
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {name for name, state in report["backends"].items() if state["available"]} == started
    assert report["numpy"]["openblas_env"]["OPENBLAS_VERBOSE"] == "0"
