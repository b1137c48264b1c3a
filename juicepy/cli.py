"""The ``juicepy`` command."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import __version__


def _argument(convert, check):
    """An argparse type: ``convert`` the text, then ``check`` it (a juicepy.arguments helper);
    a refused value becomes argparse's usage error ("argument --epochs: must be ...")."""
    def parse(text: str):
        from .errors import ArgumentError

        try:
            value = convert(text)
        except ValueError:
            value = text  # the check names it as the string it is
        try:
            return check(value)
        except ArgumentError as err:
            raise argparse.ArgumentTypeError(str(err).strip()) from None
    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


def _count(minimum: int, maximum: int | None = None):
    from .arguments import integer

    return _argument(int, lambda value: integer("", "", value, minimum, maximum))


def _real(low: float, low_open: bool = False):
    from .arguments import number

    return _argument(float, lambda value: number("", "", value, low, low_open=low_open))


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
    from .serve.server import (DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES,
                               DEFAULT_MAX_CONNECTIONS)

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
    train.add_argument("--model", default=None, choices=sorted(MODELS),
                       help="model from the zoo (default mlp; with --resume: the checkpoint's, which it must match)")
    train.add_argument("--dataset", default=None, choices=DATASETS,
                       help="digits is embedded (no download); mnist/fashion-mnist read IDX files (default digits; "
                            "with --resume: the checkpoint's, which it must match)")
    train.add_argument("--data", default=None, metavar="DIR",
                       help="folder holding the MNIST-format IDX files (plain or .gz)")
    train.add_argument("--no-download", action="store_true",
                       help="never download a dataset; fail if its files are not local")
    train.add_argument("--epochs", type=_count(1), default=None,
                       help="passes over the training set (default 20; mackey-glass 4, adding 5)")
    train.add_argument("--batch-size", type=_count(1), default=None,
                       help="rows per step (default 64; mackey-glass, adding 32)")
    train.add_argument("--lr", type=_real(0.0, low_open=True), default=None,
                       help="learning rate (default 1e-3; mackey-glass, adding 3e-3)")
    train.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                       help="optimizer (default adam)")
    train.add_argument("--momentum", type=_real(0.0), default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=_real(0.0), default=0.0, help="weight decay (default 0)")
    train.add_argument("--seed", type=_count(0), default=0, help="seed for init, shuffling and dropout (default 0)")
    train.add_argument("--save", default=None, metavar="PATH",
                       help="write a checkpoint (definition, weights, optimizer state, epoch) to PATH "
                            "after every epoch (safetensors, atomic: a failed save keeps the previous one)")
    train.add_argument("--resume", default=None, metavar="PATH",
                       help="continue from a checkpoint written by --save: its network, optimizer, "
                            "dataset and seed; --epochs is the total to reach")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    train.add_argument("--log", default=None, metavar="FILE",
                       help="write per-epoch metrics (train/test loss and accuracy, samples/s) to FILE "
                            "after every epoch: CSV for .csv, JSON lines for .jsonl")
    train.add_argument("--plot", default=None, metavar="PNG",
                       help="draw train/test loss and accuracy per epoch to this PNG after every epoch "
                            "(needs matplotlib: pip install 'juicepy[plot]')")
    train.add_argument("--workers", type=_count(1), default=1, metavar="N",
                       help="data-parallel processes on this machine: launches `mpiexec -n N` itself "
                            "(needs juicepy[distributed]); --batch-size is per worker. Or start the "
                            "job yourself: mpiexec -n N juicepy train ... (default 1)")
    train.set_defaults(run=cmd_train)

    predict = commands.add_parser(
        "predict", help="run a saved network on inputs from a .npy file",
        description="Load a checkpoint (juicepy train --save, juicepy.save) and run it on FILE.npy "
                    "(rows x input unit shape, float32). Prints the arg-max class of each row, or "
                    "writes the raw outputs with --output.")
    _add_backend_flags(predict)
    predict.add_argument("--model", required=True, metavar="PATH", help="checkpoint file to load")
    predict.add_argument("--input", required=True, metavar="FILE", help=".npy file of input rows")
    predict.add_argument("--output", default=None, metavar="FILE",
                         help="write the outputs to this .npy file (.npy is appended when missing)")
    predict.add_argument("--check-finite", action="store_true",
                         help="refuse input rows holding NaN or Inf (default: run them and warn)")
    predict.set_defaults(run=cmd_predict)

    serve = commands.add_parser(
        "serve", help="serve a checkpoint over HTTP (predict, health, hot swaps)",
        description="Serve a checkpoint over HTTP. POST /predict takes rows as JSON (nested lists or "
                    "{\"inputs\": ...}) or an .npy body and answers in the same form; GET /health "
                    "describes the served network; POST /swap {\"path\": ...} swaps in another "
                    "checkpoint with the same input/output unit shapes (409 otherwise). Concurrent "
                    "small requests are micro-batched. Stops cleanly on SIGINT/SIGTERM.")
    _add_backend_flags(serve)
    serve.add_argument("model", metavar="MODEL", help="checkpoint file (juicepy train --save, juicepy.save)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_count(0, 65535), default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--watch", action="store_true",
                       help="swap in MODEL whenever its file is replaced (juicepy train --save rewrites "
                            "it atomically every epoch)")
    serve.add_argument("--watch-interval", type=_real(0.0, low_open=True), default=1.0, metavar="S",
                       help="seconds between looks at MODEL with --watch (default 1)")
    serve.add_argument("--max-batch", type=_count(1), default=None, metavar="N",
                       help=f"most rows micro-batching joins into one transform; 1 turns it off "
                            f"(default {DEFAULT_MAX_BATCH}, but off on the numpy backend, where it "
                            f"measured no faster)")
    serve.add_argument("--batch-wait-ms", type=_real(0.0), default=DEFAULT_BATCH_WAIT_MS, metavar="MS",
                       help=f"longest a request waits for requests being received to join its batch "
                            f"(default {DEFAULT_BATCH_WAIT_MS:g}: batches form from the requests that "
                            f"queue while the previous one runs)")
    serve.add_argument("--max-body-bytes", type=_count(1), default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                       help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})")
    serve.add_argument("--max-connections", type=_count(1), default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                       help=f"open connections beyond this get 503 (default {DEFAULT_MAX_CONNECTIONS})")
    serve.add_argument("--no-finite-check", action="store_true",
                       help="accept inputs holding NaN or Inf (refused with 400 by default)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(run=cmd_serve)

    prof = commands.add_parser(
        "profile", help="time every layer's forward and backward pass",
        description="Per-layer forward and backward time (median over --steps runs) of a zoo model "
                    "or a checkpoint on one backend and batch size.")
    _add_backend_flags(prof)
    prof.add_argument("--model", default="mlp", metavar="NAME|PATH",
                      help=f"zoo model ({', '.join(sorted(MODELS))}) or a checkpoint file (default mlp)")
    prof.add_argument("--dataset", default="digits", choices=DATASETS,
                      help="gives a zoo model its input shape and classes (default digits)")
    prof.add_argument("--batch-size", type=_count(1), default=64, help="rows per step (default 64)")
    prof.add_argument("--steps", type=_count(1), default=10, help="timed runs (default 10)")
    prof.add_argument("--warmup", type=_count(0), default=2, help="untimed runs first (default 2)")
    prof.add_argument("--seed", type=_count(0), default=0, help="seed for the weights and inputs (default 0)")
    prof.set_defaults(run=cmd_profile)

    info = commands.add_parser(
        "info", help="show the backends that start here and what the NumPy backend runs on",
        description="Each backend: whether it starts here (its device, or why not); for the NumPy "
                    "backend its C kernels' build and CPU kind, thread lanes, the BLAS NumPy loaded "
                    "(kernel family, threads) and the OPENBLAS_* variables, with notes on what slows it.")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    info.set_defaults(run=cmd_info)
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


def mpiexec_path() -> str:
    """mpiexec of this environment (MPICH's wheel puts it beside python), else the one on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if found is None:
        from .errors import MissingExtraError

        raise MissingExtraError("--workers needs mpiexec: pip install 'juicepy[distributed]' (mpi4py and MPICH)")
    return found


def launch_workers(args, argv: list) -> int:
    """Run this command again under ``mpiexec -n N`` (with mpi4py's abort-on-exception runner)."""
    started = next((os.environ[k] for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE") if k in os.environ), None)
    if started is not None:
        raise ValueError(f"--workers: this process is already one of {started} MPI ranks; "
                         f"drop --workers when starting the job with mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        from .errors import MissingExtraError

        raise MissingExtraError("--workers needs mpi4py: pip install 'juicepy[distributed]'") from None
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            rest.append(arg)
    command = [mpiexec_path(), "-n", str(args.workers), sys.executable, "-m", "mpi4py", "-m", "juicepy"] + rest
    env = dict(os.environ)
    share = str(max(1, (os.cpu_count() or 1) // args.workers))
    # the ranks share this machine's cores: neither BLAS nor the NumPy backend's own lanes
    # (juicepy/backends/numpy/threads.py) may oversubscribe them
    for variable in ("OMP_NUM_THREADS", "JUICEPY_NUM_THREADS"):
        env.setdefault(variable, share)
    return subprocess.call(command, env=env)


def _job_communicator(args):
    """The data-parallel job this process belongs to (size 1 outside mpiexec); on CUDA each
    rank takes the GPU of its local rank unless --cuda-device says otherwise."""
    from .distributed import communicator

    comm = communicator(args.backend or os.environ.get("JUICEPY_BACKEND"))
    if comm.size > 1 and args.cuda_device is None and "JUICEPY_CUDA_DEVICE" not in os.environ:
        os.environ["JUICEPY_CUDA_DEVICE"] = str(comm.local_rank)
    return comm


#: seconds a failing rank waits between printing its error and aborting the job: mpiexec (MPICH's
#: hydra) forwards a rank's stderr from its own event loop and can end the job on the abort before
#: it forwarded the last lines (a CI run once ended with neither this error nor MPI_Abort's own)
ABORT_GRACE = 1.0


def cmd_train(args) -> int:
    comm = _job_communicator(args)
    if comm.size == 1:
        return train_job(args, comm)
    try:
        return train_job(args, comm)
    except BaseException as err:  # one rank failing must end the job, not leave the others waiting
        message = " ".join(str(err).split())
        print(f"juicepy: error on rank {comm.rank} of {comm.size}: {type(err).__name__}: {message}",
              file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE)
        comm.abort(1)
        raise


def train_job(args, comm) -> int:
    import juicepy as jp
    from .data import load_dataset
    from .layers import MSE, SoftmaxCrossEntropy
    from .models import build_model
    from .train import Trainer
    from .train.history import TrainingHistory
    from .train.loop import evaluate, evaluate_loss, fit_epoch, mean_squared_error, previous_value_mse

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    for flag, path in (("--save", args.save), ("--log", args.log), ("--plot", args.plot)):
        _check_output_path(flag, path)  # now, not after the first epoch
    lead = comm.rank == 0  # only rank 0 prints, logs and writes checkpoints

    def say(text: str) -> None:
        if lead:
            print(text, flush=True)
    first_epoch, model_name = 0, args.model or "mlp"
    if args.resume:
        checkpoint = jp.load(args.resume)
        if checkpoint.trainer is None:
            raise ValueError(f"{args.resume}: holds no trainer state; save it with juicepy train --save")
        network, trainer = checkpoint.network, checkpoint.trainer
        first_epoch, model_name = _resume_settings(args, checkpoint.metadata)
        trainer.communicator = comm
    else:
        args.dataset = args.dataset or "digits"
    _fill_train_defaults(args)
    train_set, test_set = load_dataset(args.dataset, data_dir=args.data, download=not args.no_download,
                                       seed=args.seed)
    if args.resume:
        _check_resumed_network(args, network, model_name, train_set)
    else:
        _check_model_reads(model_name, args.dataset, train_set.vocab)
        network = jp.Network(build_model(model_name, train_set.input_shape, train_set.outputs, vocab=train_set.vocab),
                             input_shape=train_set.input_shape, seed=args.seed,
                             input_dtype=train_set.x.dtype if train_set.x.dtype.kind in "iu" else None)
        loss = MSE() if train_set.task == "regression" else SoftmaxCrossEntropy()
        trainer = Trainer(network, loss,
                          make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay),
                          batch_size=args.batch_size, communicator=comm)
    history = TrainingHistory(args.log if lead else None, args.plot if lead else None,
                              title=f"{model_name} on {args.dataset}, {backend.name}")
    say(f"{model_name} on {args.dataset} ({len(train_set)} train / {len(test_set)} test), "
        f"backend {backend.name}, {network.num_params():,} params, {trainer.optimizer!r}")
    if comm.size > 1:
        say(f"data-parallel: {comm.size} ranks ({comm.kind}), batch {trainer.batch_size} per rank, "
            f"{trainer.batch_size * comm.size} per step")
    if args.resume:
        say(f"resuming from {args.resume} after epoch {first_epoch} (step {trainer.steps})")
    for epoch in range(first_epoch, args.epochs):
        stats = fit_epoch(trainer, backend, train_set, epoch=epoch, seed=args.seed,
                          progress=not args.no_progress, desc=f"epoch {epoch + 1}/{args.epochs}")
        if args.no_progress:
            score = "" if stats["accuracy"] is None else f" accuracy {stats['accuracy']:.4f}"
            say(f"epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4g}{score} "
                f"{stats['samples_per_s']:,.0f} samples/s")
        if history.wanted:
            history.record(epoch + 1, stats, *evaluate_loss(network, trainer.loss, backend, test_set))
        if args.save and lead:
            meta = {"epoch": epoch + 1, "seed": args.seed, "dataset": args.dataset, "model": model_name}
            jp.save(args.save, network, trainer, metadata=meta | ({"ranks": comm.size} if comm.size > 1 else {}))
    if test_set.task == "regression":
        mse, baseline = mean_squared_error(network, backend, test_set), previous_value_mse(test_set)
        say(f"test MSE: {mse:.3e} (previous-value baseline {baseline:.3e}; {mse / baseline:.3f} of it)")
    else:
        say(f"test accuracy: {evaluate(network, backend, test_set, comm):.4f}")
    if args.save:
        say(f"saved checkpoint to {args.save}")
    return 0


def _check_model_reads(model: str, dataset: str, vocab: int) -> None:
    """Refuse a zoo model that reads float inputs on a token dataset by name: its first layer would
    refuse the tokens naming neither."""
    import inspect

    from .models import MODELS

    def reads_tokens(name: str) -> bool:
        return "vocab" in inspect.signature(MODELS[name]).parameters
    if vocab and not reads_tokens(model):
        readers = ", ".join(sorted(name for name in MODELS if reads_tokens(name)))
        raise ValueError(f"--model {model} reads float inputs; --dataset {dataset} holds integer tokens "
                         f"(a vocabulary of {vocab}): use a model with an Embedding ({readers})")


def _check_output_path(flag: str, path) -> None:
    """Refuse an output file that cannot be written: a directory, or in a folder that does not exist."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; name a file in it")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: folder {path.parent} does not exist")


def _resume_settings(args, meta: dict) -> tuple[int, str]:
    """(epochs done, model name) from a --resume checkpoint's metadata, checked field by field
    and against the flags given; sets args.dataset and args.seed."""
    from .data import DATASETS
    from .errors import ArgumentError
    from .arguments import describe, integer

    where = f"{args.resume}: metadata"
    epoch = integer(where, "epoch", meta.get("epoch", 0), 0)
    seed = integer(where, "seed", meta.get("seed", args.seed), 0)
    dataset = meta.get("dataset", args.dataset or "digits")
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ArgumentError(f"{where}: dataset must be one of {', '.join(DATASETS)}, got {describe(dataset)}")
    model = meta.get("model", args.model or "?")  # saved through the API: no name, the params decide
    if not isinstance(model, str):
        raise ArgumentError(f"{where}: model must be a model name, got {describe(model)}")
    if args.model is not None and args.model != model:
        raise ValueError(f"{args.resume}: holds a {model!r} network; --model {args.model} asks for another "
                         f"architecture (leave --model out to continue the checkpoint's)")
    if args.dataset is not None and args.dataset != dataset:
        raise ValueError(f"{args.resume}: was trained on {dataset!r}; --dataset {args.dataset} asks for "
                         f"another (leave --dataset out to continue on the checkpoint's)")
    args.dataset, args.seed = dataset, seed
    return epoch, model


def _check_resumed_network(args, network, model_name: str, train_set) -> None:
    """Refuse, before any step, a resumed network that cannot train on ``train_set``."""
    from .models import MODELS, build_model

    problems = []
    if network.input_shape != train_set.input_shape:
        problems.append(f"input unit shape {network.input_shape}, {args.dataset} has {train_set.input_shape}")
    if network.output_shape != (train_set.outputs,):
        problems.append(f"output unit shape {network.output_shape}, {args.dataset} has {train_set.outputs} outputs")
    if not problems and model_name in MODELS:
        zoo = build_model(model_name, train_set.input_shape, train_set.outputs, vocab=train_set.vocab)
        import juicepy as jp

        tokens = train_set.x.dtype if train_set.x.dtype.kind in "iu" else None
        expected = {k: p.shape for k, p in jp.Network(zoo, train_set.input_shape, input_dtype=tokens).params.items()}
        actual = {k: p.shape for k, p in network.params.items()}
        if expected != actual:
            problems.append(f"its params are not those of the zoo's {model_name!r}")
    if problems:
        raise ValueError(f"{args.resume}: cannot resume on {args.dataset}: " + "; ".join(problems))


def cmd_predict(args) -> int:
    import numpy as np

    import juicepy as jp

    from .io.atomic import atomic_path

    _apply_backend_flags(args)
    backend = jp.backend(args.backend)
    output = None
    if args.output:
        output = Path(args.output if args.output.endswith(".npy") else args.output + ".npy")  # as np.save names it
        _check_output_path("--output", output)
    network = jp.load(args.model).network
    x = _read_array(args.input)
    if x.ndim == len(network.input_shape):  # one row without the batch axis
        x = x[None]
    overflowed = np.empty(0, int)
    if network.input_dtypes[0].kind == "i":
        if x.dtype.kind not in "iu":
            raise ValueError(f"{args.input}: the network reads integer tokens, got {x.dtype} values")
    elif x.dtype != network.dtype and x.dtype.kind in "fiu":
        with np.errstate(over="ignore"):  # reported below by row, not as NumPy's RuntimeWarning
            cast = x.astype(network.dtype)
        if x.dtype.kind == "f" and x.ndim > 1:
            overflowed = _rows_where(np.isfinite(x) & ~np.isfinite(cast))
        x = cast
    if overflowed.size:
        message = f"{args.input}: {_rows(overflowed)} values past {network.dtype}'s range (Inf in the network)"
        if args.check_finite:
            raise ValueError(f"{message}; --check-finite refuses such input")
        print(f"juicepy: warning: {message}; their outputs are not meaningful (--check-finite refuses such "
              f"input)", file=sys.stderr)
    bad = np.empty(0, int)
    if not args.check_finite and x.dtype.kind == "f" and x.ndim > 1:
        bad = np.setdiff1d(_rows_where(~np.isfinite(x)), overflowed)
        if bad.size:
            print(f"juicepy: warning: {args.input}: {_rows(bad)} NaN or Inf; "
                  f"their outputs are not meaningful (--check-finite refuses such input)", file=sys.stderr)
    with np.errstate(all="ignore" if bad.size or overflowed.size else "warn"):  # warned once above, not per op
        outputs = network.transform(backend, x, check_finite=args.check_finite)
    if output is not None:
        with atomic_path(output) as tmp, open(tmp, "wb") as f:
            np.save(f, outputs)
        print(f"wrote outputs {outputs.shape} to {output}")
    elif len(network.output_shape) == 1:
        for row, cls in enumerate(np.argmax(outputs, axis=1)):
            print(f"{row}\t{cls}")
    else:
        print(f"outputs of shape {outputs.shape}; pass --output FILE.npy to keep them")
    return 0


def _read_array(path: str):
    """The one array a .npy file holds; any other file is a one-line error naming it."""
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        raise ValueError(f"{path}: cannot read a .npy array ({err})") from err
    if not isinstance(x, np.ndarray):  # np.load opens an .npz archive instead
        names = ", ".join(x.files)
        x.close()
        raise ValueError(f"{path}: is an .npz archive (arrays {names or 'none'}); give one array "
                         f"saved with np.save")
    return x


def _rows_where(mask):
    """Indices of the rows (first axis) where ``mask`` holds anywhere."""
    import numpy as np

    return np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))


def _rows(rows) -> str:
    """'row 3 holds' or 'rows 1, 3 and 12 more hold', for a warning about input rows."""
    shown = ", ".join(map(str, rows[:10])) + (f" and {rows.size - 10} more" if rows.size > 10 else "")
    return f"rows {shown} hold" if rows.size > 1 else f"row {shown} holds"


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
        _check_model_reads(args.model, args.dataset, vocab)
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


def cmd_serve(args) -> int:
    import logging

    from .serve import ModelServer

    _apply_backend_flags(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = ModelServer(args.model, args.backend, args.host, args.port, watch=args.watch,
                             watch_interval_s=args.watch_interval, max_batch=args.max_batch,
                             batch_wait_ms=args.batch_wait_ms, max_body_bytes=args.max_body_bytes,
                             max_connections=args.max_connections, check_finite=not args.no_finite_check)
    except OSError as err:  # the address is taken or not ours
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err})") from None
    health = server.health()
    print(f"serving {args.model} ({health['inputs'][0]['shape']} -> {health['outputs'][0]['shape']}, "
          f"step {health['checkpoint']['step']}) on {server.url} with backend "
          f"{health['backend']}{', watching it' if args.watch else ''}; Ctrl-C stops", flush=True)
    server.serve_until_signal()
    print("stopped", flush=True)
    return 0


def cmd_info(args) -> int:
    import json

    from .backends import BackendUnavailable, backend, registered_backends
    from .backends.numpy.runtime import describe, runtime_info

    backends = {}
    for name in registered_backends():
        try:
            backends[name] = {"available": True, "backend": repr(backend(name))}
        except BackendUnavailable as err:
            backends[name] = {"available": False, "reason": " ".join(str(err).split())}
    numpy_runtime = runtime_info()
    if args.json:
        print(json.dumps({"version": __version__, "backends": backends, "numpy": numpy_runtime}, indent=1))
        return 0
    print(f"juicepy {__version__}")
    for name, state in backends.items():
        print(f"{name}: " + (state["backend"] if state["available"] else f"unavailable ({state['reason']})"))
    print("numpy backend:")
    for line in describe(numpy_runtime):
        print(f"  {line}")
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
        if getattr(args, "workers", 1) != 1:
            return launch_workers(args, sys.argv[1:] if argv is None else list(argv))
        return args.run(args)
    except (BackendUnavailable, DatasetUnavailable, JuicepyError, ValueError, OSError) as err:
        message = " ".join(str(err).split())  # one line, whatever the error's text holds
        print(f"juicepy: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: checkpoints already written are complete (atomic saves)
        print("juicepy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
