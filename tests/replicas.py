"""What the collective tests share: the global batches every rank cuts its rows from, weight
comparisons with one process, and the check that the replicas are bit-identical."""

import hashlib

import numpy as np

B = 6  # rows per rank

def global_batch(step, rows):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((rows, 2, 3, 3)).astype(np.float32), rng.integers(0, 3, rows)


def own_rows(comm, x):
    return x[comm.rank * B:(comm.rank + 1) * B]


def run_steps(trainer, comm, backend, steps, rows=B):
    """Train on global batches ``steps``: this rank's rows, or the whole batch with ``rows`` =
    size * B (the one-process reference)."""
    for step in steps:
        x, y = global_batch(step, comm.size * B)
        if rows == B:
            x, y = own_rows(comm, x), own_rows(comm, y)
        trainer.train_minibatch(backend, x, y)


def fingerprint(network) -> str:
    h = hashlib.sha256()
    for name, value in sorted(network.get_weights().items()):
        h.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_close_weights(got, want, tol=1e-5):
    for name, value in want.items():
        assert rel_err(got[name], value) < tol, (name, rel_err(got[name], value))


def replicas_identical(comm, network) -> bool:
    prints = comm.allgather_object(fingerprint(network))
    return all(p == prints[0] for p in prints)
