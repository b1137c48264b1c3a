"""Data-parallel step time at 1 and 2 ranks (one thread each): the scaling of juicepy.distributed.

Run as a table (launches ``mpiexec -n 1`` and ``-n 2`` itself):

    python bench/distributed_step.py [--steps 20] [--repeat 3] [--models mlp,wide-mlp,lenet]

or as one job (what the table launches; rank 0 prints one JSON line):

    mpiexec -n 2 python -m mpi4py bench/distributed_step.py --job mlp --steps 20

Steps run back to back as in training, in ``--windows`` windows of ``--steps`` steps; a
window's step time is its slowest rank's time divided by its steps, and a job's figure is its
median window. The allreduce time is the time spent in the gradient allreduce inside the step
(waiting for the slower rank included); "alone" times the same allreduce with every rank
entering together. The step's forward, backward, allreduce, update and small collectives are
also timed apart (printed under the table). With the
sharded update (shared memory, the default on one machine) "allreduce" is the gradients'
reduce-scatter plus the updated params' allgather, and "update" the optimizer on this rank's
part (run chunk by chunk inside the reduce-scatter; its time is taken out of "allreduce"); ``JUICEPY_SHARED_MEMORY=allreduce`` or ``=0`` selects the other paths for an A/B.
Scaling efficiency = 2-rank samples/s / (2 x 1-rank samples/s), with the batch per rank fixed
and one thread per rank (BLAS and the NumPy backend's lanes); 1-rank and 2-rank jobs alternate
(``--repeat``), each pair gives an efficiency, and the median pair is shown with the spread.
"in-job": inside each 2-rank job every window is followed by one of rank 0 training alone (its
own trainer, no communicator) while rank 1 sleeps, so the 1-rank reference runs seconds away
from the 2-rank figure; the median over the window pairs of the job, and over the jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: the parts of a step timed separately (per step, each the slowest rank's, median over windows)
PHASES = ("forward", "backward", "allreduce", "update", "collectives")

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


def run_job(model: str, steps: int, warmup: int, bucket_mb: float | None = None, windows: int = 3) -> dict | None:
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
    # (waiting for the slower rank included), the optimizer update and the small per-step
    # collectives (batch agreement, mean loss; waits included); the rest is the loss and the
    # batch checks. Instrumented for this measurement only.
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
    comm.agree, comm.sum = timed("collectives", comm.agree), timed("collectives", comm.sum)
    # Steps run back to back, as in training (a barrier or a timing collective between steps
    # would add a synchronisation training does not have and hide the waits it does have):
    # a window's time is its slowest rank's, step time = window time / steps, and the job's
    # figure is the median window (a disturbance spoils one window, not the job).
    window_steps, window_phases, own, solo_steps = [], [], [], []
    # with 2 ranks, each window of the job is followed by a window of rank 0 alone (a trainer of
    # its own, no communicator) while rank 1 sleeps: a 1-rank reference seconds away from the
    # 2-rank figure, where separate jobs drift apart on a shared machine
    solo = None
    if comm.size > 1 and comm.rank == 0:
        solo_net, _ = build(model)
        solo = Trainer(solo_net, L.SoftmaxCrossEntropy(), Adam(lr=1e-3), batch_size=batch)
        for _ in range(warmup):
            solo.train_minibatch(backend, x, y)
        # the same instrumentation as the job's trainer (and the 1-rank jobs'), so both sides
        # pay for it
        solo_ctx = solo.state(backend).context
        solo_ctx.forward, solo_ctx.backward = timed("forward", solo_ctx.forward), timed("backward", solo_ctx.backward)
        solo.optimizer.step = timed("update", solo.optimizer.step)
    cpu, wall, switches = 0.0, 0.0, 0
    for _ in range(windows):
        comm.barrier()
        spent.update(dict.fromkeys(PHASES, 0.0))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_minibatch(backend, x, y)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu += after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        wall, switches = wall + elapsed, switches + after.ru_nivcsw - usage.ru_nivcsw
        mine = np.array([elapsed] + [spent[p] for p in PHASES]) / steps
        own.append(mine)
        slowest = comm.allreduce_host(mine, "max")
        window_steps.append(slowest[0])
        window_phases.append(slowest[1:])
        if comm.size > 1:
            comm.barrier()
            if solo is not None:
                start = time.perf_counter()
                for _ in range(steps):
                    solo.train_minibatch(backend, x, y)
                solo_steps.append((time.perf_counter() - start) / steps)
            done = comm.comm.Ibarrier()
            while not done.Test():  # the other ranks sleep (a blocking barrier would spin on its core)
                time.sleep(5e-4)
    # is each rank one thread on one core? CPU time of all its threads against wall time over the
    # timed windows, its threads, and how often the kernel took its core away
    me = {"cpu_per_wall": cpu / wall,
          "threads": len(os.listdir("/proc/self/task")),
          "involuntary_switches_per_step": switches / (steps * windows),
          "step_s": float(np.median([o[0] for o in own])),
          "phases_s": dict(zip(PHASES, (float(t) for t in np.median([o[1:] for o in own], axis=0))))}
    ranks = comm.allgather_object(me)
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
    step = float(np.median(window_steps))
    phases = dict(zip(PHASES, (float(t) for t in np.median(window_phases, axis=0))))
    return {"model": model, "ranks": comm.size, "batch_per_rank": batch, "steps": steps, "windows": windows,
            "window_step_s": [float(t) for t in window_steps],
            "solo_step_s": [float(t) for t in solo_steps],
            # per window pair: rank 0 alone / the job's window, samples/s as in the efficiency
            "interleaved_efficiency": float(np.median([a / b for a, b in zip(solo_steps, window_steps)]))
            if solo_steps else None,
            "step_s": step, "samples_per_s": comm.size * batch / step,
            "allreduce_s": phases["allreduce"] if comm.size > 1 else 0.0,
            "allreduce_alone_s": float(np.median(alone)) if comm.size > 1 else 0.0,
            "phases_s": phases, "params": network.num_params(), "ranks_detail": ranks,
            "path": _path(comm)}


def _path(comm) -> str:
    """How the gradients were averaged ($JUICEPY_SHARED_MEMORY chooses; docs/distributed.md)."""
    if comm.size == 1:
        return "none"
    if getattr(comm, "shared", None) is None:
        return "MPI_Allreduce"
    return "shared memory, sharded update" if comm.shards_update else "shared memory allreduce"


def launch(model: str, ranks: int, steps: int, warmup: int, timeout: float = 600,
           bucket_mb: float | None = None, windows: int = 3) -> dict:
    """Run one job under mpiexec (one thread per rank); the rank-0 figures."""
    from juicepy.cli import mpiexec_path

    # one thread per rank: BLAS's and the NumPy backend's own lanes (which default to every core)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", JUICEPY_NUM_THREADS="1")
    for key in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(key, None)
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
               "--job", model, "--steps", str(steps), "--warmup", str(warmup), "--windows", str(windows)]
    if bucket_mb is not None:
        command += ["--bucket-mb", str(bucket_mb)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling(model: str, steps: int, warmup: int, bucket_mb: float | None = None, repeat: int = 1,
            windows: int = 3) -> dict:
    """A 1-rank job, then a 2-rank job, ``repeat`` times. Jobs on a shared machine vary more
    than windows within a job, so each pair (the 1-rank job and the 2-rank job right after it)
    gives one efficiency; the figure is their median, with the lowest and highest beside it.
    ``one`` / ``two``: the jobs with the median step time of each rank count."""
    ones, twos = [], []
    for _ in range(repeat):
        ones.append(launch(model, 1, steps, warmup, windows=windows))
        twos.append(launch(model, 2, steps, warmup, bucket_mb=bucket_mb, windows=windows))
    pairs = sorted(two["samples_per_s"] / (2 * one["samples_per_s"]) for one, two in zip(ones, twos))
    one, two = (sorted(jobs, key=lambda job: job["step_s"])[(len(jobs) - 1) // 2] for jobs in (ones, twos))
    interleaved = sorted(job["interleaved_efficiency"] for job in twos)
    return {"model": model, "one": one, "two": two, "repeat": repeat, "pair_efficiencies": pairs,
            "efficiency": float(np.median(pairs)), "ones": ones, "twos": twos,
            "interleaved_efficiencies": interleaved, "interleaved_efficiency": float(np.median(interleaved))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=sorted(MODELS), help="run one job's rank (under mpiexec)")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the table")
    parser.add_argument("--steps", type=int, default=20, help="back-to-back steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per job (the median one counts)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="jobs per rank count (the median one is shown)")
    parser.add_argument("--bucket-mb", type=float, help="gradient allreduce bucket size (default: HOST_BUCKET_BYTES)")
    args = parser.parse_args(argv)
    if args.job:
        figures = run_job(args.job, args.steps, args.warmup, args.bucket_mb, args.windows)
        if figures is not None:
            print(json.dumps(figures), flush=True)
        return
    print(f"{'model':<28} {'1 rank ms':>10} {'2 ranks ms':>11} {'efficiency':>11} {'(lowest-highest)':>17} "
          f"{'in-job':>7} {'(lowest-highest)':>17} {'allreduce ms':>13} {'alone ms':>9}")
    rows = []
    for model in args.models.split(","):
        row = scaling(model, args.steps, args.warmup, args.bucket_mb, args.repeat, args.windows)
        rows.append(row)
        batch, _, desc = MODELS[model]
        spread = f"({row['pair_efficiencies'][0] * 100:.1f}-{row['pair_efficiencies'][-1] * 100:.1f}%)"
        inner = row["interleaved_efficiencies"]
        inner_spread = f"({inner[0] * 100:.1f}-{inner[-1] * 100:.1f}%)"
        print(f"{desc + f' b{batch}/rank':<28} {row['one']['step_s'] * 1e3:10.2f} {row['two']['step_s'] * 1e3:11.2f} "
              f"{row['efficiency'] * 100:10.1f}% {spread:>17} {row['interleaved_efficiency'] * 100:6.1f}% "
              f"{inner_spread:>17} {row['two']['allreduce_s'] * 1e3:13.2f} "
              f"{row['two']['allreduce_alone_s'] * 1e3:9.2f}", flush=True)
    print(f"\n2-rank gradient path: {rows[0]['two']['path']}" if rows else "")
    print("ms per step, 1 rank -> 2 ranks (each the slowest rank's):")
    for row in rows:
        one, two = row["one"]["phases_s"], row["two"]["phases_s"]
        print(f"{row['model']:<10} " + "  ".join(f"{p} {one[p] * 1e3:.2f} -> {two[p] * 1e3:.2f}" for p in PHASES))
    print("each job's step ms, 1 rank / 2 ranks, in the order they ran; then, inside each 2-rank job, rank 0 alone /"
          " the 2-rank windows; then CPU time / wall time and threads per rank:")
    for row in rows:
        print(f"{row['model']:<10} " + "  ".join(f"{a['step_s'] * 1e3:.2f}/{b['step_s'] * 1e3:.2f}"
                                                  for a, b in zip(row["ones"], row["twos"])))
        print(f"{'':<10} in-job " + "  ".join(f"{np.median(b['solo_step_s']) * 1e3:.2f}/{b['step_s'] * 1e3:.2f}"
                                               for b in row["twos"]))
        detail = row["two"]["ranks_detail"] + row["one"]["ranks_detail"]
        print(f"{'':<10} cpu/wall " + " ".join(f"{d['cpu_per_wall']:.2f}" for d in detail)
              + "  threads " + " ".join(str(d["threads"]) for d in detail))


if __name__ == "__main__":
    main()
