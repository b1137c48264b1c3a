// GEMM: C = alpha * op(A) @ op(B) + beta * C, row-major, float32.
//
// CPU drivers (PoCL) run three kernels:
//  1. pack_a / pack_b copy op(A) and op(B) once into micro-panel order ([M/MR][K][MR] and
//     [N/NR][K][NR], zero-padded), so transposes and edges are dealt with in one pass;
//  2. gemm_packed: one work-item per work-group owns a BM x BN tile of C; for each BK slice of
//     K it stages its panels in local memory (contiguous copies) and a register-blocked
//     micro-kernel (MR rows x 2 float16 vectors, 24 accumulators) runs FMAs out of them.
//     Where B is not transposed its rows already run along the panel, so packing it is
//     skipped: b_ld > 0 says Bp is B itself and tiles are staged straight from it.
// Partial sums of the tile live in local memory between K slices.
// (Wide vector builtins such as vload16/fma are out-of-line calls in PoCL, hence plain
// float16 pointers and a * b + c, which contracts to FMA.)

#ifndef BM
#define BM 96
#endif
#ifndef BN
#define BN 128
#endif
#ifndef BK
#define BK 256
#endif
#ifndef MR
#define MR 12
#endif
#define NR 32

#if MR == 8
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif MR == 12
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#else
#error "MR must be 8 or 12"
#endif

#define ACC_ROW(r) float16 c##r##_0, c##r##_1;
#define ZERO_ROW(r) c##r##_0 = (float16)(0.0f); c##r##_1 = (float16)(0.0f);
#define LOAD_ROW(r) c##r##_0 = ct[(r) * (BN / 16)]; c##r##_1 = ct[(r) * (BN / 16) + 1];
#define STORE_ROW(r) ct[(r) * (BN / 16)] = c##r##_0; ct[(r) * (BN / 16) + 1] = c##r##_1;
#define FMA_ROW(r) { const float a = ap[r]; c##r##_0 += a * b0; c##r##_1 += a * b1; }

// Ap[p][k][r] = op(A)[p*MR + r, k]; one work-item per (k, panel)
__kernel void pack_a(const int M, const int K, __global const float *A, const int a_off, const int lda,
                     const int trans_a, __global float *Ap, const int p_off)
{
    const int k = get_global_id(0), p = get_global_id(1);
    if (k >= K) return;
    __global float *dst = Ap + p_off + ((size_t)p * K + k) * MR;
    for (int r = 0; r < MR; ++r) {
        const int m = p * MR + r;
        dst[r] = m < M ? A[a_off + (trans_a ? (size_t)k * lda + m : (size_t)m * lda + k)] : 0.0f;
    }
}

// Bp[q][k][c] = op(B)[k, q*NR + c]; one work-item per element, c fastest, so CPU drivers
// vectorise the copy along c (contiguous stores; contiguous loads too unless B is transposed)
__kernel void pack_b(const int N, const int K, __global const float *B, const int b_off, const int ldb,
                     const int trans_b, __global float *Bp, const int p_off)
{
    const int c = get_global_id(0), k = get_global_id(1), q = get_global_id(2);
    if (k >= K) return;
    const int n = q * NR + c;
    Bp[p_off + ((size_t)q * K + k) * NR + c] =
        n < N ? B[b_off + (trans_b ? (size_t)n * ldb + k : (size_t)k * ldb + n)] : 0.0f;
}

// local panels and this work-group's tile (kernels in gemm_packed's shape); float16
// declarations keep the panels 64-byte aligned for whole-vector loads
#define PACKED_TILE_SETUP \
    __local float16 a_store[BM * BK / 16];   /* [BM/MR][BK][MR] */ \
    __local float16 b_store[BK * BN / 16];   /* [BN/NR][BK][NR] */ \
    __local float16 c_store[BM * BN / 16];   /* [BM][BN] partial sums */ \
    __local float *a_pack = (__local float *)a_store; \
    __local float *b_pack = (__local float *)b_store; \
    const int row0 = get_group_id(1) * tile_m; \
    const int col0 = get_group_id(0) * tile_n; \
    const int a_panels = min(tile_m, M - row0 + MR - 1) / MR;   /* panels holding rows < M */ \
    const int b_panels = min(tile_n, N - col0 + NR - 1) / NR;

