"""Builds the optional fused CPU kernels; everything else is in pyproject.toml.

``optional=True``: where no C compiler exists the build goes on without them and the NumPy
backend uses its pure-NumPy fallback.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "juicepy.backends.numpy._cpu_kernels",
            ["juicepy/backends/numpy/_cpu_kernels.c"],
            depends=["juicepy/backends/numpy/_kernels.h", "juicepy/backends/numpy/_gil_hint.h",
                     "juicepy/backends/numpy/_side_lanes.h"],
            # -fno-math-errno lets GCC vectorise sqrt; no -ffast-math, so IEEE results stay exact;
            # -pthread: pthread_atfork (the side lanes)
            extra_compile_args=["-O3", "-fno-math-errno", "-std=c99", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "juicepy.backends.numpy._blas_kernels",
            ["juicepy/backends/numpy/_blas_kernels.c"],
            depends=["juicepy/backends/numpy/_kernels.h", "juicepy/backends/numpy/_gil_hint.h",
                     "juicepy/backends/numpy/_lane_pool.h", "juicepy/backends/numpy/_side_lanes.h"],
            # -pthread: the lanes inside a call (_lane_pool.h)
            extra_compile_args=["-O3", "-std=c99", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "juicepy.backends.numpy._pool_kernels",
            ["juicepy/backends/numpy/_pool_kernels.c"],
            depends=["juicepy/backends/numpy/_gil_hint.h"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        ),
        Extension(
            "juicepy.backends.numpy._norm_kernels",
            ["juicepy/backends/numpy/_norm_kernels.c"],
            depends=["juicepy/backends/numpy/_kernels.h", "juicepy/backends/numpy/_gil_hint.h",
                     "juicepy/backends/numpy/_lane_pool.h", "juicepy/backends/numpy/_side_lanes.h"],
            # -pthread: the channel lanes inside a call
            extra_compile_args=["-O3", "-std=c99", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "juicepy.backends.numpy._conv_kernels",
            ["juicepy/backends/numpy/_conv_kernels.c"],
            depends=["juicepy/backends/numpy/_kernels.h", "juicepy/backends/numpy/_gil_hint.h"],
            # gnu99: GCC vector extensions and statement expressions
            extra_compile_args=["-O3", "-std=gnu99"],
            optional=True,
        ),
        Extension(
            "juicepy.backends.numpy._rnn_kernels",
            ["juicepy/backends/numpy/_rnn_kernels.c"],
            depends=["juicepy/backends/numpy/_kernels.h", "juicepy/backends/numpy/_gil_hint.h"],
            # gnu99: GCC vector extensions; FMA contraction in the clones that have FMA
            extra_compile_args=["-O3", "-std=gnu99", "-fno-math-errno", "-ffp-contract=fast", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)
