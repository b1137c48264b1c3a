import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.models import build_model
from juicepy.models.resnet import basic_block, resnet
from juicepy.testing import check_layer


def test_shapes_and_paths():
    net = jp.Network(build_model("resnet", (1, 28, 28), 10), (1, 28, 28))
    assert net.output_shape == (10,)
    assert net.node("stage2.0.0.block.0").descriptor.output_shapes == [(32, 14, 14)]
    assert net.node("stage3.0.0.block.0").descriptor.output_shapes == [(64, 7, 7)]
    assert "stage2.0.0.shortcut.0.weight" in net.params and "stage1.0.0.shortcut.0.weight" not in net.params
    assert "stem.1.running_mean" in net.params  # buffers have paths too


def test_basic_block_gradients_and_parity():
    # float64 finite differences through conv, batch norm (training statistics) and the skip
    check_layer(basic_block(3, stride=2, project=True), (2, 5, 5), batch_size=3, expected_output_shape=(3, 3, 3))
    check_layer(basic_block(2), (2, 4, 4), batch_size=3, expected_output_shape=(2, 4, 4))


def test_learns_digits():
    from juicepy.data import load_digits
    from juicepy.train import Adam, Trainer

    train, test = load_digits(seed=0)
    net = jp.Network(resnet(train.input_shape, 10, widths=(8, 16)), train.input_shape, seed=0)
    trainer = Trainer(net, L.SoftmaxCrossEntropy(), Adam(lr=3e-3), batch_size=64)
    trainer.run_training("numpy", train, n_steps=150)
    accuracy = float(np.mean(np.argmax(net.transform("numpy", test.x), 1) == test.y))
    assert accuracy > 0.85


def test_round_trips_through_a_checkpoint(tmp_path):
    net = jp.Network(resnet((1, 8, 8), 10, widths=(4, 8)), (1, 8, 8), seed=3)
    jp.save(tmp_path / "r.st", net)
    loaded = jp.load(tmp_path / "r.st").network
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.transform("numpy", x), net.transform("numpy", x))


def test_matches_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def block(cin, cout, stride):
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                           nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
                self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                                 if stride != 1 or cin != cout else nn.Identity())

            def forward(self, x):
                return torch.relu(self.block(x) + self.shortcut(x))

        return nn.Sequential(Block())  # our block: Sequential(Residual, ReLU) -> paths '<i>.0.block...'

    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()))
    model.add_module("stage1", nn.Sequential(block(4, 4, 1)))
    model.add_module("stage2", nn.Sequential(block(4, 8, 2)))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(8, 10))
    net = jp.Network(resnet((1, 8, 8), 10, widths=(4, 8)), (1, 8, 8), seed=1)
    net.set_weights(model.state_dict(), strict=True)  # same structure, same paths
    model.eval()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.transform("numpy", x), expected, rtol=1e-4, atol=1e-5)


def test_resumed_training_with_batch_norm_is_bitwise_identical(tmp_path):
    from juicepy.data import load_digits
    from juicepy.train import SGD, Trainer

    train, _ = load_digits(seed=0)
    batches = list(train.batches(32, seed=0))[:4]

    def fresh():
        net = jp.Network(resnet((1, 8, 8), 10, widths=(4, 8)), (1, 8, 8), seed=2)
        return Trainer(net, L.SoftmaxCrossEntropy(), SGD(lr=0.05, momentum=0.9), batch_size=32)

    straight = fresh()
    expected = straight.run_training("numpy", batches, 4)
    first = fresh()
    got = first.run_training("numpy", batches[:2], 2)
    jp.save(tmp_path / "r.st", first.network, first)
    resumed = jp.load(tmp_path / "r.st").trainer
    got += resumed.run_training("numpy", batches[2:], 2)
    assert got == expected
    for k, v in straight.network.get_weights().items():  # running statistics included
        np.testing.assert_array_equal(resumed.network.get_weights()[k], v)


def test_trains_from_the_cli(tmp_path, capsys):
    from juicepy.cli import main

    assert main(["train", "--model", "resnet", "--epochs", "2", "--lr", "3e-3", "--no-progress",
                 "--save", str(tmp_path / "r.st")]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.9
    assert jp.load(tmp_path / "r.st").metadata["model"] == "resnet"
