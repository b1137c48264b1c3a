// Convolution by im2col / col2im around the GEMM, direct convolution, and 2-D pooling. NCHW float32.
// col layout: (C * kh * kw, N * Ho * Wo), row (c, ki, kj), column (n, oh, ow).

#define STORE(o, i, v, acc) { if (acc) (o)[i] += (v); else (o)[i] = (v); }

// Output columns ow whose input column ow * s + off lies inside [0, size): [first, last).
inline int first_inside(const int off, const int s) { return off < 0 ? (-off + s - 1) / s : 0; }
inline int last_inside(const int off, const int s, const int size, const int outputs)
{
    return size - off <= 0 ? 0 : min(outputs, (size - off + s - 1) / s);
}

// Phase planes (pad_phases): a channel's zero-padded input laid out as sh x sw planes of Hq x Wq,
// phase (a, b) holding the padded rows a, a + sh, ... and columns b, b + sw, ..., so that a tap
// of a strided convolution reads consecutive inputs for consecutive outputs. The padded input's
// row r, column q lies PHASE_AT(r, q) floats after its channel's first phase, the sum of a row's
// and a column's part (PHASE_AT(r, 0) + PHASE_AT(0, q)). Stride 1: one phase, the zero-padded
// plane (pad_planes).
#define PHASE_AT(r, q) ((size_t)(((r) % sh) * sw + (q) % sw) * Hq * Wq + (size_t)((r) / sh) * Wq + (q) / sw)

// One work-item per (output row oh, col row (c, ki, kj), image n) copies a row of Wo values:
// the inner loop runs along contiguous memory, which CPU drivers vectorise (a loop inside a
// kernel keeps them from vectorising across work-items). Launched as (Ho rounded up, C*kh*kw, N).
__kernel void im2col(const int Ho, __global const float *x, const int x_off,
                     const int N, const int C, const int H, const int W, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *col, const int c_off)
{
    const int oh = get_global_id(0), row = get_global_id(1), n = get_global_id(2);
    if (oh >= Ho) return;
    const int kj = row % kw, ki = (row / kw) % kh, c = row / (kw * kh);
    const int h = oh * sh - ph + ki * dh;
    __global float *dst = col + c_off + (size_t)row * N * Ho * Wo + ((size_t)n * Ho + oh) * Wo;
    if (h < 0 || h >= H) {
        for (int ow = 0; ow < Wo; ++ow) dst[ow] = 0.0f;
        return;
    }
    __global const float *src = x + x_off + (((size_t)n * C + c) * H + h) * W + kj * dw - pw;
    // padding on the left, the columns inside the row, padding on the right: three plain loops
    const int lo = first_inside(kj * dw - pw, sw), hi = last_inside(kj * dw - pw, sw, W, Wo);
    for (int ow = 0; ow < min(lo, Wo); ++ow) dst[ow] = 0.0f;
    for (int ow = lo; ow < hi; ++ow) dst[ow] = src[ow * sw];
    for (int ow = max(lo, hi); ow < Wo; ++ow) dst[ow] = 0.0f;
}

// dx[n, c, h, :] (+)= every col entry that im2col read from that input row; one work-item per
// (h, n*C + c) owns its row, so there are no races. Launched as (H rounded up, N * C).
__kernel void col2im(const int H, __global const float *col, const int c_off,
                     const int N, const int C, const int W, const int Ho, const int Wo,
                     const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                     const int dh, const int dw, __global float *dx, const int x_off, const int acc)
{
    const int h = get_global_id(0), nc = get_global_id(1);
    if (h >= H) return;
    const int n = nc / C, c = nc - n * C;
    __global float *dst = dx + x_off + ((size_t)nc * H + h) * W;
    if (!acc) for (int w = 0; w < W; ++w) dst[w] = 0.0f;
    const size_t cols = (size_t)N * Ho * Wo;
    for (int ki = 0; ki < kh; ++ki) {
        int oh = h + ph - ki * dh;
        if (oh < 0 || oh % sh) continue;
        oh /= sh;
        if (oh >= Ho) continue;
        for (int kj = 0; kj < kw; ++kj) {
            const size_t row = (size_t)(c * kh + ki) * kw + kj;
            __global const float *src = col + c_off + row * cols + ((size_t)n * Ho + oh) * Wo;
            const int off = kj * dw - pw, hi = last_inside(off, sw, W, Wo);
            for (int ow = first_inside(off, sw); ow < hi; ++ow) dst[ow * sw + off] += src[ow];
        }
    }
}

// (A0, A1, S) -> (A1, A0, S); `acc` adds into the destination. Launched as (S rounded up, A1, A0).
__kernel void swap_batch_channels(const int S, __global const float *src, const int s_off,
                                  const int A0, const int A1,
                                  __global float *dst, const int d_off, const int acc)
{
    const int s = get_global_id(0), b = get_global_id(1), a = get_global_id(2);
    if (s >= S) return;
    STORE(dst, d_off + ((size_t)b * A0 + a) * S + s, src[s_off + ((size_t)a * A1 + b) * S + s], acc)
}

// Direct convolution for few channels per group (depthwise, LeNet's first layer): no column
// matrix and no GEMM whose inner dimension would be 9 or 25; groups as in torch. The input is
// first copied into zero-padded planes, so the loops read without bounds checks; each
// work-item keeps VEC consecutive outputs of a row in one vector register and adds one
// vector of taps after another (VEC: the device's preferred float vector width, 16 on
// AVX-512, 8 on AVX2). Loads are spelled out lane by lane, which the compiler turns into one
// vector load where the stride is 1 (vloadn is an out-of-line call in PoCL).
#ifndef VEC
#define VEC 16
#endif
#define VTYPE_(n) float##n
#define VTYPE(n) VTYPE_(n)
typedef VTYPE(VEC) floatv;
#if VEC == 16
#define LANES_AT(p, s) (floatv)((p)[0], (p)[s], (p)[2 * (s)], (p)[3 * (s)], (p)[4 * (s)], (p)[5 * (s)], \
    (p)[6 * (s)], (p)[7 * (s)], (p)[8 * (s)], (p)[9 * (s)], (p)[10 * (s)], (p)[11 * (s)], (p)[12 * (s)], \
    (p)[13 * (s)], (p)[14 * (s)], (p)[15 * (s)])
#elif VEC == 8
#define LANES_AT(p, s) (floatv)((p)[0], (p)[s], (p)[2 * (s)], (p)[3 * (s)], (p)[4 * (s)], (p)[5 * (s)], \
    (p)[6 * (s)], (p)[7 * (s)])
#else
#error "VEC must be 8 or 16"
#endif
// a vector type aligned like a float: one unaligned vector load or store (as vectors.cl's
// fixed widths)
typedef floatv floatv_u __attribute__((aligned(4)));
#define LOAD_UNIT(p) (*(__global const floatv_u *)(p))

// Zero-padded planes: dst[plane][r][q] = src[plane][r - top][q - left] inside src, else 0
// (a negative top/left crops). One work-item per plane, alone in its work-group, so the
// compiler vectorises its row copies along the row; a work-item per padded row (vectorised
// across rows) scattered every store a row apart and ran its partial work-groups masked (a
// depthwise layer's 8 MB input: several ms). Launched as (planes).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void pad_planes(const int Hp, __global const float *restrict src, const int s_off,
                const int H, const int W, const int Wp, const int top, const int left,
                __global float *restrict dst)
{
    const int plane = get_global_id(0);
    const int lo = min(max(left, 0), Wp), hi = max(lo, min(Wp, W + left));
    for (int r = 0; r < Hp; ++r) {
        __global float *row = dst + ((size_t)plane * Hp + r) * Wp;
        const int h = r - top;
        if (h < 0 || h >= H) {
            for (int q = 0; q < Wp; ++q) row[q] = 0.0f;
            continue;
        }
        __global const float *from = src + s_off + ((size_t)plane * H + h) * W - left;
        for (int q = 0; q < lo; ++q) row[q] = 0.0f;
        for (int q = lo; q < hi; ++q) row[q] = from[q];
        for (int q = hi; q < Wp; ++q) row[q] = 0.0f;
    }
}

// one vector of outputs (columns from col) into the row at yr (added to it when acc), lanes
// past Wo left alone, nothing when the vector lies wholly past Wo; conv2d's epilogue (EPI_*
// bits of epi: + the residual at the same place of res, then the ReLU) on the final sums
#define DIRECT_STORE(s, yr, col) if ((col) < Wo) { \
    if (acc) s += Wo - (col) >= VEC ? *(__global floatv_u *)(yr) : tail_of(yr, Wo - (col)); \
    if (epi) s = conv_epilogue(s, res + r_off + ((yr) - (y + y_off)), Wo - (col), epi); \
    if (Wo - (col) >= VEC) *(__global floatv_u *)(yr) = s; else store_tail(yr, s, Wo - (col)); }

