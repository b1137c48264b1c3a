// GEMM: C = alpha * op(A) @ op(B) + beta * C, row-major, float32.
//
// CPU drivers (PoCL) run three kernels:
//  1. pack_a / pack_b copy op(A) and op(B) once into micro-panel order ([M/MR][K][MR] and
//     [N/NR][K][NR], zero-padded), so transposes and edges are dealt with in one pass;
//  2. gemm_packed: a work-group of one work-item computes BM x BN tiles of C, one at a time
//     (taken from a counter, FOR_EACH_TILE); for each BK slice of
//     K it stages its panels in local memory (contiguous copies) and a register-blocked
//     micro-kernel (MR rows x 2 vectors of VW floats, 2 * MR accumulators) runs FMAs out of
//     them. Where B is not transposed its rows already run along the panel, so packing it is
//     skipped: b_ld > 0 says Bp is B itself and tiles are staged straight from it.
// Partial sums of the tile live in local memory between K slices.
// The micro-kernel's shape follows the vector registers: VW = 16 with MR = 12 (24 float16
// accumulators: 24 of AVX-512's 32 zmm registers, which LLVM only uses with WIDE_REGS, below)
// and VW = 8 with MR = 6 (12 float8
// accumulators + 2 B vectors + 1 broadcast: 15 of AVX2's 16 ymm registers; a float16 on AVX2
// is two ymm registers, so the 12 x 32 kernel would spill half its accumulators).
// (Wide vector builtins such as vload16/fma are out-of-line calls in PoCL, hence plain
// vector pointers and a * b + c, which contracts to FMA; the ReLUs as vector conditionals, not
// select.)

#ifndef VW
#define VW 16
#endif
// vector loads and stores at any float offset (vectors.cl's unaligned types), by address space
// (G global, L local, P private)
#define LOADV(N, S, i, p) (*(S const float##N##_u *)((p) + N * (i)))
#define STOREV(N, S, v, i, p) (*(S float##N##_u *)((p) + N * (i)) = (v))
#define LOAD4G(i, p) LOADV(4, __global, i, p)
#define LOAD8G(i, p) LOADV(8, __global, i, p)
#define LOAD16G(i, p) LOADV(16, __global, i, p)
#define LOAD8L(i, p) LOADV(8, __local, i, p)
#define STORE4G(v, i, p) STOREV(4, __global, v, i, p)
#define STORE8G(v, i, p) STOREV(8, __global, v, i, p)
// row r of a run of gathered patches (columns q = 0 .. C - 1, each one vector of N runs' lanes:
// vq) into zs[(r * C + q) * VW]
#define STORE_PATCH(N, zs, C, r, q, v) STOREV(N, __private, v, 0, (zs) + ((r) * (C) + (q)) * VW)
#define STORE_PATCH_ROW3(N, zs, r, v0, v1, v2) { \
    STORE_PATCH(N, zs, 3, r, 0, v0); STORE_PATCH(N, zs, 3, r, 1, v1); STORE_PATCH(N, zs, 3, r, 2, v2); }
#define STORE_PATCH_ROW5(N, zs, r, v0, v1, v2, v3, v4) { \
    STORE_PATCH(N, zs, 5, r, 0, v0); STORE_PATCH(N, zs, 5, r, 1, v1); STORE_PATCH(N, zs, 5, r, 2, v2); \
    STORE_PATCH(N, zs, 5, r, 3, v3); STORE_PATCH(N, zs, 5, r, 4, v4); }
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
// BUILD_*: 0 leaves a family of kernels out of the build where its local arrays do not fit
// the device (local_memory.py; a GPU compiler refuses the whole program otherwise)
#ifndef BUILD_PACKED
#define BUILD_PACKED 1
#endif
#ifndef BUILD_WINOGRAD3
#define BUILD_WINOGRAD3 1
#endif
#ifndef BUILD_WINOGRAD5
#define BUILD_WINOGRAD5 1
#endif
#ifndef BUILD_S2_CONV
#define BUILD_S2_CONV 1
#endif
#ifndef BUILD_S2_FILTER
#define BUILD_S2_FILTER 1
#endif
#ifndef BUILD_S2_DATA
#define BUILD_S2_DATA 1
#endif
#ifndef BUILD_WINOGRAD3_FILTER
#define BUILD_WINOGRAD3_FILTER 1
#endif
// STAGE_B_ROWS: tiles of B read straight from B (and conv_gemm's gathered ones) are staged k
// by k across all the tile's panels, each k's row read once, in order; panel by panel, each
// k reads one 64-byte piece of rows that lie a row (or plane) apart, and on AVX2 those reads
// were half of gemm_packed's time (not measured on AVX-512 devices, which keep the panel order).
// DIRECT_PACKED: where both operands are packed, the micro-kernel reads their panels where
// they are instead of copying them to local memory first, and conv_gemm reads its packed
// weights in place (measured on AVX2 only, likewise).
#ifndef STAGE_B_ROWS
#define STAGE_B_ROWS 0
#endif
#ifndef DIRECT_PACKED
#define DIRECT_PACKED 0
#endif
// rows x columns of the dot-product micro-kernel of gemm_nt / conv_filter_gemm
#ifndef DR
#define DR 4
#endif
#ifndef DC
#define DC 4
#endif

#if VW == 16
typedef float16 floatv;
#define LANE_SUM(v) ({ const float8 h8 = (v).lo + (v).hi; const float4 h4 = h8.lo + h8.hi; \
                       const float2 h2 = h4.lo + h4.hi; h2.x + h2.y; })
#elif VW == 8
typedef float8 floatv;
#define LANE_SUM(v) ({ const float4 h4 = (v).lo + (v).hi; const float2 h2 = h4.lo + h4.hi; h2.x + h2.y; })
#else
#error "VW must be 8 or 16"
#endif
// unaligned vectors (rows of A and B read in place start anywhere; conv_gemm's stores to Y)
typedef floatv floatv_u __attribute__((aligned(4)));
#define NR (2 * VW)

// WIDE_REGS: the micro-kernels' FMAs go through MADV, a function taking vector arguments: clang
// marks a function with 512-bit vector arguments as needing 512-bit registers
// (min-legal-vector-width), and the mark passes to the kernel it is inlined into. Without it,
// LLVM's tuning for the CPU PoCL names on AVX-512 machines (skylake-avx512: prefer 256-bit
// vectors) legalises each float16 as two ymm registers, so the 12 x 32 micro-kernel's 24
// accumulators took 48 of the 32 registers and spilled in every k step (as did gemm_nt's 4 x 4);
// with it they are zmm registers. 8-lane builds (float8 arguments) are not affected.
#ifndef WIDE_REGS
#define WIDE_REGS 0
#endif
#if WIDE_REGS
__attribute__((always_inline)) inline floatv madv(const floatv a, const floatv b, const floatv c) { return a * b + c; }
#define MADV(a, b, c) madv((a), (b), (c))
#else
#define MADV(a, b, c) ((a) * (b) + (c))
#endif

#if MR == 4
#define ROWS(X) X(0) X(1) X(2) X(3)
#elif MR == 6
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#elif MR == 8
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif MR == 12
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#else
#error "MR must be 4, 6, 8 or 12"
#endif

#define ACC_ROW(r) floatv c##r##_0, c##r##_1;
#define ZERO_ROW(r) c##r##_0 = (floatv)(0.0f); c##r##_1 = (floatv)(0.0f);
#define LOAD_ROW(r) c##r##_0 = ct[(r) * (BN / VW)]; c##r##_1 = ct[(r) * (BN / VW) + 1];
#define STORE_ROW(r) ct[(r) * (BN / VW)] = c##r##_0; ct[(r) * (BN / VW) + 1] = c##r##_1;
#define FMA_ROW(r) { const floatv a = (floatv)(ap[(r) * a_rs]); c##r##_0 = MADV(a, b0, c##r##_0); c##r##_1 = MADV(a, b1, c##r##_1); }
// kc steps of the micro-kernel: A's panel from ap (a_kstep floats a step), B's from bp
#define MICRO_K_LOOP(kc, a_kstep) \
    for (int k = 0; k < (kc); ++k) { \
        const floatv b0 = bp[0]; \
        const floatv b1 = bp[1]; \
        ROWS(FMA_ROW) \
        ap += (a_kstep); \
        bp += 2; \
    }

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

// local panels and this work-group's tile (kernels in gemm_packed's shape); vector-typed
// declarations keep the panels aligned for whole-vector loads
#define PACKED_TILE_LOCALS \
    __local floatv a_store[BM * BK / VW];   /* [BM/MR][BK][MR] */ \
    __local floatv b_store[BK * BN / VW];   /* [BN/NR][BK][NR] */ \
    __local floatv c_store[BM * BN / VW];   /* [BM][BN] partial sums */ \
    __local float *a_pack = (__local float *)a_store; \
    __local float *b_pack = (__local float *)b_store;
// ...and tile (tile_x, tile_y) of C
#define PACKED_TILE_SETUP \
    const int row0 = tile_y * tile_m; \
    const int col0 = tile_x * tile_n; \
    const int a_panels = min(tile_m, M - row0 + MR - 1) / MR;   /* panels holding rows < M */ \
    const int b_panels = min(tile_n, N - col0 + NR - 1) / NR;

// the tile of a kernel launched one work-group per tile
#define GROUP_TILE const int tile_x = get_group_id(0), tile_y = get_group_id(1), tile_z = get_group_id(2);
// Tiles dealt out at run time (gemm_packed, gemm_nt): a few work-groups (one per CPU thread)
// each take tile after tile from a global counter until none is left. PoCL hands a thread
// half of the remaining work-groups at once, so with a work-group per tile a thread that
// started late, or lost its core to another process for a while, held up the whole call with
// half the tiles; dealt one by one, the running threads take what it has not started. The
// counter is never reset: the host passes its value before the launch (ticket_base), and
// knows its value after (one ticket per tile plus one that ends each work-group).
#define TILE_TICKET_ARGS volatile __global uint *ticket, const uint ticket_base, const int tiles_x, \
                         const int tiles_y, const int tiles
#define FOR_EACH_TILE \
    for (;;) { \
        const uint tile_ = atomic_inc(ticket) - ticket_base; \
        if (tile_ >= (uint)tiles) break; \
        const int tile_x = tile_ % tiles_x, tile_y = tile_ / tiles_x % tiles_y, tile_z = tile_ / (tiles_x * tiles_y);
#define END_TILES }

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
// (Macros, not functions: PoCL compiled the micro-kernel behind a function slower.)
#define STAGE_A(a_pack, Ap, K, k0, kc, a_panels) \
    for (int i = 0; i < (a_panels); ++i) { \
        __global const float *src = (Ap) + ((size_t)i * (K) + (k0)) * MR; \
        __local float *dst = (a_pack) + i * (BK * MR); \
        for (int e = 0; e < (kc) * MR; ++e) dst[e] = src[e]; \
    }

// The register-blocked micro-kernel over every (MR x NR) block of the tile: partial sums of
// the K slice added into c_store (set, on the first slice); A's panels start at a_base, one
// every a_step floats, B's at b_base, one every b_step vectors, in address spaces AQ and BQ.
#define MICRO_TILES(AQ, a_base, a_step, BQ, b_base, b_step, c_store, a_panels, b_panels, kc, first) \
    MICRO_TILES_AK(AQ, a_base, a_step, 1, MR, BQ, b_base, b_step, c_store, a_panels, b_panels, kc, first)
// ...with A's row r of a panel a_rstride floats from row 0 and each k a_kstep floats on
#define MICRO_TILES_AK(AQ, a_base, a_step, a_rstride, a_kstep, BQ, b_base, b_step, c_store, a_panels, b_panels, kc, first) \
    for (int i = 0; i < (a_panels); ++i) { \
        const int a_rs = (a_rstride); \
        for (int j = 0; j < (b_panels); ++j) { \
            __local floatv *ct = (c_store) + (i * MR * BN + j * NR) / VW; \
            ROWS(ACC_ROW) \
            if (first) { ROWS(ZERO_ROW) } else { ROWS(LOAD_ROW) } \
            AQ const float *ap = (a_base) + i * (a_step); \
            BQ const floatv *bp = (BQ const floatv *)(b_base) + j * (b_step); \
            MICRO_K_LOOP(kc, (a_kstep)) \
            ROWS(STORE_ROW) \
        } \
    }
// ...on panels staged in local memory
#define MICRO_TILES_LOCAL(a_pack, b_store, c_store, a_panels, b_panels, kc, first) \
    MICRO_TILES(__local, a_pack, BK * MR, __local, b_store, BK * NR / VW, c_store, a_panels, b_panels, kc, first)

// tile_m (a multiple of MR, <= BM) and tile_n (a multiple of NR, <= BN) are chosen per call
// so the tiles split C evenly between the CPU threads. Split-K (few tiles, long K): group z of
// dimension 2 sums K range [z * k_chunk, (z + 1) * k_chunk) into its own (M, N) slab of C,
// at element offset z * M * N; gemm_split_sum adds the slabs up afterwards.
#if BUILD_PACKED
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_packed(const int M, const int N, const int K, const int tile_m, const int tile_n,
                 const int k_chunk,
                 __global const float *A_, const int ap_off, const int a_ld, const int a_trans,
                 __global const float *B_, const int bp_off, const int b_ld,
                 __global float *C_, const int c_off, const int ldc, const float alpha, const float beta,
                 TILE_TICKET_ARGS)
{
    PACKED_TILE_LOCALS
    FOR_EACH_TILE
    PACKED_TILE_SETUP
    const int k_begin = tile_z * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);
    __global const float *Ap = A_ + ap_off + (a_ld ? 0 : (size_t)(row0 / MR) * K * MR);
    __global const float *Bp = B_ + bp_off + (b_ld ? 0 : (size_t)(col0 / NR) * K * NR);
    __global float *C = C_ + c_off + (size_t)tile_z * M * N;

    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0);
#if DIRECT_PACKED
        if (!a_ld && !b_ld) {   // both operands packed: the micro-kernel reads the panels where they are
            MICRO_TILES(__global, Ap + (size_t)k0 * MR, (size_t)K * MR, __global, Bp + (size_t)k0 * NR,
                        (size_t)K * NR / VW, c_store, a_panels, b_panels, kc, k0 == k_begin)
            continue;
        }
#endif
        // a_ld > 0: Ap is A itself, op(A)[m, k] = A[k * a_ld + m] when a_trans (STAGE_A_T in
        // gemm.py), else A[m * a_ld + k] (STAGE_A_ROWS). Each k's (or each row's) run is staged
        // as one contiguous copy, so a_pack holds [BK][BM] (A^T) or [BM][BK] (A) and the
        // micro-kernel steps through it accordingly; in packed panel order each k would land in
        // a_panels pieces of MR floats, a slower copy on AVX2 than packing A beforehand.
        if (a_ld && a_trans) {
            const int width = a_panels * MR, live = min(width, M - row0);
            for (int k = 0; k < kc; ++k) {
                __global const float *src = Ap + (size_t)(k0 + k) * a_ld + row0;
                __local float *dst = a_pack + k * BM;
                for (int e = 0; e < live; ++e) dst[e] = src[e];
                for (int e = live; e < width; ++e) dst[e] = 0.0f;
            }
        } else if (a_ld) {
            const int width = a_panels * MR, live = min(width, M - row0);
            for (int m = 0; m < width; ++m) {
                __global const float *src = Ap + (size_t)(row0 + m) * a_ld + k0;
                __local float *dst = a_pack + m * BK;
                if (m < live) {
                    for (int e = 0; e < kc; ++e) dst[e] = src[e];
                } else {
                    for (int e = 0; e < kc; ++e) dst[e] = 0.0f;
                }
            }
        } else {
            STAGE_A(a_pack, Ap, K, k0, kc, a_panels)
        }
#if STAGE_B_ROWS
        if (b_ld) {   // op(B)[k, n] = B[k * b_ld + n]
            const int width = b_panels * NR, live = min(width, N - col0);
            for (int k = 0; k < kc; ++k) {
                __global const float *src = Bp + (size_t)(k0 + k) * b_ld + col0;
                __local float *dst = b_pack + k * NR;
                if (live == width) {
                    for (int j = 0; j < b_panels; ++j)
                        for (int c = 0; c < NR; ++c) dst[j * (BK * NR) + c] = src[j * NR + c];
                } else {
                    for (int j = 0; j < b_panels; ++j)
                        for (int c = 0; c < NR; ++c) dst[j * (BK * NR) + c] = j * NR + c < live ? src[j * NR + c] : 0.0f;
                }
            }
        } else
