"""The OpenCL backend's inference forwards of the paired bench (LeNet-5 b64, the CIFAR CNN and
ResNet b32, as bench/test_bench_lenet.py and test_bench_cnn.py build them; `lenet-step`,
`cifar-step`, `resnet-step`: their training steps; `mlp-step`: the MLP 784-512-512-10 b128 Adam
step of bench/test_bench_mlp.py), two ways:

    python bench/ab_opencl_forward.py ab lenet,cifar cur,pool_vec=0 [ROUNDS]
        in one process, backends given as variants built side by side (`cur`: the defaults;
        `name=0|1[+name=0|1]`: the backend attribute `_name` set to False / True (a larger
        number: that count, as `group_runs=8`), such as the A/B switches `_pool_vec`, `_olanes`,
        `_winograd_relu`, `_group_runs`,
        `_direct8`, `_s2_narrow`, `_wino_halves`, `_weights_in_place`, `_wino_in_place`; an
        upper-case NAME=VALUE: that define for gemm.cl's and conv.cl's builds, such as
        SUBSAMPLE_STAGE=0 or CPU_PREFETCH=0; `numpy`: the NumPy backend),
        timed in alternating rounds of 4 forwards; prints each variant's median ms. Besides the
        networks, `conv:KEY` and `convfb:KEY` run bench/test_bench_conv.py's layers (forward, and
        forward + backward; KEY: the case's first word, and its second where that is a word:
        `depthwise-strided`, `resnet-strided`, `resnet-shortcut`).
    python bench/ab_opencl_forward.py kernels lenet [name=0|1 ...]
        the per-kernel event profile: each kernel's (name and global size) time from pyopencl's
        profiling events, summed per forward, medians of 9 forwards, in launch order.
    python bench/ab_opencl_forward.py kernel conv:depthwise-strided conv_depthwise_s2_k3 \
            cur,DW_PREFETCH=0 [BLOCKS]
        one kernel alone, with the sizes and arguments of its last launch in the work's pass
        (a kernel keeps its arguments between launches), per variant: 40 launches back to back
        ("queued"), then 40 each waited for ("single"), in BLOCKS blocks (30) with the variants'
        order shuffled per block; prints each variant's median ms a launch and its ratio to the
        first variant's.

Run from the repository root (it imports the bench modules); under the cpu lock where the
machine is shared. On PoCL, POCL_AFFINITY=1 (worker threads pinned) keeps a one-kernel loop from
switching between two speeds for hundreds of calls at a time (docs/opencl.md, session 52).
Event times include the driver's per-command overhead, so their total is above the forward's
wall time; compare kernels, not totals, with it.
"""
import collections
import random
import statistics
import sys
import time

sys.path.insert(0, "bench")

import test_bench_cnn as cnn  # noqa: E402
import test_bench_conv as conv  # noqa: E402
import test_bench_lenet as lenet  # noqa: E402
import test_bench_mlp as mlp  # noqa: E402

WORK = {"lenet": lenet.juicepy_forward,
        "cifar": lambda b: cnn.juicepy_forward(b, "cifar cnn 3x(conv-bn-relu-pool)"),
        "resnet": lambda b: cnn.juicepy_forward(b, "resnet 16-32-64"),
        # the training steps (forward, backward and Adam) of the same networks
        "lenet-step": lenet.juicepy_step,
        "cifar-step": lambda b: cnn.juicepy_step(b, "cifar cnn 3x(conv-bn-relu-pool)"),
        "resnet-step": lambda b: cnn.juicepy_step(b, "resnet 16-32-64"),
        # the MLP 784-512-512-10 b128 Adam step of bench/test_bench_mlp.py
        "mlp-step": mlp.juicepy_small_step}
for _case in conv.CASES:
    _words = _case.split(" ")
    _key = _words[0] + ("-" + _words[1] if _words[1].isalpha() else "")
    WORK["conv:" + _key] = lambda b, _c=_case: conv.juicepy_forward(b, _c)
    WORK["convfb:" + _key] = lambda b, _c=_case: conv.juicepy_fwd_bwd(b, _c)


