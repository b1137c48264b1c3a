"""The GPU acceptance run's multi-GPU data-parallel step (called by tests/gpu/acceptance.sh).

    mpiexec -n 2 python -m mpi4py tests/gpu/multi_gpu_step.py --out OUT/multi_gpu.json [--dry-run]

Each rank trains on the GPU of its local rank through the NCCL communicator that
``juicepy.distributed.communicator("cuda")`` picks (CuPy's ``cupy.cuda.nccl``, buckets reduced
on a stream of their own during the backward pass) and checks what issue 14 asks of it:

- correctness: an MLP and LeNet, 10 Adam and 10 SGD-momentum steps with B rows per rank, give
  the weights of one process with N x B rows (each rank trains that reference itself on its
  GPU; rel err < 1e-5) and the replicas are bit-identical after every step;
- speed (reported, no goal): the step time of the wide MLP 784-4096-4096-10 and LeNet with a
  fixed batch per rank in the N-rank job, and in windows of rank 0 training alone (its own
  trainer, no communicator) while the other ranks wait, taken in the same job;
  scaling efficiency = N-rank samples/s / (N x 1-rank samples/s).

Rank 0 writes the JSON; every rank exits 1 when a check failed on any rank (pass/fail is
reduced over the ranks); an exception on any rank aborts the job (``python -m mpi4py``).

--dry-run: on the CPU emulator (JUICEPY_CUDA_EMULATOR=1) with the fake NCCL
(tests/fake_nccl.py, over MPI), small models and few steps: the code runs, the figures mean
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
STEPS = 10
REL_TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def fingerprint(network) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(network.get_weights().items()):
        h.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def models(dry_run: bool) -> dict:
    """name -> (builder(seed), input unit shape, rows per rank, classes) for the correctness check."""
    import juicepy as jp
    from juicepy import layers as L
    from juicepy.models import lenet

    size = 12 if dry_run else 28

    def mlp(seed):
        return jp.Network(L.Sequential(L.Flatten(), L.Linear(64), L.ReLU(), L.Linear(32), L.ReLU(), L.Linear(10)),
                          input_shape=(1, size, size), seed=seed)

    def lenet5(seed):
        return jp.Network(lenet((1, size, size), 10), (1, size, size), seed=seed)

    return {"mlp": (mlp, (1, size, size), 8), "lenet": (lenet5, (1, size, size), 8)}


def global_batch(step, rows, shape):
    rng = np.random.default_rng(1000 + step)
    return rng.standard_normal((rows,) + shape).astype(np.float32), rng.integers(0, 10, rows)


def check_model(comm, backend, name, build, shape, rows, opt_name) -> dict:
    """10 steps on N ranks against one process with the global batch, on this rank's GPU."""
    from juicepy import layers as L
    from juicepy.train import SGD, Adam, Trainer

    make_opt = {"adam": lambda: Adam(lr=1e-3), "sgd-momentum": lambda: SGD(lr=1e-2, momentum=0.9)}[opt_name]
    # ranks start from different weights: the first step's broadcast must make them rank 0's
    dist = Trainer(build(comm.rank), L.SoftmaxCrossEntropy(), make_opt(), rows, communicator=comm)
    ref = Trainer(build(0), L.SoftmaxCrossEntropy(), make_opt(), comm.size * rows)
    identical, worst_loss = True, 0.0
    for step in range(STEPS):
        x, y = global_batch(step, comm.size * rows, shape)
        mine = slice(comm.rank * rows, (comm.rank + 1) * rows)
        loss, _ = dist.train_minibatch(backend, x[mine], y[mine])
        ref_loss, _ = ref.train_minibatch(backend, x, y)
        worst_loss = max(worst_loss, abs(loss - ref_loss) / max(abs(ref_loss), 1e-30))
        prints = comm.allgather_object(fingerprint(dist.network))
        identical = identical and all(p == prints[0] for p in prints)
    got, want = dist.network.get_weights(), ref.network.get_weights()
    worst = max(rel_err(got[k], want[k]) for k in want)
    state = dist.state(backend)
    return {"model": name, "optimizer": opt_name, "rows_per_rank": rows, "steps": STEPS,
            "weights_rel_err": worst, "loss_rel_err": worst_loss, "replicas_identical": bool(identical),
            "overlapped": state.reduction is not None,
            "ok": bool(identical and worst < REL_TOL and worst_loss < REL_TOL)}


def timing_models(dry_run: bool) -> dict:
    """name -> (builder, unit shape, rows per rank) for the step time."""
    import juicepy as jp
    from juicepy import layers as L
    from juicepy.models import lenet

    if dry_run:
        widths, size, wide_rows, lenet_rows = (64, 64), 12, 16, 8
    else:
        widths, size, wide_rows, lenet_rows = (4096, 4096), 28, 256, 64

    def wide():
        parts = []
        for w in widths:
            parts += [L.Linear(w), L.ReLU()]
        return jp.Network(L.Sequential(*parts, L.Linear(10)), input_shape=(784,))

    def lenet5():
        return jp.Network(lenet((1, size, size), 10), (1, size, size))

    return {f"wide-mlp 784-{widths[0]}-{widths[1]}-10": (wide, (784,), wide_rows),
            "lenet-5": (lenet5, (1, size, size), lenet_rows)}


