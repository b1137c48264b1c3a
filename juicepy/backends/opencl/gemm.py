"""Launching the GEMM kernels of gemm.cl: packing, tile sizes, split-K (a mixin of the backend)."""

from __future__ import annotations

import abc

from ..base import check_gemm
from .layout import F32, round_up
from .programs import ALT_MR

# _conv_gemm takes the shorter ALT_MR panels only where the default ones pad more than
# 1/ALT_MR_MIN_WASTE of the rows
ALT_MR_MIN_WASTE = 16
# _conv_gemm's work-groups take all of a group's up to WHOLE_ROWS_MAX outputs at once (one row
# of tiles: each column tile's pixels gathered once, not once per row tile) where conv_gemm keeps
# its sums in registers (to_y: one K slice, dense output planes of whole NR-column panels) and the
# columns give at least WHOLE_ROWS_MIN_TILES tiles, on 16-lane builds; there the ALT_MR panels are
# taken wherever they pad fewer rows (128 outputs: 16 panels of 8, not 11 of 12). Measured on
# PoCL 3.1 / Zen 5's pointwise layers of 128 to 512 outputs (docs/opencl.md, session 38); on
# 8-lane builds one row of tiles measured the same and 4-row panels slower.
WHOLE_ROWS_MAX = 512
WHOLE_ROWS_MIN_TILES = 8

GPU_TILE = 16     # must match TS in gemm.cl
PACK_WG = 64      # work-group size along K of pack_a
PACK_ROWS = 16    # rows of K per work-group of pack_b
# A @ B^T with at most this many outputs runs gemm_nt (no packing): it beats packing on thin
# outputs (conv weight gradients) and loses on large ones (measurements in docs/opencl.md)
DOT_MAX_OUTPUTS = 128 * 512