// write back: C = alpha * acc + beta * C (C is not read when beta == 0)
#define STORE_C_TILE(C_, ldc_) \
    for (int i = 0; i < rows; ++i) { \
        __global float *dst = (C_) + (size_t)(row0 + i) * (ldc_) + col0; \
        __local const float *src = c_tile + i * BN; \
        if (beta == 0.0f) { \
            for (int j = 0; j < cols; ++j) dst[j] = alpha * src[j]; \
        } else { \
            for (int j = 0; j < cols; ++j) dst[j] = alpha * src[j] + beta * dst[j]; \
        } \
    }

// Copy the a_panels packed MR-row panels of A for K range [k0, k0 + kc) into local memory.
// (Macros, not functions: PoCL compiled the micro-kernel behind a function ~30% slower.)
#define STAGE_A(a_pack, Ap, K, k0, kc, a_panels) \
    for (int i = 0; i < (a_panels); ++i) { \
        __global const float *src = (Ap) + ((size_t)i * (K) + (k0)) * MR; \
        __local float *dst = (a_pack) + i * (BK * MR); \
        for (int e = 0; e < (kc) * MR; ++e) dst[e] = src[e]; \
    }

// The register-blocked micro-kernel over every (MR x NR) block of the tile: partial sums of
// the staged K slice added into c_store (set, on the first slice).
#define MICRO_TILES(a_pack, b_store, c_store, a_panels, b_panels, kc, first) \
    for (int i = 0; i < (a_panels); ++i) { \
        for (int j = 0; j < (b_panels); ++j) { \
            __local float16 *ct = (c_store) + (i * MR * BN + j * NR) / 16; \
            ROWS(ACC_ROW) \
            if (first) { ROWS(ZERO_ROW) } else { ROWS(LOAD_ROW) } \
            __local const float *ap = (a_pack) + i * (BK * MR); \
            __local const float16 *bp = (b_store) + j * (BK * NR / 16); \
            for (int k = 0; k < (kc); ++k) { \
                const float16 b0 = bp[0]; \
                const float16 b1 = bp[1]; \
                ROWS(FMA_ROW) \
                ap += MR; \
                bp += NR / 16; \
            } \
            ROWS(STORE_ROW) \
        } \
    }

// tile_m (a multiple of MR, <= BM) and tile_n (a multiple of NR, <= BN) are chosen per call
// so the tiles split C evenly between the CPU threads. Split-K (few tiles, long K): group z of
// dimension 2 sums K range [z * k_chunk, (z + 1) * k_chunk) into its own (M, N) slab of C,
// at element offset z * M * N; gemm_split_sum adds the slabs up afterwards.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_packed(const int M, const int N, const int K, const int tile_m, const int tile_n,
                 const int k_chunk,
                 __global const float *Ap, const int ap_off,
                 __global const float *Bp, const int bp_off, const int b_ld,
                 __global float *C, const int c_off, const int ldc, const float alpha, const float beta)
{
    PACKED_TILE_SETUP
    const int k_begin = get_group_id(2) * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    Ap += ap_off + (size_t)(row0 / MR) * K * MR;
    Bp += bp_off + (b_ld ? 0 : (size_t)(col0 / NR) * K * NR);
    C += c_off + (size_t)get_group_id(2) * M * N;

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0);
        STAGE_A(a_pack, Ap, K, k0, kc, a_panels)
        for (int j = 0; j < b_panels; ++j) {
            __local float *dst = b_pack + j * (BK * NR);
            if (b_ld) {   // op(B)[k, n] = B[k * b_ld + n]: each k holds NR consecutive columns
                const int n0 = col0 + j * NR, live = min(NR, N - n0);
                for (int k = 0; k < kc; ++k) {
                    __global const float *src = Bp + (size_t)(k0 + k) * b_ld + n0;
                    if (live == NR) {
                        for (int c = 0; c < NR; ++c) dst[k * NR + c] = src[c];
                    } else {
                        for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < live ? src[c] : 0.0f;
                    }
                }
            } else {
                __global const float *src = Bp + ((size_t)j * K + k0) * NR;
                for (int e = 0; e < kc * NR; ++e) dst[e] = src[e];
            }
        }
        MICRO_TILES(a_pack, b_store, c_store, a_panels, b_panels, kc, k0 == k_begin)
    }
    __local const float *c_tile = (__local const float *)c_store;
    const int rows = min(tile_m, M - row0);
    const int cols = min(tile_n, N - col0);
    STORE_C_TILE(C, ldc)
}