#endif
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
        if (a_ld && a_trans)
            MICRO_TILES_AK(__local, a_pack, MR, 1, BM, __local, b_store, BK * NR / VW, c_store, a_panels, b_panels, kc, k0 == k_begin)
        else if (a_ld)
            MICRO_TILES_AK(__local, a_pack, MR * BK, BK, 1, __local, b_store, BK * NR / VW, c_store, a_panels, b_panels, kc, k0 == k_begin)
        else
            MICRO_TILES_LOCAL(a_pack, b_store, c_store, a_panels, b_panels, kc, k0 == k_begin)
    }
    __local const float *c_tile = (__local const float *)c_store;
    const int rows = min(tile_m, M - row0);
    const int cols = min(tile_n, N - col0);
    STORE_C_TILE(C, ldc)
    END_TILES
}
#endif

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

// Ap[p][k][r] = A'[p*MR + r, k] for one stride phase of a strided convolution's input gradient
// (the dx pixels whose rows and columns leave the same remainders by the stride): only the taps
// whose offsets land on output pixels from them reach it, so the phase is a stride-1
// convolution of dy with those taps, flipped: A'[c, (o, a, b)] = w[o, c, ky_hi - a * ty,
// kx_hi - b * tx] (a, b < na, nb). One work-item per (k, panel), like pack_a.
__kernel void pack_a_phase(const int M, const int K, __global const float *w, const int w_off,
                           const int kh, const int kw, const int na, const int nb, const int ky_hi,
                           const int ty, const int kx_hi, const int tx, __global float *Ap, const int p_off)
{
    const int k = get_global_id(0), p = get_global_id(1);
    if (k >= K) return;
    const int o = k / (na * nb), t = k - o * (na * nb), a = t / nb, b = t - a * nb;
    const int tap = (ky_hi - a * ty) * kw + kx_hi - b * tx;
    __global float *dst = Ap + p_off + ((size_t)p * K + k) * MR;
    for (int r = 0; r < MR; ++r) {
        const int m = p * MR + r;
        dst[r] = m < M ? w[w_off + ((size_t)o * M + m) * (kh * kw) + tap] : 0.0f;
    }
}

inline int first_inside(const int off, const int s) { return off < 0 ? (-off + s - 1) / s : 0; }
inline int last_inside(const int off, const int s, const int size, const int outputs)
{
    return size - off <= 0 ? 0 : min(outputs, (size - off + s - 1) / s);
}

// GATHER_STRIDE2: stride-2 runs are gathered 8 at a time as the even lanes of 16 consecutive
// floats (scalar strided loads were a third of a strided convolution's time on AVX2; not
// measured on AVX-512 devices, which keep the scalar loop), while the 16 lie inside the plane
// (odd lanes past the row's end are dropped), and a run's last 8 as one more such load
// overlapping the ones before (a run of 16 starting at column -1 or 1 left 7 or 8 scalar loads)
// conv_gemm stages a pointwise convolution's tiles as plain row copies (0: through the runs, as any other)
#ifndef POINTWISE_STAGE
#define POINTWISE_STAGE 1
#endif
#ifndef GATHER_STRIDE2
#define GATHER_STRIDE2 0
#endif
// conv_gemm copies the runs of a 1x1 convolution without padding from places worked out once
// (0: through GATHER_RUN, as any other)
#ifndef SUBSAMPLE_STAGE
#define SUBSAMPLE_STAGE 1
#endif
#if GATHER_STRIDE2
#define GATHER_STRIDE2_VECTORS \
    if (sw == 2) { \
        const int reach = h + 1 < Hr ? 2 * Wr : Wr;   /* the 16 may run into the plane's next row */ \
        for (; q + 8 <= hi && off + 2 * q + 16 <= reach; q += 8) \
            *(__local float8_u *)(d + q) = (*(__global const float16_u *)(src + 2 * q)).even; \
        if (q < hi && hi - 8 >= lo && off + 2 * (hi - 8) + 16 <= reach) {   /* the last 8, overlapping */ \
            *(__local float8_u *)(d + hi - 8) = (*(__global const float16_u *)(src + 2 * (hi - 8))).even; \
            q = hi; \
        } \
    }
// ...and stride-1 runs as whole float8 copies, the last 8 overlapping (the phases of a strided
// input gradient gather runs of dy rows: the scalar copy was a quarter of their time)
#define GATHER_STRIDE1_VECTORS \
    for (; q + 8 <= hi; q += 8) \
        *(__local float8_u *)(d + q) = *(__global const float8_u *)(src + q); \
    if (q < hi && hi - 8 >= lo) { \
        *(__local float8_u *)(d + hi - 8) = *(__global const float8_u *)(src + hi - 8); \
        q = hi; \
    }
#else
#define GATHER_STRIDE2_VECTORS
#define GATHER_STRIDE1_VECTORS
#endif

// d[0, len) = row h of the input plane `plane`, from column off in steps of sw; zeros where
// the row or a column falls outside the plane (the padding)
// (rows of Wr columns, Hr of them: the input's rows, or the whole plane as one row for a
// pointwise convolution, FLAT_ROWS)
#define GATHER_RUN(d_, len_, h_, off_, plane) { \
    __local float *d = (d_); \
    const int len = (len_), h = (h_), off = (off_); \
    if (h < 0 || h >= Hr) { \
        for (int q = 0; q < len; ++q) d[q] = 0.0f; \
    } else { \
        __global const float *src = (plane) + (size_t)h * Wr + off; \
        const int inside = off >= 0 && off + (len - 1) * sw < Wr;   /* most runs: no divisions */ \
        const int lo = inside ? 0 : min(first_inside(off, sw), len); \
        const int hi = inside ? len : max(lo, last_inside(off, sw, Wr, len)); \
        for (int q = 0; q < lo; ++q) d[q] = 0.0f; \
        if (sw == 1) { \
            int q = lo; \
            GATHER_STRIDE1_VECTORS \
            for (; q < hi; ++q) d[q] = src[q]; \
        } else { \
            int q = lo; \
            GATHER_STRIDE2_VECTORS \
            for (; q < hi; ++q) d[q] = src[q * sw]; \
        } \
        for (int q = hi; q < len; ++q) d[q] = 0.0f; \
    } }

// Split `count` consecutive output positions (n, oh, ow) from `start`, stopping at `end`, into
// runs inside one output row: run r covers [run_at[r], run_at[r] + run_len[r]) of the count,
// image run_img[r] from pixel run_pix[r], reading input row run_h[r] and column run_w[r] +
// (the tap's offsets); leaves their number in `runs`.
#define SPLIT_RUNS(start, count, end) SPLIT_RUNS_INTO(0, 0, start, count, end)
// ...as runs first, first + 1, ... of the arrays, with at0 added to run_at
#define SPLIT_RUNS_INTO(first, at0, start, count, end) \
    runs = (first); \
    for (int e = 0, k = (start); e < (count) && k < (end); ++runs) { \
        const int img = k / pixels, pix = k - img * pixels, oh = pix / Wor, ow = pix - oh * Wor; \
        const int len = min((count) - e, Wor - ow); \
        run_at[runs] = (at0) + e; \
        run_len[runs] = len; \
        run_h[runs] = oh * sh - ph; \
        run_w[runs] = ow * sw - pw; \
        run_img[runs] = img; \
        run_pix[runs] = pix; \
        e += len; \
        k += len; \
    }

// A pointwise convolution (1x1, stride 1, no padding) reads each input plane as one row of
// H * W columns, so a run of consecutive output pixels spans output rows (runs end only at an
// image's end): Hr x Wr input rows, Wor output columns a row, as GATHER_RUN and SPLIT_RUNS see them
#ifndef FLAT_RUNS
#define FLAT_RUNS 1
#endif
#define FLAT_ROWS \
    const int flat = FLAT_RUNS && kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && Ho == H && Wo == W; \
    const int Hr = flat ? 1 : H, Wr = flat ? H * W : W, Wor = flat ? Ho * Wo : Wo;

// A stride-2 phase's 8 outputs at a time as the even lanes of 16 floats of dx's row, the other
// phase's odd lanes read and written back unchanged (that phase is another launch), the 16
// ending before the run's next output; a run's last 8 as the odd lanes of the 16 from one
// float before them (both inside the row)
#if GATHER_STRIDE2
#define STRIDE2_STORE_VECTORS \
    if (y_step == 2) { \
        for (; q + 8 < len; q += 8) { \
            __global float16_u *v_ = (__global float16_u *)(dst + 2 * q); \
            float16 t_ = *v_; \
            t_.even = alpha * *(__local const float8_u *)(src + q) + b; \
            *v_ = t_; \
        } \
        if (q < len && len >= 9) { \
            q = len - 8; \
            __global float16_u *v_ = (__global float16_u *)(dst + 2 * q - 1); \
            float16 t_ = *v_; \
            t_.odd = alpha * *(__local const float8_u *)(src + q) + b; \
            *v_ = t_; \
            q = len; \
        } \
    }
#else
#define STRIDE2_STORE_VECTORS
#endif

#ifndef CONV_TO_Y
#define CONV_TO_Y 1
#endif
// conv_gemm's micro-kernel over a tile of one K slice with its sums stored straight into the
// NCHW output Y (to_y): per row, + bias, then beta * Y, or conv2d's epilogue (as the store
// after the tile does); rows past M are not stored. Each NR-column panel lies in one image.
#define Y_ROW(r) if (i * MR + (r) < rows_) { \
    const int o_ = row0 + i * MR + (r); \
    const float b_ = has_bias ? bias[b_off + o_] : 0.0f; \
    const size_t at_ = ((size_t)img_ * O + o_) * pixels + pix_; \
    __global floatv_u *d_ = (__global floatv_u *)(Y + y_off + at_); \
    floatv v0_ = alpha * c##r##_0 + b_, v1_ = alpha * c##r##_1 + b_; \
    if (epi) { \
        if (epi & 1) { __global const floatv_u *q_ = (__global const floatv_u *)(res + r_off + at_); \
                       v0_ += q_[0]; v1_ += q_[1]; } \
        if (epi & 2) { v0_ = v0_ < (floatv)(0.0f) ? (floatv)(0.0f) : v0_; \
                       v1_ = v1_ < (floatv)(0.0f) ? (floatv)(0.0f) : v1_; } \
    } else if (beta != 0.0f) { v0_ += beta * d_[0]; v1_ += beta * d_[1]; } \
    d_[0] = v0_; d_[1] = v1_; }
// A's row r of a panel a_rstride floats from row 0 and each k a_kstep floats on, as MICRO_TILES_AK
#define MICRO_TILES_TO_Y(a_base, a_step, a_rstride, a_kstep, b_base, b_step, a_panels, b_panels, kc) { \
    const int rows_ = min(tile_m, M - row0); \
    for (int i = 0; i < (a_panels); ++i) { \
        const int a_rs = (a_rstride); \
        for (int j = 0; j < (b_panels); ++j) { \
            const int col_ = col0 + j * NR, img_ = col_ / pixels, pix_ = col_ - img_ * pixels; \
            ROWS(ACC_ROW) \
            ROWS(ZERO_ROW) \
            __global const float *ap = (a_base) + i * (a_step); \
            __local const floatv *bp = (__local const floatv *)(b_base) + j * (b_step); \
            MICRO_K_LOOP(kc, (a_kstep)) \
            ROWS(Y_ROW) \
        } \
    } }

// Implicit-GEMM convolution of one group: Y[n, o, oh, ow] = alpha * sum_k A[o, k] *
// X[n, (c, ki, kj) = k, oh * sh - ph + ki * dh, ow * sw - pw + kj * dw] + beta * Y, with A the
// packed weights (M = outputs of the group, K = channels x taps), or with a_ld > 0 the weights
// themselves, row o a_ld floats from row o - 1 (DIRECT_PACKED builds where every panel's rows are
// below M: a small layer's forward then needs no packing launch, docs/opencl.md session 45). It is gemm_packed with the
// column matrix never written: B's panels are gathered from X while they are staged (a panel's
// 32 columns are runs of consecutive pixels of output rows), and C is stored straight into
// the NCHW output, plus bias[b_off + row] where has_bias, then conv2d's epilogue (forward passes,
// beta 0; epi bits: 1 adds the residual at the same place of res, 2 the ReLU, NaN kept). x_off, y_off
// and r_off point at the group's first channel, b_off at its first bias; y_step > 0 stores strided
// pixels (see the store; no epilogue there).
#if BUILD_PACKED
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_gemm(const int M, const int N, const int K, const int tile_m, const int tile_n,
               __global const float *Ap, const int ap_off, const int a_ld,
               __global const float *X, const int x_off, __global float *Y, const int y_off,
               const int C, const int H, const int W, const int O, const int Ho, const int Wo,
               const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
               const int dh, const int dw, const float alpha, const float beta,
               __global const float *bias, const int b_off, const int has_bias,
               __global const float *res, const int r_off, const int epi,
               const int y_plane, const int y_row, const int y_step)
{
    PACKED_TILE_LOCALS
    GROUP_TILE
    PACKED_TILE_SETUP
    FLAT_ROWS
    const int pixels = Ho * Wo, taps = kh * kw;
    Ap += ap_off + (a_ld ? (size_t)row0 * a_ld : (size_t)(row0 / MR) * K * MR);
    // one K slice, dense NCHW stores and panels that never straddle two images: the
    // micro-kernel's sums go from its registers straight into Y (MICRO_TILES_TO_Y), not
    // through the tile in local memory and a second pass that copies it out
    const int to_y = CONV_TO_Y && STAGE_B_ROWS && DIRECT_PACKED && K <= BK && !y_step && pixels % NR == 0;

    // a run: up to NR columns of one output row; for each, where it starts in the panel, its
    // length, the image plane it reads, and its first input row and column (before the tap)
#if STAGE_B_ROWS
    // Every panel's runs at once (run_at: offset in b_pack), then the tile is gathered k by k
    // across all its panels, so each k reads its input rows once, in order (panel by panel,
    // each k's piece of a panel is 64 bytes of rows a plane apart: on 8-lane devices those
    // reads dominated the kernel)
    int run_at[BN], run_len[BN], run_h[BN], run_w[BN], run_img[BN], run_pix[BN];
    int fill_from[BN / NR];   // per panel: its first column past the runs (zeros from there)
    int runs = 0;
    for (int j = 0; j < b_panels; ++j) {
        const int first = runs;
        SPLIT_RUNS_INTO(first, j * (BK * NR), col0 + j * NR, NR, N)
        fill_from[j] = runs > first ? run_at[runs - 1] + run_len[runs - 1] - j * (BK * NR) : 0;
    }
    // a pointwise convolution (1x1, stride 1, no padding) whose tile of whole panels lies in one
    // image: each k's row of the tile is tile_n consecutive floats of one input plane, copied
    // panel by panel without splitting runs or checking bounds
    const int img0 = col0 / pixels;
    const int pointwise = POINTWISE_STAGE && kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 &&
                          Ho == H && Wo == W &&
                          col0 + tile_n <= N && (col0 + tile_n - 1) / pixels == img0 && tile_n % NR == 0;
    // any other 1x1 convolution without padding whose outputs all read a pixel (strided, or
    // tiles across images; not a strided input gradient's phase larger than dy): every run lies
    // inside its input row whatever k is, so k's runs are copied from the same places one
    // plane on, the bounds and addresses worked out once, not by GATHER_RUN per run and k (the
    // ResNet's strided 1x1 shortcut: docs/opencl.md session 45); run_vecs: the run's whole
    // 8-float vectors (stride 2: the even lanes of 16 floats, which must stay inside the plane)
    const int unpadded_1x1 = SUBSAMPLE_STAGE && !pointwise && kh == 1 && kw == 1 && ph == 0 && pw == 0 &&
                             (Ho - 1) * sh < H && (Wo - 1) * sw < W;
    __global const float *run_src[BN];
    int run_vecs[BN];
    for (int r = 0; r < (unpadded_1x1 ? runs : 0); ++r) {
        run_src[r] = X + x_off + (size_t)run_img[r] * C * H * W + (size_t)run_h[r] * Wr + run_w[r];
        const int reach = run_h[r] + 1 < Hr ? 2 * Wr : Wr;
        run_vecs[r] = sw == 1 ? run_len[r] / 8 : sw == 2 ? min(run_len[r], (reach - run_w[r]) / 2) / 8 : 0;
    }
    for (int k0 = 0; k0 < K; k0 += BK) {
        const int kc = min(BK, K - k0);
#if !DIRECT_PACKED
        STAGE_A(a_pack, Ap, K, k0, kc, a_panels)
#endif
        if (pointwise) {
            __global const float *src = X + x_off + ((size_t)img0 * C + k0) * pixels + (col0 - img0 * pixels);
            for (int k = 0; k < kc; ++k, src += pixels)
                for (int j = 0; j < b_panels; ++j) {
                    __local float *dst = b_pack + j * (BK * NR) + k * NR;
                    for (int q = 0; q < NR; ++q) dst[q] = src[j * NR + q];
                }
        }
        for (int k = 0; k < (unpadded_1x1 ? kc : 0); ++k) {
            for (int r = 0; r < runs; ++r) {
                __global const float *src = run_src[r] + (size_t)(k0 + k) * H * W;
                __local float *dst = b_pack + run_at[r] + k * NR;
                const int vecs = run_vecs[r];
                int q = 0;
                if (sw == 2)
                    for (; q < 8 * vecs; q += 8)
                        *(__local float8_u *)(dst + q) = (*(__global const float16_u *)(src + 2 * q)).even;
                else
                    for (; q < 8 * vecs; q += 8)
                        *(__local float8_u *)(dst + q) = *(__global const float8_u *)(src + q);
                for (; q < run_len[r]; ++q) dst[q] = src[q * sw];
            }
            for (int j = 0; j < b_panels; ++j) {
                __local float *dst = b_pack + j * (BK * NR) + k * NR;
                for (int q = fill_from[j]; q < NR; ++q) dst[q] = 0.0f;
            }
        }
        int ci = k0 / taps, ki = (k0 - ci * taps) / kw, kj = k0 - ci * taps - ki * kw;
        for (int k = 0; k < (pointwise || unpadded_1x1 ? 0 : kc); ++k) {
            for (int r = 0; r < runs; ++r)
                GATHER_RUN(b_pack + run_at[r] + k * NR, run_len[r], run_h[r] + ki * dh, run_w[r] + kj * dw,
                           X + x_off + ((size_t)run_img[r] * C + ci) * H * W)
            for (int j = 0; j < b_panels; ++j) {
                __local float *dst = b_pack + j * (BK * NR) + k * NR;
                for (int q = fill_from[j]; q < NR; ++q) dst[q] = 0.0f;
            }
            if (++kj == kw) {
                kj = 0;
                if (++ki == kh) { ki = 0; ++ci; }
            }
        }
#if DIRECT_PACKED   // the packed weights are read where they are, like gemm_packed's panels
        if (to_y && a_ld)
            MICRO_TILES_TO_Y(Ap + k0, (size_t)MR * a_ld, a_ld, 1, b_store, BK * NR / VW, a_panels, b_panels, kc)
        else if (to_y)
            MICRO_TILES_TO_Y(Ap + (size_t)k0 * MR, (size_t)K * MR, 1, MR, b_store, BK * NR / VW, a_panels, b_panels, kc)
        else if (a_ld)
            MICRO_TILES_AK(__global, Ap + k0, (size_t)MR * a_ld, a_ld, 1, __local, b_store, BK * NR / VW, c_store,
                           a_panels, b_panels, kc, k0 == 0)
        else
            MICRO_TILES(__global, Ap + (size_t)k0 * MR, (size_t)K * MR, __local, b_store, BK * NR / VW, c_store,
                        a_panels, b_panels, kc, k0 == 0)
#else
        MICRO_TILES_LOCAL(a_pack, b_store, c_store, a_panels, b_panels, kc, k0 == 0)
#endif
    }
#else
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
        MICRO_TILES_LOCAL(a_pack, b_store, c_store, a_panels, b_panels, kc, k0 == 0)
    }
