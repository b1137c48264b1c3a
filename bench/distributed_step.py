"""Data-parallel step time at 1 and 2 ranks (one thread each): the scaling of juicepy.distributed.

Run as a table (launches ``mpiexec -n 1`` and ``-n 2`` itself):

    python bench/distributed_step.py [--steps 20] [--repeat 3] [--models mlp,wide-mlp,lenet]

or as one job (what the table launches; rank 0 prints one JSON line):

    mpiexec -n 2 python -m mpi4py bench/distributed_step.py --job mlp --steps 20

Each timed step starts after a barrier; its time is the slowest rank's. The allreduce time is
the time spent in the gradient allreduce inside the step (waiting for the slower rank
included); "alone" times the same allreduce with every rank entering together. The step's
forward, backward, allreduce and update are also timed apart (printed under the table). With the
sharded update (shared memory, the default on one machine) "allreduce" is the gradients'
reduce-scatter plus the updated params' allgather, and "update" the optimizer on this rank's
part (run chunk by chunk inside the reduce-scatter; its time is taken out of "allreduce"); ``JUICEPY_SHARED_MEMORY=allreduce`` or ``=0`` selects the other paths for an A/B.
Scaling efficiency = 2-rank samples/s / (2 x 1-rank samples/s), with the batch per rank fixed
and one thread per rank (BLAS and the NumPy backend's lanes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: the parts of a step timed separately (each the slowest rank's, median over steps)
PHASES = ("forward", "backward", "allreduce", "update")

# model: (batch per rank, input unit shape, builder)
MODELS = {
    "mlp": (128, (784,), "784-512-512-10"),
    "wide-mlp": (256, (784,), "784-4096-4096-10"),
    "lenet": (64, (1, 28, 28), "lenet-5"),
}


def build(model: str):
    import juicepy as jp
    from juicepy import layers as L
    from juicepy.models import lenet

    batch, shape, desc = MODELS[model]
    if model == "lenet":
        return jp.Network(lenet(shape, 10), shape), batch
    widths = [int(w) for w in desc.split("-")[1:]]
    parts = []
    for width in widths[:-1]:
        parts += [L.Linear(width), L.ReLU()]
    return jp.Network(L.Sequential(*parts, L.Linear(widths[-1])), input_shape=shape), batch


def run_job(model: str, steps: int, warmup: int, bucket_mb: float | None = None) -> dict | None:
    """One rank's part of the job; rank 0 returns the figures. ``bucket_mb``: the gradient
    allreduce's bucket size instead of juicepy.distributed.HOST_BUCKET_BYTES."""
    import juicepy as jp
    from juicepy import layers as L
    from juicepy.distributed import communicator
    from juicepy.train import Adam, Trainer

    comm = communicator()
    if bucket_mb is not None and comm.kind == "mpi":
        comm.bucket_bytes = int(bucket_mb * 2**20)
    network, batch = build(model)
    trainer = Trainer(network, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=batch, communicator=comm)
    backend = jp.backend("numpy")
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((batch,) + network.input_shape).astype(np.float32)
    y = rng.integers(0, 10, batch)

    for _ in range(warmup):
        trainer.train_minibatch(backend, x, y)
    # where the step's time goes: the network's forward, backward, the gradient allreduce
    # (waiting for the slower rank included) and the optimizer update (the rest: the loss, the
    # small collectives, batch checks), instrumented for this measurement only
    spent = dict.fromkeys(PHASES, 0.0)

    nested = [0.0]  # time of timed calls inside the running one (the sharded update runs inside the reduce-scatter)

    def timed(phase, call):
        def run(*args, **kwargs):
            outer, nested[0] = nested[0], 0.0
            start = time.perf_counter()
            result = call(*args, **kwargs)
            elapsed = time.perf_counter() - start
            spent[phase] += elapsed - nested[0]
            nested[0] = outer + elapsed
            return result
        return run

    ctx, optimizer = trainer.state(backend).context, trainer.optimizer
    allreduce, reduce_scatter, allgather_parts = comm.allreduce, comm.reduce_scatter, comm.allgather_parts
    ctx.forward, ctx.backward = timed("forward", ctx.forward), timed("backward", ctx.backward)
    optimizer.step, comm.allreduce = timed("update", optimizer.step), timed("allreduce", allreduce)
    # a sharded update (shared memory) reduce-scatters the gradients and allgathers the params
    comm.reduce_scatter, comm.allgather_parts = timed("allreduce", reduce_scatter), timed("allreduce", allgather_parts)
    step_times, phase_times = [], []
    for _ in range(steps):
        comm.barrier()
        spent.update(dict.fromkeys(PHASES, 0.0))
        start = time.perf_counter()
        trainer.train_minibatch(backend, x, y)
        elapsed = time.perf_counter() - start
        slowest = comm.allreduce_host(np.array([elapsed] + [spent[p] for p in PHASES]), "max")
        step_times.append(slowest[0])
        phase_times.append(slowest[1:])
    alone = []  # the gradient allreduce by itself, every rank entering together
    segments = trainer.state(backend).context.segments
    for _ in range(steps):
        comm.barrier()
        start = time.perf_counter()
        for seg in segments:  # as in the step: a sum (the loss gradient carries 1 / N)
            if reduce_scatter(backend, seg.grad) is not None:  # sharded: then the params' allgather
                allgather_parts(backend, seg.grad, seg.data)
            else:
                allreduce(backend, seg.grad)
        alone.append(comm.allreduce_host(np.array([time.perf_counter() - start]), "max")[0])
    if comm.rank != 0:
        return None
    step = float(np.median(step_times))
    phases = dict(zip(PHASES, (float(t) for t in np.median(phase_times, axis=0))))
    return {"model": model, "ranks": comm.size, "batch_per_rank": batch, "steps": steps,
            "step_s": step, "samples_per_s": comm.size * batch / step,
            "allreduce_s": phases["allreduce"] if comm.size > 1 else 0.0,
            "allreduce_alone_s": float(np.median(alone)) if comm.size > 1 else 0.0,
            "phases_s": phases, "params": network.num_params(),
            "path": _path(comm)}


