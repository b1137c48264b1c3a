"""The ``juicepy`` command."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None,
                        help="numpy, opencl or cuda (default: $JUICEPY_BACKEND, else numpy)")
    parser.add_argument("--opencl-device", default=None, metavar="P:D",
                        help="OpenCL platform:device indices (sets $JUICEPY_OPENCL_DEVICE)")
    parser.add_argument("--cuda-device", default=None, metavar="N",
                        help="CUDA device index (sets $JUICEPY_CUDA_DEVICE)")


def _apply_backend_flags(args) -> None:
    if args.opencl_device is not None:
        os.environ["JUICEPY_OPENCL_DEVICE"] = args.opencl_device
    if args.cuda_device is not None:
        os.environ["JUICEPY_CUDA_DEVICE"] = args.cuda_device


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import MODELS

    parser = argparse.ArgumentParser(
        prog="juicepy",
        description="juicepy: train and run neural networks on NumPy, OpenCL or CUDA backends.")
    parser.add_argument("--version", action="version", version=f"juicepy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model from the zoo on a dataset and report test accuracy",
        description="Train a model from the zoo; prints a progress bar (loss, accuracy, samples/s) "
                    "per epoch and the test accuracy at the end.")
    _add_backend_flags(train)
    train.add_argument("--model", default="mlp", choices=sorted(MODELS), help="model from the zoo (default mlp)")
    train.add_argument("--dataset", default="digits", choices=DATASETS,
                       help="digits is embedded (no download); mnist/fashion-mnist read IDX files (default digits)")
    train.add_argument("--data", default=None, metavar="DIR",
                       help="folder holding the MNIST-format IDX files (plain or .gz)")
    train.add_argument("--no-download", action="store_true",
                       help="never download a dataset; fail if its files are not local")
    train.add_argument("--epochs", type=int, default=20, help="passes over the training set (default 20)")
    train.add_argument("--batch-size", type=int, default=64, help="rows per step (default 64)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                       help="optimizer (default adam)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    train.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and dropout (default 0)")
    train.add_argument("--save", default=None, metavar="PATH",
                       help="write the trained weights to PATH (safetensors, atomic)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    train.set_defaults(run=cmd_train)
    return parser


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    from .train import SGD, Adam, AdamW

    if name == "sgd":
        return SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(lr=lr, weight_decay=weight_decay)
    return Adam(lr=lr, weight_decay=weight_decay)


def cmd_train(args) -> int:
    import juicepy as jp
    from .data import load_dataset
    from .layers import SoftmaxCrossEntropy
    from .models import build_model
    from .train import Trainer
    from .train.loop import evaluate, fit_epoch

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    train_set, test_set = load_dataset(args.dataset, data_dir=args.data, download=not args.no_download,
                                       seed=args.seed)
    network = jp.Network(build_model(args.model, train_set.input_shape, train_set.classes),
                         input_shape=train_set.input_shape, seed=args.seed)
    trainer = Trainer(network, SoftmaxCrossEntropy(),
                      make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay),
                      batch_size=args.batch_size)
    print(f"{args.model} on {args.dataset} ({len(train_set)} train / {len(test_set)} test), "
          f"backend {backend.name}, {network.num_params():,} params, {trainer.optimizer!r}")
    for epoch in range(args.epochs):
        stats = fit_epoch(trainer, backend, train_set, epoch=epoch, seed=args.seed,
                          progress=not args.no_progress, desc=f"epoch {epoch + 1}/{args.epochs}")
        if args.no_progress:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4f} "
                  f"accuracy {stats['accuracy']:.4f} {stats['samples_per_s']:,.0f} samples/s")
    test_accuracy = evaluate(network, backend, test_set)
    print(f"test accuracy: {test_accuracy:.4f}")
    if args.save:
        from .io import save_weights

        save_weights(args.save, network)
        print(f"saved weights to {args.save}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .backends import BackendUnavailable
    from .data import DatasetUnavailable
    from .errors import JuicepyError

    try:
        return args.run(args)
    except (BackendUnavailable, DatasetUnavailable, JuicepyError, ValueError) as err:
        print(f"juicepy: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