#endif
    if (to_y) return;
    // write back into NCHW: column (n, pixel) of row o is Y[n, o, pixel]
    __local const float *c_tile = (__local const float *)c_store;
    const int rows = min(tile_m, M - row0), cols = min(tile_n, N - col0);
    if (y_step) {   // Y's (Ho, Wo) pixels are one stride phase of larger planes: y_step apart in
                    // rows y_row apart, planes y_plane apart (a strided input gradient's phase)
        for (int c = 0; c < cols;) {
            const int col = col0 + c, img = col / pixels, pix = col - img * pixels, oh = pix / Wo, ow = pix - oh * Wo;
            const int len = min(cols - c, Wo - ow);
            for (int i = 0; i < rows; ++i) {
                __global float *dst = Y + y_off + ((size_t)img * O + row0 + i) * y_plane + oh * y_row + ow * y_step;
                __local const float *src = c_tile + i * BN + c;
                const float b = has_bias ? bias[b_off + row0 + i] : 0.0f;
                if (beta == 0.0f) {
                    int q = 0;
                    STRIDE2_STORE_VECTORS
                    for (; q < len; ++q) dst[q * y_step] = alpha * src[q] + b;
                } else {
                    for (int q = 0; q < len; ++q) dst[q * y_step] = alpha * src[q] + beta * dst[q * y_step] + b;
                }
            }
            c += len;
        }
        return;
    }
    for (int c = 0; c < cols;) {
        const int col = col0 + c, img = col / pixels, pix = col - img * pixels;
        const int len = min(cols - c, pixels - pix);
        for (int i = 0; i < rows; ++i) {
            const size_t at = ((size_t)img * O + row0 + i) * pixels + pix;
            __global float *dst = Y + y_off + at;
            __local const float *src = c_tile + i * BN + c;
            const float b = has_bias ? bias[b_off + row0 + i] : 0.0f;   // conv2d's bias, folded in
            if (epi) {
                __global const float *r = res + r_off + at;
                const int add = epi & 1, relu = epi & 2;
                for (int q = 0; q < len; ++q) {
                    float v = alpha * src[q] + b;
                    if (add) v += r[q];
                    dst[q] = relu && v < 0.0f ? 0.0f : v;
                }
            } else if (beta == 0.0f) {
                for (int q = 0; q < len; ++q) dst[q] = alpha * src[q] + b;
            } else {
                for (int q = 0; q < len; ++q) dst[q] = alpha * src[q] + beta * dst[q] + b;
            }
        }
        c += len;
    }
}
#endif

// C = alpha * A @ B^T + beta * C without packing: rows of A (M, K) and of B (N, K) both run
// along K, so tiles are staged as plain row copies and a DR x DC micro-kernel keeps DR * DC
// vector dot-product accumulators over k (summed across lanes once per K slice): 4 x 4 float16
// on AVX-512, 2 x 4 float8 on AVX2 (8 accumulators + 4 B vectors + 1 A: 3 x 4 needs 17 ymm
// registers and LLVM spilled an accumulator, a store and reload in every iteration). tile_m
// and tile_n are multiples of DR and DC; split-K works as in gemm_packed.
#if DR == 2
#define DOT_ROWS(X) X(0) X(1)
#elif DR == 3
#define DOT_ROWS(X) X(0) X(1) X(2)
#elif DR == 4
#define DOT_ROWS(X) X(0) X(1) X(2) X(3)
#else
#error "DR must be 2, 3 or 4"
#endif
#if DC == 2
#define DOT_COLS(X, r) X(r, 0) X(r, 1)
#elif DC == 4
#define DOT_COLS(X, r) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#else
#error "DC must be 2 or 4"
#endif
#define DOT_ACC1(r, j) floatv d##r##_##j = (floatv)(0.0f);
#define DOT_ACC(r) DOT_COLS(DOT_ACC1, r)
#define DOT_LOAD_B(r, j) const floatv b##j = br##j[kk];
#define DOT_FMA1(r, j) d##r##_##j = MADV(a, b##j, d##r##_##j);
#define DOT_FMA(r) { const floatv a = ar##r[kk]; DOT_COLS(DOT_FMA1, r) }
// row pointers of a micro-tile: rows past the tile's last live one (a partial tile read
// straight from global memory) read that row again; their sums are never stored
#define DOT_AROW(r) dot_vt *ar##r = (dot_vt *)(a_base_ + (size_t)min(i0 + (r), a_last_) * a_ld_);
#define DOT_BROW(r, j) dot_vt *br##j = (dot_vt *)(b_base_ + (size_t)min(j0 + (j), b_last_) * b_ld_);
#define DOT_STORE1(r, j) { const float s = LANE_SUM(d##r##_##j); \
                           if (first) cr[j] = s; else cr[j] += s; }
#ifndef DOT_TREE
#define DOT_TREE 1
#endif
#if VW == 8 && DC == 4 && DOT_TREE
// a row's four accumulators summed across lanes at once: pairs of vectors folded lane pair by
// lane pair (shuffles within 128-bit halves), then the halves added, giving the four sums as
// one float4 (6 shuffle-adds and 1 add instead of 4 separate 3-step reductions and 4 scalar
// read-modify-writes of the C tile)
#define DOT_PAIR(a, b) ((float8)((a).s0, (a).s2, (b).s0, (b).s2, (a).s4, (a).s6, (b).s4, (b).s6) + \
                        (float8)((a).s1, (a).s3, (b).s1, (b).s3, (a).s5, (a).s7, (b).s5, (b).s7))
#define DOT_STORE(r) { __local float4 *cr = (__local float4 *)(c_tile + (i0 + (r)) * BN + j0); \
    const float8 u = DOT_PAIR(DOT_PAIR(d##r##_0, d##r##_1), DOT_PAIR(d##r##_2, d##r##_3)); \
    const float4 s = u.lo + u.hi; \
    if (first) *cr = s; else *cr += s; }
#else
#define DOT_STORE(r) { __local float *cr = c_tile + (i0 + (r)) * BN + j0; DOT_COLS(DOT_STORE1, r) }
#endif

// local tiles and this work-group's rows, columns and K range (kernels in gemm_nt's shape);
// rows_dr and cols_dc: rows and columns rounded up to the micro-kernel's
#define NT_TILE_LOCALS \
    __local floatv a_store[BM * BK / VW];   /* [tile_m][BK] */ \
    __local floatv b_store[BN * BK / VW];   /* [tile_n][BK] */ \
    __local floatv c_store[BM * BN / VW];   /* [BM][BN] partial sums */ \
    __local float *c_tile = (__local float *)c_store;
#define NT_TILE_SETUP \
    const int row0 = tile_y * tile_m; \
    const int col0 = tile_x * tile_n; \
    const int rows = min(tile_m, M - row0), cols = min(tile_n, N - col0); \
    const int rows_dr = (rows + DR - 1) / DR * DR, cols_dc = (cols + DC - 1) / DC * DC; \
    const int k_begin = tile_z * k_chunk; \
    const int k_end = min(K, k_begin + k_chunk);

// gemm_nt reads rows in place (NT_DIRECT) in K slices of NT_BK
#ifndef NT_DIRECT
#define NT_DIRECT 1
#endif
#ifndef NT_BK
#define NT_BK 1024
#endif
// B rows per block of the dot-product loop (DOT_JB for staged BK slices, NT_JB for gemm_nt's
// NT_BK slices): a block's rows (16 or 32 KiB) stay in L1 while every row pair of A runs over
// them, each A row read from L2 once per block; with all of a tile's B rows inner (128 KiB of
// them per row pair of A), each B vector came from L2 for DR FMAs, about as many bytes a cycle
// as L2 delivers. Longer slices in place: the lane sums and C tile updates of a micro-tile
// come once per slice.
#ifndef DOT_JB
#define DOT_JB 16
#endif
#ifndef NT_JB
#define NT_JB 8
#endif

// the DR x DC dot-product micro-kernel over rows_dr x kcv of A and cols_dc x kcv of B: in
// address space Q, vectors of type VT, row r at a_base + r * a_ld (floats), rows past a_last
// and b_last reading those again
#define DOT_TILES_AT(Q, VT, a_base, a_ld, a_last, b_base, b_ld, b_last, kcv, jb_rows, first_) { \
    const int first = (first_); \
    typedef Q const VT dot_vt; \
    Q const float *a_base_ = (a_base), *b_base_ = (b_base); \
    const int a_ld_ = (a_ld), b_ld_ = (b_ld), a_last_ = (a_last), b_last_ = (b_last); \
    for (int jb = 0; jb < cols_dc; jb += (jb_rows)) { \
        const int j_end = min(cols_dc, jb + (jb_rows)); \
        for (int i0 = 0; i0 < rows_dr; i0 += DR) { \
            DOT_ROWS(DOT_AROW) \
            for (int j0 = jb; j0 < j_end; j0 += DC) { \
                DOT_COLS(DOT_BROW, _) \
                DOT_ROWS(DOT_ACC) \
                for (int kk = 0; kk < (kcv) / VW; ++kk) { \
                    DOT_COLS(DOT_LOAD_B, _) \
                    DOT_ROWS(DOT_FMA) \
                } \
                DOT_ROWS(DOT_STORE) \
            } \
        } \
    } }
// ...over the tiles staged in a_store and b_store
#define DOT_TILES(first_) \
    DOT_TILES_AT(__local, floatv, (__local const float *)a_store, BK, rows_dr - 1, \
                 (__local const float *)b_store, BK, cols_dc - 1, kcv, DOT_JB, first_)

#if BUILD_PACKED
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void gemm_nt(const int M, const int N, const int K, const int tile_m, const int tile_n, const int k_chunk,
             __global const float *A_, const int a_off, const int lda,
             __global const float *B_, const int b_off, const int ldb,
             __global float *C_, const int c_off, const int ldc, const float alpha, const float beta,
             TILE_TICKET_ARGS)
{
    NT_TILE_LOCALS
    FOR_EACH_TILE
    NT_TILE_SETUP
    __global const float *A = A_ + a_off;
    __global const float *B = B_ + b_off;
    __global float *C = C_ + c_off + (size_t)tile_z * M * N;

    if (NT_DIRECT && K % VW == 0) {
        // whole vectors only: rows are read where they lie (staging them cost a copy of both
        // operands per tile); rows past M or N read the last live one and are not stored
        for (int k0 = k_begin; k0 < k_end; k0 += NT_BK) {
            const int kcv = min(NT_BK, k_end - k0);
            DOT_TILES_AT(__global, floatv_u, A + (size_t)row0 * lda + k0, lda, rows - 1,
                         B + (size_t)col0 * ldb + k0, ldb, cols - 1, kcv, NT_JB, k0 == k_begin)
        }
        STORE_C_TILE(C, ldc)
        continue;
    }
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0), kcv = (kc + VW - 1) / VW * VW;
        for (int i = 0; i < rows_dr; ++i) {   // rows past M and columns past kc stage as zeros
            __local float *dst = (__local float *)a_store + i * BK;
            __global const float *src = A + (size_t)(row0 + i) * lda + k0;
            const int live = i < rows ? kc : 0;
            for (int e = 0; e < live; ++e) dst[e] = src[e];
            for (int e = live; e < kcv; ++e) dst[e] = 0.0f;
        }
        for (int j = 0; j < cols_dc; ++j) {
            __local float *dst = (__local float *)b_store + j * BK;
            __global const float *src = B + (size_t)(col0 + j) * ldb + k0;
            const int live = j < cols ? kc : 0;
            for (int e = 0; e < live; ++e) dst[e] = src[e];
            for (int e = live; e < kcv; ++e) dst[e] = 0.0f;
        }
        DOT_TILES(k0 == k_begin)
    }
    STORE_C_TILE(C, ldc)
    END_TILES
}
#endif

// Weight gradient of one convolution group as an implicit A @ B^T (gemm_nt's tiles):
// dW[o, (c, ki, kj)] = sum over k = (n, oh, ow) of dy[n, o, oh, ow] * X[n, c, oh * sh - ph + ki * dh,
// ow * sw - pw + kj * dw]. Rows of both operands are staged straight from the NCHW arrays, run
// by run (a run: consecutive k within one output row), so neither a column matrix nor a
// channels-first copy of dy is written. a_off / b_off point at the group's first channel;
// split-K over dimension 2 as in gemm_nt.
#if BUILD_PACKED
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_filter_gemm(const int M, const int N, const int K, const int tile_m, const int tile_n, const int k_chunk,
                      __global const float *A, const int a_off, __global const float *X, const int x_off,
                      const int C, const int H, const int W, const int O, const int Ho, const int Wo,
                      const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                      const int dh, const int dw,
                      __global float *Cm, const int c_off, const int ldc, const float alpha, const float beta)
{
    NT_TILE_LOCALS
    GROUP_TILE
    NT_TILE_SETUP
    FLAT_ROWS
    const int pixels = Ho * Wo, taps = kh * kw;
    Cm += c_off + (size_t)get_group_id(2) * M * N;

    int run_at[BK], run_len[BK], run_h[BK], run_w[BK], run_img[BK], run_pix[BK];
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        const int kc = min(BK, k_end - k0), kcv = (kc + VW - 1) / VW * VW;
        int runs;
        SPLIT_RUNS(k0, kc, K)
        for (int i = 0; i < rows_dr; ++i) {   // rows past M and columns past kc stage as zeros
            __local float *dst = (__local float *)a_store + i * BK;
            if (i < rows) {
                for (int r = 0; r < runs; ++r) {
                    __global const float *src = A + a_off + ((size_t)run_img[r] * O + row0 + i) * pixels + run_pix[r];
                    __local float *d = dst + run_at[r];
                    for (int q = 0; q < run_len[r]; ++q) d[q] = src[q];
                }
            }
            for (int e = i < rows ? kc : 0; e < kcv; ++e) dst[e] = 0.0f;
        }
        for (int j = 0; j < cols_dc; ++j) {
            __local float *dst = (__local float *)b_store + j * BK;
            if (j < cols) {
                const int kk = col0 + j, ci = kk / taps, t = kk - ci * taps, ki = t / kw, kj = t - ki * kw;
                for (int r = 0; r < runs; ++r)
                    GATHER_RUN(dst + run_at[r], run_len[r], run_h[r] + ki * dh, run_w[r] + kj * dw,
                               X + x_off + ((size_t)run_img[r] * C + ci) * H * W)
            }
            for (int e = j < cols ? kc : 0; e < kcv; ++e) dst[e] = 0.0f;
        }
        DOT_TILES(k0 == k_begin)
    }
    STORE_C_TILE(Cm, ldc)
}
#endif