// OUTS (1, 4, 6 or 8; 8 only with U = 2) output planes times U (1, 2 or 4) consecutive vectors
// of a row at once: each loaded input vector feeds OUTS accumulators, and the OUTS * U
// accumulators are independent chains of FMAs (one chain per vector waits out the FMA's latency
// at every tap)
#define DIRECT_FMA(acc_, v_, u, OUTS) { \
    const floatv v = (v_); \
    acc_##u##0 += v * w0; \
    if (OUTS >= 4) { acc_##u##1 += v * w1; acc_##u##2 += v * w2; acc_##u##3 += v * w3; } \
    if (OUTS >= 6) { acc_##u##4 += v * w4; acc_##u##5 += v * w5; } \
    if (OUTS == 8) { acc_##u##6 += v * w6; acc_##u##7 += v * w7; } }
#define DIRECT_STORES(u, OUTS) { \
    __global float *yu = yr + u * VEC; \
    DIRECT_STORE(s##u##0, yu, ow0 + u * VEC) \
    if (OUTS >= 4) { \
        DIRECT_STORE(s##u##1, yu + (size_t)Ho * Wo, ow0 + u * VEC) \
        DIRECT_STORE(s##u##2, yu + (size_t)2 * Ho * Wo, ow0 + u * VEC) \
        DIRECT_STORE(s##u##3, yu + (size_t)3 * Ho * Wo, ow0 + u * VEC) \
    } \
    if (OUTS >= 6) { \
        DIRECT_STORE(s##u##4, yu + (size_t)4 * Ho * Wo, ow0 + u * VEC) \
        DIRECT_STORE(s##u##5, yu + (size_t)5 * Ho * Wo, ow0 + u * VEC) \
    } \
    if (OUTS == 8) { \
        DIRECT_STORE(s##u##6, yu + (size_t)6 * Ho * Wo, ow0 + u * VEC) \
        DIRECT_STORE(s##u##7, yu + (size_t)7 * Ho * Wo, ow0 + u * VEC) \
    } }
// the sums of vector u of the OUTS outputs, from their biases (all declared so that every
// expansion compiles; the unused ones are dropped)
#define DIRECT_SUMS(u) floatv s##u##0 = (floatv)(b0), s##u##1 = (floatv)(b1), s##u##2 = (floatv)(b2), \
    s##u##3 = (floatv)(b3), s##u##4 = (floatv)(b4), s##u##5 = (floatv)(b5), s##u##6 = (floatv)(b6), \
    s##u##7 = (floatv)(b7);
// The direct kernels' input layouts (L below: the prefix of a family of macros): PLAIN, the
// zero-padded planes of Hp x Wp, a strided kernel's outputs reading every sw-th input (LOAD
// gathers them); PHASE, the phase planes (PHASE_AT; Hp x Wp each phase), consecutive outputs
// reading consecutive inputs, with each kernel row's and column's offset from the work-item's
// tables prow and pcol (no division in the loops). L##_PLANE: a channel's floats;
// L##_OUT(oh, ow): where output (oh, ow)'s first tap reads; L##_ROW(ki), L##_COL(kj): a tap's
// offset from there; L##_CS: the step per output along a row; L##_RS: per output row;
// L##_SHARED: whether row oh + 1's kernel row ki reads row oh's ki + 1 (DIRECT_ROW_PAIRS).
#define PLAIN_PLANE ((size_t)Hp * Wp)
#define PLAIN_OUT(oh, ow) ((size_t)(oh) * sh * Wp + (size_t)(ow) * sw)
#define PLAIN_ROW(ki) ((size_t)(ki) * dh * Wp)
#define PLAIN_COL(kj) ((kj) * dw)
#define PLAIN_CS sw
#define PLAIN_RS ((size_t)sh * Wp)
#define PLAIN_SHARED (sh == dh)
#define PHASE_PLANE ((size_t)sh * sw * Hp * Wp)
#define PHASE_OUT(oh, ow) ((size_t)(oh) * Wp + (ow))
#define PHASE_ROW(ki) prow[ki]
#define PHASE_COL(kj) pcol[kj]
#define PHASE_CS 1
#define PHASE_RS ((size_t)Wp)
#define PHASE_SHARED 0
// the largest kernel side the PHASE layout's offset tables take (spatial.py's
// DIRECT_PHASE_MAX_KERNEL)
#define DIRECT_PHASE_MAX_KERNEL 16
#define DIRECT_PHASE_TABLES \
    size_t prow[DIRECT_PHASE_MAX_KERNEL], pcol[DIRECT_PHASE_MAX_KERNEL]; \
    { const int Hq = Hp, Wq = Wp; \
      for (int i = 0; i < min(kh, DIRECT_PHASE_MAX_KERNEL); ++i) prow[i] = PHASE_AT(i * dh, 0); \
      for (int j = 0; j < min(kw, DIRECT_PHASE_MAX_KERNEL); ++j) pcol[j] = PHASE_AT(0, j * dw); }
// Opens the loops over a work-item's taps (input channel ci, kernel row ki, column kj) with
// xv at the tap's first input of the block (XC: the block's offset in a channel plane), wr at
// the kernel row's weights and t at the column's; DIRECT_TAPS_END closes them. Shared by the
// row-block and the flat-block kernels so both walk the taps in the same order.
#define DIRECT_TAPS_BEGIN(L, XAS, K, XC) \
    for (int ci = 0; ci < cg; ++ci) { \
        XAS const float *xc = x0 + (size_t)ci * L##_PLANE + (XC); \
        __global const float *wp = w0p + ci * w_ci; \
        for (int ki = 0; ki < (K ? K : kh); ++ki) { \
            XAS const float *xr = xc + L##_ROW(ki); \
            __global const float *wr = wp + ki * kw * wstep; \
            for (int kj = 0; kj < (K ? K : kw); ++kj) { \
                const int t = kj * wstep; \
                XAS const float *xv = xr + L##_COL(kj);
#define DIRECT_TAPS_END } } }
#define DIRECT_ROWS(L, XAS, LOAD, OUTS, U, K) \
    for (int oh = 0; oh < Ho; ++oh) { \
        for (int ow0 = 0; ow0 < Wo; ow0 += U * VEC) { \
            DIRECT_SUMS(0) DIRECT_SUMS(1) DIRECT_SUMS(2) DIRECT_SUMS(3) \
            DIRECT_TAPS_BEGIN(L, XAS, K, L##_OUT(oh, ow0)) \
                const float w0 = wr[t]; \
                const float w1 = OUTS >= 4 ? wr[w_o + t] : 0.0f, w2 = OUTS >= 4 ? wr[2 * w_o + t] : 0.0f, \
                            w3 = OUTS >= 4 ? wr[3 * w_o + t] : 0.0f, w4 = OUTS >= 6 ? wr[4 * w_o + t] : 0.0f, \
                            w5 = OUTS >= 6 ? wr[5 * w_o + t] : 0.0f, w6 = OUTS == 8 ? wr[6 * w_o + t] : 0.0f, \
                            w7 = OUTS == 8 ? wr[7 * w_o + t] : 0.0f; \
                DIRECT_FMA(s, LOAD(xv), 0, OUTS) \
                if (U >= 2) DIRECT_FMA(s, LOAD(xv + VEC * L##_CS), 1, OUTS) \
                if (U == 4) { DIRECT_FMA(s, LOAD(xv + 2 * VEC * L##_CS), 2, OUTS) DIRECT_FMA(s, LOAD(xv + 3 * VEC * L##_CS), 3, OUTS) } \
            DIRECT_TAPS_END \
            __global float *yr = yp + (size_t)oh * Wo + ow0; \
            DIRECT_STORES(0, OUTS) \
            if (U >= 2) DIRECT_STORES(1, OUTS) \
            if (U == 4) { DIRECT_STORES(2, OUTS) DIRECT_STORES(3, OUTS) } \
        } \
    }

// One output plane (OUTS 1: depthwise layers, the input gradient's too) two rows at a time: U
// vectors of each row, 2 x U independent chains of FMAs (with one row, U = 4's four chains
// waited out the FMA's latency at every tap). Where the stride equals the dilation, row oh + 1's
// kernel row ki reads row oh's ki + 1: each input vector is loaded once for both (K + 1 rows of
// loads, not 2 K). The sums run the same taps in the same order as DIRECT_ROWS (the same bits).
// A plane's odd last row is computed with its twin reading the same input, and stored once.
#define DIRECT_PAIR_FMA(L, LOAD, u) { \
    s##u##0 += LOAD(xv + u * VEC * L##_CS) * w0; q##u += LOAD(xv + pair + u * VEC * L##_CS) * w0; }
#define DIRECT_SHARED_FMA(LOAD, u, A, B) { \
    const floatv v = LOAD(xv + u * VEC * sw); \
    if (A) s##u##0 += v * wa; \
    if (B) q##u += v * wb; }
// input row i's taps: kernel row i of the pair's first row where A, i - 1 of its second where B
// (the first and last input rows feed one of the two). One loop over the rows: peeling its
// first and last rows out slowed the bench's depthwise forward on LLVM 14 (PyPI's PoCL 3.0),
// while only LLVM 15 on AVX2 gained from it (docs/opencl.md, session 49)
#define DIRECT_SHARED_ROW(XAS, LOAD, U, i, A, B) { \
    XAS const float *xr = xc + (size_t)(i) * dh * Wp; \
    __global const float *wra = wp + (i) * kw * wstep, *wrb = wra - kw * wstep; \
    for (int kj = 0; kj < kc; ++kj) { \
        const int t = kj * wstep; \
        XAS const float *xv = xr + kj * dw; \
        const float wa = A ? wra[t] : 0.0f, wb = B ? wrb[t] : 0.0f; \
        DIRECT_SHARED_FMA(LOAD, 0, A, B) \
        if (U >= 2) DIRECT_SHARED_FMA(LOAD, 1, A, B) \
        if (U == 4) { DIRECT_SHARED_FMA(LOAD, 2, A, B) DIRECT_SHARED_FMA(LOAD, 3, A, B) } \
    } }
#define DIRECT_ROW_PAIRS(L, XAS, LOAD, U, K) \
    for (int oh = 0; oh < Ho; oh += 2) { \
        const size_t pair = oh + 1 < Ho ? L##_RS : 0; \
        for (int ow0 = 0; ow0 < Wo; ow0 += U * VEC) { \
            DIRECT_SUMS(0) DIRECT_SUMS(1) DIRECT_SUMS(2) DIRECT_SUMS(3) \
            floatv q0 = (floatv)(b0), q1 = (floatv)(b0), q2 = (floatv)(b0), q3 = (floatv)(b0); \
            if (pair && L##_SHARED) {   /* PLAIN only */ \
                const int kk = K ? K : kh, kc = K ? K : kw; \
                for (int ci = 0; ci < cg; ++ci) { \
                    XAS const float *xc = x0 + (size_t)ci * PLAIN_PLANE + PLAIN_OUT(oh, ow0); \
                    __global const float *wp = w0p + ci * w_ci; \
                    for (int i = 0; i <= kk; ++i) DIRECT_SHARED_ROW(XAS, LOAD, U, i, i < kk, i > 0) \
                } \
            } else { \
                DIRECT_TAPS_BEGIN(L, XAS, K, L##_OUT(oh, ow0)) \
                    const float w0 = wr[t]; \
                    DIRECT_PAIR_FMA(L, LOAD, 0) \
                    if (U >= 2) DIRECT_PAIR_FMA(L, LOAD, 1) \
                    if (U == 4) { DIRECT_PAIR_FMA(L, LOAD, 2) DIRECT_PAIR_FMA(L, LOAD, 3) } \
                DIRECT_TAPS_END \
            } \
            __global float *yr = yp + (size_t)oh * Wo + ow0; \
            DIRECT_STORES(0, 1) \
            if (U >= 2) DIRECT_STORES(1, 1) \
            if (U == 4) { DIRECT_STORES(2, 1) DIRECT_STORES(3, 1) } \
            if (pair) { \
                __global float *yq = yr + Wo; \
                DIRECT_STORE(q0, yq, ow0) \
                if (U >= 2) DIRECT_STORE(q1, yq + VEC, ow0 + VEC) \
                if (U == 4) { DIRECT_STORE(q2, yq + 2 * VEC, ow0 + 2 * VEC) DIRECT_STORE(q3, yq + 3 * VEC, ow0 + 3 * VEC) } \
            } \
        } \
    }
// a direct kernel's loops: DIRECT_FLAT's blocks (U = 3), row pairs (R = 2, OUTS 1) or rows
#define DIRECT_BODY(L, XAS, LOAD, OUTS, U, K, R) \
    if (U == 3) { DIRECT_FLAT(L, XAS, LOAD, OUTS, K) } \
    else if (R == 2) { DIRECT_ROW_PAIRS(L, XAS, LOAD, U, K) } \
    else { DIRECT_ROWS(L, XAS, LOAD, OUTS, U, K) }

// The same with OUTS output planes times 3 vectors taken from the plane's vectors in row-major
// order (a block may span rows): 12 independent accumulators with 4 outputs, where 8 (U = 2)
// still waited on the FMA's latency, with no row length that 3 must divide. Vectors past the
// plane's last repeat it (their loads stay inside the planes; their sums are not stored).
#define DIRECT_FLAT_POS(L, u) \
    const int vi##u = min(v0 + u, vectors - 1), r##u = vi##u / per_row, c##u = (vi##u - r##u * per_row) * VEC; \
    const size_t xo##u = L##_OUT(r##u, c##u);
#define DIRECT_FLAT_STORE(u, OUTS) if (v0 + u < vectors) { \
    __global float *yu = yp + (size_t)r##u * Wo + c##u; \
    DIRECT_STORE(s##u##0, yu, c##u) \
    if (OUTS >= 4) { \
        DIRECT_STORE(s##u##1, yu + (size_t)Ho * Wo, c##u) \
        DIRECT_STORE(s##u##2, yu + (size_t)2 * Ho * Wo, c##u) \
        DIRECT_STORE(s##u##3, yu + (size_t)3 * Ho * Wo, c##u) \
    } \
    if (OUTS == 6) { \
        DIRECT_STORE(s##u##4, yu + (size_t)4 * Ho * Wo, c##u) \
        DIRECT_STORE(s##u##5, yu + (size_t)5 * Ho * Wo, c##u) \
    } }
// one output's tap times the three loaded input vectors: three live vectors, one broadcast
// weight and the 12 sums fill AVX2's 16 registers (all weights first would spill)
#define DIRECT_FLAT_FMA(r, at) { const floatv wv = (floatv)(wr[(at) + t]); \
    s0##r += x0v * wv; s1##r += x1v * wv; s2##r += x2v * wv; }
#define DIRECT_FLAT(L, XAS, LOAD, OUTS, K) \
    const int per_row = (Wo + VEC - 1) / VEC, vectors = Ho * per_row; \
    for (int v0 = 0; v0 < vectors; v0 += 3) { \
        DIRECT_FLAT_POS(L, 0) DIRECT_FLAT_POS(L, 1) DIRECT_FLAT_POS(L, 2) \
        DIRECT_SUMS(0) DIRECT_SUMS(1) DIRECT_SUMS(2) \
        DIRECT_TAPS_BEGIN(L, XAS, K, 0) \
            const floatv x0v = LOAD(xv + xo0), x1v = LOAD(xv + xo1), x2v = LOAD(xv + xo2); \
            DIRECT_FLAT_FMA(0, 0) \
            if (OUTS >= 4) { DIRECT_FLAT_FMA(1, w_o) DIRECT_FLAT_FMA(2, 2 * w_o) DIRECT_FLAT_FMA(3, 3 * w_o) } \
            if (OUTS == 6) { DIRECT_FLAT_FMA(4, 4 * w_o) DIRECT_FLAT_FMA(5, 5 * w_o) } \
        DIRECT_TAPS_END \
        DIRECT_FLAT_STORE(0, OUTS) DIRECT_FLAT_STORE(1, OUTS) DIRECT_FLAT_STORE(2, OUTS) \
    }

// the first `live` (< VEC) lanes of a row end
inline floatv tail_of(__global const float *p, const int live)
{
    floatv v = (floatv)(0.0f);
    for (int j = 0; j < live; ++j) v[j] = p[j];
    return v;
}

inline void store_tail(__global float *p, const floatv v, const int live)
{
    for (int j = 0; j < live; ++j) p[j] = v[j];
}

// conv2d's epilogue after its bias (and the inference batch norm folded into the weights and
// bias, conv_fold_norm): + the residual r (EPI_RESIDUAL), then max(., 0) with NaN kept (EPI_RELU)
#define EPI_RESIDUAL 1
#define EPI_RELU 2
inline floatv conv_epilogue(floatv s, __global const float *r, const int live, const int epi)
{
    if (epi & EPI_RESIDUAL) s += live >= VEC ? LOAD_UNIT(r) : tail_of(r, live);
    if (epi & EPI_RELU) s = s < (floatv)(0.0f) ? (floatv)(0.0f) : s;   /* not select: a call in PoCL 3.0 */
    return s;
}

// y[n, o .. o + OUTS) (+)= sum over the group's channels and taps of the padded input xp
// (planes of Hp x Wp). flip: the weights are those of the convolution this one is the input
// gradient of (w[o', c', kh-1-ki, kw-1-kj], the groups' channel roles swapped). One work-item
// per OUTS output planes, one per work-group: a kernel whose work-items hold vectors is not
// vectorised again across work-items. Launched as (N * O / OUTS); OUTS divides the outputs
// per group.
#define DIRECT_SETUP(OUTS) \
    const int n = first / O, o = first - n * O, g = o / og, ol = o - g * og; \
    const int taps = kh * kw, wstep = flip ? -1 : 1; \
    /* flipped: output channel o is input channel g*og+ol of the original, input channel ci */ \
    /* the original's output g*cg+ci */ \
    __global const float *w0p = w + w_off + (flip ? ((size_t)(g * cg) * og + ol) * taps + taps - 1 \
                                                  : (size_t)o * cg * taps); \
    const size_t w_ci = flip ? (size_t)og * taps : (size_t)taps; \
    const size_t w_o = flip ? (size_t)taps : (size_t)cg * taps;   /* next output's weights */ \
    __global float *yp = y + y_off + (size_t)first * Ho * Wo; \
    /* the sums start from the bias (conv2d's epilogue, folded in: no pass over the output) */ \
    const float b0 = has_bias ? bias[b_off + o] : 0.0f, \
                b1 = has_bias && OUTS >= 4 ? bias[b_off + o + 1] : 0.0f, b2 = has_bias && OUTS >= 4 ? bias[b_off + o + 2] : 0.0f, \
                b3 = has_bias && OUTS >= 4 ? bias[b_off + o + 3] : 0.0f, b4 = has_bias && OUTS >= 6 ? bias[b_off + o + 4] : 0.0f, \
                b5 = has_bias && OUTS >= 6 ? bias[b_off + o + 5] : 0.0f, b6 = has_bias && OUTS == 8 ? bias[b_off + o + 6] : 0.0f, \
                b7 = has_bias && OUTS == 8 ? bias[b_off + o + 7] : 0.0f;
#define DIRECT_KERNEL_R(name, OUTS, U, K, R) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void name(__global const float *restrict xp, __global const float *restrict w, const int w_off, \
          __global float *restrict y, const int y_off, \
          const int C, const int Hp, const int Wp, const int O, const int Ho, const int Wo, \
          const int cg, const int og, const int kh, const int kw, \
          const int sh, const int sw, const int dh, const int dw, const int flip, const int acc, \
          __global const float *restrict bias, const int b_off, const int has_bias, \
          __global const float *restrict res, const int r_off, const int epi) \
{ \
    const int first = get_global_id(0) * OUTS; \
    DIRECT_SETUP(OUTS) \
    __global const float *x0 = xp + (size_t)(n * C + g * cg) * Hp * Wp; \
    /* the loops are written out twice so that the common stride 1 loads whole vectors */ \
    if (sw == 1) { \
        DIRECT_BODY(PLAIN, __global, LOAD_UNIT, OUTS, U, K, R) \
    } else { \
        DIRECT_BODY(PLAIN, __global, LOAD_STRIDED, OUTS, U, K, R) \
    } \
}

// The same from the unpadded input x: each work-item computes `per` runs of OUTS consecutive
// output planes (launched as (N * O / (OUTS * per))), copying each group's cg input planes into
// zero-padded (Hp, Wp) planes in local memory (strided: into phase planes of Hp x Wp each,
// PHASE_AT, so that every load is a whole vector; xl: cg planes or phase planes and room for
// the loads past a row's end) as it reaches the group: once for all its runs where OUTS * per
// divides the outputs per group, once per run where a group is one run (depthwise: several
// groups a work-item, spatial.py's DIRECT_LOCAL_GROUP_RUNS). The padded planes never go through global
// memory (pad_planes wrote and the kernel above read a padded copy of the whole input: a third
// of a depthwise layer's forward pass).
// the copy prefetches the input LOCAL_COPY_AHEAD floats on (two 32x32 planes: the next
// work-items' planes, a page or more away, where the hardware prefetchers stop; a prefetch past
// the input's end does not fault), measured in docs/opencl.md, session 46
#ifndef LOCAL_COPY_AHEAD
#define LOCAL_COPY_AHEAD 2048
#endif
#define LOCAL_LOAD_UNIT(p) (*(__local const floatv_u *)(p))
// One channel's phase planes (PHASE_AT; sh x sw planes of Hq x Wq at dst) from its unpadded
// H x W plane src padded by `top` rows and `left` columns: phase (a, b)'s row r, column q holds
// src[r sh + a - top][q sw + b - left] inside the plane, else 0. Stride 2 along rows copies both
// column phases of an input row in one pass over it (a vector of input pairs a step; each phase
// on its own read every other input: gathers). Built for global and local destinations.
#define PHASE_PLANES_FN(name, AS) \
inline void name(AS float *restrict dst, __global const float *restrict src, const int H, const int W, \
                 const int sh, const int sw, const int top, const int left, const int Hq, const int Wq) \
{ \
    const size_t phase = (size_t)Hq * Wq; \
    /* stride 2 along rows: the columns [lo, hi) both phases read inside the row, those */ \
    /* [lo0, hi0) and [lo1, hi1) each does (ternaries: min and max are calls in PoCL 3.0) */ \
    const int f0 = left > 0 ? (left + 1) / 2 : 0, f1 = left > 1 ? left / 2 : 0; \
    const int lo0 = f0 < Wq ? f0 : Wq, lo1 = f1 < Wq ? f1 : Wq; \
    const int e0 = W + left <= 0 ? 0 : (W + left + 1) / 2, e1 = W + left - 1 <= 0 ? 0 : (W + left) / 2; \
    const int hi0 = e0 < lo0 ? lo0 : e0 < Wq ? e0 : Wq, hi1 = e1 < lo1 ? lo1 : e1 < Wq ? e1 : Wq; \
    const int lo = lo0 > lo1 ? lo0 : lo1, hi = hi0 < hi1 ? (hi0 < lo ? lo : hi0) : (hi1 < lo ? lo : hi1); \
    for (int a = 0; a < sh; ++a) \
        for (int r = 0; r < Hq; ++r) { \
            AS float *to = dst + (size_t)a * sw * phase + (size_t)r * Wq; \
            const int h = r * sh + a - top; \
            if (h < 0 || h >= H) { \
                for (int b = 0; b < sw; ++b) \
                    for (int q = 0; q < Wq; ++q) to[b * phase + q] = 0.0f; \
                continue; \
            } \
            __global const float *row = src + (size_t)h * W; \
            PREFETCH_SPAN(PREFETCH_READ, row + LOCAL_COPY_AHEAD, W) \
            if (sw == 2) { \
                AS float *t1 = to + phase; \
                __global const float *from = row - left; \
                for (int q = 0; q < lo; ++q) { \
                    to[q] = q >= lo0 && q < hi0 ? from[2 * q] : 0.0f; \
                    t1[q] = q >= lo1 && q < hi1 ? from[2 * q + 1] : 0.0f; \
                } \
                /* even and odd lanes of two vectors (shuffles), the last step overlapping the one */ \
                /* before it (short rows: a scalar tail of up to VEC - 1 took half the time) */ \
                if (hi - lo >= VEC) \
                    for (int q0 = lo; q0 < hi; q0 += VEC) { \
                        const int q = q0 + VEC <= hi ? q0 : hi - VEC; \
                        const floatv u = LOAD_UNIT(from + 2 * q), v = LOAD_UNIT(from + 2 * q + VEC); \
                        *(AS floatv_u *)(to + q) = (floatv)(u.even, v.even); \
                        *(AS floatv_u *)(t1 + q) = (floatv)(u.odd, v.odd); \
                    } \
                else \
                    for (int q = lo; q < hi; ++q) { to[q] = from[2 * q]; t1[q] = from[2 * q + 1]; } \
                for (int q = hi; q < Wq; ++q) { \
                    to[q] = q >= lo0 && q < hi0 ? from[2 * q] : 0.0f; \
                    t1[q] = q >= lo1 && q < hi1 ? from[2 * q + 1] : 0.0f; \
                } \
                continue; \
            } \
            for (int b = 0; b < sw; ++b) { \
                AS float *tb = to + b * phase; \
                const int off = b - left; \
                const int l = min(first_inside(off, sw), Wq), e = max(l, last_inside(off, sw, W, Wq)); \
                for (int q = 0; q < l; ++q) tb[q] = 0.0f; \
                if (sw == 1) /* stride 1 along rows (the padded plane): a vectorised copy */ \
                    for (int q = l; q < e; ++q) tb[q] = row[q + off]; \
                else \
                    for (int q = l; q < e; ++q) tb[q] = row[q * sw + off]; \
                for (int q = e; q < Wq; ++q) tb[q] = 0.0f; \
            } \
        } \
}
PHASE_PLANES_FN(phase_planes_global, __global)
PHASE_PLANES_FN(phase_planes_local, __local)
#define DIRECT_KERNEL_LOCAL_R(name, OUTS, U, K, R) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void name(__global const float *restrict x, const int x_off, const int H, const int W, \
          const int top, const int left, __local float *restrict xl, const int per, \
          __global const float *restrict w, const int w_off, \
          __global float *restrict y, const int y_off, \
          const int C, const int Hp, const int Wp, const int O, const int Ho, const int Wo, \
          const int cg, const int og, const int kh, const int kw, \
          const int sh, const int sw, const int dh, const int dw, const int flip, const int acc, \
          __global const float *restrict bias, const int b_off, const int has_bias, \
          __global const float *restrict res, const int r_off, const int epi) \
{ \
    const int first0 = get_global_id(0) * OUTS * per, plain = sh == 1 && sw == 1; \
    DIRECT_PHASE_TABLES \
    for (int run = 0; run < per; ++run) { \
        const int first = first0 + run * OUTS; \
        DIRECT_SETUP(OUTS) \
        if ((run == 0 || ol == 0) && !plain) { /* a group's planes, copied once for its runs */ \
            for (int ci = 0; ci < cg; ++ci) \
                phase_planes_local(xl + ci * PHASE_PLANE, x + x_off + (size_t)(n * C + g * cg + ci) * H * W, \
                                   H, W, sh, sw, top, left, Hp, Wp); \
        } else if (run == 0 || ol == 0) { \
            const int lo = min(max(left, 0), Wp), hi = max(lo, min(Wp, W + left)); \
            for (int ci = 0; ci < cg; ++ci) { \
                __global const float *src = x + x_off + (size_t)(n * C + g * cg + ci) * H * W; \
                for (int r = 0; r < Hp; ++r) { \
                    __local float *row = xl + ((size_t)ci * Hp + r) * Wp; \
                    const int h = r - top; \
                    if (h < 0 || h >= H) { \
                        for (int q = 0; q < Wp; ++q) row[q] = 0.0f; \
                        continue; \
                    } \
                    __global const float *from = src + (size_t)h * W - left; \
                    PREFETCH_SPAN(PREFETCH_READ, src + (size_t)h * W + LOCAL_COPY_AHEAD, W) \
                    for (int q = 0; q < lo; ++q) row[q] = 0.0f; \
                    for (int q = lo; q < hi; ++q) row[q] = from[q]; \
                    for (int q = hi; q < Wp; ++q) row[q] = 0.0f; \
                } \
            } \
        } \
        __local const float *x0 = xl; \
        if (plain) { \
            DIRECT_BODY(PLAIN, __local, LOCAL_LOAD_UNIT, OUTS, U, K, R) \
        } else { \
            DIRECT_BODY(PHASE, __local, LOCAL_LOAD_UNIT, OUTS, U, K, R) \
        } \
    } \
}

#define LOAD_STRIDED(p) LANES_AT(p, sw)
#define DIRECT_KERNEL(name, OUTS, U, K) DIRECT_KERNEL_R(name, OUTS, U, K, 1)
#define DIRECT_KERNEL_LOCAL(name, OUTS, U, K) DIRECT_KERNEL_LOCAL_R(name, OUTS, U, K, 1)
DIRECT_KERNEL_R(conv_direct_fwd_r2, 1, 1, 0, 2)
DIRECT_KERNEL_R(conv_direct_fwd_r2_k3, 1, 1, 3, 2)
DIRECT_KERNEL_R(conv_direct_fwd_r2_k5, 1, 1, 5, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u2_r2, 1, 2, 0, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u2_r2_k3, 1, 2, 3, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u2_r2_k5, 1, 2, 5, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u4_r2, 1, 4, 0, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u4_r2_k3, 1, 4, 3, 2)
DIRECT_KERNEL_R(conv_direct_fwd_u4_r2_k5, 1, 4, 5, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_r2, 1, 1, 0, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_r2_k3, 1, 1, 3, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_r2_k5, 1, 1, 5, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u2_r2, 1, 2, 0, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u2_r2_k3, 1, 2, 3, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u2_r2_k5, 1, 2, 5, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u4_r2, 1, 4, 0, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u4_r2_k3, 1, 4, 3, 2)
DIRECT_KERNEL_LOCAL_R(conv_direct_fwd_local_u4_r2_k5, 1, 4, 5, 2)
DIRECT_KERNEL(conv_direct_fwd, 1, 1, 0)
DIRECT_KERNEL(conv_direct_fwd_u2, 1, 2, 0)
DIRECT_KERNEL(conv_direct_fwd_u4, 1, 4, 0)
DIRECT_KERNEL(conv_direct_fwd4, 4, 1, 0)
DIRECT_KERNEL(conv_direct_fwd4_u2, 4, 2, 0)
DIRECT_KERNEL(conv_direct_fwd6, 6, 1, 0)
DIRECT_KERNEL(conv_direct_fwd6_u2, 6, 2, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local, 1, 1, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u2, 1, 2, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u4, 1, 4, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local, 4, 1, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_u2, 4, 2, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local, 6, 1, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local_u2, 6, 2, 0)
DIRECT_KERNEL(conv_direct_fwd4_f3, 4, 3, 0)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_f3, 4, 3, 0)
DIRECT_KERNEL(conv_direct_fwd_k3, 1, 1, 3)
DIRECT_KERNEL(conv_direct_fwd_k5, 1, 1, 5)
DIRECT_KERNEL(conv_direct_fwd_u2_k3, 1, 2, 3)
DIRECT_KERNEL(conv_direct_fwd_u2_k5, 1, 2, 5)
DIRECT_KERNEL(conv_direct_fwd_u4_k3, 1, 4, 3)
DIRECT_KERNEL(conv_direct_fwd_u4_k5, 1, 4, 5)
DIRECT_KERNEL(conv_direct_fwd4_k3, 4, 1, 3)
DIRECT_KERNEL(conv_direct_fwd4_k5, 4, 1, 5)
DIRECT_KERNEL(conv_direct_fwd4_u2_k3, 4, 2, 3)
DIRECT_KERNEL(conv_direct_fwd4_u2_k5, 4, 2, 5)
DIRECT_KERNEL(conv_direct_fwd6_k3, 6, 1, 3)
DIRECT_KERNEL(conv_direct_fwd6_k5, 6, 1, 5)
DIRECT_KERNEL(conv_direct_fwd6_u2_k3, 6, 2, 3)
DIRECT_KERNEL(conv_direct_fwd6_u2_k5, 6, 2, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_k3, 1, 1, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_k5, 1, 1, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u2_k3, 1, 2, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u2_k5, 1, 2, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u4_k3, 1, 4, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd_local_u4_k5, 1, 4, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_k3, 4, 1, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_k5, 4, 1, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_u2_k3, 4, 2, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_u2_k5, 4, 2, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local_k3, 6, 1, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local_k5, 6, 1, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local_u2_k3, 6, 2, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd6_local_u2_k5, 6, 2, 5)
DIRECT_KERNEL(conv_direct_fwd4_f3_k3, 4, 3, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_f3_k3, 4, 3, 3)
DIRECT_KERNEL(conv_direct_fwd4_f3_k5, 4, 3, 5)
DIRECT_KERNEL_LOCAL(conv_direct_fwd4_local_f3_k5, 4, 3, 5)
DIRECT_KERNEL(conv_direct_fwd8_u2_k3, 8, 2, 3)
DIRECT_KERNEL_LOCAL(conv_direct_fwd8_local_u2_k3, 8, 2, 3)

// Depthwise 3x3, stride 2, padding 1, on planes of exactly 2 Ho x 2 Wo (the downsampling layers of
// MobileNet-style networks; no padding row or column past the end is read): each work-item
// takes `per` consecutive planes and, per VEC outputs of a row, splits each of the
// two new input rows into the three vectors its taps read (columns 2 ow - 1, 2 ow and 2 ow + 1:
// the odd lanes shifted in by one, the even ones, the odd ones) in registers, carrying the lower
// row's to the next output row as its upper one. No phase planes are copied into local memory
// (that copy was half of conv_direct_fwd_local_r2_k3's time on this layer); the sums add the
// three rows of taps apart (DW_S2_SUMS: rounded unlike that kernel's one chain). The layer's
// input gradient below (conv_depthwise_s2_k3_data) and its weight gradient
// (conv_depthwise_s2_k3_filter, beside the other 3x3 weight gradients) work from rows in
// registers too. A row's last vector may be partial
// (Wo 7, 14: MobileNet's late layers): its loads stop at the row's end (zeros past it: the input
// gradient's last dy value has no right neighbour, the weight gradient's lanes past the row add
// nothing) and its stores at the row's end, but before a plane's last row, where its whole
// vectors stay in the plane: there the forward's loads and stores run past the row's end
// (DW_S2_PLANE_OVER), and so do the input gradient's stores, the gradients' loads with the lanes
// past it zeroed (DW_S2_MASKS).
// (AFTER_LANE(p, v): p, then v's lanes but its last. Spelled as a shuffle of two vectors, p's
// splat and v, not as p followed by v's swizzled parts, which PoCL 3.0's LLVM built from
// half-vector loads and inserts: docs/opencl.md, session 53. BEFORE_LANE(v, p): v's lanes but
// its first, then p.)
// DW_PREFETCH (backend.py: CPU drivers whose compiler targets AVX2): each step of the stride-2
// depthwise forward hints the same lines of the work-item's next plane, x_next floats on (0: no
// hints), and the plane kernels hint the whole next plane after copying one (PLANE_COPIES). A
// 32x32 plane is one 4 KiB page, which the hardware prefetchers do not cross, and the AVX2 code's
// loads of each new plane's rows waited on memory; the AVX-512 code gained nothing, the stride-2
// weight gradient's hints of its next image's planes lost (docs/opencl.md, session 60).
#ifndef DW_PREFETCH
#define DW_PREFETCH 0
#endif
#if VEC == 16
#define AFTER_LANES(P, v) (floatv)((P).sf, (v).s0, (v).s1, (v).s2, (v).s3, (v).s4, (v).s5, (v).s6, (v).s7, (v).s8, \
    (v).s9, (v).sa, (v).sb, (v).sc, (v).sd, (v).se)
#define BEFORE_LANE(v, p) (floatv)((v).s1234, (v).s5678, (v).s9abc, (v).sdef, (p))
#else
#define AFTER_LANES(P, v) (floatv)((P).s7, (v).s0, (v).s1, (v).s2, (v).s3, (v).s4, (v).s5, (v).s6)
#define BEFORE_LANE(v, p) (floatv)((v).s1234, (v).s567, (p))
#endif
#define AFTER_LANE(p, v) AFTER_LANES((floatv)(p), v)
// the n values at p in a vector, zeros after them (n < VEC: the end of a row); DW_S2_WHOLE: n >= VEC
#define DW_S2_LOAD(p, n) ((n) >= VEC ? LOAD_UNIT(p) : tail_of(p, n))
#define DW_S2_WHOLE(p, n) LOAD_UNIT(p)
#define DW_S2_ROW(name, row, LOAD) \
    const floatv name##u = LOAD(row, vals), name##v = LOAD((row) + VEC, vals - VEC); \
    const floatv name##1 = (floatv)(name##u.even, name##v.even), name##2 = (floatv)(name##u.odd, name##v.odd); \
    const floatv name##0 = AFTER_LANE(ow0 ? (row)[-1] : 0.0f, name##2);
// The loops over a plane's vectors of outputs (ow0; live of them in the row, vals input values)
// and its output rows (oh) with the two new input rows of row oh split (m*, d*) and the one above
// in t*, carried from d*; BODY(LOAD) uses them. The rows of a whole vector are a loop of their own
// (loads and stores without the tests of the row's end, which PoCL 3.0's LLVM left in the loop).
#define DW_S2_ROWS(xc, LOAD, BODY) { \
        floatv t0 = (floatv)(0.0f), t1 = (floatv)(0.0f), t2 = (floatv)(0.0f);   /* the padding row */ \
        for (int oh = 0; oh < Ho; ++oh) { \
            const int over_row = over && (oh + 1 < Ho || over_last); \
            __global const float *r = (xc) + (size_t)2 * oh * W + 2 * ow0; \
            if (DW_PREFETCH && x_next) { PREFETCH_READ(r + x_next); PREFETCH_READ(r + W + x_next); } \
            DW_S2_ROW(m, r, LOAD) \
            DW_S2_ROW(d, r + W, LOAD) \
            BODY(LOAD) \
            t0 = d0; t1 = d1; t2 = d2; \
        } }
// The forward's: the partial last vector first, its loads and stores before the plane's last
// row whole vectors past the row's end where `over` (2 Wo >= VEC; DW_S2_OVER): the lanes past
// the end hold values of no output, and what they store in the next row is stored over later,
// by the whole vectors after (Wo >= VEC) or by the next row's own partial vector, as the NumPy
// backend's S2_PLANE does (tail_of and store_tail go value by value). In a plane's last row too
// where the work-item's next plane follows (over_last, DW_S2_OVER_LAST): its loads then stay in
// x, and what it stores past the plane lands in that plane's first row, stored over when it runs.
#ifndef DW_S2_OVER_LAST
#define DW_S2_OVER_LAST 1
#endif
#define DW_S2_OVER(p, n) (over_row ? LOAD_UNIT(p) : DW_S2_LOAD(p, n))
#define DW_S2_PLANE_OVER(xc, BODY) \
    for (int ow0 = (Wo - 1) / VEC * VEC; ow0 >= 0; ow0 -= VEC) { \
        const int live = Wo - ow0, vals = 2 * live; \
        if (live >= VEC) DW_S2_ROWS(xc, DW_S2_WHOLE, BODY) \
        else DW_S2_ROWS(xc, DW_S2_OVER, BODY) \
    }
// the nine taps as three sums, one a row of taps, then added (one chain of nine FMAs waited on
// the FMA's latency where a plane has few rows: 7x7 outputs)
#define DW_S2_SUMS floatv s = (floatv)(b), s1 = m0 * w10, s2 = d0 * w20; \
            s += t0 * w00; s1 += m1 * w11; s2 += d1 * w21; \
            s += t1 * w01; s1 += m2 * w12; s2 += d2 * w22; \
            s += t2 * w02; s += s1 + s2;
#define DW_S2_OUTPUTS(LOAD) { \
            DW_S2_SUMS \
            __global float *yr = yc + (size_t)oh * Wo + ow0; \
            if (over_row) { \
                if (epi) s = conv_epilogue(s, res + r_off + (yr - (y + y_off)), VEC, epi); \
                *(__global floatv_u *)(yr) = s; \
            } else DIRECT_STORE(s, yr, ow0) }
// 8-lane builds, rows of whole vectors (Wo a multiple of VEC; DW_S2_FULL): no split of the input
// rows into even and odd columns, whose shuffles outweighed the products there. Each input row's
// three taps run at every column of two vectors of it (fa, fb: columns c0 .. c0 + 2 VEC), from
// loads one column left and right, and the outputs are the even columns of the sums, one
// shuffle: twice the products, measured faster at 8 lanes, not at 16 (docs/opencl.md, session
// 59). The right tap's last lane (an odd column, dropped) reads the value past the row, the next
// row's first, but past x's end (its last plane's last row) is shifted in instead.
#ifndef DW_S2_FULL
#define DW_S2_FULL 1
#endif
#if DW_S2_FULL && VEC == 8
#define DW_S2_FULL_ROWS 1
#else
#define DW_S2_FULL_ROWS 0
#endif
#define DW_S2_FULL_ROW(fa, fb, row, k0, k1, k2, inside) { \
    __global const float *p_ = (row) + c0; \
    const floatv a_ = LOAD_UNIT(p_), b_ = LOAD_UNIT(p_ + VEC); \
    const floatv al_ = c0 ? LOAD_UNIT(p_ - 1) : AFTER_LANE(0.0f, a_), bl_ = LOAD_UNIT(p_ + VEC - 1); \
    const floatv ar_ = LOAD_UNIT(p_ + 1), br_ = (inside) ? LOAD_UNIT(p_ + VEC + 1) : BEFORE_LANE(b_, 0.0f); \
    fa += al_ * k0; fb += bl_ * k0; fa += a_ * k1; fb += b_ * k1; fa += ar_ * k2; fb += br_ * k2; }
#define DW_S2_FULL_PLANE(xc, EPI) \
    for (int oh = 0; oh < Ho; ++oh) { \
        __global const float *rm = (xc) + (size_t)2 * oh * W;   /* row 2 oh; the taps' rows: 2 oh - 1 .. + 1 */ \
        for (int c0 = 0; c0 < W; c0 += 2 * VEC) { \
            if (DW_PREFETCH) { PREFETCH_READ(rm + x_next + c0); PREFETCH_READ(rm + W + x_next + c0); } \
            floatv fa = (floatv)(b), fb = fa, ga = (floatv)(0.0f), gb = ga; \
            if (oh) DW_S2_FULL_ROW(fa, fb, rm - W, w00, w01, w02, 1) \
            DW_S2_FULL_ROW(ga, gb, rm, w10, w11, w12, 1) \
            DW_S2_FULL_ROW(fa, fb, rm + W, w20, w21, w22, not_last || oh + 1 < Ho || c0 + 2 * VEC < W) \
            fa += ga; fb += gb; \
            floatv s = (floatv)(fa.even, fb.even); \
            __global float *yr = yc + (size_t)oh * Wo + c0 / 2; \
            if (EPI) s = conv_epilogue(s, res + r_off + (yr - (y + y_off)), VEC, EPI); \
            *(__global floatv_u *)(yr) = s; \
        } }
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_depthwise_s2_k3(__global const float *restrict x, const int x_off,
                          __global const float *restrict w, const int w_off,
                          __global float *restrict y, const int y_off, const int C, const int Ho, const int Wo,
                          const int per, __global const float *restrict bias, const int b_off, const int has_bias,
                          __global const float *restrict res, const int r_off, const int epi)
{
    const int acc = 0, W = 2 * Wo, over = 2 * Wo >= VEC, planes = get_global_size(0) * per;
    const int first = get_global_id(0) * per;
    const size_t x_next = (size_t)4 * Ho * Wo;   /* the next plane (DW_PREFETCH) */
    for (int plane = first; plane < first + per; ++plane) {
        const int c = plane % C, over_last = DW_S2_OVER_LAST && plane + 1 < first + per;
        __global const float *wc = w + w_off + (size_t)c * 9;
        const float w00 = wc[0], w01 = wc[1], w02 = wc[2], w10 = wc[3], w11 = wc[4], w12 = wc[5],
                    w20 = wc[6], w21 = wc[7], w22 = wc[8];
        const float b = has_bias ? bias[b_off + c] : 0.0f;
        __global const float *xc = x + x_off + (size_t)plane * 4 * Ho * Wo;
        __global float *yc = y + y_off + (size_t)plane * Ho * Wo;
        const int not_last = plane + 1 < planes;   /* another plane follows in x */
        if (DW_S2_FULL_ROWS && Wo % VEC == 0) {
            if (epi) DW_S2_FULL_PLANE(xc, epi) else DW_S2_FULL_PLANE(xc, 0)   /* no test of epi a vector */
        } else DW_S2_PLANE_OVER(xc, DW_S2_OUTPUTS)
    }
}

// Depthwise 3x3, stride 1, padding 1, undilated ("same": Ho = H, Wo = W; MobileNet's stride-1
// layers): each plane as a 1-D convolution of its flat values, vectors of VEC consecutive
// outputs across row ends, the plane copied into local memory between zeros that cover the rows
// above and below; the left and right taps' values are zero where their column falls outside the
// lane's row (col: each lane's column, kept by subtracting W, no division). The row-by-row
// kernels took a partial vector for every row of a 7x7 plane (7 vectors of 8 for 49 outputs,
// here 7) and a padded copy of every plane (docs/opencl.md, session 54). The NumPy backend's
// depthwise_grid_flat; `flip`: the taps reversed (the input gradient), `acc`: added to y. The
// store treats the plane as one row.
#if VEC == 16
#define LANE_IDS (intv)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#else
#define LANE_IDS (intv)(0, 1, 2, 3, 4, 5, 6, 7)
#endif
#define ITYPE_(n) int##n
#define ITYPE(n) ITYPE_(n)
typedef ITYPE(VEC) intv;
// each lane's column back inside [0, W) (at most VEC / W + 1 subtractions)
#define PLANE_COLUMNS(col) for (int k_ = 0; k_ < reps; ++k_) col -= (col >= (intv)(W)) & (intv)(W);
// the values left and right of the lanes' at r, zero outside their rows
#define PLANE_LEFT(r) (left ? LOCAL_LOAD_UNIT((r) - 1) : (floatv)(0.0f))
#define PLANE_RIGHT(r) (right ? LOCAL_LOAD_UNIT((r) + 1) : (floatv)(0.0f))
// a plane's sizes (Wo: its values, the store's row) and the zeros around each of its copies in
// xl (span floats apart; 1 + ahead copies): a margin before it, then from its end to its last
// vector's end and a margin more
#define PLANE_SETUP(xl) \
    const int Wo = H * W, margin = W + 1, reps = VEC / W + 1, whole = (Wo + VEC - 1) / VEC * VEC; \
    const int span = 2 * margin + whole; \
    for (int k_ = 0; k_ <= ahead; ++k_) { \
        for (int i = 0; i < margin; ++i) xl[k_ * span + i] = 0.0f; \
        for (int i = margin + Wo; i < span; ++i) xl[k_ * span + i] = 0.0f; }
// The plane at xc into copy k of xl, value by value. With `ahead` (room for two copies), the
// work-item's next plane (next, or NULL) goes into the other copy before this one is computed:
// computed right after its own copy, a plane measured slower (docs/opencl.md, session 59).
#define PLANE_COPY(xl, k, xc) for (int i = 0; i < Wo; ++i) (xl)[(k) * span + margin + i] = (xc)[i];
#define PLANE_COPIES(xl, k, first, xc, next) \
    if ((first) || !ahead) PLANE_COPY(xl, k, xc) \
    if (ahead && (next)) PLANE_COPY(xl, (k) ^ 1, next) \
    if (DW_PREFETCH && !ahead && (next)) PREFETCH_SPAN(PREFETCH_READ, next, Wo)
// Open and close the loop over the plane in copy k of xl a vector of outputs b0 at a time, with
// r at the row above them and left/right: which lanes' neighbours lie in their row
#define PLANE_VECTORS_BEGIN(xl, k) \
    intv col = LANE_IDS; \
    PLANE_COLUMNS(col) \
    for (int b0 = 0; b0 < Wo; b0 += VEC) { \
        const intv left = col != (intv)(0), right = col != (intv)(W - 1); \
        __local const float *r = (xl) + (k) * span + margin + b0 - W;
#define PLANE_VECTORS_END col += (intv)(VEC); PLANE_COLUMNS(col) }
#define PLANE_TAPS(i) \
    s += PLANE_LEFT(r) * k##i##0; \
    s += LOCAL_LOAD_UNIT(r) * k##i##1; \
    s += PLANE_RIGHT(r) * k##i##2; \
    r += W;
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_depthwise_k3_plane(__global const float *restrict x, const int x_off,
                             __global const float *restrict w, const int w_off,
                             __global float *restrict y, const int y_off, const int C, const int H, const int W,
                             const int per, const int flip, const int acc, __local float *restrict xl, const int ahead,
                             __global const float *restrict bias, const int b_off, const int has_bias,
                             __global const float *restrict res, const int r_off, const int epi)
{
    PLANE_SETUP(xl)
    const int first = get_global_id(0) * per;
    for (int plane = first; plane < first + per; ++plane) {
        const int c = plane % C;
        __global const float *wc = w + w_off + (size_t)c * 9;
        const float k00 = wc[flip ? 8 : 0], k01 = wc[flip ? 7 : 1], k02 = wc[flip ? 6 : 2],
                    k10 = wc[flip ? 5 : 3], k11 = wc[4], k12 = wc[flip ? 3 : 5],
                    k20 = wc[flip ? 2 : 6], k21 = wc[flip ? 1 : 7], k22 = wc[flip ? 0 : 8];
        const float b = has_bias ? bias[b_off + c] : 0.0f;
        __global float *yc = y + y_off + (size_t)plane * Wo;
        __global const float *xc = x + x_off + (size_t)plane * Wo;
        __global const float *next = plane + 1 < first + per ? xc + Wo : 0;
        const int k = ahead & (plane - first);
        PLANE_COPIES(xl, k, plane == first, xc, next)
        PLANE_VECTORS_BEGIN(xl, k)
            floatv s = (floatv)(b);
            PLANE_TAPS(0) PLANE_TAPS(1) PLANE_TAPS(2)
            __global float *yr = yc + b0;
            DIRECT_STORE(s, yr, b0)
        PLANE_VECTORS_END
    }
}

// Its input gradient, from dy's rows in registers: dx's even and odd rows and columns (the four
// stride phases) each take the taps that reach them (one, two, two and four), from dy row m and
// m + 1 and those rows shifted by a lane (dy[m][n + 1]: BEFORE_LANE), interleaved into two
// vectors of each of dx rows 2 m and 2 m + 1 (stored, or added to dx where acc). Every dx value
// is written once: no zeroing pass, no phase planes in local memory (conv_phase_bwd_data).
// (INTERLEAVE_LO/_HI: the lanes of a and b alternating, from their low and their high halves;
// conv_phase_bwd_data below lays its phases out with them too)
#if VEC == 16
#define INTERLEAVE_LO(a, b) (floatv)((a).s0, (b).s0, (a).s1, (b).s1, (a).s2, (b).s2, (a).s3, (b).s3, \
    (a).s4, (b).s4, (a).s5, (b).s5, (a).s6, (b).s6, (a).s7, (b).s7)
#define INTERLEAVE_HI(a, b) (floatv)((a).s8, (b).s8, (a).s9, (b).s9, (a).sa, (b).sa, (a).sb, (b).sb, \
    (a).sc, (b).sc, (a).sd, (b).sd, (a).se, (b).se, (a).sf, (b).sf)
#else
#define INTERLEAVE_LO(a, b) (floatv)((a).s0, (b).s0, (a).s1, (b).s1, (a).s2, (b).s2, (a).s3, (b).s3)
#define INTERLEAVE_HI(a, b) (floatv)((a).s4, (b).s4, (a).s5, (b).s5, (a).s6, (b).s6, (a).s7, (b).s7)
#endif
// v's first n values stored at p (added where acc); DW_S2_STORE_WHOLE: n >= VEC
#define DW_S2_STORE_WHOLE(p, v, n) { floatv v_ = (v); \
    if (acc) v_ += *(__global floatv_u *)(p); \
    *(__global floatv_u *)(p) = v_; }
#define DW_S2_STORE(p, v, n) { \
    if ((n) >= VEC) DW_S2_STORE_WHOLE(p, v, n) \
    else if ((n) > 0) { floatv v_ = (v); \
        if (acc) v_ += tail_of(p, n); \
        store_tail(p, v_, n); \
    } }
// A row's partial last vector: where its whole vectors stay inside the plane (DW_S2_MASKS; the
// input gradient's and weight gradient's ``over``: its dy row's vector ends before the plane's
// last row, and so do the two of each x row it meets, which reach half as far again), its loads
// in every row but the plane's last (in that one too where another plane follows: over_last,
// DW_S2_OVER_LAST) are whole vectors with the lanes past the row zeroed
// (DW_S2_MASKED: a blend, where tail_of goes value by value): dy's, so that no value right of
// the row reaches the input gradient's last column, and x's, so that an infinity in the next row
// adds no NaN to the weight gradient.
#ifndef DW_S2_MASKS
#define DW_S2_MASKS 1
#endif
#define DW_S2_MASKED(p, n) select((floatv)(0.0f), LOAD_UNIT(p), LANE_IDS < (intv)(n))
// dx rows 2m and 2m + 1 of the vector at ow0 from dy rows m and m + 1, for every m (LOAD and
// STORE: DW_S2_DATA_WHOLE and DW_S2_STORE_WHOLE where the vector lies wholly in the row, a loop
// of its own; LOAD(p, n, row): dy row `row`'s n values at p; STORE(p, v, n, inside): v's first
// n at p, where `inside`, a store of the partial vector past the row's end may land in the next
// row of the plane)
#define DW_S2_DATA_ROWS(LOAD, STORE) { \
            floatv d = LOAD(dyc + ow0, live, 0); \
            floatv ds = BEFORE_LANE(d, more ? dyc[ow0 + VEC] : 0.0f); \
            for (int m = 0; m < Ho; ++m) { \
                floatv e = (floatv)(0.0f), es = (floatv)(0.0f);   /* dy row m + 1 (none past the last) */ \
                if (m + 1 < Ho) { \
                    __global const float *r = dyc + (size_t)(m + 1) * Wo + ow0; \
                    e = LOAD(r, live, m + 1); \
                    es = BEFORE_LANE(e, more ? r[VEC] : 0.0f); \
                } \
                const floatv ee = d * w11, eo = ds * w10 + d * w12, oe = e * w01 + d * w21, \
                             oo = es * w00 + e * w02 + ds * w20 + d * w22; \
                __global float *x0 = dxc + (size_t)2 * m * W + 2 * ow0, *x1 = x0 + W; \
                STORE(x0, INTERLEAVE_LO(ee, eo), vals, 1) \
                STORE(x0 + VEC, INTERLEAVE_HI(ee, eo), vals - VEC, 1) \
                STORE(x1, INTERLEAVE_LO(oe, oo), vals, m + 1 < Ho || over_last) \
                STORE(x1 + VEC, INTERLEAVE_HI(oe, oo), vals - VEC, m + 1 < Ho || over_last) \
                d = e; ds = es; \
            } }
#define DW_S2_DATA_WHOLE(p, n, row) LOAD_UNIT(p)
#define DW_S2_DATA_LOAD(p, n, row) (over && ((row) + 1 < Ho || over_last) ? DW_S2_MASKED(p, n) : tail_of(p, n))
#define DW_S2_DATA_STORE_WHOLE(p, v, n, inside) DW_S2_STORE_WHOLE(p, v, n)
// a partial vector's store past the row's end, where over and not adding to dx, as the forward's:
// the next row's values it writes are stored over later, by this vector's next store (of the same
// row pair, or of the next m) or by the whole vectors of the row after it (the vectors of a plane
// run from the last); past the plane's last row only into the work-item's next plane (over_last)
#define DW_S2_DATA_STORE(p, v, n, inside) \
    if (over && !acc && (inside) && (n) > 0) *(__global floatv_u *)(p) = (v); \
    else DW_S2_STORE(p, v, n)
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_depthwise_s2_k3_data(__global const float *restrict dy, const int dy_off,
                               __global const float *restrict w, const int w_off,
                               __global float *restrict dx, const int dx_off, const int C, const int Ho,
                               const int Wo, const int per, const int acc)
{
    const int W = 2 * Wo;
    const int first = get_global_id(0) * per;
    for (int plane = first; plane < first + per; ++plane) {
        const int over_last = DW_S2_OVER_LAST && plane + 1 < first + per;
        __global const float *wc = w + w_off + (size_t)(plane % C) * 9;
        const float w00 = wc[0], w01 = wc[1], w02 = wc[2], w10 = wc[3], w11 = wc[4], w12 = wc[5],
                    w20 = wc[6], w21 = wc[7], w22 = wc[8];
        __global const float *dyc = dy + dy_off + (size_t)plane * Ho * Wo;
        __global float *dxc = dx + dx_off + (size_t)plane * 4 * Ho * Wo;
        for (int ow0 = (Wo - 1) / VEC * VEC; ow0 >= 0; ow0 -= VEC) {
            const int live = Wo - ow0, vals = 2 * live, more = live > VEC;   /* a dy value right of the vector */
            const int over = DW_S2_MASKS && ow0 + VEC <= 2 * Wo;
            if (live >= VEC) DW_S2_DATA_ROWS(DW_S2_DATA_WHOLE, DW_S2_DATA_STORE_WHOLE)
            else DW_S2_DATA_ROWS(DW_S2_DATA_LOAD, DW_S2_DATA_STORE)
        }
    }
}

// Narrow output rows (fewer outputs than two vectors, not whole vectors: LeNet's 10-wide) with
// the output channels in the lanes instead: each work-item computes one output row of W (the
// build's width) outputs for 16 consecutive output channels, W float16 accumulators, every
// input value broadcast against a float16 of the 16 channels' tap (the weights laid out
// [c][ky][kx][o] by conv_olanes_weights); no lane lies past the row. Stride 1, no dilation,
// one group, K x K taps; launched as (N * O / 16 * Ho): one row per work-item measured faster
// than whole planes. No builtin in the loop (PoCL 3.0's calls, below): the taps an aligned
// float16 load (wt starts on the device's base address alignment, 128 bytes at least, and O and
// o0 are multiples of 16), the products added.
__kernel void conv_olanes_weights(const int taps, const int O, __global const float *restrict w, const int w_off,
                                  __global float *restrict wt)
{
    const int i = get_global_id(0), o = i % O, ct = i / O;   // ct = c * taps + t
    const int c = ct / taps, t = ct - c * taps, C = get_global_size(0) / (O * taps);
    wt[i] = w[w_off + ((size_t)o * C + c) * taps + t];
}

#define OLANES_KERNEL(name, W, K) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void name(__global const float *restrict x, const int x_off, const int C, const int H, const int Wd, \
          const int ph, const int pw, __global const float *restrict wt, \
          __global float *restrict y, const int y_off, const int O, const int Ho, \
          __global const float *restrict bias, const int b_off, const int has_bias, \
          __global const float *restrict res, const int r_off, const int epi) \
{ \
    const int id = get_global_id(0), blocks = O / 16; \
    const int oy = id % Ho, rest = id / Ho, ob = rest % blocks, n = rest / blocks, o0 = ob * 16; \
    const float16 b = has_bias ? *(__global const float16_u *)(bias + b_off + o0) : (float16)(0.0f); \
    float16 a[W]; \
    _Pragma("unroll") for (int j = 0; j < W; ++j) a[j] = b; \
    for (int c = 0; c < C; ++c) { \
        __global const float *xc = x + x_off + (size_t)(n * C + c) * H * Wd; \
        __global const float *wc = wt + (size_t)c * K * K * O + o0; \
        for (int ky = 0; ky < K; ++ky) { \
            const int h = oy + ky - ph; \
            if (h < 0 || h >= H) continue; \
            if (pw == 0) {   /* every load inside the row: broadcasts straight from memory */ \
                __global const float *xr = xc + h * Wd; \
                _Pragma("unroll") for (int kx = 0; kx < K; ++kx) { \
                    const float16 wv = *(__global const float16 *)(wc + (ky * K + kx) * O); \
                    _Pragma("unroll") for (int j = 0; j < W; ++j) a[j] += (float16)(xr[j + kx]) * wv; \
                } \
                continue; \
            } \
            float xr[W + K - 1]; \
            _Pragma("unroll") for (int q = 0; q < W + K - 1; ++q) { \
                const int col = q - pw; \
                xr[q] = col >= 0 && col < Wd ? xc[h * Wd + col] : 0.0f; \
            } \
            _Pragma("unroll") for (int kx = 0; kx < K; ++kx) { \
                const float16 wv = *(__global const float16 *)(wc + (ky * K + kx) * O); \
                _Pragma("unroll") for (int j = 0; j < W; ++j) a[j] += (float16)(xr[j + kx]) * wv; \
            } \
        } \
    } \
    const size_t plane = (size_t)Ho * W, at = ((size_t)(n * O + o0) * Ho + oy) * W; \
    _Pragma("unroll") for (int j = 0; j < W; ++j) { \
        float16 s = a[j]; \
        if (epi & EPI_RESIDUAL) \
            for (int l = 0; l < 16; ++l) s[l] += res[r_off + at + l * plane + j]; \
        if (epi & EPI_RELU) s = s < (float16)(0.0f) ? (float16)(0.0f) : s; \
        for (int l = 0; l < 16; ++l) y[y_off + at + l * plane + j] = s[l]; \
    } \
}
// the widths and kernel sizes the rule (spatial.py: OLANES_BUILDS) takes this kernel for
OLANES_KERNEL(conv_olanes_w10_k5, 10, 5)
OLANES_KERNEL(conv_olanes_w10_k3, 10, 3)

// dx[n, c, h, :] (+)= every output of c's group that read row h, times its tap; the work-item
// owns its row, so nothing races. Launched as (H rounded up, N * C).
__kernel void conv_direct_bwd_data(const int H, __global const float *restrict dy, const int dy_off,
                                   __global const float *restrict w, const int w_off,
                                   __global float *restrict dx, const int dx_off,
                                   const int C, const int W, const int O, const int Ho, const int Wo,
                                   const int cg, const int og, const int kh, const int kw,
                                   const int sh, const int sw, const int ph, const int pw,
                                   const int dh, const int dw, const int acc)
{
    const int h = get_global_id(0), nc = get_global_id(1);
    if (h >= H) return;
    const int n = nc / C, c = nc - n * C, g = c / cg, ci = c - g * cg;
    __global float *dxr = dx + dx_off + ((size_t)nc * H + h) * W;
    if (!acc) for (int x = 0; x < W; ++x) dxr[x] = 0.0f;
    for (int o = g * og; o < (g + 1) * og; ++o) {
        __global const float *dyp = dy + dy_off + ((size_t)n * O + o) * Ho * Wo;
        __global const float *wp = w + w_off + ((size_t)o * cg + ci) * kh * kw;
        for (int ki = 0; ki < kh; ++ki) {
            const int t = h + ph - ki * dh;
            if (t < 0 || t % sh) continue;
            const int oh = t / sh;
            if (oh >= Ho) continue;
            __global const float *dyr = dyp + (size_t)oh * Wo;
            for (int kj = 0; kj < kw; ++kj) {
                const float wv = wp[ki * kw + kj];
                const int off = kj * dw - pw;
                const int hi = last_inside(off, sw, W, Wo);
                for (int ow = first_inside(off, sw); ow < hi; ++ow) dxr[ow * sw + off] += dyr[ow] * wv;
            }
        }
    }
}

// Input gradient of a strided convolution with few outputs per group (the direct kernels'
// transposed convolution) by dx's stride phases, as the NumPy backend's depthwise_phase_data:
// dx's pixels (Y sh + ry, X sw + rx) of row phase ry and column phase rx receive exactly the
// taps (ki, kj) with ty = ry + ph - ki dh and tx = rx + pw - kj dw divisible by the stride, from
// dy's pixels (Y + ty / sh, X + tx / sw): per phase a stride-1 correlation of dy, whole vectors
// of consecutive dy (conv_direct_bwd_data above reads and adds dx lane by lane). Each work-item
// takes `per` planes (n, c) in turn: copies the og dy planes of c's group zero-padded into local
// memory (dyl: og planes of Hl x Wl, dy's first pixel at row `top`, column `left`), sums each
// phase into local phase planes (dxl: sh x sw planes of Hq x Wq, Wq whole vectors; a phase no
// tap reaches sums to zeros), then lays the phases out into dx's rows (stride 2 along rows: the
// two column phases' vectors interleaved by shuffles; else lane by lane). Launched as
// (N * C / per); og * kh * kw <= PHASE_DATA_MAX_TAPS (spatial.py's).
#define PHASE_DATA_MAX_TAPS 64
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_phase_bwd_data(__global const float *restrict dy, const int dy_off,
                         __global const float *restrict w, const int w_off,
                         __global float *restrict dx, const int dx_off,
                         const int C, const int H, const int W, const int O, const int Ho, const int Wo,
                         const int cg, const int og, const int kh, const int kw,
                         const int sh, const int sw, const int ph, const int pw,
                         const int dh, const int dw, const int acc, const int per,
                         __local float *restrict dyl, const int Hl, const int Wl, const int top, const int left,
                         __local float *restrict dxl, const int Hq, const int Wq)
{
    const int first = get_global_id(0) * per;
    const size_t phase = (size_t)Hq * Wq;
    for (int run = 0; run < per; ++run) {
        const int nc = first + run, n = nc / C, c = nc - n * C, g = c / cg, ci = c - g * cg;
        /* zero-padded as the local forward kernel's plain copy: phase_planes_local at stride 1 */
        /* measured twice as slow here, its per-row bounds on short rows (docs/opencl.md) */
        for (int oi = 0; oi < og; ++oi) {
            __global const float *src = dy + dy_off + ((size_t)n * O + g * og + oi) * Ho * Wo;
            __local float *to = dyl + (size_t)oi * Hl * Wl;
            for (int r = 0; r < Hl; ++r, to += Wl) {
                const int oh = r - top;
                if (oh < 0 || oh >= Ho) {
                    for (int q = 0; q < Wl; ++q) to[q] = 0.0f;
                    continue;
                }
                __global const float *from = src + (size_t)oh * Wo - left;
                for (int q = 0; q < left; ++q) to[q] = 0.0f;
                for (int q = left; q < left + Wo; ++q) to[q] = from[q];
                for (int q = left + Wo; q < Wl; ++q) to[q] = 0.0f;
            }
        }
        for (int ry = 0; ry < sh; ++ry)
            for (int rx = 0; rx < sw; ++rx) {
                int at[PHASE_DATA_MAX_TAPS];   // where each of the phase's taps reads dyl (Y = X = 0)
                float wt[PHASE_DATA_MAX_TAPS];
                int taps = 0;
                for (int oi = 0; oi < og; ++oi)
                    for (int ki = 0; ki < kh; ++ki) {
                        const int ty = ry + ph - ki * dh;
                        if (ty % sh) continue;
                        for (int kj = 0; kj < kw; ++kj) {
                            const int tx = rx + pw - kj * dw;
                            if (tx % sw) continue;
                            at[taps] = (oi * Hl + ty / sh + top) * Wl + tx / sw + left;
                            wt[taps++] = w[w_off + ((size_t)(g * og + oi) * cg + ci) * kh * kw + ki * kw + kj];
                        }
                    }
                __local float *out = dxl + (ry * sw + rx) * phase;
                for (int Y = 0; Y < Hq; ++Y)
                    for (int X = 0; X < Wq; X += VEC) {
                        __local const float *src = dyl + Y * Wl + X;
                        floatv s = (floatv)(0.0f);
                        for (int t = 0; t < taps; ++t) s += LOCAL_LOAD_UNIT(src + at[t]) * wt[t];
                        *(__local floatv_u *)(out + Y * Wq + X) = s;
                    }
            }
        __global float *dxp = dx + dx_off + (size_t)nc * H * W;
        for (int h = 0; h < H; ++h) {
            const int ry = h % sh, Y = h / sh;
            __global float *dxr = dxp + (size_t)h * W;
            __local const float *p0 = dxl + ry * sw * phase + Y * Wq;
            if (sw == 2) {
                __local const float *p1 = p0 + phase;
                for (int X = 0; 2 * X < W; X += VEC) {
                    const floatv u = LOCAL_LOAD_UNIT(p0 + X), v = LOCAL_LOAD_UNIT(p1 + X);
                    floatv lo = INTERLEAVE_LO(u, v), hi = INTERLEAVE_HI(u, v);
                    __global float *to = dxr + 2 * X;
                    if (2 * X + 2 * VEC <= W) {
                        if (acc) { lo += LOAD_UNIT(to); hi += LOAD_UNIT(to + VEC); }
                        *(__global floatv_u *)to = lo;
                        *(__global floatv_u *)(to + VEC) = hi;
                    } else {
                        for (int j = 0; 2 * X + j < W; ++j) {
                            const float e = (j & 1 ? p1 : p0)[X + j / 2];
                            to[j] = acc ? to[j] + e : e;
                        }
                    }
                }
            } else {
                for (int x = 0; x < W; ++x) {
                    const float e = p0[(x % sw) * phase + x / sw];
                    dxr[x] = acc ? dxr[x] + e : e;
                }
            }
        }
    }
}

// Weight gradient in two passes. Pass 1: work-item (tap, o * cg + ci, chunk) sums
// dy[n, o] * (the padded x[n, c] shifted by the tap) over the images n = chunk, chunk + chunks,
// ... into part[chunk][o * cg + ci][tap], VEC outputs of a row at a time. x as phase planes
// (PHASE_AT; strided: pad_phases, else pad_planes), so every load is of consecutive inputs.
__kernel void conv_direct_bwd_filter(const int taps, __global const float *restrict xp,
                                     __global const float *restrict dy, const int dy_off,
                                     __global float *restrict part, const int p_off,
                                     const int N, const int C, const int Hq, const int Wq, const int O,
                                     const int Ho, const int Wo, const int cg, const int og,
                                     const int kh, const int kw, const int sh, const int sw,
                                     const int dh, const int dw)
{
    const int tap = get_global_id(0), oc = get_global_id(1), chunk = get_global_id(2);
    if (tap >= taps) return;
    const int chunks = get_global_size(2);
    const int o = oc / cg, ci = oc - o * cg, c = (o / og) * cg + ci;
    const int ki = tap / kw, kj = tap - ki * kw;
    const int whole = Wo / VEC * VEC;
    floatv s = (floatv)(0.0f), s2 = s;
    for (int n = chunk; n < N; n += chunks) {
        __global const float *xc = xp + (size_t)(n * C + c) * sh * sw * Hq * Wq + PHASE_AT(ki * dh, kj * dw);
        __global const float *dyp = dy + dy_off + ((size_t)n * O + o) * Ho * Wo;
        for (int oh = 0; oh < Ho; ++oh) {
            __global const float *xr = xc + (size_t)oh * Wq;
            __global const float *dyr = dyp + (size_t)oh * Wo;
            int ow = 0;
            for (; ow + 2 * VEC <= whole; ow += 2 * VEC) {   // two chains of FMAs: half the latency waited
                s += LOAD_UNIT(dyr + ow) * LOAD_UNIT(xr + ow);
                s2 += LOAD_UNIT(dyr + ow + VEC) * LOAD_UNIT(xr + ow + VEC);
            }
            if (ow < whole) s += LOAD_UNIT(dyr + ow) * LOAD_UNIT(xr + ow);
            if (whole < Wo) {   // the row's last lanes: read what is there, count only the live ones
                floatv d = (floatv)(0.0f), v = LOAD_UNIT(xr + whole);
                for (int j = 0; j < Wo - whole; ++j) d[j] = dyr[whole + j];
                for (int j = Wo - whole; j < VEC; ++j) v[j] = 0.0f;
                s += d * v;
            }
        }
    }
    s += s2;
    float total = 0.0f;
    for (int j = 0; j < VEC; ++j) total += s[j];
    part[p_off + ((size_t)chunk * get_global_size(1) + oc) * taps + tap] = total;
}

// Pass 1 for a row of KW taps known when compiled: work-item (ki, o * cg + ci, chunk) sums the
// whole row of taps ki at once, so each loaded dy vector feeds KW accumulators (the kernel
// above reloads dy for every tap), two vectors of a row at a time: 2 * KW independent chains of
// FMAs. Rows of whole pairs of vectors only (Wo a multiple of 2 * VEC). x as phase planes, as
// above (tap j's column part of the offset in co<j>); writes part as the kernel above does.
#define FR_COL(j) const size_t co##j = PHASE_AT(0, (j) * dw);
#define FR_ACC(j) floatv a##j = (floatv)(0.0f), b##j = a##j;
#define FR_FMA(j) a##j += d0 * LOAD_UNIT(xr + ow + co##j); b##j += d1 * LOAD_UNIT(xr + ow + VEC + co##j);
#define FR_STORE(j) { const floatv v = a##j + b##j; float total = 0.0f; \
    for (int q = 0; q < VEC; ++q) total += v[q]; \
    dst[j] = total; }
// The arguments of both weight-gradient kernel families below (their host code is shared).
#define FILTER_KERNEL_PARAMS __global const float *restrict xp, \
    __global const float *restrict dy, const int dy_off, \
    __global float *restrict part, const int p_off, \
    const int N, const int C, const int Hq, const int Wq, const int O, \
    const int Ho, const int Wo, const int cg, const int og, const int kh, const int dh, \
    const int dw, const int sh, const int sw
#define TAPS_3(X) X(0) X(1) X(2)
#define TAPS_5(X) X(0) X(1) X(2) X(3) X(4)
#define FILTER_ROW_KERNEL(name, KW) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void name(FILTER_KERNEL_PARAMS) \
{ \
    const int ki = get_global_id(0), oc = get_global_id(1), chunk = get_global_id(2); \
    const int chunks = get_global_size(2); \
    const int o = oc / cg, ci = oc - o * cg, c = (o / og) * cg + ci; \
    TAPS_##KW(FR_ACC) TAPS_##KW(FR_COL) \
    for (int n = chunk; n < N; n += chunks) { \
        __global const float *xc = xp + (size_t)(n * C + c) * sh * sw * Hq * Wq + PHASE_AT(ki * dh, 0); \
        __global const float *dyp = dy + dy_off + ((size_t)n * O + o) * Ho * Wo; \
        for (int oh = 0; oh < Ho; ++oh) { \
            __global const float *xr = xc + (size_t)oh * Wq; \
            __global const float *dyr = dyp + (size_t)oh * Wo; \
            for (int ow = 0; ow < Wo; ow += 2 * VEC) { \
                const floatv d0 = LOAD_UNIT(dyr + ow), d1 = LOAD_UNIT(dyr + ow + VEC); \
                TAPS_##KW(FR_FMA) \
            } \
        } \
    } \
    __global float *dst = part + p_off + ((size_t)chunk * get_global_size(1) + oc) * kh * KW + ki * KW; \
    TAPS_##KW(FR_STORE) \
}

FILTER_ROW_KERNEL(conv_direct_bwd_filter_k3, 3)
FILTER_ROW_KERNEL(conv_direct_bwd_filter_k5, 5)

// The same for OUTS output channels of one group at once (work-item (ki, (o / OUTS) * cg + ci,
// chunk)): each loaded row of KW input vectors feeds the KW taps of OUTS outputs, so a step
// of one vector loads KW + OUTS vectors for KW * OUTS FMAs (the kernel above: 2 KW + 2 for
// 2 KW); OUTS * KW accumulators (12 for 3 taps x 4 outputs, 10 for 5 x 2) plus the KW input
// vectors fit AVX2's 16 registers. Rows of whole vectors (Wo a multiple of VEC).
#define TAPS2_3(X, u) X(u, 0) X(u, 1) X(u, 2)
#define TAPS2_5(X, u) X(u, 0) X(u, 1) X(u, 2) X(u, 3) X(u, 4)
#define OUTS_2(X) X(0) X(1)
#define OUTS_4(X) X(0) X(1) X(2) X(3)
#define OUTS_8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FO_X(j) const floatv x##j = LOAD_UNIT(xr + ow + co##j);
#define FO_ACC1(u, j) floatv a##u##_##j = (floatv)(0.0f);
#define FO_FMA1(u, j) a##u##_##j += d##u * x##j;
#define FO_STORE1(u, j) { const floatv v = a##u##_##j; float total = 0.0f; \
    for (int q = 0; q < VEC; ++q) total += v[q]; \
    dst[(size_t)(u) * cg * kh * KW_ + j] = total; }
#define FO_ACC_3(u) TAPS2_3(FO_ACC1, u)
#define FO_ACC_5(u) TAPS2_5(FO_ACC1, u)
#define FO_DY_3(u) { const floatv d##u = LOAD_UNIT(dyr + (size_t)(u) * pixels + ow); TAPS2_3(FO_FMA1, u) }
#define FO_DY_5(u) { const floatv d##u = LOAD_UNIT(dyr + (size_t)(u) * pixels + ow); TAPS2_5(FO_FMA1, u) }
#define FO_STORE_3(u) TAPS2_3(FO_STORE1, u)
#define FO_STORE_5(u) TAPS2_5(FO_STORE1, u)
#define FILTER_OUTS_KERNEL(name, KW, OUTS) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void name(FILTER_KERNEL_PARAMS) \
{ \
    const int KW_ = KW; \
    const int ki = get_global_id(0), q = get_global_id(1), chunk = get_global_id(2); \
    const int chunks = get_global_size(2), pixels = Ho * Wo; \
    const int o0 = q / cg * OUTS, ci = q - q / cg * cg, c = (o0 / og) * cg + ci; \
    OUTS_##OUTS(FO_ACC_##KW) TAPS_##KW(FR_COL) \
    for (int n = chunk; n < N; n += chunks) { \
        __global const float *xc = xp + (size_t)(n * C + c) * sh * sw * Hq * Wq + PHASE_AT(ki * dh, 0); \
        __global const float *dyp = dy + dy_off + ((size_t)n * O + o0) * pixels; \
        for (int oh = 0; oh < Ho; ++oh) { \
            __global const float *xr = xc + (size_t)oh * Wq; \
            __global const float *dyr = dyp + (size_t)oh * Wo; \
            for (int ow = 0; ow < Wo; ow += VEC) { \
                TAPS_##KW(FO_X) \
                OUTS_##OUTS(FO_DY_##KW) \
            } \
        } \
    } \
    __global float *dst = part + p_off + ((size_t)chunk * O * cg + (size_t)o0 * cg + ci) * kh * KW + ki * KW; \
    OUTS_##OUTS(FO_STORE_##KW) \
}

FILTER_OUTS_KERNEL(conv_direct_bwd_filter_k3_o4, 3, 4)
FILTER_OUTS_KERNEL(conv_direct_bwd_filter_k5_o2, 5, 2)
// 24 and 20 accumulators: for AVX-512's 32 registers (16-lane builds, FILTER_ROW_OUTS_16_LANES)
FILTER_OUTS_KERNEL(conv_direct_bwd_filter_k3_o8, 3, 8)
FILTER_OUTS_KERNEL(conv_direct_bwd_filter_k5_o4, 5, 4)

// Pass 1 for 3x3 taps and one output per work-item (depthwise layers) from the unpadded x:
// work-item (o * cg + ci, chunk) copies each of its images' input plane into local memory, as
// phase planes where strided (PHASE_AT; phase_planes_local), and sums all nine taps over the
// plane at once, one vector of a row a step: nine independent chains of FMAs, and no padded
// copy of x through global memory (pad_phases wrote and the kernels above read one: as long as
// the rest of a strided depthwise layer's weight gradient). Rows of whole vectors (Wo a
// multiple of VEC); xl: Hq x Wq phase planes and room for the loads past a row's end. Writes
// part as the kernels above do.
#define TAPS_3X3(X) X(0, 0) X(0, 1) X(0, 2) X(1, 0) X(1, 1) X(1, 2) X(2, 0) X(2, 1) X(2, 2)
#define FL_ACC(i, j) floatv a##i##j = (floatv)(0.0f);
#define FL_FMA(i, j) a##i##j += d * LOCAL_LOAD_UNIT(xr + prow[i] + pcol[j]);
#define FL_STORE(i, j) { float total = 0.0f; \
    for (int q = 0; q < VEC; ++q) total += a##i##j[q]; \
    dst[(i) * 3 + (j)] = total; }
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_direct_bwd_filter_local_k3(__global const float *restrict x, const int x_off, const int H, const int W,
                                     const int top, const int left, __local float *restrict xl,
                                     __global const float *restrict dy, const int dy_off,
                                     __global float *restrict part, const int p_off,
                                     const int N, const int C, const int Hp, const int Wp, const int O,
                                     const int Ho, const int Wo, const int cg, const int og,
                                     const int sh, const int sw, const int dh, const int dw)
{
    const int oc = get_global_id(0), chunk = get_global_id(1), chunks = get_global_size(1);
    const int o = oc / cg, ci = oc - o * cg, c = (o / og) * cg + ci, kh = 3, kw = 3;
    DIRECT_PHASE_TABLES
    TAPS_3X3(FL_ACC)
    for (int n = chunk; n < N; n += chunks) {
        phase_planes_local(xl, x + x_off + (size_t)(n * C + c) * H * W, H, W, sh, sw, top, left, Hp, Wp);
        __global const float *dyp = dy + dy_off + ((size_t)n * O + o) * Ho * Wo;
        for (int oh = 0; oh < Ho; ++oh) {
            __global const float *dyr = dyp + (size_t)oh * Wo;
            for (int ow = 0; ow < Wo; ow += VEC) {
                __local const float *xr = xl + (size_t)oh * Wp + ow;
                const floatv d = LOAD_UNIT(dyr + ow);
                TAPS_3X3(FL_FMA)
            }
        }
    }
    __global float *dst = part + p_off + ((size_t)chunk * get_global_size(0) + oc) * 9;
    TAPS_3X3(FL_STORE)
}

// The same for depthwise 3x3 stride-2 layers on 2 Ho x 2 Wo planes from rows in registers
// (conv_depthwise_s2_k3): work-item (c, chunk) sums its images' dy times the input rows split as
// that forward splits them, nine vectors of sums, one per tap; writes part as the kernel above.
#define DW_S2_TAP_SUMS(X) X(00, t0) X(01, t1) X(02, t2) X(10, m0) X(11, m1) X(12, m2) X(20, d0) X(21, d1) X(22, d2)
#define DW_S2_FMA(t, v) a##t += e * v;
#define DW_S2_TAP_PRODUCTS(LOAD) { \
            const floatv e = LOAD(dyc + (size_t)oh * Wo + ow0, live); \
            DW_S2_TAP_SUMS(DW_S2_FMA) }
// a plane's vectors, the partial one's loads whole and masked in the rows where that is `over`
#define DW_S2_MASKED_ROW(p, n) (over_row ? DW_S2_MASKED(p, n) : DW_S2_LOAD(p, n))
#define DW_S2_PLANE(xc, BODY) \
    for (int ow0 = 0; ow0 < Wo; ow0 += VEC) { \
        const int live = Wo - ow0, vals = 2 * live; \
        if (live >= VEC) { const int over = 0, over_last = 0; DW_S2_ROWS(xc, DW_S2_WHOLE, BODY) } \
        else { const int over = DW_S2_MASKS && ow0 + VEC <= 2 * Wo, over_last = DW_S2_OVER_LAST && not_last; \
               DW_S2_ROWS(xc, DW_S2_MASKED_ROW, BODY) } \
    }
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_depthwise_s2_k3_filter(__global const float *restrict x, const int x_off,
                                 __global const float *restrict dy, const int dy_off,
                                 __global float *restrict part, const int p_off, const int N, const int Ho,
                                 const int Wo)
{
    const int c = get_global_id(0), C = get_global_size(0), chunk = get_global_id(1), chunks = get_global_size(1);
    const int W = 2 * Wo;
    const size_t x_next = 0;   /* no hints (DW_PREFETCH): the next image's planes measured slower */
    TAPS_3X3(FL_ACC)
    for (int n = chunk; n < N; n += chunks) {
        __global const float *xc = x + x_off + ((size_t)n * C + c) * 4 * Ho * Wo;
        __global const float *dyc = dy + dy_off + ((size_t)n * C + c) * Ho * Wo;
        const int not_last = n + 1 < N || c + 1 < C;   /* another plane follows in x and dy */
        DW_S2_PLANE(xc, DW_S2_TAP_PRODUCTS)
    }
    __global float *dst = part + p_off + ((size_t)chunk * C + c) * 9;
    TAPS_3X3(FL_STORE)
}

// The weight gradient of conv_depthwise_k3_plane's layers: work-item (c, chunk) sums its images'
// dy times the plane's nine shifted (masked) values in local memory, nine vectors of sums;
// writes part as the kernels above.
#define PLANE_TAP_SUMS(i) \
    a##i##0 += e * PLANE_LEFT(r); a##i##1 += e * LOCAL_LOAD_UNIT(r); a##i##2 += e * PLANE_RIGHT(r); r += W;
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_depthwise_k3_plane_filter(__global const float *restrict x, const int x_off,
                                    __global const float *restrict dy, const int dy_off,
                                    __global float *restrict part, const int p_off, const int N, const int H,
                                    const int W, __local float *restrict xl, const int ahead)
{
    const int c = get_global_id(0), C = get_global_size(0), chunk = get_global_id(1), chunks = get_global_size(1);
    PLANE_SETUP(xl)
    TAPS_3X3(FL_ACC)
    for (int n = chunk; n < N; n += chunks) {
        __global const float *dyc = dy + dy_off + ((size_t)n * C + c) * Wo;
        __global const float *xc = x + x_off + ((size_t)n * C + c) * Wo;
        __global const float *next = n + chunks < N ? xc + (size_t)chunks * C * Wo : 0;
        const int k = ahead & ((n - chunk) / chunks);
        PLANE_COPIES(xl, k, n == chunk, xc, next)
        PLANE_VECTORS_BEGIN(xl, k)
            const floatv e = Wo - b0 >= VEC ? LOAD_UNIT(dyc + b0) : tail_of(dyc + b0, Wo - b0);
            PLANE_TAP_SUMS(0) PLANE_TAP_SUMS(1) PLANE_TAP_SUMS(2)
        PLANE_VECTORS_END
    }
    __global float *dst = part + p_off + ((size_t)chunk * C + c) * 9;
    TAPS_3X3(FL_STORE)
}

// Pass 2: dw[i] (+)= sum over the chunks of part[chunk][i]; one work-item per weight.
__kernel void conv_direct_filter_sum(const int total, const int chunks,
                                     __global const float *restrict part, const int p_off,
                                     __global float *restrict dw, const int dw_off, const int acc)
{
    const int i = get_global_id(0);
    if (i >= total) return;
    float s = 0.0f;
    for (int z = 0; z < chunks; ++z) s += part[p_off + (size_t)z * total + i];
    dw[dw_off + i] = acc ? dw[dw_off + i] + s : s;
}

// 2x2 windows, stride 2, no padding, H = 2 Ho and W = 2 Wo (LeNet's and most CNNs' pooling):
// one work-item per output, numbered across all rows of all planes, and no loops, so CPU
// drivers vectorise the work-group's items; the same taps in the same order as max_pool (the
// first maximum wins, a NaN wins). Output i = row * Wo + ow reads input rows 2 row and
// 2 row + 1. Launched flat over total = N * C * Ho * Wo (< 2^24: the row and plane are found
// by float division, corrected to exact, since vectorised integer division is per lane).
// Launched per output row instead, every group of Wo < its size ran masked, and 14-wide rows
// made LeNet's first pooling slow (docs/opencl.md).
inline int exact_quotient(const int i, const int d, const float inv)
{
    int q = (int)((float)i * inv);
    q -= q * d > i;
    q += (q + 1) * d <= i;
    return q;
}

// The largest of the 2x2 window at xr (rows W apart; a NaN wins, the first maximum is kept) and,
// in *at, its index in the input plane, top being the window's first.
inline float max_2x2(__global const float *xr, const int W, const int top, int *at)
{
    const float v0 = xr[0], v1 = xr[1], v2 = xr[W], v3 = xr[W + 1];
    float b = v0;
    int w = top;
    int take = v1 > b || v1 != v1;
    b = take ? v1 : b; w = take ? top + 1 : w;
    take = v2 > b || v2 != v2;
    b = take ? v2 : b; w = take ? top + W : w;
    take = v3 > b || v3 != v3;
    b = take ? v3 : b; w = take ? top + W + 1 : w;
    *at = w;
    return b;
}

__kernel void max_pool_2x2(const int total, __global const float *x, const int x_off, const int Ho,
                           const int Wo, const float inv_wo, const float inv_ho,
                           __global float *out, const int o_off, __global int *argmax, const int a_off)
{
    const int i = get_global_id(0);
    // asked per work-group first (see GID_CHECK in elementwise.cl)
    if ((get_group_id(0) + 1) * get_local_size(0) > (size_t)total && i >= total) return;
    const int row = exact_quotient(i, Wo, inv_wo), ow = i - row * Wo;
    const int plane = exact_quotient(row, Ho, inv_ho);
    const int W = 2 * Wo, top = 2 * (row - plane * Ho) * W + 2 * ow;
    __global const float *xr = x + x_off + (size_t)2 * i + (size_t)2 * row * Wo;
    int w;
    out[o_off + i] = max_2x2(xr, W, top, &w);
    argmax[a_off + i] = w;
}

// The same with a work-item per `rows` consecutive output rows (of consecutive planes), alone in
// its work-group, looping along each row: where a row is whole vectors of outputs the compiler
// vectorises the loop (shorter or ragged rows run faster one output per work-item, above).
// Launched as (N * C * Ho / rows).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void max_pool_2x2_rows(const int rows, __global const float *x, const int x_off, const int Ho, const int Wo,
                       __global float *out, const int o_off, __global int *argmax, const int a_off)
{
    const int r0 = get_global_id(0) * rows, W = 2 * Wo;
    for (int r = r0; r < r0 + rows; ++r) {
        const int oh = r % Ho;
        __global const float *xrow = x + x_off + (size_t)r * 2 * W;   // input row 2 oh of r's plane
        for (int ow = 0; ow < Wo; ++ow) {
            __global const float *xr = xrow + 2 * ow;
            const int top = 2 * oh * W + 2 * ow;
            int w;
            out[o_off + (size_t)r * Wo + ow] = max_2x2(xr, W, top, &w);
            argmax[a_off + (size_t)r * Wo + ow] = w;
        }
    }
}

// The same for rows of 3 to 16 outputs on CPU devices, a row in one vector of PV lanes
// (PV = 4, 8 or 16, the smallest that holds Wo): each input row of the window loaded as 2 PV
// consecutive floats and split into its even and odd columns, the four taps then compared lane by
// lane in max_2x2's order. Row loads run past the row's end into the rows after it (never past
// the next output row's inputs, since 2 PV < 4 Wo) and row stores write PV - Wo < Wo outputs of
// the next row before that row's store overwrites them, so the last row of the work-item's run
// takes the scalar path. Where a row is narrower than a vector both the one-output-per-work-item
// kernel (lane positions gathered) and the loop along the row (its vectorised body never runs)
// spent 2.4-2.8 ns an output. Launched as (N * C * Ho / rows) with rows a multiple of Ho.
// (comparisons and vector conditionals, not isgreater/isnan/select: calls in PoCL 3.0, above)
#define POOL_TAKE(m, at, v, idx) { const intPV take_ = (v > m) | (v != v); \
    m = take_ ? v : m; at = take_ ? idx : at; }
#define POOL_VEC_KERNEL(NAME, PV, LOAD_ROW, LANES2) \
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) \
void NAME(const int rows, __global const float *x, const int x_off, const int Ho, const int Wo, \
          __global float *out, const int o_off, __global int *argmax, const int a_off) \
{ \
    typedef float##PV floatPV; \
    typedef int##PV intPV; \
    const int r0 = get_global_id(0) * rows, W = 2 * Wo; \
    const intPV col2 = LANES2; \
    int oh = r0 % Ho; \
    for (int r = r0; r < r0 + rows - 1; ++r) { \
        __global const float *xt = x + x_off + (size_t)r * 2 * W; \
        floatPV v0, v1, v2, v3; \
        LOAD_ROW(xt, v0, v1) \
        LOAD_ROW(xt + W, v2, v3) \
        const intPV top = 2 * oh * W + col2; \
        floatPV m = v0; \
        intPV at = top; \
        POOL_TAKE(m, at, v1, top + 1) \
        POOL_TAKE(m, at, v2, top + W) \
        POOL_TAKE(m, at, v3, top + W + 1) \
        *(__global float##PV##_u *)(out + o_off + (size_t)r * Wo) = m; \
        *(__global int##PV##_u *)(argmax + a_off + (size_t)r * Wo) = at; \
        oh = oh + 1 == Ho ? 0 : oh + 1; \
    } \
    const int r = r0 + rows - 1; \
    __global const float *xrow = x + x_off + (size_t)r * 2 * W; \
    for (int ow = 0; ow < Wo; ++ow) { \
        int w; \
        out[o_off + (size_t)r * Wo + ow] = max_2x2(xrow + 2 * ow, W, 2 * oh * W + 2 * ow, &w); \
        argmax[a_off + (size_t)r * Wo + ow] = w; \
    } \
}
#define POOL_ROW4(p, e, o) { const float8 t_ = *(__global const float8_u *)(p); e = t_.even; o = t_.odd; }
#define POOL_ROW8(p, e, o) { const float16 t_ = *(__global const float16_u *)(p); e = t_.even; o = t_.odd; }
#define POOL_ROW16(p, e, o) { const float16 a_ = *(__global const float16_u *)(p), \
                                            b_ = *(__global const float16_u *)((p) + 16); \
    e = (float16)(a_.even, b_.even); o = (float16)(a_.odd, b_.odd); }
POOL_VEC_KERNEL(max_pool_2x2_v4, 4, POOL_ROW4, (int4)(0, 2, 4, 6))
POOL_VEC_KERNEL(max_pool_2x2_v8, 8, POOL_ROW8, (int8)(0, 2, 4, 6, 8, 10, 12, 14))
POOL_VEC_KERNEL(max_pool_2x2_v16, 16, POOL_ROW16, (int16)(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30))

// Pooling kernels are launched as (Ho or H * W rounded up, N * C planes).
// One work-item per output row (oh, plane): the row's maxima and their indices are kept in
// the output row itself and updated tap by tap in a loop along the row, which the compiler
// vectorises (stores are unconditional selects). Launched as (Ho rounded up, N * C planes).
__kernel void max_pool(const int rows, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       __global float *out, const int o_off, __global int *argmax, const int a_off)
{
    const int oh = get_global_id(0), plane = get_global_id(1);
    if (oh >= rows) return;
    __global const float *xp = x + x_off + (size_t)plane * H * W;
    __global float *best = out + o_off + ((size_t)plane * Ho + oh) * Wo;
    __global int *where = argmax + a_off + ((size_t)plane * Ho + oh) * Wo;
    for (int ow = 0; ow < Wo; ++ow) {
        best[ow] = -INFINITY;
        where[ow] = -1;
    }
    for (int ki = 0; ki < kh; ++ki) {
        const int h = oh * sh - ph + ki;
        if (h < 0 || h >= H) continue;
        for (int kj = 0; kj < kw; ++kj) {   // taps in scan order: the first maximum wins
            const int off = kj - pw, hi = last_inside(off, sw, W, Wo);
            __global const float *xr = xp + (size_t)h * W + off;
            for (int ow = first_inside(off, sw); ow < hi; ++ow) {
                const float v = xr[ow * sw], b = best[ow];
                const int w = where[ow], take = w < 0 || v > b || v != v;   // NaN wins (torch)
                best[ow] = take ? v : b;
                where[ow] = take ? h * W + off + ow * sw : w;
            }
        }
    }
}

// one work-item per (n, c) plane scatters its outputs' gradients (planes never overlap)
__kernel void max_pool_bwd(const int planes, const int HW, const int HoWo,
                           __global const float *dy, const int dy_off, __global const int *argmax, const int a_off,
                           __global float *dx, const int dx_off, const int acc)
{
    const int p = get_global_id(0);
    if (p >= planes) return;
    __global float *dxp = dx + dx_off + (size_t)p * HW;
    if (!acc) for (int j = 0; j < HW; ++j) dxp[j] = 0.0f;
    const size_t base = (size_t)p * HoWo;
    for (int j = 0; j < HoWo; ++j) dxp[argmax[a_off + base + j]] += dy[dy_off + base + j];
}

// torch's divisor: the window clipped to the padded input (count_include_pad) or to the input
inline int pool_divisor(int h0, int w0, int H, int W, int kh, int kw, int ph, int pw, int include_pad)
{
    int h1 = min(h0 + kh, H + ph), w1 = min(w0 + kw, W + pw);
    const int padded = (h1 - h0) * (w1 - w0);
    if (include_pad) return padded;
    h0 = max(h0, 0); w0 = max(w0, 0);
    h1 = min(h1, H); w1 = min(w1, W);
    return (h1 - h0) * (w1 - w0);
}

__kernel void avg_pool(const int spatial, __global const float *x, const int x_off,
                       const int H, const int W, const int Ho, const int Wo,
                       const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                       const int include_pad, __global float *out, const int o_off)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= spatial) return;
    const int oh = j / Wo, ow = j - oh * Wo;
    const size_t i = (size_t)plane * spatial + j;
    __global const float *xp = x + x_off + (size_t)plane * H * W;
    const int h0 = oh * sh - ph, w0 = ow * sw - pw;
    float s = 0.0f;
    for (int h = max(h0, 0); h < min(h0 + kh, H); ++h)
        for (int w = max(w0, 0); w < min(w0 + kw, W); ++w) s += xp[h * W + w];
    out[o_off + i] = s / (float)pool_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad);
}

// one work-item per input element gathers from the outputs whose window holds it;
// launched as (H * W rounded up, N * C planes)
__kernel void avg_pool_bwd(const int spatial, __global const float *dy, const int dy_off,
                           const int H, const int W, const int Ho, const int Wo,
                           const int kh, const int kw, const int sh, const int sw, const int ph, const int pw,
                           const int include_pad, __global float *dx, const int dx_off, const int acc)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= spatial) return;
    const int h = j / W, w = j - h * W;
    const size_t i = (size_t)plane * spatial + j;
    __global const float *dyp = dy + dy_off + (size_t)plane * Ho * Wo;
    // outputs whose window [o*s - p, o*s - p + k) holds h
    const int oh_lo = max(0, (h + ph - kh + sh) / sh), oh_hi = min(Ho - 1, (h + ph) / sh);
    const int ow_lo = max(0, (w + pw - kw + sw) / sw), ow_hi = min(Wo - 1, (w + pw) / sw);
    float v = 0.0f;
    for (int oh = oh_lo; oh <= oh_hi; ++oh) {
        for (int ow = ow_lo; ow <= ow_hi; ++ow) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            if (h < h0 || h >= h0 + kh || w < w0 || w >= w0 + kw) continue;
            v += dyp[oh * Wo + ow] / (float)pool_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad);
        }
    }
    STORE(dx, dx_off + i, v, acc)
}

