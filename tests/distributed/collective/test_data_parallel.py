"""Data-parallel training: N ranks with batch B each against one process with batch N*B.

Every rank also builds the single-process reference itself (no communicator), so one run
under ``mpiexec -n 2`` compares both; in the plain test run N is 1.
"""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.data import Dataset
from juicepy.errors import DistributedError, NonFiniteError, ShapeError
from juicepy.train import SGD, Adam, Trainer
from juicepy.train.loop import evaluate, fit_epoch
from replicas import B, assert_close_weights, fingerprint, global_batch, own_rows, rel_err, replicas_identical, run_steps

OPTIMIZERS = {"adam": lambda: Adam(lr=1e-2), "sgd-momentum": lambda: SGD(lr=5e-2, momentum=0.9)}


def mlp(seed=0, dropout=0.0):
    parts = [L.Flatten(), L.Linear(16), L.ReLU()] + ([L.Dropout(dropout)] if dropout else []) + [L.Linear(3)]
    return jp.Network(L.Sequential(*parts), input_shape=(2, 3, 3), seed=seed)


def conv_bn(seed=0):
    return jp.Network(L.Sequential(L.Conv2d(4, 3, padding=1, bias=False), L.BatchNorm2d(sync=True), L.ReLU(),
                                   L.Flatten(), L.Linear(3)), input_shape=(2, 3, 3), seed=seed)


NETS = {"mlp": mlp, "conv-bn-sync": conv_bn}


def train_side_by_side(comm, backend, dist, ref, steps=10):
    """``dist`` (batch B per rank) and ``ref`` (one process, the global batch) on the same global
    batches; the replicas must be bit-identical after every step and match ``ref`` at the end."""
    n = comm.size * B
    for step in range(steps):
        x, y = global_batch(step, n)
        loss, _ = dist.train_minibatch(backend, own_rows(comm, x), own_rows(comm, y))
        ref_loss, _ = ref.train_minibatch(backend, x, y)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (step, loss, ref_loss)
        assert replicas_identical(comm, dist.network), f"replicas differ after step {step + 1}"
    assert_close_weights(dist.network.get_weights(), ref.network.get_weights())


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_ranks_with_batch_b_match_one_process_with_the_global_batch(comm, on_every_rank, numpy_backend, net, opt):
    def body():
        dist = Trainer(NETS[net](), L.SoftmaxCrossEntropy(), OPTIMIZERS[opt](), B, communicator=comm)
        ref = Trainer(NETS[net](), L.SoftmaxCrossEntropy(), OPTIMIZERS[opt](), comm.size * B)
        train_side_by_side(comm, numpy_backend, dist, ref)
        got, want = dist.network.get_weights(), ref.network.get_weights()
        if net == "conv-bn-sync":  # running statistics of the global batch, equal on every rank
            assert int(got["1.num_batches_tracked"]) == 10
            assert rel_err(got["1.running_var"], want["1.running_var"]) < 1e-5
    on_every_rank(body)