// conv_filter_gemm of a pointwise convolution (1x1, stride 1, no padding) whose planes are
// whole vectors: row o of A (dy) and row c of B (X) are, within one image, the planes
// dy[n, o] and X[n, c] themselves, so they are read where they lie, image by image, as gemm_nt
// reads its rows (NT_DIRECT), instead of staged run by run into local memory. X is
// (N, C, pixels), dy (N, O, pixels); x_off / a_off at the group's first channel.
#if BUILD_PACKED
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_filter_gemm_pointwise(const int M, const int N, const int K, const int tile_m, const int tile_n,
                                const int k_chunk, __global const float *A, const int a_off,
                                __global const float *X, const int x_off, const int C, const int O,
                                const int pixels,
                                __global float *Cm, const int c_off, const int ldc, const float alpha,
                                const float beta)
{
    NT_TILE_LOCALS
    GROUP_TILE
    NT_TILE_SETUP
    Cm += c_off + (size_t)tile_z * M * N;
    for (int k0 = k_begin; k0 < k_end;) {
        const int img = k0 / pixels, pix = k0 - img * pixels;
        const int kcv = min(min(NT_BK, k_end - k0), pixels - pix);   /* whole vectors: VW divides all three */
        DOT_TILES_AT(__global, floatv_u, A + a_off + ((size_t)img * O + row0) * pixels + pix, pixels, rows - 1,
                     X + x_off + ((size_t)img * C + col0) * pixels + pix, pixels, cols - 1, kcv, NT_JB,
                     k0 == k_begin)
        k0 += kcv;
    }
    STORE_C_TILE(Cm, ldc)
}
#endif

// C = alpha * (sum of the `splits` (M, N) slabs of P) + beta * C; one work-item per element
__kernel void gemm_split_sum(const int total, const int splits, __global const float *P,
                             __global float *C, const int c_off, const int N, const int ldc,
                             const float alpha, const float beta)
{
    const int i = get_global_id(0);
    // asked per work-group first, so PoCL's vectorised work-group loop is unswitched instead
    // of masking every load and store (see GID_CHECK in elementwise.cl)
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)total && i >= total) return;
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

// Winograd F(2x2, 3x3) convolution in one pass (the scheme: above winograd_weights in conv.cl):
// work-group (p, r) takes NR consecutive tiles (p) and the tile_m output channels from row
// r * tile_m. Per slice of WK input channels it transforms their 4x4 patches of the input xp
// (from xp_off: K channels of Hp x Wp per image, padded by ph and pw: the patches start ph rows
// and pw columns before the outputs, zeros outside; a padded copy's padding is 0) into local
// panels V[16][WK][NR], runs the micro-kernel of each tap position xi on U[xi] (the packed
// transformed weights, [16][M/MR][K][MR]) and V[xi] into local sums M[16][tile_m][NR], and
// finally transforms M's
// tiles back into the NCHW output (added to it when acc). Nothing but y is written to global
// memory: as a transform, 16 GEMMs and a transform back through global buffers the
// transformed tiles went through DRAM (docs/opencl.md). WK: channels per slice.
#ifndef WK
#define WK 64
#endif
// the 16 panels of V and of M lie a cache line more than their size apart: 4 KiB apart, the
// 16 stores of a transform all fell into one set of the L1 cache
#define VXI (WK * NR + 16)
#define MXI (BM * NR + 16)
#define WLOAD_ROW(r) c##r##_0 = ct[(r) * 2]; c##r##_1 = ct[(r) * 2 + 1];
#define WSTORE_ROW(r) ct[(r) * 2] = c##r##_0; ct[(r) * 2 + 1] = c##r##_1;
// shared by winograd_conv and winograd5_conv: work-group (p, r)'s first tile t0 and output row
// row0, and per tile its image (-1: past the last tile), its first output row and column, its
// patch's first row and column in xp's planes (top, left: negative in the padding) and where
// that lies from channel 0 of its image
#define WINOGRAD_TILES \
    const int t0 = get_group_id(0) * NR, row0 = get_group_id(1) * tile_m; \
    const int a_panels = min(tile_m, M - row0 + MR - 1) / MR; \
    const int panels = (M + MR - 1) / MR; \
    const size_t plane = (size_t)Hp * Wp; \
    long at[NR]; \
    int out_row[NR], out_col[NR], img[NR], top[NR], left[NR]; \
    for (int j = 0; j < NR; ++j) { \
        const int t = t0 + j; \
        if (t >= T) { img[j] = -1; at[j] = top[j] = left[j] = 0; continue; } \
        const int n = t / (th * tw), rest = t - n * th * tw, a = rest / tw, b = rest - a * tw; \
        out_row[j] = a % dh + 2 * dh * (a / dh); \
        out_col[j] = b % dw + 2 * dw * (b / dw); \
        img[j] = n; \
        top[j] = out_row[j] - ph; \
        left[j] = out_col[j] - pw; \
        at[j] = xp_off + ((long)n * K * Hp + top[j]) * Wp + left[j]; \
    }
// the micro-kernel of each of the `positions` transformed tap positions xi on U[xi] (the
// tile's panels from row0, channels k0 on) and V[xi] (panels vxi floats apart) into the
// local sums M[xi] (mxi floats apart)
#define WINOGRAD_GEMMS(positions, vxi, mxi) \
    for (int xi = 0; xi < (positions); ++xi) { \
        __global const float *ub = U + ((size_t)xi * panels + row0 / MR) * K * MR + (size_t)k0 * MR; \
        for (int i = 0; i < a_panels; ++i) { \
            __local floatv *ct = m_store + ((size_t)xi * (mxi) + i * MR * NR) / VW; \
            ROWS(ACC_ROW) \
            if (k0 == 0) { ROWS(ZERO_ROW) } else { ROWS(WLOAD_ROW) } \
            __global const float *ap = ub + (size_t)i * K * MR; \
            __local const floatv *bp = v_store + (size_t)xi * (vxi) / VW; \
            const int a_rs = 1; \
            MICRO_K_LOOP(kc, MR) \
            ROWS(WSTORE_ROW) \
        } \
    }
// conv2d's ReLU after the bias in the stores (relu: never with acc), NaN kept: no pass of its own
inline float wino_relu1(const float v, const int relu) { return relu && v < 0.0f ? 0.0f : v; }
inline float8 wino_relu8(const float8 v, const int relu)
{
    return relu ? (v < (float8)(0.0f) ? (float8)(0.0f) : v) : v;
}
// row i of output channel o's 2x2 outputs of tile j, its sums transformed back into v0 v1,
// stored (or added, when acc) plus bo (conv2d's bias, folded in: no add_bias pass)
#define WINOGRAD_STORE(i, v0, v1) { \
        const int row = out_row[j] + (i) * dh, c0 = out_col[j], c1 = c0 + dw; \
        if (row < Ho && c0 < Wo) { \
            __global float *yr = Y + y_off + ((size_t)img[j] * M + row0 + o) * Ho * Wo + (size_t)row * Wo; \
            if (acc) { yr[c0] += (v0) + bo; if (c1 < Wo) yr[c1] += (v1) + bo; } \
            else { yr[c0] = wino_relu1((v0) + bo, relu); if (c1 < Wo) yr[c1] = wino_relu1((v1) + bo, relu); } \
        } }
// runs of 8 tiles side by side in one row of tiles, of undilated columns or of dilation 2 from an
// even tile column (tiles 0, 1, 4, 5, ... columns apart: both phases of 4 tile columns): their
// patches' values at one tap lie in 16 floats of the input row, 8 tiles a vector (run8 1).
// Where `halves`, undilated columns of rows of 4 tiles (8-wide outputs: no run of 8 fits a row of
// tiles) give run8 2: 8 tiles as two runs of 4, each run's values at one tap in 8 floats of its row
#define WINOGRAD_HALF(j_) (img[j_] >= 0 && img[(j_) + 3] >= 0 && img[j_] == img[(j_) + 3] \
                           && out_row[j_] == out_row[(j_) + 3] && out_col[(j_) + 3] == out_col[j_] + 6)
// Runs whose patches reach into the padding (the input read in place, ph or pw > 0) are runs of 8
// only in F(2x2, 3x3) undilated (edge8: WINOGRAD_EDGE_ROW), their columns from left + 1 to
// left + 16 inside the row; every other tile reaching into it goes alone, bounds checked (N x N
// patches)
#define WINOGRAD_RUNS(N) \
    int run8[NR / 8], edge8[NR / 8]; \
    for (int j0 = 0; j0 < NR; j0 += 8) { \
        run8[j0 / 8] = (dw == 1 || (dw == 2 && out_col[j0] % 4 == 0)) && img[j0] >= 0 && img[j0 + 7] >= 0 \
                       && img[j0] == img[j0 + 7] && out_row[j0] == out_row[j0 + 7] \
                       && out_col[j0 + 7] == out_col[j0] + 15 - dw; \
        const int span = ((N) - 2) * dw + 16; \
        edge8[j0 / 8] = run8[j0 / 8] && !(top[j0] >= 0 && top[j0] + ((N) - 1) * dh < Hp \
                                           && left[j0] >= 0 && left[j0] + span <= Wp); \
        if (edge8[j0 / 8] && !((N) == 4 && dw == 1 && left[j0] + 1 >= 0 && left[j0] + 17 <= Wp)) \
            run8[j0 / 8] = edge8[j0 / 8] = 0; \
        if (!run8[j0 / 8] && halves && dw == 1 && !(ph | pw) && WINOGRAD_HALF(j0) && WINOGRAD_HALF(j0 + 4)) \
            run8[j0 / 8] = 2; \
    }
// taps q and q + 1 (q even) of a run's 8 tiles from `row` (the first tile's patch row): the even
// and odd floats (dw 1) or pairs of floats (dw 2) of the 16 from row + q dw. float8 halves: a
// float16 is split across calls without AVX-512 (programs.py)
#define WINOGRAD_PAIR(row, q, t0_, t1_) { \
        const float8 lo = LOAD8G(0, (row) + (q) * dw), hi = LOAD8G(0, (row) + (q) * dw + 8); \
        if (dw == 1) { t0_ = (float8)(lo.even, hi.even); t1_ = (float8)(lo.odd, hi.odd); } \
        else { t0_ = (float8)(lo.s01, lo.s45, hi.s01, hi.s45); t1_ = (float8)(lo.s23, lo.s67, hi.s23, hi.s67); } }
// taps q and q + 1 (q even) of two runs of 4 undilated tiles from rows ra and rb (each run's first
// patch row): the even and odd floats of the 8 from each row + q
#define WINOGRAD_PAIR4(ra, rb, q, t0_, t1_) { \
        const float8 a_ = LOAD8G(0, (ra) + (q)), b_ = LOAD8G(0, (rb) + (q)); \
        t0_ = (float8)(a_.even, b_.even); t1_ = (float8)(a_.odd, b_.odd); }
// a run's outputs in output row yr from its first tile's column: per tile v0 there and v1 dw
// further, i.e. 16 floats with v0's and v1's lanes interleaved one by one (dw 1) or in pairs (dw 2)
#define WINOGRAD_STORE8(yr, v0, v1) { \
        float8 lo, hi; \
        if (dw == 1) { \
            lo = (float8)(v0.s0, v1.s0, v0.s1, v1.s1, v0.s2, v1.s2, v0.s3, v1.s3); \
            hi = (float8)(v0.s4, v1.s4, v0.s5, v1.s5, v0.s6, v1.s6, v0.s7, v1.s7); \
        } else { \
            lo = (float8)(v0.s01, v1.s01, v0.s23, v1.s23); \
            hi = (float8)(v0.s45, v1.s45, v0.s67, v1.s67); \
        } \
        STORE8G(acc ? LOAD8G(0, yr) + lo : lo, 0, yr); \
        STORE8G(acc ? LOAD8G(1, yr) + hi : hi, 1, yr); }
// a run of 4 undilated tiles' outputs in output row yr from its first tile's column: v0's and v1's
// lanes interleaved
#define WINOGRAD_STORE4(yr, v0, v1) { \
        const float8 s_ = (float8)(v0.s0, v1.s0, v0.s1, v1.s1, v0.s2, v1.s2, v0.s3, v1.s3); \
        STORE8G(acc ? LOAD8G(0, yr) + s_ : s_, 0, yr); }
// the separable transforms' passes: B^T d column q, then (B^T d) B row r; A^T m row i
#define COL_IN(r) d[r][q]
#define COL_OUT(r) e[r][q]
#define ROW_IN(q) e[r][q]
#define RQ(q) r[i][q]
// the input channel WINOGRAD_AHEAD_IN ahead is prefetched (its planes lie a plane apart, further
// than the hardware prefetchers look), and the output channel WINOGRAD_AHEAD_OUT ahead of the
// stores: measured in docs/opencl.md, session 46
#define WINOGRAD_AHEAD_IN 8
#define WINOGRAD_AHEAD_OUT 4
// the rows of the N x N patches of the work-group's tiles in the channel at xf, as
// WINOGRAD_INPUT reads them (a run of 8: 16 floats from (N - 2) dw; of two runs of 4: 8 from
// N - 2; a tile alone: its N taps)
#define WINOGRAD_PREFETCH_INPUT(N, xf) \
    for (int j0 = 0; j0 < NR; j0 += 8) \
        for (int r = 0; r < (N); ++r) { \
            const long rr = (long)r * dh * Wp; \
            if (run8[j0 / 8] == 1) PREFETCH_SPAN(PREFETCH_READ, (xf) + at[j0] + rr, ((N) - 2) * dw + 16) \
            else if (run8[j0 / 8] == 2) { \
                PREFETCH_SPAN(PREFETCH_READ, (xf) + at[j0] + rr, (N) + 6) \
                PREFETCH_SPAN(PREFETCH_READ, (xf) + at[j0 + 4] + rr, (N) + 6) \
            } else \
                for (int j = j0; j < j0 + 8; ++j) \
                    if (img[j] >= 0) PREFETCH_SPAN(PREFETCH_READ, (xf) + at[j] + rr, ((N) - 1) * dw + 1) \
        }
// the 4 taps of a run of 8 undilated F(2x2, 3x3) tiles from `row` (the first tile's patch row h,
// from column left) into d_[0..3] where the run reaches into the padding: zeros where h lies
// outside the planes, else columns left + 1 to left + 16 as two float8 loads (inside the row;
// their even floats are tap 1, their odd ones tap 2) and columns left and left + 17 alone,
// zero outside the row (tap 0: column left, then tap 2's first 7; tap 3: tap 1's last 7, then
// column left + 17)
#define WINOGRAD_EDGE_ROW(row, h, left_, d_) \
    if ((h) < 0 || (h) >= Hp) { \
        d_[0] = d_[1] = d_[2] = d_[3] = (float8)(0.0f); \
    } else { \
        const float8 lo = LOAD8G(0, (row) + 1), hi = LOAD8G(0, (row) + 9); \
        d_[1] = (float8)(lo.even, hi.even); \
        d_[2] = (float8)(lo.odd, hi.odd); \
        const float first = (left_) >= 0 ? (row)[0] : 0.0f, last = (left_) + 17 < Wp ? (row)[17] : 0.0f; \
        d_[0] = (float8)(first, d_[2].s0123, d_[2].s456); \
        d_[3] = (float8)(d_[1].s1234, d_[1].s567, last); \
    }