def make(spec, queue_profiling=False):
    if spec == "numpy":
        from juicepy.backends.numpy import NumpyBackend
        return NumpyBackend()
    from juicepy.backends.opencl import OpenCLBackend
    b = OpenCLBackend()
    for switch in spec.split("+"):
        if switch != "cur":
            name, value = switch.split("=")
            if name.isupper():   # a define of the GEMM and convolution builds, set before any is built
                for build in ("gemm.cl", "gemm.cl:mr_alt", "conv.cl", "conv.cl:vec16"):
                    b._programs._defines.setdefault(build, {})[name] = value
                continue
            if not value.isdigit():
                raise SystemExit(f"variant {switch!r}: the value must be 0 or 1, or a count")
            setattr(b, "_" + name, value == "1" if value in ("0", "1") else int(value))
    if queue_profiling:
        import pyopencl as cl
        b.queue.finish()
        b.queue = cl.CommandQueue(b.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    return b


def ab(works, specs, rounds):
    variants = {s: make(s) for s in specs}
    for work in works:
        steps = {s: WORK[work](b) for s, b in variants.items()}
        times = {s: [] for s in specs}
        for _ in range(rounds):
            for s, step in steps.items():
                start = time.perf_counter()
                for _ in range(4):
                    step()
                variants[s].synchronize()
                times[s].append((time.perf_counter() - start) / 4)
        print(f"{work:8s} " + "  ".join(f"{s} {statistics.median(t) * 1e3:7.3f}" for s, t in times.items()),
              flush=True)


def kernels(work, switches):
    from juicepy.backends.opencl import programs
    events = []
    launch = programs._Launcher.__call__

    def recorded(self, queue, global_size, local_size, *args):
        event = launch(self, queue, global_size, local_size, *args)
        events.append((f"{self.kernel.function_name}{tuple(global_size)}", event))
        return event

    programs._Launcher.__call__ = recorded
    b = make("+".join(switches) or "cur", queue_profiling=True)
    step = WORK[work](b)
    step()
    b.synchronize()
    per = collections.defaultdict(list)
    for _ in range(9):
        events.clear()
        step()
        b.synchronize()
        total = collections.Counter()
        for name, event in events:
            total[name] += (event.profile.end - event.profile.start) * 1e-6
        for name, ms in total.items():
            per[name].append(ms)
    rows = [(statistics.median(v), k) for k, v in per.items()]
    print(f"{work} {' '.join(switches) or 'defaults'}: events {sum(r[0] for r in rows):.3f} ms")
    for ms, name in rows:
        print(f"  {ms:7.3f}  {name}")


def kernel_alone(work, name, specs, blocks):
    from juicepy.backends.opencl import programs
    launch, last = programs._Launcher.__call__, {}

    def recorded(self, queue, global_size, local_size, *args):
        if self.kernel.function_name == name:
            last[id(self)] = (self, tuple(global_size), tuple(local_size))
        return launch(self, queue, global_size, local_size, *args)

    programs._Launcher.__call__ = recorded
    runs = {}
    try:
        for spec in specs:
            b, before = make(spec), set(last)
            WORK[work](b)()
            b.synchronize()
            mine = [last[k] for k in last if k not in before]
            if not mine:
                raise SystemExit(f"{work} with {spec} launched no {name}")
            runs[spec] = (b, *mine[0])
    finally:
        programs._Launcher.__call__ = launch
    for mode, wait in (("queued", False), ("single", True)):
        times = {s: [] for s in specs}
        for _ in range(blocks):
            for spec in random.sample(specs, len(specs)):
                b, launcher, size, local = runs[spec]
                for _ in range(10):
                    launcher._enqueue(b.queue, launcher.kernel, size, local)
                b.queue.finish()
                start = time.perf_counter()
                for _ in range(40):
                    launcher._enqueue(b.queue, launcher.kernel, size, local)
                    if wait:
                        b.queue.finish()
                b.queue.finish()
                times[spec].append((time.perf_counter() - start) / 40)
        ref = statistics.median(times[specs[0]])
        print(f"{mode} {work} {name} " + "  ".join(
            f"{s} {statistics.median(t) * 1e3:.4f} (x{statistics.median(t) / ref:.3f})" for s, t in times.items()),
            flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "ab":
        ab(sys.argv[2].split(","), sys.argv[3].split(","), int(sys.argv[4]) if len(sys.argv) > 4 else 9)
    elif len(sys.argv) >= 3 and sys.argv[1] == "kernels":
        kernels(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 5 and sys.argv[1] == "kernel":
        kernel_alone(sys.argv[2], sys.argv[3], sys.argv[4].split(","), int(sys.argv[5]) if len(sys.argv) > 5 else 30)
    else:
        raise SystemExit(__doc__)
