"""Gradient reduction overlapped with the backward pass (juicepy.distributed.overlap): bucket
boundaries, the hooks' place in the backward plan, NCCL's streams and events (on the CUDA
emulator, tests/cuda_emulator, with the fake NCCL, tests/fake_nccl.py), and training through it
equal to one process with the global batch. No real GPU ran these: the emulator executes every
operation when it is submitted, so the tests check the order of what is issued (events recorded
on the compute stream, waited for on the reduction stream, before the allreduce), not timing."""

import numpy as np
import pytest

import juicepy as jp
from juicepy import layers as L
from juicepy.distributed import NCCLCommunicator, plan_buckets
from juicepy.distributed.overlap import OverlappedReduction
from juicepy.net.context import Context
from juicepy.train import SGD, Adam, Trainer
from juicepy.errors import DistributedError, NonFiniteError
from replicas import B, assert_close_weights, fingerprint, global_batch, own_rows, replicas_identical


def deep_mlp(seed=0):
    return jp.Network(L.Sequential(L.Flatten(), L.Linear(16), L.ReLU(), L.Linear(12), L.ReLU(), L.Linear(8),
                                   L.ReLU(), L.Linear(3)), input_shape=(2, 3, 3), seed=seed)


class Recorder(OverlappedReduction):
    """Buckets whose 'reduction' snapshots the bucket's gradients when it starts."""

    def __init__(self, backend, context, bucket_bytes, log):
        super().__init__(backend, context, bucket_bytes)
        self.log, self.snapshots = log, []

    def start(self, i):
        self.snapshots.append(np.array(self.buckets[i].view, copy=True))

    def finish(self):
        pass


def log_backward_ops(ctx, log, monkeypatch):
    """Every placement's backward appends ("op", its path) to ``log`` when it runs."""
    for layer, nctx in ctx.plan:
        def logged(backend, c, *rest, _layer=layer, _run=type(layer).compute_gradients):
            log.append(("op", c.path))
            return _run(_layer, backend, c, *rest)
        monkeypatch.setattr(layer, "compute_gradients", logged)


@pytest.mark.parametrize("bucket_bytes", [1, 400, 700, 10**9])
def test_buckets_tile_each_block_and_start_once_their_gradients_are_final(numpy_backend, monkeypatch, bucket_bytes):
    net = deep_mlp()
    monkeypatch.setattr(Context, "fuse", False)  # one placement per backward op: the log names each
    ctx = net.context(numpy_backend, 4, training=True)
    log = []
    log_backward_ops(ctx, log, monkeypatch)
    rec = Recorder(numpy_backend, ctx, bucket_bytes, log)
    seg = ctx.segments[0]
    # contiguous, covering the block, each (but the last from the block's start) at least bucket_bytes
    spans = sorted((b.lo, b.hi) for b in rec.buckets)
    assert spans[0][0] == 0 and spans[-1][1] == seg.size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all((b.hi - b.lo) * 4 >= bucket_bytes for b in rec.buckets if b.lo > 0)
    if bucket_bytes == 10**9:
        assert len(rec.buckets) == 1
    if bucket_bytes == 1:  # a bucket per param, the last layer's first
        assert len(rec.buckets) == len(seg.params)
    assert [b.ready for b in rec.buckets] == sorted(b.ready for b in rec.buckets)

    rng = np.random.default_rng(0)
    ctx.set_inputs([rng.standard_normal((4, 2, 3, 3)).astype(np.float32)])
    ctx.forward()
    ctx.begin_backward()
    numpy_backend.write(ctx.loss_grad(), rng.standard_normal((4, 3)).astype(np.float32))
    rec.log = log
    rec.arm()
    ctx.backward()
    rec.wait()
    # each bucket was handed on holding its final gradients: nothing wrote them after its hook
    for b, snap in zip(rec.buckets, rec.snapshots):
        np.testing.assert_array_equal(snap, np.asarray(b.view))
    # and as early as possible: right after the op that wrote the bucket's last gradient, before
    # the backward of any layer in front of it ran
    owner = {}
    for layer, nctx in ctx.plan:
        for p in nctx.node.descriptor.params.values():
            owner[id(p)] = nctx.path
    ops = [entry[1] for entry in log if entry[0] == "op"]
    for i, b in enumerate(rec.buckets):
        at = log.index(("start", i))
        ran = [entry[1] for entry in log[:at] if entry[0] == "op"]
        inside = [p for p, off in zip(seg.params, seg.offsets) if b.lo <= off < b.hi]
        last_writer = max(ops.index(owner[id(p)]) for p in inside)
        assert ran == ops[:last_writer + 1], (i, ran)
    assert log[-1] == ("wait", len(rec.buckets))


