"""The CLI's checkpoint, predict and profile commands (juicepy/cli.py)."""

import numpy as np
import pytest

import juicepy as jp
from juicepy.cli import build_parser, main
from juicepy.models import build_model

TRAIN = ["train", "--batch-size", "64", "--lr", "3e-3", "--seed", "2", "--no-progress"]


def test_resume_continues_exactly_like_uninterrupted_training(tmp_path, capsys):
    straight, half, resumed = (tmp_path / n for n in ("straight.st", "half.st", "resumed.st"))
    assert main(TRAIN + ["--epochs", "2", "--save", str(straight)]) == 0
    assert main(TRAIN + ["--epochs", "1", "--save", str(half)]) == 0
    assert main(["train", "--epochs", "2", "--resume", str(half), "--save", str(resumed), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "after epoch 1" in out
    a, b = jp.load(straight), jp.load(resumed)
    assert a.metadata == b.metadata == {"epoch": 2, "seed": 2, "dataset": "digits", "model": "mlp"}
    assert a.step == b.step
    wa, wb = a.network.get_weights(), b.network.get_weights()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    sa, sb = a.trainer.state_dict(), b.trainer.state_dict()
    for path in sa["optimizer"]:
        for name in sa["optimizer"][path]:
            np.testing.assert_array_equal(sa["optimizer"][path][name], sb["optimizer"][path][name])


def test_predict_prints_classes_and_writes_outputs(tmp_path, capsys):
    ck = tmp_path / "m.st"
    assert main(TRAIN + ["--epochs", "1", "--save", str(ck)]) == 0
    from juicepy.data import load_digits

    _, test = load_digits(seed=2)
    np.save(tmp_path / "x.npy", test.x[:5])
    capsys.readouterr()
    assert main(["predict", "--model", str(ck), "--input", str(tmp_path / "x.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = np.argmax(jp.load(ck).network.transform("numpy", test.x[:5]), axis=1)
    assert lines == [f"{i}\t{c}" for i, c in enumerate(expected)]
    assert main(["predict", "--model", str(ck), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), jp.load(ck).network.transform("numpy", test.x[:5]))


def test_predict_errors(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "none.st"), "--input", "x.npy"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    ck = tmp_path / "m.st"
    jp.save(ck, jp.Network(jp.layers.Linear(3), (4,)))
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    assert main(["predict", "--model", str(ck), "--input", str(tmp_path / "bad.npy")]) == 1
    assert "expected shape (batch, 4), got (2, 5)" in capsys.readouterr().err


def test_profile_prints_a_row_per_layer(tmp_path, capsys):
    assert main(["profile", "--model", "mlp", "--backend", "numpy", "--batch-size", "16", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlp on numpy, batch 16")
    net = jp.Network(build_model("mlp", (1, 8, 8), 10), (1, 8, 8))
    for node in net.nodes:
        assert f"\n{node.path} " in out
    ck = tmp_path / "m.st"
    jp.save(ck, net)
    assert main(["profile", "--model", str(ck), "--steps", "1"]) == 0
    assert main(["profile", "--model", "nonexistent"]) == 1
    assert "neither a zoo model" in capsys.readouterr().err


def test_new_commands_explain_every_flag():
    parser = build_parser()
    for name in ("predict", "profile"):
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            assert action.dest == "help" or action.help, f"{name} --{action.dest} has no help text"


@pytest.mark.parametrize("model", ["lenet", "resnet"])
def test_profile_zoo_cnns(model, capsys):
    assert main(["profile", "--model", model, "--backend", "numpy", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d" in out and out.strip().splitlines()[-1].startswith("total")