// Winograd F(2x2, 3x3) for stride-1 3x3 convolutions (the input gradient: the same on dy with
// the transposed, flipped taps): the output in 2x2 tiles, each from a 4x4 input patch, as 16
// GEMMs (one per transformed tap position xi) of the transformed weights U[xi] (M x K) with
// the transformed input V[xi] (K x T), T = N * th * tw tiles, then the 16 products M[xi]
// (M x T) transformed back: 16 multiply-adds per tile and channel pair instead of 36 (the
// transforms and the GEMMs run in one kernel, winograd_conv in gemm.cl).
// Dilation d: tile row a covers output rows (a % d) + d * (2 (a / d) + {0, 1}), whose taps lie
// d apart (likewise for columns), so each parity class of rows and columns is an ordinary
// stride-1 convolution of the input's rows and columns of that class.

// The taps of work-item (k, m) of a Winograd weights kernel with `positions` GEMM positions:
// g = w[m, k] (flip: w[k, m] turned by 180 degrees); returns where its first position goes in
// the packed panels ([positions][M/mr][K][mr]), *step apart, or NULL for a row past M (zeroed)
// or a work-item past K.
__global float *winograd_weights_slot(const int K, __global const float *restrict w, const int w_off,
                                      const int M, const int flip, const int mr, __global float *restrict u,
                                      const int u_off, const int positions, const int taps, float *g,
                                      size_t *step)
{
    const int k = get_global_id(0), m = get_global_id(1);
    if (k >= K) return 0;
    const int panels = get_global_size(1) / mr;
    __global float *dst = u + u_off + ((size_t)(m / mr) * K + k) * mr + m % mr;
    *step = (size_t)panels * mr * K;
    if (m >= M) {
        for (int xi = 0; xi < positions; ++xi) dst[xi * *step] = 0.0f;
        return 0;
    }
    __global const float *src = w + w_off + (flip ? ((size_t)k * M + m) * taps : ((size_t)m * K + k) * taps);
    for (int t = 0; t < taps; ++t) g[t] = src[flip ? taps - 1 - t : t];
    return dst;
}