def test_a_hook_cannot_take_a_gradient_a_later_op_still_writes(numpy_backend):
    """A layer writing a gradient its placement does not hold would change a bucket already
    being reduced: the context refuses instead of reducing stale values."""
    net = deep_mlp()
    ctx = net.context(numpy_backend, 4, training=True)
    first = net.param("1.weight")
    ctx._grad_final_op[ctx._param_slot[first]] = 0  # as if the last op finished it
    ctx.add_backward_hook(0, lambda: None)
    ctx.set_inputs([np.zeros((4, 2, 3, 3), np.float32)])
    ctx.forward()
    ctx.begin_backward()
    numpy_backend.fill(ctx.loss_grad(), 1.0)
    with pytest.raises(RuntimeError, match="gradient of 1.weight"):
        ctx.backward()


def emulated_cuda():
    if "cuda" not in jp.available_backends():
        pytest.skip("no CUDA backend here (the emulator needs a C++ compiler)")
    import cupy

    if not hasattr(cupy, "emulator"):
        # the fake NCCL reads device pointers as host memory: on a GPU the real NCCL's
        # overlapped step is checked by the acceptance command's own step instead
        pytest.skip("real CuPy: the emulated overlap does not apply; covered by tests/gpu/multi_gpu_step.py")
    return jp.backend("cuda"), cupy


@pytest.mark.parametrize("opt", ["adam", "sgd-momentum"])
def test_nccl_overlap_on_a_reduction_stream_trains_like_one_process(comm, on_every_rank, monkeypatch, opt):
    """CUDA ranks on the emulator, NCCL faked over MPI, 200-byte buckets (several per layer):
    each bucket's allreduce goes on the reduction stream after an event the compute stream
    recorded, before the backward of earlier layers; the update waits for the reduction stream;
    10 steps equal one process with the double batch and the replicas stay bit-identical; a
    batch refused on one rank changes nothing on any rank and training goes on."""
    pytest.importorskip("mpi4py", reason="the NCCL communicator needs mpi4py (pip install '.[distributed]')")
    import fake_nccl

    backend, cupy = emulated_cuda()
    make_opt = {"adam": lambda: Adam(lr=1e-2), "sgd-momentum": lambda: SGD(lr=5e-2, momentum=0.9)}[opt]

    def body():
        log = []
        monkeypatch.setattr(fake_nccl, "CALLS", log)
        monkeypatch.setattr(cupy.emulator, "event_log", log)
        nccl = NCCLCommunicator(nccl=fake_nccl, bucket_bytes=200)
        dist = Trainer(deep_mlp(seed=comm.rank), L.SoftmaxCrossEntropy(), make_opt(), B, communicator=nccl)
        ref = Trainer(deep_mlp(), L.SoftmaxCrossEntropy(), make_opt(), comm.size * B)
        n = comm.size * B
        with cupy.emulator.scheduled("forward"):
            for step in range(10):
                x, y = global_batch(step, n)
                if step == 1:
                    del log[:]
                    st = dist.state(backend)
                    red = st.reduction
                    assert (red is not None) == (comm.size > 1)
                    if red is not None:
                        red.log = log
                    for k in range(st.context.backward_ops + 1):  # after the reduction's own hooks
                        st.context.add_backward_hook(k, lambda k=k: log.append(("after", k)))
                loss, _ = dist.train_minibatch(backend, own_rows(comm, x), own_rows(comm, y))
                if step == 1 and red is not None:
                    check_stream_order(log, red, st.context)
                    red.log = None
                ref_loss, _ = ref.train_minibatch(backend, x, y)
                assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (step, loss, ref_loss)
                if step == 4:  # a NaN on the last rank only: refused everywhere, nothing changed
                    before, steps = fingerprint(dist.network), dist.steps
                    bad = own_rows(comm, x).copy()
                    if comm.rank == comm.size - 1:
                        bad[0, 0, 0, 0] = np.nan
                    with pytest.raises((DistributedError, NonFiniteError)):
                        dist.train_minibatch(backend, bad, own_rows(comm, y))
                    assert fingerprint(dist.network) == before and dist.steps == steps
                assert replicas_identical(comm, dist.network), f"replicas differ after step {step + 1}"
        assert_close_weights(dist.network.get_weights(), ref.network.get_weights())
    on_every_rank(body)