// Ap[p][k][r] = A'[p*MR + r, k] for the input gradient of a convolution group: A'[c, (o, t)]
// = w[o, c, taps - 1 - t] (the transposed, flipped weights; w starts at the group's first
// output). One work-item per (k, panel), like pack_a.
__kernel void pack_a_flipped(const int M, const int K, __global const float *w, const int w_off,
                             const int taps, __global float *Ap, const int p_off)
{
    const int k = get_global_id(0), p = get_global_id(1);
    if (k >= K) return;
    const int o = k / taps, t = taps - 1 - (k - o * taps);
    __global float *dst = Ap + p_off + ((size_t)p * K + k) * MR;
    for (int r = 0; r < MR; ++r) {
        const int m = p * MR + r;
        dst[r] = m < M ? w[w_off + ((size_t)o * M + m) * taps + t] : 0.0f;
    }
}

inline int first_inside(const int off, const int s) { return off < 0 ? (-off + s - 1) / s : 0; }
inline int last_inside(const int off, const int s, const int size, const int outputs)
{
    return size - off <= 0 ? 0 : min(outputs, (size - off + s - 1) / s);
}

// d[0, len) = row h of the input plane `plane`, from column off in steps of sw; zeros where
// the row or a column falls outside the plane (the padding)
#define GATHER_RUN(d_, len_, h_, off_, plane) { \
    __local float *d = (d_); \
    const int len = (len_), h = (h_), off = (off_); \
    if (h < 0 || h >= H) { \
        for (int q = 0; q < len; ++q) d[q] = 0.0f; \
    } else { \
        __global const float *src = (plane) + (size_t)h * W + off; \
        const int lo = min(first_inside(off, sw), len), hi = max(lo, last_inside(off, sw, W, len)); \
        for (int q = 0; q < lo; ++q) d[q] = 0.0f; \
        if (sw == 1) { \
            for (int q = lo; q < hi; ++q) d[q] = src[q]; \
        } else { \
            for (int q = lo; q < hi; ++q) d[q] = src[q * sw]; \
        } \
        for (int q = hi; q < len; ++q) d[q] = 0.0f; \
    } }

// Split `count` consecutive output positions (n, oh, ow) from `start`, stopping at `end`, into
// runs inside one output row: run r covers [run_at[r], run_at[r] + run_len[r]) of the count,
// image run_img[r] from pixel run_pix[r], reading input row run_h[r] and column run_w[r] +
// (the tap's offsets); leaves their number in `runs`.
#define SPLIT_RUNS(start, count, end) \
    runs = 0; \
    for (int e = 0, k = (start); e < (count) && k < (end); ++runs) { \
        const int img = k / pixels, pix = k - img * pixels, oh = pix / Wo, ow = pix - oh * Wo; \
        const int len = min((count) - e, Wo - ow); \
        run_at[runs] = e; \
        run_len[runs] = len; \
        run_h[runs] = oh * sh - ph; \
        run_w[runs] = ow * sw - pw; \
        run_img[runs] = img; \
        run_pix[runs] = pix; \
        e += len; \
        k += len; \
    }

