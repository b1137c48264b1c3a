"""The NumPy backend's GIL hand-over hint on and off in one process (threads.HANDOVER_SPIN,
docs/numpy.md): training steps of the bench's ResNet, CIFAR-shaped CNN, LeNet-5 and MLP,
alternated step by step between the two settings. Prints per workload the median ms of each
and on / off as the ratio of medians and the median of the pairs' ratios.

    python bench/ab_numpy_handover.py [pairs]
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import juicepy as jp  # noqa: E402
from juicepy import layers as L  # noqa: E402
from juicepy.backends.numpy import threads  # noqa: E402
from juicepy.models import resnet  # noqa: E402
from juicepy.train import Adam, Trainer  # noqa: E402

import test_bench_cnn as cnn  # noqa: E402
import test_bench_lenet as lenet  # noqa: E402
import test_bench_mlp as mlp  # noqa: E402

ON = threads.HANDOVER_SPIN


def steps(backend):
    x, y = cnn._data()
    out = {}
    for name, build in (("resnet 16-32-64", lambda: resnet(cnn.SHAPE, cnn.CLASSES)), ("cifar cnn", cnn._cnn)):
        trainer = Trainer(jp.Network(build(), cnn.SHAPE), L.SoftmaxCrossEntropy(), Adam(lr=1e-3),
                          batch_size=cnn.BATCH)
        out[name] = lambda trainer=trainer: trainer.train_minibatch(backend, x, y)
    out["lenet-5"] = lenet.juicepy_step(backend)
    out["mlp 784-512-512-10"] = mlp.juicepy_small_step(backend)
    return out


def main(pairs):
    for name, step in steps(jp.backend("numpy")).items():
        for _ in range(3):
            step()
        times = {0.0: [], ON: []}
        for i in range(pairs):
            for spin in ((0.0, ON) if i % 2 else (ON, 0.0)):
                threads.HANDOVER_SPIN = spin
                start = time.perf_counter()
                step()
                times[spin].append(time.perf_counter() - start)
        threads.HANDOVER_SPIN = ON
        on, off = statistics.median(times[ON]), statistics.median(times[0.0])
        pair = statistics.median(a / b for a, b in zip(times[ON], times[0.0]))
        print(f"{name}: off {off * 1e3:.2f} ms, on {on * 1e3:.2f} ms, on / off {on / off:.3f} "
              f"(median of pairs {pair:.3f})", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