// U[xi] = (G g G^T)[xi] for g = w[m, k] (flip: w[k, m] turned by 180 degrees), written in
// the packed GEMM's panel order [16][M/mr][K][mr] (rows past M zero). One work-item per
// (k, m); launched as (K rounded up, M rounded up to mr).
__kernel void winograd_weights(const int K, __global const float *restrict w, const int w_off,
                               const int M, const int flip, const int mr,
                               __global float *restrict u, const int u_off)
{
    float g[9];
    size_t xi_step;
    __global float *dst = winograd_weights_slot(K, w, w_off, M, flip, mr, u, u_off, 16, 9, g, &xi_step);
    if (!dst) return;
    float r[4][3];   // G g
    for (int j = 0; j < 3; ++j) {
        r[0][j] = g[j];
        r[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
        r[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
        r[3][j] = g[6 + j];
    }
    for (int i = 0; i < 4; ++i) {   // (G g) G^T
        dst[(4 * i) * xi_step] = r[i][0];
        dst[(4 * i + 1) * xi_step] = 0.5f * (r[i][0] + r[i][1] + r[i][2]);
        dst[(4 * i + 2) * xi_step] = 0.5f * (r[i][0] - r[i][1] + r[i][2]);
        dst[(4 * i + 3) * xi_step] = r[i][2];
    }
}

// Winograd F(2x2, 5x5), the same way: 2x2 output tiles from 6x6 input patches, 36 GEMMs
// (winograd5_conv in gemm.cl). G, B^T and A^T of Toom-Cook on the points 0, 1, -1, 2, -2 and
// infinity with B^T's rows scaled to a largest entry of 1 and G's rows by the inverse (the
// NumPy backend's _wg_matrices(2, 5): smaller float32 errors than the unscaled ones).
__constant float wg5_g[6][5] = {{1.25f, 0.0f, 0.0f, 0.0f, 0.0f},
                                {2.0f / 3, 2.0f / 3, 2.0f / 3, 2.0f / 3, 2.0f / 3},
                                {2.0f / 3, -2.0f / 3, 2.0f / 3, -2.0f / 3, 2.0f / 3},
                                {1.0f / 12, 1.0f / 6, 1.0f / 3, 2.0f / 3, 4.0f / 3},
                                {1.0f / 12, -1.0f / 6, 1.0f / 3, -2.0f / 3, 4.0f / 3},
                                {0.0f, 0.0f, 0.0f, 0.0f, 5.0f}};

// U[xi] = (G g G^T)[xi] for the 5x5 taps g (as winograd_weights), [36][M/mr][K][mr]
__kernel void winograd5_weights(const int K, __global const float *restrict w, const int w_off,
                                const int M, const int flip, const int mr,
                                __global float *restrict u, const int u_off)
{
    float g[25];
    size_t xi_step;
    __global float *dst = winograd_weights_slot(K, w, w_off, M, flip, mr, u, u_off, 36, 25, g, &xi_step);
    if (!dst) return;
    float r[6][5];   // G g
    for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 5; ++j) {
            float v = 0.0f;
            for (int t = 0; t < 5; ++t) v += wg5_g[i][t] * g[5 * t + j];
            r[i][j] = v;
        }
    for (int i = 0; i < 6; ++i)   // (G g) G^T
        for (int q = 0; q < 6; ++q) {
            float v = 0.0f;
            for (int t = 0; t < 5; ++t) v += r[i][t] * wg5_g[q][t];
            dst[(6 * i + q) * xi_step] = v;
        }
}

// A 3x3 stride-2 convolution is the sum of four stride-1 convolutions on the phase planes of
// the padded input (phase (a, b): rows a, a + 2, ..., columns b, b + 2, ...) with kernels of
// 2x2 (taps (0|2, 0|2)), 2x1 (taps (0|2, 1)), 1x2 (taps (1, 0|2)) and 1x1 (tap (1, 1)). Tiles of
// 2x2 outputs run the 2x2 one as Winograd F(2x2, 2x2) (BT rows d0 - d1, d1, d2 - d1; G rows g0,
// g0 + g1, g1; AT rows m0 + m1, m1 + m2), the 2x1 and 1x2 ones as F(2, 2) along their long side
// and the 1x1 one as is; AT's first and last columns are the identity's, so every product lands
// in one of the 3x3 positions (p, q): per position a GEMM over 4K (corners), 2K (edges) or K
// (centre) rows, 25 multiply-adds per tile and input channel instead of 36 (the NumPy
// backend's _s2_forward, the same scheme). A position's rows are its segments one after the
// other: phase 00, 01 (q even), 10 (p even), 11 (both even), K rows each.
// U[pos][m / mr][at * K + k][m % mr] for w[m, k], the packed GEMM's panel order (rows past M
// zero). One work-item per (k, panel of mr rows, mr <= 16), its mr rows as the lanes of float16
// vectors, each row of U stored as whole vectors: one work-item per (k, m) stored every value
// alone, and PoCL ran them lane by lane, a cost that showed in the ResNet's 32 -> 64 layer; launched as
// (K, M rounded up to mr, divided by mr).
__kernel void s2_weights(const int K, __global const float *restrict w, const int w_off,
                         const int M, const int mr, __global float *restrict u, const int u_off)
{
    const int k = get_global_id(0), panel = get_global_id(1);
    if (k >= K) return;
    const int panels = get_global_size(1);
    __global float *dst = u + u_off + ((size_t)panel * 4 * K + k) * mr;
    const size_t pos_step = (size_t)panels * mr * 4 * K, at_step = (size_t)K * mr;
    float16 g[9];
    for (int t = 0; t < 9; ++t) {
        float *gs = (float *)&g[t];
        for (int l = 0; l < 16; ++l) {
            const int m = panel * mr + l;
            gs[l] = l < mr && m < M ? w[w_off + ((size_t)m * K + k) * 9 + t] : 0.0f;
        }
    }
    float16 e[3][3];   // G (the 2x2 taps) G^T
    for (int j = 0; j < 3; j += 2) {
        e[0][j] = g[j]; e[1][j] = g[j] + g[6 + j]; e[2][j] = g[6 + j];
    }
    for (int i = 0; i < 3; ++i) e[i][1] = e[i][0] + e[i][2];
    const float16 v01[3] = {g[1], g[1] + g[7], g[7]}, v10[3] = {g[3], g[3] + g[5], g[5]};
#define S2W_STORE(v, at) { \
        __global float *r_ = row + (at) * at_step; \
        if (mr == 12) { *(__global float8_u *)r_ = (v).lo; *(__global float4_u *)(r_ + 8) = (v).s89ab; } \
        else { const float *vs_ = (const float *)&(v); for (int l = 0; l < mr; ++l) r_[l] = vs_[l]; } }
    for (int p = 0; p < 3; ++p)
        for (int q = 0; q < 3; ++q) {
            __global float *row = dst + (p * 3 + q) * pos_step;
            int at = 0;
            S2W_STORE(e[p][q], at++)
            if (q % 2 == 0) S2W_STORE(v01[p], at++)
            if (p % 2 == 0) S2W_STORE(v10[q], at++)
            if (p % 2 == 0 && q % 2 == 0) S2W_STORE(g[4], at)
        }
#undef S2W_STORE
}

