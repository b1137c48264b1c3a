"""Builds the optional fused CPU kernels; everything else is in pyproject.toml.

``optional=True``: where no C compiler exists the build goes on without them and the NumPy
backend uses its pure-NumPy fallback.
"""

from setuptools import Extension, setup

SOURCES = "juicepy/backends/numpy/"
#: the headers every module includes (_kernels.h includes _gil_hint.h), and those of the modules
#: that split a call over threads
COMMON = ["_kernels.h", "_gil_hint.h"]
LANES = COMMON + ["_lane_pool.h", "_side_lanes.h"]


def kernels(name: str, headers: list, flags: list) -> Extension:
    """The optional extension juicepy.backends.numpy.<name> from <name>.c, at -O3; -pthread
    among ``flags`` links it with pthreads too."""
    return Extension(
        f"juicepy.backends.numpy.{name}",
        [f"{SOURCES}{name}.c"],
        depends=[SOURCES + header for header in headers],
        extra_compile_args=["-O3", *flags],
        extra_link_args=["-pthread"] if "-pthread" in flags else [],
        optional=True,
    )


setup(
    ext_modules=[
        # -fno-math-errno lets GCC vectorise sqrt; no -ffast-math, so IEEE results stay exact;
        # -pthread: pthread_atfork (the side lanes)
        kernels("_cpu_kernels", COMMON + ["_side_lanes.h"], ["-fno-math-errno", "-std=c99", "-pthread"]),
        # -pthread: the lanes inside a call (_lane_pool.h)
        kernels("_blas_kernels", LANES, ["-std=c99", "-pthread"]),
        kernels("_pool_kernels", ["_gil_hint.h"], ["-std=c99"]),
        kernels("_norm_kernels", LANES, ["-std=c99", "-pthread"]),
        # gnu99: GCC vector extensions and statement expressions; -pthread: tile_conv's lanes
        kernels("_conv_kernels", LANES, ["-std=gnu99", "-pthread"]),
        # gnu99: GCC vector extensions; FMA contraction in the clones that have FMA
        kernels("_rnn_kernels", COMMON, ["-std=gnu99", "-fno-math-errno", "-ffp-contract=fast", "-pthread"]),
    ]
)