def test_per_rank_batch_norm_differs_from_synchronised(comm, on_every_rank, numpy_backend):
    """Without sync each rank normalises with its own statistics: the replicas' running
    statistics then differ (the documented default)."""
    if comm.size == 1:
        pytest.skip("needs two ranks (run by tests/distributed/test_launch.py)")

    def body():
        local = jp.Network(L.Sequential(L.Conv2d(4, 3, padding=1, bias=False), L.BatchNorm2d(), L.ReLU(),
                                        L.Flatten(), L.Linear(3)), input_shape=(2, 3, 3))
        trainer = Trainer(local, L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        x, y = global_batch(0, comm.size * B)
        trainer.train_minibatch(numpy_backend, own_rows(comm, x), own_rows(comm, y))
        means = comm.allgather_object(local.get_weights()["1.running_mean"])
        assert not np.array_equal(means[0], means[1])
    on_every_rank(body)


def test_rank_zero_state_reaches_every_rank_before_the_first_step(comm, on_every_rank, numpy_backend):
    def body():
        n = comm.size * B
        dist = Trainer(mlp(seed=comm.rank), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        ref = Trainer(mlp(seed=0), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), n)
        x, y = global_batch(0, n)
        dist.train_minibatch(numpy_backend, own_rows(comm, x), own_rows(comm, y))
        ref.train_minibatch(numpy_backend, x, y)
        assert replicas_identical(comm, dist.network)
        assert_close_weights(dist.network.get_weights(), ref.network.get_weights())
    on_every_rank(body)


def test_checkpoint_resumes_bit_exactly_on_as_many_ranks_and_correctly_on_one(comm, on_every_rank, numpy_backend,
                                                                              shared_tmp):
    def body():
        path = shared_tmp / "step3.safetensors"
        straight = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        run_steps(straight, comm, numpy_backend, range(3))
        if comm.rank == 0:
            jp.save(path, straight.network, straight)
        comm.barrier()
        run_steps(straight, comm, numpy_backend, range(3, 6))
        want = straight.network.get_weights()

        # same number of ranks; only rank 0 reads the checkpoint: the others start from fresh
        # weights and no optimizer state, and must get rank 0's by broadcast
        if comm.rank == 0:
            resumed = jp.load(path).trainer
            resumed.communicator = comm
        else:
            resumed = Trainer(mlp(seed=7), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        run_steps(resumed, comm, numpy_backend, range(3, 6))
        got = resumed.network.get_weights()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert resumed.steps == 6

        # one process with the global batch continues the same run
        ck = jp.load(path)
        alone = Trainer(ck.network, ck.trainer.loss, ck.trainer.optimizer, comm.size * B)
        alone.load_state_dict(ck.trainer.state_dict())
        run_steps(alone, comm, numpy_backend, range(3, 6), rows=comm.size * B)
        assert_close_weights(alone.network.get_weights(), want)
    on_every_rank(body)


@pytest.mark.parametrize("bad", ["shape", "nan", "nan-loss"])
def test_bad_input_on_one_rank_fails_every_rank_and_changes_nothing(comm, on_every_rank, numpy_backend, bad):
    def body():
        trainer = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        run_steps(trainer, comm, numpy_backend, range(2))
        before = trainer.network.get_weights()
        opt_before = trainer.state_dict()
        x, y = own_rows(comm, global_batch(2, comm.size * B)[0]), own_rows(comm, global_batch(2, comm.size * B)[1])
        culprit = comm.rank == comm.size - 1
        if culprit and bad == "shape":
            x = np.zeros((B, 2, 3, 4), np.float32)
        elif culprit and bad == "nan":
            x = x.copy()
            x[1, 0, 0, 0] = np.nan
        elif culprit:
            x = np.full_like(x, 3e38)  # finite input, non-finite loss
        own = {"shape": ShapeError, "nan": NonFiniteError, "nan-loss": NonFiniteError}[bad]
        expected = own if culprit or bad == "nan-loss" else DistributedError
        with pytest.raises(expected) as info:
            trainer.train_minibatch(numpy_backend, x, y)
        if expected is DistributedError:
            assert f"rank {comm.size - 1} failed: {own.__name__}" in str(info.value)
        after = trainer.network.get_weights()
        for name in before:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        assert trainer.state_dict()["step"] == opt_before["step"] == 2
        for path, buffers in opt_before["optimizer"].items():
            for name, value in buffers.items():
                np.testing.assert_array_equal(trainer.state_dict()["optimizer"][path][name], value)
        run_steps(trainer, comm, numpy_backend, range(3, 4))  # the ranks are still in step
        assert trainer.steps == 3 and replicas_identical(comm, trainer.network)
    on_every_rank(body)


def test_dropout_streams_differ_per_rank_and_repeat(comm, on_every_rank, numpy_backend):
    def body():
        x, y = global_batch(0, B)  # the same rows on every rank

        def first_outputs():
            trainer = Trainer(mlp(dropout=0.5), L.SoftmaxCrossEntropy(), SGD(lr=0.0), B, communicator=comm)
            _, out = trainer.train_minibatch(numpy_backend, x, y)
            return numpy_backend.to_host(out).copy()

        a, b = first_outputs(), first_outputs()
        np.testing.assert_array_equal(a, b)  # reproducible
        outs = comm.allgather_object(a)
        for r in range(1, comm.size):
            assert not np.array_equal(outs[r], outs[0]), f"rank {r} drew rank 0's dropout mask"
        alone = Trainer(mlp(dropout=0.5), L.SoftmaxCrossEntropy(), SGD(lr=0.0), B)
        np.testing.assert_array_equal(outs[0], numpy_backend.to_host(alone.train_minibatch(numpy_backend, x, y)[1]))
    on_every_rank(body)


def test_evaluation_is_reduced_over_ranks(comm, on_every_rank, numpy_backend):
    def body():
        n = comm.size * B
        dist = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(), B, communicator=comm)
        ref = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(), n)
        x, y = global_batch(5, n)
        loss, _ = dist.evaluate_minibatch(numpy_backend, own_rows(comm, x), own_rows(comm, y))
        want, _ = ref.evaluate_minibatch(numpy_backend, x, y)
        assert abs(loss - want) <= 1e-6 * abs(want)
        rng = np.random.default_rng(3)  # 37 rows: the shares differ by a row, each row counts once
        data = Dataset(rng.standard_normal((37, 2, 3, 3)).astype(np.float32), rng.integers(0, 3, 37))
        assert evaluate(dist.network, numpy_backend, data, comm) == evaluate(ref.network, numpy_backend, data)
    on_every_rank(body)