// Implicit-GEMM convolution of one group: Y[n, o, oh, ow] = alpha * sum_k A[o, k] *
// X[n, (c, ki, kj) = k, oh * sh - ph + ki * dh, ow * sw - pw + kj * dw] + beta * Y, with A the
// packed weights (M = outputs of the group, K = channels x taps). It is gemm_packed with the
// column matrix never written: B's panels are gathered from X while they are staged (a panel's
// 32 columns are runs of consecutive pixels of output rows), and C is stored straight into
// the NCHW output. x_off and y_off point at the group's first channel.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_gemm(const int M, const int N, const int K, const int tile_m, const int tile_n,
               __global const float *Ap, const int ap_off,
               __global const float *X, const int x_off, __global float *Y, const int y_off,
               const int C, const int H, const int W, const int O, const int Ho, const int Wo,
               const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
               const int dh, const int dw, const float alpha, const float beta)
{
    PACKED_TILE_SETUP
    const int pixels = Ho * Wo, taps = kh * kw;
    Ap += ap_off + (size_t)(row0 / MR) * K * MR;

    // a run: up to NR columns of one output row; for each, where it starts in the panel, its
    // length, the image plane it reads, and its first input row and column (before the tap)
    int run_at[NR], run_len[NR], run_h[NR], run_w[NR], run_img[NR], run_pix[NR];
    for (int k0 = 0; k0 < K; k0 += BK) {
        const int kc = min(BK, K - k0);
        STAGE_A(a_pack, Ap, K, k0, kc, a_panels)
        for (int j = 0; j < b_panels; ++j) {
            int runs;
            SPLIT_RUNS(col0 + j * NR, NR, N)
            const int filled = runs ? run_at[runs - 1] + run_len[runs - 1] : 0;
            __local float *panel = b_pack + j * (BK * NR);
            // k = (ci, ki, kj) counted up instead of divided out per k (integer division per
            // row of 32 gathered values cost as much as the gathering with few output rows)
            int ci = k0 / taps, ki = (k0 - ci * taps) / kw, kj = k0 - ci * taps - ki * kw;
            for (int k = 0; k < kc; ++k) {
                __local float *dst = panel + k * NR;
                for (int r = 0; r < runs; ++r)
                    GATHER_RUN(dst + run_at[r], run_len[r], run_h[r] + ki * dh, run_w[r] + kj * dw,
                               X + x_off + ((size_t)run_img[r] * C + ci) * H * W)
                for (int q = filled; q < NR; ++q) dst[q] = 0.0f;
                if (++kj == kw) {
                    kj = 0;
                    if (++ki == kh) { ki = 0; ++ci; }
                }
            }
        }
        MICRO_TILES(a_pack, b_store, c_store, a_panels, b_panels, kc, k0 == 0)
    }
    // write back into NCHW: column (n, pixel) of row o is Y[n, o, pixel]
    __local const float *c_tile = (__local const float *)c_store;
    const int rows = min(tile_m, M - row0), cols = min(tile_n, N - col0);
    for (int c = 0; c < cols;) {
        const int col = col0 + c, img = col / pixels, pix = col - img * pixels;
        const int len = min(cols - c, pixels - pix);
        for (int i = 0; i < rows; ++i) {
            __global float *dst = Y + y_off + ((size_t)img * O + row0 + i) * pixels + pix;
            __local const float *src = c_tile + i * BN + c;
            if (beta == 0.0f) {
                for (int q = 0; q < len; ++q) dst[q] = alpha * src[q];
            } else {
                for (int q = 0; q < len; ++q) dst[q] = alpha * src[q] + beta * dst[q];
            }
        }
        c += len;
    }
}

// C = alpha * A @ B^T + beta * C without packing: rows of A (M, K) and of B (N, K) both run
// along K, so tiles are staged as plain row copies and a 4 x 4 micro-kernel keeps 16 float16
// dot-product accumulators over k (summed across lanes once per K slice). tile_m and tile_n are
// multiples of 4; split-K works as in gemm_packed.
#define DOT_ROWS(X) X(0) X(1) X(2) X(3)
#define DOT_ACC(r) float16 d##r##_0 = (float16)(0.0f), d##r##_1 = (float16)(0.0f), \
                           d##r##_2 = (float16)(0.0f), d##r##_3 = (float16)(0.0f);
#define DOT_FMA(r) { const float16 a = ar[(r) * (BK / 16) + kk]; \
                     d##r##_0 += a * b0; d##r##_1 += a * b1; d##r##_2 += a * b2; d##r##_3 += a * b3; }
#define LANE_SUM(v) ({ const float8 h8 = (v).lo + (v).hi; const float4 h4 = h8.lo + h8.hi; \
                       const float2 h2 = h4.lo + h4.hi; h2.x + h2.y; })
