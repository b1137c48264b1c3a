"""Gradient reduction and the sharded optimizer update through MPI-3 shared memory (ranks on one
machine), against MPI_Allreduce and one process with the global batch. See conftest.py for how
these run (one rank in the plain test run, two under tests/distributed/test_launch.py)."""

import gc

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.errors import NonFiniteError
from juicepy.train import SGD, Adam, Trainer

pytest.importorskip("mpi4py", reason="pip install '.[distributed]'")
from juicepy.distributed import MPICommunicator  # noqa: E402
from replicas import B, assert_close_weights, global_batch, own_rows, rel_err, replicas_identical, run_steps

OPTIMIZERS = {"adam": lambda: Adam(lr=1e-2), "sgd-momentum": lambda: SGD(lr=5e-2, momentum=0.9)}
# sharded update (the wide net's part in one chunk, or in 4 KB chunks), shared-memory
# allreduce, MPI_Allreduce
MODES = ["1", "1-chunked", "allreduce", "0"]


def wide(seed=0):
    """13 203 params: both ranks' parts of the block (whole pages) are non-empty."""
    return jp.Network(L.Sequential(L.Flatten(), L.Linear(600), L.ReLU(), L.Linear(3)), input_shape=(2, 3, 3),
                      seed=seed)


def test_shared_blocks_sum_whole_blocks_and_pieces(comm, on_every_rank, numpy_backend):
    def body():
        mpi = MPICommunicator(shared_memory="1")  # whatever $JUICEPY_SHARED_MEMORY says
        block = mpi.shared_block(numpy_backend, 5000, np.float32)
        if comm.size == 1:
            assert block is None and mpi.shared is None  # nothing to share with
            return
        assert block.shape == (5000,) and not block.any()
        base = np.linspace(-1, 1, 5000, dtype=np.float32)
        block[:] = base * (comm.rank + 1)
        mpi.allreduce(numpy_backend, block)
        total = sum(r + 1 for r in range(comm.size))
        np.testing.assert_allclose(block, base * total, rtol=1e-6)
        block[:] = base * (comm.rank + 1)
        piece = block[100:4900]  # a piece (a segment of one lr multiplier) reduces alone
        mpi.allreduce(numpy_backend, piece)
        np.testing.assert_allclose(piece, base[100:4900] * total, rtol=1e-6)
        np.testing.assert_array_equal(block[:100], base[:100] * (comm.rank + 1))
        # reduce-scatter sums this rank's part only; allgather_parts hands every part around
        block[:] = base * (comm.rank + 1)
        a, b = mpi.reduce_scatter(numpy_backend, block)
        parts = comm.allgather_object((a, b))
        assert parts[0][0] == 0 and parts[-1][1] == 5000 and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
        assert all(p[1] > p[0] for p in parts)
        np.testing.assert_allclose(block[a:b], base[a:b] * total, rtol=1e-6)
        values = np.full(5000, -1.0, np.float32)
        values[a:b] = comm.rank
        mpi.allgather_parts(numpy_backend, block, values)
        for r, (lo, hi) in enumerate(parts):
            np.testing.assert_array_equal(values[lo:hi], r)
        assert mpi.reduce_scatter(numpy_backend, np.ones(10, np.float32)) is None  # not shared: caller allreduces
    on_every_rank(body)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode", MODES)
def test_every_path_matches_one_process_with_bit_identical_replicas(comm, on_every_rank, numpy_backend, opt, mode,
                                                                    monkeypatch):
    if mode == "1-chunked":
        from juicepy.distributed import communicators

        monkeypatch.setattr(communicators, "SHARED_CHUNK_BYTES", 4096)  # 6-7 chunks per part

    def body():
        mpi = MPICommunicator(shared_memory=mode.split("-")[0])
        dist = Trainer(wide(seed=comm.rank), L.SoftmaxCrossEntropy(), OPTIMIZERS[opt](), B, communicator=mpi)
        ref = Trainer(wide(), L.SoftmaxCrossEntropy(), OPTIMIZERS[opt](), comm.size * B)
        for step in range(10):
            x, y = global_batch(step, comm.size * B)
            loss, _ = dist.train_minibatch(numpy_backend, own_rows(comm, x), own_rows(comm, y))
            ref_loss, _ = ref.train_minibatch(numpy_backend, x, y)
            assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (step, loss, ref_loss)
            assert replicas_identical(comm, dist.network), f"replicas differ after step {step + 1}"
        assert_close_weights(dist.network.get_weights(), ref.network.get_weights())
        seg = dist.state(numpy_backend).context.segments[0]
        assert (mpi.shared is not None and mpi.shared.find(seg.grad) is not None) == (mode != "0" and comm.size > 1)
        # rank 0's saved optimizer state is the whole state, every rank reads the same one
        state = dist.state_dict()
        want = ref.state_dict()
        assert state["step"] == want["step"] == 10
        for path, buffers in want["optimizer"].items():
            for name, value in buffers.items():
                assert rel_err(state["optimizer"][path][name], value) < 1e-5, (path, name)
        prints = comm.allgather_object({(p, n): v.tobytes() for p, b in state["optimizer"].items() for n, v in b.items()})
        assert all(p == prints[0] for p in prints)
    on_every_rank(body)


