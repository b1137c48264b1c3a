"""Trainer: forward, loss, backward and optimizer update for a fixed batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import arguments
from ..backends import backend as get_backend
from ..backends.base import host_all_finite
from ..distributed import Communicator
from ..errors import NonFiniteError, WeightsError
from ..net.context import Context
from ..net.replay import GraphReplay, graphs_wanted
from .data_parallel import DataParallel
from .metrics import accuracy
from .optimizer import Optimizer, OptimizerState


@dataclass(eq=False)
class EvalState:
    """Buffers for computing the loss without training: an eval-mode context and loss buffers."""

    context: Context
    targets: object
    losses: object
    loss_sum: object
    dx: object


@dataclass(eq=False)
class TrainState:
    """What a trainer keeps on one backend: the context, target/loss buffers, optimizer state."""

    context: Context
    targets: object
    losses: object
    loss_sum: object
    optimizer: OptimizerState
    replay: GraphReplay | None = None  # the recorded step, on backends that capture graphs
    warmed: bool = False  # one step ran op by op here (a restored state has step > 0 but is cold)
    replicas_synced: bool = False  # rank 0's state went to every rank (data-parallel jobs)
    reduction: object = None  # gradients reduced bucket by bucket during the backward pass (NCCL)


class Trainer:
    """Trains ``network`` on minibatches of exactly ``batch_size`` rows.

    ``check_finite`` (on by default) refuses inputs holding NaN/Inf and a non-finite loss;
    every check runs before any weight or optimizer state changes.

    ``graphs`` (on by default; ``$JUICEPY_GRAPHS=0`` turns it off everywhere): on a backend that
    captures graphs (CUDA) the second step records forward, loss, backward and optimizer update
    as one graph and later steps replay it, with the same results as issuing every op.

    For tools, :meth:`run_training` / :meth:`run_inference` take a data source and return
    (loss, score) per step; :meth:`state_dict` / :meth:`load_state_dict` carry the optimizer
    state, the step and the dropout counter through checkpoints (``juicepy.save``).

    ``communicator`` (``juicepy.distributed.communicator()``): this trainer is one replica of a
    data-parallel job. ``batch_size`` is then per rank; before the first step every rank takes
    rank 0's weights and optimizer state; each step averages the gradients over ranks (the loss
    gradient carries the 1 / N, the allreduce sums) before the same update runs on every rank,
    and returns the loss averaged over ranks. A batch refused on one rank is refused on every
    rank. Graph replay is off in a job of more than one rank.
    """

    def __init__(self, network, loss, optimizer: Optimizer, batch_size: int, check_finite: bool = True,
                 graphs: bool = True, communicator=None):
        from ..layers.loss import Loss
        from ..net.network import Network

        arguments.instance("Trainer", "network", network, Network, "a juicepy.Network")
        arguments.instance("Trainer", "loss", loss, Loss, "a loss such as juicepy.layers.SoftmaxCrossEntropy()")
        arguments.instance("Trainer", "optimizer", optimizer, Optimizer, "an optimizer such as juicepy.train.Adam()")
        batch_size = arguments.integer("Trainer", "batch_size", batch_size, 1)
        check_finite = arguments.flag("Trainer", "check_finite", check_finite)
        graphs = arguments.flag("Trainer", "graphs", graphs)
        if communicator is not None:
            arguments.instance("Trainer", "communicator", communicator, Communicator,
                               "None or a juicepy.distributed.communicator()")
        loss.check_output(network.output_shape)
        self.network = network
        self.loss = loss
        self._optimizer = optimizer
        self.batch_size = batch_size
        self.check_finite = check_finite
        self.graphs = graphs
        self.communicator = communicator
        self._states: dict = {}  # backend -> TrainState (buffers kept for switching back)
        self._active = None  # the backend whose TrainState holds the current optimizer state
        self._eval_states: dict = {}
        self._pending_state: dict | None = None  # from load_state_dict, for the next new state

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Optimizer) -> None:
        """Another optimizer, before the first step only: the optimizer state (moments, step)
        belongs to the optimizer the steps ran with. Hyper-parameters may change any time."""
        if self._states or self._pending_state is not None:
            raise RuntimeError(f"Trainer.optimizer: cannot replace {self._optimizer!r} with {optimizer!r} after "
                               f"{self.steps} step(s); make a new Trainer (and load the weights into it)")
        self._optimizer = optimizer

    def state(self, backend) -> TrainState:
        """The training state on ``backend``, which becomes the trainer's current backend.

        One trainer keeps one optimizer state: when a step runs on another backend than the
        last one, the optimizer moments, the step and the dropout counter move there with the
        weights. A state whose network was released from its backend (``Network.release``) is
        made again, carrying them over."""
        backend = get_backend(backend)
        st = self._states.get(backend)
        if st is not None and backend is self._active and not st.context.stale:
            return st
        carried = self._carried_state()
        if st is None or st.context.stale:
            st = self._states[backend] = self._new_state(backend)
        if carried is not None:
            self._restore(backend, st, carried)
        st.replicas_synced = False  # a made or moved state goes to every rank again
        self._active, self._pending_state = backend, None
        return st

    def _carried_state(self) -> dict | None:
        """What a state made or moved to now starts from: the current backend's state, else
        one loaded with load_state_dict, else None (a fresh start)."""
        if self._active is not None:
            return self._host_state(self._active, self._states[self._active])
        return self._pending_state

    def _new_state(self, backend) -> TrainState:
        net, n = self.network, self.batch_size
        ctx = Context(net, backend, n, training=True, communicator=self.communicator)
        target_shape = (n,) + self.loss.target_shape(net.output_shape)
        return TrainState(
            reduction=self._replicas.overlapped(backend, ctx),
            context=ctx,
            targets=backend.empty(target_shape, self.loss.target_dtype(net.dtype)),
            losses=backend.empty((n,), net.dtype),
            loss_sum=backend.empty((1,), net.dtype),
            optimizer=self.optimizer.init_state(backend, ctx.segments, zeros=self._replicas.zeros(backend)),
            replay=GraphReplay(net, backend, training=True) if backend.can_capture else None,
        )

    def check_targets(self, targets, backend):
        on_device = backend.is_array(targets) and not isinstance(targets, np.ndarray)
        host = backend.to_host(targets) if on_device else np.asarray(targets)
        checked = self.loss.check_targets(host, self.network.output_shape, self.batch_size, self.network.dtype)
        if self.check_finite and checked.dtype.kind == "f" and not host_all_finite(checked):
            raise NonFiniteError("targets: contain NaN or Inf (the finite-input guard is on)")
        return targets if on_device and checked.dtype == targets.dtype else checked

    def train_minibatch(self, backend, inputs, targets):
        """One step; returns (mean loss as a float, the outputs as a backend array).

        The outputs array belongs to the context and is overwritten by the next step. A step
        that fails or is refused (non-finite loss with ``check_finite``) changes nothing: not
        the weights, the buffers layers update (BatchNorm's statistics), the optimizer state,
        the step or the dropout counter. Steps hold ``network.lock``, so a checkpoint taken
        from another thread sees whole steps only.
        """
        backend = get_backend(backend)
        replicas = self._replicas

        def check():
            self.optimizer.check()  # hyper-parameters may have been changed since the last step
            return self._checked_batch(backend, inputs, targets)

        xs, targets = replicas.checked(check, "training step")
        with self.network.lock:
            # a first step made the state (or moved it here): a failed one leaves the trainer
            # as it was, its state_dict included
            before = self._active, self._pending_state, self._states.get(backend)
            st = self.state(backend)
            try:
                return self._step(backend, st, xs, targets)
            except BaseException:
                self._active, self._pending_state = before[:2]
                if before[2] is None:
                    del self._states[backend]
                else:
                    self._states[backend] = before[2]
                raise

    def _step(self, backend, st: TrainState, xs, targets):
        """train_minibatch's step on ``st``: a failure restores the weights, buffers and counters."""
        replicas = self._replicas
        ctx, opt = st.context, st.optimizer
        ctx.check_lr_mults()
        if not st.replicas_synced:
            replicas.synchronize(backend, self.network, ctx, opt)
            st.replicas_synced = True
        self._load_batch(backend, ctx, st.targets, xs, targets)
        ctx.save_state()
        opt_step = opt.step
        try:
            replay = graphs_wanted(self.graphs, backend) and not replicas.active
            loss = self._replayed_step(backend, st) if replay else None
            eager = loss is None
            if eager:
                ctx.forward()
                count = self._loss_to_device(backend, st, replicas.grad_scale)
                # Alone, the backward pass is queued before the loss is read back, so that an
                # asynchronous backend runs it while the host waits; it changes no state the
                # refusal below would have to undo. In a data-parallel job the ranks agree on
                # the loss first: a refused step must not have started the gradients' reduction.
                backward_first = not replicas.active
                if backward_first:
                    ctx.backward()
                loss = replicas.mean(float(backend.to_host(st.loss_sum)[0]) / count)
                if self.check_finite and not math.isfinite(loss):
                    self._refuse(loss, st)
                if not backward_first:
                    if st.reduction is not None:
                        st.reduction.arm()
                    ctx.backward()
                replicas.update(backend, self.optimizer, opt, ctx.segments, st.reduction)
        except BaseException:
            if st.reduction is not None:
                st.reduction.disarm()
            ctx.restore_state()
            opt.step = opt_step
            raise
        st.warmed = st.warmed or eager
        for seg in ctx.segments:
            for p in seg.params:
                p.mark_written(backend)
        return loss, ctx.output()

    def evaluate_minibatch(self, backend, inputs, targets):
        """Loss of one batch in eval mode (no dropout, no update); returns (mean loss, outputs).
        In a data-parallel job the loss is the mean over ranks."""
        backend = get_backend(backend)
        xs, targets = self._replicas.checked(lambda: self._checked_batch(backend, inputs, targets), "evaluation")
        with self.network.lock:
            st = self._eval_states.get(backend)
            if st is None or st.context.stale:
                net, n = self.network, self.batch_size
                ctx = Context(net, backend, n, training=False)
                st = self._eval_states[backend] = EvalState(
                    context=ctx,
                    targets=backend.empty((n,) + self.loss.target_shape(net.output_shape), self.loss.target_dtype(net.dtype)),
                    losses=backend.empty((n,), net.dtype), loss_sum=backend.empty((1,), net.dtype),
                    dx=backend.empty((n,) + net.output_shape, net.dtype))
            ctx = st.context
            self._load_batch(backend, ctx, st.targets, xs, targets)
            ctx.forward()
            count = self._summed_loss(backend, ctx, st.targets, st.losses, st.loss_sum, st.dx)
            return self._replicas.mean(float(backend.to_host(st.loss_sum)[0]) / count), ctx.output()

    @property
    def _replicas(self) -> DataParallel:
        return DataParallel(self.communicator)

    def _checked_batch(self, backend, inputs, targets):
        """Validate a batch (raises before anything changes); returns (inputs list, targets)."""
        xs = self.network.check_inputs(inputs, backend, self.batch_size, check_finite=self.check_finite)
        return xs, self.check_targets(targets, backend)

    @staticmethod
    def _load_batch(backend, ctx, target_buffer, xs, targets) -> None:
        ctx.set_inputs(xs)
        if backend.is_array(targets):
            backend.copy(targets, target_buffer)
        else:
            backend.write(target_buffer, targets)

    def _summed_loss(self, backend, ctx, targets, losses, loss_sum, dx, grad_scale: float = 1.0) -> int:
        """Per-row losses, d(mean loss)/d(output) x ``grad_scale`` into dx and their sum into
        loss_sum, on the device; returns the count the mean divides by."""
        count = self.loss.count(self.batch_size, self.network.output_shape)
        self.loss.compute(backend, ctx.output(), targets, losses, dx, grad_scale / count, ctx.ws)
        backend.sum_all(losses, loss_sum)
        return count

    # ------------------------------------------------------ tool interface
    def score(self, outputs, targets) -> float | None:
        """The step's score for tools: accuracy when the loss takes class labels, else None."""
        if self.loss.target_shape(self.network.output_shape) != ():
            return None
        return accuracy(np.asarray(outputs), np.asarray(targets))

    def run_training(self, backend, data, n_steps: int) -> list[tuple[float, float | None]]:
        """Train ``n_steps`` minibatches from ``data``; returns (loss, score) per step.

        ``data`` is a Dataset (its shuffled batches, epoch after epoch) or any re-iterable of
        (inputs, targets) batches of ``batch_size`` rows, restarted when it runs out.
        """
        return self._run(self.train_minibatch, backend, data, n_steps)

    def run_inference(self, backend, data, n_steps: int) -> list[tuple[float, float | None]]:
        """Evaluate ``n_steps`` minibatches from ``data`` (eval mode, weights unchanged);
        returns (loss, score) per step. ``data`` as in :meth:`run_training`."""
        return self._run(self.evaluate_minibatch, backend, data, n_steps)

    def _run(self, step, backend, data, n_steps: int) -> list[tuple[float, float | None]]:
        backend = get_backend(backend)
        results = []
        for x, y in self._batches(data, n_steps):
            loss, outputs = step(backend, x, y)
            results.append((loss, self.score(backend.to_host(outputs), y)))
        return results

    def _batches(self, data, n_steps: int):
        arguments.integer("Trainer", "n_steps", n_steps, 0)
        epoch, made = 0, 0
        while made < n_steps:
            source = (data.batches(self.batch_size, epoch=epoch, **self._replicas.shard)
                      if hasattr(data, "batches") else iter(data))
            before = made
            for batch in source:
                if made == n_steps:
                    return
                yield batch
                made += 1
            if made == before:
                raise ValueError("the data source yielded no batch")
            epoch += 1

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Host copies of the training state: ``step`` (optimizer steps), ``dropout_step`` (the
        counter of the random stream) and ``optimizer``: {param path: {state name: array}}
        (torch names: exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer)."""
        with self.network.lock:
            if self._active is None:
                pending = self._pending_state
                return _copied(pending) if pending is not None else {"step": 0, "dropout_step": 0, "optimizer": {}}
            return self._host_state(self._active, self._states[self._active])

    def snapshot(self) -> tuple[dict, dict]:
        """(network weights, :meth:`state_dict`) of one and the same step, even while another
        thread trains (what ``juicepy.save`` writes)."""
        with self.network.lock:
            return self.network.get_weights(), self.state_dict()

    def _host_state(self, backend, st: TrainState) -> dict:
        paths = {id(p): path for path, p in self.network.params.items()}
        optimizer = {}
        replicas = self._replicas
        for seg, buffers in zip(st.context.segments, st.optimizer.buffers):
            for name, flat in buffers.items():
                # after a sharded data-parallel update each rank's buffers are current in its part only
                host = replicas.host_buffer(backend, flat) if st.replicas_synced else None
                if host is None:
                    host = backend.to_host(flat)
                for p, off in zip(seg.params, seg.offsets):
                    optimizer.setdefault(paths[id(p)], {})[name] = host[off:off + p.size].reshape(p.shape).copy()
        return {"step": st.optimizer.step, "dropout_step": st.context.step, "optimizer": optimizer}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (checked first) into the current state, or into
        the first one made when no step ran yet."""
        self._check_state(state)
        state = _copied(state)  # later changes to the caller's arrays do not reach the trainer
        with self.network.lock:
            if self._active is None:
                self._pending_state = state
            else:
                st = self._states[self._active]
                self._restore(self._active, st, state)
                st.replicas_synced = False

    def _check_state(self, state: dict) -> None:
        for counter in ("step", "dropout_step"):
            arguments.integer("load_state_dict", counter, state.get(counter, 0), 0)
        trainable = self.network.trainable_params()
        optimizer = state.get("optimizer", {})
        unknown = [k for k in optimizer if k not in trainable]
        if unknown:
            raise WeightsError(f"optimizer state for unknown param(s) {', '.join(unknown)}")
        kept = ", ".join(self.optimizer.state_names) or "no state"
        for path, buffers in optimizer.items():
            for name, value in buffers.items():
                if name not in self.optimizer.state_names:
                    raise WeightsError(f"optimizer state: {path}.{name}: {type(self.optimizer).__name__} keeps {kept}")
                if tuple(np.shape(value)) != trainable[path].shape:
                    raise WeightsError(f"optimizer state: {path}.{name} expects shape {trainable[path].shape}, "
                                       f"got {tuple(np.shape(value))}")
        if int(state.get("step", 0)) > 0:
            for path, p in trainable.items():
                for name in self.optimizer.state_names:
                    value = optimizer.get(path, {}).get(name)
                    if value is None:
                        raise WeightsError(f"optimizer state: {path!r} misses {name!r} "
                                           f"({type(self.optimizer).__name__} keeps {', '.join(self.optimizer.state_names)})")

    def _restore(self, backend, st: TrainState, state: dict) -> None:
        paths = {id(p): path for path, p in self.network.params.items()}
        optimizer = state.get("optimizer", {})
        for seg, buffers in zip(st.context.segments, st.optimizer.buffers):
            for name, flat in buffers.items():
                host = np.zeros(seg.size, flat.dtype)
                for p, off in zip(seg.params, seg.offsets):
                    value = optimizer.get(paths[id(p)], {}).get(name)
                    if value is not None:
                        host[off:off + p.size] = np.asarray(value).reshape(-1)
                backend.write(flat, host)
        st.optimizer.step = int(state.get("step", 0))
        st.context.step = int(state.get("dropout_step", 0))
        st.warmed = False  # a recording may bake in what differs at this step (SGD's first step)

    def _refuse(self, loss: float, st: TrainState):
        raise NonFiniteError(f"loss is {loss} at step {st.optimizer.step + 1}; the step was refused: weights, "
                             f"buffers, optimizer state and counters were left unchanged (check_finite guard)")

    def _loss_to_device(self, backend, st: TrainState, grad_scale: float = 1.0) -> int:
        """Loss, output gradient (times ``grad_scale``, DataParallel.grad_scale) and the summed
        loss in st.loss_sum; returns the mean's count."""
        ctx = st.context
        ctx.begin_backward()
        return self._summed_loss(backend, ctx, st.targets, st.losses, st.loss_sum, ctx.loss_grad(), grad_scale)

    def _replayed_step(self, backend, st: TrainState) -> float | None:
        """The step as a replayed graph; None where it must run op by op (first step, failed capture).

        The recording bakes in the hyperparameters (a change records again); the dropout counter
        and optimizer step advance through the replay's shift. With check_finite the optimizer
        kernels skip the update on device when the summed loss is not finite, so a refused
        step leaves weights and optimizer state unchanged, as the op-by-op path does.
        """
        rep, ctx, opt = st.replay, st.context, st.optimizer
        if rep is None or rep.failure is not None or not st.warmed:
            return None  # the first step runs op by op: it fills workspaces and compiles kernels
        key = (self.check_finite, repr(self.optimizer.hyperparams()), ctx.step - opt.step)
        if not rep.ready(key):
            ctx_step, opt_step = ctx.step, opt.step
            guard = st.loss_sum if self.check_finite else None

            def body():
                ctx.forward()
                self._loss_to_device(backend, st)
                ctx.backward()
                self.optimizer.step(backend, opt, ctx.segments, guard=guard)

            recorded = rep.record(key, body)
            ctx.step, opt.step = ctx_step, opt_step  # recording ran the host side only
            if not recorded:
                return None
            rep.base_step = opt_step
        rep.replay(opt.step - rep.base_step)
        ctx.step += 1
        opt.step += 1
        loss = float(backend.to_host(st.loss_sum)[0]) / self.loss.count(self.batch_size, self.network.output_shape)
        if self.check_finite and not math.isfinite(loss):
            self._refuse(loss, st)  # the caller restores the counters
        return loss

    @property
    def steps(self) -> int:
        """Optimizer steps taken (0 before the first), counting those of a loaded state."""
        if self._active is not None:
            return self._states[self._active].optimizer.step
        return int(self._pending_state["step"]) if self._pending_state is not None else 0

    def __repr__(self) -> str:
        return f"<Trainer {self.loss!r} {self.optimizer!r} batch_size={self.batch_size}>"


def _copied(state: dict) -> dict:
    """A copy of a training state dict whose arrays the caller cannot change any more."""
    return {**state, "optimizer": {path: {name: np.array(value, copy=True) for name, value in buffers.items()}
                                   for path, buffers in state.get("optimizer", {}).items()}}
