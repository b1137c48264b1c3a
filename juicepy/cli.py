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
    train.add_argument("--epochs", type=int, default=None,
                       help="passes over the training set (default 20; mackey-glass 4, adding 5)")
    train.add_argument("--batch-size", type=int, default=None, help="rows per step (default 64; mackey-glass, adding 32)")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3; mackey-glass, adding 3e-3)")
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                       help="optimizer (default adam)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    train.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and dropout (default 0)")
    train.add_argument("--save", default=None, metavar="PATH",
                       help="write a checkpoint (definition, weights, optimizer state, epoch) to PATH "
                            "after every epoch (safetensors, atomic: a failed save keeps the previous one)")
    train.add_argument("--resume", default=None, metavar="PATH",
                       help="continue from a checkpoint written by --save: its network, optimizer, "
                            "dataset and seed; --epochs is the total to reach")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    train.set_defaults(run=cmd_train)

    predict = commands.add_parser(
        "predict", help="run a saved network on inputs from a .npy file",
        description="Load a checkpoint (juicepy train --save, juicepy.save) and run it on FILE.npy "
                    "(rows x input unit shape, float32). Prints the arg-max class of each row, or "
                    "writes the raw outputs with --output.")
    _add_backend_flags(predict)
    predict.add_argument("--model", required=True, metavar="PATH", help="checkpoint file to load")
    predict.add_argument("--input", required=True, metavar="FILE", help=".npy file of input rows")
    predict.add_argument("--output", default=None, metavar="FILE", help="write the outputs to this .npy file")
    predict.set_defaults(run=cmd_predict)

    prof = commands.add_parser(
        "profile", help="time every layer's forward and backward pass",
        description="Per-layer forward and backward time (median over --steps runs) of a zoo model "
                    "or a checkpoint on one backend and batch size.")
    _add_backend_flags(prof)
    prof.add_argument("--model", default="mlp", metavar="NAME|PATH",
                      help=f"zoo model ({', '.join(sorted(MODELS))}) or a checkpoint file (default mlp)")
    prof.add_argument("--dataset", default="digits", choices=DATASETS,
                      help="gives a zoo model its input shape and classes (default digits)")
    prof.add_argument("--batch-size", type=int, default=64, help="rows per step (default 64)")
    prof.add_argument("--steps", type=int, default=10, help="timed runs (default 10)")
    prof.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    prof.add_argument("--seed", type=int, default=0, help="seed for the weights and inputs (default 0)")
    prof.set_defaults(run=cmd_profile)
    return parser


# input unit shape and classes of each dataset, so profiling needs no data files
DATASET_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
                  "mackey-glass": ((10, 1), 1), "adding": ((10,), 19)}
TOKEN_DATASETS = {"adding": 20}  # token datasets and their vocabulary


# training defaults where a dataset needs others than (epochs 20, batch 64, lr 1e-3)
TRAIN_DEFAULTS = {"mackey-glass": {"epochs": 4, "batch_size": 32, "lr": 3e-3},
                  "adding": {"epochs": 5, "batch_size": 32, "lr": 3e-3}}