def test_an_epoch_over_rows_that_do_not_divide_evenly_ends_on_every_rank(comm, on_every_rank, numpy_backend):
    def body():
        rng = np.random.default_rng(4)
        data = Dataset(rng.standard_normal((41, 2, 3, 3)).astype(np.float32), rng.integers(0, 3, 41))
        trainer = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(), 4, communicator=comm)
        stats = fit_epoch(trainer, numpy_backend, data, epoch=1, progress=False)
        assert trainer.steps == -(-41 // comm.size) // 4
        assert 0 <= stats["accuracy"] <= 1 and np.isfinite(stats["loss"])
        results = trainer.run_training(numpy_backend, data, 2 * trainer.steps + 1)  # runs past an epoch
        assert len(results) == 2 * (-(-41 // comm.size) // 4) + 1
        assert replicas_identical(comm, trainer.network)
    on_every_rank(body)


def test_training_over_nccl_matches_one_process_with_the_global_batch(comm, on_every_rank, numpy_backend):
    """The NCCL communicator's path on a fake NCCL module (tests/fake_nccl.py, over MPI)."""
    pytest.importorskip("mpi4py", reason="the NCCL communicator needs mpi4py (pip install '.[distributed]')")
    import fake_nccl
    from juicepy.distributed import NCCLCommunicator

    def body():
        nccl = NCCLCommunicator(nccl=fake_nccl, stream=lambda: 0, pointer=lambda a: a.ctypes.data)
        dist = Trainer(mlp(seed=comm.rank), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=nccl)
        ref = Trainer(mlp(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), comm.size * B)
        train_side_by_side(comm, numpy_backend, dist, ref)
    on_every_rank(body)


@pytest.mark.parametrize("net", sorted(NETS))
def test_a_device_backend_stages_gradients_through_the_host(comm, on_every_rank, net):
    """OpenCL ranks (PoCL here): gradients and the sync-BatchNorm sums go through host buffers;
    the result matches one OpenCL process with the global batch."""
    if "opencl" not in jp.available_backends():
        pytest.skip("no OpenCL platform (pip install '.[opencl]')")

    def body():
        dist = Trainer(NETS[net](), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
        ref = Trainer(NETS[net](), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), comm.size * B)
        train_side_by_side(comm, jp.backend("opencl"), dist, ref, steps=5)
    on_every_rank(body)


def test_a_data_parallel_step_allocates_no_backend_buffers(comm, on_every_rank):
    """After the first step, steps with the gradient allreduce and sync-BatchNorm's reductions
    allocate nothing on the backend (device arrays go through host copies)."""
    def body():
        for name in [b for b in ("numpy", "opencl") if b in jp.available_backends()]:
            backend = jp.backend(name)
            trainer = Trainer(conv_bn(), L.SoftmaxCrossEntropy(), Adam(lr=1e-2), B, communicator=comm)
            run_steps(trainer, comm, backend, range(2))
            before = backend.allocations
            run_steps(trainer, comm, backend, range(2, 5))
            assert backend.allocations == before, (name, backend.allocations - before)
    on_every_rank(body)