// channel slice [k0, k0 + kc) of the input into V: each tile's N x N patch through B^T (BT),
// runs of 8 tiles a float8 (WINOGRAD_PAIR), other tiles one by one (zeros past the last tile);
// position (N r + q) of V's panels STRIDE floats apart
#define WINOGRAD_V8(q) *(__local float8 *)(dst + (n_ * r + (q)) * vstride_)
#define WINOGRAD_V1(q) dst[(n_ * r + (q)) * vstride_ + j - j0]
#define WINOGRAD_INPUT(N, STRIDE, BT) { \
    const int n_ = (N), vstride_ = (STRIDE); \
    for (int c = 0; c < kc; ++c) { \
        __global const float *xc = xp + (size_t)(k0 + c) * plane; \
        if (k0 + c + WINOGRAD_AHEAD_IN < K) WINOGRAD_PREFETCH_INPUT(N, xc + (size_t)WINOGRAD_AHEAD_IN * plane) \
        for (int j0 = 0; j0 < NR; j0 += 8) { \
            __local float *dst = vt + c * NR + j0; \
            if (run8[j0 / 8]) { \
                __global const float *s = xc + at[j0], *sb = xc + at[j0 + 4]; \
                float8 d[N][N], e[N][N]; \
                for (int r = 0; r < (N); ++r) { \
                    __global const float *row = s + (long)r * dh * Wp, *rowb = sb + (long)r * dh * Wp; \
                    if (edge8[j0 / 8]) { \
                        WINOGRAD_EDGE_ROW(row, top[j0] + r * dh, left[j0], d[r]) \
                    } else if (run8[j0 / 8] == 2) { \
                        for (int q = 0; q < (N); q += 2) WINOGRAD_PAIR4(row, rowb, q, d[r][q], d[r][q + 1]) \
                    } else { \
                        for (int q = 0; q < (N); q += 2) WINOGRAD_PAIR(row, q, d[r][q], d[r][q + 1]) \
                    } \
                } \
                for (int q = 0; q < (N); ++q) BT(float8, COL_IN, COL_OUT) \
                for (int r = 0; r < (N); ++r) BT(float8, ROW_IN, WINOGRAD_V8) \
                continue; \
            } \
            for (int j = j0; j < j0 + 8; ++j) { \
                const int live = img[j] >= 0; \
                __global const float *s = xc + (live ? at[j] : 0); \
                float d[N][N], e[N][N]; \
                for (int r = 0; r < (N); ++r) \
                    for (int q = 0; q < (N); ++q) { \
                        const int h_ = top[j] + r * dh, w_ = left[j] + q * dw; \
                        d[r][q] = live && h_ >= 0 && h_ < Hp && w_ >= 0 && w_ < Wp \
                                  ? s[(long)r * dh * Wp + q * dw] : 0.0f; \
                    } \
                for (int q = 0; q < (N); ++q) BT(float, COL_IN, COL_OUT) \
                for (int r = 0; r < (N); ++r) BT(float, ROW_IN, WINOGRAD_V1) \
            } \
        } \
    } }
// the products back into Y: per output row o of the work-group, runs of 8 tiles as two rows of
// 16 outputs (WINOGRAD_STORE8), other tiles one by one (WINOGRAD_STORE); N x N positions at
// (N x + q) * STRIDE in mt, A^T's rows A0 and A1
#define WINOGRAD_M8(x) (*(__local const float8 *)(src + (n_ * (x) + q) * stride_))
// a run of 8 tiles' rows A0 and A1 of A^T M from src: r[0][q], r[1][q] for the N columns q
#define WINOGRAD_RUN8_ROWS(N, A0, A1) \
    float8 r[2][N]; \
    for (int q = 0; q < (N); ++q) { \
        r[0][q] = A0(WINOGRAD_M8); \
        r[1][q] = A1(WINOGRAD_M8); \
    }
#define WINOGRAD_M1(x) src[(n_ * (x) + q) * stride_]
// the output rows WINOGRAD_OUTPUT stores for the work-group's output row o_ (2 rows of 16 floats
// a run of 8, of 8 floats a run of 4, of 2 outputs dw apart a tile alone)
#define WINOGRAD_PREFETCH_OUTPUT(o_) \
    for (int j0 = 0; j0 < NR; j0 += 8) \
        for (int j = j0; j < j0 + 8; j += run8[j0 / 8] == 1 ? 8 : run8[j0 / 8] == 2 ? 4 : 1) { \
            if (img[j] < 0) continue; \
            __global float *yf = Y + y_off + ((size_t)img[j] * M + row0 + (o_)) * Ho * Wo + out_col[j]; \
            for (int i = 0; i < 2; ++i) { \
                const int row = out_row[j] + i * dh; \
                if (row >= Ho) continue; \
                PREFETCH_SPAN(PREFETCH_WRITE, yf + (size_t)row * Wo, \
                              run8[j0 / 8] == 1 ? 16 : run8[j0 / 8] == 2 ? 8 : dw + 1) \
            } \
        }
#define WINOGRAD_OUTPUT(N, STRIDE, A0, A1) { \
    const int rows = min(tile_m, M - row0), n_ = (N), stride_ = (STRIDE); \
    for (int o = 0; o < rows; ++o) { \
        const float bo = has_bias ? bias[b_off + row0 + o] : 0.0f; \
        if (o + WINOGRAD_AHEAD_OUT < rows) WINOGRAD_PREFETCH_OUTPUT(o + WINOGRAD_AHEAD_OUT) \
        for (int j0 = 0; j0 < NR; j0 += 8) { \
            if (run8[j0 / 8] == 1 && out_col[j0] + 16 <= Wo) { \
                __local const float *src = mt + o * NR + j0; \
                WINOGRAD_RUN8_ROWS(N, A0, A1) \
                __global float *yd = Y + y_off + ((size_t)img[j0] * M + row0 + o) * Ho * Wo + out_col[j0]; \
                for (int i = 0; i < 2; ++i) { \
                    const int row = out_row[j0] + i * dh; \
                    if (row >= Ho) continue; \
                    const float8 v0 = wino_relu8(A0(RQ) + bo, relu), v1 = wino_relu8(A1(RQ) + bo, relu); \
                    WINOGRAD_STORE8(yd + (size_t)row * Wo, v0, v1) \
                } \
                continue; \
            } \
            if (run8[j0 / 8] == 2 && out_col[j0] + 8 <= Wo && out_col[j0 + 4] + 8 <= Wo) { \
                __local const float *src = mt + o * NR + j0; \
                WINOGRAD_RUN8_ROWS(N, A0, A1) \
                __global float *ya = Y + y_off + ((size_t)img[j0] * M + row0 + o) * Ho * Wo + out_col[j0]; \
                __global float *yb = Y + y_off + ((size_t)img[j0 + 4] * M + row0 + o) * Ho * Wo + out_col[j0 + 4]; \
                for (int i = 0; i < 2; ++i) { \
                    const int row_a = out_row[j0] + i * dh, row_b = out_row[j0 + 4] + i * dh; \
                    const float8 v0 = wino_relu8(A0(RQ) + bo, relu), v1 = wino_relu8(A1(RQ) + bo, relu); \
                    if (row_a < Ho) WINOGRAD_STORE4(ya + (size_t)row_a * Wo, v0.lo, v1.lo) \
                    if (row_b < Ho) WINOGRAD_STORE4(yb + (size_t)row_b * Wo, v0.hi, v1.hi) \
                } \
                continue; \
            } \
            for (int j = j0; j < j0 + 8; ++j) { \
                if (img[j] < 0) continue; \
                __local const float *src = mt + o * NR + j; \
                float r[2][N]; \
                for (int q = 0; q < (N); ++q) { \
                    r[0][q] = A0(WINOGRAD_M1); \
                    r[1][q] = A1(WINOGRAD_M1); \
                } \
                for (int i = 0; i < 2; ++i) WINOGRAD_STORE(i, A0(RQ), A1(RQ)) \
            } \
        } \
    } }
// B^T d of a 4-vector (F(2x2, 3x3))
#define WG3_BT(T, d, o) { o(0) = d(0) - d(2); o(1) = d(1) + d(2); o(2) = d(2) - d(1); o(3) = d(1) - d(3); }
// A^T m: rows m0 + m1 + m2 and m1 - m2 - m3
#define AT3_0(m) (m(0) + m(1) + m(2))
#define AT3_1(m) (m(1) - m(2) - m(3))
#if BUILD_WINOGRAD3
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void winograd_conv(const int M, const int K, const int T, const int tile_m, const int th, const int tw,
                   __global const float *restrict U, __global const float *restrict xp, const int xp_off,
                   const int Hp, const int Wp, const int ph, const int pw, const int dh, const int dw,
                   __global float *restrict Y, const int y_off, const int Ho, const int Wo, const int acc,
                   __global const float *bias, const int b_off, const int has_bias, const int relu,
                   const int halves)
{
    __local floatv v_store[16 * VXI / VW];   /* [16][WK][NR], a cache line between */
    __local floatv m_store[16 * MXI / VW];   /* [16][tile_m][NR], likewise */
    __local float *vt = (__local float *)v_store;
    __local float *mt = (__local float *)m_store;
    WINOGRAD_TILES
    WINOGRAD_RUNS(4)
    for (int k0 = 0; k0 < K; k0 += WK) {
        const int kc = min(WK, K - k0);
        WINOGRAD_INPUT(4, VXI, WG3_BT)
        WINOGRAD_GEMMS(16, VXI, MXI)
    }
    WINOGRAD_OUTPUT(4, MXI, AT3_0, AT3_1)
}
#endif

// Winograd F(2x2, 5x5) in one pass, as winograd_conv: 6x6 patches, 36 tap positions (the
// scheme: above winograd5_weights in conv.cl); the same work-groups, WK channels per slice.
// 36 multiply-adds per tile and channel pair instead of the direct kernel's 100.
#define VXI5 (WK * NR + 16)
#define MXI5 (BM * NR + 16)
// B^T d of a 6-vector (d0..d5 from the expression d(i), of type T) into o(0..5) (Toom-Cook on 0, 1, -1,
// 2, -2 and infinity, rows scaled to a largest entry of 1: the NumPy backend's _wg_matrices)
#define WG5_BT(T, d, o) { \
        const T p_ = d(1) - 0.25f * d(3), q_ = d(2) - 0.25f * d(4); \
        const T s_ = d(3) - d(1), t_ = 0.5f * (d(4) - d(2)); \
        o(0) = 0.8f * d(0) - d(2) + 0.2f * d(4); o(1) = p_ + q_; o(2) = q_ - p_; \
        o(3) = s_ + t_; o(4) = t_ - s_; o(5) = 0.8f * d(1) - d(3) + 0.2f * d(5); }
#if BUILD_WINOGRAD5
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void winograd5_conv(const int M, const int K, const int T, const int tile_m, const int th, const int tw,
                    __global const float *restrict U, __global const float *restrict xp, const int xp_off,
                    const int Hp, const int Wp, const int ph, const int pw, const int dh, const int dw,
                    __global float *restrict Y, const int y_off, const int Ho, const int Wo, const int acc,
                    __global const float *bias, const int b_off, const int has_bias, const int relu,
                    const int halves)
{
    __local floatv v_store[36 * VXI5 / VW];   /* [36][WK][NR], a cache line between */
    __local floatv m_store[36 * MXI5 / VW];   /* [36][tile_m][NR], likewise */
    __local float *vt = (__local float *)v_store;
    __local float *mt = (__local float *)m_store;
    WINOGRAD_TILES
    WINOGRAD_RUNS(6)
    for (int k0 = 0; k0 < K; k0 += WK) {
        const int kc = min(WK, K - k0);
        WINOGRAD_INPUT(6, VXI5, WG5_BT)
        WINOGRAD_GEMMS(36, VXI5, MXI5)
    }
    // A^T m: rows m0 + m1 + m2 + m3 + m4 and m1 - m2 + 2 (m3 - m4) + m5
#define AT0(m) (m(0) + m(1) + m(2) + m(3) + m(4))
#define AT1(m) (m(1) - m(2) + 2.0f * (m(3) - m(4)) + m(5))
    WINOGRAD_OUTPUT(6, MXI5, AT0, AT1)
}
#endif
#undef COL_IN
#undef COL_OUT
#undef ROW_IN
#undef AT0
#undef AT1
#undef RQ

// A 3x3 stride-2 convolution as Winograd F(2x2, 2x2) on its input's phases (the scheme: above
// s2_weights in conv.cl), in one pass like winograd_conv: work-group (p, r) takes NR
// consecutive tiles of 2x2 outputs (p) and the tile_m output channels from row r * tile_m.
// Per slice of S2K input channels it transforms each tile's 5x5 patch of the input (read in
// place, zeros outside it: no padded or phase-plane copy) into local panels V[25][S2K][NR]
// (the 25 segments of the 9 positions), runs the micro-kernel of each position on U (packed
// [9][M/MR][4K][MR]) and its 1, 2 or 4 segments into local sums M[9][tile_m][NR], and finally
// transforms M's tiles back into the NCHW output, adding the bias. S2K: channels per slice.
#ifndef S2K
#define S2K 64
#endif
#define S2_SEG (S2K * NR)
// first segment of each position (the depths 4 2 4 / 2 1 2 / 4 2 4 summed)
__constant int s2_first[10] = {0, 4, 6, 10, 12, 13, 15, 19, 21, 25};
// where segment `at` of position pos starts in V: positions a cache line more apart than their size
#define S2_V(pos, at) ((s2_first[pos] + (at)) * S2_SEG + (pos) * 16)
// rows of output channels per work-group: up to 132 (more than BM), so that a 128-channel
// layer transforms each tile's input once
#ifndef S2_BM
#define S2_BM 132
#endif
#define S2_MXI (S2_BM * NR + 16)
// lane l of a tile's 5x5 patch (rows from top, columns from left) of the plane at src into
// zs[(r * 5 + q) * VW + l], zeros outside it (img < 0: past the last tile, all zeros)
#define S2_GATHER(zs, l, img, src, top, left) { \
    if ((img) < 0) { \
        for (int rq = 0; rq < 25; ++rq) zs[rq * VW + (l)] = 0.0f; \
    } else if ((top) >= 0 && (left) >= 0 && (top) + 5 <= H && (left) + 5 <= W) { \
        __global const float *s_ = (src) + (size_t)(top) * W + (left); \
        for (int r = 0; r < 5; ++r) for (int q = 0; q < 5; ++q) zs[(r * 5 + q) * VW + (l)] = s_[r * W + q]; \
    } else { \
        __global const float *s_ = (src); \
        for (int r = 0; r < 5; ++r) { \
            const int h_ = (top) + r; \
            for (int q = 0; q < 5; ++q) { \
                const int w_ = (left) + q; \
                zs[(r * 5 + q) * VW + (l)] = h_ >= 0 && h_ < H && w_ >= 0 && w_ < W ? s_[(size_t)h_ * W + w_] : 0.0f; \
            } \
        } \
    } }
// The patches of a run of 8 tiles side by side along one row of tiles (columns left + 4j to
// left + 4j + 4 for tile j; left + 1 to left + 32 inside the plane's rows, left >= -1) into
// lanes 0-7 of zs[(r * 5 + q) * VW]: each patch row's 32 floats from column left + 1 as two
// float16 loads, split by constant swizzles into the columns q = 1..4 of the 8 tiles; column
// q = 0 is q = 4 of the tile before (adjacent patches share a column), the first tile's read
// alone (zeros where left is -1, and for rows outside the plane). Two loads and five swizzles
// a patch row instead of 40 scalar loads and stores: on PoCL 3.1 / Zen 5 the scalar gathers
// were most of the forward's time outside its GEMM (docs/opencl.md, session 37).
#define S2_RUN_GATHER(zs, src, top, left) { \
    for (int r = 0; r < 5; ++r) { \
        const int h_ = (top) + r; \
        float8 v0 = (float8)(0.0f), v1 = v0, v2 = v0, v3 = v0, v4 = v0; \
        if (h_ >= 0 && h_ < H) { \
            __global const float *s_ = (src) + (size_t)h_ * W + (left) + 1; \
            const float16 a = LOAD16G(0, s_), b = LOAD16G(1, s_); \
            v1 = (float8)(a.s0, a.s4, a.s8, a.sc, b.s0, b.s4, b.s8, b.sc); \
            v2 = (float8)(a.s1, a.s5, a.s9, a.sd, b.s1, b.s5, b.s9, b.sd); \
            v3 = (float8)(a.s2, a.s6, a.sa, a.se, b.s2, b.s6, b.sa, b.se); \
            v4 = (float8)(a.s3, a.s7, a.sb, a.sf, b.s3, b.s7, b.sb, b.sf); \
            v0 = (float8)((left) >= 0 ? s_[-1] : 0.0f, v4.s012, v4.s3456); \
        } \
        STORE_PATCH_ROW5(8, zs, r, v0, v1, v2, v3, v4) \
    } }
