"""Every CLI error is one `juicepy: error: ...` line and exit status 1 (argument errors: argparse's
usage and status 2), never a traceback; predict reports what it wrote and guards its input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

import juicepy as jp
from juicepy import layers as L
from juicepy.cli import main
from juicepy.io import checkpoint as ckpt

TRAIN = ["train", "--epochs", "1", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch mlp checkpoint from `juicepy train --save`."""
    path = tmp_path_factory.mktemp("ck") / "mlp.safetensors"
    assert main(TRAIN + ["--save", str(path)]) == 0
    return path


@pytest.fixture
def inputs(tmp_path):
    from juicepy.data import load_digits

    path = tmp_path / "x.npy"
    np.save(path, load_digits()[1].x[:6])
    return path


def _with_metadata(src, dst, drop=(), **changes):
    """A copy of checkpoint src whose caller metadata has ``changes`` and lacks ``drop``."""
    tensors, meta = ckpt.read(src)
    extras = json.loads(meta["juicepy.metadata"])
    extras.update(changes)
    for key in drop:
        extras.pop(key)
    meta["juicepy.metadata"] = json.dumps(extras)
    meta["juicepy.sha256"] = ckpt._digest(tensors, meta)
    dst.write_bytes(save_tensors(tensors, metadata=meta))
    return dst


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("juicepy: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_directories_and_unreadable_paths_for_model_and_resume(tmp_path, inputs, capsys, monkeypatch):
    assert main(["predict", "--model", str(tmp_path), "--input", str(inputs)]) == 1
    _one_error_line(capsys, str(tmp_path), "is a directory")
    assert main(TRAIN + ["--resume", str(tmp_path)]) == 1
    _one_error_line(capsys, str(tmp_path), "is a directory")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert main(["predict", "--model", str(garbage), "--input", str(inputs)]) == 1
    _one_error_line(capsys, str(garbage), "corrupted header")
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("locked.safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(b"")
    monkeypatch.setattr("builtins.open", refuse)
    assert main(TRAIN + ["--resume", str(locked)]) == 1
    _one_error_line(capsys, str(locked), "Permission denied")


def test_output_into_a_missing_folder_is_one_line(trained, inputs, tmp_path, capsys):
    target = tmp_path / "missing" / "y.npy"
    assert main(["predict", "--model", str(trained), "--input", str(inputs), "--output", str(target)]) == 1
    _one_error_line(capsys, "--output", str(tmp_path / "missing"), "does not exist")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("flag", ["--save", "--log", "--plot"])
def test_train_outputs_that_cannot_be_written_fail_before_training(tmp_path, capsys, flag):
    assert main(TRAIN + [flag, str(tmp_path)]) == 1
    _one_error_line(capsys, flag, str(tmp_path), "is a directory")
    assert main(TRAIN + [flag, str(tmp_path / "missing" / "out.x")]) == 1
    _one_error_line(capsys, flag, str(tmp_path / "missing"), "does not exist")
    assert "epoch 1/1" not in capsys.readouterr().out


@pytest.mark.parametrize("name, written", [("y", "y.npy"), ("y.npy", "y.npy"), ("y.out", "y.out.npy")])
def test_output_reports_the_file_it_wrote(trained, inputs, tmp_path, capsys, name, written):
    assert main(["predict", "--model", str(trained), "--input", str(inputs), "--output", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert f"to {tmp_path / written}\n" in out, out
    assert np.load(tmp_path / written).shape == (6, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"x.npy", written})


@pytest.mark.parametrize("argv, needle", [
    (["train", "--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["train", "--epochs", "-3"], "--epochs: must be an integer >= 1, got -3"),
    (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["train", "--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["train", "--lr", "-1"], "--lr: must be a finite number > 0, got -1.0"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay: must be a finite number >= 0"),
    (["profile", "--steps", "0"], "--steps: must be an integer >= 1, got 0"),
    (["profile", "--warmup", "-1"], "--warmup: must be an integer >= 0, got -1"),
    # NumPy's "expected non-negative integer" came out of the run, naming no flag
    (["train", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    (["profile", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
])
def test_out_of_range_numbers_are_argument_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert needle in capsys.readouterr().err


def test_predict_warns_on_non_finite_rows_and_can_refuse_them(trained, tmp_path, capsys):
    from juicepy.data import load_digits

    x = load_digits()[1].x[:5].copy()
    x[1, 0, 2, 3] = np.nan
    x[3, 0, 0, 0] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, x)
    assert main(["predict", "--model", str(trained), "--input", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"juicepy: warning: {path}: rows 1, 3 hold NaN or Inf; their outputs are "
                                    f"not meaningful (--check-finite refuses such input)")
    assert len(captured.out.strip().splitlines()) == 5
    assert main(["predict", "--model", str(trained), "--input", str(path), "--check-finite"]) == 1
    _one_error_line(capsys, "NaN or Inf", "finite-input guard")


def test_predict_input_that_is_not_one_npy_array_is_one_line(trained, tmp_path, capsys):
    """An empty file and an .npz archive (np.load opens one instead of reading an array) raised
    EOFError and AttributeError out of the command."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    archive = tmp_path / "x.npz"
    np.savez(archive, x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2))
    assert main(["predict", "--model", str(trained), "--input", str(empty)]) == 1
    _one_error_line(capsys, f"{empty}: cannot read a .npy array")
    assert main(["predict", "--model", str(trained), "--input", str(archive)]) == 1
    _one_error_line(capsys, f"{archive}: is an .npz archive (arrays x, y)", "np.save")


def test_predict_names_rows_past_float32s_range_instead_of_numpys_cast_warning(trained, tmp_path, capsys):
    """float64 rows beyond float32's range become Inf in the float32 network: named as such (not
    as NaN or Inf, which the file does not hold), and refused by --check-finite."""
    x = np.zeros((4, 1, 8, 8))
    x[1, 0, 0, 0], x[2, 0, 3, 3], x[3, 0, 7, 7] = 1e300, np.nan, -1e39
    path = tmp_path / "wide.npy"
    np.save(path, x)
    assert main(["predict", "--model", str(trained), "--input", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"juicepy: warning: {path}: rows 1, 3 hold values past float32's range (Inf in the network); their "
        f"outputs are not meaningful (--check-finite refuses such input)",
        f"juicepy: warning: {path}: row 2 holds NaN or Inf; their outputs are not meaningful (--check-finite "
        f"refuses such input)"]
    assert len(captured.out.strip().splitlines()) == 4
    assert main(["predict", "--model", str(trained), "--input", str(path), "--check-finite"]) == 1
    _one_error_line(capsys, "rows 1, 3 hold values past float32's range", "--check-finite refuses")


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["profile", "--steps", "1"]])
@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_a_float_model_on_a_token_dataset_is_refused_by_name(command, model, capsys):
    """It failed in its first layer ("0: Linear takes float values ..."), naming neither."""
    assert main(command + ["--model", model, "--dataset", "adding"]) == 1
    _one_error_line(capsys, f"--model {model} reads float inputs", "--dataset adding holds integer tokens",
                    "embedding-gru")


@pytest.mark.parametrize("field, value, needle", [
    ("epoch", "x", "epoch must be an integer >= 0, got str 'x'"),
    ("epoch", -2, "epoch must be an integer >= 0, got -2"),
    ("seed", 1.5, "seed must be an integer >= 0, got float 1.5"),
    ("seed", -4, "seed must be an integer >= 0, got -4"),
    ("dataset", "cifar", "dataset must be one of digits, mnist, fashion-mnist, mackey-glass, adding, got str 'cifar'"),
    ("dataset", 7, "dataset must be one of digits, mnist, fashion-mnist, mackey-glass, adding, got int 7"),
    ("model", ["mlp"], "model must be a model name, got list ['mlp']"),
])
def test_resume_with_malformed_metadata_names_file_and_field(trained, tmp_path, capsys, field, value, needle):
    bad = _with_metadata(trained, tmp_path / "bad.safetensors", **{field: value})
    assert main(["train", "--epochs", "3", "--resume", str(bad), "--no-progress"]) == 1
    _one_error_line(capsys, str(bad), "metadata", needle)


def test_resume_of_another_architecture_fails_before_training(trained, tmp_path, capsys):
    assert main(["train", "--epochs", "3", "--resume", str(trained), "--model", "lenet", "--no-progress"]) == 1
    _one_error_line(capsys, str(trained), "'mlp'", "--model lenet")
    assert "epoch" not in capsys.readouterr().out
    other = tmp_path / "other.safetensors"  # a network for another input shape, saved through the API
    net = jp.Network(L.Sequential(L.Flatten(), L.Linear(10)), (1, 28, 28))
    trainer = jp.train.Trainer(net, L.SoftmaxCrossEntropy(), jp.train.Adam(), batch_size=8)
    jp.save(other, net, trainer, metadata={"epoch": 1})
    assert main(["train", "--epochs", "3", "--resume", str(other), "--no-progress"]) == 1
    _one_error_line(capsys, str(other), "input unit shape (1, 28, 28)", "digits", "(1, 8, 8)")
    assert main(["train", "--epochs", "3", "--resume", str(trained), "--dataset", "mnist", "--no-progress"]) == 1
    _one_error_line(capsys, str(trained), "'digits'", "--dataset mnist")
    unnamed = _with_metadata(trained, tmp_path / "unnamed.safetensors", drop=["model"])  # as the API saves
    assert main(["train", "--epochs", "3", "--resume", str(unnamed), "--model", "lenet", "--no-progress"]) == 1
    _one_error_line(capsys, str(unnamed), "not those of the zoo's 'lenet'")


def test_errors_from_a_real_process_are_one_line_and_status_1(trained, inputs, tmp_path):
    cases = [
        (["predict", "--model", str(tmp_path), "--input", str(inputs)], "is a directory"),
        (["predict", "--model", str(trained), "--input", str(inputs), "--output", str(tmp_path / "no" / "y")],
         "does not exist"),
        (["train", "--epochs", "2", "--resume", str(_with_metadata(trained, tmp_path / "m.st", epoch="x"))],
         "epoch must be an integer"),
    ]
    for argv, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "juicepy", *argv], capture_output=True, text=True)
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("juicepy: error: ") and needle in lines[0], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "juicepy", "train", "--epochs", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--epochs: must be an integer >= 1, got 0" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "juicepy", "predict", "--model", str(trained), "--input",
                           str(inputs), "--output", str(tmp_path / "z")], capture_output=True, text=True)
    assert proc.returncode == 0 and f"to {tmp_path / 'z.npy'}" in proc.stdout
    x = np.load(inputs)
    x[2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    proc = subprocess.run([sys.executable, "-m", "juicepy", "predict", "--model", str(trained), "--input",
                           str(tmp_path / "nan.npy")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines() == [
        f"juicepy: warning: {tmp_path / 'nan.npy'}: row 2 holds NaN or Inf; their outputs are not meaningful "
        f"(--check-finite refuses such input)"], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "juicepy", "predict", "--model", str(trained), "--input",
                           str(tmp_path / "nan.npy"), "--check-finite"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("juicepy: error: input: contains NaN or Inf")


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    import juicepy.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_profile", interrupted)
    assert main(["profile", "--steps", "1"]) == 130
    assert capsys.readouterr().err == "juicepy: interrupted\n"