def test_sharded_checkpoint_resumes_bit_exactly_on_as_many_ranks_and_correctly_on_one(comm, on_every_rank,
                                                                                     numpy_backend, shared_tmp):
    def body():
        mpi = MPICommunicator(shared_memory="1")
        path = shared_tmp / "sharded3.safetensors"
        straight = Trainer(wide(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=mpi)
        run_steps(straight, comm, numpy_backend, range(3))
        if comm.rank == 0:
            jp.save(path, straight.network, straight)
        comm.barrier()
        run_steps(straight, comm, numpy_backend, range(3, 6))
        want = straight.network.get_weights()

        if comm.rank == 0:  # only rank 0 reads the checkpoint; the broadcast brings it to the others
            resumed = jp.load(path).trainer
            resumed.communicator = mpi
        else:
            resumed = Trainer(wide(seed=7), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=mpi)
        run_steps(resumed, comm, numpy_backend, range(3, 6))
        got = resumed.network.get_weights()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)

        ck = jp.load(path)
        alone = Trainer(ck.network, ck.trainer.loss, ck.trainer.optimizer, comm.size * B)
        alone.load_state_dict(ck.trainer.state_dict())
        run_steps(alone, comm, numpy_backend, range(3, 6), rows=comm.size * B)
        assert_close_weights(alone.network.get_weights(), want)
    on_every_rank(body)


def test_a_refused_sharded_step_changes_nothing_on_any_rank(comm, on_every_rank, numpy_backend):
    def body():
        mpi = MPICommunicator(shared_memory="1")
        trainer = Trainer(wide(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=mpi)
        run_steps(trainer, comm, numpy_backend, range(2))
        before, opt_before = trainer.network.get_weights(), trainer.state_dict()
        x, y = global_batch(2, comm.size * B)
        x, y = own_rows(comm, x), own_rows(comm, y)
        if comm.rank == comm.size - 1:
            x = np.full_like(x, 3e38)  # finite input, non-finite loss: refused on every rank
        with pytest.raises(NonFiniteError):
            trainer.train_minibatch(numpy_backend, x, y)
        after = trainer.network.get_weights()
        for name in before:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        state = trainer.state_dict()
        assert state["step"] == 2
        for path, buffers in opt_before["optimizer"].items():
            for name, value in buffers.items():
                np.testing.assert_array_equal(state["optimizer"][path][name], value)
        run_steps(trainer, comm, numpy_backend, range(3, 4))
        assert trainer.steps == 3 and replicas_identical(comm, trainer.network)
    on_every_rank(body)


class _SpreadComm:
    """COMM_WORLD as if every rank ran on a machine of its own (a node communicator of one)."""

    def __init__(self, comm):
        self._comm = comm

    def Split_type(self, *args, **kwargs):  # noqa: N802 - mpi4py's name
        return self._comm.Split(self._comm.rank, 0)

    def __getattr__(self, name):
        return getattr(self._comm, name)


def test_ranks_on_several_machines_take_mpi_allreduce(comm, on_every_rank, numpy_backend):
    def body():
        from mpi4py import MPI

        spread = MPICommunicator(_SpreadComm(MPI.COMM_WORLD))
        assert spread.shared is None and spread.shared_block(numpy_backend, 100, np.float32) is None
        dist = Trainer(wide(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=spread)
        ref = Trainer(wide(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), comm.size * B)
        run_steps(dist, comm, numpy_backend, range(4))
        run_steps(ref, comm, numpy_backend, range(4), rows=comm.size * B)
        assert replicas_identical(comm, dist.network)
        assert_close_weights(dist.network.get_weights(), ref.network.get_weights())
    on_every_rank(body)


def test_windows_of_dropped_trainers_are_freed(comm, on_every_rank, numpy_backend):
    def body():
        mpi = MPICommunicator(shared_memory="1")
        if mpi.shared is None:
            pytest.skip("one rank: no shared memory")
        counts = []
        for _ in range(4):
            trainer = Trainer(wide(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=mpi)
            run_steps(trainer, comm, numpy_backend, range(1))
            del trainer
            gc.collect()
            counts.append(len(mpi.shared._blocks))
        assert counts[-1] == counts[0] == 3, counts  # one gradient block and two Adam buffers live
    on_every_rank(body)


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="JUICEPY_SHARED_MEMORY"):
        MPICommunicator(shared_memory="fast")