#define DOT_STORE(r) { __local float *cr = c_tile + (i0 + (r)) * BN + j0; \
                       const float s0 = LANE_SUM(d##r##_0), s1 = LANE_SUM(d##r##_1), \
                                   s2 = LANE_SUM(d##r##_2), s3 = LANE_SUM(d##r##_3); \
                       if (first) { cr[0] = s0; cr[1] = s1; cr[2] = s2; cr[3] = s3; } \
                       else { cr[0] += s0; cr[1] += s1; cr[2] += s2; cr[3] += s3; } }

// local tiles and this work-group's rows, columns and K range (kernels in gemm_nt's shape)
#define NT_TILE_SETUP \
    __local float16 a_store[BM * BK / 16];   /* [tile_m][BK] */ \
    __local float16 b_store[BN * BK / 16];   /* [tile_n][BK] */ \
    __local float16 c_store[BM * BN / 16];   /* [BM][BN] partial sums */ \
    __local float *c_tile = (__local float *)c_store; \
    const int row0 = get_group_id(1) * tile_m; \
    const int col0 = get_group_id(0) * tile_n; \
    const int rows = min(tile_m, M - row0), cols = min(tile_n, N - col0); \
    const int rows4 = (rows + 3) & ~3, cols4 = (cols + 3) & ~3; \
    const int k_begin = get_group_id(2) * k_chunk; \
    const int k_end = min(K, k_begin + k_chunk);

// the 4 x 4 dot-product micro-kernel over the staged (rows4 x kc16) and (cols4 x kc16) rows
#define DOT_TILES(first_) { \
    const int first = (first_); \
    for (int i0 = 0; i0 < rows4; i0 += 4) { \
        __local const float16 *ar = a_store + i0 * (BK / 16); \
        for (int j0 = 0; j0 < cols4; j0 += 4) { \
            __local const float16 *br = b_store + j0 * (BK / 16); \
            DOT_ROWS(DOT_ACC) \
            for (int kk = 0; kk < kc16 / 16; ++kk) { \
                const float16 b0 = br[kk], b1 = br[BK / 16 + kk]; \
                const float16 b2 = br[2 * (BK / 16) + kk], b3 = br[3 * (BK / 16) + kk]; \
                DOT_ROWS(DOT_FMA) \
            } \
            DOT_ROWS(DOT_STORE) \
        } \
    } }

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_nt(const int M, const int N, const int K, const int tile_m, const int tile_n, const int k_chunk,
             __global const float *A, const int a_off, const int lda,
             __global const float *B, const int b_off, const int ldb,
             __global float *C, const int c_off, const int ldc, const float alpha, const float beta)
{
    NT_TILE_SETUP
    A += a_off;
    B += b_off;
    C += c_off + (size_t)get_group_id(2) * M * N;

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0), kc16 = (kc + 15) & ~15;
        for (int i = 0; i < rows4; ++i) {   // rows past M and columns past kc stage as zeros
            __local float *dst = (__local float *)a_store + i * BK;
            __global const float *src = A + (size_t)(row0 + i) * lda + k0;
            const int live = i < rows ? kc : 0;
            for (int e = 0; e < live; ++e) dst[e] = src[e];
            for (int e = live; e < kc16; ++e) dst[e] = 0.0f;
        }
        for (int j = 0; j < cols4; ++j) {
            __local float *dst = (__local float *)b_store + j * BK;
            __global const float *src = B + (size_t)(col0 + j) * ldb + k0;
            const int live = j < cols ? kc : 0;
            for (int e = 0; e < live; ++e) dst[e] = src[e];
            for (int e = live; e < kc16; ++e) dst[e] = 0.0f;
        }
        DOT_TILES(k0 == k_begin)
    }
    STORE_C_TILE(C, ldc)
}