def check_stream_order(log, red, ctx):
    compute = 0  # the emulator's default stream: where the backend issues its work
    side = red.stream.ptr
    assert side != compute
    reduces = [entry for entry in log if entry[0] == "allReduce"]
    assert [r[1] for r in reduces] == [b.hi - b.lo for b in red.buckets]
    assert len(red.buckets) > 3 and all(r[3] == side for r in reduces)  # all on the reduction stream
    for i, b in enumerate(red.buckets):
        at = log.index(("start", i))
        event = red.ready_events[i].id
        call = [k for k, entry in enumerate(log) if entry[0] == "allReduce"][i]
        # recorded on the compute stream, waited for on the reduction stream, then reduced
        rec, wait = log.index(("record", compute, event)), log.index(("wait", side, event))
        assert rec < wait < call < at
        # issued right after the op that finished the bucket, before the next backward op
        assert b.ready == max(ctx.grad_final_op(p) for p, off in zip(ctx.segments[0].params, ctx.segments[0].offsets)
                              if b.lo <= off < b.hi)
        assert (b.ready == 0 or log.index(("after", b.ready - 1)) < rec) and call < log.index(("after", b.ready))
    # the update (after "wait") is ordered after the reduction stream's work
    done = red.done_event.id
    assert log.index(("record", side, done)) < log.index(("wait", compute, done)) < log.index(("wait", len(red.buckets)))
    assert log.index(("record", side, done)) > max(k for k, entry in enumerate(log) if entry[0] == "allReduce")


def zoo():
    from juicepy.models import build_model

    return {
        "lenet": lambda: jp.Network(build_model("lenet", (1, 12, 12), 4), (1, 12, 12)),
        "resnet": lambda: jp.Network(build_model("resnet", (3, 8, 8), 4, widths=(4, 8), blocks_per_stage=1), (3, 8, 8)),
        "lstm": lambda: jp.Network(build_model("lstm", (5, 3), 4, hidden=6, num_layers=2), (5, 3)),
        "gru": lambda: jp.Network(build_model("gru", (5, 3), 4, hidden=6), (5, 3)),
        "bn-mlp": lambda: jp.Network(L.Sequential(L.Linear(8), L.BatchNorm1d(), L.ReLU(), L.Linear(4)), (6,)),
        "tied": tied,  # one weight in two placements: final after the earlier layer's backward
    }


def tied():
    enc = L.Linear(4)
    return jp.Network(L.Sequential(enc, L.Tanh(), L.TiedLinear(enc), L.Tanh(), L.Linear(4)), (6,))


@pytest.mark.parametrize("name", ["lenet", "resnet", "lstm", "gru", "bn-mlp", "tied"])
@pytest.mark.parametrize("fuse", [True, False])
def test_every_model_writes_each_gradient_no_later_than_its_final_op(numpy_backend, monkeypatch, name, fuse):
    """The final op of each gradient comes from the params each placement holds; for every
    model of the zoo (fused or not) no layer writes a gradient after it (the context would
    raise) and a bucket per param snapshotted at its hook holds the end result."""
    monkeypatch.setattr(Context, "fuse", fuse)
    net = zoo()[name]()
    ctx = net.context(numpy_backend, 3, training=True)
    rec = Recorder(numpy_backend, ctx, 1, [])
    rng = np.random.default_rng(1)
    ctx.set_inputs([rng.standard_normal((3,) + net.input_shape).astype(np.float32)])
    ctx.forward()
    ctx.begin_backward()
    numpy_backend.write(ctx.loss_grad(), rng.standard_normal((3, 4)).astype(np.float32))
    rec.arm()
    ctx.backward()
    rec.wait()
    assert len(rec.buckets) == sum(len(seg.params) for seg in ctx.segments)
    if name == "tied":  # the shared weight's gradient is final only after the first placement's backward
        assert ctx.grad_final_op(net.param("0.weight")) == ctx.backward_ops - 1
    for b, snap in zip(rec.buckets, rec.snapshots):
        np.testing.assert_array_equal(snap, np.asarray(b.view))