def time_steps(trainer, backend, x, y, steps) -> float:
    backend.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_minibatch(backend, x, y)
    backend.synchronize()
    return (time.perf_counter() - start) / steps


def time_model(comm, backend, name, build, shape, rows, steps, windows, warmup) -> dict:
    """Windows of ``steps`` back-to-back steps of the N-rank job (each window's time its slowest
    rank's), each followed by a window of rank 0 training alone while the others wait."""
    from juicepy import layers as L
    from juicepy.train import Adam, Trainer

    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((rows,) + shape).astype(np.float32)
    y = rng.integers(0, 10, rows)
    job = Trainer(build(), L.SoftmaxCrossEntropy(), Adam(lr=1e-4), rows, communicator=comm)
    solo = Trainer(build(), L.SoftmaxCrossEntropy(), Adam(lr=1e-4), rows) if comm.rank == 0 else None
    for _ in range(warmup):
        job.train_minibatch(backend, x, y)
        if solo is not None:
            solo.train_minibatch(backend, x, y)
    together, alone = [], []
    for _ in range(windows):
        comm.barrier()
        mine = time_steps(job, backend, x, y, steps)
        together.append(float(comm.allreduce_host(np.array([mine]), "max")[0]))
        if solo is not None:
            alone.append(time_steps(solo, backend, x, y, steps))
        comm.barrier()
    step_n, step_1 = float(np.median(together)), float(np.median(alone)) if alone else None
    eff = None if step_1 is None else (comm.size * rows / step_n) / (comm.size * rows / step_1)
    return {"model": name, "rows_per_rank": rows, "steps_per_window": steps, "windows": windows,
            "step_ms_n_ranks": step_n * 1e3, "step_ms_1_rank": None if step_1 is None else step_1 * 1e3,
            "samples_per_s_n_ranks": comm.size * rows / step_n,
            "samples_per_s_1_rank": None if step_1 is None else rows / step_1,
            "scaling_efficiency": eff}


def setup(dry_run: bool):
    """The communicator and the cuda backend of this rank's GPU (emulated in a dry run)."""
    from mpi4py import MPI

    if not dry_run:  # one GPU per rank of this machine (the emulator has one device)
        local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        os.environ.setdefault("JUICEPY_CUDA_DEVICE", str(local))
    else:
        os.environ["JUICEPY_CUDA_EMULATOR"] = "1"
        sys.path.insert(0, str(TESTS))
        sys.path.insert(0, str(TESTS / "gpu"))
        from acceptance_report import use_emulator_if_asked

        use_emulator_if_asked()
    import juicepy as jp
    from juicepy.distributed import NCCLCommunicator, communicator

    backend = jp.backend("cuda")
    if dry_run:
        import fake_nccl

        comm = NCCLCommunicator(nccl=fake_nccl)
    else:
        comm = communicator(backend)
    return comm, backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON report (written by rank 0)")
    parser.add_argument("--dry-run", action="store_true", help="CPU emulator and fake NCCL, small models")
    parser.add_argument("--steps", type=int, help="steps per timed window (default 20; 2 in a dry run)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per model (the median counts)")
    args = parser.parse_args(argv)
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    steps = args.steps or (2 if args.dry_run else 20)
    report = {"run": True, "dry_run": args.dry_run, "ranks": world.size, "correctness": [], "timing": []}
    # An exception on any rank ends the whole job (run under ``python -m mpi4py``, whose
    # abort-on-exception stops every rank): no rank is left waiting in a collective.
    comm, backend = setup(args.dry_run)
    report["communicator"] = comm.kind
    report["nccl"] = getattr(getattr(comm, "nccl", None), "__name__", None)
    if comm.kind != "nccl":
        raise RuntimeError(f"the job got a {comm.kind!r} communicator, not NCCL (is cupy.cuda.nccl importable?)")
    if comm.size < 2:
        raise RuntimeError("run it under mpiexec -n 2 (or more): one rank reduces nothing")
    for name, (build, shape, rows) in models(args.dry_run).items():
        for opt in ("adam", "sgd-momentum"):
            report["correctness"].append(check_model(comm, backend, name, build, shape, rows, opt))
    for name, (build, shape, rows) in timing_models(args.dry_run).items():
        report["timing"].append(time_model(comm, backend, name, build, shape, rows, steps, args.windows,
                                           warmup=1 if args.dry_run else 5))
    failed = [f"rank {r}: {c['model']} {c['optimizer']}" for r, checks in enumerate(world.allgather(report["correctness"]))
              for c in checks if not c["ok"]]
    report["errors"] = failed
    report["ok"] = not failed
    if world.rank == 0:
        args.out.write_text(json.dumps(report, indent=2))
        for c in report["correctness"]:
            print(f"{c['model']} {c['optimizer']}: weights rel err {c['weights_rel_err']:.2e}, replicas identical "
                  f"{c['replicas_identical']}, overlapped {c['overlapped']}: {'ok' if c['ok'] else 'FAILED'}")
        for t in report["timing"]:
            print(f"{t['model']} b{t['rows_per_rank']}/rank: {t['step_ms_n_ranks']:.3f} ms on {world.size} ranks, "
                  f"{t['step_ms_1_rank']:.3f} ms alone, scaling efficiency {t['scaling_efficiency']:.3f}")
        print("multi-GPU step:", "passed" if report["ok"] else f"FAILED: {failed}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