// The 25 weight matrices of s2_winograd_data (gemm.cl): along each axis the taps' combinations
// w2, w0 + w2, w0, w1, w1 (the products P0..P4 there), packed like the GEMM's A panels as
// U[pos][M/mr][K][mr] with M = C, K = O; one work-item per (o, c).
__kernel void s2_data_weights(const int K, __global const float *restrict w, const int w_off,
                              const int M, const int mr, __global float *restrict u, const int u_off)
{
    const int k = get_global_id(0), m = get_global_id(1);
    if (k >= K) return;
    const int panels = get_global_size(1) / mr;
    __global float *dst = u + u_off + ((size_t)(m / mr) * K + k) * mr + m % mr;
    const size_t pos_step = (size_t)panels * mr * K;
    float g[9];
    for (int t = 0; t < 9; ++t) g[t] = m < M ? w[w_off + ((size_t)k * M + m) * 9 + t] : 0.0f;
    float e[5][3];   // along the rows
    for (int j = 0; j < 3; ++j) {
        e[0][j] = g[6 + j]; e[1][j] = g[j] + g[6 + j]; e[2][j] = g[j]; e[3][j] = e[4][j] = g[3 + j];
    }
    for (int a = 0; a < 5; ++a) {
        const float f[5] = {e[a][2], e[a][0] + e[a][2], e[a][0], e[a][1], e[a][1]};
        for (int b = 0; b < 5; ++b) dst[(a * 5 + b) * pos_step] = f[b];
    }
}