def _fill_train_defaults(args) -> None:
    chosen = {"epochs": 20, "batch_size": 64, "lr": 1e-3, **TRAIN_DEFAULTS.get(args.dataset, {})}
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


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
    from .layers import MSE, SoftmaxCrossEntropy
    from .models import build_model
    from .train import Trainer
    from .train.loop import evaluate, fit_epoch, mean_squared_error, previous_value_mse

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    first_epoch, model_name = 0, args.model
    if args.resume:
        checkpoint = jp.load(args.resume)
        if checkpoint.trainer is None:
            raise ValueError(f"{args.resume}: holds no trainer state; save it with juicepy train --save")
        meta = checkpoint.metadata
        network, trainer = checkpoint.network, checkpoint.trainer
        first_epoch = int(meta.get("epoch", 0))
        args.dataset, args.seed = meta.get("dataset", args.dataset), int(meta.get("seed", args.seed))
        model_name = meta.get("model", "?")
    _fill_train_defaults(args)
    train_set, test_set = load_dataset(args.dataset, data_dir=args.data, download=not args.no_download,
                                       seed=args.seed)
    if not args.resume:
        network = jp.Network(build_model(args.model, train_set.input_shape, train_set.outputs, vocab=train_set.vocab),
                             input_shape=train_set.input_shape, seed=args.seed,
                             input_dtype=train_set.x.dtype if train_set.x.dtype.kind in "iu" else None)
        loss = MSE() if train_set.task == "regression" else SoftmaxCrossEntropy()
        trainer = Trainer(network, loss,
                          make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay),
                          batch_size=args.batch_size)
    print(f"{model_name} on {args.dataset} ({len(train_set)} train / {len(test_set)} test), "
          f"backend {backend.name}, {network.num_params():,} params, {trainer.optimizer!r}")
    if args.resume:
        print(f"resuming from {args.resume} after epoch {first_epoch} (step {trainer.steps})")
    for epoch in range(first_epoch, args.epochs):
        stats = fit_epoch(trainer, backend, train_set, epoch=epoch, seed=args.seed,
                          progress=not args.no_progress, desc=f"epoch {epoch + 1}/{args.epochs}")
        if args.no_progress:
            score = "" if stats["accuracy"] is None else f" accuracy {stats['accuracy']:.4f}"
            print(f"epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4g}{score} "
                  f"{stats['samples_per_s']:,.0f} samples/s")
        if args.save:
            jp.save(args.save, network, trainer, metadata={"epoch": epoch + 1, "seed": args.seed,
                                                            "dataset": args.dataset, "model": model_name})
    if test_set.task == "regression":
        mse, baseline = mean_squared_error(network, backend, test_set), previous_value_mse(test_set)
        print(f"test MSE: {mse:.3e} (previous-value baseline {baseline:.3e}; {mse / baseline:.3f} of it)")
    else:
        print(f"test accuracy: {evaluate(network, backend, test_set):.4f}")
    if args.save:
        print(f"saved checkpoint to {args.save}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    import juicepy as jp

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    network = jp.load(args.model).network
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{args.input}: cannot read a .npy array ({err})") from err
    if x.ndim == len(network.input_shape):  # one row without the batch axis
        x = x[None]
    if network.input_dtypes[0].kind == "i":
        if x.dtype.kind not in "iu":
            raise ValueError(f"{args.input}: the network reads integer tokens, got {x.dtype} values")
    elif x.dtype != network.dtype and x.dtype.kind in "fiu":
        x = x.astype(network.dtype)
    outputs = network.transform(backend, x)
    if args.output:
        np.save(args.output, outputs)
        print(f"wrote outputs {outputs.shape} to {args.output}")
    elif len(network.output_shape) == 1:
        for row, cls in enumerate(np.argmax(outputs, axis=1)):
            print(f"{row}\t{cls}")
    else:
        print(f"outputs of shape {outputs.shape}; pass --output FILE.npy to keep them")
    return 0


def cmd_profile(args) -> int:
    from pathlib import Path

    import numpy as np

    import juicepy as jp
    from .models import MODELS, build_model
    from .profile import format_table, profile

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    if args.model in MODELS:
        shape, classes = DATASET_SHAPES[args.dataset]
        vocab = TOKEN_DATASETS.get(args.dataset, 0)
        network = jp.Network(build_model(args.model, shape, classes, vocab=vocab), input_shape=shape, seed=args.seed,
                             input_dtype=np.int64 if vocab else None)
    elif Path(args.model).is_file():
        network = jp.load(args.model).network
    else:
        raise ValueError(f"--model {args.model!r} is neither a zoo model ({', '.join(sorted(MODELS))}) "
                         f"nor a checkpoint file")
    rows = profile(network, backend, args.batch_size, steps=args.steps, warmup=args.warmup, seed=args.seed)
    print(format_table(rows, title=f"{args.model} on {backend.name}, batch {args.batch_size}, "
                                   f"median of {args.steps} steps"))
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