// S2_RUN_GATHER for a run of 4 tiles (columns left + 1 to left + 16 inside the plane's rows) into
// lanes 0-3: one float16 load a patch row. Rows of 4 tiles are the ResNet's 16x16 inputs (its
// 32 -> 64 layer), whose patches all went through the scalar S2_GATHER, its transform then
// taking most of the kernel's time (docs/opencl.md, session 42).
#define S2_RUN4_GATHER(zs, src, top, left) { \
    for (int r = 0; r < 5; ++r) { \
        const int h_ = (top) + r; \
        float4 v0 = (float4)(0.0f), v1 = v0, v2 = v0, v3 = v0, v4 = v0; \
        if (h_ >= 0 && h_ < H) { \
            __global const float *s_ = (src) + (size_t)h_ * W + (left) + 1; \
            const float16 a = LOAD16G(0, s_); \
            v1 = (float4)(a.s0, a.s4, a.s8, a.sc); \
            v2 = (float4)(a.s1, a.s5, a.s9, a.sd); \
            v3 = (float4)(a.s2, a.s6, a.sa, a.se); \
            v4 = (float4)(a.s3, a.s7, a.sb, a.sf); \
            v0 = (float4)((left) >= 0 ? s_[-1] : 0.0f, v4.s012); \
        } \
        STORE_PATCH_ROW5(4, zs, r, v0, v1, v2, v3, v4) \
    } }
// the patches of tiles h0 .. h0 + VW - 1 (arrays img, top, left; PLANE(j): tile j's input
// plane) into their lanes of zs: runs of 8 tiles (h0 + 0, h0 + 8) by S2_RUN_GATHER where they
// are one image's and one row of tiles' consecutive tiles with every patch column but the
// first inside the rows, else runs of 4 so (S2_RUN4_GATHER), other tiles one by one
#if VW % 8 != 0
#error "S2_GATHER_TILES takes a vector's tiles in runs of 8: VW must be a multiple of 8"
#endif
#define S2_GATHER_TILES(zs, h0, PLANE) \
    for (int l0 = 0; l0 < VW; l0 += 8) { \
        const int j0 = (h0) + l0; \
        if (img[j0] >= 0 && img[j0 + 7] == img[j0] && top[j0 + 7] == top[j0] && left[j0 + 7] == left[j0] + 28 \
            && left[j0] >= -1 && left[j0] + 33 <= W) { \
            S2_RUN_GATHER((zs) + l0, PLANE(j0), top[j0], left[j0]) \
        } else { \
            for (int l4 = l0; l4 < l0 + 8; l4 += 4) { \
                const int j4 = (h0) + l4; \
                if (img[j4] >= 0 && img[j4 + 3] == img[j4] && top[j4 + 3] == top[j4] && left[j4 + 3] == left[j4] + 12 \
                    && left[j4] >= -1 && left[j4] + 17 <= W) { \
                    S2_RUN4_GATHER((zs) + l4, PLANE(j4), top[j4], left[j4]) \
                } else { \
                    for (int l = l4; l < l4 + 4; ++l) \
                        S2_GATHER(zs, l, img[(h0) + l], PLANE((h0) + l), top[(h0) + l], left[(h0) + l]) \
                } \
            } \
        } \
    }
// the 25 segments of the 9 positions from the patches zv[r * 5 + q] (VW tiles a vector) into
// DST(pos, at): BT along the even rows (phases 0x) and the odd ones as they are (phases 1x)
#define S2_TRANSFORM(zv, DST) { \
    floatv e[3][5]; \
    for (int q = 0; q < 5; ++q) { \
        e[0][q] = zv[q] - zv[10 + q]; e[1][q] = zv[10 + q]; e[2][q] = zv[20 + q] - zv[10 + q]; \
    } \
    for (int p = 0; p < 3; ++p) {   /* phase 00 (segment 0) and 01 (segment 1 where q is even) */ \
        DST(3 * p, 0) = e[p][0] - e[p][2]; \
        DST(3 * p + 1, 0) = e[p][2]; \
        DST(3 * p + 2, 0) = e[p][4] - e[p][2]; \
        DST(3 * p, 1) = e[p][1]; \
        DST(3 * p + 2, 1) = e[p][3]; \
    } \
    for (int i = 0; i < 2; ++i) {   /* phases 10 and 11 at the even rows of positions */ \
        const int p = 2 * i, r = 5 * (2 * i + 1); \
        DST(3 * p, 2) = zv[r] - zv[r + 2]; \
        DST(3 * p + 1, 1) = zv[r + 2]; \
        DST(3 * p + 2, 2) = zv[r + 4] - zv[r + 2]; \
        DST(3 * p, 3) = zv[r + 1]; \
        DST(3 * p + 2, 3) = zv[r + 3]; \
    } }
#if BUILD_S2_CONV
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void s2_winograd_conv(const int M, const int K, const int T, const int tile_m, const int th, const int tw,
                      __global const float *restrict U, __global const float *restrict x, const int x_off,
                      const int H, const int W, const int ph, const int pw,
                      __global float *restrict Y, const int y_off, const int Ho, const int Wo,
                      __global const float *bias, const int b_off, const int has_bias, const int relu,
                      const int halves)
{
    __local floatv v_store[(25 * S2_SEG + 9 * 16) / VW];
    __local floatv m_store[9 * S2_MXI / VW];
    __local float *vt = (__local float *)v_store;
    __local float *mt = (__local float *)m_store;
    const int t0 = get_group_id(0) * NR, row0 = get_group_id(1) * tile_m;
    const int a_panels = min(tile_m, M - row0 + MR - 1) / MR;
    const int panels = (M + MR - 1) / MR;
    const size_t plane = (size_t)H * W;
    // each tile's image (-1: past the last tile) and the input row and column of its patch
    int img[NR], top[NR], left[NR];
    for (int j = 0; j < NR; ++j) {
        const int t = t0 + j;
        if (t >= T) { img[j] = -1; top[j] = left[j] = 0; continue; }
        const int n = t / (th * tw), rest = t - n * th * tw, a = rest / tw, b = rest - a * tw;
        img[j] = n;
        top[j] = 4 * a - ph;
        left[j] = 4 * b - pw;
    }
    for (int k0 = 0; k0 < K; k0 += S2K) {
        const int kc = min(S2K, K - k0);
        for (int c = 0; c < kc; ++c) {
            for (int h0 = 0; h0 < NR; h0 += VW) {
                // VW tiles at a time: each tile's patch gathered into its lane, then the
                // transforms as vector operations and whole-vector stores into V (a segment's
                // NR tiles lie side by side there; they were scalar, one tile after another)
                floatv zv[25];   // zv[r * 5 + q]: lane l holds value (r, q) of tile h0 + l's patch
                float *zs = (float *)zv;
#define S2_PLANE(j) (x + x_off + ((size_t)img[j] * K + k0 + c) * plane)
                S2_GATHER_TILES(zs, h0, S2_PLANE)
#undef S2_PLANE
                __local floatv *dst = (__local floatv *)(vt + c * NR + h0);
#define S2_DST(pos, at) dst[S2_V(pos, at) / VW]
                S2_TRANSFORM(zv, S2_DST)
#undef S2_DST
            }
        }
        for (int pos = 0; pos < 9; ++pos) {
            const int depth = s2_first[pos + 1] - s2_first[pos];
            for (int i = 0; i < a_panels; ++i) {
                __local floatv *ct = m_store + ((size_t)pos * S2_MXI + i * MR * NR) / VW;
                ROWS(ACC_ROW)
                if (k0 == 0) { ROWS(ZERO_ROW) } else { ROWS(WLOAD_ROW) }
                __global const float *up = U + (size_t)(pos * panels + row0 / MR + i) * 4 * K * MR;
                const int a_rs = 1;
                for (int at = 0; at < depth; ++at) {
                    __global const float *ap = up + ((size_t)at * K + k0) * MR;
                    __local const floatv *bp = v_store + S2_V(pos, at) / VW;
                    MICRO_K_LOOP(kc, MR)
                }
                ROWS(WSTORE_ROW)
            }
        }
    }
    // A^T along the columns, then along the rows, 8 tiles a float8 (M's tiles lie side by
    // side); a run of 8 tiles along one row of tiles whose 16 outputs per row lie inside the
    // output stores each output row as two float8 (S2_RUN8; run8 1), and where `halves` two
    // runs of 4 tiles whose 8 outputs per row lie inside it (8-wide outputs: run8 2) each row as
    // one float8; other tiles output by output. conv2d's ReLU after the bias where `relu`.
    int run8[NR / 8], out_at[NR];
    for (int j = 0; j < NR; ++j) out_at[j] = (top[j] + ph) / 2 * Wo + (left[j] + pw) / 2;
    for (int j0 = 0; j0 < NR; j0 += 8) {
        run8[j0 / 8] = img[j0] >= 0 && img[j0 + 7] == img[j0] && out_at[j0 + 7] == out_at[j0] + 14
                       && (left[j0] + pw) / 2 + 16 <= Wo && (top[j0] + ph) / 2 + 2 <= Ho;
        if (!run8[j0 / 8] && halves) {
            int both = 1;
            for (int j = j0; j < j0 + 8; j += 4)
                both = both && img[j] >= 0 && img[j + 3] == img[j] && out_at[j + 3] == out_at[j] + 6
                       && (left[j] + pw) / 2 + 8 <= Wo && (top[j] + ph) / 2 + 2 <= Ho;
            if (both) run8[j0 / 8] = 2;
        }
    }
    const int rows = min(tile_m, M - row0);
    for (int o = 0; o < rows; ++o) {
        const float bo = has_bias ? bias[b_off + row0 + o] : 0.0f;
        for (int j0 = 0; j0 < NR; j0 += 8) {
            __local const float *src = mt + o * NR + j0;
            float8 s[3][2];
            for (int p = 0; p < 3; ++p) {
                const float8 m0 = LOAD8L(0, src + (3 * p) * S2_MXI), m1 = LOAD8L(0, src + (3 * p + 1) * S2_MXI);
                const float8 m2 = LOAD8L(0, src + (3 * p + 2) * S2_MXI);
                s[p][0] = m0 + m1;
                s[p][1] = m1 + m2;
            }
            float8 y[2][2];
            for (int i = 0; i < 2; ++i)
                for (int q = 0; q < 2; ++q) y[i][q] = wino_relu8(s[i][q] + s[i + 1][q] + bo, relu);
            if (run8[j0 / 8] == 2) {
                for (int h = 0; h < 8; h += 4) {
                    __global float *dst = Y + y_off + ((size_t)img[j0 + h] * M + row0 + o) * Ho * Wo + out_at[j0 + h];
                    for (int i = 0; i < 2; ++i) {
                        const float4 v0 = h ? y[i][0].hi : y[i][0].lo, v1 = h ? y[i][1].hi : y[i][1].lo;
                        STORE8G((float8)(v0.s0, v1.s0, v0.s1, v1.s1, v0.s2, v1.s2, v0.s3, v1.s3), 0, dst + i * Wo);
                    }
                }
                continue;
            }
            if (run8[j0 / 8]) {
                __global float *dst = Y + y_off + ((size_t)img[j0] * M + row0 + o) * Ho * Wo + out_at[j0];
                for (int i = 0; i < 2; ++i) {
                    const float8 v0 = y[i][0], v1 = y[i][1];
                    STORE8G((float8)(v0.s0, v1.s0, v0.s1, v1.s1, v0.s2, v1.s2, v0.s3, v1.s3), 0, dst + i * Wo);
                    STORE8G((float8)(v0.s4, v1.s4, v0.s5, v1.s5, v0.s6, v1.s6, v0.s7, v1.s7), 1, dst + i * Wo);
                }
                continue;
            }
            const float *ys = (const float *)y;   // ys[(i * 2 + q) * 8 + l]: tile j0 + l's output (i, q)
            for (int l = 0; l < 8; ++l) {
                const int j = j0 + l;
                if (img[j] < 0) continue;
                const int row = (top[j] + ph) / 2, col = (left[j] + pw) / 2;
                __global float *dst = Y + y_off + ((size_t)img[j] * M + row0 + o) * Ho * Wo + out_at[j];
                for (int i = 0; i < 2 && row + i < Ho; ++i)
                    for (int q = 0; q < 2 && col + q < Wo; ++q) dst[i * Wo + q] = ys[(i * 2 + q) * 8 + l];
            }
        }
    }
}
#endif

// The weight gradient of s2_winograd_conv's convolution as its adjoint (the NumPy backend's
// _s2_backward_filter, the same scheme): per position (p, q) the product
// P[seg * C + c][o] = sum over tiles of V[seg][c][tile] M[o][tile], V the forward's transformed
// input (S2_TRANSFORM) and M dy's tile through A (rows dy0, dy0 + dy1, dy1); the taps are then
// sums of four positions (s2_filter_taps). One work-group per block of S2F_BC input channels,
// block of S2F_BO output channels and range of t_chunk tiles: per slice of S2F_TS tiles it
// gathers and transforms x's tiles (each patch once for all 25 segments) into local rows
// xa[row][S2F_TS] and dy's into local panels db[pos][o / NR][S2F_TS][NR], then runs the
// micro-kernel of each position on them into local sums (one launch: the generic GEMM ran
// these long-K thin products far below its usual rate, docs/opencl.md).
// P[z][the positions' segments][C][O]: range z's sums.
#ifndef S2F_TS
#define S2F_TS 32
#endif
#ifndef S2F_BC
#define S2F_BC 32
#endif
#ifndef S2F_BO
#define S2F_BO 128
#endif
// local rows of xa and the sums: position pos's segments of cb channels from S2F_ROW, each
// position MR rows more than its segments (its last panel's padding)
#define S2F_ROWS (25 * S2F_BC + 9 * MR)
#define S2F_ROW(pos, cb) (s2_first[pos] * (cb) + (pos) * MR)
// shared by s2_winograd_filter and winograd_filter (work-group (block of input channels from
// c0, block of output channels from o0, range z of tiles [t_begin, t_end)), slices of TS
// tiles from t0, tc of them): each tile of the slice's image (-1: past the slice) and the input
// row and column of its patch, tile row a's ROW_AT(a) - ph and column b's COL_AT(b) - pw
#define FILTER_SLICE_TILES(TS, ROW_AT, COL_AT) \
    int img[TS], top[TS], left[TS]; \
    for (int j = 0; j < (TS); ++j) { \
        const int t = t0 + j; \
        if (j >= tc) { img[j] = -1; top[j] = left[j] = 0; continue; } \
        const int n = t / (th * tw), rest = t - n * th * tw, a = rest / tw; \
        img[j] = n; \
        top[j] = ROW_AT(a) - ph; \
        left[j] = COL_AT(rest - a * tw) - pw; \
    }
// the 2x2 tile of dy at (row, col) of image n, its values DH rows and DW columns apart, VW
// output channels from o0 + o a vector (lanes from ob on, and values past dy's last row or
// column, read as zeros: a dilated tile may start past them), into d00 d01 d10 d11; a tile
// with all four values inside dy and every lane live is read without the per-lane conditions
#define FILTER_DY_TILE(n, row, col, DH, DW) \
    floatv d00, d01, d10, d11; { \
        const int here_ = (row) < Ho && (col) < Wo, down_ = (row) + (DH) < Ho, right_ = (col) + (DW) < Wo; \
        __global const float *d_ = dy + dy_off + ((size_t)(n) * O + o0 + o) * dy_plane + (size_t)(row) * Wo + (col); \
        float *s00 = (float *)&d00, *s01 = (float *)&d01, *s10 = (float *)&d10, *s11 = (float *)&d11; \
        if (o + VW <= ob && here_ && down_ && right_) { \
            for (int l = 0; l < VW; ++l) { \
                __global const float *e_ = d_ + l * dy_plane; \
                s00[l] = e_[0]; s01[l] = e_[DW]; s10[l] = e_[(DH) * Wo]; s11[l] = e_[(DH) * Wo + (DW)]; \
            } \
        } else \
        for (int l = 0; l < VW; ++l) { \
            const int live = o + l < ob && here_; \
            __global const float *e_ = d_ + (live ? l * dy_plane : 0); \
            s00[l] = live ? e_[0] : 0.0f; \
            s01[l] = live && right_ ? e_[DW] : 0.0f; \
            s10[l] = live && down_ ? e_[(DH) * Wo] : 0.0f; \
            s11[l] = live && down_ && right_ ? e_[(DH) * Wo + (DW)] : 0.0f; \
        } }