// Strided (and dilated) direct forward pass on AVX2-class devices: the input is first laid out
// per channel as sh x sw zero-padded phase planes (pad_phases: phase (a, b) holds the padded
// input's rows a, a + sh, ... and columns b, b + sw, ...), so tap (ki, kj) of consecutive
// outputs reads consecutive values of phase ((ki dh) % sh, (kj dw) % sw) from row (ki dh) / sh,
// column (kj dw) / sw on: whole-vector loads where the plain direct kernel gathers lane by
// lane. Phase planes are Hq x Wq, Hq = Ho + (kh - 1) dh / sh, Wq = Wo + (kw - 1) dw / sw.
// One work-item per plane; launched as (N * C).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void pad_phases(const int H, const int W, __global const float *restrict src, const int s_off,
                const int sh, const int sw, const int ph, const int pw, const int Hq, const int Wq,
                __global float *restrict dst)
{
    const int plane = get_global_id(0);
    phase_planes_global(dst + (size_t)plane * sh * sw * Hq * Wq, src + s_off + (size_t)plane * H * W, H, W, sh, sw,
                        ph, pw, Hq, Wq);
}

// taps of the phased kernel's offset table (private memory)
#define PHASED_MAX_TAPS 64

// y[n, o .. o + 4 per) = bias + the convolution of the phase planes xq (pad_phases), 4 outputs x
// 3 vectors at a time as DIRECT_FLAT; each work-item takes `per` runs of 4 outputs over each
// block of vectors, channel chunk by chunk (cstep channels), so the input a block reads from a
// chunk stays in L1 cache while all its runs use it (the partial sums wait in y between
// chunks). Launched as (N * O / (4 per)); 4 per divides the outputs per group.
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_direct_fwd4_phased(__global const float *restrict xq, __global const float *restrict w, const int w_off,
                             __global float *restrict y, const int y_off,
                             const int C, const int Hq, const int Wq, const int O, const int Ho, const int Wo,
                             const int cg, const int og, const int kh, const int kw,
                             const int sh, const int sw, const int dh, const int dw, const int per, const int cstep,
                             __global const float *restrict bias, const int b_off, const int has_bias,
                             __global const float *restrict res, const int r_off, const int epilogue)
{
    const int first0 = get_global_id(0) * 4 * per, flip = 0;
    const size_t phase = (size_t)Hq * Wq, chan = (size_t)sh * sw * phase;
    int toff[PHASED_MAX_TAPS];   // where each tap's reads start in a channel's phases
    for (int ki = 0; ki < kh; ++ki)
        for (int kj = 0; kj < kw; ++kj) {
            const int a = ki * dh, b = kj * dw;
            toff[ki * kw + kj] = ((a % sh) * sw + b % sw) * phase + (a / sh) * Wq + b / sw;
        }
    const int per_row = (Wo + VEC - 1) / VEC, vectors = Ho * per_row;
    for (int v0 = 0; v0 < vectors; v0 += 3) {
        const int vi0 = min(v0, vectors - 1), vi1 = min(v0 + 1, vectors - 1), vi2 = min(v0 + 2, vectors - 1);
        const int r0 = vi0 / per_row, r1 = vi1 / per_row, r2 = vi2 / per_row;
        const int c0 = (vi0 - r0 * per_row) * VEC, c1 = (vi1 - r1 * per_row) * VEC, c2 = (vi2 - r2 * per_row) * VEC;
        const int xo0 = r0 * Wq + c0, xo1 = r1 * Wq + c1, xo2 = r2 * Wq + c2;
        for (int ch0 = 0; ch0 < cg; ch0 += cstep) {
            const int ch1 = min(cg, ch0 + cstep);
            for (int run = 0; run < per; ++run) {
                const int first = first0 + run * 4;
                DIRECT_SETUP(4)
                __global const float *x0 = xq + (size_t)(n * C + g * cg) * chan;
                const int acc = ch0 > 0;   /* later chunks add to the partial sums */
                const int epi = ch1 == cg ? epilogue : 0;   /* on the final sums only */
                DIRECT_SUMS(0) DIRECT_SUMS(1) DIRECT_SUMS(2)
                if (acc) {
                    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = (floatv)(0.0f);
                }
                for (int ci = ch0; ci < ch1; ++ci) {
                    __global const float *xc = x0 + ci * chan;
                    __global const float *wr = w0p + ci * w_ci;
                    for (int t = 0; t < taps; ++t) {
                        __global const float *xv = xc + toff[t];
                        const floatv x0v = LOAD_UNIT(xv + xo0), x1v = LOAD_UNIT(xv + xo1), x2v = LOAD_UNIT(xv + xo2);
                        DIRECT_FLAT_FMA(0, 0) DIRECT_FLAT_FMA(1, w_o) DIRECT_FLAT_FMA(2, 2 * w_o) DIRECT_FLAT_FMA(3, 3 * w_o)
                    }
                }
                DIRECT_FLAT_STORE(0, 4) DIRECT_FLAT_STORE(1, 4) DIRECT_FLAT_STORE(2, 4)
            }
        }
    }
}

