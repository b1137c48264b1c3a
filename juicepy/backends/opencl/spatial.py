"""Convolution (im2col / col2im around the GEMM), pooling and batch norm: the launches of
conv.cl and norm.cl (a mixin of the backend)."""

from __future__ import annotations

import abc
import math

import numpy as np

from ..base import (channels_inner, check_argmax, check_batch_norm_sums, check_conv_epilogue, check_conv_shapes,
                    check_per_channel, check_pool_shapes, conv_epilogue, scratch)
from .gemm import even_tile
from .layout import round_up

# Direct kernels (conv_direct_* in conv.cl) instead of a GEMM when a group's GEMM would be thin,
# for a forward pass (the input gradient counts as the forward pass of the transposed
# convolution): its inner dimension (channels per group x taps) at most this long (stride 1
# only on 8-lane devices: the ResNet's 1x1 stride-2 projections, 16->32 and 32->64, ran faster
# as the implicit GEMM in the forward pass and as its phases in the input gradient than on the
# direct kernels, whose strided passes then gathered lane by lane; not measured since they read
# phase planes, session 50; docs/opencl.md)...
DIRECT_MAX_INNER = 32
# ...or fewer outputs per group than the GEMM micro-kernel's rows (LeNet's 16 -> 6 input
# gradient: the rest of each 12-row panel would be padding)...
DIRECT_MIN_GEMM_ROWS = 12
# ...or few outputs and few input channels per group (LeNet's second layer: 16 outputs, 6
# channels; a 4-group 64-channel layer, 16 and 16, measured faster as a GEMM).
DIRECT_MAX_OUTPUTS, DIRECT_MAX_CHANNELS_FEW_OUTPUTS = 16, 8
# ...or, on 8-lane devices (AVX2), any stride-1 pass with at most this many outputs per group:
# with 8 independent accumulators per work-item (conv.cl's U) the direct kernel beat the
# implicit GEMM there on 5x5 32->32 and 4-group 64->64 layers and tied it on 3x3 64->64 (whose
# GEMM rows amortise the gathering better); not measured on 16-lane devices, which keep the
# rules above.
DIRECT_MAX_OUTPUTS_8_LANES = 32
# Weight gradients go direct only for depthwise layers (one channel per group): LeNet's first
# layer (25 taps, 6 outputs) measured faster as the implicit A @ B^T.
# kernel widths with a direct weight-gradient kernel per row of taps (conv_direct_bwd_filter_k*
# in conv.cl; stride 1; _filter_by_rows)...
FILTER_ROW_TAPS = (3, 5)
# ...which on 8-lane devices also computes the weight gradients of groups of at most this many
# outputs: faster than the implicit A @ B^T on 5x5 32->32, 4-group 64->64 and the 64-output
# 3x3 layers (plain and dilated; docs/opencl.md)
DIRECT_FILTER_MAX_OUTPUTS_8_LANES = 64
# ...or, for rows of one vector (8x8 planes, which conv_direct_bwd_filter_k3_o4 takes: several
# outputs per work-item), this many: the ResNet's and the CIFAR CNN's 64->64, 64->128 and
# 128->128 8x8 layers measured faster there than as the implicit A @ B^T, whose
# gathers cut every 8-pixel row at the padding (docs/opencl.md)
DIRECT_FILTER_MAX_OUTPUTS_ONE_VECTOR = 128
# work-items the direct weight gradient aims at (images are split into chunks to reach it):
# 32768 measured faster than 1024 and 8192 on AVX2 for the 4-group 64->64 layer (a work-item
# then sums a few images, whose planes are still in cache for the next row of taps), 5x5 32->32
# and depthwise 3x3 64 (docs/opencl.md)
DIRECT_FILTER_ITEMS = 32768
# ...and with several outputs per work-item (FILTER_ROW_OUTS): 8192 measured faster than 32768
# and 4096 there (the 4-group 64->64 and 5x5 32->32 layers; 32768 made the second pass's sum
# over the chunks cost as much as a tenth of the first)
DIRECT_FILTER_ITEMS_OUTS = 8192
# ...except the depthwise weight gradients from whole planes (conv_depthwise_k3_plane_filter,
# conv_depthwise_s2_k3_filter), whose work-items sum at least this many outputs' products: a
# work-item on one 7x7 plane spent more on its setup and its nine sums than on the plane
# (MobileNetV2's 960x7x7 and 576x14x14 stride-2 layers, docs/opencl.md, session 56)
DEPTHWISE_FILTER_ITEM_OUTPUTS = 256
# Winograd F(2x2, 3x3) (winograd_weights in conv.cl, winograd_conv in gemm.cl) for stride-1, ungrouped
# 3x3 forward passes and input gradients with at least WINOGRAD_MIN_CHANNELS[3] input and output
# channels and planes (output planes for a forward pass, input planes for an input gradient) of at
# least WINOGRAD_MIN_PLANE_3X3 pixels, on 8-lane devices (AVX2 builds, where it was measured: the
# ResNet's and the CIFAR CNN's 8x8 and 16x16 layers of 32 to 128 channels, both ops, ran faster
# than the direct kernel and the implicit GEMM; 16 channels at 32x32 did not: docs/opencl.md)
WINOGRAD_MIN_PLANE_3X3 = 64
# F(2x2, 5x5)'s planes (the NumPy backend's threshold)
WINOGRAD_MIN_PLANE = 256
# Winograd F(2x2, 5x5) (winograd5_weights in conv.cl, winograd5_conv in gemm.cl) likewise for
# undilated 5x5 forward passes and input gradients from WINOGRAD_MIN_CHANNELS[5] channels and
# WINOGRAD_MIN_PLANE pixels, on 8-lane devices (the NumPy backend's thresholds; measured faster
# than the direct kernel, both ops, on the 5x5 32->32 layer of bench/test_bench_conv.py:
# docs/opencl.md)
WINOGRAD_MIN_CHANNELS = {3: 32, 5: 32}
# kernel sizes whose Winograd forward passes take conv2d's inference batch norm folded into their
# weights and bias (conv_fold_norm) instead of a pass over the output: 3x3 (F(2x2, 3x3) and the
# stride-2 phases); F(2x2, 5x5)'s larger float32 error, scaled by the fold, left the
# conformance tests' tolerance
WINOGRAD_FOLD_NORM_TAPS = (3,)
# the kernels (conv.cl's <name>_weights, gemm.cl's <name>_conv) per kernel size
WINOGRAD_TAPS = {3: "winograd", 5: "winograd5"}
# ...and their families in local_memory.OPTIONAL_FAMILIES
WINOGRAD_FAMILIES = {3: "winograd3", 5: "winograd5"}
# Winograd F(2x2, 2x2) on the phases of a 3x3 stride-2 forward pass (s2_weights in conv.cl,
# s2_winograd_conv in gemm.cl), its weight gradient as that scheme's adjoint
# (s2_winograd_filter) and its input gradient as F(2x2, 2x2) on dx's phases (s2_winograd_data),
# from this many input and output channels, ungrouped and undilated, on 8-lane devices (AVX2,
# where all three were measured on the 64->128 layer of bench/test_bench_conv.py and the
# ResNet's 32->64: docs/opencl.md; 16 channels keep the phase-plane direct kernel, the weight
# gradient's GEMM and the input gradient's phase GEMMs)
S2_MIN_CHANNELS = 32
# ...and the forward pass from this many on 16-lane (AVX-512) GEMM devices, whose packed GEMM
# tiles s2_winograd_conv runs on: on PoCL 3.1 / Zen 5 the ResNet's 16->32 32x32 layer ran in
# about half the time of pad_phases + conv_direct_fwd4_phased (docs/opencl.md, session 38,
# branch ocl-cnnfwd; on the AVX2 devices of session 31 the two were even there)
S2_FORWARD_MIN_CHANNELS_16_LANES = 16
# where s2_winograd_filter's blocks of channels give fewer work-groups than this, each block's
# tiles are split into ranges (their sums added up by s2_filter_taps) so that both CPU threads
# have work
S2_FILTER_MIN_GROUPS = 2
# Winograd F(3x3, 2x2) for stride-1 3x3 weight gradients (winograd_filter, winograd_filter_taps:
# the adjoint of F(2x2, 3x3), as the NumPy backend's), ungrouped, from this many
# input and output channels and output planes of this many pixels, on 8-lane convolution devices
# (measured on PoCL 3.1 / Zen 5, docs/opencl.md session 36); its tiles are split into ranges as
# s2_winograd_filter's (S2_FILTER_MIN_GROUPS)
WINOGRAD_FILTER_MIN_CHANNELS = 32
WINOGRAD_FILTER_MIN_PLANE = 64
# ...and the dilations "auto" takes it for (any forced; tiles d apart as the forward's, runs of 8
# tiles read as vectors for dilation 1 and 2)
WINOGRAD_FILTER_DILATIONS = ((1, 1), (2, 2))
# The direct forward kernel pads a group's input planes into local memory per work-item (no padded
# copy through global memory) where they take at most this many bytes...
DIRECT_LOCAL_MAX_BYTES = 1 << 17
# ...and each work-item computes all its group's outputs from them unless that gives fewer
# work-items than this
DIRECT_LOCAL_MIN_ITEMS = 64
# ...and where a group is one run of outputs (depthwise), this many groups a work-item (a power
# of two), each group's planes copied in turn: PoCL runs each one-work-item group with its own
# overhead, and the bench's depthwise forward (2048 planes) measured faster at 8 than at 1 on
# Zen 4 (PoCL 3.0 and 3.1; docs/opencl.md, session 48)
DIRECT_LOCAL_GROUP_RUNS = 8
# The depthwise kernels that take whole planes from global memory (conv_depthwise_s2_k3*,
# conv_depthwise_k3_plane): at most this many planes a work-item (a power of two) of at most
# DEPTHWISE_ITEM_VALUES input values in all (one plane at least), fewer where that leaves under
# DIRECT_LOCAL_MIN_ITEMS work-items: small planes' launches of fewer work-groups measured faster on
# PoCL, 32x32 planes' not (they keep 8; docs/opencl.md, session 59)
DEPTHWISE_ITEM_PLANES = 32
DEPTHWISE_ITEM_VALUES = 8192
# The plane kernels copy a work-item's next plane ahead (PLANE_COPIES) on planes of at most this
# many values: 7x7 and 14x14 planes measured faster so, 32x32 ones not (docs/opencl.md, session 59)
PLANE_AHEAD_MAX_VALUES = 512
#: __local argument sizes SpatialOps._local_memory keeps objects for at a time
LOCAL_MEMORY_SIZES = 32
# square kernel sizes with builds of the direct forward kernel whose tap loops have fixed trip
# counts (conv_direct_fwd*_k3 / _k5 in conv.cl): the compiler unrolls them, so no loop control
# or index arithmetic sits between the multiply-adds of a row of taps
DIRECT_FIXED_TAPS = (3, 5)
# square kernel sizes with 8-output builds of the direct forward kernel on 16 lanes
# (conv_direct_fwd8_u2_k3 / _local_u2_k3 in conv.cl): each tap's two input vectors feed 16
# accumulators instead of 8; on PoCL 3.1 / Zen 5 the ResNet's 16 -> 16 32x32 layer's kernel
# ran faster so (docs/opencl.md, session 38, branch ocl-cnnfwd)
DIRECT_OUTS_8_TAPS = (3,)
# taps of a strided kernel up to which its forward pass runs on conv_direct_fwd4_phased
# (PHASED_MAX_TAPS in conv.cl: the size of its table of tap offsets)
PHASED_MAX_TAPS = 64
# ...with at most this many runs of 4 outputs per work-item, over chunks of this many input
# channels
PHASED_MAX_RUNS, PHASED_CHANNELS = 4, 16
# taps (outputs per group x kernel taps) up to which a strided input gradient on the direct
# path runs by dx's phases in local memory (PHASE_DATA_MAX_TAPS in conv.cl: its tap table)
PHASE_DATA_MAX_TAPS = 64
# the largest kernel side whose strided direct forward pass stages the phase planes in local
# memory (DIRECT_PHASE_MAX_KERNEL in conv.cl: the size of its offset tables); larger ones
# gather from a padded copy
DIRECT_PHASE_MAX_KERNEL = 16
# outputs below which max_pool_2x2 runs (its float division is exact below 2^24)
POOL_FLAT_MAX = 1 << 24
# planes of output rows each work-item of max_pool_2x2_rows takes (where they divide the planes):
# 4 measured faster than 1 and as fast as 16 on the CIFAR CNN's poolings
POOL_ROWS_PLANES = 4
# output widths of 2x2 poolings that max_pool_2x2_v4 / _v8 / _v16 take on CPU devices, 8-lane
# (AVX2) ones too (docs/opencl.md, session 34, branch ocl-fwd2; session 47)
POOL_VEC_WIDTHS = range(3, 17)
# ...each work-item taking whole planes, up to this many output rows (16 planes at most): the
# last row of each work-item's run is stored output by output
POOL_VEC_ROWS = 64
CONV_ALGORITHMS = ("auto", "direct", "implicit", "gemm", "winograd")
# (output width, kernel size) of the builds of conv_olanes_* in conv.cl: on 16-lane (AVX-512)
# GEMM devices a direct forward pass of such rows, stride 1, one group and outputs in runs of 16
# takes them (LeNet's 6 -> 16 layer; docs/opencl.md, session 33, branch ocl-fwd)
OLANES_BUILDS = ((10, 5), (10, 3))