// the micro-kernel of position pos on the slice: a_panels panels of x's transformed rows from
// row `base` of xa (TS floats a row, the tiles along it) against the position's panels of db
// ([pos][o / NR][TS][NR]) into the sums from row `base` of acc_store (BO floats a row), set on
// the range's first slice
#define FILTER_ACC_LOAD(r) c##r##_0 = ct[(r) * acc_vs]; c##r##_1 = ct[(r) * acc_vs + 1];
#define FILTER_ACC_STORE(r) ct[(r) * acc_vs] = c##r##_0; ct[(r) * acc_vs + 1] = c##r##_1;
#define FILTER_POSITION_GEMMS(TS, BO, pos, base, a_panels) \
    for (int i = 0; i < (a_panels); ++i) { \
        const int a_rs = (TS), acc_vs = (BO) / VW; \
        for (int j = 0; j < b_panels; ++j) { \
            __local floatv *ct = acc_store + (((base) + i * MR) * (BO) + j * NR) / VW; \
            ROWS(ACC_ROW) \
            if (t0 == t_begin) { ROWS(ZERO_ROW) } else { ROWS(FILTER_ACC_LOAD) } \
            __local const float *ap = xa + ((base) + i * MR) * (TS); \
            __local const floatv *bp = db_store + ((pos) * (BO) * (TS) + j * (TS) * NR) / VW; \
            MICRO_K_LOOP(tc, 1) \
            ROWS(FILTER_ACC_STORE) \
        } \
    }
// the work-group's block and range
#define FILTER_GROUP(BC, BO) \
    __local float *xa = (__local float *)xa_store; \
    __local float *db = (__local float *)db_store; \
    const int c0 = get_group_id(0) * (BC), o0 = get_group_id(1) * (BO), z = get_group_id(2); \
    const int cb = min((BC), C - c0), ob = min((BO), O - o0); \
    const int b_panels = (ob + NR - 1) / NR; \
    const size_t plane = (size_t)H * W, dy_plane = (size_t)Ho * Wo; \
    const int t_begin = z * t_chunk, t_end = min(T, t_begin + t_chunk);
#if BUILD_S2_FILTER
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void s2_winograd_filter(const int C, const int O, const int T, const int t_chunk, const int th, const int tw,
                        __global const float *restrict x, const int x_off, const int H, const int W,
                        const int ph, const int pw,
                        __global const float *restrict dy, const int dy_off, const int Ho, const int Wo,
                        __global float *restrict P)
{
    __local floatv xa_store[S2F_ROWS * S2F_TS / VW];
    __local floatv db_store[9 * S2F_BO * S2F_TS / VW];
    __local floatv acc_store[S2F_ROWS * S2F_BO / VW];
    FILTER_GROUP(S2F_BC, S2F_BO)
    for (int t0 = t_begin; t0 < t_end; t0 += S2F_TS) {
        const int tc = min(S2F_TS, t_end - t0);
#define S2F_AT(a) (4 * (a))
        FILTER_SLICE_TILES(S2F_TS, S2F_AT, S2F_AT)
#undef S2F_AT
        for (int c = 0; c < cb; ++c) {
            for (int h0 = 0; h0 < tc; h0 += VW) {
                floatv zv[25];   // zv[r * 5 + q]: lane l holds value (r, q) of tile h0 + l's patch
                float *zs = (float *)zv;
#define S2F_PLANE(j) (x + x_off + ((size_t)img[j] * C + c0 + c) * plane)
                S2_GATHER_TILES(zs, h0, S2F_PLANE)
#undef S2F_PLANE
                __local floatv *dst = xa_store + (c * S2F_TS + h0) / VW;
#define S2F_DST(pos, at) dst[(S2F_ROW(pos, cb) + (at) * cb) * (S2F_TS / VW)]
                S2_TRANSFORM(zv, S2F_DST)
#undef S2F_DST
            }
        }
        // dy's tiles through A along both sides, VW output channels a vector (whole-vector
        // stores into db's panels: VW divides NR, and ob is a multiple of VW where ob < O only
        // at the last block; channels past O read as zeros)
        for (int o = 0; o < ob; o += VW) {
            __local floatv *dst = (__local floatv *)(db + (o / NR) * S2F_TS * NR + o % NR);
            for (int j = 0; j < tc; ++j) {
                FILTER_DY_TILE(img[j], (top[j] + ph) / 2, (left[j] + pw) / 2, 1, 1)
                const floatv e1 = d00 + d10, f1 = d01 + d11;
                __local floatv *to = dst + j * (NR / VW);
                const int pos_step = S2F_BO * S2F_TS / VW;
                to[0] = d00; to[pos_step] = d00 + d01; to[2 * pos_step] = d01;
                to[3 * pos_step] = e1; to[4 * pos_step] = e1 + f1; to[5 * pos_step] = f1;
                to[6 * pos_step] = d10; to[7 * pos_step] = d10 + d11; to[8 * pos_step] = d11;
            }
        }
        for (int pos = 0; pos < 9; ++pos) {
            const int base = S2F_ROW(pos, cb), a_panels = ((s2_first[pos + 1] - s2_first[pos]) * cb + MR - 1) / MR;
            FILTER_POSITION_GEMMS(S2F_TS, S2F_BO, pos, base, a_panels)
        }
    }
    // the sums into P (the host makes every range hold tiles)
    __local const float *acc = (__local const float *)acc_store;
    for (int pos = 0; pos < 9; ++pos) {
        const int base = S2F_ROW(pos, cb), rows = (s2_first[pos + 1] - s2_first[pos]) * cb;
        for (int r = 0; r < rows; ++r) {
            const int seg = r / cb, c = r - seg * cb;
            __global float *dst = P + (((size_t)z * 25 + s2_first[pos] + seg) * C + c0 + c) * O + o0;
            for (int o = 0; o < ob; ++o) dst[o] = acc[(base + r) * S2F_BO + o];
        }
    }
}
#endif

// dw (+)= s2_winograd_filter's sums as taps: tap (i, j) is the segment of row phase i == 1 and
// column phase j == 1 of the positions (p, q) with p in {0, 1} (i = 0), {1, 2} (i = 2) or
// {0, 2} (i = 1), likewise q, summed over the z ranges: the rows of P's 25 (s2_first[pos] + that
// segment) in S2_TAP_ROWS, in the order (p, q) = (a, a), (a, b), (b, a), (b, b). One work-item
// per 16 output channels from 16 * get_global_id(0) and input channel c, as float16 rows of P
// (contiguous along o): one work-item per (o, c) with the rows worked out in loops ran lane by
// lane on PoCL, a cost that showed in the ResNet's 32 -> 64 layer.
__constant int S2_TAP_ROWS[9][4] = {{0, 4, 10, 12}, {1, 7, 11, 14}, {4, 6, 12, 13}, {2, 5, 17, 20}, {3, 9, 18, 24},
                                    {5, 8, 20, 23}, {10, 12, 15, 19}, {11, 14, 16, 22}, {12, 13, 19, 21}};
__kernel void s2_filter_taps(const int C, const int O, const int Z, __global const float *restrict P,
                             __global float *restrict dw, const int dw_off, const int acc)
{
    const int o0 = 16 * get_global_id(0), c = get_global_id(1);
    if (c >= C || o0 >= O) return;
    const int n = min(16, O - o0);
    const size_t row = (size_t)C * O;
    __global const float *p = P + (size_t)c * O + o0;
    for (int t = 0; t < 9; ++t) {
        float16 s = (float16)(0.0f);
        for (int z = 0; z < Z; ++z)
            for (int k = 0; k < 4; ++k) {
                __global const float *r = p + ((size_t)z * 25 + S2_TAP_ROWS[t][k]) * row;
                if (n == 16) {
                    s += LOAD16G(0, r);
                } else {
                    float16 v = (float16)(0.0f);
                    float *vs = (float *)&v;
                    for (int l = 0; l < n; ++l) vs[l] = r[l];
                    s += v;
                }
            }
        const float *ss = (const float *)&s;
        for (int l = 0; l < n; ++l) {
            __global float *d = dw + dw_off + ((size_t)(o0 + l) * C + c) * 9 + t;
            *d = acc ? *d + ss[l] : ss[l];
        }
    }
}

// The stride-1 3x3 weight gradient as Winograd F(3x3, 2x2), the adjoint of winograd_conv's
// F(2x2, 3x3) (the NumPy backend's _winograd_backward_filter, the same scheme): per tile of 2x2
// outputs, x's 4x4 patch through B^T . B (WG3_BT, as winograd_conv) gives V[16] and dy's tile
// through A . A^T (A's rows (1, 0), (1, 1), (1, -1), (0, -1): the adjoint of AT3_0 / AT3_1)
// M[16]; per position the sums over tiles of V[c][tile] M[o][tile], then G^T (their sum) G per
// (o, c) (winograd_filter_taps). Work-groups and slices as s2_winograd_filter's: one per block
// of WF_BC input channels, block of WF_BO output channels and range of t_chunk tiles; position
// pos's rows of x's cb channels from pos * (cb + MR) in xa and the sums (its last panel's
// padding after them). P[z][16][C][O]: range z's sums.
#ifndef WF_TS
#define WF_TS 32
#endif
#ifndef WF_BC
#define WF_BC 64
#endif
#ifndef WF_BO
#define WF_BO 64
#endif
#if WF_TS % VW
#error "WF_TS must be a multiple of VW"
#endif
#define WF_ROWS (16 * (WF_BC + MR))
#define WF_COL_IN(r) zv[(r) * 4 + q]
#define WF_COL_OUT(r) e[r][q]
#define WF_ROW_IN(q) e[r][q]
#define WF_ROW_OUT(q) dst[(4 * r + (q)) * pos_rows * (WF_TS / VW)]
// a run of 8 tiles' 4x4 patches (WINOGRAD_RUNS' runs: undilated, or of dilation 2 from an
// even tile column) from p, patch row r dh rows on: D(r * 4 + q) = tap (r, q) of the 8 tiles
// (WINOGRAD_PAIR, as winograd_conv's input transform)
#define WF_RUN8(p, D) \
    for (int r = 0; r < 4; ++r) { \
        __global const float *row_ = (p) + (size_t)r * dh * W; \
        float8 t0_, t1_; \
        WINOGRAD_PAIR(row_, 0, t0_, t1_) D(4 * r) = t0_; D(4 * r + 1) = t1_; \
        WINOGRAD_PAIR(row_, 2, t0_, t1_) D(4 * r + 2) = t0_; D(4 * r + 3) = t1_; \
    }
// two runs of 4 undilated tiles' 4x4 patches from pa and pb (each run's first patch row), the
// first run's in lanes 0-3, the second's in 4-7 (WINOGRAD_PAIR4, as winograd_conv's halves)
#define WF_RUN4X2(pa, pb, D) \
    for (int r = 0; r < 4; ++r) { \
        __global const float *ra_ = (pa) + (size_t)r * dh * W, *rb_ = (pb) + (size_t)r * dh * W; \
        float8 t0_, t1_; \
        WINOGRAD_PAIR4(ra_, rb_, 0, t0_, t1_) D(4 * r) = t0_; D(4 * r + 1) = t1_; \
        WINOGRAD_PAIR4(ra_, rb_, 2, t0_, t1_) D(4 * r + 2) = t0_; D(4 * r + 3) = t1_; \
    }
// tiles j0 to j0 + 7 by run8[j0 / 8]: one run of 8 (1) or two of 4 (2); xc: the slice's channel
#define WF_AT(j) (xc + ((size_t)img[j] * C * H + top[j]) * W + left[j])
#define WF_RUN(j0, D) \
    if (run8[(j0) / 8] == 2) { WF_RUN4X2(WF_AT(j0), WF_AT((j0) + 4), D) } else { WF_RUN8(WF_AT(j0), D) }
// lane l of tile j's 4x4 patch (taps dh rows and dw columns apart) of the plane at src into
// zs[(r * 4 + q) * VW + l], zeros outside it and past the slice
#define WF_GATHER(zs, l, j, src) \
    for (int r = 0; r < 4; ++r) \
        for (int q = 0; q < 4; ++q) { \
            const int h_ = top[j] + r * dh, w_ = left[j] + q * dw; \
            zs[(r * 4 + q) * VW + (l)] = img[j] >= 0 && h_ >= 0 && h_ < H && w_ >= 0 && w_ < W \
                                         ? (src)[(size_t)h_ * W + w_] : 0.0f; \
        }
// tile row a's first output row (tiles of dilation d: d interleaved tiles per 2 d rows, as
// winograd_conv's) and likewise tile column b's first output column
#define WF_ROW_AT(a) ((a) % dh + 2 * dh * ((a) / dh))
#define WF_COL_AT(b) ((b) % dw + 2 * dw * ((b) / dw))
// (VW tiles from h0 in runs of 8: one float8 a patch value, or each half of a float16)
#if VW == 16
#define WF_LO(k) zv[k].lo
#define WF_HI(k) zv[k].hi
#define WF_RUNS(h0) (run8[(h0) / 8] && run8[(h0) / 8 + 1])
#else
#define WF_LO(k) zv[k]
#define WF_RUNS(h0) run8[(h0) / 8]
#endif
#if BUILD_WINOGRAD3_FILTER
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void winograd_filter(const int C, const int O, const int T, const int t_chunk, const int th, const int tw,
                     __global const float *restrict x, const int x_off, const int H, const int W,
                     const int ph, const int pw, const int dh, const int dw,
                     __global const float *restrict dy, const int dy_off, const int Ho, const int Wo,
                     __global float *restrict P, const int halves)
{
    __local floatv xa_store[WF_ROWS * WF_TS / VW];
    __local floatv db_store[16 * WF_BO * WF_TS / VW];
    __local floatv acc_store[WF_ROWS * WF_BO / VW];
    FILTER_GROUP(WF_BC, WF_BO)
    const int pos_rows = cb + MR, a_panels = (cb + MR - 1) / MR;
    for (int t0 = t_begin; t0 < t_end; t0 += WF_TS) {
        const int tc = min(WF_TS, t_end - t0);
        FILTER_SLICE_TILES(WF_TS, WF_ROW_AT, WF_COL_AT)
        // runs of 8 tiles side by side in one row of tiles (of one image; undilated, or of dilation
        // 2 from an even tile column) whose patches' rows lie inside x (the host pads it):
        // WF_RUN8 reads them as vectors (run8 1); where `halves`, undilated rows of 4 tiles as two
        // runs of 4 (run8 2: 8-wide outputs, where no run of 8 fits a row of tiles)
        int run8[WF_TS / 8];
        for (int j0 = 0; j0 < WF_TS; j0 += 8) {
            run8[j0 / 8] = (dw == 1 || (dw == 2 && (left[j0] + pw) % 4 == 0)) && img[j0] >= 0
                           && img[j0 + 7] == img[j0] && top[j0 + 7] == top[j0] && left[j0 + 7] == left[j0] + 15 - dw
                           && top[j0] >= 0 && top[j0] + 3 * dh < H && left[j0] >= 0 && left[j0] + 16 + 2 * dw <= W;
            if (!run8[j0 / 8] && halves && dw == 1) {
                int both = 1;
                for (int j = j0; j < j0 + 8; j += 4)
                    both = both && img[j] >= 0 && img[j + 3] == img[j] && top[j + 3] == top[j] && left[j + 3] == left[j] + 6
                           && top[j] >= 0 && top[j] + 3 * dh < H && left[j] >= 0 && left[j] + 10 <= W;
                if (both) run8[j0 / 8] = 2;
            }
        }
        for (int c = 0; c < cb; ++c) {
            for (int h0 = 0; h0 < tc; h0 += VW) {
                floatv zv[16], e[4][4];   // zv[r * 4 + q]: lane l holds value (r, q) of tile h0 + l's patch
                __global const float *xc = x + x_off + ((size_t)(c0 + c)) * plane;
                if (WF_RUNS(h0)) {
                    WF_RUN(h0, WF_LO)
#if VW == 16
                    WF_RUN(h0 + 8, WF_HI)
#endif
                } else {
                    float *zs = (float *)zv;
                    for (int l = 0; l < VW; ++l)
                        WF_GATHER(zs, l, h0 + l, xc + (size_t)img[h0 + l] * C * plane)
                }
                __local floatv *dst = xa_store + (c * WF_TS + h0) / VW;
                for (int q = 0; q < 4; ++q) WG3_BT(floatv, WF_COL_IN, WF_COL_OUT)
                for (int r = 0; r < 4; ++r) WG3_BT(floatv, WF_ROW_IN, WF_ROW_OUT)
            }
        }
        // dy's tiles through A along the columns, then the rows (VW output channels a vector,
        // as s2_winograd_filter)
        for (int o = 0; o < ob; o += VW) {
            __local floatv *dst = (__local floatv *)(db + (o / NR) * WF_TS * NR + o % NR);
            for (int j = 0; j < tc; ++j) {
                FILTER_DY_TILE(img[j], top[j] + ph, left[j] + pw, dh, dw)
                const floatv s[4][2] = {{d00, d01}, {d00 + d10, d01 + d11}, {d00 - d10, d01 - d11}, {-d10, -d11}};
                __local floatv *to = dst + j * (NR / VW);
                const int pos_step = WF_BO * WF_TS / VW;
                for (int i = 0; i < 4; ++i) {
                    to[4 * i * pos_step] = s[i][0];
                    to[(4 * i + 1) * pos_step] = s[i][0] + s[i][1];
                    to[(4 * i + 2) * pos_step] = s[i][0] - s[i][1];
                    to[(4 * i + 3) * pos_step] = -s[i][1];
                }
            }
        }
        for (int pos = 0; pos < 16; ++pos) FILTER_POSITION_GEMMS(WF_TS, WF_BO, pos, pos * pos_rows, a_panels)
    }
    // the sums into P (the host makes every range hold tiles)
    __local const float *acc = (__local const float *)acc_store;
    for (int pos = 0; pos < 16; ++pos)
        for (int c = 0; c < cb; ++c) {
            __global float *dst = P + (((size_t)z * 16 + pos) * C + c0 + c) * O + o0;
            for (int o = 0; o < ob; ++o) dst[o] = acc[(pos * pos_rows + c) * WF_BO + o];
        }
}
#endif
#undef WF_ROW_AT
#undef WF_COL_AT
#undef WF_AT
#undef WF_RUN
#undef WF_RUN4X2
#undef WF_LO
#undef WF_HI
#undef WF_RUNS
#undef WF_COL_IN
#undef WF_COL_OUT
#undef WF_ROW_IN
#undef WF_ROW_OUT