// conv2d's inference batch norm folded into its weights and bias, so that the convolution's
// stores apply it: wf[o] = w[o] * sc, shift[o] = (bias[o] - mean[o]) * sc + beta[o] with
// sc = gamma[o] / sqrt(var[o] + eps) (gamma, beta, bias optional). One work-item per output
// channel, its K weights along the loop. Launched as (O).
__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void conv_fold_norm(const int K, __global const float *w, const int w_off,
                    __global const float *gamma, const int g_off, const int has_gamma,
                    __global const float *beta, const int be_off, const int has_beta,
                    __global const float *mean, const int m_off, __global const float *var, const int v_off,
                    const float eps, __global const float *bias, const int b_off, const int has_bias,
                    __global float *wf, const int wf_off, __global float *shift, const int s_off)
{
    const int o = get_global_id(0);
    const float sc = (has_gamma ? gamma[g_off + o] : 1.0f) / sqrt(var[v_off + o] + eps);
    __global const float *src = w + w_off + (size_t)o * K;
    __global float *dst = wf + wf_off + (size_t)o * K;
    for (int k = 0; k < K; ++k) dst[k] = src[k] * sc;
    shift[s_off + o] = ((has_bias ? bias[b_off + o] : 0.0f) - mean[m_off + o]) * sc + (has_beta ? beta[be_off + o] : 0.0f);
}

// global average pooling (window = plane, no padding): one work-item per plane sums it, in
// work-groups of planes; the general kernel ran a work-group per plane with one live item of 8
__kernel void avg_pool_global(const int planes, __global const float *x, const int x_off, const int S,
                              __global float *out, const int o_off)
{
    const int plane = get_global_id(0);
    if (plane >= planes) return;
    __global const float *xp = x + x_off + (size_t)plane * S;
    float s = 0.0f;
    for (int j = 0; j < S; ++j) s += xp[j];
    out[o_off + plane] = s / (float)S;
}

// the input gradient of a global average pooling (the window is the whole plane, no padding):
// dx[p, j] (+)= dy[p] / S. Launched as (S rounded up, planes).
__kernel void avg_pool_global_bwd(const int S, __global const float *dy, const int dy_off,
                                  __global float *dx, const int dx_off, const int acc)
{
    const int j = get_global_id(0), plane = get_global_id(1);
    if (j >= S) return;
    STORE(dx, dx_off + (size_t)plane * S + j, dy[dy_off + plane] / (float)S, acc)
}