def direct_outputs(outputs: int, lanes: int, kernel: int = 0, vectors: int = 0) -> int:
    """Output planes each work-item of the direct forward kernel computes (OUTS in conv.cl),
    for ``outputs`` per group, a square ``kernel`` (0: other) and rows of ``vectors`` vectors:
    each loaded input vector feeds that many accumulators. Eight on 16-lane builds for 3x3
    kernels and rows of two or more vectors (conv_direct_fwd8_*u2_k3: 16 float16 accumulators
    of AVX-512's 32 registers; DIRECT_OUTS_8). Six (LeNet's 16 -> 6 input gradient and 1 -> 6
    forward pass) on 8-lane devices only, where it was measured; 12 float16 accumulators on
    16-lane ones are unmeasured."""
    if lanes == 16 and outputs % 8 == 0 and kernel in DIRECT_OUTS_8_TAPS and vectors >= 2:
        return 8
    if outputs % 4 == 0:
        return 4
    if lanes == 8 and outputs % 6 == 0:
        return 6
    return 1


# output channels per work-item of the row-of-taps weight gradient (conv_direct_bwd_filter_k*_o*
# in conv.cl) per kernel width, on 8-lane devices, where it was measured
FILTER_ROW_OUTS = {3: 4, 5: 2}


# ...and on 16-lane (AVX-512) GEMM devices, whose convolutions run at 8 lanes (CONV_LANES), rows
# of whole 16-lane vectors take the 16-lane build with this many (OUTS x KW float16 accumulators
# of AVX-512's 32 registers): on PoCL 3.1 / Zen 5 the 5x5 32->32, 3x3 64->64 and dilated 3x3
# layers' forward + backward measured faster so (docs/opencl.md, session 33)
FILTER_ROW_OUTS_16_LANES = {3: 8, 5: 4}


def filter_outputs(outputs: int, kw: int, lanes: int) -> int:
    """Output channels each work-item of the row-of-taps weight gradient sums at once: every
    loaded input vector then feeds that many outputs' taps; 1 where they do not divide the
    group's ``outputs`` (depthwise layers)."""
    outs = FILTER_ROW_OUTS.get(kw, 1) if lanes == 8 else 1
    return outs if outputs % outs == 0 else 1


def direct_unroll(outs: int, vectors: int, lanes: int = 16) -> int:
    """Vectors of a row each work-item of the direct forward kernel computes at once (U in
    conv.cl) for ``outs`` output planes and rows of ``vectors`` vectors: enough independent
    accumulators (outs x U) to hide the FMA's latency, 8 where the row is long enough; a last
    vector partly past the row costs no more than the chain it replaces would have waited.
    3 for 4 outputs on 8-lane devices (AVX2, 16 vector registers): DIRECT_FLAT in conv.cl,
    3 vectors in row-major order, 12 accumulators (the NumPy backend's 4 x 3 block)."""
    if outs == 4 and lanes == 8:
        return 3
    if vectors <= 1:
        return 1
    if outs >= 4 or vectors == 2:
        return 2
    return 4