// Weight gradient of one convolution group as an implicit A @ B^T (gemm_nt's tiles):
// dW[o, (c, ki, kj)] = sum over k = (n, oh, ow) of dy[n, o, oh, ow] * X[n, c, oh * sh - ph + ki * dh,
// ow * sw - pw + kj * dw]. Rows of both operands are staged straight from the NCHW arrays, run
// by run (a run: consecutive k within one output row), so neither a column matrix nor a
// channels-first copy of dy is written. a_off / b_off point at the group's first channel;
// split-K over dimension 2 as in gemm_nt.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_filter_gemm(const int M, const int N, const int K, const int tile_m, const int tile_n, const int k_chunk,
                      __global const float *A, const int a_off, __global const float *X, const int x_off,
                      const int C, const int H, const int W, const int O, const int Ho, const int Wo,
                      const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                      const int dh, const int dw,
                      __global float *Cm, const int c_off, const int ldc, const float alpha, const float beta)
{
    NT_TILE_SETUP
    const int pixels = Ho * Wo, taps = kh * kw;
    Cm += c_off + (size_t)get_group_id(2) * M * N;

    int run_at[BK], run_len[BK], run_h[BK], run_w[BK], run_img[BK], run_pix[BK];
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0), kc16 = (kc + 15) & ~15;
        int runs;
        SPLIT_RUNS(k0, kc, K)
        for (int i = 0; i < rows4; ++i) {   // rows past M and columns past kc stage as zeros
            __local float *dst = (__local float *)a_store + i * BK;
            if (i < rows) {
                for (int r = 0; r < runs; ++r) {
                    __global const float *src = A + a_off + ((size_t)run_img[r] * O + row0 + i) * pixels + run_pix[r];
                    __local float *d = dst + run_at[r];
                    for (int q = 0; q < run_len[r]; ++q) d[q] = src[q];
                }
            }
            for (int e = i < rows ? kc : 0; e < kc16; ++e) dst[e] = 0.0f;
        }
        for (int j = 0; j < cols4; ++j) {
            __local float *dst = (__local float *)b_store + j * BK;
            if (j < cols) {
                const int kk = col0 + j, ci = kk / taps, t = kk - ci * taps, ki = t / kw, kj = t - ki * kw;
                for (int r = 0; r < runs; ++r)
                    GATHER_RUN(dst + run_at[r], run_len[r], run_h[r] + ki * dh, run_w[r] + kj * dw,
                               X + x_off + ((size_t)run_img[r] * C + ci) * H * W)
            }
            for (int e = j < cols ? kc : 0; e < kc16; ++e) dst[e] = 0.0f;
        }
        DOT_TILES(k0 == k_begin)
    }
    STORE_C_TILE(Cm, ldc)
}

// C = alpha * (sum of the `splits` (M, N) slabs of P) + beta * C; one work-item per element
__kernel void gemm_split_sum(const int total, const int splits, __global const float *P,
                             __global float *C, const int c_off, const int N, const int ldc,
                             const float alpha, const float beta)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += P[(size_t)z * total + i];
    __global float *dst = C + c_off + (size_t)(i / N) * ldc + i % N;
    *dst = beta == 0.0f ? alpha * s : alpha * s + beta * *dst;
}

// Classic cooperative tiling for GPUs (their local memory is too small for the CPU tiles):
// a TS x TS work-group stages TS x TS tiles of op(A) and op(B) in local memory.
#define TS 16
__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void gemm_tiled_gpu(const int M, const int N, const int K,
                    __global const float *A, const int a_off, const int lda, const int trans_a,
                    __global const float *B, const int b_off, const int ldb, const int trans_b,
                    __global float *C, const int c_off, const int ldc,
                    const float alpha, const float beta)
{
    __local float a_tile[TS][TS + 1];
    __local float b_tile[TS][TS + 1];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int col = get_group_id(0) * TS + tx;
    const int row = get_group_id(1) * TS + ty;
    float total = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TS) {
        const int ka = k0 + tx, kb = k0 + ty;
        a_tile[ty][tx] = (row < M && ka < K)
            ? A[a_off + (trans_a ? (size_t)ka * lda + row : (size_t)row * lda + ka)] : 0.0f;
        b_tile[ty][tx] = (col < N && kb < K)
            ? B[b_off + (trans_b ? (size_t)col * ldb + kb : (size_t)kb * ldb + col)] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; ++k) total += a_tile[ty][k] * b_tile[k][tx];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < M && col < N) {
        __global float *dst = C + c_off + (size_t)row * ldc + col;
        *dst = beta == 0.0f ? alpha * total : alpha * total + beta * *dst;
    }
}