// dw (+)= G^T U G per (o, c), U winograd_filter's 16 sums summed over the z ranges and G's rows
// (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1) (the adjoint of winograd_weights'
// transform; the NumPy backend's winograd_taps). One work-item per (o, c), o fastest.
__kernel void winograd_filter_taps(const int C, const int O, const int Z, __global const float *restrict P,
                                   __global float *restrict dw, const int dw_off, const int acc)
{
    const int o = get_global_id(0), c = get_global_id(1);
    if (c >= C || o >= O) return;
    float u[16], t[4][3];
    for (int pos = 0; pos < 16; ++pos) {
        float s = 0.0f;
        for (int z = 0; z < Z; ++z) s += P[(((size_t)z * 16 + pos) * C + c) * O + o];
        u[pos] = s;
    }
    for (int i = 0; i < 4; ++i) {
        const float mid = 0.5f * (u[4 * i + 1] + u[4 * i + 2]);
        t[i][0] = u[4 * i] + mid;
        t[i][1] = 0.5f * (u[4 * i + 1] - u[4 * i + 2]);
        t[i][2] = mid + u[4 * i + 3];
    }
    __global float *d = dw + dw_off + ((size_t)o * C + c) * 9;
    for (int j = 0; j < 3; ++j) {
        const float mid = 0.5f * (t[1][j] + t[2][j]);
        const float k0 = t[0][j] + mid, k1 = 0.5f * (t[1][j] - t[2][j]), k2 = mid + t[3][j];
        d[j] = acc ? d[j] + k0 : k0;
        d[3 + j] = acc ? d[3 + j] + k1 : k1;
        d[6 + j] = acc ? d[6 + j] + k2 : k2;
    }
}

// The input gradient of a 3x3 stride-2 convolution as Winograd F(2x2, 2x2) on dx's phases: along
// each axis, dx pixels i = 4b .. 4b + 3 take dy's d0, d1, d2 from 2b + ((pad + 1) >> 1) - 1 on;
// the two pixels of the phase the taps 0 and 2 reach are F(2, 2) of (d0, d1, d2) with the taps
// (w2, w0): products P0 = (d0 - d1) w2, P1 = d1 (w0 + w2), P2 = (d2 - d1) w0, outputs P0 + P1,
// P1 + P2; the phase tap 1 reaches takes P3 = d1 w1, P4 = d2 w1 (d0 and d1 where pad is odd, that
// phase then first). 5 x 5 products per block of 4 x 4 pixels instead of 36 (s2_data_weights in
// conv.cl packs the 25 weight matrices). Work-group (p, r) takes NR consecutive blocks (p) and the
// tile_m input channels from row r * tile_m; per slice of S2DK output channels it transforms each
// block's 3x3 patch of dy into local panels V[25][S2DK][NR], runs the micro-kernel of each
// position on U ([25][M/MR][K][MR]) into local sums M[25][tile_m][NR], and finally transforms M's
// blocks into dx, set or added. M = C, K = O here.
// output channels per slice
#ifndef S2DK
#define S2DK 64
#endif
#if BUILD_S2_DATA
#define S2D_SEG (S2DK * NR)
#define S2D_V(pos) ((pos) * (S2D_SEG + 16))
#define S2D_MXI (S2_BM * NR + 16)
// along one axis of a patch: the five transformed values t0..t4 of a, b, c (odd: pad is odd)
#define S2D_IN(t, a, b, c, odd) { t[0] = (a) - (b); t[1] = (b); t[2] = (c) - (b); \
    t[3] = (odd) ? (a) : (b); t[4] = (odd) ? (b) : (c); }
// along one axis of the products: the four outputs o0..o3 of m0..m4
#define S2D_OUT(o, m0, m1, m2, m3, m4, odd) { \
    if (odd) { o[0] = (m3); o[1] = (m0) + (m1); o[2] = (m4); o[3] = (m1) + (m2); } \
    else { o[0] = (m0) + (m1); o[1] = (m3); o[2] = (m1) + (m2); o[3] = (m4); } }
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void s2_winograd_data(const int M, const int K, const int T, const int tile_m, const int bh, const int bw,
                      __global const float *restrict U, __global const float *restrict dy, const int dy_off,
                      const int Ho, const int Wo, const int ph, const int pw,
                      __global float *restrict dX, const int dx_off, const int H, const int W, const int acc)
{
    __local floatv v_store[25 * (S2D_SEG + 16) / VW];
    __local floatv m_store[25 * S2D_MXI / VW];
    __local float *vt = (__local float *)v_store;
    __local float *mt = (__local float *)m_store;
    const int t0 = get_group_id(0) * NR, row0 = get_group_id(1) * tile_m;
    const int a_panels = min(tile_m, M - row0 + MR - 1) / MR;
    const int panels = (M + MR - 1) / MR;
    const size_t plane = (size_t)Ho * Wo;
    const int odd_y = ph & 1, odd_x = pw & 1;
    // each block's image (-1: past the last block) and the dy row and column of its patch
    int img[NR], top[NR], left[NR];
    for (int j = 0; j < NR; ++j) {
        const int t = t0 + j;
        if (t >= T) { img[j] = -1; top[j] = left[j] = 0; continue; }
        const int n = t / (bh * bw), rest = t - n * bh * bw, a = rest / bw, b = rest - a * bw;
        img[j] = n;
        top[j] = 2 * a + ((ph + 1) >> 1) - 1;
        left[j] = 2 * b + ((pw + 1) >> 1) - 1;
    }
    // runs of 8 blocks along one row of blocks, at the same dy row, starting inside dy's columns
    // and with at most the last one's last column past them: their patches' rows are 17
    // consecutive values of dy (read as two float8 and one more, split into even and odd lanes;
    // their lanes were gathered one by one). The same runs inside dx store rows of 32 pixels.
    int run8[NR / 8], out8[NR / 8];
    for (int j0 = 0; j0 < NR; j0 += 8) {
        const int same = img[j0] >= 0 && img[j0 + 7] == img[j0] && top[j0 + 7] == top[j0];
        run8[j0 / 8] = same && left[j0] >= 0 && left[j0] + 16 <= Wo;
    }
    for (int k0 = 0; k0 < K; k0 += S2DK) {
        const int kc = min(S2DK, K - k0);
        for (int c = 0; c < kc; ++c) {
            for (int h0 = 0; h0 < NR; h0 += VW) {
                floatv zv[9];   // zv[r * 3 + q]: lane l holds value (r, q) of block h0 + l's patch
                float *zs = (float *)zv;
                int img4[VW / 4] = {0};   // lanes 4k .. 4k + 3 gathered as a run of 4
                for (int l0 = 0; l0 < VW; l0 += 8) {   // 8 blocks at a time: a vector's half on 16 lanes
                    const int j0 = h0 + l0;
                    if (run8[j0 / 8]) {
                        __global const float *s_ = dy + dy_off + ((size_t)img[j0] * K + k0 + c) * plane + left[j0];
                        const int last = left[j0] + 16 < Wo;
                        for (int r = 0; r < 3; ++r) {
                            const int h_ = top[j0] + r;
                            float8 z0 = (float8)(0.0f), z1 = z0, z2 = z0;
                            if (h_ >= 0 && h_ < Ho) {
                                const float8 u0 = LOAD8G(0, s_ + (size_t)h_ * Wo), u1 = LOAD8G(1, s_ + (size_t)h_ * Wo);
                                const float e16 = last ? s_[(size_t)h_ * Wo + 16] : 0.0f;
                                z0 = (float8)(u0.s0246, u1.s0246);
                                z1 = (float8)(u0.s1357, u1.s1357);
                                z2 = (float8)(u0.s246, u1.s0246, e16);
                            }
                            STORE_PATCH_ROW3(8, zs + l0, r, z0, z1, z2)
                        }
                        continue;
                    }
                    for (int l4 = l0; l4 < l0 + 8; l4 += 4) {
                        // runs of 4 blocks so, their patch rows 9 values of dy (one float8 and one
                        // more): rows of 4 blocks are the ResNet's 8x8 dy planes (its 32 -> 64
                        // layer), whose lanes all went one by one (docs/opencl.md, session 42)
                        const int j4 = h0 + l4;
                        if (!(img[j4] >= 0 && img[j4 + 3] == img[j4] && top[j4 + 3] == top[j4]
                              && left[j4 + 3] == left[j4] + 6 && left[j4] >= 0 && left[j4] + 8 <= Wo))
                            continue;
                        __global const float *s_ = dy + dy_off + ((size_t)img[j4] * K + k0 + c) * plane + left[j4];
                        const int last = left[j4] + 8 < Wo;
                        for (int r = 0; r < 3; ++r) {
                            const int h_ = top[j4] + r;
                            float4 z0 = (float4)(0.0f), z1 = z0, z2 = z0;
                            if (h_ >= 0 && h_ < Ho) {
                                const float8 u0 = LOAD8G(0, s_ + (size_t)h_ * Wo);
                                z0 = u0.s0246;
                                z1 = u0.s1357;
                                z2 = (float4)(u0.s246, last ? s_[(size_t)h_ * Wo + 8] : 0.0f);
                            }
                            STORE_PATCH_ROW3(4, zs + l4, r, z0, z1, z2)
                        }
                        img4[l4 / 4] = 1;
                    }
                    for (int l = l0; l < l0 + 8; ++l) {
                        if (img4[l / 4]) continue;
                        const int n = img[h0 + l], r0 = top[h0 + l], q0 = left[h0 + l];
                        __global const float *s_ = dy + dy_off + ((size_t)n * K + k0 + c) * plane;
                        if (n >= 0 && r0 >= 0 && q0 >= 0 && r0 + 3 <= Ho && q0 + 3 <= Wo) {   // inside dy
                            for (int r = 0; r < 3; ++r)
                                for (int q = 0; q < 3; ++q) zs[(r * 3 + q) * VW + l] = s_[(size_t)(r0 + r) * Wo + q0 + q];
                            continue;
                        }
                        for (int r = 0; r < 3; ++r)
                            for (int q = 0; q < 3; ++q) {
                                const int h_ = r0 + r, w_ = q0 + q;
                                zs[(r * 3 + q) * VW + l] = n >= 0 && h_ >= 0 && h_ < Ho && w_ >= 0 && w_ < Wo
                                                           ? s_[(size_t)h_ * Wo + w_] : 0.0f;
                            }
                    }
                }
                floatv e[5][3], t[5];
                for (int q = 0; q < 3; ++q) {
                    S2D_IN(t, zv[q], zv[3 + q], zv[6 + q], odd_y)
                    for (int a = 0; a < 5; ++a) e[a][q] = t[a];
                }
                __local floatv *dst = (__local floatv *)(vt + c * NR + h0);
                for (int a = 0; a < 5; ++a) {
                    S2D_IN(t, e[a][0], e[a][1], e[a][2], odd_x)
                    for (int b = 0; b < 5; ++b) dst[S2D_V(a * 5 + b) / VW] = t[b];
                }
            }
        }
        for (int pos = 0; pos < 25; ++pos) {
            for (int i = 0; i < a_panels; ++i) {
                __local floatv *ct = m_store + ((size_t)pos * S2D_MXI + i * MR * NR) / VW;
                ROWS(ACC_ROW)
                if (k0 == 0) { ROWS(ZERO_ROW) } else { ROWS(WLOAD_ROW) }
                __global const float *ap = U + ((size_t)(pos * panels + row0 / MR + i) * K + k0) * MR;
                __local const floatv *bp = v_store + S2D_V(pos) / VW;
                const int a_rs = 1;
                MICRO_K_LOOP(kc, MR)
                ROWS(WSTORE_ROW)
            }
        }
    }
    int out_at[NR];
    for (int j = 0; j < NR; ++j) {
        const int a = (t0 + j) % (bh * bw) / bw, b = (t0 + j) % bw;
        out_at[j] = 4 * a * W + 4 * b;
    }
    for (int j0 = 0; j0 < NR; j0 += 8)
        out8[j0 / 8] = img[j0] >= 0 && img[j0 + 7] == img[j0] && top[j0 + 7] == top[j0]
                       && out_at[j0] % W + 32 <= W && out_at[j0] / W + 4 <= H;
    const int rows = min(tile_m, M - row0);
    for (int m = 0; m < rows; ++m) {
        for (int j0 = 0; j0 < NR; j0 += 8) {
            __local const float *src = mt + m * NR + j0;
            float8 s[5][4], y[4][4], o[4];
            for (int a = 0; a < 5; ++a) {
                float8 v[5];
                for (int b = 0; b < 5; ++b) v[b] = LOAD8L(0, src + (a * 5 + b) * S2D_MXI);
                S2D_OUT(o, v[0], v[1], v[2], v[3], v[4], odd_x)
                for (int j = 0; j < 4; ++j) s[a][j] = o[j];
            }
            for (int j = 0; j < 4; ++j) {
                S2D_OUT(o, s[0][j], s[1][j], s[2][j], s[3][j], s[4][j], odd_y)
                for (int i = 0; i < 4; ++i) y[i][j] = o[i];
            }
            if (out8[j0 / 8]) {
                __global float *d = dX + dx_off + ((size_t)img[j0] * M + row0 + m) * H * W + out_at[j0];
                for (int i = 0; i < 4; ++i, d += W) {
#define S2D_MIX(a, b) (float8)(y[i][0].a, y[i][1].a, y[i][2].a, y[i][3].a, y[i][0].b, y[i][1].b, y[i][2].b, y[i][3].b)
                    float8 v0 = S2D_MIX(s0, s1), v1 = S2D_MIX(s2, s3), v2 = S2D_MIX(s4, s5), v3 = S2D_MIX(s6, s7);
#undef S2D_MIX
                    if (acc) { v0 += LOAD8G(0, d); v1 += LOAD8G(1, d); v2 += LOAD8G(2, d); v3 += LOAD8G(3, d); }
                    STORE8G(v0, 0, d); STORE8G(v1, 1, d); STORE8G(v2, 2, d); STORE8G(v3, 3, d);
                }
                continue;
            }
            const float *ys = (const float *)y;   // ys[(i * 4 + j) * 8 + l]: block j0 + l's pixel (i, j)
            for (int l = 0; l < 8; ++l) {
                const int jt = j0 + l;
                if (img[jt] < 0) continue;
                const int row = out_at[jt] / W, col = out_at[jt] % W;
                __global float *d = dX + dx_off + ((size_t)img[jt] * M + row0 + m) * H * W + out_at[jt];
                if (row + 4 <= H && col + 4 <= W) {
                    for (int i = 0; i < 4; ++i) {
                        float4 v = (float4)(ys[(i * 4) * 8 + l], ys[(i * 4 + 1) * 8 + l], ys[(i * 4 + 2) * 8 + l],
                                            ys[(i * 4 + 3) * 8 + l]);
                        if (acc) v += LOAD4G(0, d + i * W);
                        STORE4G(v, 0, d + i * W);
                    }
                    continue;
                }
                for (int i = 0; i < 4 && row + i < H; ++i)
                    for (int j = 0; j < 4 && col + j < W; ++j) {
                        const float v = ys[(i * 4 + j) * 8 + l];
                        d[i * W + j] = acc ? d[i * W + j] + v : v;
                    }
            }
        }
    }
}
#endif