def _path(comm) -> str:
    """How the gradients were averaged ($JUICEPY_SHARED_MEMORY chooses; docs/distributed.md)."""
    if comm.size == 1:
        return "none"
    if getattr(comm, "shared", None) is None:
        return "MPI_Allreduce"
    return "shared memory, sharded update" if comm.shards_update else "shared memory allreduce"


def launch(model: str, ranks: int, steps: int, warmup: int, timeout: float = 600,
           bucket_mb: float | None = None) -> dict:
    """Run one job under mpiexec (one thread per rank); the rank-0 figures."""
    from juicepy.cli import mpiexec_path

    # one thread per rank: BLAS's and the NumPy backend's own lanes (which default to every core)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", JUICEPY_NUM_THREADS="1")
    for key in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(key, None)
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
               "--job", model, "--steps", str(steps), "--warmup", str(warmup)]
    if bucket_mb is not None:
        command += ["--bucket-mb", str(bucket_mb)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling(model: str, steps: int, warmup: int, bucket_mb: float | None = None, repeat: int = 1) -> dict:
    """1-rank and 2-rank jobs, alternately ``repeat`` times each; the figures of the job with the
    median step time of each (jobs on a shared machine vary more than steps within a job)."""
    ones, twos = [], []
    for _ in range(repeat):
        ones.append(launch(model, 1, steps, warmup))
        twos.append(launch(model, 2, steps, warmup, bucket_mb=bucket_mb))
    one, two = (sorted(jobs, key=lambda job: job["step_s"])[(len(jobs) - 1) // 2] for jobs in (ones, twos))
    return {"model": model, "one": one, "two": two, "repeat": repeat,
            "efficiency": two["samples_per_s"] / (2 * one["samples_per_s"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=sorted(MODELS), help="run one job's rank (under mpiexec)")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the table")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="jobs per rank count (the median one is shown)")
    parser.add_argument("--bucket-mb", type=float, help="gradient allreduce bucket size (default: HOST_BUCKET_BYTES)")
    args = parser.parse_args(argv)
    if args.job:
        figures = run_job(args.job, args.steps, args.warmup, args.bucket_mb)
        if figures is not None:
            print(json.dumps(figures), flush=True)
        return
    print(f"{'model':<28} {'1 rank ms':>10} {'2 ranks ms':>11} {'efficiency':>11} {'allreduce ms':>13} "
          f"{'alone ms':>9}")
    rows = []
    for model in args.models.split(","):
        row = scaling(model, args.steps, args.warmup, args.bucket_mb, args.repeat)
        rows.append(row)
        batch, _, desc = MODELS[model]
        print(f"{desc + f' b{batch}/rank':<28} {row['one']['step_s'] * 1e3:10.2f} {row['two']['step_s'] * 1e3:11.2f} "
              f"{row['efficiency'] * 100:10.1f}% {row['two']['allreduce_s'] * 1e3:13.2f} "
              f"{row['two']['allreduce_alone_s'] * 1e3:9.2f}", flush=True)
    print(f"\n2-rank gradient path: {rows[0]['two']['path']}" if rows else "")
    print("ms per step, 1 rank -> 2 ranks (each the slowest rank's):")
    for row in rows:
        one, two = row["one"]["phases_s"], row["two"]["phases_s"]
        print(f"{row['model']:<10} " + "  ".join(f"{p} {one[p] * 1e3:.2f} -> {two[p] * 1e3:.2f}" for p in PHASES))


if __name__ == "__main__":
    main()