def phase_taps(k: int, s: int, p: int, d: int, r: int):
    """The taps of a kernel of ``k`` taps (stride s, padding p, dilation d) that reach input
    positions r, r + s, r + 2 s, ... in the input gradient, as the stride-1 convolution of dy
    they make: (last tap, step between taps, number of taps, its padding, its dilation), the
    taps taken from the last one back (their offsets into dy rise); None where no tap does."""
    taps = [t for t in range(k) if (r + p - t * d) % s == 0]
    if not taps:
        return None
    step = taps[1] - taps[0] if len(taps) > 1 else 1
    return taps[-1], step, len(taps), -((r + p - taps[-1] * d) // s), d // math.gcd(s, d)


def phase_plane_shape(geo) -> tuple[int, int]:
    """(rows, row length) of each stride phase plane a convolution's taps read (PHASE_AT in
    conv.cl): the output's, plus the kernel's reach past it in that phase."""
    kh, kw, ho, wo, sh, sw, dh, dw = geo[5], geo[6], geo[7], geo[8], geo[9], geo[10], geo[13], geo[14]
    return ho + (kh - 1) * dh // sh, wo + (kw - 1) * dw // sw


def pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def _bn_grid(x, c: int, s: int) -> tuple:
    """(row length, (rows,), C, chan_inner) of the per-element batch-norm kernels (PLANE_ITEM in
    norm.cl): rows are the (n, c) planes, or the samples where a plane is one value."""
    if s == 1:
        return c, (x.size // max(c, 1),), c, 1
    return s, (x.size // max(s, 1),), c, 0


def _winograd_grid(ho, wo, dh, dw):
    """(quads of tile rows, of tile columns, tile rows, tile columns) per image of F(2x2, r x r)
    on Ho x Wo outputs dilated by (dh, dw): 2x2 outputs d apart, tiles in groups of d per 2d rows."""
    qh, qw = -(-ho // (2 * dh)), -(-wo // (2 * dw))
    return qh, qw, qh * dh, qw * dw


class SpatialOps(abc.ABC):
    """NCHW convolution, pooling and batch normalisation. They rely on this plumbing of the
    backend class they are mixed into (and its ``queue``, ``_flag``, ``gemm_variant``,
    ``_conv_vec``, ``limits`` and ``kernel_fits`` attributes: the last says which of gemm.cl's
    kernel families fit the device's local memory, local_memory.py):"""

    @abc.abstractmethod
    def _kernel(self, filename, name):
        """The compiled kernel ``name`` of ``filename`` (cached)."""

    @abc.abstractmethod
    def _ref(self, a):
        """(base buffer, element offset) of an array."""

    @abc.abstractmethod
    def _launch_flat(self, filename, name, n, *args):
        """One work-item per element."""

    @abc.abstractmethod
    def _launch_rows(self, filename, name, inner, outer, *args):
        """An (inner, *outer) grid."""

    @abc.abstractmethod
    def _gemm(self, m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, alpha, beta, ws=None):
        """GEMM on (buffer, offset) operands (GemmOps)."""

    @abc.abstractmethod
    def _same(self, op, *arrays):
        """Raise unless the arrays share one shape and dtype."""

    @abc.abstractmethod
    def _conv_gemm(self, w, w_off, flipped, x, x_off, y, y_off, m, k, x_geo, y_hw, kernel, conv_args,
                   beta, ws=None, bias=None, epilogue=None, phase=None, y_strides=None):
        """One convolution group as an implicit GEMM (GemmOps)."""

    @abc.abstractmethod
    def _conv_filter_gemm(self, x, x_off, dy, dy_off, dw, dw_off, m, n, x_geo, y_hw, kernel, conv_args,
                          beta, ws=None):
        """One convolution group's weight gradient as an implicit A @ B^T (GemmOps)."""

    #: "direct", "implicit" (GEMM tiles gathered from the input: no column matrix), "gemm"
    #: (im2col + GEMM), or "auto": direct kernels for thin groups on CPU drivers, else the
    #: implicit GEMM there; GPUs keep im2col + their cooperative GEMM
    conv_algorithm = "auto"
    _winograd_relu = True   # the forward's ReLU in (phase) Winograd's stores (off: A/B runs)
    _wino_halves = True   # Winograd's transforms (forward, s2 stores, winograd_filter) on runs of 4 tiles in rows of 4 (off: A/B runs)
    _wino_in_place = True   # winograd_conv reading its input in place where _winograd_in_place allows (off: A/B runs)
    _olanes = None   # forces conv_olanes_* on or off where a build fits (A/B runs)
    _pool_vec = None  # forces max_pool_2x2_v* on or off where a build fits (A/B runs)
    _direct8 = None   # False: no 8-output direct forward builds (DIRECT_OUTS_8_TAPS; A/B runs)
    _row_pairs = None   # False: one-output direct forward kernels one row at a time (A/B runs)
    _filter_local = None   # False: no conv_direct_bwd_filter_local_k3 (A/B runs)
    _data_phases = None   # False: strided direct input gradients on conv_direct_bwd_data (A/B runs)
    _group_runs = None  # a power of two: DIRECT_LOCAL_GROUP_RUNS, DEPTHWISE_ITEM_PLANES for this backend (A/B runs)
    _s2_narrow = None  # False: no S2_FORWARD_MIN_CHANNELS_16_LANES (A/B runs)
    _depthwise_s2 = None  # False: no conv_depthwise_s2_k3* kernels (A/B runs)
    _depthwise_plane = None  # False: no conv_depthwise_k3_plane* kernels (A/B runs)
    _plane_ahead = None      # False / True: their planes copied ahead nowhere / wherever two fit (A/B runs)
    _wino_filter = None  # forces winograd_filter on or off where it applies and fits (A/B runs)
    _filter_item_outputs = None  # DEPTHWISE_FILTER_ITEM_OUTPUTS for this backend (A/B runs)

    def _use_implicit(self) -> bool:
        if not self.kernel_fits["packed"]:
            return False
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "implicit"
        return self.gemm_variant == "packed"

    def _use_winograd(self, geo, groups, op) -> bool:
        """Forward pass or input gradient ("data") by Winograd F(2x2, 3x3) or F(2x2, 5x5):
        "winograd" forces it wherever it applies (3x3 or 5x5, stride 1, one group), "auto"
        chooses it on 8-lane CPU devices for enough channels and pixels."""
        c, o, kh, kw, ho, wo, sh, sw = geo[1], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10]
        if kh != kw or kh not in WINOGRAD_TAPS or (sh, sw, groups) != (1, 1, 1) or self.gemm_variant != "packed":
            return False
        if not self.kernel_fits[WINOGRAD_FAMILIES[kh]]:
            return False
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "winograd"
        if self._conv_vec != 8 or (kh == 5 and geo[13:] != (1, 1)):
            return False
        plane = geo[2] * geo[3] if op == "data" else ho * wo
        min_plane = WINOGRAD_MIN_PLANE_3X3 if kh == 3 else WINOGRAD_MIN_PLANE
        return min(c, o) >= WINOGRAD_MIN_CHANNELS[kh] and plane >= min_plane

    def _winograd(self, src, w, dst, geo, flip, accumulate, ws, bias=None, relu=False):
        """dst (+)= the stride-1 3x3 or 5x5 convolution ``geo`` of src (flip: with the
        transposed, flipped taps of w, for an input gradient) as Winograd F(2x2, 3x3) or
        F(2x2, 5x5): the transformed weights in the packed GEMM's panels, then one kernel that
        transforms each work-group's input tiles, multiplies them per tap position and
        transforms the products back, adding ``bias`` where given, then the ReLU where ``relu``."""
        n, c, h, wd, o, k, _, ho, wo, _, _, ph, pw, dh, dw = geo
        name = WINOGRAD_TAPS[k]
        qh, qw, th, tw = _winograd_grid(ho, wo, dh, dw)
        tiles = n * th * tw
        mr = self._gemm_tiles["MR"]
        panels = -(-o // mr)
        u = scratch(ws, self, "conv_wino_u", ((k + 1) ** 2 * panels * mr * c,), np.float32)
        self._kernel("conv.cl", f"{name}_weights")(
            self.queue, (round_up(c, 64), panels * mr), (64, 1), c, *self._ref(w), o, int(flip), mr, u.base_data, 0)
        if self._winograd_in_place(geo):
            planes = (*self._ref(src), h, wd, ph, pw)
        else:
            hp, wp = dh * (2 * qh + k - 1), dw * (2 * qw + k - 1)   # the last tiles' whole patches
            planes = (self._padded(src, ph, pw, hp, wp, 0, ws).base_data, 0, hp, wp, 0, 0)
        tile_m = even_tile(o, self._gemm_tiles["BM"], mr)
        nr = 2 * self._gemm_tiles["VW"]
        self._kernel("gemm.cl", f"{name}_conv")(
            self.queue, (-(-tiles // nr), -(-o // tile_m)), (1, 1), o, c, tiles, tile_m, th, tw, u.base_data,
            *planes, dh, dw, *self._ref(dst), ho, wo, int(bool(accumulate)), *self._optional(bias),
            int(bool(relu) and not accumulate), int(self._wino_halves))

    def _winograd_in_place(self, geo) -> bool:
        """Whether winograd_conv reads its patches from the input itself (zeros outside it), not
        from a padded copy (pad_planes): F(2x2, 3x3) undilated whose rows of tiles are whole runs
        of 8 (outputs a multiple of 16 wide) padded by at most one column, so that each run's
        columns but its first and last lie inside the input's rows (gemm.cl's WINOGRAD_EDGE_ROW)."""
        _, _, _, wd, _, k, _, _, wo, _, _, ph, pw, dh, dw = geo
        return (self._wino_in_place is not False and k == 3 and (dh, dw) == (1, 1) and wo % 16 == 0
                and 0 <= pw <= 1 and wo - pw + 1 <= wd)

    def _use_s2(self, geo, groups, op) -> bool:
        """Whether a forward pass (``op`` "forward"), weight gradient ("filter") or input gradient
        ("data") runs as Winograd F(2x2, 2x2) on the phases of a 3x3 stride-2 convolution
        (_s2_forward, _s2_filter, _s2_data): undilated and ungrouped, where its kernel fits the
        device's local memory; "winograd" forces it there, "auto" chooses it on 8-lane CPU
        devices from S2_MIN_CHANNELS input and output channels, for a forward pass on a
        16-lane GEMM from S2_FORWARD_MIN_CHANNELS_16_LANES."""
        c, o, kh, kw, sh, sw, dh, dw = geo[1], geo[4], geo[5], geo[6], geo[9], geo[10], geo[13], geo[14]
        if (kh, kw, sh, sw, dh, dw, groups) != (3, 3, 2, 2, 1, 1, 1) or self.gemm_variant != "packed":
            return False
        if not self.kernel_fits[{"forward": "s2_conv", "filter": "s2_filter", "data": "s2_data"}[op]]:
            return False
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "winograd"
        least = S2_MIN_CHANNELS
        if op == "forward" and self._gemm_float_lanes() == 16 and self._s2_narrow is not False:
            least = min(least, S2_FORWARD_MIN_CHANNELS_16_LANES)
        return self._conv_vec == 8 and min(c, o) >= least

    def _s2_packed_weights(self, kernel, w, depth, rows, positions, name, ws):
        """The phase Winograd's transformed weights (conv.cl's ``kernel``) in the packed GEMM's
        panels: ``positions`` matrices of ``rows`` (rounded up to whole panels) x ``depth``, in
        the workspace buffer ``name``; returns it and the panels' height MR. The forward's
        (s2_weights) takes a work-item per panel of MR rows (at most 16, a float16's lanes)."""
        mr = self._gemm_tiles["MR"]
        panels = -(-rows // mr)
        u = scratch(ws, self, name, (positions * panels * mr * depth,), np.float32)
        if kernel == "s2_weights":
            if mr > 16:
                raise ValueError(f"opencl backend: s2_weights takes panels of at most 16 rows, the GEMM's MR is {mr}")
            self._kernel("conv.cl", kernel)(
                self.queue, (depth, panels), (1, 1), depth, *self._ref(w), rows, mr, u.base_data, 0)
        else:
            self._kernel("conv.cl", kernel)(
                self.queue, (round_up(depth, 64), panels * mr), (64, 1), depth, *self._ref(w), rows, mr, u.base_data, 0)
        return u, mr

    def _s2_forward(self, x, w, y, geo, ws, bias=None, relu=False):
        """y = the 3x3 stride-2 convolution ``geo`` of x (+ ``bias``, then the ReLU where
        ``relu``) as Winograd F(2x2, 2x2) on its phases: the transformed weights in the packed
        GEMM's panels (s2_weights), then one kernel that gathers and transforms each work-group's
        tiles straight from x, multiplies them per position and transforms the products back
        (s2_winograd_conv)."""
        n, c, h, wd, o, _, _, ho, wo, _, _, ph, pw, _, _ = geo
        th, tw = -(-ho // 2), -(-wo // 2)
        tiles = n * th * tw
        u, mr = self._s2_packed_weights("s2_weights", w, c, o, 36, "conv_s2_u", ws)
        tile_m = even_tile(o, self._gemm_tiles["S2_BM"], mr)
        nr = 2 * self._gemm_tiles["VW"]
        self._kernel("gemm.cl", "s2_winograd_conv")(
            self.queue, (-(-tiles // nr), -(-o // tile_m)), (1, 1), o, c, tiles, tile_m, th, tw, u.base_data,
            *self._ref(x), h, wd, ph, pw, *self._ref(y), ho, wo, *self._optional(bias), int(bool(relu)),
            int(self._wino_halves))

    def _filter_ranges(self, c, o, tiles, prefix):
        """(work-group blocks (C, O), tiles per range, ranges) of a weight-gradient kernel whose
        blocks are ``prefix``_BC x ``prefix``_BO channels and slices ``prefix``_TS tiles: each
        block's tiles split into ranges so that S2_FILTER_MIN_GROUPS work-groups have work (their
        sums added up by the taps kernel), every range holding tiles."""
        sizes = self._gemm_tiles
        blocks = (-(-c // sizes[f"{prefix}_BC"]), -(-o // sizes[f"{prefix}_BO"]))
        ranges = -(-S2_FILTER_MIN_GROUPS // (blocks[0] * blocks[1]))
        t_chunk = round_up(-(-tiles // ranges), sizes[f"{prefix}_TS"])
        return blocks, t_chunk, -(-tiles // t_chunk)

    def _s2_filter(self, x, dy, dw, geo, accumulate, ws):
        """dw (+)= the weight gradient of the 3x3 stride-2 convolution ``geo`` as the adjoint of
        _s2_forward's scheme: per block of channels and range of tiles one work-group
        transforms x's and dy's tiles and sums their products (s2_winograd_filter), then the
        positions' sums become the taps (s2_filter_taps)."""
        n, c, h, wd, o, _, _, ho, wo, _, _, ph, pw, _, _ = geo
        th, tw = -(-ho // 2), -(-wo // 2)
        tiles = n * th * tw
        blocks, t_chunk, splits = self._filter_ranges(c, o, tiles, "S2F")
        part = scratch(ws, self, "conv_s2_filter_part", (splits * 25 * c * o,), np.float32)
        self._kernel("gemm.cl", "s2_winograd_filter")(
            self.queue, (*blocks, splits), (1, 1, 1), c, o, tiles, t_chunk,
            th, tw, *self._ref(x), h, wd, ph, pw, *self._ref(dy), ho, wo, part.base_data)
        self._kernel("gemm.cl", "s2_filter_taps")(
            self.queue, (-(-o // 16), c), (1, 1), c, o, splits, part.base_data, *self._ref(dw), int(bool(accumulate)))

    def _use_winograd_filter(self, geo, groups) -> bool:
        """Whether a weight gradient runs as Winograd F(3x3, 2x2) (_winograd_filter): 3x3, stride
        1 and ungrouped, where its kernel fits the device's local memory; "winograd" forces it
        there at any dilation, "auto" chooses it on 8-lane convolution devices for
        WINOGRAD_FILTER_DILATIONS from WINOGRAD_FILTER_MIN_CHANNELS channels each side and
        WINOGRAD_FILTER_MIN_PLANE output pixels."""
        c, o, kh, kw, ho, wo, sh, sw = geo[1], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10]
        dh, dw = geo[13], geo[14]
        if (kh, kw, sh, sw, groups) != (3, 3, 1, 1, 1) or self.gemm_variant != "packed":
            return False
        if not self.kernel_fits["winograd3_filter"]:
            return False
        if self._wino_filter is not None:
            return self._wino_filter
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "winograd"
        return self._conv_vec == 8 and (dh, dw) in WINOGRAD_FILTER_DILATIONS and min(c, o) >= WINOGRAD_FILTER_MIN_CHANNELS \
            and ho * wo >= WINOGRAD_FILTER_MIN_PLANE

    def _winograd_filter(self, x, dy, dw, geo, accumulate, ws):
        """dw (+)= the weight gradient of the stride-1 3x3 convolution ``geo`` as Winograd
        F(3x3, 2x2): per block of channels and range of tiles one work-group transforms x's 4x4
        patches and dy's 2x2 tiles and sums their products per position (winograd_filter), then
        G^T (the ranges' sums) G gives the taps (winograd_filter_taps)."""
        n, c, h, wd, o, _, _, ho, wo, _, _, ph, pw, dh, dwl = geo
        qh, qw, th, tw = _winograd_grid(ho, wo, dh, dwl)
        tiles = n * th * tw
        blocks, t_chunk, splits = self._filter_ranges(c, o, tiles, "WF")
        part = scratch(ws, self, "conv_wino_filter_part", (splits * 16 * c * o,), np.float32)
        hp, wp = dh * (2 * qh + 2), dwl * (2 * qw + 2)   # every tile's whole patch inside: runs read rows as vectors
        xp = self._padded(x, ph, pw, hp, wp, 0, ws)
        self._kernel("gemm.cl", "winograd_filter")(
            self.queue, (*blocks, splits), (1, 1, 1), c, o, tiles, t_chunk,
            th, tw, xp.base_data, 0, hp, wp, 0, 0, dh, dwl, *self._ref(dy), ho, wo, part.base_data,
            int(self._wino_halves))
        self._kernel("gemm.cl", "winograd_filter_taps")(
            self.queue, (round_up(o, 16), c), (16, 1), c, o, splits, part.base_data, *self._ref(dw),
            int(bool(accumulate)))

    def _s2_data(self, dy, w, dx, geo, accumulate, ws):
        """dx (+)= the input gradient of the 3x3 stride-2 convolution ``geo`` as Winograd
        F(2x2, 2x2) on dx's phases: the 25 transformed weight matrices (s2_data_weights), then one
        kernel that gathers and transforms each work-group's 3x3 patches of dy, multiplies them
        per position and transforms the products into 4x4 blocks of dx (s2_winograd_data)."""
        n, c, h, wd, o, _, _, ho, wo, _, _, ph, pw, _, _ = geo
        bh, bw = -(-h // 4), -(-wd // 4)
        blocks = n * bh * bw
        u, mr = self._s2_packed_weights("s2_data_weights", w, o, c, 25, "conv_s2_data_u", ws)
        tile_m = even_tile(c, self._gemm_tiles["S2_BM"], mr)
        nr = 2 * self._gemm_tiles["VW"]
        self._kernel("gemm.cl", "s2_winograd_data")(
            self.queue, (-(-blocks // nr), -(-c // tile_m)), (1, 1), c, o, blocks, tile_m, bh, bw, u.base_data,
            *self._ref(dy), ho, wo, ph, pw, *self._ref(dx), h, wd, int(bool(accumulate)))

    def _use_direct(self, geo, groups, op) -> bool:
        if self.conv_algorithm != "auto":
            return self.conv_algorithm == "direct"
        if self.gemm_variant != "packed":
            return False
        c, o, kh, kw = geo[1], geo[4], geo[5], geo[6]
        if op == "data":   # the transposed convolution: the roles of C and O swap
            c, o = o, c
        inner, outputs = c // groups * kh * kw, o // groups
        if op == "filter":
            if c == o == groups:   # depthwise
                return True
            most = DIRECT_FILTER_MAX_OUTPUTS_ONE_VECTOR if geo[8] == self._conv_vec else DIRECT_FILTER_MAX_OUTPUTS_8_LANES
            # (strided ones not measured against the GEMM: they keep it)
            return (self._conv_vec == 8 and geo[9] == geo[10] == 1 and self._filter_by_rows(geo, groups)
                    and outputs <= most)
        if outputs < DIRECT_MIN_GEMM_ROWS:
            return True
        if inner <= DIRECT_MAX_INNER and not (self._conv_vec == 8 and (geo[9], geo[10]) != (1, 1)):
            return True
        if self._conv_vec == 8 and geo[9] == geo[10] == 1 and outputs <= DIRECT_MAX_OUTPUTS_8_LANES:
            return True
        return outputs <= DIRECT_MAX_OUTPUTS and c // groups <= DIRECT_MAX_CHANNELS_FEW_OUTPUTS

    def _filter_by_rows(self, geo, groups) -> bool:
        """Whether conv_direct_bwd_filter_k* computes this weight gradient: a kernel width it
        was built for (strided ones read the phase planes), and rows of whole pairs of vectors,
        or of whole vectors where a work-item takes several outputs (the _o* builds step one
        vector at a time; no kernel handles a row's last lanes: LeNet's 10-wide rows ran far
        slower than the GEMM)."""
        kw, wo = geo[6], geo[8]
        if kw not in FILTER_ROW_TAPS:
            return False
        vectors = 2 if filter_outputs(geo[4] // groups, kw, self._conv_vec) == 1 else 1
        return wo % (vectors * self._conv_vec) == 0

    def _phase_planes(self, src, geo, lanes_past, ws):
        """(buffer, hq, wq): src's planes zero-padded by the geometry's padding and laid out as
        stride phases of hq x wq (pad_phases; PHASE_AT in conv.cl), with room after the last for
        ``lanes_past`` floats of vector loads; stride 1 gives the padded planes (pad_planes)."""
        sh, sw, ph, pw = geo[9:13]
        hq, wq = phase_plane_shape(geo)
        if sh == sw == 1:
            return self._padded(src, ph, pw, hq, wq, lanes_past, ws), hq, wq
        planes = src.shape[0] * src.shape[1]
        out = scratch(ws, self, "conv_phases", (planes * sh * sw * hq * wq + lanes_past + wq,), np.float32)
        self._kernel("conv.cl", "pad_phases")(self.queue, (planes,), (1,), src.shape[2], src.shape[3], *self._ref(src),
                                              sh, sw, ph, pw, hq, wq, out.base_data)
        return out, hq, wq

    def _padded(self, src, top, left, hp, wp, lanes_past, ws):
        """src's (N, C) planes copied into zero-padded (hp, wp) planes (negative top/left crop),
        with room after the last plane for the vector loads that run past a row's end."""
        planes, h, w = src.shape[0] * src.shape[1], src.shape[2], src.shape[3]
        out = scratch(ws, self, "conv_padded", (planes * hp * wp + lanes_past + wp,), np.float32)
        self._kernel("conv.cl", "pad_planes")(self.queue, (planes,), (1,), hp, *self._ref(src), h, w, wp, top, left,
                                              out.base_data)
        return out

    def _direct_forward(self, x, w, y, geo, groups, flip, accumulate, ws, bias=None, epilogue=None):
        """conv_direct_fwd over x padded by the geometry's padding: in local memory per
        work-item where a group's padded planes fit (_local_planes), else a padded copy; the
        sums start from ``bias`` where one is given and the stores apply ``epilogue``
        (_epilogue_args)."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        hp, wp = max(h + 2 * ph, (ho - 1) * sh + (kh - 1) * dh + 1), max(wd + 2 * pw, (wo - 1) * sw + (kw - 1) * dw + 1)
        lanes = self._direct_forward_lanes(geo, groups)
        program = self._conv_program(lanes)
        if not flip and not accumulate and self._use_depthwise_s2(geo, groups, lanes):
            self._depthwise_s2_forward(program, x, w, y, geo, bias, epilogue)
            return
        if self._use_depthwise_plane(geo, groups, lanes):
            size, per = self._depthwise_items(n * c, h * wd)
            self._kernel(program, "conv_depthwise_k3_plane")(
                self.queue, size, (1,), *self._ref(x), *self._ref(w), *self._ref(y), c, h, wd, per, int(flip),
                int(accumulate), *self._depthwise_plane_copies(h, wd, lanes),
                *self._optional(bias), *self._epilogue_args(epilogue))
            return
        vectors = -(-wo // lanes)
        outs = direct_outputs(o // groups, lanes, kh if kh == kw and self._direct8 is not False else 0, vectors)
        unroll = direct_unroll(outs, vectors, lanes)
        lanes_past = unroll * lanes * sw + kw * dw
        name = "conv_direct_fwd" + ("" if outs == 1 else str(outs))
        pairs = outs == 1 and unroll != 3 and ho > 1 and self._row_pairs is not False
        suffix = (("" if unroll == 1 else f"_f3" if unroll == 3 else f"_u{unroll}") + ("_r2" if pairs else "")
                  + (f"_k{kh}" if kh == kw and kh in DIRECT_FIXED_TAPS else ""))
        rest = (*self._ref(w), *self._ref(y), c)
        rest_geo = (o, ho, wo, c // groups, o // groups, kh, kw, sh, sw, dh, dw, int(flip), int(accumulate),
                    *self._optional(bias), *self._epilogue_args(epilogue))
        if (sh, sw) != (1, 1) and max(kh, kw) <= DIRECT_PHASE_MAX_KERNEL:
            # strided: the local planes as phase planes (whole-vector loads)
            hl, wl = phase_plane_shape(geo)
            local = (c // groups * sh * sw * hl * wl + unroll * lanes + kw * dw + wl) * 4
        else:
            hl, wl = hp, wp
            local = (c // groups * hp * wp + lanes_past + wp) * 4
        if local <= self._local_planes_bytes():
            # runs of outs outputs per work-item: a whole group, or where a group is one run
            # (depthwise) DIRECT_LOCAL_GROUP_RUNS groups...
            per = (o // groups) // outs
            if per == 1:
                per = DIRECT_LOCAL_GROUP_RUNS if self._group_runs is None else int(self._group_runs)
            while per % 2 == 0 and ((n * o // outs) % per or n * o // (outs * per) < DIRECT_LOCAL_MIN_ITEMS):
                per //= 2   # ...unless that leaves too few work-items or does not divide them
            self._kernel(program, name + "_local" + suffix)(
                self.queue, (n * o // (outs * per),), (1,), *self._ref(x), h, wd, ph, pw,
                self._local_memory(local), per, *rest, hl, wl, *rest_geo)
            return
        xp = self._padded(x, ph, pw, hp, wp, lanes_past, ws)
        self._kernel(program, name + suffix)(self.queue, (n * o // outs,), (1,), xp.base_data, *rest, hp, wp,
                                             *rest_geo)

    def _use_depthwise_s2(self, geo, groups, lanes) -> bool:
        """Whether conv_depthwise_s2_k3 (and its _data and _filter kernels) computes this
        convolution's forward pass (input gradient, weight gradient): depthwise, 3x3, stride 2,
        padding 1, no dilation, on planes of exactly 2 Ho x 2 Wo, at any ``lanes`` (a row's last
        vector may be partial)."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        return (self._depthwise_s2 is not False and c == o == groups and (kh, kw, sh, sw, ph, pw, dh, dw)
                == (3, 3, 2, 2, 1, 1, 1, 1) and (h, wd) == (2 * ho, 2 * wo))

    def _use_depthwise_plane(self, geo, groups, lanes) -> bool:
        """Whether conv_depthwise_k3_plane (and its _filter kernel) computes this stride-1 pass
        (forward, the input gradient as the flipped forward, the weight gradient): depthwise,
        3x3, padding 1, no dilation (_depthwise_plane_layer), a plane that fits in local memory."""
        return self._depthwise_plane_layer(geo, groups) \
            and self._depthwise_plane_bytes(geo[2], geo[3], lanes) <= self._local_planes_bytes()

    def _depthwise_plane_layer(self, geo, groups) -> bool:
        """A depthwise 3x3 "same" layer (stride 1, padding 1, undilated) for the plane kernels,
        unless their A/B switch is off."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        return (self._depthwise_plane is not False and c == o == groups and (h, wd) == (ho, wo)
                and (kh, kw, sh, sw, ph, pw, dh, dw) == (3, 3, 1, 1, 1, 1, 1, 1))

    @staticmethod
    def _depthwise_plane_bytes(h, wd, lanes) -> int:
        """conv_depthwise_k3_plane's local memory for one copy: a plane between its zeros (PLANE_SETUP)."""
        return (2 * (wd + 1) + -(-h * wd // lanes) * lanes) * 4

    def _depthwise_plane_copies(self, h, wd, lanes) -> tuple:
        """The plane kernels' (local memory, ahead) arguments: room for two copies, each plane
        copied while the one before it is computed (PLANE_COPIES), on planes of at most
        PLANE_AHEAD_MAX_VALUES values (any with the A/B switch on) where two fit; else one."""
        one = self._depthwise_plane_bytes(h, wd, lanes)
        small = h * wd <= PLANE_AHEAD_MAX_VALUES if self._plane_ahead is None else self._plane_ahead
        ahead = small and 2 * one <= self._local_planes_bytes()
        return self._local_memory((1 + ahead) * one), int(ahead)

    def _depthwise_items(self, planes, plane_values):
        """(global size, planes per work-item) of conv_depthwise_s2_k3, its input gradient and
        conv_depthwise_k3_plane over ``planes`` planes of ``plane_values`` input values each:
        DEPTHWISE_ITEM_PLANES a work-item, fewer where that takes over DEPTHWISE_ITEM_VALUES values,
        leaves under DIRECT_LOCAL_MIN_ITEMS work-items or does not divide the planes."""
        per = DEPTHWISE_ITEM_PLANES if self._group_runs is None else int(self._group_runs)
        while per > 1 and ((per * plane_values > DEPTHWISE_ITEM_VALUES and self._group_runs is None)
                           or planes % per or planes // per < DIRECT_LOCAL_MIN_ITEMS):
            per //= 2
        return (planes // per,), per

    def _depthwise_s2_forward(self, program, x, w, y, geo, bias, epilogue):
        """y = bias + the depthwise 3x3 stride-2 convolution ``geo`` of x (conv_depthwise_s2_k3)."""
        size, per = self._depthwise_items(geo[0] * geo[1], geo[2] * geo[3])
        self._kernel(program, "conv_depthwise_s2_k3")(
            self.queue, size, (1,), *self._ref(x), *self._ref(w), *self._ref(y), geo[1], geo[7], geo[8], per,
            *self._optional(bias), *self._epilogue_args(epilogue))

    def _use_olanes(self, geo, groups) -> bool:
        """Whether conv_olanes_* (output channels in the lanes) computes this direct forward pass."""
        if self._olanes is not None:
            return self._olanes and (geo[8], geo[5]) in OLANES_BUILDS
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        return (self.gemm_variant == "packed" and self._gemm_tiles["VW"] == 16 and groups == 1 and o % 16 == 0
                and kh == kw and (wo, kh) in OLANES_BUILDS and sh == sw == dh == dw == 1)

    def _olanes_forward(self, x, w, y, geo, ws, bias, epilogue):
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        wt = scratch(ws, self, "conv_olanes_w", (w.size,), np.float32)
        self._kernel("conv.cl", "conv_olanes_weights")(self.queue, (w.size,), None, kh * kw, o, *self._ref(w),
                                                       wt.base_data)
        self._kernel("conv.cl", f"conv_olanes_w{wo}_k{kh}")(
            self.queue, (n * o // 16 * ho,), (1,), *self._ref(x), c, h, wd, ph, pw, wt.base_data, *self._ref(y),
            o, ho, *self._optional(bias), *self._epilogue_args(epilogue))

    def _direct_forward_lanes(self, geo, groups) -> int:
        """The direct forward kernel's float lanes for the convolution ``geo`` (VEC of its
        conv.cl build): a 16-lane GEMM's 16 where output rows are whole 16-lane vectors (on
        PoCL 3.1 / Zen 5 the 4-group 64->64 layer and the ResNet's 16-channel layers ran faster
        so), else the convolutions' own lanes (LeNet's 28- and 10-wide rows were slower at 16;
        docs/opencl.md, session 33); the depthwise plane kernels' layers at the convolutions'
        own lanes whatever their rows (a plane is one row there; 16 lanes measured slower on
        both PoCLs with AVX-512, docs/opencl.md, session 58)."""
        wide = self._gemm_float_lanes()
        return wide if geo[8] % wide == 0 and not self._depthwise_plane_layer(geo, groups) else self._conv_vec

    def _gemm_float_lanes(self) -> int:
        """The packed GEMM's float lanes (16 on AVX-512 devices), else the convolutions' own."""
        return self._gemm_tiles["VW"] if self.gemm_variant == "packed" else self._conv_vec

    def _conv_program(self, lanes: int) -> str:
        """The conv.cl build whose VEC is ``lanes``."""
        return "conv.cl" if lanes == self._conv_vec else f"conv.cl:vec{lanes}"

    def _use_phased(self, geo, groups) -> bool:
        """Whether conv_direct_fwd4_phased computes this forward pass: strided, on 8-lane
        devices (where it was measured against the implicit GEMM), 4 dividing the outputs per
        group, and few enough taps for its offset table."""
        if self.conv_algorithm not in ("auto", "direct") or self.gemm_variant != "packed" or self._conv_vec != 8:
            return False
        o, kh, kw, sh, sw = geo[4], geo[5], geo[6], geo[9], geo[10]
        # a 1x1 kernel reads one phase of the sh x sw the copy would lay out: the implicit GEMM,
        # gathering its pixels in place, measured faster (the ResNet's stride-2 projections)
        return (sh, sw) != (1, 1) and (o // groups) % 4 == 0 and 1 < kh * kw <= PHASED_MAX_TAPS

    def _phased_forward(self, x, w, y, geo, groups, ws, bias, epilogue=None):
        """y = bias + the strided convolution ``geo`` of x, by the direct kernel on x laid out
        as phase planes (pad_phases in conv.cl)."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        xq, hq, wq = self._phase_planes(x, geo, self._conv_vec, ws)
        per = (o // groups) // 4   # runs of 4 outputs per work-item: a whole group...
        while per % 2 == 0 and (per > PHASED_MAX_RUNS or n * o // (4 * per) < DIRECT_LOCAL_MIN_ITEMS):
            per //= 2   # ...unless that leaves too few work-items
        self._kernel("conv.cl", "conv_direct_fwd4_phased")(
            self.queue, (n * o // (4 * per),), (1,), xq.base_data, *self._ref(w), *self._ref(y), c, hq, wq, o, ho,
            wo, c // groups, o // groups, kh, kw, sh, sw, dh, dw, per, min(c // groups, PHASED_CHANNELS),
            *self._optional(bias), *self._epilogue_args(epilogue))

    def _local_memory(self, nbytes: int):
        """A kernel's __local argument of ``nbytes``: the same object for the same size, so that a
        Context's launches with it compare equal to their last ones and set no arguments
        (programs._Launcher; a new LocalMemory each call set all thirty-odd every time). A
        handful of sizes at a time: emptied past LOCAL_MEMORY_SIZES, so any sequence of shapes
        keeps it bounded."""
        kept = self._local_memory_args
        arg = kept.get(nbytes)
        if arg is None:
            if len(kept) >= LOCAL_MEMORY_SIZES:
                kept.clear()
            arg = kept[nbytes] = self._cl.LocalMemory(nbytes)
        return arg

    def _local_planes_bytes(self) -> int:
        """The most local memory the direct forward kernel stages padded planes in: its own
        limit on CPU drivers, and half the device's local memory anywhere."""
        return min(DIRECT_LOCAL_MAX_BYTES, self.limits.local_mem_size // 2)

    # ------------------------------------------------------------ convolution
    @staticmethod
    def _conv_geometry(x_shape, w_shape, y_shape, stride, padding, dilation, groups, op):
        (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
        (sh, sw), (dh, dw) = check_conv_shapes("opencl", op, x_shape, w_shape, y_shape, (sh, sw), (ph, pw),
                                               (dh, dw), groups)
        n, c, h, w = x_shape
        o, _, kh, kw = w_shape
        ho, wo = y_shape[2:]
        return (n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw)

    def _im2col(self, x, geo, ws):
        n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        col = scratch(ws, self, "conv_col", (c * kh * kw, n * ho * wo), np.float32)
        self._launch_rows("conv.cl", "im2col", ho, (c * kh * kw, n), *self._ref(x), n, c, h, w, wo, kh, kw,
                          sh, sw, ph, pw, dh, dw, *self._ref(col))
        return col

    def _swap_nc(self, src, a0, a1, inner, dst, accumulate=False):
        """(a0, a1, inner) -> (a1, a0, inner)."""
        self._launch_rows("conv.cl", "swap_batch_channels", inner, (a1, a0), *self._ref(src), a0, a1,
                          *self._ref(dst), int(accumulate))

    def conv2d(self, x, w, out, stride, padding, dilation, groups, ws=None, bias=None, norm=None, relu=False,
               residual=None):
        check_conv_epilogue("opencl", out, bias, norm, residual)
        geo = self._conv_geometry(x.shape, w.shape, out.shape, stride, padding, dilation, groups, "conv2d")
        algorithm = self._forward_algorithm(geo, groups)
        if algorithm in ("winograd", "s2", "gemm"):
            # Winograd adds the bias in its output transform, so the inference batch norm is
            # folded into its weights and bias where WINOGRAD_FOLD_NORM_TAPS says (no pass of its
            # own); the rest (all of the epilogue after im2col) runs as ops of their own
            winograd = algorithm != "gemm"
            if winograd and norm is not None and geo[5] in WINOGRAD_FOLD_NORM_TAPS:
                w, bias = self._fold_norm(w, bias, norm, ws)
                norm = None
            # ...but a ReLU right after the bias goes into Winograd's stores (no pass of its own)
            fused = algorithm in ("winograd", "s2") and self._winograd_relu and relu and norm is None \
                and residual is None
            self._conv2d(x, w, out, geo, groups, ws, algorithm, bias if winograd else None, (None, fused))
            conv_epilogue(self, out, None if winograd else bias, norm, relu and not fused, ws, residual)
            return
        if norm is not None:
            w, bias = self._fold_norm(w, bias, norm, ws)
        self._conv2d(x, w, out, geo, groups, ws, algorithm, bias, (residual, bool(relu)))

    def _forward_algorithm(self, geo, groups) -> str:
        """The kernel a forward convolution ``geo`` runs on: winograd, s2 (3x3 stride 2 as
        Winograd on its phases), phased (strided, on phase planes), direct, implicit (GEMM) or
        gemm (im2col + GEMM)."""
        if self._use_winograd(geo, groups, "forward"):
            return "winograd"
        if self._use_s2(geo, groups, "forward"):
            return "s2"
        if self._use_phased(geo, groups):
            return "phased"
        if self._use_direct(geo, groups, "forward"):
            return "direct"
        return "implicit" if self._use_implicit() else "gemm"

    def _fold_norm(self, w, bias, norm, ws):
        """(weights, bias) of the convolution followed by the inference batch norm ``norm``
        (conv_fold_norm in conv.cl), in the workspace: the convolution's stores then apply the
        norm with its bias, so no pass over the output normalises it."""
        o = w.shape[0]
        wf = scratch(ws, self, "conv_folded_w", w.shape, np.float32)
        shift = scratch(ws, self, "conv_folded_shift", (o,), np.float32)
        self._kernel("conv.cl", "conv_fold_norm")(
            self.queue, (o,), (1,), w.size // max(o, 1), *self._ref(w), *self._optional(norm.gamma),
            *self._optional(norm.beta), *self._ref(norm.running_mean), *self._ref(norm.running_var), float(norm.eps),
            *self._optional(bias), *self._ref(wf), *self._ref(shift))
        return wf, shift

    def _epilogue_args(self, epilogue, offset=0):
        """(residual buffer, its offset + ``offset``, EPI_* bits of conv.cl) of conv2d's
        epilogue (residual or None, relu) for the stores of the forward kernels."""
        residual, relu = epilogue if epilogue is not None else (None, False)
        bits = (1 if residual is not None else 0) | (2 if relu else 0)
        if residual is None:
            return self._flag.base_data, 0, bits
        buf, off = self._ref(residual)
        return buf, off + offset, bits

    def _conv2d(self, x, w, out, geo, groups, ws, algorithm, bias=None, epilogue=None) -> None:
        """out = the convolution ``geo`` of x with w by ``algorithm`` (_forward_algorithm); the
        direct and implicit-GEMM paths add ``bias`` and apply ``epilogue`` ((residual or None,
        relu)) in their stores, Winograd the bias and the ReLU (in its output transform), im2col
        neither."""
        n, c, h, wd, o, kh, kw, ho, wo = geo[:9]
        if algorithm == "winograd":
            if epilogue is not None and epilogue[0] is not None:
                raise ValueError("opencl backend conv2d: the Winograd path takes no residual in its stores")
            self._winograd(x, w, out, geo, False, False, ws, bias, epilogue is not None and epilogue[1])
            return
        if algorithm == "s2":
            if epilogue is not None and epilogue[0] is not None:
                raise ValueError("opencl backend conv2d: the phase Winograd path takes no residual in its stores")
            self._s2_forward(x, w, out, geo, ws, bias, epilogue is not None and epilogue[1])
            return
        if algorithm == "phased":
            self._phased_forward(x, w, out, geo, groups, ws, bias, epilogue)
            return
        if algorithm == "direct" and self._use_olanes(geo, groups):
            self._olanes_forward(x, w, out, geo, ws, bias, epilogue)
            return
        if algorithm == "direct":
            self._direct_forward(x, w, out, geo, groups, False, False, ws, bias, epilogue)
            return
        if algorithm == "implicit":
            og, cg = o // groups, c // groups
            (xb, xo), (wb, wo_), (yb, yo) = self._ref(x), self._ref(w), self._ref(out)
            bb = self._ref(bias) if bias is not None else None
            for g in range(groups):
                self._conv_gemm(wb, wo_ + g * og * cg * kh * kw, False, xb, xo + g * cg * h * wd, yb,
                                yo + g * og * ho * wo, og, cg * kh * kw, (n, c, h, wd), (o, ho, wo), (kh, kw),
                                geo[9:], 0.0, ws, bias=None if bb is None else (bb[0], bb[1] + g * og),
                                epilogue=self._epilogue_args(epilogue, g * og * ho * wo))
            return
        col = self._im2col(x, geo, ws)
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        y_cn = scratch(ws, self, "conv_cn", (o, cols), np.float32)   # output as (O, N * Ho * Wo)
        wb, cb, yb = self._ref(w), self._ref(col), self._ref(y_cn)
        for g in range(groups):
            self._gemm(og, cols, kg, (wb[0], wb[1] + g * og * kg), kg, False,
                       (cb[0], cb[1] + g * kg * cols), cols, False,
                       (yb[0], yb[1] + g * og * cols), cols, 1.0, 0.0, ws)
        self._swap_nc(y_cn, o, n, ho * wo, out)

    def conv2d_backward_data(self, dy, w, dx, stride, padding, dilation, groups,
                             accumulate=False, ws=None):
        geo = self._conv_geometry(dx.shape, w.shape, dy.shape, stride, padding, dilation, groups,
                                  "conv2d_backward_data")
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        if self._use_winograd(geo, groups, "data"):   # the forward convolution of dy, taps flipped
            flipped = (n, o, ho, wo, c, kh, kw, h, wd, 1, 1, (kh - 1) * dh - ph, (kw - 1) * dw - pw, dh, dw)
            self._winograd(dy, w, dx, flipped, True, accumulate, ws)
            return
        if self._use_s2(geo, groups, "data"):
            self._s2_data(dy, w, dx, geo, accumulate, ws)
            return
        if sh == sw == 1 and self._use_implicit() and not self._use_direct(geo, groups, "data"):
            # the forward convolution of dy with the transposed, flipped weights
            og, cg = o // groups, c // groups
            (db, do), (wb, wo_), (xb, xo) = self._ref(dy), self._ref(w), self._ref(dx)
            args = (1, 1, (kh - 1) * dh - ph, (kw - 1) * dw - pw, dh, dw)
            for g in range(groups):
                self._conv_gemm(wb, wo_ + g * og * cg * kh * kw, True, db, do + g * og * ho * wo, xb,
                                xo + g * cg * h * wd, cg, og * kh * kw, (n, o, ho, wo), (c, h, wd), (kh, kw),
                                args, float(bool(accumulate)), ws)
            return
        if self._use_direct(geo, groups, "data"):
            lanes = self._direct_forward_lanes(geo, groups)
            if self._use_depthwise_s2(geo, groups, lanes):
                size, per = self._depthwise_items(n * c, h * wd)
                self._kernel(self._conv_program(lanes), "conv_depthwise_s2_k3_data")(
                    self.queue, size, (1,), *self._ref(dy), *self._ref(w), *self._ref(dx), c, ho, wo, per,
                    int(bool(accumulate)))
                return
            if sh == sw == 1:   # the forward convolution of dy with the flipped weights
                flipped = (n, o, ho, wo, c, kh, kw, h, wd, 1, 1, (kh - 1) * dh - ph, (kw - 1) * dw - pw, dh, dw)
                self._direct_forward(dy, w, dx, flipped, groups, True, accumulate, ws)
            elif not self._phase_data(dy, w, dx, geo, groups, accumulate):
                self._launch_rows("conv.cl", "conv_direct_bwd_data", h, (n * c,), *self._ref(dy), *self._ref(w),
                                  *self._ref(dx), c, wd, o, ho, wo, c // groups, o // groups, kh, kw,
                                  sh, sw, ph, pw, dh, dw, int(accumulate))
            return
        if self._use_implicit():
            self._phased_backward_data(dy, w, dx, geo, groups, accumulate, ws)
            return
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        dy_cn = scratch(ws, self, "conv_cn", (o, cols), np.float32)
        self._swap_nc(dy, n, o, ho * wo, dy_cn)
        dcol = scratch(ws, self, "conv_col", (c * kh * kw, cols), np.float32)
        wb, db, cb = self._ref(w), self._ref(dy_cn), self._ref(dcol)
        for g in range(groups):
            self._gemm(kg, cols, og, (wb[0], wb[1] + g * og * kg), kg, True,
                       (db[0], db[1] + g * og * cols), cols, False,
                       (cb[0], cb[1] + g * kg * cols), cols, 1.0, 0.0, ws)
        self._launch_rows("conv.cl", "col2im", h, (n * c,), *self._ref(dcol), n, c, wd, ho, wo,
                          kh, kw, sh, sw, ph, pw, dh, dw, *self._ref(dx), int(accumulate))

    def _phase_data(self, dy, w, dx, geo, groups, accumulate) -> bool:
        """dx (+)= the input gradient of the strided convolution ``geo`` by dx's stride phases
        in local memory (conv_phase_bwd_data), each work-item DIRECT_LOCAL_GROUP_RUNS planes;
        False (nothing launched) where its taps or planes do not fit."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        og, cg, lanes = o // groups, c // groups, self._conv_vec
        if og * kh * kw > PHASE_DATA_MAX_TAPS or self._data_phases is False:
            return False
        hq, wq = -(-h // sh), round_up(-(-wd // sw), lanes)   # dx's phases, rows of whole vectors
        top, left = max(0, -(-((kh - 1) * dh - ph) // sh)), max(0, -(-((kw - 1) * dw - pw) // sw))
        hl, wl = top + max(ho, hq + (sh - 1 + ph) // sh), left + max(wo, wq + (sw - 1 + pw) // sw)
        dyl, dxl = og * hl * wl * 4, sh * sw * hq * wq * 4
        if dyl + dxl > self._local_planes_bytes():
            return False
        per = DIRECT_LOCAL_GROUP_RUNS
        while per > 1 and ((n * c) % per or n * c // per < DIRECT_LOCAL_MIN_ITEMS):
            per //= 2
        self._kernel("conv.cl", "conv_phase_bwd_data")(
            self.queue, (n * c // per,), (1,), *self._ref(dy), *self._ref(w), *self._ref(dx), c, h, wd, o, ho, wo,
            cg, og, kh, kw, sh, sw, ph, pw, dh, dw, int(bool(accumulate)), per, self._local_memory(dyl), hl, wl,
            top, left, self._local_memory(dxl), hq, wq)
        return True

    def _phased_backward_data(self, dy, w, dx, geo, groups, accumulate, ws):
        """dx (+)= the input gradient of the strided convolution ``geo``, one stride phase at a
        time (the dx pixels whose row and column leave remainders (ry, rx) by the stride): only
        the taps whose offsets match the phase reach it, so each phase is a stride-1 implicit
        GEMM of dy with those taps, flipped (pack_a_phase), stored straight into dx's strided
        pixels; no column matrix, no col2im, no multiply by the zeros between dy's pixels."""
        n, c, h, wd, o, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw = geo
        rows = [phase_taps(kh, sh, ph, dh, r) for r in range(min(sh, h))]
        cols = [phase_taps(kw, sw, pw, dw, r) for r in range(min(sw, wd))]
        beta = float(bool(accumulate))
        if not accumulate and (None in rows or None in cols):   # phases no tap reaches stay zero
            self.fill(dx, 0.0)
            beta = 1.0
        og, cg = o // groups, c // groups
        (db, do), (wb, wo_), (xb, xo) = self._ref(dy), self._ref(w), self._ref(dx)
        for ry, ty in enumerate(rows):
            for rx, tx in enumerate(cols):
                if ty is None or tx is None:
                    continue
                (ky_hi, sy, na, pad_y, dil_y), (kx_hi, sx, nb, pad_x, dil_x) = ty, tx
                hq, wq = len(range(ry, h, sh)), len(range(rx, wd, sw))
                for g in range(groups):
                    self._conv_gemm(wb, wo_ + g * og * cg * kh * kw, False, db, do + g * og * ho * wo, xb,
                                    xo + g * cg * h * wd + ry * wd + rx, cg, og * na * nb, (n, o, ho, wo),
                                    (c, hq, wq), (na, nb), (1, 1, pad_y, pad_x, dil_y, dil_x), beta, ws,
                                    phase=(kh, kw, ky_hi, sy, kx_hi, sx), y_strides=(h * wd, sh * wd, sw))

    def conv2d_backward_filter(self, x, dy, dw, stride, padding, dilation, groups,
                               accumulate=False, ws=None):
        geo = self._conv_geometry(x.shape, dw.shape, dy.shape, stride, padding, dilation, groups,
                                  "conv2d_backward_filter")
        n, c, h, wd, o, kh, kw, ho, wo = geo[:9]
        if self._use_s2(geo, groups, "filter"):
            self._s2_filter(x, dy, dw, geo, accumulate, ws)
            return
        if self._use_winograd_filter(geo, groups):
            self._winograd_filter(x, dy, dw, geo, accumulate, ws)
            return
        if self._use_direct(geo, groups, "filter"):
            self._direct_filter(x, dy, dw, geo, groups, accumulate, ws)
            return
        if self._use_implicit():
            og, cg = o // groups, c // groups
            (xb, xo), (db, do), (wb, wo_) = self._ref(x), self._ref(dy), self._ref(dw)
            for g in range(groups):
                self._conv_filter_gemm(xb, xo + g * cg * h * wd, db, do + g * og * ho * wo, wb,
                                       wo_ + g * og * cg * kh * kw, og, cg * kh * kw, (n, c, h, wd), (o, ho, wo),
                                       (kh, kw), geo[9:], float(bool(accumulate)), ws)
            return
        cols = n * ho * wo
        og, kg = o // groups, (c // groups) * kh * kw
        col = self._im2col(x, geo, ws)
        dy_cn = scratch(ws, self, "conv_cn", (o, cols), np.float32)
        self._swap_nc(dy, n, o, ho * wo, dy_cn)
        wb, db, cb = self._ref(dw), self._ref(dy_cn), self._ref(col)
        for g in range(groups):
            self._gemm(og, kg, cols, (db[0], db[1] + g * og * cols), cols, False,
                       (cb[0], cb[1] + g * kg * cols), cols, True,
                       (wb[0], wb[1] + g * og * kg), kg, 1.0, float(bool(accumulate)), ws)

    def _direct_filter_build(self, geo, groups, by_rows) -> tuple[int, int]:
        """(float lanes of the conv.cl build, output channels per work-item) of the direct
        weight gradient: on a 16-lane GEMM with 8-lane convolutions (CONV_LANES), rows of whole
        16-lane vectors take the 16-lane build with FILTER_ROW_OUTS_16_LANES outputs."""
        kw, wo, outputs = geo[6], geo[8], geo[4] // groups
        wide = self._gemm_float_lanes()
        outs = FILTER_ROW_OUTS_16_LANES.get(kw, 0)
        if by_rows and wide == 16 and self._conv_vec == 8 and outs and wo % 16 == 0 and outputs % outs == 0:
            return 16, outs
        return self._conv_vec, filter_outputs(outputs, kw, self._conv_vec) if by_rows else 1

    def _filter_local_bytes(self, geo, outs) -> int:
        """The local memory of conv_direct_bwd_filter_local_k3 (strided 3x3 taps, one output
        per work-item, rows of whole vectors) for this weight gradient, or 0 where it does not
        compute it (or its phase planes do not fit). Stride 1 keeps the padded copy and the
        row-of-taps kernel: the bench's depthwise 3x3 layer measured mixed there, faster on
        PoCL 3.0's 8 lanes and slower on PoCL 3.1's 16 (docs/opencl.md, session 50)."""
        kh, kw, wo, sh, sw = geo[5], geo[6], geo[8], geo[9], geo[10]
        wanted = (sh, sw) != (1, 1) if self._filter_local is None else self._filter_local
        if not wanted or (kh, kw) != (3, 3) or outs != 1 or wo % self._conv_vec:
            return 0
        hq, wq = phase_plane_shape(geo)
        local = (sh * sw * hq * wq + self._conv_vec + wq) * 4
        return local if local <= self._local_planes_bytes() else 0

    def _depthwise_filter_chunks(self, n, c, plane_outputs) -> int:
        """The chunks the n images are split into for the depthwise weight gradients (a
        work-item per channel and chunk): whole planes of at least DEPTHWISE_FILTER_ITEM_OUTPUTS
        outputs a work-item, at most DIRECT_FILTER_ITEMS work-items."""
        least = DEPTHWISE_FILTER_ITEM_OUTPUTS if self._filter_item_outputs is None else int(self._filter_item_outputs)
        planes = max(1, -(-least // plane_outputs))
        return max(1, min(n // planes, DIRECT_FILTER_ITEMS // c))

    def _direct_filter(self, x, dy, dw, geo, groups, accumulate, ws):
        n, c, h, wd, o, kh, kw, ho, wo = geo[:9]
        sh, sw, ph, pw, dh, dwl = geo[9:]
        taps, weights = kh * kw, dw.size // (kh * kw)   # weights: O * channels per group
        lanes = self._direct_forward_lanes(geo, groups)
        plane = self._use_depthwise_plane(geo, groups, lanes)
        if plane or self._use_depthwise_s2(geo, groups, lanes):
            # a work-item per (channel, chunk of images), the chunks' sums added by conv_direct_filter_sum
            chunks = self._depthwise_filter_chunks(n, c, ho * wo)
            part = scratch(ws, self, "conv_filter_part", (chunks * dw.size,), np.float32)
            name, sizes = (("conv_depthwise_k3_plane_filter", (h, wd, *self._depthwise_plane_copies(h, wd, lanes)))
                           if plane else ("conv_depthwise_s2_k3_filter", (ho, wo)))
            self._kernel(self._conv_program(lanes), name)(
                self.queue, (c, chunks), (1, 1), *self._ref(x), *self._ref(dy), *self._ref(part), n, *sizes)
            self._launch_flat("conv.cl", "conv_direct_filter_sum", dw.size, chunks, *self._ref(part),
                              *self._ref(dw), int(accumulate))
            return
        by_rows = self._filter_by_rows(geo, groups)   # a work-item per row of taps
        lanes, outs = self._direct_filter_build(geo, groups, by_rows)
        program = self._conv_program(lanes)
        local = self._filter_local_bytes(geo, outs)   # a work-item per output (all its taps)
        items = weights if local else kh * weights // outs if by_rows else taps * weights
        chunks = max(1, min(n, (DIRECT_FILTER_ITEMS if outs == 1 else DIRECT_FILTER_ITEMS_OUTS) // items))
        part = scratch(ws, self, "conv_filter_part", (chunks * dw.size,), np.float32)
        if local:
            hq, wq = phase_plane_shape(geo)
            self._kernel("conv.cl", "conv_direct_bwd_filter_local_k3")(
                self.queue, (weights, chunks), (1, 1), *self._ref(x), h, wd, ph, pw, self._local_memory(local),
                *self._ref(dy), *self._ref(part), n, c, hq, wq, o, ho, wo, c // groups, o // groups, sh, sw, dh, dwl)
        elif by_rows:
            xq, hq, wq = self._phase_planes(x, geo, 0, ws)   # reads stay inside the rows
            self._kernel(program, f"conv_direct_bwd_filter_k{kw}" + (f"_o{outs}" if outs > 1 else ""))(
                self.queue, (kh, weights // outs, chunks), (1, 1, 1), xq.base_data, *self._ref(dy),
                *self._ref(part), n, c, hq, wq, o, ho, wo, c // groups, o // groups, kh, dh, dwl, sh, sw)
        else:
            xq, hq, wq = self._phase_planes(x, geo, self._conv_vec, ws)
            self._kernel("conv.cl", "conv_direct_bwd_filter")(
                self.queue, (taps, weights, chunks), (1, 1, 1), taps, xq.base_data, *self._ref(dy),
                *self._ref(part), n, c, hq, wq, o, ho, wo, c // groups, o // groups, kh, kw, sh, sw, dh, dwl)
        self._launch_flat("conv.cl", "conv_direct_filter_sum", dw.size, chunks, *self._ref(part),
                          *self._ref(dw), int(accumulate))

    # ---------------------------------------------------------------- pooling
    @staticmethod
    def _pool_geometry(x_shape, y_shape, kernel, stride, padding, op):
        (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride if stride is not None else kernel), pair(padding)
        sh, sw = check_pool_shapes("opencl", op, x_shape, y_shape, (kh, kw), (sh, sw), (ph, pw))
        h, w = x_shape[2:]
        ho, wo = y_shape[2:]
        return h, w, ho, wo, kh, kw, sh, sw, ph, pw

    def max_pool2d(self, x, out, argmax, kernel, stride, padding, ws=None):
        geo = self._pool_geometry(x.shape, out.shape, kernel, stride, padding, "max_pool2d")
        check_argmax("opencl", "max_pool2d", argmax, out.shape)
        planes = out.shape[0] * out.shape[1]
        h, w, ho, wo = geo[:4]
        if geo[4:] == (2, 2, 2, 2, 0, 0) and (h, w) == (2 * ho, 2 * wo):
            lanes = self._pool_lanes(wo)
            if lanes:
                rows = ho * next(p for p in (16, 8, 4, 2, 1) if planes % p == 0 and p * ho <= POOL_VEC_ROWS or p == 1)
                self._kernel("conv.cl", f"max_pool_2x2_v{lanes}")(self.queue, (planes * ho // rows,), (1,), rows,
                                                                 *self._ref(x), ho, wo, *self._ref(out),
                                                                 *self._ref(argmax))
                return
            # rows of at least one vector (LeNet's 14 too): a loop along them
            if self.is_cpu and wo >= self._conv_vec:
                rows = ho * (POOL_ROWS_PLANES if planes % POOL_ROWS_PLANES == 0 else 1)
                self._kernel("conv.cl", "max_pool_2x2_rows")(self.queue, (planes * ho // rows,), (1,), rows,
                                                             *self._ref(x), ho, wo, *self._ref(out),
                                                             *self._ref(argmax))
                return
            total = planes * ho * wo
            if total < POOL_FLAT_MAX:
                self._launch_flat("conv.cl", "max_pool_2x2", total, *self._ref(x), ho, wo, 1.0 / wo, 1.0 / ho,
                                  *self._ref(out), *self._ref(argmax))
                return
        self._launch_rows("conv.cl", "max_pool", geo[2], (planes,), *self._ref(x), *geo,
                          *self._ref(out), *self._ref(argmax))

    def _pool_lanes(self, wo: int) -> int:
        """The lanes of the max_pool_2x2_v* build for 2x2 pooling rows of ``wo`` outputs, or 0:
        on CPU devices, rows of 3 to 16 outputs (POOL_VEC_WIDTHS), each in the smallest vector
        that holds it."""
        if not (self._pool_vec if self._pool_vec is not None else self.is_cpu):
            return 0
        return next((lanes for lanes in (4, 8, 16) if lanes // 2 < wo <= lanes), 0) if wo in POOL_VEC_WIDTHS else 0

    def max_pool2d_backward(self, dy, argmax, dx, kernel, stride, padding, accumulate=False, ws=None):
        self._pool_geometry(dx.shape, dy.shape, kernel, stride, padding, "max_pool2d_backward")  # checks them
        planes = dx.shape[0] * dx.shape[1]
        check_argmax("opencl", "max_pool2d_backward", argmax, dy.shape)
        self._kernel("conv.cl", "max_pool_bwd")(
            self.queue, (round_up(planes, 64),), (64,), planes, dx.shape[2] * dx.shape[3],
            dy.shape[2] * dy.shape[3], *self._ref(dy), *self._ref(argmax), *self._ref(dx), int(accumulate))

    def avg_pool2d(self, x, out, kernel, stride, padding, count_include_pad=True, ws=None):
        geo = self._pool_geometry(x.shape, out.shape, kernel, stride, padding, "avg_pool2d")
        planes = out.shape[0] * out.shape[1]
        if self._global_pool(geo):
            self._launch_flat("conv.cl", "avg_pool_global", planes, *self._ref(x), geo[0] * geo[1], *self._ref(out))
            return
        self._launch_rows("conv.cl", "avg_pool", geo[2] * geo[3], (planes,), *self._ref(x), *geo,
                          int(bool(count_include_pad)), *self._ref(out))

    @staticmethod
    def _global_pool(geo) -> bool:
        """Whether the pooling ``geo`` (_pool_geometry) has one window, the whole plane, unpadded."""
        return geo[2:4] == (1, 1) and geo[4:6] == geo[:2] and geo[8:] == (0, 0)

    def avg_pool2d_backward(self, dy, dx, kernel, stride, padding, count_include_pad=True,
                            accumulate=False, ws=None):
        geo = self._pool_geometry(dx.shape, dy.shape, kernel, stride, padding, "avg_pool2d_backward")
        planes = dx.shape[0] * dx.shape[1]
        if self._global_pool(geo):   # dy / (H W) everywhere
            self._launch_rows("conv.cl", "avg_pool_global_bwd", geo[0] * geo[1], (planes,), *self._ref(dy), *self._ref(dx), int(accumulate))
            return
        self._launch_rows("conv.cl", "avg_pool_bwd", geo[0] * geo[1], (planes,), *self._ref(dy), *geo,
                          int(bool(count_include_pad)), *self._ref(dx), int(accumulate))

    # ------------------------------------------------------------ batch norm
    def _per_channel_grid(self, c):
        """(global, local) sizes of the batch-norm kernels with a work-item per channel, each
        walking its channel's N planes: on CPU drivers every work-item its own work-group, so the
        channels spread over all threads (a group of 64 held all 32 channels of a layer on one)."""
        if self.is_cpu:
            return (c,), (1,)
        return (round_up(c, 64),), (64,)

    def _optional(self, a):
        """(buffer, offset, present) for an optional per-channel array."""
        if a is None:
            return self._flag.base_data, 0, 0
        return (*self._ref(a), 1)

    def _bn_shape(self, x, op, *per_channel):
        check_per_channel("opencl", op, x, *per_channel)
        return channels_inner(x)

    def batch_norm_train(self, x, gamma, beta, out, mean, invstd, running_mean, running_var,
                         momentum, eps, ws=None, relu=False):
        n, c, s = self._bn_shape(x, "batch_norm_train", gamma, beta, mean, invstd, running_mean, running_var)
        self._same("batch_norm_train", x, out)
        has_running = running_mean is not None and running_var is not None
        rm = self._ref(running_mean) if has_running else (self._flag.base_data, 0)
        rv = self._ref(running_var) if has_running else (self._flag.base_data, 0)
        self._kernel("norm.cl", "bn_stats")(
            self.queue, *self._per_channel_grid(c), n, c, s, *self._ref(x), *self._ref(mean),
            *self._ref(invstd), *rm, *rv, int(has_running), float(momentum),
            float(eps))
        self._bn_apply(x, mean, invstd, gamma, beta, relu, out)

    def batch_norm_infer(self, x, gamma, beta, running_mean, running_var, eps, out, ws=None, relu=False):
        _, c, s = self._bn_shape(x, "batch_norm_infer", gamma, beta, running_mean, running_var)
        self._same("batch_norm_infer", x, out)
        invstd = scratch(ws, self, "bn_invstd", (c,), np.float32)
        self._launch_flat("norm.cl", "bn_invstd", c, *self._ref(running_var), float(eps), *self._ref(invstd))
        self._bn_apply(x, running_mean, invstd, gamma, beta, relu, out)

    def batch_norm_backward(self, x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                            accumulate_dx=False, accumulate_params=False, ws=None, relu_out=None):
        n, c, s = self._bn_shape(x, "batch_norm_backward", gamma, mean, invstd, dgamma, dbeta)
        self._same("batch_norm_backward", x, dy, *([dx] if dx is not None else []),
                   *([relu_out] if relu_out is not None else []))
        sums = scratch(ws, self, "bn_sums", (2 * c,), np.float32)
        # both kernels take dy back through the fused ReLU as they read it (no masked copy)
        self._bn_backward_reduce(x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params, relu_out)
        if dx is not None:
            self._bn_backward_data(x, dy, gamma, mean, invstd, sums, n * s, dx, accumulate_dx, relu_out)

    def _bn_backward_reduce(self, x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params, relu_out=None):
        n, c, s = channels_inner(x)
        dg, db = self._optional(dgamma), self._optional(dbeta)
        self._kernel("norm.cl", "bn_bwd_reduce")(
            self.queue, *self._per_channel_grid(c), n, c, s, *self._ref(x), *self._ref(dy),
            *self._optional(relu_out), *self._ref(mean), *self._ref(invstd), *self._ref(sums),
            dg[0], dg[1], db[0], db[1], dg[2], db[2], int(accumulate_params))

    def _bn_backward_data(self, x, dy, gamma, mean, invstd, sums, count, dx, accumulate, relu_out=None):
        n, c, s = channels_inner(x)
        g = self._optional(gamma)
        args = (int(count), *self._ref(x), *self._ref(dy), *self._optional(relu_out), *self._ref(mean),
                *self._ref(invstd), *self._ref(sums), g[0], g[1], g[2], *self._ref(dx), int(accumulate))
        if self._bn_by_planes(s):
            self._kernel("norm.cl", "bn_bwd_data_planes")(self.queue, (n * c,), (1,), s, c, *args)
            return
        self._launch_rows("norm.cl", "bn_bwd_data", *_bn_grid(x, c, s), *args)

    def _bn_by_planes(self, s) -> bool:
        """Whether the per-element batch-norm passes run a work-item per plane (CPU drivers,
        planes of several values) instead of one per element."""
        return self.is_cpu and s > 1

    def _bn_apply(self, x, mean, scale, gamma, beta, relu, out):
        """out = (x - mean) * scale (* gamma) (+ beta), then the ReLU where ``relu``."""
        n, c, s = channels_inner(x)
        g, b = self._optional(gamma), self._optional(beta)
        args = (*self._ref(x), *self._ref(mean), *self._ref(scale), g[0], g[1], b[0], b[1], g[2], b[2],
                int(bool(relu)), *self._ref(out))
        if self._bn_by_planes(s):
            self._kernel("norm.cl", "bn_apply_planes")(self.queue, (n * c,), (1,), s, c, *args)
            return
        self._launch_rows("norm.cl", "bn_apply", *_bn_grid(x, c, s), *args)

    def batch_norm_backward_reduce(self, x, dy, mean, invstd, sums, dgamma=None, dbeta=None,
                                   accumulate_params=False, ws=None):
        self._same("batch_norm_backward_reduce", x, dy)
        self._bn_shape(x, "batch_norm_backward_reduce", mean, invstd, dgamma, dbeta)
        check_batch_norm_sums("opencl", "batch_norm_backward_reduce", sums, x.shape[1])
        self._bn_backward_reduce(x, dy, mean, invstd, sums, dgamma, dbeta, accumulate_params)

    def batch_norm_backward_data(self, x, dy, gamma, mean, invstd, sums, count, dx, accumulate=False, ws=None):
        self._same("batch_norm_backward_data", x, dy, dx)
        self._bn_shape(x, "batch_norm_backward_data", gamma, mean, invstd)
        check_batch_norm_sums("opencl", "batch_norm_backward_data", sums, x.shape[1])
        self._bn_backward_data(x, dy, gamma, mean, invstd, sums, count, dx, accumulate)

    def batch_norm_sums(self, x, shift, sums, ws=None):
        n, c, s = self._bn_shape(x, "batch_norm_sums", shift)
        check_batch_norm_sums("opencl", "batch_norm_sums", sums, c)
        self._kernel("norm.cl", "bn_sums")(self.queue, *self._per_channel_grid(c), n, c, s, *self._ref(x),
                                          *self._ref(shift), *self._ref(sums))

    def batch_norm_stats(self, sums, count, shift, mean, invstd, running_mean, running_var, momentum, eps,
                         ws=None):
        c = mean.shape[0]
        check_batch_norm_sums("opencl", "batch_norm_stats", sums, c, shift, invstd, running_mean, running_var)
        has_running = running_mean is not None and running_var is not None
        rm = self._ref(running_mean) if has_running else (self._flag.base_data, 0)
        rv = self._ref(running_var) if has_running else (self._flag.base_data, 0)
        self._kernel("norm.cl", "bn_stats_from_sums")(
            self.queue, (round_up(c, 64),), (64,), c, float(count), *self._ref(sums), *self._ref(shift),
            *self._ref(mean), *self._ref(invstd), *rm, *rv, int(has_running), float(momentum), float(eps))

    def batch_norm_apply(self, x, gamma, beta, mean, invstd, out, ws=None):
        _, c, s = self._bn_shape(x, "batch_norm_apply", gamma, beta, mean, invstd)
        self._same("batch_norm_apply", x, out)
        self._bn_apply(x, mean, invstd, gamma, beta, False, out)