def even_tile(size: int, most: int, step: int) -> int:
    """The tile (a multiple of ``step``, at most ``most``) that cuts ``size`` into as few, most
    nearly equal pieces as possible: 128 rows become 72 + 56, not 96 + 32."""
    pieces = -(-size // most)
    return min(most, round_up(-(-size // pieces), step))


def k_splits(tiles: int, k: int, bk: int) -> int:
    """How many K ranges to sum separately when C has too few tiles to keep the CPU threads
    busy (a conv weight gradient: a few outputs, K = batch * pixels)."""
    if tiles >= 8 or k < 4 * bk:
        return 1
    return max(1, min(-(-16 // tiles), k // (2 * bk)))



class GemmOps(abc.ABC):
    """gemm() and the raw-operand _gemm() the convolutions call. They rely on this plumbing of
    the backend class they are mixed into (and its ``queue``, ``gemm_variant``, ``_gemm_tiles``,
    ``_gemm_lock`` and ``_gemm_ws`` attributes):"""

    @abc.abstractmethod
    def _kernel(self, filename, name):
        """The compiled kernel ``name`` of ``filename`` (cached)."""

    @abc.abstractmethod
    def _ref(self, a):
        """(base buffer, element offset) of an array."""

    @abc.abstractmethod
    def _launch_flat(self, filename, name, n, *args):
        """One work-item per element."""

    #: stage tiles of B (not transposed) straight from B instead of packing it first; where
    #: the tiles say so (8-lane devices), tiles of A^T (STAGE_A_T) and of an A of at most
    #: STAGE_A_ROWS rows (a recurrent step's or a Linear's batch, whose packing cost as much as its tiles) too
    direct_staging = True
    pointwise_filter = True
    _whole_rows = True   # conv_gemm's one row of tiles where WHOLE_ROWS_MAX says (off: A/B runs)
    _weights_in_place = True   # conv_gemm reads the forward's weights unpacked where it can (off: A/B runs)

    def gemm(self, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ws=None):
        m, n, k = check_gemm("opencl", a, b, out, trans_a, trans_b)
        self._gemm(m, n, k, self._ref(a), a.shape[1], trans_a, self._ref(b), b.shape[1], trans_b,
                   self._ref(out), n, alpha, beta, ws)

    def _gemm(self, m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, alpha, beta, ws=None):
        """C = alpha * op(A) @ op(B) + beta * C on (buffer, offset) operands with leading dims."""
        if m == 0 or n == 0:
            return
        if k == 0:  # nothing to multiply: only the beta term remains
            if ldc != n:
                raise ValueError("opencl backend gemm: K == 0 on a strided output")
            self._launch_flat("elementwise.cl", "scale_f32", m * n, *c, float(beta), *c)
            return
        if self.gemm_variant == "cooperative":
            grid = (round_up(n, GPU_TILE), round_up(m, GPU_TILE))
            self._kernel("gemm.cl", "gemm_tiled_gpu")(
                self.queue, grid, (GPU_TILE, GPU_TILE), m, n, k, a[0], a[1], lda, int(bool(trans_a)),
                b[0], b[1], ldb, int(bool(trans_b)), c[0], c[1], ldc, float(alpha), float(beta))
            return
        tiles = self._gemm_tiles
        nr = 2 * tiles["VW"]  # columns of a B panel: NR in gemm.cl
        with self._gemm_lock:  # the backend's own pack buffers are shared when no ws is given
            ws = ws if ws is not None else self._gemm_ws
            if trans_b and not trans_a and m * n <= DOT_MAX_OUTPUTS:
                # rows of A and B both run along K: no packing at all
                tile_m, tile_n = even_tile(m, tiles["BM"], tiles["DR"]), even_tile(n, tiles["BN"], tiles["DC"])
                self._gemm_tiles_run("gemm_nt", m, n, k, tile_m, tile_n, (a[0], a[1], lda), (b[0], b[1], ldb),
                                     c, ldc, alpha, beta, ws)
                return
            a_panels, b_panels = -(-m // tiles["MR"]), -(-n // nr)
            # (pointer, offset, leading dim) of A for the compute kernel, as for B below: A^T's
            # rows already run along the panel, so its tiles are staged straight from A (packing
            # it read each panel's k-th row piece a whole row of A apart)
            if trans_a and self.direct_staging and tiles.get("STAGE_A_T"):
                a_src = (a[0], a[1], lda, 1)
            elif not trans_a and self.direct_staging and m <= tiles.get("STAGE_A_ROWS", 0):
                a_src = (a[0], a[1], lda, 0)
            else:
                ap = ws.get(self, "gemm_pack_a", (a_panels * tiles["MR"] * k,), F32)
                self._kernel("gemm.cl", "pack_a")(self.queue, (round_up(k, PACK_WG), a_panels), (PACK_WG, 1),
                                                  m, k, a[0], a[1], lda, int(bool(trans_a)), ap.base_data, 0)
                a_src = (ap.base_data, 0, 0, 0)
            # (pointer, offset, leading dim) of B for the compute kernel: B itself (ld > 0) where
            # its rows already run along the panel, else a packed copy (ld = 0)
            if not trans_b and self.direct_staging:
                b_src = (b[0], b[1], ldb)
            else:
                bp = ws.get(self, "gemm_pack_b", (b_panels * nr * k,), F32)
                self._kernel("gemm.cl", "pack_b")(self.queue, (nr, round_up(k, PACK_ROWS), b_panels),
                                                  (nr, PACK_ROWS, 1), n, k, b[0], b[1], ldb, int(bool(trans_b)),
                                                  bp.base_data, 0)
                b_src = (bp.base_data, 0, 0)
            tile_m = even_tile(m, tiles["BM"], tiles["MR"])
            tile_n = even_tile(n, tiles["BN"], nr)
            self._gemm_tiles_run("gemm_packed", m, n, k, tile_m, tile_n, a_src, b_src,
                                 c, ldc, alpha, beta, ws)

    def _conv_gemm(self, w, w_off, flipped, x, x_off, y, y_off, m, k, x_geo, y_hw, kernel, conv_args,
                   beta, ws=None, bias=None, epilogue=None, phase=None, y_strides=None):
        """One group of a convolution as an implicit GEMM (conv_gemm in gemm.cl) on raw buffers: the weights
        (from element ``w_off`` of ``w``; ``flipped``: transposed and flipped, for an input
        gradient) are packed (read in place by a forward whose panels they fill), the input's
        pixels are gathered as the tiles are staged, and the
        (m, N * pixels) result is stored into NCHW ``y`` from element ``y_off``, plus ``bias``
        (buffer, offset: the group's first) where given, then conv2d's ``epilogue`` (residual
        buffer, its offset at the group's first channel, EPI_* bits of conv.cl) where given.
        ``phase`` (kh, kw, ky_hi, ty, kx_hi, tx): the weights are a (kh, kw) kernel of which
        ``kernel`` taps, flipped, are taken from (ky_hi, kx_hi) back in steps of (ty, tx)
        (pack_a_phase: one stride phase of a strided input gradient); ``y_strides`` (plane,
        row, pixel): where y's pixels lie apart, when not dense."""
        n, c, h, wd = x_geo
        o, ho, wo = y_hw
        kh, kw = kernel
        cols = n * ho * wo
        tiles = self._gemm_tiles
        # shorter panels where they waste fewer padded rows than the default and the default
        # would pad more than 1/ALT_MR_MIN_WASTE of the rows (16 outputs per group: 8-row panels
        # instead of 12-row ones, 4-row instead of 6-row); 128 outputs keep 6-row panels (the
        # 4-row micro-kernel's fewer accumulators cost more than 4 padded rows of 132), but for
        # one row of tiles on 16-lane builds (WHOLE_ROWS_MAX)
        mr, alt = tiles["MR"], ALT_MR.get(tiles["MR"])
        nr = 2 * tiles["VW"]
        tile_n = even_tile(cols, tiles["BN"], nr)
        # tile_m may pass BM (the size of the kernel's local tile of sums) only where conv_gemm's
        # to_y holds: the same conditions as there
        to_y = (tiles.get("STAGE_B_ROWS") and tiles.get("DIRECT_PACKED") and k <= tiles["BK"] and y_strides is None
                and (ho * wo) % nr == 0)
        whole = (to_y and self._whole_rows and tiles["VW"] == 16 and m <= WHOLE_ROWS_MAX
                 and -(-cols // tile_n) >= WHOLE_ROWS_MIN_TILES)
        program = "gemm.cl"
        if alt and round_up(m, alt) < round_up(m, mr) and (whole or (round_up(m, mr) - m) * ALT_MR_MIN_WASTE > m):
            mr, program = alt, "gemm.cl:mr_alt"
        with self._gemm_lock:
            ws = ws if ws is not None else self._gemm_ws
            a_panels = -(-m // mr)
            # (buffer, offset, row stride) of the weights for conv_gemm: the forward's own rows
            # where the panels hold no row past m (no packing launch), else packed panels (ld 0)
            if (phase is None and not flipped and m % mr == 0 and self._weights_in_place
                    and tiles.get("STAGE_B_ROWS") and tiles.get("DIRECT_PACKED")):
                a_src = (w, w_off, k)
            else:
                ap = ws.get(self, "gemm_pack_a", (a_panels * mr * k,), F32)
                grid = (round_up(k, PACK_WG), a_panels)
                if phase is not None:
                    self._kernel(program, "pack_a_phase")(self.queue, grid, (PACK_WG, 1), m, k, w, w_off, phase[0],
                                                          phase[1], kh, kw, *phase[2:], ap.base_data, 0)
                elif flipped:
                    self._kernel(program, "pack_a_flipped")(self.queue, grid, (PACK_WG, 1), m, k, w,
                                                            w_off, kh * kw, ap.base_data, 0)
                else:
                    self._kernel(program, "pack_a")(self.queue, grid, (PACK_WG, 1), m, k, w, w_off,
                                                    k, 0, ap.base_data, 0)
                a_src = (ap.base_data, 0, 0)
            tile_m = round_up(m, mr) if whole else even_tile(m, tiles["BM"], mr)
            self._kernel(program, "conv_gemm")(
                self.queue, (-(-cols // tile_n), -(-m // tile_m)), (1, 1), m, cols, k, tile_m, tile_n,
                *a_src, x, x_off, y, y_off, c, h, wd, o, ho, wo, kh, kw,
                *conv_args, 1.0, float(beta), *(bias + (1,) if bias is not None else (self._flag.base_data, 0, 0)),
                *(epilogue if epilogue is not None else (self._flag.base_data, 0, 0)),
                *(y_strides or (0, 0, 0)))

    def _conv_filter_gemm(self, x, x_off, dy, dy_off, dw, dw_off, m, n, x_geo, y_hw, kernel, conv_args,
                          beta, ws=None):
        """The weight gradient of one convolution group as an implicit A @ B^T
        (conv_filter_gemm in gemm.cl): dy's rows and the input's gathered pixels are staged
        straight from the NCHW buffers; split along K like gemm_nt."""
        batch, c, h, wd = x_geo
        o, ho, wo = y_hw
        tiles = self._gemm_tiles
        pointwise = (kernel == (1, 1) and tuple(conv_args) == (1, 1, 0, 0, 1, 1) and (h, wd) == (ho, wo)
                     and self.gemm_variant == "packed" and (ho * wo) % tiles["VW"] == 0)
        with self._gemm_lock:
            ws = ws if ws is not None else self._gemm_ws
            if pointwise and self.pointwise_filter:
                self._gemm_tiles_run("conv_filter_gemm_pointwise", m, n, batch * ho * wo,
                                     even_tile(m, tiles["BM"], tiles["DR"]), even_tile(n, tiles["BN"], tiles["DC"]),
                                     (dy, dy_off), (x, x_off, c, o, ho * wo), (dw, dw_off), n, 1.0, beta, ws)
                return
            self._gemm_tiles_run("conv_filter_gemm", m, n, batch * ho * wo, even_tile(m, tiles["BM"], tiles["DR"]),
                                 even_tile(n, tiles["BN"], tiles["DC"]), (dy, dy_off),
                                 (x, x_off, c, h, wd, o, ho, wo, *kernel, *conv_args), (dw, dw_off), n, 1.0,
                                 beta, ws)

    def _gemm_tiles_run(self, name, m, n, k, tile_m, tile_n, a_src, b_src, c, ldc, alpha, beta, ws):
        """Launch a one-tile-at-a-time kernel over C, split along K when C has few tiles:
        gemm_packed and gemm_nt take their tiles from the ticket counter (FOR_EACH_TILE in
        gemm.cl) in a work-group per compute unit, conv_filter_gemm runs a work-group per tile."""
        bk = self._gemm_tiles["BK"]
        grid = [-(-n // tile_n), -(-m // tile_m), 1]
        splits = k_splits(grid[0] * grid[1], k, bk)
        k_chunk = round_up(-(-k // splits), bk)
        splits = -(-k // k_chunk)
        kernel = self._kernel("gemm.cl", name)
        grid[2] = splits
        if splits == 1:
            out, args = c, (m, n, k, tile_m, tile_n, k, *a_src, *b_src, c[0], c[1], ldc, float(alpha), float(beta))
        else:
            slabs = ws.get(self, "gemm_split", (splits * m * n,), F32)
            out = (slabs.base_data, 0)
            args = (m, n, k, tile_m, tile_n, k_chunk, *a_src, *b_src, slabs.base_data, 0, n, 1.0, 0.0)
        if name.startswith("conv_filter_gemm"):
            kernel(self.queue, tuple(grid), (1, 1, 1), *args)
        else:
            tiles = grid[0] * grid[1] * grid[2]
            groups = min(tiles, self._gemm_workers)
            base = self._gemm_ticket_next
            kernel(self.queue, (groups,), (1,), *args, self._gemm_ticket.base_data, base, grid[0], grid[1], tiles)
            # the counter's value once this launch has run (the kernel is enqueued: it will run)
            self._gemm_ticket_next = (base + tiles + groups) % (1 << 32)
        if splits > 1:
            self._launch_flat("gemm.cl", "gemm_split_sum", m * n, splits, out[0], c[0], c[1], n,
                              ldc, float(alpha), float(beta))
