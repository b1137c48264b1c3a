"""In-process A/B of the OpenCL backend's stride-1 3x3 weight gradient: the path it had
(`_wino_filter` off: the direct row kernels or the GEMM) against Winograd F(3x3, 2x2)
(`winograd_filter` forced on), alternated every round (docs/opencl.md, session 36).

    python bench/ab_opencl_wino_filter.py ops [NAME,NAME... [ROUNDS]]
        per layer (batch 32): wall ms per call (medians) and each kernel's event ms, and the
        largest difference of the new result from the old, relative to its largest tap
    python bench/ab_opencl_wino_filter.py steps cifar,resnet,conv64 [ROUNDS]
        whole training steps (the bench's CIFAR CNN and ResNet, its 3x3 64->64 fwd+bwd) with the
        rule as it is against `_wino_filter` off: medians ms and the median ratio of the pairs

Run from the repository root (it imports the bench modules), nothing else running.
"""
import collections
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, "bench")

# name -> (x's shape, output channels, dilation)
LAYERS = {"conv64 32x32": ((32, 64, 32, 32), 64, 1), "cifar 32->64 16x16": ((32, 32, 16, 16), 64, 1),
          "cifar 64->128 8x8": ((32, 64, 8, 8), 128, 1), "resnet 32 16x16": ((32, 32, 16, 16), 32, 1),
          "resnet 64 8x8": ((32, 64, 8, 8), 64, 1), "resnet 16 32x32": ((32, 16, 32, 32), 16, 1),
          "dilated 64 32x32": ((32, 64, 32, 32), 64, 2), "dilated 32 16x16": ((32, 32, 16, 16), 32, 2)}


def ops(names, rounds):
    import pyopencl as cl

    from juicepy.backends import Workspace
    from juicepy.backends.opencl import OpenCLBackend, programs

    events = []
    launch = programs._Launcher.__call__

    def recorded(self, queue, global_size, local_size, *args):
        event = launch(self, queue, global_size, local_size, *args)
        events.append((self.kernel.function_name, event))
        return event

    programs._Launcher.__call__ = recorded
    b = OpenCLBackend()
    b.queue.finish()
    b.queue = cl.CommandQueue(b.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
    rng = np.random.default_rng(0)
    for name in names:
        shape, o, d = LAYERS[name]
        x = b.from_host(rng.standard_normal(shape).astype(np.float32))
        dy = b.from_host(rng.standard_normal((shape[0], o, shape[2], shape[3])).astype(np.float32))
        dw = {v: b.empty((o, shape[1], 3, 3)) for v in (False, True)}
        ws = {v: Workspace() for v in (False, True)}

        def run(v):
            b._wino_filter = v
            b.conv2d_backward_filter(x, dy, dw[v], (1, 1), (d, d), (d, d), 1, False, ws[v])

        for v in (False, True):
            run(v)
        b.synchronize()
        times = {False: [], True: []}
        kernels = {False: collections.defaultdict(list), True: collections.defaultdict(list)}
        for _ in range(rounds):
            for v in (False, True):
                events.clear()
                start = time.perf_counter()
                run(v)
                b.synchronize()
                times[v].append((time.perf_counter() - start) * 1e3)
                total = collections.Counter()
                for kernel, event in events:
                    total[kernel] += (event.profile.end - event.profile.start) * 1e-6
                for kernel, ms in total.items():
                    kernels[v][kernel].append(ms)
        old, new = b.to_host(dw[False]), b.to_host(dw[True])
        print(f"{name:20s} old {statistics.median(times[False]):7.3f} ms  winograd {statistics.median(times[True]):7.3f} ms"
              f"  difference {np.abs(new - old).max() / np.abs(old).max():.1e}")
        for v in (False, True):
            print("    " + ("winograd" if v else "old     ") + "  "
                  + "  ".join(f"{k} {statistics.median(t):.3f}" for k, t in kernels[v].items()), flush=True)
    b._wino_filter = None


def steps(works, rounds):
    import test_bench_cnn as cnn
    import test_bench_conv as conv

    from juicepy.backends.opencl import OpenCLBackend

    make = {"cifar": lambda b: cnn.juicepy_step(b, "cifar cnn 3x(conv-bn-relu-pool)"),
            "resnet": lambda b: cnn.juicepy_step(b, "resnet 16-32-64"),
            "conv64": lambda b: conv.juicepy_fwd_bwd(b, "3x3 64->64 32x32 b32")}
    for work in works:
        runs = {}
        for v in (False, None):
            b = OpenCLBackend()
            b._wino_filter = v
            runs[v] = (b, make[work](b), [])
        for _ in range(rounds):
            for b, step, t in runs.values():
                start = time.perf_counter()
                for _ in range(3):
                    step()
                b.synchronize()
                t.append((time.perf_counter() - start) / 3 * 1e3)
        pairs = statistics.median([a / c for a, c in zip(runs[None][2], runs[False][2])])
        print(f"{work}: off {statistics.median(runs[False][2]):.3f} ms  rule {statistics.median(runs[None][2]):.3f} ms"
              f"  pairs {pairs:.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "ops":
        ops(sys.argv[2].split(",") if len(sys.argv) > 2 else list(LAYERS), int(sys.argv[3]) if len(sys.argv) > 3 else 11)
    elif len(sys.argv) >= 3 and sys.argv[1] == "steps":
        steps(sys.argv[2].split(","), int(sys.argv[3]) if len(sys.argv) > 3 else 11)
    else:
        raise SystemExit(__doc__)
