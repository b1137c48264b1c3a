/* Convolution kernels for the NumPy backend: im2col/col2im straight from and to NCHW planes
 * (padding handled in the copy, no padded copy of the input), and direct depthwise kernels
 * (a GEMM with an inner dimension of kh*kw wastes most of its work on packing).
 * Optional: setup.py builds it where a C compiler exists; spatial.py falls back to its NumPy
 * versions otherwise or when JUICEPY_CPU_KERNELS=numpy.
 *
 * Every kernel takes a range (samples, planes or channels) so spatial.py can split one call
 * over threads; the GIL is released inside. Sums run in a fixed order (no thread-dependent
 * reductions), so results do not depend on the lane count.
 */
#include "_kernels.h"

typedef Py_ssize_t I;

/* One convolution: input planes C x H x W, kernel kh x kw, output Ho x Wo. */
typedef struct {
    I c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
} Geometry;

/* Output columns q in [*lo, *hi) read input column q*sw + offset inside [0, w). */
static void valid_columns(I offset, I sw, I w, I wo, I *lo, I *hi)
{
    I a = offset >= 0 ? 0 : (-offset + sw - 1) / sw;
    I b = w - 1 - offset < 0 ? 0 : (w - 1 - offset) / sw + 1;
    if (b > wo) b = wo;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* The stride-2 shuffle of a vector of V: the even elements of the first vector, then the odd
 * ones of the second (which starts one element early) */
typedef int vi32x16 __attribute__((vector_size(64)));
typedef int vi32x4_mask __attribute__((vector_size(16)));
typedef long long vi64x2_mask __attribute__((vector_size(16)));
typedef long long vi64x4_mask __attribute__((vector_size(32)));
typedef long long vi64x8_mask __attribute__((vector_size(64)));
#define EVENS_vf32x16 ((vi32x16){0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31})
#define EVENS_vf32x8 ((vi32x8){0, 2, 4, 6, 9, 11, 13, 15})
#define EVENS_vf32x4 ((vi32x4_mask){0, 2, 5, 7})
#define EVENS_vf64x8 ((vi64x8_mask){0, 2, 4, 6, 9, 11, 13, 15})
#define EVENS_vf64x4 ((vi64x4_mask){0, 2, 5, 7})
#define EVENS_vf64x2 ((vi64x2_mask){0, 3})
/* and the inverse: two vectors' first halves (LO) or second halves (HI) lane by lane, e[0], o[0],
 * e[1], o[1], ... */
#define INTERLEAVE_LO_vf32x16 ((vi32x16){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define INTERLEAVE_HI_vf32x16 ((vi32x16){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#define INTERLEAVE_LO_vf32x8 ((vi32x8){0, 8, 1, 9, 2, 10, 3, 11})
#define INTERLEAVE_HI_vf32x8 ((vi32x8){4, 12, 5, 13, 6, 14, 7, 15})
#define INTERLEAVE_LO_vf32x4 ((vi32x4_mask){0, 4, 1, 5})
#define INTERLEAVE_HI_vf32x4 ((vi32x4_mask){2, 6, 3, 7})
#define INTERLEAVE_LO_vf64x8 ((vi64x8_mask){0, 8, 1, 9, 2, 10, 3, 11})
#define INTERLEAVE_HI_vf64x8 ((vi64x8_mask){4, 12, 5, 13, 6, 14, 7, 15})
#define INTERLEAVE_LO_vf64x4 ((vi64x4_mask){0, 4, 1, 5})
#define INTERLEAVE_HI_vf64x4 ((vi64x4_mask){2, 6, 3, 7})
#define INTERLEAVE_LO_vf64x2 ((vi64x2_mask){0, 2})
#define INTERLEAVE_HI_vf64x2 ((vi64x2_mask){1, 3})
/* the even and the odd elements of two consecutive vectors (a row of 2 x lanes values); the
 * first lane of a then b's lanes but its last (SHIFT_IN: b one lane later, a's value in front);
 * a's lanes but its first, then b's first (SHIFT_OUT: a one lane earlier, b's value behind) */
#define EVEN_LANES_vf32x16 ((vi32x16){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define ODD_LANES_vf32x16 ((vi32x16){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#define SHIFT_IN_vf32x16 ((vi32x16){0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30})
#define SHIFT_OUT_vf32x16 ((vi32x16){1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
#define EVEN_LANES_vf32x8 ((vi32x8){0, 2, 4, 6, 8, 10, 12, 14})
#define ODD_LANES_vf32x8 ((vi32x8){1, 3, 5, 7, 9, 11, 13, 15})
#define SHIFT_IN_vf32x8 ((vi32x8){0, 8, 9, 10, 11, 12, 13, 14})
#define SHIFT_OUT_vf32x8 ((vi32x8){1, 2, 3, 4, 5, 6, 7, 8})
#define EVEN_LANES_vf32x4 ((vi32x4_mask){0, 2, 4, 6})
#define ODD_LANES_vf32x4 ((vi32x4_mask){1, 3, 5, 7})
#define SHIFT_IN_vf32x4 ((vi32x4_mask){0, 4, 5, 6})
#define SHIFT_OUT_vf32x4 ((vi32x4_mask){1, 2, 3, 4})
#define EVEN_LANES_vf64x8 ((vi64x8_mask){0, 2, 4, 6, 8, 10, 12, 14})
#define ODD_LANES_vf64x8 ((vi64x8_mask){1, 3, 5, 7, 9, 11, 13, 15})
#define SHIFT_IN_vf64x8 ((vi64x8_mask){0, 8, 9, 10, 11, 12, 13, 14})
#define SHIFT_OUT_vf64x8 ((vi64x8_mask){1, 2, 3, 4, 5, 6, 7, 8})
#define EVEN_LANES_vf64x4 ((vi64x4_mask){0, 2, 4, 6})
#define ODD_LANES_vf64x4 ((vi64x4_mask){1, 3, 5, 7})
#define SHIFT_IN_vf64x4 ((vi64x4_mask){0, 4, 5, 6})
#define SHIFT_OUT_vf64x4 ((vi64x4_mask){1, 2, 3, 4})
#define EVEN_LANES_vf64x2 ((vi64x2_mask){0, 2})
#define ODD_LANES_vf64x2 ((vi64x2_mask){1, 3})
#define SHIFT_IN_vf64x2 ((vi64x2_mask){0, 2})
#define SHIFT_OUT_vf64x2 ((vi64x2_mask){1, 2})

/* d[q] = src[2q] for q from ``q`` on, a vector of V at a time while whole vectors fit below
 * ``hi``: two loads and one shuffle each, neither reading past src[2(hi - 1)] (instead of an
 * element loop, docs/numpy.md); leaves ``q`` at the first value not copied. */
#define EVERY_OTHER(V, T, d, src, q, hi)                                                       \
    for (const I lanes_ = (I)(sizeof(V) / sizeof(T)); (q) + lanes_ <= (hi); (q) += lanes_) {    \
        const V e_ = __builtin_shuffle(LOADV(V, (src) + 2 * (q)), LOADV(V, (src) + 2 * (q) + lanes_ - 1), \
                                       EVENS_##V);                                            \
        memcpy((d) + (q), &e_, sizeof e_);                                                    \
    }

/* EVERY_OTHER's inverse: d[2u] (+)= e[u] and d[2u + 1] (+)= o[u] for u from ``u`` on, two
 * vectors of V at a time while whole vectors fit below ``n`` (two shuffles, no strided store
 * per value); leaves ``u`` at the first pair not written. */
#define INTERLEAVE(V, T, d, e, o, u, n, accumulate)                                            \
    for (const I lanes_ = (I)(sizeof(V) / sizeof(T)); (u) + lanes_ <= (n); (u) += lanes_) {     \
        const V e_ = LOADV(V, (e) + (u)), o_ = LOADV(V, (o) + (u));                            \
        V lo_ = __builtin_shuffle(e_, o_, INTERLEAVE_LO_##V), hi_ = __builtin_shuffle(e_, o_, INTERLEAVE_HI_##V); \
        if (accumulate) {                                                                     \
            lo_ += LOADV(V, (d) + 2 * (u));                                                   \
            hi_ += LOADV(V, (d) + 2 * (u) + lanes_);                                          \
        }                                                                                     \
        memcpy((d) + 2 * (u), &lo_, sizeof lo_);                                              \
        memcpy((d) + 2 * (u) + lanes_, &hi_, sizeof hi_);                                     \
    }

/* n outputs from input row `row` of a plane: d[q] = plane[row, q*sw + offset] for q in [lo, hi)
 * (valid_columns), 0 outside and for a row outside [0, h) (im2col's rows). Stride 2 a 16-byte
 * vector at a time (EVERY_OTHER). */
#define DEFINE_STRIDED_ROW(NAME, T, V)                                                         \
    static inline void NAME(T *restrict d, const T *restrict plane, I row, const Geometry *g, I n, \
                            I lo, I hi, I offset)                                              \
    {                                                                                          \
        if (row < 0 || row >= g->h) {                                                         \
            memset(d, 0, (size_t)n * sizeof(T));                                              \
            return;                                                                           \
        }                                                                                     \
        const T *src = plane + row * g->w;                                                    \
        const I sw = g->sw;                                                                   \
        for (I q = 0; q < lo; q++) d[q] = 0;                                                  \
        if (sw == 1)                                                                          \
            memcpy(d + lo, src + lo + offset, (size_t)(hi - lo) * sizeof(T));                 \
        else if (sw == 2) {                                                                   \
            const T *from = src + offset;                                                     \
            I q = lo;                                                                         \
            EVERY_OTHER(V, T, d, from, q, hi)                                                 \
            for (; q < hi; q++) d[q] = from[2 * q];                                           \
        } else                                                                                \
            for (I q = lo; q < hi; q++) d[q] = src[q * sw + offset];                          \
        for (I q = hi; q < n; q++) d[q] = 0;                                                  \
    }

DEFINE_STRIDED_ROW(strided_row_f32, float, vf32x4)
DEFINE_STRIDED_ROW(strided_row_f64, double, vf64x2)

/* cols[(n - n0)*sn + ((c*kh + i)*kw + j)*sk + (ho - r0)*Wo + q] = x[n, c, ho*sh + i*dh - ph,
 * q*sw + j*dw - pw] (0 in the padding), for samples [n0, n1) and output rows [r0, r1). */
#define DEFINE_IM2COL(NAME, T, ROW)                                                               \
    VECTOR_CLONES static void NAME(const T *restrict x, T *restrict cols, const Geometry *g,  \
                                   I n0, I n1, I r0, I r1, I sn, I sk)                        \
    {                                                                                          \
        const I rows = r1 - r0;                                                               \
        for (I n = n0; n < n1; n++)                                                           \
            for (I c = 0; c < g->c; c++) {                                                    \
                const T *plane = x + (n * g->c + c) * g->h * g->w;                            \
                for (I i = 0; i < g->kh; i++)                                                 \
                    for (I j = 0; j < g->kw; j++) {                                           \
                        T *dst = cols + (n - n0) * sn + ((c * g->kh + i) * g->kw + j) * sk;   \
                        const I offset = j * g->dw - g->pw;                                   \
                        I lo, hi;                                                             \
                        valid_columns(offset, g->sw, g->w, g->wo, &lo, &hi);                  \
                        for (I r = 0; r < rows; r++) {                                        \
                            T *d = dst + r * g->wo;                                           \
                            const I row = (r0 + r) * g->sh + i * g->dh - g->ph;               \
                            ROW(d, plane, row, g, g->wo, lo, hi, offset);                     \
                        }                                                                     \
                    }                                                                         \
            }                                                                                 \
    }

DEFINE_IM2COL(im2col_f32, float, strided_row_f32)
DEFINE_IM2COL(im2col_f64, double, strided_row_f64)

/* The adjoint of im2col over whole samples [n0, n1): dx[n] (+)= every column added back to
 * the input position it was read from (padding positions dropped). */
#define DEFINE_COL2IM(NAME, T)                                                                 \
    VECTOR_CLONES static void NAME(const T *restrict cols, T *restrict dx, const Geometry *g, \
                                   I n0, I n1, I sn, I sk, int accumulate)                    \
    {                                                                                          \
        for (I n = n0; n < n1; n++)                                                           \
            for (I c = 0; c < g->c; c++) {                                                    \
                T *plane = dx + (n * g->c + c) * g->h * g->w;                                 \
                if (!accumulate) memset(plane, 0, (size_t)(g->h * g->w) * sizeof(T));         \
                for (I i = 0; i < g->kh; i++)                                                 \
                    for (I j = 0; j < g->kw; j++) {                                           \
                        const T *src = cols + (n - n0) * sn + ((c * g->kh + i) * g->kw + j) * sk; \
                        const I offset = j * g->dw - g->pw;                                   \
                        I lo, hi;                                                             \
                        valid_columns(offset, g->sw, g->w, g->wo, &lo, &hi);                  \
                        for (I r = 0; r < g->ho; r++) {                                       \
                            const I row = r * g->sh + i * g->dh - g->ph;                      \
                            if (row < 0 || row >= g->h) continue;                             \
                            T *d = plane + row * g->w;                                        \
                            const T *s = src + r * g->wo;                                     \
                            if (g->sw == 1)                                                   \
                                for (I q = lo; q < hi; q++) d[q + offset] += s[q];            \
                            else                                                              \
                                for (I q = lo; q < hi; q++) d[q * g->sw + offset] += s[q];    \
                        }                                                                     \
                    }                                                                         \
            }                                                                                 \
    }

DEFINE_COL2IM(col2im_f32, float)
DEFINE_COL2IM(col2im_f64, double)

/* where dx row ``row``'s columns 2k + t (t = 0, 1) sit in the phase buffer: padded row
 * row + ph, padded column 2k + t + pw, so phase ((row + ph) % 2, (t + pw) % 2) */
#define PHASE_ROW(row, t)                                                                      \
    (buf + (((row) + g->ph) & 1) * 2 * phase + (((row) + g->ph) >> 1) * wq                    \
     + ((g->pw + (t)) & 1) * phase + ((g->pw + (t)) >> 1))
/* col2im for stride 2 in both directions: each column row is added whole, as contiguous
 * vectors, into one of the four phase planes of the padded plane (phase (a, b) holds padded
 * rows a, a + 2, ... and columns b, b + 2, ...; tap (i, j) lands in phase (i*dh % 2, j*dw % 2)
 * at offset (i*dh / 2, j*dw / 2)), and the phases are interleaved back into dx once per plane,
 * instead of every value being added on its own two values apart. Every dx value gets the
 * same additions in the same tap order as col2im (starting from 0, or from dx with
 * ``accumulate``), so the bits are col2im's. ``buf`` holds the four phase planes
 * (col2im_phase_items), the caller's scratch. */
static I col2im_phase_items(const Geometry *g)
{
    return 4 * ((g->h + 2 * g->ph + 1) / 2) * ((g->w + 2 * g->pw + 1) / 2);
}

#define DEFINE_COL2IM_PHASES(NAME, T)                                                          \
    VECTOR_CLONES static void NAME(const T *restrict cols, T *restrict dx, T *restrict buf,   \
                                   const Geometry *g, I n0, I n1, I sn, I sk, int accumulate) \
    {                                                                                          \
        const I hq = (g->h + 2 * g->ph + 1) / 2, wq = (g->w + 2 * g->pw + 1) / 2;              \
        const I phase = hq * wq;                                                              \
        for (I n = n0; n < n1; n++)                                                           \
            for (I c = 0; c < g->c; c++) {                                                    \
                T *plane = dx + (n * g->c + c) * g->h * g->w;                                 \
                memset(buf, 0, (size_t)(4 * phase) * sizeof(T));                              \
                if (accumulate)                                                               \
                    for (I row = 0; row < g->h; row++) {                                      \
                        T *restrict p0 = PHASE_ROW(row, 0), *restrict p1 = PHASE_ROW(row, 1); \
                        const T *src = plane + row * g->w;                                    \
                        for (I k = 0; k < g->w / 2; k++) {                                    \
                            p0[k] = src[2 * k];                                               \
                            p1[k] = src[2 * k + 1];                                           \
                        }                                                                     \
                        if (g->w & 1) p0[g->w / 2] = src[g->w - 1];                           \
                    }                                                                         \
                for (I i = 0; i < g->kh; i++)                                                 \
                    for (I j = 0; j < g->kw; j++) {                                           \
                        const T *restrict src = cols + (n - n0) * sn + ((c * g->kh + i) * g->kw + j) * sk; \
                        const I a = i * g->dh, b = j * g->dw;                                 \
                        T *restrict dst = buf + ((a & 1) * 2 + (b & 1)) * phase + (a >> 1) * wq + (b >> 1); \
                        for (I r = 0; r < g->ho; r++)                                         \
                            for (I q = 0; q < g->wo; q++) dst[r * wq + q] += src[r * g->wo + q]; \
                    }                                                                         \
                for (I row = 0; row < g->h; row++) {                                          \
                    const T *restrict p0 = PHASE_ROW(row, 0), *restrict p1 = PHASE_ROW(row, 1); \
                    T *restrict d = plane + row * g->w;                                       \
                    for (I k = 0; k < g->w / 2; k++) {                                        \
                        d[2 * k] = p0[k];                                                     \
                        d[2 * k + 1] = p1[k];                                                 \
                    }                                                                         \
                    if (g->w & 1) d[g->w - 1] = p0[g->w / 2];                                 \
                }                                                                             \
            }                                                                                 \
    }

DEFINE_COL2IM_PHASES(col2im_phases_f32, float)
DEFINE_COL2IM_PHASES(col2im_phases_f64, double)

/* out[p] += bias[p % C] over planes p in [p0, p1) of ``inner`` values each (p = n*C + c). */
#define DEFINE_BIAS_ADD(NAME, T)                                                               \
    VECTOR_CLONES static void NAME(T *restrict out, const T *restrict bias, I c, I inner,     \
                                   I p0, I p1)                                                \
    {                                                                                          \
        for (I p = p0; p < p1; p++) {                                                         \
            const T b = bias[p % c];                                                          \
            T *o = out + p * inner;                                                           \
            for (I i = 0; i < inner; i++) o[i] += b;                                          \
        }                                                                                     \
    }

DEFINE_BIAS_ADD(bias_add_f32, float)
DEFINE_BIAS_ADD(bias_add_f64, double)

/* A convolution's output epilogue on values [i0, i1) of planes [p0, p1) (p = n*C + c):
 * out = out * scale[c] + shift[c] (scale or shift NULL: 1 or 0), plus res at the same place
 * (a residual block's skip input; NULL: none), then v < 0 ? 0 : v where
 * ``relu`` (NaN stays NaN, as np.maximum). Run on a chunk of output right after its GEMM or
 * transform wrote it, while it is still in cache: a folded batch norm, a bias and a ReLU cost
 * no pass of their own over the output. */
#define DEFINE_EPILOGUE(NAME, T)                                                               \
    VECTOR_CLONES static void NAME(T *restrict out, const T *restrict scale,                  \
                                   const T *restrict shift, const T *restrict res, I c,       \
                                   I inner, I p0, I p1, I i0, I i1, int relu)                 \
    {                                                                                          \
        for (I p = p0; p < p1; p++) {                                                         \
            const T a = scale ? scale[p % c] : (T)1, b = shift ? shift[p % c] : (T)0;         \
            T *o = out + p * inner;                                                           \
            const T *q = res ? res + p * inner : NULL;                                        \
            if (q && relu)                                                                    \
                for (I i = i0; i < i1; i++) {                                                 \
                    const T v = (o[i] * a + b) + q[i];                                        \
                    o[i] = v < 0 ? (T)0 : v;                                                  \
                }                                                                             \
            else if (q)                                                                       \
                for (I i = i0; i < i1; i++) o[i] = (o[i] * a + b) + q[i];                     \
            else if (relu)                                                                    \
                for (I i = i0; i < i1; i++) {                                                 \
                    const T v = o[i] * a + b;                                                 \
                    o[i] = v < 0 ? (T)0 : v;                                                  \
                }                                                                             \
            else                                                                              \
                for (I i = i0; i < i1; i++) o[i] = o[i] * a + b;                              \
        }                                                                                     \
    }

DEFINE_EPILOGUE(epilogue_f32, float)
DEFINE_EPILOGUE(epilogue_f64, double)

/* db[ch] (+)= the sum of dy over samples and positions, channels [c0, c1). Each plane sums
 * into 16 independent running sums (vectorised without reassociating), folded in a fixed
 * order, and the planes add up in sample order in double: the bits never depend on how the
 * channels are split over threads. The samples are the outer loop over blocks of channels,
 * so a block's planes of one sample are read as one contiguous run (one plane per channel
 * and sample, a stride of C planes apart, starves the prefetcher on small planes). */
#define BIAS_SUMS 16
#define BIAS_BLOCK 64
#define DEFINE_BIAS_GRAD(NAME, T)                                                              \
    VECTOR_CLONES static void NAME(const T *restrict dy, T *restrict db, I n, I c, I inner,   \
                                   I c0, I c1, int accumulate)                                \
    {                                                                                          \
        double totals[BIAS_BLOCK];                                                            \
        for (I b0 = c0; b0 < c1; b0 += BIAS_BLOCK) {                                          \
            const I b1 = b0 + BIAS_BLOCK < c1 ? b0 + BIAS_BLOCK : c1;                         \
            for (I ch = b0; ch < b1; ch++) totals[ch - b0] = 0;                               \
            for (I s = 0; s < n; s++)                                                         \
                for (I ch = b0; ch < b1; ch++) {                                              \
                    const T *src = dy + (s * c + ch) * inner;                                 \
                    T acc[BIAS_SUMS] = {0};                                                   \
                    I i = 0;                                                                  \
                    for (; i + BIAS_SUMS <= inner; i += BIAS_SUMS)                            \
                        for (int u = 0; u < BIAS_SUMS; u++) acc[u] += src[i + u];             \
                    T sum = 0;                                                                \
                    for (; i < inner; i++) sum += src[i];                                     \
                    for (int u = 0; u < BIAS_SUMS; u++) sum += acc[u];                        \
                    totals[ch - b0] += sum;                                                   \
                }                                                                             \
            for (I ch = b0; ch < b1; ch++)                                                    \
                db[ch] = accumulate ? (T)(db[ch] + totals[ch - b0]) : (T)totals[ch - b0];     \
        }                                                                                     \
    }

DEFINE_BIAS_GRAD(bias_grad_f32, float)
DEFINE_BIAS_GRAD(bias_grad_f64, double)

/* dx[p] (+)= each tap times dy[p], added back where the tap read, any stride, planes [p0, p1). */
#define DEFINE_DEPTHWISE_BACKWARD_DATA(NAME, T)                                                \
    VECTOR_CLONES static void NAME(const T *restrict dy, const T *restrict w, T *restrict dx, \
                                   const Geometry *g, I p0, I p1, int accumulate)             \
    {                                                                                          \
        for (I p = p0; p < p1; p++) {                                                         \
            T *plane = dx + p * g->h * g->w;                                                  \
            const T *taps = w + (p % g->c) * g->kh * g->kw;                                   \
            if (!accumulate) memset(plane, 0, (size_t)(g->h * g->w) * sizeof(T));             \
            for (I r = 0; r < g->ho; r++) {                                                   \
                const T *s = dy + (p * g->ho + r) * g->wo;                                    \
                for (I i = 0; i < g->kh; i++) {                                               \
                    const I row = r * g->sh + i * g->dh - g->ph;                              \
                    if (row < 0 || row >= g->h) continue;                                     \
                    T *d = plane + row * g->w;                                                \
                    for (I j = 0; j < g->kw; j++) {                                           \
                        const I offset = j * g->dw - g->pw;                                   \
                        const T tap = taps[i * g->kw + j];                                    \
                        I lo, hi;                                                             \
                        valid_columns(offset, g->sw, g->w, g->wo, &lo, &hi);                  \
                        for (I q = lo; q < hi; q++) d[q * g->sw + offset] += tap * s[q];      \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_DEPTHWISE_BACKWARD_DATA(depthwise_backward_data_f32, float)
DEFINE_DEPTHWISE_BACKWARD_DATA(depthwise_backward_data_f64, double)

/* Stride 1 depthwise on a padded grid: each plane is copied, zero-padded, into a (Hp x Wp)
 * buffer, and the output is computed at every column of that width (Ho x Wp, the last Wp - Wo
 * columns dropped), so each tap is one long shifted multiply-add over blocks of four vectors
 * whose sums stay in registers, instead of a short loop per row. The backward data pass is
 * the same kernel on dy with the taps flipped and padding (k - 1)*d - p. */
/* The grid kernels below use GCC vector types, which a target_clones build would lower to the
 * same width on every target (a 64-byte vector on AVX2 goes through the stack, element by
 * element). So each is built three times instead, with the vector width and register blocking
 * of its instruction set, and the widest one the CPU runs is picked at module load (isa). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define ISA_512 __attribute__((target("avx512f,avx2,fma")))
#define ISA_256 __attribute__((target("avx2,fma")))
#define ISA_128
/* AVX-512 with the 256-bit forms (VL): 8-lane vectors in 32 registers */
#define ISA_512VL __attribute__((target("avx512f,avx512vl,avx2,fma")))
#else
#define ISA_512
#define ISA_256
#define ISA_128
#define ISA_512VL
#endif
/* 2: AVX-512 (with FMA), 1: AVX2 with FMA, 0: baseline x86-64 (or another architecture) */
static int isa = 0;
/* whether the CPU runs AVX-512's 256-bit forms (direct_half) */
static int avx512vl = 0;
#define ISA_CALL(NAME, ...) ISA_CALL_AT(isa, NAME, __VA_ARGS__)
/* the build of instruction set LEVEL (<= isa) */
#define ISA_CALL_AT(LEVEL, NAME, ...) \
    ((LEVEL) == 2 ? NAME##_512(__VA_ARGS__) : (LEVEL) == 1 ? NAME##_256(__VA_ARGS__) : NAME##_128(__VA_ARGS__))
#define VLANES(V, T) ((I)(sizeof(V) / sizeof(T)))
/* DEFINE (a kernel's macro) for each instruction set and dtype, NAME_f32_512 .. NAME_f64_128:
 * DEFINE(NAME_<type>_<ISA>, ISA_<ISA>, T, V) at that instruction set's vector width, for the
 * kernels built from just those (the others take blocking sizes too) */
#define EACH_ISA_AND_TYPE(DEFINE, NAME)                                                        \
    DEFINE(NAME##_f32_512, ISA_512, float, vf32x16)                                            \
    DEFINE(NAME##_f64_512, ISA_512, double, vf64x8)                                            \
    DEFINE(NAME##_f32_256, ISA_256, float, vf32x8)                                             \
    DEFINE(NAME##_f64_256, ISA_256, double, vf64x4)                                            \
    DEFINE(NAME##_f32_128, ISA_128, float, vf32x4)                                             \
    DEFINE(NAME##_f64_128, ISA_128, double, vf64x2)
#define BLOCK(V, T) (4 * VLANES(V, T))

/* The first n values at p in a vector of V, zeros after them (LOAD_FIRST), and v's first n lanes
 * stored at p (STORE_FIRST), 0 < n < the vector's lanes (a row's partial last vector): nothing
 * read or written past them. Masked loads and stores on AVX-512 and AVX2, value by value on the
 * baseline build. */
#define LOAD_FIRST(V, p, n) load_first_##V((p), (n))
#define STORE_FIRST(V, p, v, n) store_first_##V((p), (v), (n))
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
ISA_512 static inline vf32x16 load_first_vf32x16(const float *p, I n)
{
    return (vf32x16)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
ISA_512 static inline void store_first_vf32x16(float *p, vf32x16 v, I n)
{
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
}
ISA_512 static inline vf64x8 load_first_vf64x8(const double *p, I n)
{
    return (vf64x8)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
}
ISA_512 static inline void store_first_vf64x8(double *p, vf64x8 v, I n)
{
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
}
/* all ones in the lanes below n */
#define FIRST_LANES_32X8(n) ((__m256i)((vi32x8){0, 1, 2, 3, 4, 5, 6, 7} < (vi32x8){0} + (int)(n)))
#define FIRST_LANES_64X4(n) ((__m256i)((vi64x4_mask){0, 1, 2, 3} < (vi64x4_mask){0} + (long long)(n)))
ISA_256 static inline vf32x8 load_first_vf32x8(const float *p, I n)
{
    return (vf32x8)_mm256_maskload_ps(p, FIRST_LANES_32X8(n));
}
ISA_256 static inline void store_first_vf32x8(float *p, vf32x8 v, I n)
{
    _mm256_maskstore_ps(p, FIRST_LANES_32X8(n), (__m256)v);
}
ISA_256 static inline vf64x4 load_first_vf64x4(const double *p, I n)
{
    return (vf64x4)_mm256_maskload_pd(p, FIRST_LANES_64X4(n));
}
ISA_256 static inline void store_first_vf64x4(double *p, vf64x4 v, I n)
{
    _mm256_maskstore_pd(p, FIRST_LANES_64X4(n), (__m256d)v);
}
#endif
/* the baseline build's (and, on other compilers, every vector's): value by value, at most the
 * vector's lanes */
#define DEFINE_FIRST_VALUES(V, T)                                                              \
    static inline V load_first_##V(const T *p, I n)                                            \
    {                                                                                          \
        V v = {0};                                                                             \
        for (I j = 0; j < n && j < (I)(sizeof v / sizeof v[0]); j++) v[j] = p[j];              \
        return v;                                                                              \
    }                                                                                          \
    static inline void store_first_##V(T *p, V v, I n)                                         \
    {                                                                                          \
        for (I j = 0; j < n && j < (I)(sizeof v / sizeof v[0]); j++) p[j] = v[j];              \
    }
#if !(defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__))
DEFINE_FIRST_VALUES(vf32x16, float)
DEFINE_FIRST_VALUES(vf64x8, double)
DEFINE_FIRST_VALUES(vf32x8, float)
DEFINE_FIRST_VALUES(vf64x4, double)
#endif
DEFINE_FIRST_VALUES(vf32x4, float)
DEFINE_FIRST_VALUES(vf64x2, double)

typedef struct {
    I hp, wp, grid, span, buffer;
} Grid;

/* ``block``: values per block; the grid is computed in whole blocks (span values), and every
 * block reads up to the largest tap offset past its end, so the buffer is zero there.
 * Rows are W + pw apart, not W + 2*pw: one gap of pw zeros is both a row's right padding and
 * the next row's left padding (reads reach pw columns either side of a row), so the grid
 * wastes pw columns per row instead of 2*pw (unless Wo is wider). Value (row, col) of the
 * padded plane is at (row + ph)*wp + col + pw. */
static Grid make_grid(const Geometry *g, I block)
{
    Grid r;
    r.hp = g->h + 2 * g->ph;
    r.wp = g->w + g->pw > g->wo ? g->w + g->pw : g->wo;
    r.grid = g->ho * r.wp;
    r.span = (r.grid + block - 1) / block * block;
    r.buffer = r.span + (g->kh - 1) * g->dh * r.wp + (g->kw - 1) * g->dw;
    if (r.buffer < r.hp * r.wp + g->pw) r.buffer = r.hp * r.wp + g->pw;
    return r;
}

static void tap_offsets(const Geometry *g, const Grid *s, I *offset)
{
    for (I i = 0; i < g->kh; i++)
        for (I j = 0; j < g->kw; j++) offset[i * g->kw + j] = i * g->dh * s->wp + j * g->dw;
}

/* Copies a plane's rows into their places in a grid buffer whose padding is already zero (the
 * depthwise kernels and the direct weight gradient zero it once per call: they write nothing
 * else of it) */
#define DEFINE_PLANE_ROWS(NAME, T)                                                             \
    static void NAME(const T *restrict plane, T *restrict buf, const Geometry *g, const Grid *s) \
    {                                                                                          \
        for (I r = 0; r < g->h; r++)                                                          \
            memcpy(buf + (r + g->ph) * s->wp + g->pw, plane + r * g->w, (size_t)g->w * sizeof(T)); \
    }

DEFINE_PLANE_ROWS(plane_rows_f32, float)
DEFINE_PLANE_ROWS(plane_rows_f64, double)

/* Phase planes (the depthwise grids' strided planes and the direct convolution's): the padded
 * input plane split into sh x sw phases, phase (a, b) holding its rows a, a + sh, ... and
 * columns b, b + sw, ..., so that tap (i, j) of output (r, q) reads phase ((i*dh) % sh,
 * (j*dw) % sw) at (r + i*dh / sh, q + j*dw / sw). */
typedef struct {
    I hq, wq, phase, channel; /* rows and row length of a phase, values per phase, per channel */
} Phases;

static Phases make_phases(const Geometry *g, I lanes)
{
    Phases p;
    p.hq = g->ho + (g->kh - 1) * g->dh / g->sh;
    p.wq = g->wo + (g->kw - 1) * g->dw / g->sw;
    p.phase = p.hq * p.wq;
    /* a row's last vector reads up to lanes - 1 values past Wo: into the next row or phase,
     * or this slack after the last phase (the lanes past Wo are dropped) */
    p.channel = g->sh * g->sw * p.phase + lanes;
    return p;
}

/* where tap (i, j) reads in a channel's phase planes, from an output's place in its phase */
static I phase_offset(const Geometry *g, const Phases *s, I i, I j)
{
    const I a = i * g->dh, b = j * g->dw;
    return ((a % g->sh) * g->sw + b % g->sw) * s->phase + a / g->sh * s->wq + b / g->sw;
}

static void phase_offsets(const Geometry *g, const Phases *s, I *offset)
{
    for (I i = 0; i < g->kh; i++)
        for (I j = 0; j < g->kw; j++) offset[i * g->kw + j] = phase_offset(g, s, i, j);
}

/* the largest of the taps' phase offsets */
static I phase_last(const Geometry *g, const Phases *s)
{
    I last = 0;
    for (I i = 0; i < g->kh; i++)
        for (I j = 0; j < g->kw; j++)
            if (phase_offset(g, s, i, j) > last) last = phase_offset(g, s, i, j);
    return last;
}

/* Depthwise 3x3, stride 2, padding 1, no dilation, on planes of exactly 2 Ho x 2 Wo (the
 * downsampling layers of MobileNet-style networks: no padding row or column past the end is
 * read). Its forward pass, input gradient and weight gradient work from input (or dy) rows in
 * registers, a vector of V outputs at a time, with no phase planes: each input row's values at
 * columns 2q - 1, 2q and 2q + 1 of a vector of outputs q are its odd values shifted in by a lane,
 * its even values and its odd values (S2_ROW: two loads, three shuffles), the row 2r + 1 carried
 * to output row r + 1 as its upper one. A row's last vector may be partial (Wo % lanes: Wo 7 and
 * 14 in MobileNetV2): its loads stop at the row's end with zeros after (LOAD_FIRST), its stores
 * there (STORE_FIRST). The depthwise kernels below build them (NAME_s2) and call them where
 * depthwise_s2_k3 holds. */
static inline int depthwise_s2_k3(const Geometry *g)
{
    return g->kh == 3 && g->kw == 3 && g->sh == 2 && g->sw == 2 && g->ph == 1 && g->pw == 1 && g->dh == 1 &&
           g->dw == 1 && g->h == 2 * g->ho && g->w == 2 * g->wo;
}

/* the n values at p in a vector (whole where n >= the lanes), zeros after them; and v's first
 * n lanes (all where n >= the lanes) stored at p, added to what is there when accumulating */
#define S2_LOAD(V, T, p, n) ((n) >= VLANES(V, T) ? LOADV(V, p) : (n) > 0 ? LOAD_FIRST(V, p, n) : (V){0})
#define S2_STORE(V, T, p, v, n, accumulate)                                                    \
    {                                                                                          \
        V s_ = (v);                                                                            \
        if ((n) >= VLANES(V, T)) {                                                             \
            if (accumulate) s_ += LOADV(V, p);                                                 \
            memcpy((p), &s_, sizeof s_);                                                       \
        } else if ((n) > 0) {                                                                  \
            if (accumulate) s_ += LOAD_FIRST(V, p, n);                                         \
            STORE_FIRST(V, p, s_, n);                                                          \
        }                                                                                      \
    }
/* the row's vals values from 2 q0 on split into the three vectors of taps a0 (columns 2q - 1),
 * a1 (2q) and a2 (2q + 1) */
#define S2_ROW(V, T, row, q0, vals, a0, a1, a2)                                                 \
    const V a1##u_ = S2_LOAD(V, T, row, vals), a1##v_ = S2_LOAD(V, T, (row) + VLANES(V, T), (vals) - VLANES(V, T)); \
    const V a1 = __builtin_shuffle(a1##u_, a1##v_, EVEN_LANES_##V);                             \
    const V a2 = __builtin_shuffle(a1##u_, a1##v_, ODD_LANES_##V);                              \
    const V a0 = __builtin_shuffle((V){(q0) ? (row)[-1] : 0}, a2, SHIFT_IN_##V);

/* The loop over a plane's output rows r for the vector of outputs from column Q0 (LIVE of them
 * in the row) with the two new input rows of row r split (m*, d*) and the one above in t*,
 * carried from d*; BODY(V, T, q0, live) uses them. S2_PLANE runs it for every vector of a row:
 * the partial last one, then the whole ones (LIVE the lanes, a constant: loads and stores
 * without a test). */
#define S2_ROWS(V, T, x, Q0, LIVE, BODY)                                                       \
    {                                                                                          \
        const I q0 = (Q0), live = (LIVE);                                                     \
        V t0 = {0}, t1 = {0}, t2 = {0}; /* the padding row above the first */                 \
        for (I r = 0; r < ho; r++) {                                                          \
            const T *row = (x) + 2 * r * w + 2 * q0;                                          \
            /* whole loads past a row's end where allowed (below), not on the plane's last row */ \
            const I vals = live < lanes_ && over && r + 1 < ho ? 2 * lanes_ : 2 * live;       \
            S2_ROW(V, T, row, q0, vals, m0, m1, m2)                                           \
            S2_ROW(V, T, row + w, q0, vals, d0, d1, d2)                                       \
            BODY(V, T, q0, live)                                                              \
            t0 = d0; t1 = d1; t2 = d2;                                                        \
        }                                                                                     \
    }
/* The partial last vector runs first. Where ``over`` (a kernel's choice, and 2 Wo >= lanes), its
 * loads and stores before the plane's last row are whole vectors running past the row's end into
 * the next row: the lanes past the end hold values of no output, and what they store there is
 * stored over later, by the whole vectors' passes (whole_ > 0) or by the next row's own partial
 * vector (no further than its live lanes). Masked stores
 * are slow on AMD's cores (docs/numpy.md, session 56). */
#define S2_PLANE(V, T, x, BODY)                                                                \
    {                                                                                          \
        const I lanes_ = VLANES(V, T), whole_ = wo / lanes_ * lanes_;                         \
        const int over = over_rows && 2 * wo >= lanes_;                                       \
        if (whole_ < wo) S2_ROWS(V, T, x, whole_, wo - whole_, BODY)                          \
        for (I qv_ = 0; qv_ < whole_; qv_ += lanes_) S2_ROWS(V, T, x, qv_, lanes_, BODY)      \
    }

/* out = start + the plane's outputs from x's plane (k: its nine taps), the three rows of taps
 * summed apart and then added (a chain of nine FMAs a vector waited on the FMA's latency: the
 * 7x7-output layer's rows are too few to overlap) */
#define S2_OUTPUTS(V, T, q0, live)                                                             \
    {                                                                                          \
        V a = (V){0} + start, b = k10 * m0, c = k20 * d0;                                     \
        a += k00 * t0; b += k11 * m1; c += k21 * d1;                                          \
        a += k01 * t1; b += k12 * m2; c += k22 * d2;                                          \
        a += k02 * t2; a += b + c;                                                            \
        S2_STORE(V, T, out + r * wo + (q0), a, live < lanes_ && over && r + 1 < ho ? lanes_ : live, 0) \
    }
#define DEFINE_DEPTHWISE_S2(NAME, ATTR, T, V)                                                  \
    ATTR static inline void NAME(const T *restrict x, const T *restrict k, T *restrict out,   \
                                 I ho, I wo, T start)                                         \
    {                                                                                          \
        const I w = 2 * wo;                                                                   \
        const int over_rows = 1;                                                              \
        const T k00 = k[0], k01 = k[1], k02 = k[2], k10 = k[3], k11 = k[4], k12 = k[5],       \
                k20 = k[6], k21 = k[7], k22 = k[8];                                           \
        S2_PLANE(V, T, x, S2_OUTPUTS)                                                         \
    }

/* dx (+)= the plane's input gradient from dy's plane: dx's even and odd rows and columns (its
 * four stride phases) take the taps that reach them (one, two, two and four) from dy rows m and
 * m + 1 and those rows one lane on (SHIFT_OUT), interleaved into dx rows 2m and 2m + 1; every
 * dx value written once (no zeroing pass), each phase's taps in depthwise_phase_data's order.
 * S2_DATA_ROWS: the vector of dy values from column Q0, LIVE of them in the row (the lanes, a
 * constant, for the whole vectors; fewer for the partial last one, which has no dy value to its
 * right and stores 2 LIVE dx values a row). */
#define S2_STORE_PAIR(V, T, d, e, o, vals, accumulate)                                         \
    {                                                                                          \
        const V lo_ = __builtin_shuffle(e, o, INTERLEAVE_LO_##V), hi_ = __builtin_shuffle(e, o, INTERLEAVE_HI_##V); \
        S2_STORE(V, T, d, lo_, vals, accumulate)                                              \
        S2_STORE(V, T, (d) + VLANES(V, T), hi_, (vals) - VLANES(V, T), accumulate)            \
    }
#define S2_DATA_ROWS(V, T, Q0, LIVE)                                                           \
    {                                                                                          \
        const I q0 = (Q0), live = (LIVE);                                                     \
        const int more = q0 + lanes < wo; /* a dy value right of the vector */               \
        /* a partial vector's stores past the row's end, as S2_PLANE's (not where they add to \
         * dx, not on dx's last row; its loads stop at the row's end: the last value's right \
         * neighbour is zero) */                                                              \
        const int over_store = live < lanes && over && !accumulate;                           \
        V d = S2_LOAD(V, T, dy + q0, live);                                                   \
        V ds = __builtin_shuffle(d, (V){more ? dy[q0 + lanes] : 0}, SHIFT_OUT_##V);           \
        for (I m = 0; m < ho; m++) {                                                          \
            V e = {0}, es = {0}; /* dy row m + 1, none past the last */                      \
            if (m + 1 < ho) {                                                                 \
                const T *r = dy + (m + 1) * wo + q0;                                          \
                e = S2_LOAD(V, T, r, live);                                                   \
                es = __builtin_shuffle(e, (V){more ? r[lanes] : 0}, SHIFT_OUT_##V);           \
            }                                                                                 \
            const V ee = k11 * d, eo = k10 * ds + k12 * d, oe = k01 * e + k21 * d,            \
                    oo = k00 * es + k02 * e + k20 * ds + k22 * d;                             \
            T *x0 = dx + 2 * m * w + 2 * q0;                                                  \
            S2_STORE_PAIR(V, T, x0, ee, eo, over_store ? 2 * lanes : 2 * live, accumulate)    \
            S2_STORE_PAIR(V, T, x0 + w, oe, oo, over_store && m + 1 < ho ? 2 * lanes : 2 * live, accumulate) \
            d = e; ds = es;                                                                   \
        }                                                                                     \
    }
#define DEFINE_DEPTHWISE_S2_DATA(NAME, ATTR, T, V)                                             \
    ATTR static inline void NAME(const T *restrict dy, const T *restrict k, T *restrict dx,   \
                                 I ho, I wo, int accumulate)                                  \
    {                                                                                          \
        const I lanes = VLANES(V, T), w = 2 * wo, whole = wo / lanes * lanes;                 \
        const int over = 2 * wo >= lanes;                                                     \
        const T k00 = k[0], k01 = k[1], k02 = k[2], k10 = k[3], k11 = k[4], k12 = k[5],       \
                k20 = k[6], k21 = k[7], k22 = k[8];                                           \
        if (whole < wo) S2_DATA_ROWS(V, T, whole, wo - whole) /* first: as S2_PLANE's */     \
        for (I qv = 0; qv < whole; qv += lanes) S2_DATA_ROWS(V, T, qv, lanes)                 \
    }

/* sums[t] += tap t's weight gradient over one sample's planes x and dy: dy against the input
 * rows split as the forward splits them, a vector of sums a tap (the lanes of a partial last
 * vector past the row add nothing: zeros; the caller adds the lanes at the end) */
#define S2_TAPS(X) X(0, t0) X(1, t1) X(2, t2) X(3, m0) X(4, m1) X(5, m2) X(6, d0) X(7, d1) X(8, d2)
#define S2_FMA(t, v) a##t += e * (v);
#define S2_LOAD_SUMS(t, v) __typeof__(sums[0]) a##t = sums[t];
#define S2_STORE_SUMS(t, v) sums[t] = a##t;
#define S2_TAP_PRODUCTS(V, T, q0, live)                                                        \
    {                                                                                          \
        const V e = S2_LOAD(V, T, dy + r * wo + (q0), live);                                   \
        S2_TAPS(S2_FMA)                                                                       \
    }
#define DEFINE_DEPTHWISE_S2_FILTER(NAME, ATTR, T, V)                                           \
    ATTR static inline void NAME(const T *restrict x, const T *restrict dy, V *restrict sums, \
                                 I ho, I wo)                                                  \
    {                                                                                          \
        const I w = 2 * wo;                                                                   \
        const int over_rows = 0; /* the lanes past a row's end must add nothing */           \
        S2_TAPS(S2_LOAD_SUMS) /* in registers across the plane */                             \
        S2_PLANE(V, T, x, S2_TAP_PRODUCTS)                                                    \
        S2_TAPS(S2_STORE_SUMS)                                                                \
    }

/* dx[p] (+)= the strided depthwise input gradient of planes [p0, p1) (padding >= 0): each
 * tap in turn adds its weight times dy's rows, whole rows of consecutive values, into the
 * padded plane's phase planes (make_phases) where its outputs read (depthwise_backward_data
 * scatters one value at a time into strided places), then the phases are laid back into dx's
 * rows (the padded plane's rows and columns no output read are zero): stride 2 along rows
 * two phases' rows at a time as whole vectors of V (INTERLEAVE; a strided store per value took
 * most of the time, docs/numpy.md). Returns -1 when its scratch cannot be allocated. */
#define DEFINE_DEPTHWISE_PHASE_DATA(NAME, ATTR, T, V)                                          \
    DEFINE_DEPTHWISE_S2_DATA(NAME##_s2, ATTR, T, V)                                            \
    ATTR static int NAME(const T *restrict dy, const T *restrict w, T *restrict dx,           \
                         const Geometry *g, I p0, I p1, int accumulate)                       \
    {                                                                                          \
        if (depthwise_s2_k3(g)) {                                                             \
            for (I p = p0; p < p1; p++)                                                       \
                NAME##_s2(dy + p * g->ho * g->wo, w + (p % g->c) * 9, dx + p * g->h * g->w, g->ho, g->wo, \
                          accumulate);                                                        \
            return 0;                                                                         \
        }                                                                                     \
        const Phases s = make_phases(g, 1);                                                   \
        const I taps = g->kh * g->kw, size = g->sh * g->sw * s.phase;                         \
        T *buf = malloc((size_t)size * sizeof(T));                                            \
        /* per tap its offset; per dx row where its values start in buf (-1: a row no output \
           read); per column phase b its first dx column, first value and count (no division \
           per value or row) */                                                               \
        I *offset = malloc((size_t)(taps + g->h + 3 * g->sw) * sizeof(I));                   \
        if (!buf || !offset) {                                                                \
            free(buf); free(offset);                                                          \
            return -1;                                                                        \
        }                                                                                     \
        I *row_at = offset + taps, *col0 = row_at + g->h, *first = col0 + g->sw, *count = first + g->sw; \
        phase_offsets(g, &s, offset);                                                         \
        for (I row = 0; row < g->h; row++) {                                                  \
            const I at = row + g->ph, pr = at / g->sh;                                        \
            row_at[row] = pr < s.hq ? (at % g->sh) * g->sw * s.phase + pr * s.wq : -1;        \
        }                                                                                     \
        for (I b = 0; b < g->sw; b++) {                                                       \
            col0[b] = ((b - g->pw) % g->sw + g->sw) % g->sw;                                  \
            const I pc = (col0[b] + g->pw) / g->sw;                                           \
            const I n = col0[b] < g->w ? (g->w - col0[b] + g->sw - 1) / g->sw : 0;          \
            first[b] = b * s.phase + pc;                                                      \
            count[b] = n < s.wq - pc ? n : s.wq - pc;                                         \
        }                                                                                     \
        /* stride 2 along rows: the column phase of dx's even columns, that of its odd ones, \
           and how many pairs of them both phases hold */                                     \
        const I even = g->sw == 2 && col0[1] == 0, odd = 1 - even;                            \
        const I pairs = g->sw != 2 ? 0 : count[even] < count[odd] ? count[even] : count[odd]; \
        for (I p = p0; p < p1; p++) {                                                         \
            const T *k = w + (p % g->c) * taps;                                               \
            memset(buf, 0, (size_t)size * sizeof(T));                                         \
            /* tap by tap: a tap's rows are disjoint, so no add waits on the overlapping store \
               of the tap before (row by row, taps one column apart did) */                  \
            for (I t = 0; t < taps; t++) {                                                    \
                const T tap = k[t];                                                           \
                for (I r = 0; r < g->ho; r++) {                                               \
                    const T *e = dy + (p * g->ho + r) * g->wo;                                \
                    T *restrict d = buf + offset[t] + r * s.wq;                               \
                    for (I q = 0; q < g->wo; q++) d[q] += tap * e[q];                         \
                }                                                                             \
            }                                                                                 \
            T *plane = dx + p * g->h * g->w;                                                  \
            for (I row = 0; row < g->h; row++) {                                              \
                T *o = plane + row * g->w;                                                    \
                I done = 0; /* dx columns [0, done) are written */                            \
                if (row_at[row] >= 0 && pairs > 0) {                                          \
                    const T *from = buf + row_at[row];                                        \
                    I u = 0;                                                                  \
                    INTERLEAVE(V, T, o, from + first[even], from + first[odd], u, pairs, accumulate) \
                    done = 2 * u;                                                             \
                }                                                                             \
                if (!accumulate) memset(o + done, 0, (size_t)(g->w - done) * sizeof(T));      \
                if (row_at[row] < 0) continue;                                                \
                for (I b = 0; b < g->sw; b++) {                                               \
                    const T *from = buf + row_at[row] + first[b];                             \
                    T *to = o + col0[b];                                                      \
                    for (I u = done / g->sw; u < count[b]; u++) to[u * g->sw] += from[u];     \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        free(buf); free(offset);                                                              \
        return 0;                                                                             \
    }

EACH_ISA_AND_TYPE(DEFINE_DEPTHWISE_PHASE_DATA, depthwise_phase_data)

/* A plane into its phase planes (make_phases) in a buffer whose padding is already zero (the
 * kernels on phase planes zero theirs once a call; each plane writes the same places of it, and
 * only those), stride-2 rows a vector of V at a time (EVERY_OTHER). */
#define DEFINE_PHASE_ROWS(NAME, ATTR, T, V)                                                    \
    ATTR static inline void NAME(const T *restrict plane, T *restrict buf, const Geometry *g, \
                                 const Phases *s)                                             \
    {                                                                                          \
        for (I a = 0; a < g->sh; a++) {                                                       \
            I r0, r1; /* the phase rows that read a row of the plane */                       \
            valid_columns(a - g->ph, g->sh, g->h, s->hq, &r0, &r1);                           \
            for (I b = 0; b < g->sw; b++) {                                                   \
                const I offset = b - g->pw;                                                   \
                I lo, hi;                                                                     \
                valid_columns(offset, g->sw, g->w, s->wq, &lo, &hi);                          \
                T *phase = buf + (a * g->sw + b) * s->phase;                                  \
                for (I r = r0; r < r1; r++) {                                                 \
                    const T *src = plane + (r * g->sh + a - g->ph) * g->w + offset;           \
                    T *d = phase + r * s->wq;                                                 \
                    I q = lo;                                                                 \
                    if (g->sw == 1) {                                                         \
                        memcpy(d + lo, src + lo, (size_t)(hi - lo) * sizeof(T));              \
                        q = hi;                                                               \
                    } else if (g->sw == 2)                                                    \
                        EVERY_OTHER(V, T, d, src, q, hi)                                      \
                    for (; q < hi; q++) d[q] = src[q * g->sw];                                \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

EACH_ISA_AND_TYPE(DEFINE_PHASE_ROWS, phase_rows)

/* Where a depthwise grid kernel lays out a plane: the padded plane's rows wp apart (stride 1,
 * make_grid), or, strided, its phase planes (make_phases), each tap reading whole rows of one
 * phase as a stride-1 tap reads the padded rows; the outputs on Ho rows of wp values. ``span``:
 * the grid's values in whole blocks; ``buffer``: the plane's values, reaching the largest tap
 * offset past the span. */
typedef struct {
    Grid s;
    Phases ph;
    int strided;
    I wp, span, buffer;
} PlaneGrid;

static PlaneGrid make_plane_grid(const Geometry *g, I lanes, I block)
{
    PlaneGrid r;
    r.s = make_grid(g, block);
    r.ph = make_phases(g, lanes);
    r.strided = g->sh > 1 || g->sw > 1;
    r.wp = r.strided ? r.ph.wq : r.s.wp;
    r.span = r.strided ? (g->ho * r.wp + block - 1) / block * block : r.s.span;
    if (r.strided) {
        const I reach = phase_last(g, &r.ph) + r.span;
        r.buffer = r.ph.channel > reach ? r.ph.channel : reach;
    } else
        r.buffer = r.s.buffer;
    return r;
}

static void plane_grid_offsets(const Geometry *g, const PlaneGrid *s, I *offset)
{
    if (s->strided)
        phase_offsets(g, &s->ph, offset);
    else
        tap_offsets(g, &s->s, offset);
}

/* a plane into its place in a PlaneGrid's buffer (whose padding is zero) */
#define DEFINE_PLANE_GRID_COPY(NAME, ATTR, T, ROWS, PHASES)                                    \
    ATTR static inline void NAME(const T *restrict plane, T *restrict buf, const Geometry *g, \
                                 const PlaneGrid *s)                                          \
    {                                                                                          \
        if (s->strided)                                                                       \
            PHASES(plane, buf, g, &s->ph);                                                    \
        else                                                                                  \
            ROWS(plane, buf, g, &s->s);                                                       \
    }

DEFINE_PLANE_GRID_COPY(plane_grid_copy_f32_512, ISA_512, float, plane_rows_f32, phase_rows_f32_512)
DEFINE_PLANE_GRID_COPY(plane_grid_copy_f64_512, ISA_512, double, plane_rows_f64, phase_rows_f64_512)
DEFINE_PLANE_GRID_COPY(plane_grid_copy_f32_256, ISA_256, float, plane_rows_f32, phase_rows_f32_256)
DEFINE_PLANE_GRID_COPY(plane_grid_copy_f64_256, ISA_256, double, plane_rows_f64, phase_rows_f64_256)
DEFINE_PLANE_GRID_COPY(plane_grid_copy_f32_128, ISA_128, float, plane_rows_f32, phase_rows_f32_128)
DEFINE_PLANE_GRID_COPY(plane_grid_copy_f64_128, ISA_128, double, plane_rows_f64, phase_rows_f64_128)

/* Depthwise 3x3, stride 1, padding 1, undilated ("same": Ho = H, Wo = W; MobileNet's stride-1
 * layers): each plane as a 1-D convolution of the flat plane, out[i] = the taps times
 * x[i + (ky - 1) W + kx - 1], vectors of consecutive outputs across row ends. The plane is copied
 * whole between zeros that cover the rows above and below; the left (right) taps' values whose
 * column falls outside the lane's row (they would come from the row before or after) are masked
 * to zero, as the grid kernel's padding reads them. No padded grid: its gap column and whole
 * blocks of four vectors cost 44 % of the work on an 8x8 plane at 16 lanes, and copying it in
 * and out took a memcpy a row. Outputs past the last vector with more than a quarter of its
 * lanes in the plane go one at a time (a 7x7 plane at 16 lanes: three vectors and one output).
 * The taps are summed in the grid kernel's order (the same bits without an epilogue; a bias alone
 * starts the sums, FLAT_BIAS_START: docs/numpy.md, sessions 54 and 55). */
static inline int depthwise_flat(const Geometry *g)
{
    return g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 && g->pw == 1 && g->dh == 1 &&
           g->dw == 1;
}

/* The instruction set whose vectors a depthwise call takes: the process's, or, where the _s2
 * kernels run it (``s2``), the narrowest AVX set whose vector still holds a whole output row
 * where the row is no wider than that (Wo 7 on AVX2's 8 lanes: one partial vector a row, not
 * AVX-512's 16 mostly empty; Wo 8 one whole vector); the flat kernels at most 256 bits (on the
 * Zen 4 machine the AVX2 build ran every plane size faster, its tap loads off by a value
 * splitting fewer cache lines; not measured on an Intel AVX-512 CPU: docs/numpy.md, session 54) */
static int depthwise_level(const Geometry *g, int s2, I itemsize)
{
    int level = isa;
    if (s2 && depthwise_s2_k3(g))
        while (level > 1 && g->wo <= (16 << (level - 1)) / itemsize) level--;
    if (level == 2 && depthwise_flat(g)) level = 1;
    return level;
}

/* left[i] (right[i]), ``whole`` values of ``size`` bytes: all ones where the value left (right)
 * of position i of a flat plane of rows W wide lies in i's row, else zero (calloc'd) */
static void flat_row_masks(void *left, void *right, I whole, I W, size_t size)
{
    for (I i = 0; i < whole; i++) {
        if (i % W != 0) memset((char *)left + i * size, 0xff, size);
        if (i % W != W - 1) memset((char *)right + i * size, 0xff, size);
    }
}

/* a += the nine taps kt over the flat plane at x (rows W apart), the left and right columns'
 * values masked to zero where they lie outside the lane's row (the grid kernel's tap order) */
#define FLAT_MASKED(M, V, src, m) ((V)((M)LOADV(V, src) & (m)))
#define FLAT_K3(M, T, V, a, x, left, right, W)                                                 \
    {                                                                                          \
        const M l_ = LOADV(M, left), r_ = LOADV(M, right);                                    \
        for (I i = 0; i < 3; i++) {                                                           \
            const T *row_ = (x) + (i - 1) * (W);                                              \
            a += kt[3 * i] * FLAT_MASKED(M, V, row_ - 1, l_);                                 \
            a += kt[3 * i + 1] * LOADV(V, row_);                                              \
            a += kt[3 * i + 2] * FLAT_MASKED(M, V, row_ + 1, r_);                             \
        }                                                                                     \
    }
/* a + k v rounded as the vectors' a += k * v is: fused where the build has FMA (256 and 512 bits) */
#define FLAT_MADD(T, V, k, v, a)                                                               \
    (sizeof(V) == 16 ? (a) + (k) * (v)                                                        \
                     : sizeof(T) == 4 ? __builtin_fmaf((k), (v), (a)) : __builtin_fma((k), (v), (a)))
/* whether the epilogue is a bias alone (conv2d's usual one), which the sums can start from */
static inline int bias_alone(const void *scale, const void *shift, const void *res, int relu)
{
    return shift && !scale && !res && !relu;
}
/* how the flat forward finishes its sums: stored as they are; through the epilogue in
 * registers before the store; started from the bias, where the bias is the whole epilogue */
enum { FLAT_PLAIN, FLAT_EPILOGUE_STORES, FLAT_BIAS_START };
/* the epilogue (epilogue_f32's formula, as it rounds there) on the value v at plane position i,
 * on a vector of them (M: V's mask type), where ``epilogue`` is FLAT_EPILOGUE_STORES: in
 * registers before the store, not in a call and a pass over the stored plane */
#define FLAT_EPILOGUE_SETUP(T, p)                                                              \
    const T e_scale = scale ? scale[(p) % g->c] : (T)1, e_shift = shift ? shift[(p) % g->c] : (T)0; \
    const T *e_res = res ? res + (p) * plane : NULL;                                          \
    const T e_start = epilogue == FLAT_BIAS_START ? e_shift : (T)0;
/* the sums' start: the bias (FLAT_BIAS_START), else zero */
#define FLAT_START(V) ((V){0} + e_start)
#define FLAT_EPILOGUE(T, v, i)                                                                 \
    if (epilogue == FLAT_EPILOGUE_STORES) {                                                   \
        v = v * e_scale + e_shift;                                                            \
        if (e_res) v += e_res[i];                                                             \
        if (relu) v = v < 0 ? (T)0 : v;                                                       \
    }
#define FLAT_EPILOGUE_VECTOR(M, V, a, i)                                                       \
    if (epilogue == FLAT_EPILOGUE_STORES) {                                                   \
        a = a * e_scale + e_shift;                                                            \
        if (e_res) a += LOADV(V, e_res + (i));                                                \
        if (relu) a = (V)((M)a & ~(M)(a < 0));                                                \
    }
/* o[b ...] (+)= a, the lanes inside the plane, through the epilogue */
#define FLAT_STORE(M, T, V, o, b, a, plane, accumulate)                                        \
    if ((b) + VLANES(V, T) <= (plane)) {                                                      \
        if (accumulate) a += LOADV(V, (o) + (b));                                             \
        FLAT_EPILOGUE_VECTOR(M, V, a, b)                                                      \
        memcpy((o) + (b), &a, sizeof a);                                                      \
    } else { /* through a copy: a indexed would live in memory on every path */              \
        T t_[VLANES(V, T)];                                                                   \
        memcpy(t_, &a, sizeof a);                                                             \
        for (I i = 0; (b) + i < (plane); i++) {                                               \
            T v_ = (accumulate) ? (o)[(b) + i] + t_[i] : t_[i];                               \
            FLAT_EPILOGUE(T, v_, (b) + i)                                                     \
            (o)[(b) + i] = v_;                                                                \
        }                                                                                     \
    }
#define DEFINE_DEPTHWISE_FLAT(NAME, ATTR, T, V)                                                \
    typedef int NAME##_mask __attribute__((vector_size(sizeof(V))));                          \
    ATTR static inline __attribute__((always_inline)) int NAME##_body(                       \
        const T *restrict x, const T *restrict w, T *restrict out, const Geometry *g, I p0,   \
        I p1, int flip, const int accumulate, const int epilogue, const T *scale,             \
        const T *shift, const T *res, int relu)                                               \
    {                                                                                          \
        const I lanes = VLANES(V, T), W = g->w, plane = g->h * W;                             \
        const I whole = (plane + 2 * lanes - 1) / (2 * lanes) * (2 * lanes), margin = W + 1;  \
        /* two plane buffers (the next plane is copied into one while the other's is read,   \
         * so that no load waits on the copy's stores), each a row and a value of zeros, the  \
         * plane, zeros to the last pair of vectors' end and a row more; left, right: all ones \
         * where the column left (right) of the lane's lies inside its row */                \
        const I span = 2 * margin + whole;                                                    \
        T *buf = calloc((size_t)(2 * span + 2 * whole), sizeof(T));                           \
        if (!buf) return -1;                                                                  \
        T *left = buf + 2 * span, *right = left + whole;                                      \
        flat_row_masks(left, right, whole, W, sizeof(T));                                     \
        if (p0 < p1) memcpy(buf + margin, x + p0 * plane, (size_t)plane * sizeof(T));         \
        for (I p = p0; p < p1; p++) {                                                         \
            const T *cur = buf + ((p - p0) & 1) * span;                                       \
            if (p + 1 < p1)                                                                   \
                memcpy(buf + ((p + 1 - p0) & 1) * span + margin, x + (p + 1) * plane,         \
                       (size_t)plane * sizeof(T));                                            \
            const T *k = w + (p % g->c) * 9;                                                  \
            T kt[9];                                                                          \
            for (I t = 0; t < 9; t++) kt[t] = k[flip ? 8 - t : t];                            \
            T *o = out + p * plane;                                                           \
            FLAT_EPILOGUE_SETUP(T, p)                                                          \
            I b = 0;                                                                          \
            for (; b + 2 * lanes <= plane; b += 2 * lanes) {                                  \
                V a0 = FLAT_START(V), a1 = a0;                                                \
                FLAT_K3(NAME##_mask, T, V, a0, cur + margin + b, left + b, right + b, W)      \
                FLAT_K3(NAME##_mask, T, V, a1, cur + margin + b + lanes, left + b + lanes, right + b + lanes, W) \
                FLAT_STORE(NAME##_mask, T, V, o, b, a0, plane, accumulate)                    \
                FLAT_STORE(NAME##_mask, T, V, o, b + lanes, a1, plane, accumulate)            \
            }                                                                                 \
            /* a last vector with more than a quarter of its lanes inside the plane */       \
            for (; 4 * (plane - b) > lanes; b += lanes) {                                    \
                V a = FLAT_START(V);                                                          \
                FLAT_K3(NAME##_mask, T, V, a, cur + margin + b, left + b, right + b, W)       \
                FLAT_STORE(NAME##_mask, T, V, o, b, a, plane, accumulate)                     \
            }                                                                                 \
            for (; b < plane; b++) { /* the rest one at a time, the taps in the same order */ \
                const T *at = cur + margin + b - W;                                           \
                const int l = b % W != 0, r = b % W != W - 1;                                 \
                T a = e_start;                                                                \
                for (I i = 0; i < 3; i++, at += W) {                                          \
                    a = FLAT_MADD(T, V, kt[3 * i], l ? at[-1] : 0, a);                        \
                    a = FLAT_MADD(T, V, kt[3 * i + 1], at[0], a);                             \
                    a = FLAT_MADD(T, V, kt[3 * i + 2], r ? at[1] : 0, a);                     \
                }                                                                             \
                if (accumulate) a += o[b];                                                    \
                FLAT_EPILOGUE(T, a, b)                                                        \
                o[b] = a;                                                                     \
            }                                                                                 \
        }                                                                                     \
        free(buf);                                                                            \
        return 0;                                                                             \
    }                                                                                          \
    /* the body built once for each way its sums end: stored, added, started from the bias, \
     * through the epilogue */                                                               \
    ATTR static int NAME(const T *restrict x, const T *restrict w, T *restrict out,           \
                         const Geometry *g, I p0, I p1, int flip, int accumulate,             \
                         const T *scale, const T *shift, const T *res, int relu)              \
    {                                                                                          \
        if (accumulate)                                                                       \
            return NAME##_body(x, w, out, g, p0, p1, flip, 1, FLAT_PLAIN,                     \
                               scale, shift, res, relu);                                      \
        if (bias_alone(scale, shift, res, relu))                                              \
            return NAME##_body(x, w, out, g, p0, p1, flip, 0, FLAT_BIAS_START,                \
                               scale, shift, res, relu);                                      \
        if (scale || shift || res || relu)                                                    \
            return NAME##_body(x, w, out, g, p0, p1, flip, 0, FLAT_EPILOGUE_STORES,           \
                               scale, shift, res, relu);                                      \
        return NAME##_body(x, w, out, g, p0, p1, flip, 0, FLAT_PLAIN, scale, shift, res, relu); \
    }

/* out[p] (+)= the taps (reversed when ``flip``, stride 1 only) over padded x[p], planes
 * [p0, p1), any stride (a strided plane as its phases: PlaneGrid), then (not accumulating) the
 * epilogue (EPI: scale, shift, res, relu as epilogue_f32) on each plane as it is stored, while
 * it is in L1. Returns -1 when its scratch cannot be allocated. */
#define DEFINE_DEPTHWISE_GRID(NAME, ATTR, COPY, EPI, T, V)                                   \
    DEFINE_DEPTHWISE_S2(NAME##_s2, ATTR, T, V)                                                 \
    DEFINE_DEPTHWISE_FLAT(NAME##_flat, ATTR, T, V)                                             \
    ATTR static int NAME(const T *restrict x, const T *restrict w, T *restrict out,           \
                         const Geometry *g, I p0, I p1, int flip, int accumulate,             \
                         const T *scale, const T *shift, const T *res, int relu)              \
    {                                                                                          \
        const I lanes = VLANES(V, T), block = BLOCK(V, T);                                    \
        const I taps = g->kh * g->kw, plane = g->ho * g->wo;                                  \
        const int epilogue = !accumulate && (scale || shift || res || relu);                  \
        if (!flip && !accumulate && depthwise_s2_k3(g)) {                                     \
            /* a bias alone starts the sums; any other epilogue runs on each plane once stored */ \
            const int bias_start = bias_alone(scale, shift, res, relu);                       \
            for (I p = p0; p < p1; p++) {                                                     \
                NAME##_s2(x + p * g->h * g->w, w + (p % g->c) * taps, out + p * plane, g->ho, g->wo, \
                          bias_start ? shift[p % g->c] : 0);                                  \
                if (epilogue && !bias_start) EPI(out, scale, shift, res, g->c, plane, p, p + 1, 0, plane, relu); \
            }                                                                                 \
            return 0;                                                                         \
        }                                                                                     \
        if (depthwise_flat(g))                                                                \
            return NAME##_flat(x, w, out, g, p0, p1, flip, accumulate, scale, shift, res, relu); \
        const PlaneGrid s = make_plane_grid(g, lanes, block);                                 \
        T *buf = malloc((size_t)(s.buffer + s.span) * sizeof(T));                             \
        I *offset = malloc((size_t)taps * sizeof(I));                                         \
        if (!buf || !offset) {                                                                \
            free(buf); free(offset);                                                          \
            return -1;                                                                        \
        }                                                                                     \
        T *grid = buf + s.buffer;                                                             \
        memset(buf, 0, (size_t)s.buffer * sizeof(T));                                         \
        plane_grid_offsets(g, &s, offset);                                                    \
        for (I p = p0; p < p1; p++) {                                                         \
            const T *k = w + (p % g->c) * taps;                                               \
            COPY(x + p * g->h * g->w, buf, g, &s);                                            \
            for (I b = 0; b < s.span; b += block) {                                           \
                V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                     \
                for (I t = 0; t < taps; t++) {                                                \
                    const T tap = k[flip ? taps - 1 - t : t];                                 \
                    const T *src = buf + b + offset[t];                                       \
                    a0 += tap * LOADV(V, src);                                                \
                    a1 += tap * LOADV(V, src + lanes);                                        \
                    a2 += tap * LOADV(V, src + 2 * lanes);                                    \
                    a3 += tap * LOADV(V, src + 3 * lanes);                                    \
                }                                                                             \
                memcpy(grid + b, &a0, sizeof a0);                                             \
                memcpy(grid + b + lanes, &a1, sizeof a1);                                     \
                memcpy(grid + b + 2 * lanes, &a2, sizeof a2);                                 \
                memcpy(grid + b + 3 * lanes, &a3, sizeof a3);                                 \
            }                                                                                 \
            T *o = out + p * g->ho * g->wo;                                                   \
            for (I r = 0; r < g->ho; r++) {                                                   \
                if (accumulate)                                                               \
                    for (I q = 0; q < g->wo; q++) o[r * g->wo + q] += grid[r * s.wp + q];     \
                else                                                                          \
                    memcpy(o + r * g->wo, grid + r * s.wp, (size_t)g->wo * sizeof(T));        \
            }                                                                                 \
            if (epilogue) EPI(out, scale, shift, res, g->c, plane, p, p + 1, 0, plane, relu); \
        }                                                                                     \
        free(buf); free(offset);                                                              \
        return 0;                                                                             \
    }

DEFINE_DEPTHWISE_GRID(depthwise_grid_f32_512, ISA_512, plane_grid_copy_f32_512, epilogue_f32, float, vf32x16)
DEFINE_DEPTHWISE_GRID(depthwise_grid_f64_512, ISA_512, plane_grid_copy_f64_512, epilogue_f64, double, vf64x8)
DEFINE_DEPTHWISE_GRID(depthwise_grid_f32_256, ISA_256, plane_grid_copy_f32_256, epilogue_f32, float, vf32x8)
DEFINE_DEPTHWISE_GRID(depthwise_grid_f64_256, ISA_256, plane_grid_copy_f64_256, epilogue_f64, double, vf64x4)
DEFINE_DEPTHWISE_GRID(depthwise_grid_f32_128, ISA_128, plane_grid_copy_f32_128, epilogue_f32, float, vf32x4)
DEFINE_DEPTHWISE_GRID(depthwise_grid_f64_128, ISA_128, plane_grid_copy_f64_128, epilogue_f64, double, vf64x2)

/* acc[u * lanes ...] += the lane sums of dy's plane (``span`` values) times the input from
 * src + off[u], for NT taps in one pass: one load of dy feeds NT multiply-adds (a pass per tap
 * loaded two vectors for each) */
#define DW_FILTER_TAPS 9
#define DEFINE_DW_FILTER_PASS(NAME, ATTR, T, V, NT)                                               \
    ATTR static inline void NAME(const T *restrict src, const T *restrict dy, const I *off, I span, \
                                 T *restrict acc)                                             \
    {                                                                                          \
        const I lanes = VLANES(V, T);                                                         \
        V a[NT];                                                                              \
        for (int u = 0; u < NT; u++) a[u] = (V){0};                                           \
        for (I b = 0; b < span; b += lanes) {                                                 \
            const V e = LOADV(V, dy + b);                                                     \
            for (int u = 0; u < NT; u++) a[u] += LOADV(V, src + off[u] + b) * e;              \
        }                                                                                     \
        for (int u = 0; u < NT; u++) {                                                        \
            const V sum = LOADV(V, acc + u * lanes) + a[u];                                   \
            memcpy(acc + u * lanes, &sum, sizeof sum);                                        \
        }                                                                                     \
    }

/* The weight gradient of depthwise_flat's layers: dw[c] (+)= sum over samples of dy times the
 * flat plane's nine shifted (and masked) values, a vector of sums per tap, dy's last values
 * past the plane zero; each channel's sums in a fixed order */
/* planes the weight gradient's flat kernel fetches ahead of the one it reads */
#define FLAT_AHEAD 4
static inline void prefetch_bytes(const void *p, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i);
    __builtin_prefetch((const char *)p + bytes - 1);
}
#define DEFINE_DEPTHWISE_FLAT_FILTER(NAME, ATTR, T, V)                                         \
    typedef int NAME##_mask __attribute__((vector_size(sizeof(V))));                          \
    ATTR static int NAME(const T *restrict x, const T *restrict dy, T *restrict dw,           \
                         const Geometry *g, I n, I c0, I c1, int accumulate)                  \
    {                                                                                          \
        const I lanes = VLANES(V, T), W = g->w, plane = g->h * W;                             \
        const I whole = (plane + lanes - 1) / lanes * lanes, margin = W + 1;                  \
        /* two plane buffers, the next plane copied into one while the other is read (as the \
         * forward's), planes in the order (channel, sample) */                              \
        const I span = 2 * margin + whole, count = (c1 - c0) * n;                             \
        T *buf = calloc((size_t)(2 * span + 3 * whole), sizeof(T));                           \
        if (!buf) return -1;                                                                  \
        T *left = buf + 2 * span, *right = left + whole, *last = right + whole;               \
        flat_row_masks(left, right, whole, W, sizeof(T));                                     \
        if (count > 0) memcpy(buf + margin, x + c0 * plane, (size_t)plane * sizeof(T));       \
        for (I c = c0; c < c1; c++) {                                                         \
            V a[9];                                                                           \
            for (int t = 0; t < 9; t++) a[t] = (V){0};                                        \
            for (I smp = 0; smp < n; smp++) {                                                 \
                const I p = smp * g->c + c, q = (c - c0) * n + smp;                           \
                const T *e_at = dy + p * plane, *cur = buf + (q & 1) * span;                  \
                if (q + 1 < count)                                                            \
                    memcpy(buf + ((q + 1) & 1) * span + margin,                               \
                           x + ((q + 1) % n * g->c + c0 + (q + 1) / n) * plane,               \
                           (size_t)plane * sizeof(T));                                        \
                if (q + FLAT_AHEAD < count) { /* a sample's planes lie C planes apart: no      \
                                              * hardware prefetcher follows them */          \
                    const I ahead = (q + FLAT_AHEAD) % n * g->c + c0 + (q + FLAT_AHEAD) / n;  \
                    prefetch_bytes(x + ahead * plane, plane * sizeof(T));                     \
                    prefetch_bytes(dy + ahead * plane, plane * sizeof(T));                    \
                }                                                                             \
                for (I b = 0; b < plane; b += lanes) {                                        \
                    if (b + lanes > plane) { /* dy's last values, zero past the plane */      \
                        memcpy(last, e_at + b, (size_t)(plane - b) * sizeof(T));              \
                        e_at = last - b;                                                      \
                    }                                                                         \
                    const V e = LOADV(V, e_at + b);                                           \
                    const NAME##_mask l_ = LOADV(NAME##_mask, left + b), r_ = LOADV(NAME##_mask, right + b); \
                    for (I i = 0; i < 3; i++) {                                               \
                        const T *row = cur + margin + b + (i - 1) * W;                        \
                        a[3 * i] += e * FLAT_MASKED(NAME##_mask, V, row - 1, l_);             \
                        a[3 * i + 1] += e * LOADV(V, row);                                    \
                        a[3 * i + 2] += e * FLAT_MASKED(NAME##_mask, V, row + 1, r_);         \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            for (int t = 0; t < 9; t++) {                                                     \
                T sum = 0;                                                                    \
                for (I u = 0; u < lanes; u++) sum += a[t][u];                                 \
                dw[c * 9 + t] = accumulate ? dw[c * 9 + t] + sum : sum;                       \
            }                                                                                 \
        }                                                                                     \
        free(buf);                                                                            \
        return 0;                                                                             \
    }

/* dw[c] (+)= sum over samples of dy[s, c] (on the grid, zero past Wo) times the shifted
 * padded x[s, c], channels [c0, c1), any stride (PlaneGrid). The taps go DW_FILTER_TAPS to a
 * pass over each sample's plane, each into one vector of sums added to its row of partial
 * sums, summed once per channel: a fixed order. */
#define DEFINE_DEPTHWISE_GRID_FILTER(NAME, ATTR, COPY, T, V)                            \
    DEFINE_DEPTHWISE_S2_FILTER(NAME##_s2, ATTR, T, V)                                          \
    DEFINE_DEPTHWISE_FLAT_FILTER(NAME##_flat, ATTR, T, V)                                      \
    DEFINE_DW_FILTER_PASS(NAME##_p1, ATTR, T, V, 1)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p2, ATTR, T, V, 2)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p3, ATTR, T, V, 3)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p4, ATTR, T, V, 4)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p5, ATTR, T, V, 5)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p6, ATTR, T, V, 6)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p7, ATTR, T, V, 7)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p8, ATTR, T, V, 8)                                            \
    DEFINE_DW_FILTER_PASS(NAME##_p9, ATTR, T, V, 9)                                            \
    ATTR static int NAME(const T *restrict x, const T *restrict dy, T *restrict dw,  \
                                  const Geometry *g, I n, I c0, I c1, int accumulate)         \
    {                                                                                          \
        const I lanes = VLANES(V, T), block = BLOCK(V, T);                                    \
        if (depthwise_s2_k3(g)) {                                                             \
            for (I c = c0; c < c1; c++) {                                                     \
                V a[9];                                                                       \
                for (int t = 0; t < 9; t++) a[t] = (V){0};                                    \
                for (I smp = 0; smp < n; smp++) {                                             \
                    const I p = smp * g->c + c;                                               \
                    if (smp + FLAT_AHEAD < n) { /* as the flat kernel's: planes C apart */    \
                        const I ahead = p + FLAT_AHEAD * g->c;                                \
                        prefetch_bytes(x + ahead * g->h * g->w, (size_t)(g->h * g->w) * sizeof(T)); \
                        prefetch_bytes(dy + ahead * g->ho * g->wo, (size_t)(g->ho * g->wo) * sizeof(T)); \
                    }                                                                         \
                    NAME##_s2(x + p * g->h * g->w, dy + p * g->ho * g->wo, a, g->ho, g->wo);  \
                }                                                                             \
                for (int t = 0; t < 9; t++) {                                                 \
                    T sum = 0;                                                                \
                    for (I u = 0; u < lanes; u++) sum += a[t][u];                             \
                    dw[c * 9 + t] = accumulate ? dw[c * 9 + t] + sum : sum;                   \
                }                                                                             \
            }                                                                                 \
            return 0;                                                                         \
        }                                                                                     \
        if (depthwise_flat(g)) return NAME##_flat(x, dy, dw, g, n, c0, c1, accumulate);      \
        const PlaneGrid s = make_plane_grid(g, lanes, block);                                 \
        const I taps = g->kh * g->kw;                                                         \
        T *buf = malloc((size_t)(s.buffer + s.span + taps * lanes) * sizeof(T));              \
        I *offset = malloc((size_t)taps * sizeof(I));                                         \
        if (!buf || !offset) {                                                                \
            free(buf); free(offset);                                                          \
            return -1;                                                                        \
        }                                                                                     \
        T *grad = buf + s.buffer, *acc = grad + s.span;                                       \
        plane_grid_offsets(g, &s, offset);                                                    \
        memset(buf, 0, (size_t)(s.buffer + s.span) * sizeof(T));                              \
        for (I c = c0; c < c1; c++) {                                                         \
            memset(acc, 0, (size_t)(taps * lanes) * sizeof(T));                               \
            for (I smp = 0; smp < n; smp++) {                                                 \
                const I p = smp * g->c + c;                                                   \
                COPY(x + p * g->h * g->w, buf, g, &s);                                        \
                for (I r = 0; r < g->ho; r++)                                                 \
                    memcpy(grad + r * s.wp, dy + (p * g->ho + r) * g->wo, (size_t)g->wo * sizeof(T)); \
                for (I t = 0; t < taps; t += DW_FILTER_TAPS) {                                \
                    T *a = acc + t * lanes;                                                   \
                    switch (taps - t < DW_FILTER_TAPS ? taps - t : DW_FILTER_TAPS) {          \
                    case 9: NAME##_p9(buf, grad, offset + t, s.span, a); break;               \
                    case 8: NAME##_p8(buf, grad, offset + t, s.span, a); break;               \
                    case 7: NAME##_p7(buf, grad, offset + t, s.span, a); break;               \
                    case 6: NAME##_p6(buf, grad, offset + t, s.span, a); break;               \
                    case 5: NAME##_p5(buf, grad, offset + t, s.span, a); break;               \
                    case 4: NAME##_p4(buf, grad, offset + t, s.span, a); break;               \
                    case 3: NAME##_p3(buf, grad, offset + t, s.span, a); break;               \
                    case 2: NAME##_p2(buf, grad, offset + t, s.span, a); break;               \
                    default: NAME##_p1(buf, grad, offset + t, s.span, a);                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            for (I t = 0; t < taps; t++) {                                                    \
                T sum = 0;                                                                    \
                for (I u = 0; u < lanes; u++) sum += acc[t * lanes + u];                      \
                dw[c * taps + t] = accumulate ? dw[c * taps + t] + sum : sum;                 \
            }                                                                                 \
        }                                                                                     \
        free(buf); free(offset);                                                              \
        return 0;                                                                             \
    }

DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f32_512, ISA_512, plane_grid_copy_f32_512, float, vf32x16)
DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f64_512, ISA_512, plane_grid_copy_f64_512, double, vf64x8)
DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f32_256, ISA_256, plane_grid_copy_f32_256, float, vf32x8)
DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f64_256, ISA_256, plane_grid_copy_f64_256, double, vf64x4)
DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f32_128, ISA_128, plane_grid_copy_f32_128, float, vf32x4)
DEFINE_DEPTHWISE_GRID_FILTER(depthwise_grid_filter_f64_128, ISA_128, plane_grid_copy_f64_128, double, vf64x2)

/* Direct convolution of any stride, for every group, on phase planes (make_phases): every tap
 * reads whole vectors of consecutive outputs, with no column matrix (stride 1: one phase, the
 * zero-padded plane). */

/* The Cg input channels of a sample's group are laid out as phase planes, and each block of OB
 * output channels x NV vectors of outputs sums over input channels and taps in registers (one
 * load of an input vector feeds OB multiply-adds). A vector covers consecutive outputs of one
 * row; rows are ceil(Wo / lanes) vectors each, so no sums are spent on padding columns (only
 * on the lanes past Wo of a row's last vector), and where whole rows are whole vectors the
 * sums are stored straight into ``out``. Weights are packed once per call as
 * [group][block][c][tap][OB] (zeros past O/G); with ``flip`` they are read as the input
 * gradient's: output and input channels swapped, taps reversed (dx is this stride-1 conv of dy
 * padded by (k - 1)*d - p). OB x NV: 4 x 3 with AVX2 (12 sums, 3 inputs and a broadcast fill
 * the 16 registers), 8 x 3 with AVX-512 (docs/numpy.md). */
/* max(v, 0) lane by lane with NaN kept (v < 0 is false for NaN): the bits of v where it is not
 * negative, else zero */
#define RELU_V(V, v) ({ __typeof__((v) < (v)) neg_ = (v) < (V){0}; (V)((__typeof__(neg_))(v) & ~neg_); })
#ifndef DIRECT_L1
#define DIRECT_L1 32768
#endif
#define DEFINE_DIRECT_CONV(NAME, ATTR, PAD, T, V, OB, NV, EPI)                                 \
    ATTR static int NAME(const T *restrict x, const T *restrict w, T *restrict out,           \
                         const Geometry *g, I groups, I o, I n0, I n1, int flip, int accumulate, \
                         const T *restrict scale, const T *restrict shift, int relu,          \
                         const T *restrict res)                                               \
    {                                                                                          \
        const I lanes = VLANES(V, T);                                                         \
        const Phases s = make_phases(g, lanes);                                               \
        const int epilogue = EPI && (scale || shift || relu || res);                          \
        const I taps = g->kh * g->kw, cg = g->c / groups, og = o / groups;                    \
        const I blocks = (og + OB - 1) / OB, plane_out = g->ho * g->wo;                       \
        const I per_row = (g->wo + lanes - 1) / lanes, vectors = g->ho * per_row;             \
        const I vblocks = (vectors + NV - 1) / NV, staged = vblocks * NV * lanes;             \
        const int tight = !accumulate && per_row * lanes == g->wo;                            \
        /* input channels per chunk: about 16 KiB of the phase rows a block of outputs reads */ \
        I rows_read = (NV * lanes + g->wo - 1) / g->wo + (g->kh - 1) * g->dh / g->sh + 1;        \
        I row_read = NV * lanes + (g->kw - 1) * g->dw / g->sw + 16 / (I)sizeof(T);            \
        if (rows_read > s.hq) rows_read = s.hq;                                               \
        if (row_read > s.wq) row_read = s.wq;                                                 \
        const I per_channel = g->sh * g->sw * rows_read * row_read * (I)sizeof(T);            \
        const I cfit = per_channel * 2 > DIRECT_L1 ? 1 : DIRECT_L1 / 2 / per_channel;         \
        /* chunks of equal size: a short last chunk pays the sums' reload for few taps */      \
        const I cstep = (cg + (cg + cfit - 1) / cfit - 1) / ((cg + cfit - 1) / cfit);          \
        T *buf = calloc((size_t)(cg * s.channel + (tight ? 0 : og * staged)), sizeof(T));     \
        T *packed = calloc((size_t)(groups * blocks * cg * taps * OB), sizeof(T));            \
        I *offset = malloc((size_t)(cg * taps + vblocks * NV) * sizeof(I));                   \
        if (!buf || !packed || !offset) {                                                     \
            free(buf); free(packed); free(offset);                                            \
            return -1;                                                                        \
        }                                                                                     \
        T *grid = buf + cg * s.channel;                                                       \
        I *pos = offset + cg * taps;                                                          \
        /* one offset per (input channel, tap): the sum runs as one flat loop */             \
        phase_offsets(g, &s, offset);                                                         \
        for (I c = cg - 1; c >= 0; c--)                                                       \
            for (I t = 0; t < taps; t++) offset[c * taps + t] = c * s.channel + offset[t];    \
        /* the vectors past the last one read the plane's start; their sums are dropped */   \
        for (I v = 0; v < vblocks * NV; v++)                                                  \
            pos[v] = v < vectors ? v / per_row * s.wq + v % per_row * lanes : 0;              \
        for (I gr = 0; gr < groups; gr++)                                                     \
            for (I j = 0; j < og; j++)                                                        \
                for (I c = 0; c < cg; c++)                                                    \
                    for (I t = 0; t < taps; t++) {                                            \
                        /* forward: w[O][Cg]; flipped: w[C][O/G] read as [j = input ch][c] */ \
                        T value = flip ? w[((gr * cg + c) * og + j) * taps + taps - 1 - t]    \
                                       : w[((gr * og + j) * cg + c) * taps + t];              \
                        packed[(((gr * blocks + j / OB) * cg + c) * taps + t) * OB + j % OB] = value; \
                    }                                                                         \
        for (I n = n0; n < n1; n++)                                                           \
            for (I gr = 0; gr < groups; gr++) {                                               \
                for (I c = 0; c < cg; c++)                                                    \
                    PAD(x + ((n * g->c) + gr * cg + c) * g->h * g->w, buf + c * s.channel, g, &s); \
                /* the inputs a block of outputs reads from a chunk of input channels stay in  \
                   L1 while every block of output channels passes by (their packed weights      \
                   stream from L2, a quarter of a line per multiply-add step); the sums are     \
                   kept in the output between chunks, which leaves their bits unchanged */      \
                for (I vb = 0; vb < vblocks; vb++) {                                          \
                    I at[NV];                                                                 \
                    for (int v = 0; v < NV; v++) at[v] = pos[vb * NV + v];                    \
                    for (I c0 = 0; c0 < cg; c0 += cstep) {                                    \
                        const I u0 = c0 * taps, u1 = (c0 + cstep < cg ? c0 + cstep : cg) * taps; \
                        for (I ob = 0; ob < blocks; ob++) {                                   \
                            V a[OB][NV];                                                      \
                            T *dst[OB];                                                       \
                            for (int r = 0; r < OB; r++) {                                    \
                                dst[r] = ob * OB + r >= og ? NULL                             \
                                         : tight ? out + (n * o + gr * og + ob * OB + r) * plane_out \
                                                 : grid + (ob * OB + r) * staged;             \
                                for (int v = 0; v < NV; v++) {                                \
                                    const I vi = vb * NV + v;                                 \
                                    a[r][v] = c0 == 0 || !dst[r] || (tight && vi >= vectors)  \
                                                  ? (V){0} : LOADV(V, dst[r] + vi * lanes);   \
                                }                                                             \
                            }                                                                 \
                            const T *wt = packed + ((gr * blocks + ob) * cg * taps + u0) * OB; \
                            for (I u = u0; u < u1; u++, wt += OB) {                           \
                                const T *p = buf + offset[u];                                 \
                                V xv[NV];                                                     \
                                for (int v = 0; v < NV; v++) xv[v] = LOADV(V, p + at[v]);     \
                                for (int r = 0; r < OB; r++) {                                \
                                    const T k = wt[r];                                        \
                                    for (int v = 0; v < NV; v++) a[r][v] += k * xv[v];        \
                                }                                                             \
                            }                                                                 \
                            /* the last chunk of channels stores finished sums: the epilogue \
                               runs on them in registers (staged grids get it on their copy) */ \
                            const int finish = tight && epilogue && c0 + cstep >= cg;         \
                            for (int r = 0; r < OB && dst[r]; r++) {                          \
                                const I ch = gr * og + ob * OB + r;                           \
                                const T sc = scale ? scale[ch] : (T)1, sh = shift ? shift[ch] : (T)0; \
                                for (int v = 0; v < NV; v++) {                                \
                                    const I vi = vb * NV + v;                                 \
                                    if (tight && vi >= vectors) break;                        \
                                    if (finish) {                                             \
                                        a[r][v] = a[r][v] * sc + sh;                          \
                                        if (res)                                              \
                                            a[r][v] += LOADV(V, res + (dst[r] - out) + vi * lanes); \
                                        if (relu) a[r][v] = RELU_V(V, a[r][v]);               \
                                    }                                                         \
                                    memcpy(dst[r] + vi * lanes, &a[r][v], sizeof(V));         \
                                }                                                             \
                            }                                                                 \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
                if (tight) continue;                                                          \
                for (I j = 0; j < og; j++) {                                                  \
                    T *dst = out + (n * o + gr * og + j) * plane_out;                         \
                    const T *src = grid + j * staged;                                         \
                    const T sc = scale ? scale[gr * og + j] : (T)1;                           \
                    const T sh = shift ? shift[gr * og + j] : (T)0;                           \
                    for (I row = 0; row < g->ho; row++) {                                     \
                        const T *sr = src + row * per_row * lanes;                            \
                        T *dr = dst + row * g->wo;                                            \
                        const T *rr = res ? res + (dst - out) + row * g->wo : NULL;           \
                        if (accumulate)                                                       \
                            for (I q = 0; q < g->wo; q++) dr[q] += sr[q];                     \
                        else if (epilogue)                                                    \
                            for (I q = 0; q < g->wo; q++) {                                   \
                                T v = sr[q] * sc + sh;                                        \
                                if (rr) v += rr[q];                                           \
                                dr[q] = relu && v < 0 ? (T)0 : v;                             \
                            }                                                                 \
                        else                                                                  \
                            memcpy(dr, sr, (size_t)g->wo * sizeof(T));                        \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        free(buf); free(packed); free(offset);                                                \
        return 0;                                                                             \
    }

/* Built with (EPI 1) and without (EPI 0) the epilogue: the code it adds to the store path
 * slowed the calls that have none (training, the input gradient) measurably (docs/numpy.md). */
#define DEFINE_DIRECT_CONV_ISAS(NAME, EPI)                                                       \
    DEFINE_DIRECT_CONV(NAME##_f32_512, ISA_512, phase_rows_f32_512, float, vf32x16, 8, 3, EPI)   \
    DEFINE_DIRECT_CONV(NAME##_f64_512, ISA_512, phase_rows_f64_512, double, vf64x8, 8, 3, EPI)   \
    DEFINE_DIRECT_CONV(NAME##_f32_256, ISA_256, phase_rows_f32_256, float, vf32x8, 4, 3, EPI)    \
    DEFINE_DIRECT_CONV(NAME##_f64_256, ISA_256, phase_rows_f64_256, double, vf64x4, 4, 3, EPI)   \
    DEFINE_DIRECT_CONV(NAME##_f32_128, ISA_128, phase_rows_f32_128, float, vf32x4, 4, 2, EPI)    \
    DEFINE_DIRECT_CONV(NAME##_f64_128, ISA_128, phase_rows_f64_128, double, vf64x2, 4, 2, EPI)

DEFINE_DIRECT_CONV_ISAS(direct_conv, 0)
DEFINE_DIRECT_CONV_ISAS(direct_conv_epi, 1)

/* AVX2 float32 with blocks of 6 output channels x 2 vectors (12 sums too): where a plane's
 * vectors do not fill blocks of 3 (an 8x8 plane is 8 vectors, three blocks of 3: one sum in
 * nine spent past the plane), blocks of 2 waste less (six channels in a block of 64: 3 %). */
DEFINE_DIRECT_CONV(direct_conv_f32_256_6x2, ISA_256, phase_rows_f32_256, float, vf32x8, 6, 2, 0)
DEFINE_DIRECT_CONV(direct_conv_epi_f32_256_6x2, ISA_256, phase_rows_f32_256, float, vf32x8, 6, 2, 1)

/* Whether the 6 x 2 blocks compute fewer sums than the 4 x 3 ones for this AVX2 float32 stride-1
 * conv (``og`` output channels per group); strided ones keep 4 x 3 (their kernel is tuned apart). */
static int direct_6x2(const Geometry *g, I og)
{
    const I vectors = g->ho * ((g->wo + 7) / 8);
    return isa == 1 && g->sh == 1 && g->sw == 1
           && (vectors + 1) / 2 * 2 * ((og + 5) / 6 * 6) < (vectors + 2) / 3 * 3 * ((og + 3) / 4 * 4);
}

/* AVX-512 float32 strided convs whose output rows fit in half a vector (Wo <= 8: the ResNet's
 * 8x8 planes of its 3x3 stride-2 32->64 conv): the 16-lane build spends half of every sum past
 * the row; 8-lane vectors in AVX-512's 32 registers run blocks of 4 channels x 4 vectors
 * instead (6 x 4 and 8 x 2 measured slower on 8x8 planes; docs/numpy.md). */
DEFINE_DIRECT_CONV(direct_conv_f32_512h, ISA_512VL, phase_rows_f32_512, float, vf32x8, 4, 4, 0)
DEFINE_DIRECT_CONV(direct_conv_epi_f32_512h, ISA_512VL, phase_rows_f32_512, float, vf32x8, 4, 4, 1)
/* AVX-512 float32 strided convs with blocks of 8 channels x 2 vectors where a plane's vectors
 * do not fill blocks of 3 (a 16x16 plane is 16 vectors: six blocks of 3 spend one sum in nine
 * past the plane, eight blocks of 2 none) */
DEFINE_DIRECT_CONV(direct_conv_f32_512_8x2, ISA_512, phase_rows_f32_512, float, vf32x16, 8, 2, 0)
DEFINE_DIRECT_CONV(direct_conv_epi_f32_512_8x2, ISA_512, phase_rows_f32_512, float, vf32x16, 8, 2, 1)

/* Whether this AVX-512 float32 conv runs on the 8-lane build above: strided, rows of at most 8. */
static int direct_half(const Geometry *g)
{
    return isa == 2 && avx512vl && (g->sh > 1 || g->sw > 1) && g->wo <= 8;
}

/* Whether this AVX-512 float32 strided conv (not direct_half's) spends fewer sums in blocks of 2
 * vectors than of 3 (stride-1 ones keep 8 x 3: not measured). */
static int direct_512_8x2(const Geometry *g)
{
    const I vectors = g->ho * ((g->wo + 15) / 16);
    return isa == 2 && (g->sh > 1 || g->sw > 1) && !direct_half(g) && (vectors + 1) / 2 * 2 < (vectors + 2) / 3 * 3;
}

/* A 1x1, stride-1, unpadded, ungrouped conv is one GEMM per sample, out[j][q] (+)= sum over k of
 * w(j, k) x[k][q], with w(j, k) = w[j][k], or w[k][j] with ``flip`` (its input gradient). It runs
 * on the NCHW planes as they are: blocks of OB output channels x NV vectors of pixels sum in
 * registers over all K input channels, broadcasting the weights straight from w, and the epilogue
 * runs on the finished sums before their one store: no copy of the input, no packing, no zeroing
 * or epilogue pass over the output (OpenBLAS's sgemm on these thin K = 64 products, plus the
 * epilogue pass, took longer on Zen 4: docs/numpy.md). Pixels run in bands whose K input
 * rows fit in half of L2, so each block of output channels rereads them from there. */
#define PW_BAND_BYTES (1 << 18)
#define DEFINE_PW_BLOCK(NAME, ATTR, T, V, OB, NV)                                                  \
    ATTR static inline void NAME(const T *restrict x, const T *restrict w, T *restrict out, I hw,    \
                                 I k_in, I wj, I wk, int accumulate, const T *restrict scale,        \
                                 const T *restrict shift, int relu, const T *restrict res, I j0, I q) \
    {                                                                                              \
        const I lanes = VLANES(V, T);                                                             \
        V a[OB][NV];                                                                              \
        for (int r = 0; r < OB; r++)                                                              \
            for (int v = 0; v < NV; v++)                                                          \
                a[r][v] = accumulate ? LOADV(V, out + (j0 + r) * hw + q + v * lanes) : (V){0};    \
        const T *xk = x + q, *wr = w + j0 * wj;                                                   \
        for (I k = 0; k < k_in; k++, xk += hw, wr += wk) {                                        \
            V xv[NV];                                                                             \
            for (int v = 0; v < NV; v++) xv[v] = LOADV(V, xk + v * lanes);                        \
            for (int r = 0; r < OB; r++) {                                                        \
                const T c = wr[r * wj];                                                           \
                for (int v = 0; v < NV; v++) a[r][v] += c * xv[v];                                \
            }                                                                                     \
        }                                                                                         \
        for (int r = 0; r < OB; r++) {                                                            \
            const I ch = j0 + r;                                                                  \
            const T sc = scale ? scale[ch] : (T)1, sh = shift ? shift[ch] : (T)0;                 \
            for (int v = 0; v < NV; v++) {                                                        \
                const I at = ch * hw + q + v * lanes;                                             \
                if (scale || shift) a[r][v] = a[r][v] * sc + sh;                                  \
                if (res) a[r][v] += LOADV(V, res + at);                                           \
                if (relu) a[r][v] = RELU_V(V, a[r][v]);                                           \
                memcpy(out + at, &a[r][v], sizeof(V));                                            \
            }                                                                                     \
        }                                                                                         \
    }

/* out[j][q] (+)= sum over k of w[j * wj + k * wk] x[k * hw + q] for one plane of hw pixels (rows
 * of x and out hw apart), then the epilogue: blocks of OB x NV in bands that keep x's rows in L2. */
/* the band [b0, b1) of output rows from j: WIDE's blocks of NV vectors, then NARROW's single ones */
#define PW_BAND(WIDE, NARROW)                                                                      \
    do {                                                                                           \
        I q = b0;                                                                                  \
        for (; q + wide <= b1; q += wide)                                                          \
            WIDE(xn, w, on, hw, k_in, wj, wk, accumulate, scale, shift, relu, rn, j, q);          \
        for (; q < b1; q += lanes)                                                                 \
            NARROW(xn, w, on, hw, k_in, wj, wk, accumulate, scale, shift, relu, rn, j, q);        \
    } while (0)

#define DEFINE_PW_GEMM(NAME, ATTR, T, V, OB, NV)                                                   \
    DEFINE_PW_BLOCK(NAME##_full, ATTR, T, V, OB, NV)                                              \
    DEFINE_PW_BLOCK(NAME##_rows, ATTR, T, V, OB, 1)                                               \
    DEFINE_PW_BLOCK(NAME##_cols, ATTR, T, V, 1, NV)                                               \
    DEFINE_PW_BLOCK(NAME##_one, ATTR, T, V, 1, 1)                                                 \
    ATTR static inline void NAME(const T *restrict xn, const T *restrict w, T *restrict on, I k_in, I o, \
                                 I hw, I wj, I wk, int accumulate, const T *restrict scale,         \
                                 const T *restrict shift, int relu, const T *restrict rn)           \
    {                                                                                              \
        const I lanes = VLANES(V, T), wide = NV * lanes, whole = hw / lanes * lanes;               \
        I band = PW_BAND_BYTES / 2 / (k_in * (I)sizeof(T)) / wide * wide;                         \
        if (band < wide) band = wide;                                                             \
        for (I b0 = 0; b0 < whole; b0 += band) {                                                  \
            const I b1 = b0 + band < whole ? b0 + band : whole;                                   \
            I j = 0;                                                                              \
            for (; j + OB <= o; j += OB) PW_BAND(NAME##_full, NAME##_rows);                       \
            for (; j < o; j++) PW_BAND(NAME##_cols, NAME##_one);                                  \
        }                                                                                         \
        /* the pixels past the last whole vector, one at a time, same order of sums */            \
        for (I j = 0; j < o; j++)                                                                 \
            for (I q = whole; q < hw; q++) {                                                      \
                T sum = accumulate ? on[j * hw + q] : (T)0;                                       \
                for (I k = 0; k < k_in; k++) sum += w[j * wj + k * wk] * xn[k * hw + q];          \
                if (scale || shift) sum = sum * (scale ? scale[j] : (T)1) + (shift ? shift[j] : (T)0); \
                if (rn) sum += rn[j * hw + q];                                                    \
                on[j * hw + q] = relu && sum < 0 ? (T)0 : sum;                                    \
            }                                                                                     \
    }

#define DEFINE_POINTWISE_CONV(NAME, GEMM, ATTR, T)                                                 \
    ATTR static void NAME(const T *restrict x, const T *restrict w, T *restrict out, I k_in, I o,  \
                          I hw, I n0, I n1, int flip, int accumulate, const T *restrict scale,     \
                          const T *restrict shift, int relu, const T *restrict res)               \
    {                                                                                              \
        const I wj = flip ? 1 : k_in, wk = flip ? o : 1;                                          \
        for (I n = n0; n < n1; n++)                                                               \
            GEMM(x + n * k_in * hw, w, out + n * o * hw, k_in, o, hw, wj, wk, accumulate, scale, shift, relu, \
                 res ? res + n * o * hw : NULL);                                                  \
    }

/* A strided 1x1 conv (ungrouped, any padding) as pointwise_conv on each sample's pixels under
 * the kernel, gathered (zeros in the padding) into a C x Ho*Wo scratch that stays in L1 or L2
 * for the GEMM: no im2col pass over the batch, the epilogue in registers. Returns -1 when the
 * scratch cannot be allocated. */
#define DEFINE_POINTWISE_STRIDED(NAME, GEMM, ATTR, T)                                              \
    ATTR static int NAME(const T *restrict x, const T *restrict w, T *restrict out, const Geometry *g, \
                         I o, I n0, I n1, int flip, int accumulate, const T *restrict scale,       \
                         const T *restrict shift, int relu, const T *restrict res)                \
    {                                                                                              \
        const I c = g->c, hw = g->ho * g->wo, wj = flip ? 1 : c, wk = flip ? o : 1;               \
        T *buf = malloc((size_t)(c * hw) * sizeof(T));                                            \
        if (!buf) return -1;                                                                      \
        for (I n = n0; n < n1; n++) {                                                             \
            for (I ch = 0; ch < c; ch++) {                                                        \
                const T *plane = x + (n * c + ch) * g->h * g->w;                                  \
                T *dst = buf + ch * hw;                                                           \
                for (I i = 0; i < g->ho; i++, dst += g->wo) {                                     \
                    const I r = i * g->sh - g->ph;                                                \
                    if (r < 0 || r >= g->h) {                                                     \
                        memset(dst, 0, (size_t)g->wo * sizeof(T));                                \
                        continue;                                                                 \
                    }                                                                             \
                    const T *row = plane + r * g->w;                                              \
                    for (I j = 0; j < g->wo; j++) {                                               \
                        const I q = j * g->sw - g->pw;                                            \
                        dst[j] = q >= 0 && q < g->w ? row[q] : (T)0;                              \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
            GEMM(buf, w, out + n * o * hw, c, o, hw, wj, wk, accumulate, scale, shift, relu,      \
                 res ? res + n * o * hw : NULL);                                                  \
        }                                                                                         \
        free(buf);                                                                                \
        return 0;                                                                                 \
    }

/* The input gradient of a strided 1x1 conv (ungrouped): per sample, W^T dy on the pointwise
 * blocks into a C x Ho*Wo scratch, then each value added to the one dx pixel under it; dx's
 * other pixels zero (or as they were, with ``accumulate``). One pass where im2col + GEMM's
 * col2im zeroed and added back the whole batch. Returns -1 when the scratch cannot be
 * allocated. */
#define DEFINE_POINTWISE_SCATTER(NAME, GEMM, ATTR, T)                                              \
    ATTR static int NAME(const T *restrict dy, const T *restrict w, T *restrict dx, const Geometry *g, \
                         I o, I n0, I n1, int accumulate)                                          \
    {                                                                                              \
        const I c = g->c, hw = g->ho * g->wo, plane = g->h * g->w;                                \
        T *buf = malloc((size_t)(c * hw) * sizeof(T));                                            \
        if (!buf) return -1;                                                                      \
        for (I n = n0; n < n1; n++) {                                                             \
            GEMM(dy + n * o * hw, w, buf, o, c, hw, 1, c, 0, NULL, NULL, 0, NULL);                \
            for (I ch = 0; ch < c; ch++) {                                                        \
                T *dst = dx + (n * c + ch) * plane;                                               \
                const T *src = buf + ch * hw;                                                     \
                if (!accumulate) memset(dst, 0, (size_t)plane * sizeof(T));                       \
                for (I i = 0; i < g->ho; i++) {                                                   \
                    const I r = i * g->sh - g->ph;                                                \
                    if (r < 0 || r >= g->h) continue;                                             \
                    for (I j = 0; j < g->wo; j++) {                                               \
                        const I q = j * g->sw - g->pw;                                            \
                        if (q >= 0 && q < g->w) dst[r * g->w + q] += src[i * g->wo + j];          \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        free(buf);                                                                                \
        return 0;                                                                                 \
    }

/* The GEMMs of a tiled (Winograd) conv, m[k] = u[k] v[k] for each of ``positions`` positions k:
 * u's slices (O, uc) us items apart, of which position k multiplies its first depth[k] columns
 * (all C of them where ``depth`` is NULL: (O, C)) with v's slice (depth[k], P), into m's (O, P);
 * v's and m's slices vs and ms items apart. Same blocks as the pointwise conv (the 1x1 conv is this product
 * with one position); one call for all. */
#define DEFINE_TILE_GEMM(NAME, GEMM, ATTR, T)                                                      \
    ATTR static void NAME(const T *restrict u, const T *restrict v, T *restrict m, I positions, I o, \
                          I c, I p, I us, I vs, I ms, const I *depth, I uc, int accumulate)       \
    {                                                                                              \
        for (I k = 0; k < positions; k++)                                                         \
            GEMM(v + k * vs, u + k * us, m + k * ms, depth ? depth[k] : c, o, p, uc, 1, accumulate, NULL, NULL, 0, \
                 NULL);                                                                           \
    }

/* The 3x3 stride-2 phase Winograd's nine positions (p, q) in order: how many C-row segments
 * (phases) each position's K has (s2_row: 4 at the corners, 2 at the edges, 1 at the centre) */
static const I S2_DEPTH[9] = {4, 2, 4, 2, 1, 2, 4, 2, 4};

/* The strided weight gradient's nine GEMMs of one chunk of samples in one call (one GIL release
 * instead of nine): position k's u slice (K(k) x P, K(k) = S2_DEPTH[k] * C rows, slices us apart)
 * times v's (P x O, vs apart), (+)= into rows [start(k), start(k) + K(k)) of m's (25C x O), the
 * positions' rows one after the other. Each product as tile_gemm's with one position. */
#define DEFINE_S2_FILTER_GEMM(NAME, GEMM, ATTR, T)                                                 \
    ATTR static void NAME(const T *restrict u, const T *restrict v, T *restrict m, I c, I p, I o, I us, \
                          I vs, int accumulate)                                                   \
    {                                                                                              \
        I start = 0;                                                                              \
        for (I k = 0; k < 9; k++) {                                                               \
            const I rows = S2_DEPTH[k] * c;                                                       \
            GEMM(v + k * vs, u + k * us, m + start * o, p, rows, o, p, 1, accumulate, NULL, NULL, 0, NULL); \
            start += rows;                                                                        \
        }                                                                                         \
    }

#define DEFINE_PW_ISA(SUFFIX, ATTR, T, V, OB, NV)                                                  \
    DEFINE_PW_GEMM(pw_gemm_##SUFFIX, ATTR, T, V, OB, NV)                                          \
    DEFINE_POINTWISE_CONV(pointwise_conv_##SUFFIX, pw_gemm_##SUFFIX, ATTR, T)                     \
    DEFINE_POINTWISE_STRIDED(pointwise_strided_##SUFFIX, pw_gemm_##SUFFIX, ATTR, T)               \
    DEFINE_POINTWISE_SCATTER(pointwise_scatter_##SUFFIX, pw_gemm_##SUFFIX, ATTR, T)               \
    DEFINE_TILE_GEMM(tile_gemm_##SUFFIX, pw_gemm_##SUFFIX, ATTR, T)                               \
    DEFINE_S2_FILTER_GEMM(s2_filter_gemm_##SUFFIX, pw_gemm_##SUFFIX, ATTR, T)

DEFINE_PW_ISA(f32_512, ISA_512, float, vf32x16, 8, 3)
DEFINE_PW_ISA(f64_512, ISA_512, double, vf64x8, 8, 3)
DEFINE_PW_ISA(f32_256, ISA_256, float, vf32x8, 4, 3)
DEFINE_PW_ISA(f64_256, ISA_256, double, vf64x4, 4, 3)
DEFINE_PW_ISA(f32_128, ISA_128, float, vf32x4, 4, 2)
DEFINE_PW_ISA(f64_128, ISA_128, double, vf64x2, 4, 2)

/* Whether direct_conv runs this geometry on pointwise_conv: 1x1, stride 1, unpadded, ungrouped. */
static int pointwise(const Geometry *g, I groups)
{
    return groups == 1 && g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* Whether direct_conv runs this geometry on pointwise_strided: 1x1, strided, ungrouped. */
static int pointwise_gathered(const Geometry *g, I groups)
{
    return groups == 1 && g->kh == 1 && g->kw == 1 && (g->sh > 1 || g->sw > 1);
}

/* The direct kernel's weight gradient: dw[o, c, tap] (+)= sum over samples [n0, n1) and output
 * positions of dy[o] times the shifted padded x[c]. Blocks of FO output channels x NT taps keep
 * one vector of partial sums each in registers over a whole output plane, then reduce their
 * lanes (SUMS) and add them into dw. dy rows are copied ceil(Wo / lanes) whole vectors wide,
 * zero past Wo, so no sums are spent on the padded grid's gap columns (only on the lanes past
 * Wo of a row's last vector); x stays on the padded grid (rows W + pw apart). A block's NT
 * (input channel, tap) pairs are FT taps of one channel, or the remaining taps % FT of FT
 * channels (5x5 with FT 3: 8 blocks of 3 taps per channel, then the 25th tap of 3 channels at
 * a time), so no sums are spent on padding taps, and the remaining taps still load as few
 * vectors per multiply-add as the others; a group's og % FO output channels past its whole
 * blocks run blocks of 2 or 1 outputs (NAME_r2, NAME_r1) over FILTER_REST_TAPS_2 or _1 pairs,
 * not a whole block with zero dy planes. The FO dy planes of a block stay in L1 while the input
 * channels pass by: they lie a cache line more than a whole number of 4 KiB apart (a 32x32
 * plane is 4 KiB, and FO planes plus x in the same L1 sets overflow its ways) and start on
 * cache lines. AVX-512 blocks 4 x 5 (8 x 3 filled all of L1 with dy; docs/numpy.md); AVX2's
 * float build 3 x 3 (4 x 3, which fills all 16 registers with its sums, inputs and dy vector,
 * took longer on the bench's grouped and 5x5 layers: docs/numpy.md, session 52). */

/* Keeps vector v in a register: GCC folded one of the AVX2 float block's three input loads into
 * each of the three FMAs using it (8 loads a step instead of 6, the loop bound by its loads;
 * docs/numpy.md, session 53). Only the 256-bit builds take it: AVX-512's block was no faster. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif
/* sums[k] = the lanes of a[k] added in order */
#define FILTER_SUMS_SCALAR(T, V, a, K, sums)                                                   \
    for (int k_ = 0; k_ < (K); k_++) {                                                         \
        T s_ = 0;                                                                              \
        for (I l_ = 0; l_ < VLANES(V, T); l_++) s_ += (a)[k_][l_];                              \
        (sums)[k_] = s_;                                                                       \
    }

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
/* The same sums by a tree of horizontal adds, 8 vectors at a time (zeros past K): the scalar
 * lane-by-lane sums of 12 vectors cost a measurable share of a 32x32 plane's pass
 * (docs/numpy.md). Writes sums up to K rounded up to 8. */
#define FILTER_SUMS_TREE(a, K, sums, HALF)                                                     \
    for (int k_ = 0; k_ < (K); k_ += 8) {                                                      \
        __m256 p_[8];                                                                          \
        for (int i_ = 0; i_ < 8; i_++) p_[i_] = k_ + i_ < (K) ? HALF((a)[k_ + i_]) : _mm256_setzero_ps(); \
        const __m256 h0_ = _mm256_hadd_ps(p_[0], p_[1]), h1_ = _mm256_hadd_ps(p_[2], p_[3]);  \
        const __m256 h2_ = _mm256_hadd_ps(p_[4], p_[5]), h3_ = _mm256_hadd_ps(p_[6], p_[7]);  \
        /* q0_: the four sums of vectors 0-3 over their low halves, then over their high halves */ \
        const __m256 q0_ = _mm256_hadd_ps(h0_, h1_), q1_ = _mm256_hadd_ps(h2_, h3_);          \
        _mm256_storeu_ps((sums) + k_, _mm256_add_ps(_mm256_permute2f128_ps(q0_, q1_, 0x20),    \
                                                   _mm256_permute2f128_ps(q0_, q1_, 0x31)));   \
    }
#define FILTER_F32X8_AS_256(v) ((__m256)(v))
/* a 16-float vector's low half plus its high half: one add puts it on the 8-wide tree */
#define FILTER_F32X16_AS_256(v)                                                                \
    _mm256_add_ps(_mm512_castps512_ps256((__m512)(v)),                                         \
                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)(v)), 1)))
#define FILTER_SUMS_F32X8(T, V, a, K, sums) FILTER_SUMS_TREE(a, K, sums, FILTER_F32X8_AS_256)
/* AVX-512: each vector's two halves added, then the same tree */
#define FILTER_SUMS_F32X16(T, V, a, K, sums) FILTER_SUMS_TREE(a, K, sums, FILTER_F32X16_AS_256)
#else
#define FILTER_SUMS_F32X8 FILTER_SUMS_SCALAR
#define FILTER_SUMS_F32X16 FILTER_SUMS_SCALAR
#endif
/* room for the sums of the largest block (8 x 3) */
#define FILTER_MAX_SUMS 32
/* taps a block of the last og % FO outputs takes, by its rows (the whole blocks' FO rows would
 * sum dy's zeros): eight sums a block, about the whole blocks' independent FMA chains */
#define FILTER_REST_TAPS_1 8
#define FILTER_REST_TAPS_2 4

/* sums[r * NT + u] = the dot product of the vecs vectors of dy plane r (eplane apart from e0)
 * with those of the input from src + off[u] */
#define DEFINE_FILTER_BLOCK(NAME, ATTR, T, V, FO, NT, SUMS)                                    \
    ATTR static inline void NAME(const T *restrict src, const T *restrict e0, I eplane, const I *off, \
                                 I vecs, T *restrict sums)                                    \
    {                                                                                          \
        const I lanes = VLANES(V, T);                                                         \
        V a[FO * NT];                                                                         \
        for (int k = 0; k < FO * NT; k++) a[k] = (V){0};                                      \
        for (I b = 0; b < vecs * lanes; b += lanes) {                                         \
            V xv[NT];                                                                         \
            for (int u = 0; u < NT; u++) {                                                    \
                xv[u] = LOADV(V, src + b + off[u]);                                           \
                if (sizeof(V) == 32 && FO * NT + NT < 16) IN_REGISTER(xv[u]);                 \
            }                                                                                 \
            for (int r = 0; r < FO; r++) {                                                    \
                const V ev = LOADV(V, e0 + r * eplane + b);                                   \
                for (int u = 0; u < NT; u++) a[r * NT + u] += ev * xv[u];                     \
            }                                                                                 \
        }                                                                                     \
        SUMS(T, V, a, FO * NT, sums)                                                          \
    }

/* The pointwise (1x1, stride 1, unpadded, ungrouped) weight gradient with the same blocks on the
 * planes in place: they already are rows of whole vectors (no padding to add, no gap columns in
 * dy), so copying them to the grid only costs (docs/numpy.md). Blocks of FO output x FT input
 * channels; a last partial block repeats its last channel, whose sums are dropped (needs
 * o >= FO); the pixels past the last whole vector are added one at a time after the vector
 * sums. */
#define DEFINE_PW_FILTER(NAME, BLOCK, ATTR, T, V, FO, FT)                                         \
    ATTR static void NAME(const T *restrict x, const T *restrict dy, T *restrict dw, I c, I o, I hw, \
                          I n0, I n1, int accumulate)                                             \
    {                                                                                              \
        const I vecs = hw / VLANES(V, T), whole = vecs * VLANES(V, T);                            \
        T sums[FILTER_MAX_SUMS];                                                                  \
        I off[FT];                                                                                \
        if (!accumulate) memset(dw, 0, (size_t)(o * c) * sizeof(T));                              \
        for (I n = n0; n < n1; n++) {                                                             \
            const T *xn = x + n * c * hw, *dn = dy + n * o * hw;                                  \
            for (I ob = 0; ob < o; ob += FO) {                                                    \
                const I o0 = ob + FO <= o ? ob : o - FO;                                          \
                for (I cb = 0; cb < c; cb += FT) {                                                \
                    for (int u = 0; u < FT; u++) off[u] = (cb + u < c ? cb + u : c - 1) * hw;      \
                    BLOCK(xn, dn + o0 * hw, hw, off, vecs, sums);                        \
                    for (I r = ob - o0; r < FO; r++)                                              \
                        for (I u = 0; u < FT && cb + u < c; u++) {                                \
                            const T *dr = dn + (o0 + r) * hw, *xr = xn + off[u];                  \
                            T sum = sums[r * FT + u];                                             \
                            for (I q = whole; q < hw; q++) sum += dr[q] * xr[q];                  \
                            dw[(o0 + r) * c + cb + u] += sum;                                     \
                        }                                                                         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

#define DEFINE_DIRECT_GRID_FILTER(NAME, ATTR, ROWS, PHASES, T, V, FO, FT, SUMS)                \
    DEFINE_FILTER_BLOCK(NAME##_t1, ATTR, T, V, FO, 1, SUMS)                                   \
    DEFINE_FILTER_BLOCK(NAME##_t2, ATTR, T, V, FO, 2, SUMS)                                   \
    DEFINE_FILTER_BLOCK(NAME##_t3, ATTR, T, V, FO, 3, SUMS)                                   \
    DEFINE_FILTER_BLOCK(NAME##_t4, ATTR, T, V, FO, 4, SUMS)                                   \
    DEFINE_FILTER_BLOCK(NAME##_t5, ATTR, T, V, FO, 5, SUMS)                                   \
    DEFINE_FILTER_BLOCK(NAME##_r1, ATTR, T, V, 1, FILTER_REST_TAPS_1, SUMS)                   \
    DEFINE_FILTER_BLOCK(NAME##_r2, ATTR, T, V, 2, FILTER_REST_TAPS_2, SUMS)                   \
    DEFINE_PW_FILTER(NAME##_pw, NAME##_t##FT, ATTR, T, V, FO, FT)                             \
    ATTR static int NAME(const T *restrict x, const T *restrict dy, T *restrict dw,           \
                         const Geometry *g, I groups, I o, I n0, I n1, int accumulate)        \
    {                                                                                          \
        if (pointwise(g, groups) && o >= FO) {                                                \
            NAME##_pw(x, dy, dw, g->c, o, g->h * g->w, n0, n1, accumulate);                   \
            return 0;                                                                         \
        }                                                                                     \
        const I lanes = VLANES(V, T);                                                         \
        Grid s = make_grid(g, lanes);                                                         \
        /* strided: the input's phase planes (make_phases), where each tap reads whole rows of \
           one phase as a stride-1 tap reads the padded plane's rows */                     \
        const Phases ph = make_phases(g, lanes);                                              \
        const int strided = g->sh > 1 || g->sw > 1;                                           \
        const I taps = g->kh * g->kw, cg = g->c / groups, og = o / groups;                    \
        const I pairs = cg * taps, whole = taps / FT * FT;                                    \
        const I full = og / FO; /* whole blocks of FO outputs; the rest on NAME##_r2, _r1 */   \
        /* dy's rows are copied wp apart, as the input's rows (or phase rows) are: every tap \
           then runs as one flat loop over the plane, not a loop per row (whose setup cost    \
           more than the gap columns' sums: docs/numpy.md); dy is zero in the gaps */        \
        const I wp = strided ? ph.wq : s.wp;                                                  \
        const I vecs = (g->ho * wp + lanes - 1) / lanes, eplane = vecs * lanes + lanes;       \
        /* the last vector reads up to the largest tap offset past the flat plane */         \
        const I last = strided ? phase_last(g, &ph) : (g->kh - 1) * g->dh * s.wp + (g->kw - 1) * g->dw; \
        const I reach = last + vecs * lanes;                                                  \
        if (s.buffer < reach) s.buffer = reach;                                               \
        const I plane = strided ? (ph.channel > reach ? ph.channel : reach) : s.buffer;       \
        /* dy's vectors on whole cache lines: a line-split load costs two */                  \
        const I xsize = (cg * plane + 63) / 64 * 64;                                          \
        void *mem = NULL;                                                                     \
        T *buf = posix_memalign(&mem, 64, (size_t)(xsize + og * eplane) * sizeof(T)) ? NULL : mem; \
        I *offset = malloc((size_t)(taps + 2 * pairs + FILTER_REST_TAPS_1) * sizeof(I));      \
        if (!buf || !offset) {                                                                \
            free(buf); free(offset);                                                          \
            return -1;                                                                        \
        }                                                                                     \
        T *grad = buf + xsize;                                                                \
        T sums[FILTER_MAX_SUMS] = {0};                                                        \
        if (strided)                                                                          \
            phase_offsets(g, &ph, offset);                                                    \
        else                                                                                  \
            tap_offsets(g, &s, offset);                                                       \
        /* the padding, the gap columns and the slack past the planes are zero once: each     \
           sample writes the same places of them (the phases and the rows), nothing else (the  \
           slack is read times dy's zero columns: zeros, not NaN bits) */                     \
        memset(buf, 0, (size_t)xsize * sizeof(T));                                            \
        /* the (input channel, tap) pairs in block order: each channel's whole blocks of FT     \
           taps, then the remaining taps of every channel, FT pairs (channels) to a block */   \
        I *at = offset + taps, *into = at + pairs + FILTER_REST_TAPS_1, k = 0;                 \
        for (I c = 0; c < cg; c++)                                                            \
            for (I t = 0; t < whole; t++, k++) at[k] = c * plane + offset[t], into[k] = c * taps + t; \
        for (I c = 0; c < cg; c++)                                                            \
            for (I t = whole; t < taps; t++, k++) at[k] = c * plane + offset[t], into[k] = c * taps + t; \
        /* the rest's blocks past the last pair read the first pair's inputs, their sums dropped */ \
        for (; k < pairs + FILTER_REST_TAPS_1; k++) at[k] = at[0];                            \
        memset(grad, 0, (size_t)(og * eplane) * sizeof(T));                                   \
        if (!accumulate) memset(dw, 0, (size_t)(o * cg * taps) * sizeof(T));                  \
        for (I n = n0; n < n1; n++)                                                           \
            for (I gr = 0; gr < groups; gr++) {                                               \
                for (I c = 0; c < cg; c++) {                                                  \
                    const T *xc = x + ((n * g->c) + gr * cg + c) * g->h * g->w;               \
                    if (strided)                                                              \
                        PHASES(xc, buf + c * plane, g, &ph);                                  \
                    else                                                                      \
                        ROWS(xc, buf + c * plane, g, &s);                                     \
                }                                                                             \
                for (I j = 0; j < og; j++)                                                    \
                    for (I r = 0; r < g->ho; r++)                                             \
                        memcpy(grad + j * eplane + r * wp,                                    \
                               dy + ((n * o + gr * og + j) * g->ho + r) * g->wo, (size_t)g->wo * sizeof(T)); \
                /* a block's FO dy planes stay in L1 while every input channel passes by */  \
                for (I ob = 0; ob < full; ob++)                                               \
                    for (I p = 0; p < pairs; p += FT) {                                       \
                        const I nt = pairs - p < FT ? pairs - p : FT;                         \
                        const T *e0 = grad + ob * FO * eplane;                                \
                        switch (nt) {                                                         \
                        case 5: NAME##_t5(buf, e0, eplane, at + p, vecs, sums); break; \
                        case 4: NAME##_t4(buf, e0, eplane, at + p, vecs, sums); break; \
                        case 3: NAME##_t3(buf, e0, eplane, at + p, vecs, sums); break; \
                        case 2: NAME##_t2(buf, e0, eplane, at + p, vecs, sums); break; \
                        default: NAME##_t1(buf, e0, eplane, at + p, vecs, sums); \
                        }                                                                     \
                        for (I r = 0; r < FO; r++)                                            \
                            for (I u = 0; u < nt; u++)                                        \
                                dw[(gr * og + ob * FO + r) * pairs + into[p + u]] += sums[r * nt + u]; \
                    }                                                                         \
                /* the last og % FO outputs: blocks of two or one, not FO with dy's zeros */   \
                for (I r0 = full * FO; r0 < og;) {                                            \
                    const I rows = og - r0 >= 2 ? 2 : 1;                                      \
                    const I bt = rows == 2 ? FILTER_REST_TAPS_2 : FILTER_REST_TAPS_1;         \
                    for (I p = 0; p < pairs; p += bt) {                                       \
                        const I nt = pairs - p < bt ? pairs - p : bt;                         \
                        if (rows == 2)                                                        \
                            NAME##_r2(buf, grad + r0 * eplane, eplane, at + p, vecs, sums);   \
                        else                                                                  \
                            NAME##_r1(buf, grad + r0 * eplane, eplane, at + p, vecs, sums);   \
                        for (I r = 0; r < rows; r++)                                          \
                            for (I u = 0; u < nt; u++)                                        \
                                dw[(gr * og + r0 + r) * pairs + into[p + u]] += sums[r * bt + u]; \
                    }                                                                         \
                    r0 += rows;                                                               \
                }                                                                             \
            }                                                                                 \
        free(buf); free(offset);                                                              \
        return 0;                                                                             \
    }

DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f32_512, ISA_512, plane_rows_f32, phase_rows_f32_512, float, vf32x16, 4, 5, FILTER_SUMS_F32X16)
DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f64_512, ISA_512, plane_rows_f64, phase_rows_f64_512, double, vf64x8, 8, 3, FILTER_SUMS_SCALAR)
DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f32_256, ISA_256, plane_rows_f32, phase_rows_f32_256, float, vf32x8, 3, 3, FILTER_SUMS_F32X8)
DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f64_256, ISA_256, plane_rows_f64, phase_rows_f64_256, double, vf64x4, 4, 3, FILTER_SUMS_SCALAR)
DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f32_128, ISA_128, plane_rows_f32, phase_rows_f32_128, float, vf32x4, 4, 2, FILTER_SUMS_SCALAR)
DEFINE_DIRECT_GRID_FILTER(direct_grid_filter_f64_128, ISA_128, plane_rows_f64, phase_rows_f64_128, double, vf64x2, 4, 2, FILTER_SUMS_SCALAR)

/* Winograd F(2x2, 3x3) for stride-1 3x3 convolutions (any dilation d): each tile of 2x2
 * outputs, d apart, is A^T [(G g G^T) . (B^T x B)] A of the 4x4 inputs under it, so the 36
 * multiply-adds per output channel and input channel become 16 per tile (9/4 fewer), done as
 * 16 GEMMs (one per transformed position k) by BLAS between these transforms:
 * u[k][a][b] (out x in channels), v[k][b][p] and m[k][a][p] over the tiles p of a chunk of
 * samples. Along each axis tiles come in groups of d: group q covers outputs q*2d .. q*2d+2d-1,
 * tile t of it outputs t + q*2d and t + q*2d + d. */
static I wino_origin(I t, I d) { return t / d * 2 * d + t % d; }

/* u[k][a][b] = (G g G^T)[k] of the 3x3 taps of a = out channel, b = in channel (``flip``: w
 * is (B, A, 3, 3) and its taps are reversed, the input gradient's conv of dy). Blocks of
 * WINO_WA x WINO_WB pairs: their taps are gathered tap-major (k[tap][pair]), transformed side by
 * side (loops the compiler vectorises), and each position's WINO_WB values of a row stored
 * together: pair by pair, the 16 stores of one pair went to slices O*C apart, a multiple of
 * 4 KiB at 32-128 channels, all in one L1 set, and each evicted the line of another
 * (docs/numpy.md). The same sums in the same order as pair by pair. */
#define WINO_WA 4
#define WINO_WB 16
#define DEFINE_WINOGRAD_WEIGHTS(NAME, T)                                                       \
    static void NAME(const T *restrict w, T *restrict u, I na, I nb, int flip)                \
    {                                                                                          \
        enum { P = WINO_WA * WINO_WB };                                                        \
        T k[9][P], t[4][3][P], r[16][P];                                                       \
        for (I a0 = 0; a0 < na; a0 += WINO_WA)                                                \
            for (I b0 = 0; b0 < nb; b0 += WINO_WB) {                                          \
                const I ra = na - a0 < WINO_WA ? na - a0 : WINO_WA;                           \
                const I rb = nb - b0 < WINO_WB ? nb - b0 : WINO_WB;                           \
                if (ra < WINO_WA || rb < WINO_WB) memset(k, 0, sizeof k);                      \
                if (flip)                                                                     \
                    for (I b = 0; b < rb; b++)                                                \
                        for (I a = 0; a < ra; a++) {                                          \
                            const T *s = w + ((b0 + b) * na + a0 + a) * 9;                    \
                            for (int q = 0; q < 9; q++) k[8 - q][a * WINO_WB + b] = s[q];     \
                        }                                                                     \
                else                                                                          \
                    for (I a = 0; a < ra; a++)                                                \
                        for (I b = 0; b < rb; b++) {                                          \
                            const T *s = w + ((a0 + a) * nb + b0 + b) * 9;                    \
                            for (int q = 0; q < 9; q++) k[q][a * WINO_WB + b] = s[q];         \
                        }                                                                     \
                for (int j = 0; j < 3; j++)                                                   \
                    for (int p = 0; p < P; p++) {                                             \
                        const T k0 = k[j][p], k1 = k[3 + j][p], k2 = k[6 + j][p];             \
                        t[0][j][p] = k0;                                                      \
                        t[1][j][p] = (T)0.5 * (k0 + k1 + k2);                                 \
                        t[2][j][p] = (T)0.5 * (k0 - k1 + k2);                                 \
                        t[3][j][p] = k2;                                                      \
                    }                                                                         \
                for (int i = 0; i < 4; i++)                                                   \
                    for (int p = 0; p < P; p++) {                                             \
                        const T t0 = t[i][0][p], t1 = t[i][1][p], t2 = t[i][2][p];            \
                        r[i * 4][p] = t0;                                                     \
                        r[i * 4 + 1][p] = (T)0.5 * (t0 + t1 + t2);                            \
                        r[i * 4 + 2][p] = (T)0.5 * (t0 - t1 + t2);                            \
                        r[i * 4 + 3][p] = t2;                                                 \
                    }                                                                         \
                for (int q = 0; q < 16; q++)                                                  \
                    for (I a = 0; a < ra; a++) {                                              \
                        T *dst = u + ((q * na) + a0 + a) * nb + b0;                           \
                        /* a whole row a constant size: copied inline, not by a call */       \
                        if (rb == WINO_WB) memcpy(dst, r[q] + a * WINO_WB, WINO_WB * sizeof(T)); \
                        else memcpy(dst, r[q] + a * WINO_WB, (size_t)rb * sizeof(T));         \
                    }                                                                         \
            }                                                                                 \
    }

DEFINE_WINOGRAD_WEIGHTS(winograd_weights_f32, float)
DEFINE_WINOGRAD_WEIGHTS(winograd_weights_f64, double)

/* The input and output transforms run vectorised along a row of tiles (L of them a vector; v's
 * and m's slices hold a plane's tiles side by side, p = ty*tw + tx), built per instruction set
 * like the grid kernels. Their sums are the scalar transforms' in the same order (adds only),
 * so the bits do not depend on the build. */

/* With dilation D (1 or 2, constants), L tiles from a multiple of D start 2L columns apart:
 * tile t's column j (0 or 1) is column t/D*2D + t%D + j*D of the 2L values a then b (D = 1:
 * the even or odd ones), and the output column c of those 2L comes from lane c/2D*D + c%D of
 * a (c % 2D < D) or b, a's and b's half ``hi`` out. The masks are built in loops GCC folds
 * into constants (one vpermt2ps on AVX-512). */
#define WINO_PICK(V, T, a, b, D, j)                                                            \
    ({                                                                                         \
        __typeof__((V){0} < (V){0}) k_;                                                        \
        for (int i_ = 0; i_ < (int)VLANES(V, T); i_++) k_[i_] = i_ / (D) * 2 * (D) + i_ % (D) + (j) * (D); \
        __builtin_shuffle((a), (b), k_);                                                       \
    })
#define WINO_ZIP(V, T, a, b, D, hi)                                                            \
    ({                                                                                         \
        __typeof__((V){0} < (V){0}) k_;                                                        \
        for (int i_ = 0; i_ < (int)VLANES(V, T); i_++) {                                       \
            const int c_ = i_ + (hi) * (int)VLANES(V, T);                                      \
            k_[i_] = c_ / (2 * (D)) * (D) + c_ % (D) + c_ % (2 * (D)) / (D) * (int)VLANES(V, T); \
        }                                                                                      \
        __builtin_shuffle((a), (b), k_);                                                       \
    })
/* e[j] = column j of the L tiles from tx of the row ti (its columns 2*tx on), dilation D */
#define WINO_COLUMNS(V, T, e, ti, tx, D)                                                       \
    do {                                                                                       \
        const I L_ = VLANES(V, T);                                                             \
        const V a_ = LOADV(V, (ti) + 2 * (tx)), b_ = LOADV(V, (ti) + 2 * (tx) + L_);           \
        const V c_ = LOADV(V, (ti) + 2 * (tx) + 2 * (D)), d_ = LOADV(V, (ti) + 2 * (tx) + 2 * (D) + L_); \
        e[0] = WINO_PICK(V, T, a_, b_, D, 0);                                                  \
        e[1] = WINO_PICK(V, T, a_, b_, D, 1);                                                  \
        e[2] = WINO_PICK(V, T, c_, d_, D, 0);                                                  \
        e[3] = WINO_PICK(V, T, c_, d_, D, 1);                                                  \
    } while (0)
/* a vector of the n (> 0) values at p, zeros past them: reads stop at a plane's last tile or
 * column, where the next ones may lie past the buffer */
#define WINO_LOAD(V, T, p, n)                                                                  \
    ({                                                                                         \
        V z_ = {0};                                                                            \
        if ((n) >= VLANES(V, T)) memcpy(&z_, (p), sizeof z_);                                  \
        else memcpy(&z_, (p), (size_t)(n) * sizeof(T));                                        \
        z_;                                                                                    \
    })
/* the first n (> 0) lanes of s into p */
#define WINO_STORE(V, T, p, s, n)                                                              \
    do {                                                                                       \
        const V s_ = (s);                                                                      \
        if ((n) >= VLANES(V, T)) memcpy((p), &s_, sizeof s_);                                  \
        else memcpy((p), &s_, (size_t)(n) * sizeof(T));                                        \
    } while (0)

/* v[k][c][p] = (B^T x B)[k] of every tile p of samples [n0, n1) (p = (n - n0)*th*tw +
 * ty*tw + tx) and channel c. Per row of tiles, the pass along the columns (B^T) runs over the
 * plane's four input rows into ``t``, zero-padded rows whose padding is never written (rows
 * above or below the plane read ``zero``), so the plane is not copied; then the pass along
 * the rows reads each tile's four columns as vectors of L tiles (dilation 1 or 2: shuffled
 * out of two vectors each, WINO_COLUMNS; more: gathered by ``col``) and stores whole vectors. A
 * vector past a row's last tile writes the next row's or plane's first ones, written again
 * after it: the planes run channel by channel, so only the last one, at the end of its slice,
 * stops at its edge. Returns -1 when its scratch cannot be allocated. */
#define DEFINE_WINOGRAD_INPUT(NAME, ATTR, T, V)                                                \
    ATTR static int NAME(const T *restrict x, T *restrict v, const Geometry *g, I n0, I n1,   \
                         I th, I tw, I ks)                                                     \
    {                                                                                          \
        const I L = VLANES(V, T), dh = g->dh, dw = g->dw, h = g->h, w = g->w;                 \
        const I tiles = th * tw, np = (n1 - n0) * tiles, twv = (tw + L - 1) / L * L;          \
        const I wv = (w + L - 1) / L * L;                                                     \
        I wb = wino_origin(tw - 1, dw) + 3 * dw + 1;                                          \
        if (wb < 2 * twv + 2 * dw) wb = 2 * twv + 2 * dw;                                     \
        if (wb < g->pw + wv) wb = g->pw + wv;                                                 \
        T *buf = calloc((size_t)(4 * wb + wv + 4 * twv), sizeof(T));                          \
        I *col = malloc((size_t)tw * sizeof(I));                                              \
        if (!buf || !col) {                                                                   \
            free(buf); free(col);                                                             \
            return -1;                                                                        \
        }                                                                                     \
        const T *zero = buf + 4 * wb;                                                         \
        T *gath = buf + 4 * wb + wv;                                                          \
        for (I tx = 0; tx < tw; tx++) col[tx] = wino_origin(tx, dw);                          \
        for (I c = 0; c < g->c; c++)                                                          \
            for (I n = n0; n < n1; n++) {                                                     \
                const T *plane = x + (n * g->c + c) * h * w;                                  \
                T *dst = v + c * np + (n - n0) * tiles;                                       \
                const int last = c == g->c - 1 && n == n1 - 1;                                \
                for (I ty = 0; ty < th; ty++, dst += tw) {                                    \
                    const I top = wino_origin(ty, dh) - g->ph;                                \
                    const T *r[4];                                                            \
                    for (int l = 0; l < 4; l++) {                                             \
                        const I y = top + l * dh;                                             \
                        r[l] = y >= 0 && y < h ? plane + y * w : zero;                        \
                    }                                                                         \
                    T *t = buf + g->pw;                                                       \
                    for (I q = 0; q < w; q += L) {                                            \
                        const V e0 = WINO_LOAD(V, T, r[0] + q, w - q), e1 = WINO_LOAD(V, T, r[1] + q, w - q); \
                        const V e2 = WINO_LOAD(V, T, r[2] + q, w - q), e3 = WINO_LOAD(V, T, r[3] + q, w - q); \
                        WINO_STORE(V, T, t + q, e0 - e2, L);                                  \
                        WINO_STORE(V, T, t + wb + q, e1 + e2, L);                             \
                        WINO_STORE(V, T, t + 2 * wb + q, e2 - e1, L);                         \
                        WINO_STORE(V, T, t + 3 * wb + q, e1 - e3, L);                         \
                    }                                                                         \
                    const I room = last ? tiles - ty * tw : tw + L;                           \
                    for (int i = 0; i < 4; i++) {                                             \
                        const T *ti = buf + i * wb;                                           \
                        T *o = dst + 4 * i * ks;                                              \
                        if (dw > 2)                                                           \
                            for (I tx = 0; tx < tw; tx++)                                     \
                                for (int j = 0; j < 4; j++) gath[j * twv + tx] = ti[col[tx] + j * dw]; \
                        for (I tx = 0; tx < tw; tx += L) {                                    \
                            V e[4];                                                           \
                            if (dw == 1)                                                      \
                                WINO_COLUMNS(V, T, e, ti, tx, 1);                             \
                            else if (dw == 2)                                                 \
                                WINO_COLUMNS(V, T, e, ti, tx, 2);                             \
                            else                                                              \
                                for (int j = 0; j < 4; j++) e[j] = LOADV(V, gath + j * twv + tx); \
                            const V e0 = e[0], e1 = e[1], e2 = e[2], e3 = e[3];               \
                            WINO_STORE(V, T, o + tx, e0 - e2, room - tx);                     \
                            WINO_STORE(V, T, o + ks + tx, e1 + e2, room - tx);                \
                            WINO_STORE(V, T, o + 2 * ks + tx, e2 - e1, room - tx);            \
                            WINO_STORE(V, T, o + 3 * ks + tx, e1 - e3, room - tx);            \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        free(buf); free(col);                                                                 \
        return 0;                                                                             \
    }

/* cols [q, q + L) of an output row (+)= s, those from ``room`` on (past Wo) dropped */
#define WINO_PUT(V, T, row, q, s, room, accumulate)                                            \
    do {                                                                                       \
        const I n_ = (room) - (q);                                                            \
        if (n_ >= VLANES(V, T))                                                               \
            WINO_STORE(V, T, (row) + (q), (accumulate) ? LOADV(V, (row) + (q)) + (s) : (s), VLANES(V, T)); \
        else if (n_ > 0) {                                                                    \
            T b_[VLANES(V, T)];                                                               \
            const V s_ = (s);                                                                 \
            memcpy(b_, &s_, sizeof s_);                                                       \
            for (I k_ = 0; k_ < n_; k_++) (row)[(q) + k_] = (accumulate) ? (row)[(q) + k_] + b_[k_] : b_[k_]; \
        }                                                                                     \
    } while (0)

/* the 2L columns of an output row from q: the L tiles' two columns ya, yb (dilation D) */
#define WINO_PUT_PAIR(V, T, row, q, ya, yb, D, room, accumulate)                               \
    do {                                                                                       \
        WINO_PUT(V, T, row, q, WINO_ZIP(V, T, ya, yb, D, 0), room, accumulate);                \
        WINO_PUT(V, T, row, (q) + VLANES(V, T), WINO_ZIP(V, T, ya, yb, D, 1), room, accumulate); \
    } while (0)

/* out[n, a] (+)= A^T m[.][a][p] A of every tile p of samples [n0, n1): the 2x2 outputs d
 * apart, those past Ho x Wo dropped; the tiles cover every output once, so without
 * ``accumulate`` they are stored, not added to a cleared plane. With dilation 1 or 2 a row
 * goes out as whole vectors (the tiles' two columns shuffled together, WINO_PUT_PAIR); with
 * more, value by value from ``ys``. Reads past a row's last tile stop only at the end of m (the last plane of the last
 * slice). Returns -1 when its scratch cannot be allocated. */
#define DEFINE_WINOGRAD_OUTPUT(NAME, ATTR, T, V)                                               \
    ATTR static int NAME(const T *restrict m, T *restrict out, const Geometry *g, I o, I n0,  \
                         I n1, I th, I tw, I ks, int accumulate)                               \
    {                                                                                          \
        const I L = VLANES(V, T), dh = g->dh, dw = g->dw, ho = g->ho, wo = g->wo;             \
        const I tiles = th * tw, np = (n1 - n0) * tiles, twv = (tw + L - 1) / L * L;          \
        T *ys = malloc((size_t)(4 * twv) * sizeof(T));                                        \
        if (!ys) return -1;                                                                   \
        for (I a = 0; a < o; a++)                                                             \
            for (I n = n0; n < n1; n++) {                                                     \
                T *plane = out + (n * o + a) * ho * wo;                                       \
                const T *src = m + a * np + (n - n0) * tiles;                                 \
                const int last = a == o - 1 && n == n1 - 1;                                   \
                for (I ty = 0; ty < th; ty++) {                                               \
                    const T *e = src + ty * tw;                                               \
                    const I room = last ? tiles - ty * tw : tw + L;                           \
                    const I r0 = wino_origin(ty, dh), r1 = r0 + dh;                           \
                    for (I tx = 0; tx < tw; tx += L) {                                        \
                        V s0[4], s1[4];                                                       \
                        for (int j = 0; j < 4; j++) {                                         \
                            const V a0 = WINO_LOAD(V, T, e + j * ks + tx, room - tx);         \
                            const V a1 = WINO_LOAD(V, T, e + (4 + j) * ks + tx, room - tx);   \
                            const V a2 = WINO_LOAD(V, T, e + (8 + j) * ks + tx, room - tx);   \
                            const V a3 = WINO_LOAD(V, T, e + (12 + j) * ks + tx, room - tx);  \
                            s0[j] = a0 + a1 + a2;                                             \
                            s1[j] = a1 - a2 - a3;                                             \
                        }                                                                     \
                        const V y00 = s0[0] + s0[1] + s0[2], y01 = s0[1] - s0[2] - s0[3];     \
                        const V y10 = s1[0] + s1[1] + s1[2], y11 = s1[1] - s1[2] - s1[3];     \
                        if (dw <= 2) {                                                        \
                            for (int i = 0; i < 2; i++) {                                     \
                                const I r = i ? r1 : r0;                                      \
                                if (r >= ho) continue;                                        \
                                T *row = plane + r * wo;                                      \
                                const V ya = i ? y10 : y00, yb = i ? y11 : y01;               \
                                if (dw == 1) WINO_PUT_PAIR(V, T, row, 2 * tx, ya, yb, 1, wo, accumulate); \
                                else WINO_PUT_PAIR(V, T, row, 2 * tx, ya, yb, 2, wo, accumulate); \
                            }                                                                 \
                        } else {                                                              \
                            memcpy(ys + tx, &y00, sizeof y00);                                \
                            memcpy(ys + twv + tx, &y01, sizeof y01);                          \
                            memcpy(ys + 2 * twv + tx, &y10, sizeof y10);                      \
                            memcpy(ys + 3 * twv + tx, &y11, sizeof y11);                      \
                        }                                                                     \
                    }                                                                         \
                    if (dw > 2)                                                               \
                        for (int i = 0; i < 2; i++) {                                         \
                            const I r = i ? r1 : r0;                                          \
                            if (r >= ho) continue;                                            \
                            T *row = plane + r * wo;                                          \
                            for (I tx = 0; tx < tw; tx++)                                     \
                                for (int j = 0; j < 2; j++) {                                 \
                                    const I q = wino_origin(tx, dw) + j * dw;                 \
                                    const T y = ys[(2 * i + j) * twv + tx];                   \
                                    if (q < wo) row[q] = accumulate ? row[q] + y : y;         \
                                }                                                             \
                        }                                                                     \
                }                                                                             \
            }                                                                                 \
        free(ys);                                                                             \
        return 0;                                                                             \
    }

EACH_ISA_AND_TYPE(DEFINE_WINOGRAD_INPUT, winograd_input)
EACH_ISA_AND_TYPE(DEFINE_WINOGRAD_OUTPUT, winograd_output)

/* 8x8 planes padded by 1 into 8x8 outputs, undilated (the last stage of the CIFAR CNN and the
 * ResNet), float32 on AVX-512: a plane's 16 tiles are one 16-float vector (lane ty*4 + tx), so
 * each position's slice of a plane is one whole vector, and the plane (four vectors of two rows)
 * is taken apart by shuffles instead of the passes above, whose rows of 4 tiles fill a 4-float
 * vector each (docs/numpy.md). Same sums in the same order, so the same bits. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
static int wino_plane8(const Geometry *g, I th, I tw)
{
    return g->h == 8 && g->w == 8 && g->ho == 8 && g->wo == 8 && g->ph == 1 && g->pw == 1 && g->dh == 1
           && g->dw == 1 && th == 4 && tw == 4;
}

/* rows A and B (0-3) of the 4 rows of 8 in a vector pair, as one vector */
#define W8_ROWS(A, B) ((vi32x16){8 * (A), 8 * (A) + 1, 8 * (A) + 2, 8 * (A) + 3, 8 * (A) + 4, 8 * (A) + 5,     \
                                 8 * (A) + 6, 8 * (A) + 7, 8 * (B), 8 * (B) + 1, 8 * (B) + 2, 8 * (B) + 3,  \
                                 8 * (B) + 4, 8 * (B) + 5, 8 * (B) + 6, 8 * (B) + 7})
/* lane ty*4 + tx: column 2tx + J - 1 of row ty of the pair's 4 rows of 8 (J = 0 and 3 reach
 * the padding at tx 0 and 3, zeroed by W8_KEEP) */
#define W8_COL(J, ty, tx) ((ty) * 8 + ((2 * (tx) + (J) - 1) < 0 ? 0 : (2 * (tx) + (J) - 1) > 7 ? 7 : 2 * (tx) + (J) - 1))
#define W8_COLS(J) ((vi32x16){W8_COL(J, 0, 0), W8_COL(J, 0, 1), W8_COL(J, 0, 2), W8_COL(J, 0, 3),            \
                              W8_COL(J, 1, 0), W8_COL(J, 1, 1), W8_COL(J, 1, 2), W8_COL(J, 1, 3),            \
                              W8_COL(J, 2, 0), W8_COL(J, 2, 1), W8_COL(J, 2, 2), W8_COL(J, 2, 3),            \
                              W8_COL(J, 3, 0), W8_COL(J, 3, 1), W8_COL(J, 3, 2), W8_COL(J, 3, 3)})
#define W8_KEEP(tx0, tx3) ((vi32x16){tx0, -1, -1, tx3, tx0, -1, -1, tx3, tx0, -1, -1, tx3, tx0, -1, -1, tx3})
/* lane 8r + c (r 0 or 1): output column c of tile row T0 + r, from y_i0 (c even) or y_i1 (c odd)
 * of tile (T0 + r, c / 2): one output row of each of two tile rows */
#define W8_ZIP1(T, c) (((c) % 2) * 16 + (T) * 4 + (c) / 2)
#define W8_ZIP(T0) ((vi32x16){W8_ZIP1(T0, 0), W8_ZIP1(T0, 1), W8_ZIP1(T0, 2), W8_ZIP1(T0, 3), W8_ZIP1(T0, 4),       \
                              W8_ZIP1(T0, 5), W8_ZIP1(T0, 6), W8_ZIP1(T0, 7), W8_ZIP1(T0 + 1, 0), W8_ZIP1(T0 + 1, 1), \
                              W8_ZIP1(T0 + 1, 2), W8_ZIP1(T0 + 1, 3), W8_ZIP1(T0 + 1, 4), W8_ZIP1(T0 + 1, 5),      \
                              W8_ZIP1(T0 + 1, 6), W8_ZIP1(T0 + 1, 7)})

/* o[0], o[ks], o[2ks], o[3ks] = the pass along the rows of one tile column set e0..e3 (B^T's
 * rows), whole 16-float vectors */
#define W_ROW_STORE(o, ks, e0, e1, e2, e3)                                                     \
    do {                                                                                       \
        const vf32x16 q0_ = (e0) - (e2), q1_ = (e1) + (e2), q2_ = (e2) - (e1), q3_ = (e1) - (e3); \
        memcpy((o), &q0_, sizeof q0_);                                                         \
        memcpy((o) + (ks), &q1_, sizeof q1_);                                                  \
        memcpy((o) + 2 * (ks), &q2_, sizeof q2_);                                              \
        memcpy((o) + 3 * (ks), &q3_, sizeof q3_);                                              \
    } while (0)
/* y[i][j] = (A^T m A)[i][j] of the 16 tiles whose 16 positions lie at e, ks apart */
#define W_OUTPUT_SUMS(e, ks, y)                                                                \
    do {                                                                                       \
        vf32x16 s0_[4], s1_[4];                                                                \
        for (int j_ = 0; j_ < 4; j_++) {                                                       \
            const vf32x16 a0_ = LOADV(vf32x16, (e) + j_ * (ks)), a1_ = LOADV(vf32x16, (e) + (4 + j_) * (ks)); \
            const vf32x16 a2_ = LOADV(vf32x16, (e) + (8 + j_) * (ks)), a3_ = LOADV(vf32x16, (e) + (12 + j_) * (ks)); \
            s0_[j_] = a0_ + a1_ + a2_;                                                         \
            s1_[j_] = a1_ - a2_ - a3_;                                                         \
        }                                                                                      \
        (y)[0][0] = s0_[0] + s0_[1] + s0_[2], (y)[0][1] = s0_[1] - s0_[2] - s0_[3];            \
        (y)[1][0] = s1_[0] + s1_[1] + s1_[2], (y)[1][1] = s1_[1] - s1_[2] - s1_[3];            \
    } while (0)

/* v[k][c][p] as winograd_input_f32 for wino_plane8's geometry. */
ISA_512 static void winograd_input8_f32_512(const float *restrict x, float *restrict v, I c_in, I n0, I n1, I ks)
{
    const I np = (n1 - n0) * 16;
    const vf32x16 zero = {0};
    const vi32x16 keep0 = W8_KEEP(0, -1), keep3 = W8_KEEP(-1, 0);
    for (I c = 0; c < c_in; c++)
        for (I n = n0; n < n1; n++) {
            const float *plane = x + (n * c_in + c) * 64;
            float *dst = v + c * np + (n - n0) * 16;
            const vf32x16 p0 = LOADV(vf32x16, plane), p1 = LOADV(vf32x16, plane + 16);
            const vf32x16 p2 = LOADV(vf32x16, plane + 32), p3 = LOADV(vf32x16, plane + 48);
            /* rows 2ty - 1, 2ty, 2ty + 1, 2ty + 2 of tile rows 0-1 (a) and 2-3 (b) */
            const vf32x16 e01 = __builtin_shuffle(p0, p1, W8_ROWS(0, 2)), o01 = __builtin_shuffle(p0, p1, W8_ROWS(1, 3));
            const vf32x16 e23 = __builtin_shuffle(p2, p3, W8_ROWS(0, 2)), o23 = __builtin_shuffle(p2, p3, W8_ROWS(1, 3));
            const vf32x16 r0[2] = {__builtin_shuffle(zero, o01, W8_ROWS(0, 2)), __builtin_shuffle(o01, o23, W8_ROWS(1, 2))};
            const vf32x16 r1[2] = {e01, e23}, r2[2] = {o01, o23};
            const vf32x16 r3[2] = {__builtin_shuffle(e01, e23, W8_ROWS(1, 2)), __builtin_shuffle(e23, zero, W8_ROWS(1, 2))};
            vf32x16 t[4][2];
            for (int h = 0; h < 2; h++) {
                t[0][h] = r0[h] - r2[h];
                t[1][h] = r1[h] + r2[h];
                t[2][h] = r2[h] - r1[h];
                t[3][h] = r1[h] - r3[h];
            }
            for (int i = 0; i < 4; i++) {
                const vf32x16 e0 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1], W8_COLS(0)) & keep0);
                const vf32x16 e1 = __builtin_shuffle(t[i][0], t[i][1], W8_COLS(1));
                const vf32x16 e2 = __builtin_shuffle(t[i][0], t[i][1], W8_COLS(2));
                const vf32x16 e3 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1], W8_COLS(3)) & keep3);
                W_ROW_STORE(dst + 4 * i * ks, ks, e0, e1, e2, e3);
            }
        }
}

/* out (+)= the tiles of m as winograd_output_f32 for wino_plane8's geometry. */
ISA_512 static void winograd_output8_f32_512(const float *restrict m, float *restrict out, I o, I n0, I n1, I ks,
                                             int accumulate)
{
    const I np = (n1 - n0) * 16;
    for (I a = 0; a < o; a++)
        for (I n = n0; n < n1; n++) {
            float *plane = out + (n * o + a) * 64;
            vf32x16 y[2][2];
            W_OUTPUT_SUMS(m + a * np + (n - n0) * 16, ks, y);
            for (int h = 0; h < 2; h++) {
                /* output rows 4h, 4h + 2 (za) and 4h + 1, 4h + 3 (zb), then as row pairs */
                const vf32x16 za = __builtin_shuffle(y[0][0], y[0][1], h ? W8_ZIP(2) : W8_ZIP(0));
                const vf32x16 zb = __builtin_shuffle(y[1][0], y[1][1], h ? W8_ZIP(2) : W8_ZIP(0));
                vf32x16 q[2] = {__builtin_shuffle(za, zb, W8_ROWS(0, 2)), __builtin_shuffle(za, zb, W8_ROWS(1, 3))};
                for (int r = 0; r < 2; r++) {
                    float *p = plane + (2 * h + r) * 16;
                    if (accumulate) q[r] = LOADV(vf32x16, p) + q[r];
                    memcpy(p, &q[r], sizeof q[r]);
                }
            }
        }
}

/* 16x16 planes padded by 1 into 16x16 outputs, likewise: a row is one vector, and a vector
 * holds two rows of 8 tiles (lane tyl*8 + tx), taken out of two rows of the column pass by one
 * shuffle each (the passes above run them as 8-float vectors). */
static int wino_plane16(const Geometry *g, I th, I tw)
{
    return g->h == 16 && g->w == 16 && g->ho == 16 && g->wo == 16 && g->ph == 1 && g->pw == 1 && g->dh == 1
           && g->dw == 1 && th == 8 && tw == 8;
}

/* F(l) for the 16 lanes l of a vector */
#define W16_LANES(F, A) ((vi32x16){F(A, 0), F(A, 1), F(A, 2), F(A, 3), F(A, 4), F(A, 5), F(A, 6), F(A, 7),     \
                                   F(A, 8), F(A, 9), F(A, 10), F(A, 11), F(A, 12), F(A, 13), F(A, 14), F(A, 15)})
/* lane tyl*8 + tx: column 2tx + J - 1 of row tyl of the vector pair (the padding at tx 0 for J = 0
 * and tx 7 for J = 3 zeroed by W16_EDGE) */
#define W16_COL(J, l) ((l) / 8 * 16 + (2 * ((l) % 8) + (J) - 1 < 0 ? 0 : 2 * ((l) % 8) + (J) - 1 > 15 ? 15      \
                                                                     : 2 * ((l) % 8) + (J) - 1))
#define W16_EDGE(TX, l) ((l) % 8 == (TX) ? 0 : -1)
/* output column l of the tile row TYL (0 or 1) of a vector pair: from y_i0 (l even) or y_i1 (odd) */
#define W16_ZIP(TYL, l) ((l) % 2 * 16 + (TYL) * 8 + (l) / 2)

/* v[k][c][p] as winograd_input_f32 for wino_plane16's geometry. */
ISA_512 static void winograd_input16_f32_512(const float *restrict x, float *restrict v, I c_in, I n0, I n1, I ks)
{
    const I np = (n1 - n0) * 64;
    const vf32x16 zero = {0};
    const vi32x16 edge0 = W16_LANES(W16_EDGE, 0), edge3 = W16_LANES(W16_EDGE, 7);
    for (I c = 0; c < c_in; c++)
        for (I n = n0; n < n1; n++) {
            const float *plane = x + (n * c_in + c) * 256;
            float *dst = v + c * np + (n - n0) * 64;
            for (I q = 0; q < 4; q++) {
                /* tile rows 2q + tyl read input rows 4q + 2tyl - 1 .. 4q + 2tyl + 2: r[2tyl ..] */
                vf32x16 r[6], t[4][2];
                for (int l = 0; l < 6; l++) {
                    const I y = 4 * q - 1 + l;
                    r[l] = y >= 0 && y < 16 ? LOADV(vf32x16, plane + y * 16) : zero;
                }
                for (int h = 0; h < 2; h++) {
                    const vf32x16 e0 = r[2 * h], e1 = r[2 * h + 1], e2 = r[2 * h + 2], e3 = r[2 * h + 3];
                    t[0][h] = e0 - e2;
                    t[1][h] = e1 + e2;
                    t[2][h] = e2 - e1;
                    t[3][h] = e1 - e3;
                }
                for (int i = 0; i < 4; i++) {
                    const vf32x16 e0 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1], W16_LANES(W16_COL, 0)) & edge0);
                    const vf32x16 e1 = __builtin_shuffle(t[i][0], t[i][1], W16_LANES(W16_COL, 1));
                    const vf32x16 e2 = __builtin_shuffle(t[i][0], t[i][1], W16_LANES(W16_COL, 2));
                    const vf32x16 e3 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1], W16_LANES(W16_COL, 3)) & edge3);
                    W_ROW_STORE(dst + 4 * i * ks + q * 16, ks, e0, e1, e2, e3);
                }
            }
        }
}

/* out (+)= the tiles of m as winograd_output_f32 for wino_plane16's and wino_plane32's
 * geometries (``side`` 16 or 32): the 16 tiles of a vector cover 64 consecutive outputs, four
 * rows of 16 (two rows of 8 tiles: row 2h + i at 32h + 16i) or two of 32 (one row of 16 tiles:
 * row i's half h at 32i + 16h), each y[i][0] and y[i][1] zipped (W16_ZIP's halves). */
ISA_512 static void winograd_output_wide_f32_512(const float *restrict m, float *restrict out, I o, I n0, I n1,
                                                 I ks, int accumulate, I side)
{
    const I area = side * side, per = area / 4, np = (n1 - n0) * per;
    for (I a = 0; a < o; a++)
        for (I n = n0; n < n1; n++) {
            float *plane = out + (n * o + a) * area;
            for (I b = 0; b < area / 64; b++) {
                vf32x16 y[2][2];
                W_OUTPUT_SUMS(m + a * np + (n - n0) * per + b * 16, ks, y);
                for (int h = 0; h < 2; h++)
                    for (int i = 0; i < 2; i++) {
                        vf32x16 row = h ? __builtin_shuffle(y[i][0], y[i][1], W16_LANES(W16_ZIP, 1))
                                        : __builtin_shuffle(y[i][0], y[i][1], W16_LANES(W16_ZIP, 0));
                        float *p = plane + 64 * b + (side == 16 ? 32 * h + 16 * i : 32 * i + 16 * h);
                        if (accumulate) row = LOADV(vf32x16, p) + row;
                        memcpy(p, &row, sizeof row);
                    }
            }
        }
}

/* 32x32 planes padded by 1 into 32x32 outputs (the 3x3 layers at 32x32), likewise: a row of
 * tiles is one vector (16 tiles), a row of the plane two, and the tiles' four columns are taken
 * out of a row's two vectors by one shuffle each instead of the passes above, which stage every
 * row of tiles in scratch (docs/numpy.md). */
static int wino_plane32(const Geometry *g, I th, I tw)
{
    return g->h == 32 && g->w == 32 && g->ho == 32 && g->wo == 32 && g->ph == 1 && g->pw == 1 && g->dh == 1
           && g->dw == 1 && th == 16 && tw == 16;
}

/* The same geometry dilated by 2 and padded by 2 (the dilated 3x3 layers at 32x32): tiles in
 * pairs (tile t's 2x2 outputs at t / 2 * 4 + t % 2 and 2 further), a row of 16 tiles still one
 * vector. */
static int wino_plane32_d2(const Geometry *g, I th, I tw)
{
    return g->h == 32 && g->w == 32 && g->ho == 32 && g->wo == 32 && g->ph == 2 && g->pw == 2 && g->dh == 2
           && g->dw == 2 && th == 16 && tw == 16;
}

/* A = 4D + J for dilation D: lane l (tile l of a row) reads column wino_origin(l, D) - D + D J
 * of the row's vector pair; W32_COL clamps it into the pair, W32_EDGE zeroes the lanes where it
 * is padding (J 0 and 3 only) */
#define W32_C(A, l) ((l) / ((A) / 4) * 2 * ((A) / 4) + (l) % ((A) / 4) - (A) / 4 + (A) / 4 * ((A) % 4))
#define W32_COL(A, l) (W32_C(A, l) < 0 ? 0 : W32_C(A, l) > 31 ? 31 : W32_C(A, l))
#define W32_EDGE(A, l) (W32_C(A, l) < 0 || W32_C(A, l) > 31 ? 0 : -1)

/* v[k][c][p] as winograd_input_f32 for wino_plane32's geometry (D 1) and wino_plane32_d2's (D 2). */
#define DEFINE_WINOGRAD_INPUT32(NAME, D)                                                        \
    ISA_512 static void NAME(const float *restrict x, float *restrict v, I c_in, I n0, I n1, I ks) \
    {                                                                                          \
        const I np = (n1 - n0) * 256;                                                          \
        const vf32x16 zero = {0};                                                              \
        const vi32x16 edge0 = W16_LANES(W32_EDGE, 4 * (D)), edge3 = W16_LANES(W32_EDGE, 4 * (D) + 3); \
        for (I c = 0; c < c_in; c++)                                                           \
            for (I n = n0; n < n1; n++) {                                                      \
                const float *plane = x + (n * c_in + c) * 1024;                                \
                float *dst = v + c * np + (n - n0) * 256;                                      \
                for (I ty = 0; ty < 16; ty++) {                                                \
                    /* input rows wino_origin(ty) - D + D l, each as its two halves */         \
                    vf32x16 r[4][2], t[4][2];                                                  \
                    for (int l = 0; l < 4; l++) {                                              \
                        const I y = wino_origin(ty, (D)) - (D) + (D) * l;                      \
                        for (int h = 0; h < 2; h++)                                            \
                            r[l][h] = y >= 0 && y < 32 ? LOADV(vf32x16, plane + y * 32 + 16 * h) : zero; \
                    }                                                                          \
                    for (int h = 0; h < 2; h++) {                                              \
                        t[0][h] = r[0][h] - r[2][h];                                           \
                        t[1][h] = r[1][h] + r[2][h];                                           \
                        t[2][h] = r[2][h] - r[1][h];                                           \
                        t[3][h] = r[1][h] - r[3][h];                                           \
                    }                                                                          \
                    for (int i = 0; i < 4; i++) {                                              \
                        const vf32x16 e0 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1],   \
                                                     W16_LANES(W32_COL, 4 * (D))) & edge0);    \
                        const vf32x16 e1 = __builtin_shuffle(t[i][0], t[i][1], W16_LANES(W32_COL, 4 * (D) + 1)); \
                        const vf32x16 e2 = __builtin_shuffle(t[i][0], t[i][1], W16_LANES(W32_COL, 4 * (D) + 2)); \
                        const vf32x16 e3 = (vf32x16)((vi32x16)__builtin_shuffle(t[i][0], t[i][1],   \
                                                     W16_LANES(W32_COL, 4 * (D) + 3)) & edge3); \
                        W_ROW_STORE(dst + 4 * i * ks + ty * 16, ks, e0, e1, e2, e3);           \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    }
DEFINE_WINOGRAD_INPUT32(winograd_input32_f32_512, 1)
DEFINE_WINOGRAD_INPUT32(winograd_input32_d2_f32_512, 2)

/* A = 4 * 2 + H: lane e of output row half H (its columns 16H + e) from y_i0 (lane tile t) or y_i1
 * (lane 16 + t): column wino_origin(t, 2) + 2j */
#define W32_D2_X(A, e) (16 * ((A) % 4) + (e))
#define W32_D2_ZIP(A, e) (W32_D2_X(A, e) % 4 / 2 * 16 + W32_D2_X(A, e) / 4 * 2 + W32_D2_X(A, e) % 2)

/* out (+)= the tiles of m as winograd_output_f32 for wino_plane32_d2's geometry: a vector's 16
 * tiles (a row of tiles) cover output rows wino_origin(ty, 2) and 2 further, each zipped from
 * y_i0 and y_i1 in the pairs' order. */
ISA_512 static void winograd_output32_d2_f32_512(const float *restrict m, float *restrict out, I o, I n0, I n1,
                                                 I ks, int accumulate)
{
    const I np = (n1 - n0) * 256;
    for (I a = 0; a < o; a++)
        for (I n = n0; n < n1; n++) {
            float *plane = out + (n * o + a) * 1024;
            for (I ty = 0; ty < 16; ty++) {
                vf32x16 y[2][2];
                W_OUTPUT_SUMS(m + a * np + (n - n0) * 256 + ty * 16, ks, y);
                for (int i = 0; i < 2; i++)
                    for (int h = 0; h < 2; h++) {
                        vf32x16 row = h ? __builtin_shuffle(y[i][0], y[i][1], W16_LANES(W32_D2_ZIP, 9))
                                        : __builtin_shuffle(y[i][0], y[i][1], W16_LANES(W32_D2_ZIP, 8));
                        float *p = plane + (wino_origin(ty, 2) + 2 * i) * 32 + 16 * h;
                        if (accumulate) row = LOADV(vf32x16, p) + row;
                        memcpy(p, &row, sizeof row);
                    }
            }
        }
}

/* wino_plane32's geometry on AVX2: a row of 16 tiles is two 8-float vectors (h = 0, 1), a plane
 * row four. Tile l of vector h reads the plane row's columns 16h + 2l - 1 .. 16h + 2l + 2: the even
 * (J = 1) and odd (J = 2) columns of its two vectors, and those shifted by one tile, across
 * into the neighbouring vector's (J = 0 from h - 1's odd ones, J = 3 from h + 1's even ones;
 * zeros past the plane). Same sums in the same order as the passes above, so the same bits. */
#define W32H_EVEN ((vi32x8){0, 2, 4, 6, 8, 10, 12, 14})
#define W32H_ODD ((vi32x8){1, 3, 5, 7, 9, 11, 13, 15})
#define W32H_BACK ((vi32x8){7, 8, 9, 10, 11, 12, 13, 14})   /* (previous, this): one tile back */
#define W32H_NEXT ((vi32x8){1, 2, 3, 4, 5, 6, 7, 8})        /* (this, next): one tile on */
#define W32H_ZIP_LO ((vi32x8){0, 8, 1, 9, 2, 10, 3, 11})
#define W32H_ZIP_HI ((vi32x8){4, 12, 5, 13, 6, 14, 7, 15})

/* v[k][c][p] as winograd_input_f32 for wino_plane32's geometry, AVX2. */
ISA_256 static void winograd_input32_f32_256(const float *restrict x, float *restrict v, I c_in, I n0, I n1, I ks)
{
    const I np = (n1 - n0) * 256;
    const vf32x8 zero = {0};
    for (I c = 0; c < c_in; c++)
        for (I n = n0; n < n1; n++) {
            const float *plane = x + (n * c_in + c) * 1024;
            float *dst = v + c * np + (n - n0) * 256;
            for (I ty = 0; ty < 16; ty++) {
                vf32x8 r[4][4], t[4][4];
                for (int l = 0; l < 4; l++) {
                    const I y = 2 * ty - 1 + l;
                    for (int q = 0; q < 4; q++) r[l][q] = y >= 0 && y < 32 ? LOADV(vf32x8, plane + y * 32 + 8 * q) : zero;
                }
                for (int q = 0; q < 4; q++) {
                    t[0][q] = r[0][q] - r[2][q];
                    t[1][q] = r[1][q] + r[2][q];
                    t[2][q] = r[2][q] - r[1][q];
                    t[3][q] = r[1][q] - r[3][q];
                }
                for (int i = 0; i < 4; i++) {
                    const vf32x8 even[3] = {__builtin_shuffle(t[i][0], t[i][1], W32H_EVEN),
                                            __builtin_shuffle(t[i][2], t[i][3], W32H_EVEN), zero};
                    const vf32x8 odd[3] = {zero, __builtin_shuffle(t[i][0], t[i][1], W32H_ODD),
                                           __builtin_shuffle(t[i][2], t[i][3], W32H_ODD)};
                    for (int h = 0; h < 2; h++) {
                        const vf32x8 e0 = __builtin_shuffle(odd[h], odd[h + 1], W32H_BACK), e1 = even[h];
                        const vf32x8 e2 = odd[h + 1], e3 = __builtin_shuffle(even[h], even[h + 1], W32H_NEXT);
                        const vf32x8 q0 = e0 - e2, q1 = e1 + e2, q2 = e2 - e1, q3 = e1 - e3;
                        float *o = dst + 4 * i * ks + ty * 16 + 8 * h;
                        memcpy(o, &q0, sizeof q0);
                        memcpy(o + ks, &q1, sizeof q1);
                        memcpy(o + 2 * ks, &q2, sizeof q2);
                        memcpy(o + 3 * ks, &q3, sizeof q3);
                    }
                }
            }
        }
}

/* out (+)= the tiles of m as winograd_output_f32 for wino_plane32's geometry, AVX2: output row
 * 2ty + i of tile vector h is y[i][0] and y[i][1] zipped into two vectors. */
ISA_256 static void winograd_output32_f32_256(const float *restrict m, float *restrict out, I o, I n0, I n1, I ks,
                                              int accumulate)
{
    const I np = (n1 - n0) * 256;
    for (I a = 0; a < o; a++)
        for (I n = n0; n < n1; n++) {
            float *plane = out + (n * o + a) * 1024;
            for (I ty = 0; ty < 16; ty++)
                for (int h = 0; h < 2; h++) {
                    const float *e = m + a * np + (n - n0) * 256 + ty * 16 + 8 * h;
                    vf32x8 s0[4], s1[4];
                    for (int j = 0; j < 4; j++) {
                        const vf32x8 a0 = LOADV(vf32x8, e + j * ks), a1 = LOADV(vf32x8, e + (4 + j) * ks);
                        const vf32x8 a2 = LOADV(vf32x8, e + (8 + j) * ks), a3 = LOADV(vf32x8, e + (12 + j) * ks);
                        s0[j] = a0 + a1 + a2;
                        s1[j] = a1 - a2 - a3;
                    }
                    const vf32x8 y[2][2] = {{s0[0] + s0[1] + s0[2], s0[1] - s0[2] - s0[3]},
                                            {s1[0] + s1[1] + s1[2], s1[1] - s1[2] - s1[3]}};
                    for (int i = 0; i < 2; i++) {
                        float *p = plane + (2 * ty + i) * 32 + 16 * h;
                        vf32x8 lo = __builtin_shuffle(y[i][0], y[i][1], W32H_ZIP_LO);
                        vf32x8 hi = __builtin_shuffle(y[i][0], y[i][1], W32H_ZIP_HI);
                        if (accumulate) {
                            lo = LOADV(vf32x8, p) + lo;
                            hi = LOADV(vf32x8, p + 8) + hi;
                        }
                        memcpy(p, &lo, sizeof lo);
                        memcpy(p + 8, &hi, sizeof hi);
                    }
                }
        }
}
#define WINO_PLANE8 1
#else
#define WINO_PLANE8 0
#endif

/* The build the transforms run: the widest the CPU runs (isa) whose vectors hold no more tiles
 * than a row has (``lanes`` of the narrowest build), so a small plane's rows do not fill a
 * vector mostly with tiles of the next row (8x8 planes: 4 tiles a row, 16 floats an AVX-512
 * vector) and its output rows go out as whole vectors. */
static int winograd_isa(I tw, I lanes)
{
    int level = isa;
    while (level > 0 && lanes << level > tw) level--;
    return level;
}

/* The weight gradient as Winograd F(3x3, 2x2), the adjoint of the forward above: with v the
 * forward's input tiles (winograd_input) and m the tiles of dy taken through the adjoint of
 * its output transform (winograd_grad), the 16 GEMMs v[k] m[k] summed over the tiles give the
 * gradient of the transformed taps u, and the adjoint of winograd_weights (winograd_taps) the
 * gradient of the taps. */

/* m[k][p][a] = (A dy A^T)[k] of the 2x2 outputs (d apart) of every tile p of samples [n0, n1),
 * those past Ho x Wo read as zeros: the adjoint of winograd_output, tile-major (the output
 * channels innermost) so that the GEMMs read both operands along their rows, which OpenBLAS
 * runs faster here than two operands along the reduction (docs/numpy.md). A row of
 * tiles first copies its two rows of every channel into ``stage`` with the channels innermost,
 * so that a tile's values of V's lanes of channels are one vector load and its 16 outputs 16
 * vector stores along m's rows (a channel at a time, they were 16 scalar stores a row apart).
 * A channel's values are the same expressions either way: the same bits. Returns -1 when its
 * scratch cannot be allocated. */
#define WINOGRAD_GRAD_TILE(T, Y00, Y01, Y10, Y11, STORE)                                       \
    do {                                                                                       \
        const T s_[4][2] = {{Y00, Y01}, {Y00 + Y10, Y01 + Y11}, {Y00 - Y10, Y01 - Y11}, {-Y10, -Y11}}; \
        for (int i_ = 0; i_ < 4; i_++) {                                                       \
            STORE(4 * i_, s_[i_][0]);                                                          \
            STORE(4 * i_ + 1, s_[i_][0] + s_[i_][1]);                                          \
            STORE(4 * i_ + 2, s_[i_][0] - s_[i_][1]);                                          \
            STORE(4 * i_ + 3, -s_[i_][1]);                                                     \
        }                                                                                      \
    } while (0)
#define DEFINE_WINOGRAD_GRAD(NAME, T, V)                                                       \
    VECTOR_CLONES static int NAME(const T *restrict dy, T *restrict m, const Geometry *g,     \
                                  I o, I n0, I n1, I th, I tw, I ks)                          \
    {                                                                                          \
        const I lanes = (I)(sizeof(V) / sizeof(T));                                           \
        const I dh = g->dh, dw = g->dw, ho = g->ho, wo = g->wo, hw = ho * wo;                \
        const I wr = wino_origin(tw - 1, dw) + dw + 1, os = (o + 15) / 16 * 16 + 16;          \
        T *stage = malloc((size_t)(2 * wr * os) * sizeof(T));                                 \
        if (!stage) return -1;                                                                \
        T *e = m;                                                                             \
        for (I n = n0; n < n1; n++)                                                           \
            for (I ty = 0; ty < th; ty++) {                                                   \
                const I r0 = wino_origin(ty, dh), rows[2] = {r0, r0 + dh};                    \
                for (int h = 0; h < 2; h++) {                                                 \
                    T *row = stage + h * wr * os;                                             \
                    I copied = 0;                                                             \
                    if (rows[h] < ho) {                                                       \
                        for (I a = 0; a < o; a++) {                                           \
                            const T *src = dy + (n * o + a) * hw + rows[h] * wo;              \
                            for (I x = 0; x < wo; x++) row[x * os + a] = src[x];              \
                        }                                                                     \
                        copied = wo;                                                          \
                    }                                                                         \
                    memset(row + copied * os, 0, (size_t)((wr - copied) * os) * sizeof(T));   \
                }                                                                             \
                for (I tx = 0; tx < tw; tx++, e += o) {                                       \
                    const I x0 = wino_origin(tx, dw), x1 = x0 + dw;                           \
                    const T *p00 = stage + x0 * os, *p01 = stage + x1 * os;                   \
                    const T *p10 = stage + (wr + x0) * os, *p11 = stage + (wr + x1) * os;     \
                    I a = 0;                                                                  \
                    for (; a + lanes <= o; a += lanes) {                                      \
                        const V y00 = LOADV(V, p00 + a), y01 = LOADV(V, p01 + a);             \
                        const V y10 = LOADV(V, p10 + a), y11 = LOADV(V, p11 + a);             \
                        WINOGRAD_GRAD_TILE(V, y00, y01, y10, y11, GRAD_STORE_VECTOR);         \
                    }                                                                         \
                    for (; a < o; a++)                                                        \
                        WINOGRAD_GRAD_TILE(T, p00[a], p01[a], p10[a], p11[a], GRAD_STORE_ONE); \
                }                                                                             \
            }                                                                                 \
        free(stage);                                                                          \
        return 0;                                                                             \
    }
#define GRAD_STORE_VECTOR(K, VALUE) do { const __typeof__(VALUE) v_ = (VALUE); memcpy(e + (K) * ks + a, &v_, sizeof v_); } while (0)
#define GRAD_STORE_ONE(K, VALUE) (e[(K) * ks + a] = (VALUE))

DEFINE_WINOGRAD_GRAD(winograd_grad_f32, float, vf32x8)
DEFINE_WINOGRAD_GRAD(winograd_grad_f64, double, vf64x4)

/* w[a][b] = G^T u[.][b][a] G, the 3x3 taps (A, B, 3, 3) from the 16 positions u[16][B][A] (the
 * GEMMs' products, in channels major): the adjoint of winograd_weights (unflipped). */
#define DEFINE_WINOGRAD_TAPS(NAME, T)                                                          \
    static void NAME(T *restrict w, const T *restrict u, I na, I nb)                          \
    {                                                                                          \
        const I ab = na * nb;                                                                 \
        for (I a = 0; a < na; a++)                                                            \
            for (I b = 0; b < nb; b++) {                                                      \
                T t[4][3], *k = w + (a * nb + b) * 9;                                         \
                for (int i = 0; i < 4; i++) {                                                 \
                    const T *e = u + 4 * i * ab + b * na + a;                                 \
                    const T half = (T)0.5 * (e[ab] + e[2 * ab]);                              \
                    t[i][0] = e[0] + half;                                                    \
                    t[i][1] = (T)0.5 * (e[ab] - e[2 * ab]);                                   \
                    t[i][2] = half + e[3 * ab];                                               \
                }                                                                             \
                for (int j = 0; j < 3; j++) {                                                 \
                    const T half = (T)0.5 * (t[1][j] + t[2][j]);                              \
                    k[j] = t[0][j] + half;                                                    \
                    k[3 + j] = (T)0.5 * (t[1][j] - t[2][j]);                                  \
                    k[6 + j] = half + t[3][j];                                                \
                }                                                                             \
            }                                                                                 \
    }

DEFINE_WINOGRAD_TAPS(winograd_taps_f32, float)
DEFINE_WINOGRAD_TAPS(winograd_taps_f64, double)

/* Winograd F(M x M, R x R) for stride-1 undilated RxR convs, tiles of M x M outputs, N = M + R - 1
 * transformed positions per side: y = AT [(G g GT) . (BT d B)] A per tile, so the R*R
 * multiply-adds per output channel, input channel and output become N*N/(M*M) (25 -> 4 for
 * F(4x4, 5x5)), done as N*N GEMMs by BLAS between these transforms (as for F(2x2, 3x3) above:
 * u[k][a][b], v[k][c][p], m[k][a][p], the slices of v and m ks apart). The matrices come from
 * spatial.py (Toom-Cook on fixed points, built in float64): mats = [AT (M x N) | G (N x R) |
 * BT (N x N)], row-major. Built for the instruction sets like the grid kernels: the transforms
 * are vectorised over the tiles of a row, and FMA matters. */
#define WG_AT(mats, M, N, R) (mats)
#define WG_G(mats, M, N, R) ((mats) + (M) * (N))
#define WG_BT(mats, M, N, R) ((mats) + (M) * (N) + (N) * (R))

/* u[k][a][b] = (G g GT)[k] of the taps of a = out channel, b = in channel, in double (``flip``:
 * w is (B, A, R, R) with its taps reversed, the input gradient's conv of dy). The b of one a
 * run side by side (t[p][j][b]), so the second pass is vectorised and its stores contiguous.
 * Returns -1 when its scratch cannot be allocated. */
#define DEFINE_WG_WEIGHTS(NAME, ATTR, T, M, R)                                                  \
    ATTR static int NAME(const T *restrict w, T *restrict u, I na, I nb, int flip, const double *mats) \
    {                                                                                           \
        enum { N = M + R - 1 };                                                                 \
        const double *G = WG_G(mats, M, N, R);                                                  \
        double *t = malloc((size_t)(N * R * nb) * sizeof(double));                              \
        if (!t) return -1;                                                                      \
        for (I a = 0; a < na; a++) {                                                            \
            for (I b = 0; b < nb; b++) {                                                        \
                const T *k = w + (flip ? (b * na + a) : (a * nb + b)) * R * R;                  \
                for (int j = 0; j < R; j++)                                                     \
                    for (int p = 0; p < N; p++) {                                               \
                        double acc = 0;                                                         \
                        for (int i = 0; i < R; i++)                                             \
                            acc += G[p * R + i] * (double)(flip ? k[(R - 1 - i) * R + R - 1 - j] : k[i * R + j]); \
                        t[(p * R + j) * nb + b] = acc;                                          \
                    }                                                                           \
            }                                                                                   \
            for (int p = 0; p < N; p++)                                                         \
                for (int q = 0; q < N; q++) {                                                   \
                    T *dst = u + ((I)(p * N + q) * na + a) * nb;                                \
                    const double g0 = G[q * R], *t0 = t + p * R * nb;                           \
                    for (I b = 0; b < nb; b++) {                                                \
                        double acc = g0 * t0[b];                                                \
                        for (int j = 1; j < R; j++) acc += G[q * R + j] * t0[j * nb + b];       \
                        dst[b] = (T)acc;                                                        \
                    }                                                                           \
                }                                                                               \
        }                                                                                       \
        free(t);                                                                                \
        return 0;                                                                               \
    }

/* v[k][c][p] = (BT d B)[k] of every tile p of samples [n0, n1) and channel c. Each plane is
 * copied zero-padded with its columns split into M phases (column q at phase q % M, position
 * q / M), so that BT's pass along a row reads whole vectors of consecutive tiles; the pass
 * along the columns comes first, over whole rows (rows wr apart, a whole number of vectors).
 * Returns -1 when its scratch cannot be allocated. */
/* rows of tiles whose column pass wg_input runs before their row pass (its scratch: that many
 * times N rows of the padded plane) */
#ifndef WG_INPUT_ROW_CHUNK
#define WG_INPUT_ROW_CHUNK 16
#endif
#define DEFINE_WG_INPUT_TERMS(NAME, ATTR, T, V, M, R, NZ)                                       \
    ATTR static int NAME(const T *restrict x, T *restrict v, const Geometry *g, I n0, I n1,    \
                         I th, I tw, I ks, const double *mats)                                  \
    {                                                                                           \
        enum { N = M + R - 1 };                                                                 \
        const I L = VLANES(V, T);                                                               \
        T bt[N][N];                                                                             \
        for (int i = 0; i < N; i++)                                                             \
            for (int j = 0; j < N; j++) bt[i][j] = (T)WG_BT(mats, M, N, R)[i * N + j];          \
        const I tiles = th * tw, np = (n1 - n0) * tiles;                                        \
        I hb = (th - 1) * M + N, wb = (tw - 1) * M + N;                                         \
        if (hb < g->h + g->ph) hb = g->h + g->ph;                                               \
        if (wb < g->w + g->pw) wb = g->w + g->pw;                                               \
        const I wq = (wb + M - 1) / M, wr = (M * wq + L - 1) / L * L;                           \
        /* the column pass runs over WG_INPUT_ROW_CHUNK rows of tiles before the row pass      \
         * reads its results (unaligned): read right after they were stored, a row of tiles at  \
         * a time, they were slower (docs/numpy.md, session 35) */                               \
        const I chunk = th < WG_INPUT_ROW_CHUNK ? th : WG_INPUT_ROW_CHUNK;                      \
        T *buf = malloc((size_t)((hb + chunk * N) * wr) * sizeof(T));                           \
        if (!buf) return -1;                                                                    \
        T *const rows_all = buf + hb * wr;                                                      \
        for (I n = n0; n < n1; n++)                                                             \
            for (I c = 0; c < g->c; c++) {                                                      \
                const T *plane = x + (n * g->c + c) * g->h * g->w;                              \
                memset(buf, 0, (size_t)(hb * wr) * sizeof(T));                                  \
                for (I r = 0; r < g->h; r++) {                                                  \
                    T *row = buf + (r + g->ph) * wr;                                            \
                    const T *src = plane + r * g->w;                                            \
                    I q = 0;                                                                    \
                    /* M = 2: 2L columns at a time, their even and odd ones shuffled apart */  \
                    for (; M == 2 && q + 2 * L <= g->w; q += 2 * L) {                           \
                        const V a = LOADV(V, src + q), b = LOADV(V, src + q + L);               \
                        const V even = WINO_PICK(V, T, a, b, 1, 0), odd = WINO_PICK(V, T, a, b, 1, 1); \
                        const I at = q + g->pw;                                                 \
                        memcpy(row + at % M * wq + at / M, &even, sizeof even);                 \
                        memcpy(row + (at + 1) % M * wq + (at + 1) / M, &odd, sizeof odd);       \
                    }                                                                           \
                    for (; q < g->w; q++) {                                                     \
                        const I at = q + g->pw;                                                 \
                        row[at % M * wq + at / M] = src[q];                                     \
                    }                                                                           \
                }                                                                               \
                T *dst = v + c * np + (n - n0) * tiles;                                         \
                for (I ty0 = 0; ty0 < th; ty0 += chunk) {                                       \
                const I ty1 = ty0 + chunk < th ? ty0 + chunk : th;                              \
                for (I ty = ty0; ty < ty1; ty++) {                                              \
                    const T *r0 = buf + ty * M * wr;                                            \
                    T *rows = rows_all + (ty - ty0) * N * wr;                                   \
                    for (I q = 0; q < wr; q += L) {                                             \
                        V e[N];                                                                 \
                        for (int l = 0; l < N; l++) e[l] = LOADV(V, r0 + l * wr + q);           \
                        _Pragma("GCC unroll 8") for (int i = 0; i < N; i++) {                   \
                            V s = {0};                                                          \
                            _Pragma("GCC unroll 8") for (int l = 0; l < N; l++)                 \
                                if (WG_TERM(NZ, N, i, l)) s += bt[i][l] * e[l];                 \
                            memcpy(rows + i * wr + q, &s, sizeof s);                            \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
                for (I ty = ty0; ty < ty1; ty++, dst += tw) {                                   \
                    const T *rows = rows_all + (ty - ty0) * N * wr;                             \
                    for (int i = 0; i < N; i++) {                                               \
                        const T *t = rows + i * wr;                                             \
                        I tx = 0;                                                               \
                        for (; tx + L <= tw; tx += L) {                                         \
                            V e[N];                                                             \
                            for (int l = 0; l < N; l++) e[l] = LOADV(V, t + l % M * wq + l / M + tx); \
                            _Pragma("GCC unroll 8") for (int j = 0; j < N; j++) {               \
                                V s = {0};                                                      \
                                _Pragma("GCC unroll 8") for (int l = 0; l < N; l++)             \
                                    if (WG_TERM(NZ, N, j, l)) s += bt[j][l] * e[l];             \
                                memcpy(dst + (i * N + j) * ks + tx, &s, sizeof s);              \
                            }                                                                   \
                        }                                                                       \
                        for (; tx < tw; tx++)                                                   \
                            for (int j = 0; j < N; j++) {                                       \
                                T s = 0;                                                        \
                                for (int l = 0; l < N; l++) s += bt[j][l] * t[l % M * wq + l / M + tx]; \
                                dst[(i * N + j) * ks + tx] = s;                                 \
                            }                                                                   \
                    }                                                                           \
                }                                                                               \
                }                                                                               \
            }                                                                                   \
        free(buf);                                                                              \
        return 0;                                                                               \
    }

/* out[n, a] (+)= AT m[.][a][p] A of every tile p of samples [n0, n1), outputs past Ho x Wo
 * dropped; vectorised over the tiles of a row (m's slices hold them side by side; s and y
 * are rounded up to whole vectors, their tails unused). */
#define DEFINE_WG_OUTPUT(NAME, ATTR, T, V, M, R)                                                \
    ATTR static int NAME(const T *restrict m, T *restrict out, const Geometry *g, I o, I n0,    \
                         I n1, I th, I tw, I ks, int accumulate, const double *mats)            \
    {                                                                                           \
        enum { N = M + R - 1 };                                                                 \
        const I L = VLANES(V, T), twv = (tw + L - 1) / L * L;                                   \
        T at[M][N];                                                                             \
        for (int i = 0; i < M; i++)                                                             \
            for (int j = 0; j < N; j++) at[i][j] = (T)WG_AT(mats, M, N, R)[i * N + j];          \
        const I tiles = th * tw, np = (n1 - n0) * tiles;                                        \
        T *y = malloc((size_t)(M * M * twv) * sizeof(T));                                       \
        if (!y) return -1;                                                                      \
        for (I n = n0; n < n1; n++)                                                             \
            for (I a = 0; a < o; a++) {                                                         \
                T *plane = out + (n * o + a) * g->ho * g->wo;                                   \
                const T *src = m + a * np + (n - n0) * tiles;                                   \
                for (I ty = 0; ty < th; ty++) {                                                 \
                    const T *e = src + ty * tw;                                                 \
                    I tx = 0;                                                                   \
                    for (; tx + L <= tw; tx += L) {                                             \
                        V s[M][N];                                                              \
                        for (int j = 0; j < N; j++) {                                           \
                            V col[N];                                                           \
                            for (int l = 0; l < N; l++) col[l] = LOADV(V, e + (l * N + j) * ks + tx); \
                            for (int i = 0; i < M; i++) {                                       \
                                V acc = at[i][0] * col[0];                                      \
                                for (int l = 1; l < N; l++) acc += at[i][l] * col[l];           \
                                s[i][j] = acc;                                                  \
                            }                                                                   \
                        }                                                                       \
                        for (int i = 0; i < M; i++)                                             \
                            for (int jj = 0; jj < M; jj++) {                                    \
                                V acc = at[jj][0] * s[i][0];                                    \
                                for (int j = 1; j < N; j++) acc += at[jj][j] * s[i][j];         \
                                memcpy(y + (i * M + jj) * twv + tx, &acc, sizeof acc);          \
                            }                                                                   \
                    }                                                                           \
                    for (; tx < tw; tx++) {                                                     \
                        T s[M][N];                                                              \
                        for (int j = 0; j < N; j++)                                             \
                            for (int i = 0; i < M; i++) {                                       \
                                T acc = 0;                                                      \
                                for (int l = 0; l < N; l++) acc += at[i][l] * e[(l * N + j) * ks + tx]; \
                                s[i][j] = acc;                                                  \
                            }                                                                   \
                        for (int i = 0; i < M; i++)                                             \
                            for (int jj = 0; jj < M; jj++) {                                    \
                                T acc = 0;                                                      \
                                for (int j = 0; j < N; j++) acc += at[jj][j] * s[i][j];         \
                                y[(i * M + jj) * twv + tx] = acc;                               \
                            }                                                                   \
                    }                                                                           \
                    for (int i = 0; i < M; i++) {                                               \
                        const I r = ty * M + i;                                                 \
                        if (r >= g->ho) break;                                                  \
                        T *row = plane + r * g->wo;                                             \
                        if (M == 2) { /* the two columns of L tiles zipped into 2L outputs */   \
                            for (I tx = 0; tx < tw; tx += L) {                                  \
                                const V ya = LOADV(V, y + i * M * twv + tx);                    \
                                const V yb = LOADV(V, y + (i * M + 1) * twv + tx);              \
                                WINO_PUT_PAIR(V, T, row, 2 * tx, ya, yb, 1, g->wo, accumulate); \
                            }                                                                   \
                            continue;                                                           \
                        }                                                                       \
                        if (accumulate)                                                         \
                            for (I q = 0; q < g->wo; q++) row[q] += y[(i * M + q % M) * twv + q / M]; \
                        else                                                                    \
                            for (I q = 0; q < g->wo; q++) row[q] = y[(i * M + q % M) * twv + q / M]; \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
        free(y);                                                                                \
        return 0;                                                                               \
    }

/* BT's nonzero entries (bit i * N + j) for spatial.WG_POINTS, by (M, R): F(2x2, 5x5) has 22 of
 * 36. The _sparse builds leave the other terms out of the unrolled sums (a zero term adds
 * nothing to a finite sum: the same bits, 14 fewer multiply-adds per row of 6); a BT with a
 * nonzero elsewhere (other points) runs the _dense build. tests compare these to the matrices. */
#define WG_BT_NZ_2_5 0xa9e79e795ull
#define WG_BT_NZ_4_3 0xa9e79e795ull
#define WG_BT_NZ_4_5 0xaa7e7e7e7e7e7e55ull
#define WG_TERM(NZ, N, i, l) (((NZ) >> ((i) * (N) + (l))) & 1)

/* Whether every nonzero entry of BT (mats, F(M, R)) lies within nz. */
static int wg_bt_within(const double *mats, int m, int r, unsigned long long nz)
{
    const int n = m + r - 1;
    const double *bt = WG_BT(mats, m, n, r);
    for (int i = 0; i < n * n; i++)
        if (bt[i] != 0 && !((nz >> i) & 1)) return 0;
    return 1;
}

#define DEFINE_WG_INPUT(NAME, ATTR, T, V, M, R)                                                 \
    DEFINE_WG_INPUT_TERMS(NAME##_dense, ATTR, T, V, M, R, ~0ull)                                \
    DEFINE_WG_INPUT_TERMS(NAME##_sparse, ATTR, T, V, M, R, WG_BT_NZ_##M##_##R)                  \
    ATTR static int NAME(const T *restrict x, T *restrict v, const Geometry *g, I n0, I n1,    \
                         I th, I tw, I ks, const double *mats)                                  \
    {                                                                                           \
        return (wg_bt_within(mats, M, R, WG_BT_NZ_##M##_##R) ? NAME##_sparse : NAME##_dense)(   \
            x, v, g, n0, n1, th, tw, ks, mats);                                                 \
    }

#define DEFINE_WG_ISA(M, R, T, V, SUF, ATTR)                                                   \
    DEFINE_WG_WEIGHTS(wg_weights_##M##_##R##_##T##_##SUF, ATTR, T, M, R)                        \
    DEFINE_WG_INPUT(wg_input_##M##_##R##_##T##_##SUF, ATTR, T, V, M, R)                         \
    DEFINE_WG_OUTPUT(wg_output_##M##_##R##_##T##_##SUF, ATTR, T, V, M, R)
typedef float f32;
typedef double f64;
#define DEFINE_WG_ALL(M, R)                                                                     \
    DEFINE_WG_ISA(M, R, f32, vf32x16, 512, ISA_512)                                             \
    DEFINE_WG_ISA(M, R, f32, vf32x8, 256, ISA_256)                                              \
    DEFINE_WG_ISA(M, R, f32, vf32x4, 128, ISA_128)                                              \
    DEFINE_WG_ISA(M, R, f64, vf64x8, 512, ISA_512)                                              \
    DEFINE_WG_ISA(M, R, f64, vf64x4, 256, ISA_256)                                              \
    DEFINE_WG_ISA(M, R, f64, vf64x2, 128, ISA_128)

DEFINE_WG_ALL(2, 5)
DEFINE_WG_ALL(4, 5)
DEFINE_WG_ALL(4, 3)

/* The weight gradient of F(2x2, 5x5), i.e. F(5x5, 2x2): with v the forward's input tiles
 * (wg_input) and m dy's tiles through the adjoint of wg_output (wg_grad), the 36 GEMMs v[k] m[k]
 * summed over the tiles give the gradient of the transformed taps, G^T (.) G that of the taps
 * (spatial._wg_backward_filter). m[k][p][a] = (AT^T dy AT)[k] of the MxM outputs of every tile
 * p of samples [n0, n1), those past Ho x Wo read as zeros, tile-major (the output channels
 * innermost, as winograd_grad) so that tile_gemm reads m along its rows. A row of tiles first
 * copies its M rows of every channel into ``stage`` with the channels innermost, so that a
 * tile's values of a vector of channels are one load and its N*N outputs N*N vector stores.
 * Returns -1 when its scratch cannot be allocated. */
#define WG_GRAD_TILE(V, y, STORE)                                                                  \
    do {                                                                                           \
        V s_[N][WG_M];                                                                             \
        for (int i_ = 0; i_ < N; i_++)                                                             \
            for (int q_ = 0; q_ < WG_M; q_++) {                                                    \
                V acc_ = at[0][i_] * y[0][q_];                                                     \
                for (int h_ = 1; h_ < WG_M; h_++) acc_ += at[h_][i_] * y[h_][q_];                  \
                s_[i_][q_] = acc_;                                                                 \
            }                                                                                      \
        for (int i_ = 0; i_ < N; i_++)                                                             \
            for (int j_ = 0; j_ < N; j_++) {                                                       \
                V acc_ = s_[i_][0] * at[0][j_];                                                    \
                for (int q_ = 1; q_ < WG_M; q_++) acc_ += s_[i_][q_] * at[q_][j_];                 \
                STORE(i_ * N + j_, acc_);                                                          \
            }                                                                                      \
    } while (0)
#define WG_GRAD_STORE_VECTOR(K, VALUE) do { const __typeof__(VALUE) v_ = (VALUE); memcpy(e + (K) * ks + a, &v_, sizeof v_); } while (0)
#define WG_GRAD_STORE_ONE(K, VALUE) (e[(K) * ks + a] = (VALUE))
#define DEFINE_WG_GRAD(NAME, T, V, M, R)                                                           \
    VECTOR_CLONES static int NAME(const T *restrict dy, T *restrict m, const Geometry *g, I o,     \
                                  I n0, I n1, I th, I tw, I ks, const double *mats)                \
    {                                                                                              \
        enum { N = M + R - 1, WG_M = M };                                                          \
        const I lanes = (I)(sizeof(V) / sizeof(T));                                                \
        const I ho = g->ho, wo = g->wo, hw = ho * wo, wr = tw * M, os = (o + 15) / 16 * 16 + 16;   \
        T at[M][N];                                                                                \
        for (int i = 0; i < M; i++)                                                                \
            for (int j = 0; j < N; j++) at[i][j] = (T)WG_AT(mats, M, N, R)[i * N + j];             \
        T *stage = malloc((size_t)(M * wr * os) * sizeof(T));                                      \
        if (!stage) return -1;                                                                     \
        T *e = m;                                                                                  \
        for (I n = n0; n < n1; n++)                                                                \
            for (I ty = 0; ty < th; ty++) {                                                        \
                for (int h = 0; h < M; h++) {                                                      \
                    T *row = stage + h * wr * os;                                                  \
                    const I r = ty * M + h;                                                        \
                    I copied = 0;                                                                  \
                    if (r < ho) {                                                                  \
                        for (I a = 0; a < o; a++) {                                                \
                            const T *src = dy + (n * o + a) * hw + r * wo;                         \
                            for (I x = 0; x < wo; x++) row[x * os + a] = src[x];                   \
                        }                                                                          \
                        copied = wo;                                                               \
                    }                                                                              \
                    memset(row + copied * os, 0, (size_t)((wr - copied) * os) * sizeof(T));        \
                }                                                                                  \
                for (I tx = 0; tx < tw; tx++, e += o) {                                            \
                    const T *base = stage + tx * M * os;                                           \
                    I a = 0;                                                                       \
                    for (; a + lanes <= o; a += lanes) {                                           \
                        V y[M][M];                                                                 \
                        for (int h = 0; h < M; h++)                                                \
                            for (int q = 0; q < M; q++) y[h][q] = LOADV(V, base + (h * wr + q) * os + a); \
                        WG_GRAD_TILE(V, y, WG_GRAD_STORE_VECTOR);                                  \
                    }                                                                              \
                    for (; a < o; a++) {                                                           \
                        T y[M][M];                                                                 \
                        for (int h = 0; h < M; h++)                                                \
                            for (int q = 0; q < M; q++) y[h][q] = base[(h * wr + q) * os + a];     \
                        WG_GRAD_TILE(T, y, WG_GRAD_STORE_ONE);                                     \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        free(stage);                                                                               \
        return 0;                                                                                  \
    }

DEFINE_WG_GRAD(wg_grad_2_5_f32, float, vf32x8, 2, 5)
DEFINE_WG_GRAD(wg_grad_2_5_f64, double, vf64x4, 2, 5)

/* float64 values of F(2x2, 5x5)'s matrices AT | G | BT (2 x 6, 6 x 5, 6 x 6) */
#define WG_2_5_MATS (2 * 6 + 6 * 5 + 6 * 6)

/* The (M, R) pairs built above; 0 where (m, r) is not one of them. */
static int wg_supported(I m, I r) { return (m == 2 && r == 5) || (m == 4 && (r == 5 || r == 3)); }

#define WG_DISPATCH(KIND, T, m, r, ...)                                                         \
    ((m) == 2 ? ISA_CALL(wg_##KIND##_2_5_##T, __VA_ARGS__)                                      \
     : (r) == 5 ? ISA_CALL(wg_##KIND##_4_5_##T, __VA_ARGS__) : ISA_CALL(wg_##KIND##_4_3_##T, __VA_ARGS__))

/* ------------------------------------------------------------------ 3x3 stride 2 as F(2x2, 2x2) on phases */

/* A 3x3 stride-2 conv is the sum of four stride-1 convs on the phase planes of the padded
 * input (phase (a, b): rows a, a + 2, ..., columns b, b + 2, ...), with kernels of 2x2 (taps
 * (0|2, 0|2)), 2x1 (taps (0|2, 1)), 1x2 (taps (1, 0|2)) and 1x1 (tap (1, 1)). Tiles of 2x2
 * outputs run the 2x2 one as Winograd F(2x2, 2x2) (BT rows d0 - d1, d1, d2 - d1; G rows g0,
 * g0 + g1, g1; AT rows m0 + m1, m1 + m2), the 2x1 and 1x2 ones as F(2, 2) along their long
 * side, the 1x1 one as is. AT's first and last columns are the identity's, so every product
 * lands in one of F(2x2, 2x2)'s 3x3 positions (p, q): 9 GEMMs with K = C (the centre), 2C (the
 * edges) or 4C (the corners), 25 multiply-adds per tile and input channel instead of 36, and
 * only additions in the transforms (float32 errors as the direct kernel's, docs/numpy.md).
 * A tile's inputs are the 5x5 patch of the padded plane at (4ty, 4tx). Rows of a position's K:
 * [phase 00 | phase 01 if q even | phase 10 if p even | phase 11 if both] x C. */
static I s2_row(I p, I q, I seg, I c)
{
    /* segment seg (0: 00, 1: 01, 2: 10, 3: 11) of position (p, q), as a K row */
    I at = 0;
    if (seg >= 1 && q % 2 == 0) at++;
    if (seg >= 2 && p % 2 == 0) at++;
    if (seg >= 3) at++;
    return at * c;
}

/* dst[k]: where channel ch's values of segment k start in v (slices ks apart, rows np apart, the
 * sample's tiles from ``at``): phase 00 at position k; 01 at (p, 2q'): 9 + 2p + q'; 10 at (2h, q):
 * 15 + 3h + q; 11 at (2h, 2q'): 21 + 2h + q' */
#define S2_SLICES(dst, v, c, ch, at, np, ks)                                                   \
    for (I p_ = 0; p_ < 3; p_++)                                                              \
        for (I q_ = 0; q_ < 3; q_++) {                                                        \
            const I base_ = (p_ * 3 + q_) * (ks) + (at);                                      \
            (dst)[p_ * 3 + q_] = (v) + base_ + (s2_row(p_, q_, 0, c) + (ch)) * (np);          \
            if (q_ % 2 == 0) (dst)[9 + p_ * 2 + q_ / 2] = (v) + base_ + (s2_row(p_, q_, 1, c) + (ch)) * (np); \
            if (p_ % 2 == 0) (dst)[15 + p_ / 2 * 3 + q_] = (v) + base_ + (s2_row(p_, q_, 2, c) + (ch)) * (np); \
            if (p_ % 2 == 0 && q_ % 2 == 0)                                                   \
                (dst)[21 + p_ / 2 * 2 + q_ / 2] = (v) + base_ + (s2_row(p_, q_, 3, c) + (ch)) * (np); \
        }

/* u[p*3 + q][o][krow] (row stride 4C, K(p, q) rows used) of w (O, C, 3, 3), in double. */
/* runs of S2_WEIGHTS_RUN input channels at a time: each of u's rows is written in runs and the
 * sums vectorise (one channel pair at a time is the forward's serial part, which showed in the
 * ResNet's 32 -> 64 layer); the same sums in double as one at a time, so the same bits */
#define S2_WEIGHTS_RUN 16
#define DEFINE_S2_WEIGHTS(NAME, ATTR, T)                                                       \
    ATTR static void NAME(const T *restrict w, T *restrict u, I o, I c)                        \
    {                                                                                          \
        const I kr = 4 * c;                                                                    \
        I at[9][4];                                                                            \
        for (I p = 0; p < 3; p++)                                                              \
            for (I q = 0; q < 3; q++)                                                          \
                for (I seg = 0; seg < 4; seg++) at[p * 3 + q][seg] = s2_row(p, q, seg, c);     \
        for (I a = 0; a < o; a++)                                                              \
            for (I b0 = 0; b0 < c; b0 += S2_WEIGHTS_RUN) {                                     \
                const I nb = c - b0 < S2_WEIGHTS_RUN ? c - b0 : S2_WEIGHTS_RUN;                \
                double g[9][S2_WEIGHTS_RUN] = {{0}}, e[3][3][S2_WEIGHTS_RUN];                  \
                double v01[3][S2_WEIGHTS_RUN], v10[3][S2_WEIGHTS_RUN];                         \
                for (I l = 0; l < nb; l++)                                                     \
                    for (int t = 0; t < 9; t++) g[t][l] = (double)w[(a * c + b0 + l) * 9 + t]; \
                /* G (2x2 taps) G^T, rows then columns */                                      \
                for (int l = 0; l < S2_WEIGHTS_RUN; l++) {                                     \
                    for (int j = 0; j < 3; j += 2) {                                           \
                        e[0][j][l] = g[j][l]; e[1][j][l] = g[j][l] + g[6 + j][l]; e[2][j][l] = g[6 + j][l]; \
                    }                                                                          \
                    for (int i = 0; i < 3; i++) e[i][1][l] = e[i][0][l] + e[i][2][l];          \
                    v01[0][l] = g[1][l]; v01[1][l] = g[1][l] + g[7][l]; v01[2][l] = g[7][l];   \
                    v10[0][l] = g[3][l]; v10[1][l] = g[3][l] + g[5][l]; v10[2][l] = g[5][l];   \
                }                                                                              \
                for (I p = 0; p < 3; p++)                                                      \
                    for (I q = 0; q < 3; q++) {                                                \
                        T *row = u + ((p * 3 + q) * o + a) * kr + b0;                          \
                        const I *off = at[p * 3 + q];                                          \
                        for (I l = 0; l < nb; l++) row[off[0] + l] = (T)e[p][q][l];            \
                        if (q % 2 == 0)                                                        \
                            for (I l = 0; l < nb; l++) row[off[1] + l] = (T)v01[p][l];         \
                        if (p % 2 == 0)                                                        \
                            for (I l = 0; l < nb; l++) row[off[2] + l] = (T)v10[q][l];         \
                        if (p % 2 == 0 && q % 2 == 0)                                          \
                            for (I l = 0; l < nb; l++) row[off[3] + l] = (T)g[4][l];           \
                    }                                                                          \
            }                                                                                  \
    }

/* Eight lanes of T: s2_columns' and s2_output's blocks of 8 tiles (one AVX2 register of floats). */
typedef float s2_f32 __attribute__((vector_size(32)));
typedef double s2_f64 __attribute__((vector_size(64)));
/* Four lanes: s2_output's rows of 4 tiles. */
typedef float s2_f32x4 __attribute__((vector_size(16)));
typedef double s2_f64x4 __attribute__((vector_size(32)));

/* One patch row z (padded row, its columns 4tx + 0..4 for tile tx) along the columns: F(2, 2)'s
 * BT over columns 0, 2, 4 into d0, d1, d2 and, where ``odd`` is set, columns 1 and 3 as they are.
 * Blocks of 8 tiles read z[4tx .. 4tx + 32] as four vectors and one value and split them with
 * shuffles (a tile's column 4 is the next tile's column 0); the tiles past the last whole block
 * one by one. The same subtractions either way, so the same bits. */
#define DEFINE_S2_COLUMNS(NAME, ATTR, T, V)                                                    \
    ATTR static void NAME(const T *restrict z, I tw, T *restrict d0, T *restrict d1, T *restrict d2, \
                          T *restrict o1, T *restrict o3)                                      \
    {                                                                                          \
        I tx = 0;                                                                              \
        for (; tx + 8 <= tw; tx += 8) {                                                        \
            V y0, y1, y2, y3;                                                                  \
            const T *at = z + 4 * tx;                                                          \
            memcpy(&y0, at, sizeof(V)); memcpy(&y1, at + 8, sizeof(V));                        \
            memcpy(&y2, at + 16, sizeof(V)); memcpy(&y3, at + 24, sizeof(V));                  \
            const V lo = __builtin_shufflevector(y0, y1, 0, 4, 8, 12, 2, 6, 10, 14);           \
            const V hi = __builtin_shufflevector(y2, y3, 0, 4, 8, 12, 2, 6, 10, 14);           \
            const V a = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11);             \
            const V b = __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);           \
            const V next = (V){0} + at[32];                                                    \
            const V c = __builtin_shufflevector(a, next, 1, 2, 3, 4, 5, 6, 7, 8);              \
            const V e0 = a - b, e2 = c - b;                                                    \
            memcpy(d0 + tx, &e0, sizeof(V)); memcpy(d1 + tx, &b, sizeof(V));                   \
            memcpy(d2 + tx, &e2, sizeof(V));                                                   \
            if (o1) {                                                                          \
                const V lo1 = __builtin_shufflevector(y0, y1, 1, 5, 9, 13, 3, 7, 11, 15);      \
                const V hi1 = __builtin_shufflevector(y2, y3, 1, 5, 9, 13, 3, 7, 11, 15);      \
                const V f1 = __builtin_shufflevector(lo1, hi1, 0, 1, 2, 3, 8, 9, 10, 11);      \
                const V f3 = __builtin_shufflevector(lo1, hi1, 4, 5, 6, 7, 12, 13, 14, 15);    \
                memcpy(o1 + tx, &f1, sizeof(V)); memcpy(o3 + tx, &f3, sizeof(V));              \
            }                                                                                  \
        }                                                                                      \
        for (I t = tx; t < tw; t++) {                                                          \
            const T a = z[4 * t], b = z[4 * t + 2], c = z[4 * t + 4];                          \
            d0[t] = a - b; d1[t] = b; d2[t] = c - b;                                           \
        }                                                                                      \
        if (o1)                                                                                \
            for (I t = tx; t < tw; t++) {                                                      \
                o1[t] = z[4 * t + 1]; o3[t] = z[4 * t + 3];                                    \
            }                                                                                  \
    }

/* Scratch items of s2_input (7 rows of 4tw + 4) and s2_output (4 rows of tw), th x tw tiles. */
static I s2_input_rows(I tw) { return 7 * (4 * tw + 4); }
static I s2_output_rows(I tw) { return 4 * tw; }

/* v[pos*ks + krow*np + (n - n0)*tiles + tile] of samples [n0, n1): per row of tiles, the 5
 * padded rows of its patches are copied (zeros in the padding) into ``buf`` (s2_input_rows,
 * the caller's scratch), F(2, 2)'s BT runs along the columns on whole rows (rows 0, 2, 4 into
 * t0, r2, t2), then each of those and the odd rows 1 and 3 is split along its columns
 * (s2_columns). */
#define DEFINE_S2_INPUT(NAME, ATTR, T, COLUMNS)                                                \
    ATTR static void NAME(const T *restrict x, T *restrict v, T *restrict buf, const Geometry *g, \
                          I n0, I n1, I th, I tw, I ks)                                        \
    {                                                                                          \
        const I c = g->c, tiles = th * tw, np = (n1 - n0) * tiles, rw = 4 * tw + 4;           \
        T *t0 = buf + 5 * rw, *t2 = buf + 6 * rw;                                              \
        I cw = g->w;                                                                           \
        if (cw > rw - g->pw) cw = rw - g->pw;                                                  \
        for (I n = n0; n < n1; n++)                                                            \
            for (I ch = 0; ch < c; ch++) {                                                     \
                const T *plane = x + (n * c + ch) * g->h * g->w;                               \
                T *dst[25];                                                                    \
                S2_SLICES(dst, v, c, ch, (n - n0) * tiles, np, ks);                            \
                for (I ty = 0; ty < th; ty++) {                                                \
                    for (int r = 0; r < 5; r++) {                                              \
                        T *row = buf + r * rw;                                                 \
                        const I src = 4 * ty + r - g->ph;                                      \
                        memset(row, 0, (size_t)rw * sizeof(T));                                \
                        if (src >= 0 && src < g->h && cw > 0)                                  \
                            memcpy(row + g->pw, plane + src * g->w, (size_t)cw * sizeof(T));   \
                    }                                                                          \
                    const T *r0 = buf, *r2 = buf + 2 * rw, *r4 = buf + 4 * rw;                 \
                    for (I i = 0; i < rw; i++) {                                               \
                        t0[i] = r0[i] - r2[i];                                                 \
                        t2[i] = r4[i] - r2[i];                                                 \
                    }                                                                          \
                    const I o = ty * tw;                                                       \
                    const T *rows[3] = {t0, r2, t2};                                           \
                    for (int p = 0; p < 3; p++)                                                \
                        COLUMNS(rows[p], tw, dst[p * 3] + o, dst[p * 3 + 1] + o, dst[p * 3 + 2] + o, \
                                dst[9 + p * 2] + o, dst[9 + p * 2 + 1] + o);                   \
                    for (int h = 0; h < 2; h++)                                                \
                        COLUMNS(buf + (2 * h + 1) * rw, tw, dst[15 + h * 3] + o, dst[15 + h * 3 + 1] + o, \
                                dst[15 + h * 3 + 2] + o, dst[21 + h * 2] + o, dst[21 + h * 2 + 1] + o); \
                }                                                                              \
            }                                                                                  \
    }

/* AT m A for as many tiles as V has lanes, from e[pos*ks + tx]: y0/y1 the even/odd outputs of
 * the tiles' top row, y2/y3 of their bottom row; the same adds in the same order as the scalar
 * tail of s2_output, so the same bits. */
#define S2_OUTPUT_TILES(V, e, ks, tx, y0, y1, y2, y3)                                           \
    V y0, y1, y2, y3;                                                                          \
    {                                                                                          \
        V m_[9];                                                                               \
        for (int k_ = 0; k_ < 9; k_++) memcpy(&m_[k_], (e) + k_ * (ks) + (tx), sizeof(V));     \
        const V s00 = m_[0] + m_[1], s01 = m_[1] + m_[2], s10 = m_[3] + m_[4];                 \
        const V s11 = m_[4] + m_[5], s20 = m_[6] + m_[7], s21 = m_[7] + m_[8];                 \
        y0 = s00 + s10; y1 = s01 + s11; y2 = s10 + s20; y3 = s11 + s21;                        \
    }

/* out[n, a] = AT m[.][a][tile] A for samples [n0, n1), outputs past Ho x Wo dropped: a row of
 * tiles runs in vectors of 8 tiles (V), then of 4 (V4), whose even and odd outputs interleave
 * into 16 (8) outputs of each of its two output rows, then the rest one tile at a time through
 * ``y`` (s2_output_rows, the caller's scratch). Vectors of 4 too: the ResNet's 8x8 outputs have
 * rows of 4 tiles. */
#define DEFINE_S2_OUTPUT(NAME, ATTR, T, V, V4)                                                    \
    ATTR static void NAME(const T *restrict m, T *restrict out, T *restrict y, const Geometry *g, \
                          I o, I n0, I n1, I th, I tw, I ks)                                   \
    {                                                                                          \
        const I tiles = th * tw, np = (n1 - n0) * tiles, wo = g->wo;                           \
        for (I n = n0; n < n1; n++)                                                            \
            for (I a = 0; a < o; a++) {                                                        \
                T *plane = out + (n * o + a) * g->ho * wo;                                     \
                const T *src = m + a * np + (n - n0) * tiles;                                  \
                for (I ty = 0; ty < th; ty++) {                                                \
                    const T *e = src + ty * tw;                                                \
                    T *top = plane + 2 * ty * wo, *bottom = top + wo;                          \
                    const int two = 2 * ty + 1 < g->ho;                                        \
                    I tx = 0;                                                                  \
                    for (; 2 * (tx + 8) <= wo; tx += 8) {                                      \
                        S2_OUTPUT_TILES(V, e, ks, tx, y0, y1, y2, y3)                          \
                        const V a0 = __builtin_shufflevector(y0, y1, 0, 8, 1, 9, 2, 10, 3, 11); \
                        const V a1 = __builtin_shufflevector(y0, y1, 4, 12, 5, 13, 6, 14, 7, 15); \
                        memcpy(top + 2 * tx, &a0, sizeof(V)); memcpy(top + 2 * tx + 8, &a1, sizeof(V)); \
                        if (two) {                                                             \
                            const V b0 = __builtin_shufflevector(y2, y3, 0, 8, 1, 9, 2, 10, 3, 11); \
                            const V b1 = __builtin_shufflevector(y2, y3, 4, 12, 5, 13, 6, 14, 7, 15); \
                            memcpy(bottom + 2 * tx, &b0, sizeof(V)); memcpy(bottom + 2 * tx + 8, &b1, sizeof(V)); \
                        }                                                                      \
                    }                                                                          \
                    for (; 2 * (tx + 4) <= wo; tx += 4) {                                      \
                        S2_OUTPUT_TILES(V4, e, ks, tx, y0, y1, y2, y3)                         \
                        const V4 a0 = __builtin_shufflevector(y0, y1, 0, 4, 1, 5);             \
                        const V4 a1 = __builtin_shufflevector(y0, y1, 2, 6, 3, 7);             \
                        memcpy(top + 2 * tx, &a0, sizeof(V4)); memcpy(top + 2 * tx + 4, &a1, sizeof(V4)); \
                        if (two) {                                                             \
                            const V4 b0 = __builtin_shufflevector(y2, y3, 0, 4, 1, 5);         \
                            const V4 b1 = __builtin_shufflevector(y2, y3, 2, 6, 3, 7);         \
                            memcpy(bottom + 2 * tx, &b0, sizeof(V4)); memcpy(bottom + 2 * tx + 4, &b1, sizeof(V4)); \
                        }                                                                      \
                    }                                                                          \
                    const I rest = tx;                                                         \
                    for (; tx < tw; tx++) {                                                    \
                        T s[3][2];                                                             \
                        for (int p = 0; p < 3; p++) {                                          \
                            const T m0 = e[(p * 3) * ks + tx], m1 = e[(p * 3 + 1) * ks + tx];  \
                            const T m2 = e[(p * 3 + 2) * ks + tx];                             \
                            s[p][0] = m0 + m1; s[p][1] = m1 + m2;                              \
                        }                                                                      \
                        for (int j = 0; j < 2; j++) {                                          \
                            y[j * tw + tx] = s[0][j] + s[1][j];                                \
                            y[(2 + j) * tw + tx] = s[1][j] + s[2][j];                          \
                        }                                                                      \
                    }                                                                          \
                    for (int i = 0; i < 1 + two; i++) {                                        \
                        T *row = i ? bottom : top;                                             \
                        const T *even = y + 2 * i * tw, *odd = even + tw;                      \
                        for (I q = 2 * rest; q < wo; q++) row[q] = (q % 2 ? odd : even)[q / 2]; \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    }

/* m[pos*ks + a*np + (n - n0)*tiles + tile] = A dY A^T of dy's 2x2 tiles for samples [n0, n1)
 * (A's rows (1, 0), (1, 1), (0, 1)): the adjoint of s2_output, the weight gradient's dy tiles;
 * the outputs past Ho x Wo read as zeros. */
#define DEFINE_S2_GRAD(NAME, T)                                                                \
    static void NAME(const T *restrict dy, T *restrict m, const Geometry *g, I o, I n0, I n1,  \
                     I th, I tw, I ks)                                                         \
    {                                                                                          \
        const I tiles = th * tw, np = (n1 - n0) * tiles;                                       \
        for (I n = n0; n < n1; n++)                                                            \
            for (I a = 0; a < o; a++) {                                                        \
                const T *plane = dy + (n * o + a) * g->ho * g->wo;                             \
                T *e = m + a * np + (n - n0) * tiles;                                          \
                for (I ty = 0; ty < th; ty++)                                                  \
                    for (I tx = 0; tx < tw; tx++) {                                            \
                        T y[2][2];                                                             \
                        for (int i = 0; i < 2; i++)                                            \
                            for (int j = 0; j < 2; j++) {                                      \
                                const I r = 2 * ty + i, q = 2 * tx + j;                        \
                                y[i][j] = r < g->ho && q < g->wo ? plane[r * g->wo + q] : (T)0; \
                            }                                                                  \
                        const T s[3][2] = {{y[0][0], y[0][1]}, {y[0][0] + y[1][0], y[0][1] + y[1][1]}, \
                                           {y[1][0], y[1][1]}};                                \
                        T *at = e + ty * tw + tx;                                              \
                        for (int p = 0; p < 3; p++) {                                          \
                            at[(p * 3) * ks] = s[p][0];                                        \
                            at[(p * 3 + 1) * ks] = s[p][0] + s[p][1];                          \
                            at[(p * 3 + 2) * ks] = s[p][1];                                    \
                        }                                                                      \
                    }                                                                          \
            }                                                                                  \
    }

/* s2_grad with m's slices transposed, m[pos*ks + ((n - n0)*tiles + tile)*o + a]: the tiles x O
 * operand of tile_gemm's weight-gradient GEMMs (its rows have to be the reduction's). */
#define DEFINE_S2_GRAD_T(NAME, T)                                                              \
    static void NAME(const T *restrict dy, T *restrict m, const Geometry *g, I o, I n0, I n1,  \
                     I th, I tw, I ks)                                                         \
    {                                                                                          \
        const I tiles = th * tw, hw = g->ho * g->wo;                                           \
        for (I n = n0; n < n1; n++)                                                            \
            for (I ty = 0; ty < th; ty++)                                                      \
                for (I tx = 0; tx < tw; tx++) {                                                \
                    const T *at = dy + n * o * hw;                                             \
                    T *e = m + ((n - n0) * tiles + ty * tw + tx) * o;                          \
                    const I r = 2 * ty, q = 2 * tx;                                            \
                    const int r1 = r + 1 < g->ho, q1 = q + 1 < g->wo;                          \
                    for (I a = 0; a < o; a++, at += hw) {                                      \
                        const T y00 = at[r * g->wo + q], y01 = q1 ? at[r * g->wo + q + 1] : (T)0; \
                        const T y10 = r1 ? at[(r + 1) * g->wo + q] : (T)0;                     \
                        const T y11 = r1 && q1 ? at[(r + 1) * g->wo + q + 1] : (T)0;           \
                        const T s[3][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y10, y11}};    \
                        for (int p = 0; p < 3; p++) {                                          \
                            e[(p * 3) * ks + a] = s[p][0];                                     \
                            e[(p * 3 + 1) * ks + a] = s[p][0] + s[p][1];                       \
                            e[(p * 3 + 2) * ks + a] = s[p][1];                                 \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
    }

DEFINE_S2_WEIGHTS(s2_weights_f32_256, ISA_256, float)
DEFINE_S2_WEIGHTS(s2_weights_f32_128, ISA_128, float)
DEFINE_S2_GRAD(s2_grad_f32, float)
DEFINE_S2_GRAD(s2_grad_f64, double)
DEFINE_S2_GRAD_T(s2_grad_t_f32, float)
DEFINE_S2_GRAD_T(s2_grad_t_f64, double)
DEFINE_S2_WEIGHTS(s2_weights_f64_256, ISA_256, double)
DEFINE_S2_WEIGHTS(s2_weights_f64_128, ISA_128, double)
DEFINE_S2_COLUMNS(s2_columns_f32_256, ISA_256, float, s2_f32)
DEFINE_S2_COLUMNS(s2_columns_f64_256, ISA_256, double, s2_f64)
DEFINE_S2_COLUMNS(s2_columns_f32_128, ISA_128, float, s2_f32)
DEFINE_S2_COLUMNS(s2_columns_f64_128, ISA_128, double, s2_f64)
DEFINE_S2_INPUT(s2_input_f32_256, ISA_256, float, s2_columns_f32_256)
DEFINE_S2_INPUT(s2_input_f64_256, ISA_256, double, s2_columns_f64_256)
DEFINE_S2_INPUT(s2_input_f32_128, ISA_128, float, s2_columns_f32_128)
DEFINE_S2_INPUT(s2_input_f64_128, ISA_128, double, s2_columns_f64_128)
DEFINE_S2_OUTPUT(s2_output_f32_256, ISA_256, float, s2_f32, s2_f32x4)
DEFINE_S2_OUTPUT(s2_output_f64_256, ISA_256, double, s2_f64, s2_f64x4)
DEFINE_S2_OUTPUT(s2_output_f32_128, ISA_128, float, s2_f32, s2_f32x4)
DEFINE_S2_OUTPUT(s2_output_f64_128, ISA_128, double, s2_f64, s2_f64x4)
#define S2_CALL(NAME, ...) (isa >= 1 ? NAME##_256(__VA_ARGS__) : NAME##_128(__VA_ARGS__))

#if WINO_PLANE8
/* Square 16x16 and 32x32 planes padded by 1 (the strided layers at those sizes), float32 on
 * AVX-512: a plane's tiles are 1 or 4 runs of 16 (16 / tw rows of tiles each), so each of the 25
 * slices of a plane is written in whole vectors, and the patches' columns are taken out of the
 * input rows by shuffles instead of s2_input's passes, which stage every row of tiles in scratch
 * and split it in blocks of 8 tiles (docs/numpy.md). Same subtractions, so the same bits. */
static int s2_plane_wide(const Geometry *g, I th, I tw)
{
    return (g->h == 16 || g->h == 32) && g->w == g->h && g->ph == 1 && g->pw == 1 && g->ho == g->h / 2
           && g->wo == g->w / 2 && th == g->h / 4 && tw == g->w / 4;
}

/* Lane l of a pair of input vectors (one row's halves at 32x32, two rows at 16x16): column
 * 4(l % 8) + J0 for l < 8, + J1 above; in both layouts a pair's 32 values are 8 patches' columns
 * 4w - 1 .. 4w + 3 for w = l % 8 (column -1, the padding, clamped here and zeroed by a mask). */
#define S2W_COL(J, l) ((J) < 0 && (l) % 8 == 0 ? 0 : 4 * ((l) % 8) + (J))
#define S2W_PAIR(J0, J1, l) ((l) < 8 ? S2W_COL(J0, l) : S2W_COL(J1, l))
#define S2W_M1_3(A, l) S2W_PAIR(-1, 3, l)
#define S2W_1_1(A, l) S2W_PAIR(1, 1, l)
#define S2W_0_2(A, l) S2W_PAIR(0, 2, l)
/* the low (H 0) or high (H 1) halves of a vector pair, one after the other */
#define S2W_HALF(H, l) ((l) < 8 ? (l) + 8 * (H) : (l) + 8 + 8 * (H))
/* lanes l < 8 of the first vector of a pair whose patch (tile column l % tw) is the row's first */
#define S2W_FIRST(TW, l) ((l) < 8 && (l) % (TW) == 0 ? 0 : -1)

/* k[kind][s] for kinds 0-4, the patch rows t0 = r0 - r2, r2, t2 = r4 - r2 (BT along the columns),
 * r1, r3 of tile row ty, each a vector V of the row from ``at`` (zero above the plane) */
#define S2_PATCH_ROWS(V, k, s, at, side, ty, zero)                                             \
    {                                                                                          \
        V r_[5];                                                                               \
        for (int i_ = 0; i_ < 5; i_++) {                                                      \
            const I y_ = 4 * (ty) - 1 + i_;                                                    \
            r_[i_] = y_ >= 0 ? LOADV(V, (at) + y_ * (side)) : (zero);                         \
        }                                                                                      \
        (k)[0][s] = r_[0] - r_[2];                                                             \
        (k)[1][s] = r_[2];                                                                     \
        (k)[2][s] = r_[4] - r_[2];                                                             \
        (k)[3][s] = r_[1];                                                                     \
        (k)[4][s] = r_[3];                                                                     \
    }
/* a kind's five vectors at ``off`` of their slices: kinds 0-2 (rows[p] of s2_input) go to
 * dst[3p ..] and dst[9 + 2p ..], 3-4 (the odd rows h) to dst[15 + 3h ..] and dst[21 + 2h ..] */
#define S2_STORE_KIND(dst, kind, off, d0, d1, d2, o1, o3)                                      \
    {                                                                                          \
        float *const *at_ = (kind) < 3 ? (dst) + 3 * (kind) : (dst) + 15 + 3 * ((kind) - 3);   \
        float *const *odd_ = (kind) < 3 ? (dst) + 9 + 2 * (kind) : (dst) + 21 + 2 * ((kind) - 3); \
        memcpy(at_[0] + (off), &(d0), sizeof(d0));                                             \
        memcpy(at_[1] + (off), &(d1), sizeof(d1));                                             \
        memcpy(at_[2] + (off), &(d2), sizeof(d2));                                             \
        memcpy(odd_[0] + (off), &(o1), sizeof(o1));                                            \
        memcpy(odd_[1] + (off), &(o3), sizeof(o3));                                            \
    }

/* v as s2_input_f32 (same slices, same order of operations) for s2_plane_wide's geometries. */
ISA_512 static void s2_input_wide_f32_512(const float *restrict x, float *restrict v, I c, I n0, I n1, I ks, I side)
{
    const I tiles = side * side / 16, np = (n1 - n0) * tiles, tw = side / 4, per = 16 / tw;
    const vf32x16 zero = {0};
    const vi32x16 first = tw == 8 ? W16_LANES(S2W_FIRST, 8) : W16_LANES(S2W_FIRST, 4);
    for (I n = n0; n < n1; n++)
        for (I ch = 0; ch < c; ch++) {
            const float *plane = x + (n * c + ch) * side * side;
            float *dst[25];
            S2_SLICES(dst, v, c, ch, (n - n0) * tiles, np, ks);
            for (I b = 0; b < tiles / 16; b++) {
                /* slot s: tile row b * per + s / 2 (its columns' half s % 2) at 32x32, b * per + s at 16x16;
                   k[kind][s]: the rows t0, r2, t2 (BT along the columns), r1, r3 of the patches */
                vf32x16 k[5][4];
                for (int s = 0; s < 4; s++) {
                    const I ty = b * per + (tw == 8 ? s / 2 : s), col = tw == 8 ? 16 * (s % 2) : 0;
                    S2_PATCH_ROWS(vf32x16, k, s, plane + col, side, ty, zero);
                }
                for (int kind = 0; kind < 5; kind++) {
                    /* per pair of slots: [d0 | d2] (columns -1 - 1 and 3 - 1), [1 | 1], [0 | 2] */
                    vf32x16 d[2], m[2], o[2];
                    for (int h = 0; h < 2; h++) {
                        const vf32x16 a = k[kind][2 * h], e = k[kind][2 * h + 1];
                        const vf32x16 outer = (vf32x16)((vi32x16)__builtin_shuffle(a, e, W16_LANES(S2W_M1_3, 0)) & first);
                        m[h] = __builtin_shuffle(a, e, W16_LANES(S2W_1_1, 0));
                        o[h] = __builtin_shuffle(a, e, W16_LANES(S2W_0_2, 0));
                        d[h] = outer - m[h];
                    }
                    const vf32x16 d0 = __builtin_shuffle(d[0], d[1], W16_LANES(S2W_HALF, 0));
                    const vf32x16 d1 = __builtin_shuffle(m[0], m[1], W16_LANES(S2W_HALF, 0));
                    const vf32x16 d2 = __builtin_shuffle(d[0], d[1], W16_LANES(S2W_HALF, 1));
                    const vf32x16 o1 = __builtin_shuffle(o[0], o[1], W16_LANES(S2W_HALF, 0));
                    const vf32x16 o3 = __builtin_shuffle(o[0], o[1], W16_LANES(S2W_HALF, 1));
                    S2_STORE_KIND(dst, kind, 16 * b, d0, d1, d2, o1, o3);
                }
            }
        }
}

/* The same on AVX2: 8 tiles a vector (one row of tiles at 32x32, two at 16x16), their input
 * columns taken out of four row vectors by s2_columns' shuffles (a tile's column J of the padded
 * patch is input column 4tx + J - 1; J = 0 is the previous tile's J = 4, zero for a row's first
 * tile). Same subtractions, so the same bits. */
ISA_256 static void s2_input_wide_f32_256(const float *restrict x, float *restrict v, I c, I n0, I n1, I ks, I side)
{
    const I tiles = side * side / 16, np = (n1 - n0) * tiles, tw = side / 4;
    const vf32x8 zero = {0};
    const vi32x8 first = tw == 8 ? (vi32x8){0, -1, -1, -1, -1, -1, -1, -1} : (vi32x8){0, -1, -1, -1, 0, -1, -1, -1};
    for (I n = n0; n < n1; n++)
        for (I ch = 0; ch < c; ch++) {
            const float *plane = x + (n * c + ch) * side * side;
            float *dst[25];
            S2_SLICES(dst, v, c, ch, (n - n0) * tiles, np, ks);
            for (I b = 0; b < tiles / 8; b++) {
                /* slot s: the input columns 8s .. 8s + 7 of tile row b at 32x32; at 16x16, 8(s % 2) ..
                   of tile row 2b + s / 2. k[kind][s]: the rows t0, r2, t2 (BT along the columns), r1, r3 */
                vf32x8 k[5][4];
                for (int s = 0; s < 4; s++) {
                    const I ty = tw == 8 ? b : 2 * b + s / 2, col = tw == 8 ? 8 * s : 8 * (s % 2);
                    S2_PATCH_ROWS(vf32x8, k, s, plane + col, side, ty, zero);
                }
                for (int kind = 0; kind < 5; kind++) {
                    const vf32x8 *y = k[kind];
                    const vf32x8 lo = __builtin_shufflevector(y[0], y[1], 0, 4, 8, 12, 2, 6, 10, 14);
                    const vf32x8 hi = __builtin_shufflevector(y[2], y[3], 0, 4, 8, 12, 2, 6, 10, 14);
                    const vf32x8 lo1 = __builtin_shufflevector(y[0], y[1], 1, 5, 9, 13, 3, 7, 11, 15);
                    const vf32x8 hi1 = __builtin_shufflevector(y[2], y[3], 1, 5, 9, 13, 3, 7, 11, 15);
                    const vf32x8 o1 = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11);   /* J = 1 */
                    const vf32x8 o3 = __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15); /* J = 3 */
                    const vf32x8 d1 = __builtin_shufflevector(lo1, hi1, 0, 1, 2, 3, 8, 9, 10, 11); /* J = 2 */
                    const vf32x8 j4 = __builtin_shufflevector(lo1, hi1, 4, 5, 6, 7, 12, 13, 14, 15);
                    const vf32x8 j0 = (vf32x8)((vi32x8)__builtin_shufflevector(j4, j4, 0, 0, 1, 2, 3, 4, 5, 6) & first);
                    const vf32x8 d0 = j0 - d1, d2 = j4 - d1;
                    S2_STORE_KIND(dst, kind, 8 * b, d0, d1, d2, o1, o3);
                }
            }
        }
}

/* s2_grad_t for even Ho and Wo and channels in runs of 16, float32 on AVX-512: a tile's four dy
 * values gathered across 16 channels (planes Ho x Wo apart), so each of the 9 values per tile and
 * channel is stored in runs of 16 channels instead of one at a time. Same sums, same bits. */
static int s2_grad_t_gathers(const Geometry *g, I o, I th, I tw)
{
    return o % 16 == 0 && g->ho == 2 * th && g->wo == 2 * tw && (I)16 * g->ho * g->wo <= INT32_MAX / 4;
}

ISA_512 static void s2_grad_t_gather_f32_512(const float *restrict dy, float *restrict m, const Geometry *g, I o,
                                             I n0, I n1, I th, I tw, I ks)
{
    const I tiles = th * tw, wo = g->wo, hw = g->ho * g->wo;
    const __m512i planes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32((int)hw));
    for (I n = n0; n < n1; n++)
        for (I a0 = 0; a0 < o; a0 += 16)
            for (I ty = 0; ty < th; ty++)
                for (I tx = 0; tx < tw; tx++) {
                    const float *at = dy + (n * o + a0) * hw + 2 * ty * wo + 2 * tx;
                    const vf32x16 y00 = (vf32x16)_mm512_i32gather_ps(planes, at, 4);
                    const vf32x16 y01 = (vf32x16)_mm512_i32gather_ps(planes, at + 1, 4);
                    const vf32x16 y10 = (vf32x16)_mm512_i32gather_ps(planes, at + wo, 4);
                    const vf32x16 y11 = (vf32x16)_mm512_i32gather_ps(planes, at + wo + 1, 4);
                    const vf32x16 s[3][2] = {{y00, y01}, {y00 + y10, y01 + y11}, {y10, y11}};
                    float *e = m + ((n - n0) * tiles + ty * tw + tx) * o + a0;
                    for (int p = 0; p < 3; p++) {
                        const vf32x16 mid = s[p][0] + s[p][1];
                        memcpy(e + (p * 3) * ks, &s[p][0], sizeof mid);
                        memcpy(e + (p * 3 + 1) * ks, &mid, sizeof mid);
                        memcpy(e + (p * 3 + 2) * ks, &s[p][1], sizeof mid);
                    }
                }
}

/* Outputs of 16x16 and 32x32 (inputs twice that, padded by 1), float32 on AVX-512: a run of 16
 * tiles (two rows of 8, or one of 16) read as whole vectors of m's 9 slices and written as two
 * output rows per tile row, each zipped out of its even and odd columns. */
static int s2_output_plane_wide(const Geometry *g, I th, I tw)
{
    return (g->h == 32 || g->h == 64) && g->w == g->h && g->ph == 1 && g->pw == 1 && g->ho == g->h / 2
           && g->wo == g->w / 2 && th == g->h / 4 && tw == g->w / 4;
}

/* AT's column pass on a run of tiles of m's 9 slices (ks apart) as vectors V: s[p][0] = m(p, 0) +
 * m(p, 1), s[p][1] = m(p, 1) + m(p, 2), as s2_output's scalar sums */
#define S2_OUTPUT_SUMS(V, at, ks, s)                                                           \
    for (int p_ = 0; p_ < 3; p_++) {                                                          \
        const V m0_ = LOADV(V, (at) + (p_ * 3) * (ks)), m1_ = LOADV(V, (at) + (p_ * 3 + 1) * (ks)); \
        const V m2_ = LOADV(V, (at) + (p_ * 3 + 2) * (ks));                                   \
        (s)[p_][0] = m0_ + m1_;                                                               \
        (s)[p_][1] = m1_ + m2_;                                                               \
    }

/* out = AT m A as s2_output_f32 for s2_output_plane_wide's geometries. */
ISA_512 static void s2_output_wide_f32_512(const float *restrict m, float *restrict out, I o, I n0, I n1, I ks, I side)
{
    const I wo = side / 2, tw = wo / 2, tiles = tw * tw, np = (n1 - n0) * tiles;
    for (I n = n0; n < n1; n++)
        for (I a = 0; a < o; a++) {
            float *plane = out + (n * o + a) * wo * wo;
            const float *src = m + a * np + (n - n0) * tiles;
            for (I b = 0; b < tiles / 16; b++) {
                vf32x16 s[3][2];
                S2_OUTPUT_SUMS(vf32x16, src + 16 * b, ks, s);
                for (int i = 0; i < 2; i++) {
                    const vf32x16 even = s[i][0] + s[i + 1][0], odd = s[i][1] + s[i + 1][1];
                    const vf32x16 lo = __builtin_shuffle(even, odd, W16_LANES(W16_ZIP, 0));
                    const vf32x16 hi = __builtin_shuffle(even, odd, W16_LANES(W16_ZIP, 1));
                    /* tile rows 2b, 2b + 1 (8 tiles) or tile row b's halves (16) */
                    float *row = tw == 8 ? plane + (4 * b + i) * wo : plane + (2 * b + i) * wo;
                    memcpy(row, &lo, sizeof lo);
                    memcpy(tw == 8 ? row + 2 * wo : row + 16, &hi, sizeof hi);
                }
            }
        }
}

/* The same on AVX2: a run of 8 tiles (a row of them at 16x16 outputs, half a row at 32x32). */
ISA_256 static void s2_output_wide_f32_256(const float *restrict m, float *restrict out, I o, I n0, I n1, I ks, I side)
{
    const I wo = side / 2, tw = wo / 2, tiles = tw * tw, np = (n1 - n0) * tiles;
    for (I n = n0; n < n1; n++)
        for (I a = 0; a < o; a++) {
            float *plane = out + (n * o + a) * wo * wo;
            const float *src = m + a * np + (n - n0) * tiles;
            for (I b = 0; b < tiles / 8; b++) {
                vf32x8 s[3][2];
                S2_OUTPUT_SUMS(vf32x8, src + 8 * b, ks, s);
                for (int i = 0; i < 2; i++) {
                    const vf32x8 even = s[i][0] + s[i + 1][0], odd = s[i][1] + s[i + 1][1];
                    const vf32x8 lo = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
                    const vf32x8 hi = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
                    float *row = tw == 8 ? plane + (2 * b + i) * wo : plane + (2 * (b / 2) + i) * wo + 16 * (b % 2);
                    memcpy(row, &lo, sizeof lo);
                    memcpy(row + 8, &hi, sizeof hi);
                }
            }
        }
}
#endif

/* ------------------------------------------ s2d_*: the 3x3 stride-2 input gradient
 * dx of a 3x3 stride-2 undilated conv as Winograd F(2x2, 2x2) on dx's four stride phases (the
 * forward form on dy, as the OpenCL backend's s2_winograd_data). Along an axis the 4 dx pixels
 * 4b .. 4b + 3 read the 3 values d0, d1, d2 of dy from 2b + ((pad + 1) >> 1) - 1 on: the two
 * pixels of the phase taps 0 and 2 reach are F(2, 2) of them with the taps (w2, w0) (BT rows
 * d0 - d1, d1, d2 - d1; G rows w2, w0 + w2, w0; outputs P0 + P1, P1 + P2), the two of tap 1's
 * phase d1 w1 and d2 w1 (d0 w1 and d1 w1, that phase first, where the padding is odd). So 5 x 5 =
 * 25 GEMM positions of depth O per 4x4 block of dx instead of 36 products, each dx pixel
 * written once. The geometry is the gradient's: (O, Ho, Wo, 3, 3, 2, 2, ph, pw, 1, 1, H, W), dy
 * the input (O planes of Ho x Wo) and dx the output (C planes of H x W), (H + 3) / 4 x
 * (W + 3) / 4 blocks (tiles). */

/* u[(i*5 + j)][c][o] = the 5 x 5 transformed taps of w (O, C, 3, 3), in double; runs of 16
 * output channels at a time, so the 25 rows of u are written in order and the sums vectorise. */
#define S2D_RUN 16
#define DEFINE_S2D_WEIGHTS(NAME, ATTR, T)                                                      \
    ATTR static void NAME(const T *restrict w, T *restrict u, I o, I c)                        \
    {                                                                                          \
        for (I b = 0; b < c; b++)                                                              \
            for (I a0 = 0; a0 < o; a0 += S2D_RUN) {                                            \
                const I na = o - a0 < S2D_RUN ? o - a0 : S2D_RUN;                              \
                double g[9][S2D_RUN] = {{0}}, e[3][5][S2D_RUN], f[5][S2D_RUN];                 \
                for (I l = 0; l < na; l++)                                                     \
                    for (int t = 0; t < 9; t++) g[t][l] = (double)w[((a0 + l) * c + b) * 9 + t]; \
                for (int i = 0; i < 3; i++)                                                    \
                    for (int l = 0; l < S2D_RUN; l++) {                                        \
                        const double w0 = g[i * 3][l], w1 = g[i * 3 + 1][l], w2 = g[i * 3 + 2][l]; \
                        e[i][0][l] = w2; e[i][1][l] = w0 + w2; e[i][2][l] = w0;                \
                        e[i][3][l] = w1; e[i][4][l] = w1;                                      \
                    }                                                                          \
                for (int j = 0; j < 5; j++) {                                                  \
                    for (int l = 0; l < S2D_RUN; l++) {                                        \
                        f[0][l] = e[2][j][l]; f[1][l] = e[0][j][l] + e[2][j][l]; f[2][l] = e[0][j][l]; \
                        f[3][l] = e[1][j][l]; f[4][l] = e[1][j][l];                            \
                    }                                                                          \
                    for (int i = 0; i < 5; i++) {                                              \
                        T *row = u + ((i * 5 + j) * c + b) * o + a0;                           \
                        for (I l = 0; l < na; l++) row[l] = (T)f[i][l];                        \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    }

/* Scratch items: s2d_input's 5 rows of 2tw + 2 (3 of dy, zeros outside it, and 2 transformed),
 * s2d_output's 4 rows of 4tw (one row of blocks of dx). */
static I s2d_rows(I tw) { return 16 * tw + 16; }

/* Columns of a slice row for p tiles: a whole number of 16-lane vectors, so that the GEMMs
 * (pw_gemm, whose pixels past the last whole vector run one at a time) run only vector blocks;
 * the columns past p are zeros in v. */
static I s2d_columns(I p) { return (p + 15) / 16 * 16; }

/* v[pos*ks + o*np + (n - n0)*tiles + tile] of samples [n0, n1): per row of blocks, dy's 3 rows
 * copied into ``buf``, the row transform on whole rows, then the column transform of each of the
 * 5 rows. */
#define DEFINE_S2D_INPUT(NAME, ATTR, T, V)                                                      \
    ATTR static void NAME(const T *restrict dy, T *restrict v, T *restrict buf, const Geometry *g, \
                          I n0, I n1, I th, I tw, I ks)                                        \
    {                                                                                          \
        const I o = g->c, hy = g->h, wy = g->w, tiles = th * tw, p = (n1 - n0) * tiles;       \
        const I np = s2d_columns(p), rw = 2 * tw + 2, y0 = (g->ph + 1) / 2 - 1, x0 = (g->pw + 1) / 2 - 1;          \
        const int oddh = g->ph & 1, oddw = g->pw & 1;                                          \
        /* row item i is dy's column i + x0 */                                                 \
        const I lo = x0 < 0 ? -x0 : 0, hi = wy - x0 < rw ? wy - x0 : rw;                       \
        T *r[3] = {buf, buf + rw, buf + 2 * rw}, *t0 = buf + 3 * rw, *t2 = buf + 4 * rw;       \
        for (I n = n0; n < n1; n++)                                                            \
            for (I ch = 0; ch < o; ch++) {                                                     \
                const T *plane = dy + (n * o + ch) * hy * wy;                                  \
                T *base = v + ch * np + (n - n0) * tiles;                                      \
                for (I ty = 0; ty < th; ty++) {                                                \
                    for (int k = 0; k < 3; k++) {                                              \
                        const I src = 2 * ty + y0 + k;                                         \
                        memset(r[k], 0, (size_t)rw * sizeof(T));                               \
                        if (src >= 0 && src < hy && hi > lo)                                   \
                            memcpy(r[k] + lo, plane + src * wy + lo + x0, (size_t)(hi - lo) * sizeof(T)); \
                    }                                                                          \
                    for (I i = 0; i < rw; i++) {                                               \
                        t0[i] = r[0][i] - r[1][i];                                             \
                        t2[i] = r[2][i] - r[1][i];                                             \
                    }                                                                          \
                    const T *rows[5] = {t0, r[1], t2, oddh ? r[0] : r[1], oddh ? r[1] : r[2]};  \
                    for (int i = 0; i < 5; i++) {                                              \
                        const T *s = rows[i];                                                  \
                        T *d0 = base + (i * 5) * ks + ty * tw, *d1 = d0 + ks, *d2 = d1 + ks;   \
                        T *d3 = d2 + ks, *d4 = d3 + ks;                                        \
                        I tx = 0;                                                              \
                        for (; tx + 8 <= tw; tx += 8) { /* 8 blocks: evens and odds split */   \
                            V y0_, y1_;                                                        \
                            memcpy(&y0_, s + 2 * tx, sizeof(V)); memcpy(&y1_, s + 2 * tx + 8, sizeof(V)); \
                            const V a = __builtin_shufflevector(y0_, y1_, 0, 2, 4, 6, 8, 10, 12, 14); \
                            const V b = __builtin_shufflevector(y0_, y1_, 1, 3, 5, 7, 9, 11, 13, 15); \
                            const V c = __builtin_shufflevector(a, (V){0} + s[2 * tx + 16], 1, 2, 3, 4, 5, 6, 7, 8); \
                            const V e0 = a - b, e2 = c - b;                                    \
                            memcpy(d0 + tx, &e0, sizeof(V)); memcpy(d1 + tx, &b, sizeof(V));   \
                            memcpy(d2 + tx, &e2, sizeof(V));                                   \
                            memcpy(d3 + tx, oddw ? &a : &b, sizeof(V));                        \
                            memcpy(d4 + tx, oddw ? &b : &c, sizeof(V));                        \
                        }                                                                      \
                        if (oddw)                                                              \
                            for (; tx < tw; tx++) {                                            \
                                const T a = s[2 * tx], b = s[2 * tx + 1], c = s[2 * tx + 2];   \
                                d0[tx] = a - b; d1[tx] = b; d2[tx] = c - b; d3[tx] = a; d4[tx] = b; \
                            }                                                                  \
                        else                                                                   \
                            for (; tx < tw; tx++) {                                            \
                                const T a = s[2 * tx], b = s[2 * tx + 1], c = s[2 * tx + 2];   \
                                d0[tx] = a - b; d1[tx] = b; d2[tx] = c - b; d3[tx] = b; d4[tx] = c; \
                            }                                                                  \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        if (np > p)                                                                            \
            for (I k = 0; k < 25; k++)                                                         \
                for (I ch = 0; ch < o; ch++) memset(v + k * ks + ch * np + p, 0, (size_t)(np - p) * sizeof(T)); \
    }

/* One block's 4 values along an axis from its 5 products: even phase first (pad even) or odd. */
#define S2D_AXIS(OUT, P, ODD)                                                                  \
    do {                                                                                       \
        const __typeof__((P)[0]) e0_ = (P)[0] + (P)[1], e1_ = (P)[1] + (P)[2];                 \
        if (ODD) { (OUT)[0] = (P)[3]; (OUT)[1] = e0_; (OUT)[2] = (P)[4]; (OUT)[3] = e1_; }     \
        else { (OUT)[0] = e0_; (OUT)[1] = (P)[3]; (OUT)[2] = e1_; (OUT)[3] = (P)[4]; }         \
    } while (0)

/* dx[n, a] (+)= the products m[pos][a][tile] transformed back for samples [n0, n1), pixels past
 * H x W dropped; a row of blocks goes through ``y`` (4 rows of 4tw). */
#define DEFINE_S2D_OUTPUT(NAME, ATTR, T)                                                       \
    ATTR static inline __attribute__((always_inline)) void NAME##_row(const T *restrict e, T *restrict y, \
                                                                      I tw, I ks, int oddh, int oddw) \
    {                                                                                          \
        const I yw = 4 * tw;                                                                   \
        for (I tx = 0; tx < tw; tx++) {                                                        \
            T s[4][5], col[5], q[4];                                                           \
            for (int j = 0; j < 5; j++) {                                                      \
                for (int i = 0; i < 5; i++) col[i] = e[(i * 5 + j) * ks + tx];                 \
                S2D_AXIS(q, col, oddh);                                                        \
                for (int i = 0; i < 4; i++) s[i][j] = q[i];                                    \
            }                                                                                  \
            for (int i = 0; i < 4; i++) {                                                      \
                S2D_AXIS(q, s[i], oddw);                                                       \
                for (int j = 0; j < 4; j++) y[i * yw + 4 * tx + j] = q[j];                     \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    ATTR static void NAME(const T *restrict m, T *restrict dx, T *restrict y, const Geometry *g, \
                          I c, I n0, I n1, I th, I tw, I ks, int accumulate)                   \
    {                                                                                          \
        const I h = g->ho, w = g->wo, tiles = th * tw, np = s2d_columns((n1 - n0) * tiles);    \
        const int oddh = g->ph & 1, oddw = g->pw & 1;                                          \
        for (I n = n0; n < n1; n++)                                                            \
            for (I a = 0; a < c; a++) {                                                        \
                T *plane = dx + (n * c + a) * h * w;                                           \
                const T *src = m + a * np + (n - n0) * tiles;                                  \
                for (I ty = 0; ty < th; ty++) {                                                \
                    const T *e = src + ty * tw;                                                \
                    /* the phases' orders as constants: the loops unrolled for each */         \
                    if (oddh && oddw) NAME##_row(e, y, tw, ks, 1, 1);                           \
                    else if (oddh) NAME##_row(e, y, tw, ks, 1, 0);                              \
                    else if (oddw) NAME##_row(e, y, tw, ks, 0, 1);                              \
                    else NAME##_row(e, y, tw, ks, 0, 0);                                        \
                    for (I i = 0; i < 4 && 4 * ty + i < h; i++) {                              \
                        T *row = plane + (4 * ty + i) * w;                                     \
                        const T *yy = y + i * 4 * tw;                                          \
                        if (accumulate)                                                        \
                            for (I x = 0; x < w; x++) row[x] += yy[x];                         \
                        else                                                                   \
                            memcpy(row, yy, (size_t)w * sizeof(T));                            \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    }

DEFINE_S2D_WEIGHTS(s2d_weights_f32_256, ISA_256, float)
DEFINE_S2D_WEIGHTS(s2d_weights_f64_256, ISA_256, double)
DEFINE_S2D_WEIGHTS(s2d_weights_f32_128, ISA_128, float)
DEFINE_S2D_WEIGHTS(s2d_weights_f64_128, ISA_128, double)
DEFINE_S2D_INPUT(s2d_input_f32_256, ISA_256, float, s2_f32)
DEFINE_S2D_INPUT(s2d_input_f64_256, ISA_256, double, s2_f64)
DEFINE_S2D_INPUT(s2d_input_f32_128, ISA_128, float, s2_f32)
DEFINE_S2D_INPUT(s2d_input_f64_128, ISA_128, double, s2_f64)
DEFINE_S2D_OUTPUT(s2d_output_f32_256, ISA_256, float)
DEFINE_S2D_OUTPUT(s2d_output_f64_256, ISA_256, double)
DEFINE_S2D_OUTPUT(s2d_output_f32_128, ISA_128, float)
DEFINE_S2D_OUTPUT(s2d_output_f64_128, ISA_128, double)

#if WINO_PLANE8
/* dy planes of 16x16 and 32x32 with dx twice their size, padded by 1 (the strided layers'
 * input gradients at 32x32 and 64x64), float32 on AVX-512: a plane's blocks are runs of 16 (two
 * rows of 8 blocks, or one row of 16), so each of the 25 slices of a plane is written or read in
 * whole vectors, and the columns are shuffled straight out of dy's rows (s2d_input) or into dx's
 * (s2d_output) instead of the passes above, which stage every row of blocks in scratch. Same
 * sums in the same order, so the same bits. */
static int s2d_plane_wide(const Geometry *g, I th, I tw)
{
    return (g->h == 16 || g->h == 32) && g->w == g->h && g->ph == 1 && g->pw == 1 && g->ho == 2 * g->h
           && g->wo == 2 * g->w && th == g->h / 2 && tw == g->w / 2;
}

/* lane l of a pair of dy vectors (two rows of 16, or one row's halves): column 2l + J of the
 * pair's 32 values, which is column 2tx + J of the lane's block row (J = 2 past the row: clamped
 * here, zeroed by S2D_LAST) */
#define S2D_COL(J, l) (2 * (l) + (J) > 31 ? 31 : 2 * (l) + (J))
#define S2D_LAST(TW, l) ((l) % (TW) == (TW) - 1 ? 0 : -1)
/* lane e of the k-th vector of 4 interleaved vectors q0..q3 (q_(e % 4) at lane 4k + e / 4), from the
 * pairs z01 = q0, q1 zipped and z23 likewise (W16_ZIP's halves H: lanes 8H .. 8H + 7 of q) */
#define S2D_WEAVE(K, e) ((e) % 4 / 2 * 16 + 2 * (4 * ((K) % 2) + (e) / 4) + (e) % 2)

/* v as s2d_input_f32 for s2d_plane_wide's geometries. */
ISA_512 static void s2d_input_wide_f32_512(const float *restrict dy, float *restrict v, I o, I n0, I n1, I ks, I side)
{
    const I tw = side / 2, tiles = tw * tw, np = (n1 - n0) * tiles;
    const vf32x16 zero = {0};
    const vi32x16 last = tw == 8 ? W16_LANES(S2D_LAST, 8) : W16_LANES(S2D_LAST, 16);
    for (I n = n0; n < n1; n++)
        for (I ch = 0; ch < o; ch++) {
            const float *plane = dy + (n * o + ch) * side * side;
            float *base = v + ch * np + (n - n0) * tiles;
            for (I b = 0; b < tiles / 16; b++) {
                /* slot s: block row 2b + s at 16x16, row b's half s at 32x32; k[i][s]: rows t0, r1,
                   t2 (the transform along the columns) and r0, r1 (tap 1's phase, padding odd) */
                vf32x16 k[5][2];
                for (int s = 0; s < 2; s++) {
                    const I ty = tw == 8 ? 2 * b + s : b, col = tw == 8 ? 0 : 16 * s;
                    vf32x16 r[3];
                    for (int i = 0; i < 3; i++) {
                        const I y = 2 * ty + i;
                        r[i] = y < side ? LOADV(vf32x16, plane + y * side + col) : zero;
                    }
                    k[0][s] = r[0] - r[1];
                    k[1][s] = r[1];
                    k[2][s] = r[2] - r[1];
                    k[3][s] = r[0];
                    k[4][s] = r[1];
                }
                for (int i = 0; i < 5; i++) {
                    const vf32x16 a = __builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D_COL, 0));
                    const vf32x16 e = __builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D_COL, 1));
                    const vf32x16 c = (vf32x16)((vi32x16)__builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D_COL, 2)) & last);
                    const vf32x16 d[5] = {a - e, e, c - e, a, e};
                    for (int j = 0; j < 5; j++) memcpy(base + (i * 5 + j) * ks + 16 * b, &d[j], sizeof d[j]);
                }
            }
        }
}

/* dx (+)= the products of m as s2d_output_f32 for s2d_plane_wide's geometries. */
ISA_512 static void s2d_output_wide_f32_512(const float *restrict m, float *restrict dx, I c, I n0, I n1, I ks,
                                            int accumulate, I side)
{
    const I tw = side / 2, tiles = tw * tw, np = (n1 - n0) * tiles, w = 2 * side;
    for (I n = n0; n < n1; n++)
        for (I a = 0; a < c; a++) {
            float *plane = dx + (n * c + a) * w * w;
            const float *src = m + a * np + (n - n0) * tiles;
            for (I b = 0; b < tiles / 16; b++) {
                vf32x16 s[4][5];
                for (int j = 0; j < 5; j++) {
                    vf32x16 col[5];
                    for (int i = 0; i < 5; i++) col[i] = LOADV(vf32x16, src + (i * 5 + j) * ks + 16 * b);
                    s[0][j] = col[3], s[1][j] = col[0] + col[1], s[2][j] = col[4], s[3][j] = col[1] + col[2];
                }
                for (int i = 0; i < 4; i++) {
                    /* the row's 4 pixels of each block, then zipped into 64 consecutive values */
                    const vf32x16 q0 = s[i][3], q1 = s[i][0] + s[i][1], q2 = s[i][4], q3 = s[i][1] + s[i][2];
                    vf32x16 z[2][2];
                    for (int h = 0; h < 2; h++) {
                        z[0][h] = h ? __builtin_shuffle(q0, q1, W16_LANES(W16_ZIP, 1)) : __builtin_shuffle(q0, q1, W16_LANES(W16_ZIP, 0));
                        z[1][h] = h ? __builtin_shuffle(q2, q3, W16_LANES(W16_ZIP, 1)) : __builtin_shuffle(q2, q3, W16_LANES(W16_ZIP, 0));
                    }
                    for (int kk = 0; kk < 4; kk++) {
                        vf32x16 row = kk % 2 ? __builtin_shuffle(z[0][kk / 2], z[1][kk / 2], W16_LANES(S2D_WEAVE, 1))
                                             : __builtin_shuffle(z[0][kk / 2], z[1][kk / 2], W16_LANES(S2D_WEAVE, 0));
                        /* values 16kk .. 16kk + 15: the two block rows' halves at 16x16, one row at 32x32 */
                        float *p = tw == 8 ? plane + (4 * (2 * b + kk / 2) + i) * w + 16 * (kk % 2)
                                           : plane + (4 * b + i) * w + 16 * kk;
                        if (accumulate) row = LOADV(vf32x16, p) + row;
                        memcpy(p, &row, sizeof row);
                    }
                }
            }
        }
}

/* 8x8 dy planes (dx 16x16, padding 1: the ResNet's 32 -> 64 layer's input gradient): a plane's
 * 16 blocks (4 rows of 4) are one vector, gathered from dy's four row pairs by shuffles: rows
 * 2ty + i of the blocks' row ty for i = 0, 1, 2 as pairs of vectors (ty 0, 1 and 2, 3; row 8 is
 * zeros), then the columns 2tx + j of each. Same sums in the same order as s2d_input_f32 and
 * s2d_output_f32, so the same bits. */
static int s2d_plane8(const Geometry *g, I th, I tw)
{
    return g->h == 8 && g->w == 8 && g->ph == 1 && g->pw == 1 && g->ho == 16 && g->wo == 16 && th == 4 && tw == 4;
}

/* rows (of 8) A and B of a vector pair (0-3: its four rows of 8) as one vector */
#define S2D8_ROWS(A, l) ((l) < 8 ? 8 * (A) + (l) : 8 * (A) + 8 + (l))
/* lane 4ty + tx: column 2tx + J of row slot ty of a pair of vectors holding 4 rows of 8 (column
 * 8, past the plane, clamped here and zeroed by S2D8_LAST) */
#define S2D8_COL(J, l) (8 * ((l) / 4) + (2 * ((l) % 4) + (J) > 7 ? 7 : 2 * ((l) % 4) + (J)))
#define S2D8_LAST(A, l) ((l) % 4 == 3 ? 0 : -1)
/* dx row 4ty + i's 16 values (block tx's pixel jj at 4tx + jj) from the pair X = q0, q1 and Y =
 * q2, q3 of the blocks' rows ty = 2h + TYL (X, Y: lanes 0-7 of q0 (q2) then of q1 (q3), or 8-15) */
#define S2D8_WEAVE(TYL, e) ((e) % 4 / 2 * 16 + (e) % 2 * 8 + 4 * (TYL) + (e) / 4)

/* v as s2d_input_f32 for s2d_plane8's geometries. */
ISA_512 static void s2d_input8_f32_512(const float *restrict dy, float *restrict v, I o, I n0, I n1, I ks)
{
    const I np = (n1 - n0) * 16;
    const vf32x16 zero = {0};
    const vi32x16 last = W16_LANES(S2D8_LAST, 0);
    for (I n = n0; n < n1; n++)
        for (I ch = 0; ch < o; ch++) {
            const float *plane = dy + (n * o + ch) * 64;
            float *base = v + ch * np + (n - n0) * 16;
            const vf32x16 d0 = LOADV(vf32x16, plane), d1 = LOADV(vf32x16, plane + 16);
            const vf32x16 d2 = LOADV(vf32x16, plane + 32), d3 = LOADV(vf32x16, plane + 48);
            /* r[i][h]: rows 2ty + i of block rows ty = 2h, 2h + 1 */
            const vf32x16 r[3][2] = {
                {__builtin_shuffle(d0, d1, W16_LANES(S2D8_ROWS, 0)), __builtin_shuffle(d2, d3, W16_LANES(S2D8_ROWS, 0))},
                {__builtin_shuffle(d0, d1, W16_LANES(S2D8_ROWS, 1)), __builtin_shuffle(d2, d3, W16_LANES(S2D8_ROWS, 1))},
                {__builtin_shuffle(d1, d2, W16_LANES(S2D8_ROWS, 0)), __builtin_shuffle(d3, zero, W16_LANES(S2D8_ROWS, 0))}};
            /* k[i][h]: rows t0, r1, t2 (the transform along the columns) and r0, r1 (padding odd) */
            vf32x16 k[5][2];
            for (int h = 0; h < 2; h++) {
                k[0][h] = r[0][h] - r[1][h];
                k[1][h] = r[1][h];
                k[2][h] = r[2][h] - r[1][h];
                k[3][h] = r[0][h];
                k[4][h] = r[1][h];
            }
            for (int i = 0; i < 5; i++) {
                const vf32x16 a = __builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D8_COL, 0));
                const vf32x16 e = __builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D8_COL, 1));
                const vf32x16 c = (vf32x16)((vi32x16)__builtin_shuffle(k[i][0], k[i][1], W16_LANES(S2D8_COL, 2)) & last);
                const vf32x16 d[5] = {a - e, e, c - e, a, e};
                for (int j = 0; j < 5; j++) memcpy(base + (i * 5 + j) * ks, &d[j], sizeof d[j]);
            }
        }
}

/* dx (+)= the products of m as s2d_output_f32 for s2d_plane8's geometries. */
ISA_512 static void s2d_output8_f32_512(const float *restrict m, float *restrict dx, I c, I n0, I n1, I ks,
                                        int accumulate)
{
    const I np = (n1 - n0) * 16;
    for (I n = n0; n < n1; n++)
        for (I a = 0; a < c; a++) {
            float *plane = dx + (n * c + a) * 256;
            const float *src = m + a * np + (n - n0) * 16;
            vf32x16 s[4][5];
            for (int j = 0; j < 5; j++) {
                vf32x16 col[5];
                for (int i = 0; i < 5; i++) col[i] = LOADV(vf32x16, src + (i * 5 + j) * ks);
                s[0][j] = col[3], s[1][j] = col[0] + col[1], s[2][j] = col[4], s[3][j] = col[1] + col[2];
            }
            for (int i = 0; i < 4; i++) {
                const vf32x16 q0 = s[i][3], q1 = s[i][0] + s[i][1], q2 = s[i][4], q3 = s[i][1] + s[i][2];
                for (int h = 0; h < 2; h++) {
                    const vf32x16 x = __builtin_shuffle(q0, q1, W16_LANES(S2D8_ROWS, h));
                    const vf32x16 y = __builtin_shuffle(q2, q3, W16_LANES(S2D8_ROWS, h));
                    for (int tyl = 0; tyl < 2; tyl++) {
                        vf32x16 row = tyl ? __builtin_shuffle(x, y, W16_LANES(S2D8_WEAVE, 1))
                                          : __builtin_shuffle(x, y, W16_LANES(S2D8_WEAVE, 0));
                        float *p = plane + (4 * (2 * h + tyl) + i) * 16;
                        if (accumulate) row = LOADV(vf32x16, p) + row;
                        memcpy(p, &row, sizeof row);
                    }
                }
            }
        }
}
#endif

/* ------------------------------------------------------------------ Python glue */

static int parse_geometry(PyObject *tuple, Geometry *g)
{
    return PyArg_ParseTuple(tuple, "nnnnnnnnnnnnn;geometry: (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)",
                            &g->c, &g->h, &g->w, &g->kh, &g->kw, &g->sh, &g->sw, &g->ph, &g->pw,
                            &g->dh, &g->dw, &g->ho, &g->wo);
}

/* A C-contiguous buffer of at least ``count`` items of format ``fmt`` (NULL: its own format,
 * which must be float32 "f" or float64 "d"). */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *fmt, I count,
                      const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    const char *have = view->format ? view->format : "?";
    int ok = fmt ? strcmp(have, fmt) == 0 : (strcmp(have, "f") == 0 || strcmp(have, "d") == 0);
    if (!ok || view->len < count * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of format '%s', got %zd of '%s'",
                     name, count, fmt ? fmt : "f or d",
                     view->len / (view->itemsize ? view->itemsize : 1), have);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int check_range(I lo, I hi, I limit, const char *name)
{
    if (lo < 0 || hi < lo || hi > limit) {
        PyErr_Format(PyExc_ValueError, "%s: range [%zd, %zd) is not inside [0, %zd]", name, lo, hi, limit);
        return -1;
    }
    return 0;
}

/* Three buffers: ``a`` (its format is the call's), ``b`` and ``c`` of the same format. */
static int get_three(PyObject *ao, Py_buffer *a, int wa, I na, const char *name_a,
                     PyObject *bo, Py_buffer *b, int wb, I nb, const char *name_b,
                     PyObject *co, Py_buffer *c, int wc, I nc, const char *name_c)
{
    if (get_buffer(ao, a, wa, NULL, na, name_a) < 0) return -1;
    if (get_buffer(bo, b, wb, a->format, nb, name_b) < 0) {
        PyBuffer_Release(a);
        return -1;
    }
    if (co && get_buffer(co, c, wc, a->format, nc, name_c) < 0) {
        PyBuffer_Release(a); PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static void release_three(Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    PyBuffer_Release(a);
    PyBuffer_Release(b);
    if (c) PyBuffer_Release(c);
}

static PyObject *py_im2col(PyObject *self, PyObject *args)
{
    PyObject *xo, *co, *go;
    Geometry g;
    I n, n0, n1, r0, r1, sn, sk;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnn", &xo, &co, &go, &n, &n0, &n1, &r0, &r1, &sn, &sk)) return NULL;
    if (!parse_geometry(go, &g)) return NULL;
    if (check_range(n0, n1, n, "samples") < 0 || check_range(r0, r1, g.ho, "rows") < 0) return NULL;
    I k = g.c * g.kh * g.kw, rows = r1 - r0;
    if (sk < rows * g.wo || (n1 - n0 > 1 && sn < k * rows * g.wo && sn < rows * g.wo)) {
        PyErr_SetString(PyExc_ValueError, "im2col: the column strides overlap");
        return NULL;
    }
    I need = n1 > n0 ? (n1 - n0 - 1) * sn + (k - 1) * sk + rows * g.wo : 0;
    Py_buffer x, cols;
    if (get_three(xo, &x, 0, n * g.c * g.h * g.w, "x", co, &cols, 1, need, "cols", NULL, NULL, 0, 0, NULL) < 0)
        return NULL;
    RELEASE_GIL
    if (x.itemsize == 4)
        im2col_f32(x.buf, cols.buf, &g, n0, n1, r0, r1, sn, sk);
    else
        im2col_f64(x.buf, cols.buf, &g, n0, n1, r0, r1, sn, sk);
    REACQUIRE_GIL
    release_three(&x, &cols, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_col2im(PyObject *self, PyObject *args)
{
    PyObject *co, *xo, *go, *po = Py_None;
    Geometry g;
    I n, n0, n1, sn, sk;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOnnnnnp|O", &co, &xo, &go, &n, &n0, &n1, &sn, &sk, &accumulate, &po)) return NULL;
    if (!parse_geometry(go, &g)) return NULL;
    if (check_range(n0, n1, n, "samples") < 0) return NULL;
    I k = g.c * g.kh * g.kw;
    I need = n1 > n0 ? (n1 - n0 - 1) * sn + (k - 1) * sk + g.ho * g.wo : 0;
    /* the phase planes only serve stride 2; without them col2im adds value by value (the same bits) */
    const int phases = g.sh == 2 && g.sw == 2 && po != Py_None;
    Py_buffer dx, cols, buf;
    if (get_three(xo, &dx, 1, n * g.c * g.h * g.w, "dx", co, &cols, 0, need, "cols", phases ? po : NULL, &buf, 1,
                  col2im_phase_items(&g), "phases") < 0)
        return NULL;
    RELEASE_GIL
    if (phases) {
        if (dx.itemsize == 4)
            col2im_phases_f32(cols.buf, dx.buf, buf.buf, &g, n0, n1, sn, sk, accumulate);
        else
            col2im_phases_f64(cols.buf, dx.buf, buf.buf, &g, n0, n1, sn, sk, accumulate);
    } else if (dx.itemsize == 4)
        col2im_f32(cols.buf, dx.buf, &g, n0, n1, sn, sk, accumulate);
    else
        col2im_f64(cols.buf, dx.buf, &g, n0, n1, sn, sk, accumulate);
    REACQUIRE_GIL
    release_three(&dx, &cols, phases ? &buf : NULL);
    Py_RETURN_NONE;
}

static PyObject *py_bias_add(PyObject *self, PyObject *args)
{
    PyObject *oo, *bo;
    I n, c, inner, p0, p1;
    if (!PyArg_ParseTuple(args, "OOnnnnn", &oo, &bo, &n, &c, &inner, &p0, &p1)) return NULL;
    if (n < 0 || c < 1 || inner < 0 || check_range(p0, p1, n * c, "planes") < 0) return NULL;
    Py_buffer out, bias;
    if (get_three(oo, &out, 1, n * c * inner, "out", bo, &bias, 0, c, "bias", NULL, NULL, 0, 0, NULL) < 0)
        return NULL;
    RELEASE_GIL
    if (out.itemsize == 4)
        bias_add_f32(out.buf, bias.buf, c, inner, p0, p1);
    else
        bias_add_f64(out.buf, bias.buf, c, inner, p0, p1);
    REACQUIRE_GIL
    release_three(&out, &bias, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_bias_grad(PyObject *self, PyObject *args)
{
    PyObject *yo, *bo;
    I n, c, inner, c0, c1;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOnnnnnp", &yo, &bo, &n, &c, &inner, &c0, &c1, &accumulate)) return NULL;
    if (n < 0 || c < 1 || inner < 0 || check_range(c0, c1, c, "channels") < 0) return NULL;
    Py_buffer dy, db;
    if (get_three(yo, &dy, 0, n * c * inner, "dy", bo, &db, 1, c, "dbias", NULL, NULL, 0, 0, NULL) < 0)
        return NULL;
    RELEASE_GIL
    if (dy.itemsize == 4)
        bias_grad_f32(dy.buf, db.buf, n, c, inner, c0, c1, accumulate);
    else
        bias_grad_f64(dy.buf, db.buf, n, c, inner, c0, c1, accumulate);
    REACQUIRE_GIL
    release_three(&dy, &db, NULL);
    Py_RETURN_NONE;
}

static int check_winograd(const Geometry *g, I th, I tw)
{
    if (g->kh != 3 || g->kw != 3 || g->sh != 1 || g->sw != 1 || g->ph < 0 || g->pw < 0 ||
        g->ho != g->h + 2 * g->ph - 2 * g->dh || g->wo != g->w + 2 * g->pw - 2 * g->dw ||
        th != (g->ho + 2 * g->dh - 1) / (2 * g->dh) * g->dh || tw != (g->wo + 2 * g->dw - 1) / (2 * g->dw) * g->dw) {
        PyErr_SetString(PyExc_ValueError, "winograd kernels: need a 3x3 kernel, stride 1, padding >= 0, "
                        "the Ho, Wo of that geometry and its tile counts");
        return -1;
    }
    return 0;
}

static int check_s2(const Geometry *g, I th, I tw)
{
    if (g->kh != 3 || g->kw != 3 || g->sh != 2 || g->sw != 2 || g->dh != 1 || g->dw != 1 || g->ph < 0 ||
        g->pw < 0 || g->h + 2 * g->ph < 3 || g->w + 2 * g->pw < 3 || g->ho != (g->h + 2 * g->ph - 3) / 2 + 1 ||
        g->wo != (g->w + 2 * g->pw - 3) / 2 + 1 || th != (g->ho + 1) / 2 || tw != (g->wo + 1) / 2) {
        PyErr_SetString(PyExc_ValueError, "s2 kernels: need a 3x3 stride-2 undilated geometry with padding >= 0, "
                        "its Ho, Wo and its tile counts ((Ho + 1) // 2, (Wo + 1) // 2)");
        return -1;
    }
    return 0;
}

/* The input gradient's geometry (O, Ho, Wo, 3, 3, 2, 2, ph, pw, 1, 1, H, W): dy's O planes of
 * Ho x Wo those of the 3x3 stride-2 conv of H x W with that padding, (H + 3) / 4 x (W + 3) / 4 tiles. */
static int check_s2d(const Geometry *g, I th, I tw)
{
    if (g->kh != 3 || g->kw != 3 || g->sh != 2 || g->sw != 2 || g->dh != 1 || g->dw != 1 || g->ph < 0 ||
        g->pw < 0 || g->ho + 2 * g->ph < 3 || g->wo + 2 * g->pw < 3 || g->h != (g->ho + 2 * g->ph - 3) / 2 + 1 ||
        g->w != (g->wo + 2 * g->pw - 3) / 2 + 1 || th != (g->ho + 3) / 4 || tw != (g->wo + 3) / 4) {
        PyErr_SetString(PyExc_ValueError, "s2d kernels: need the input gradient geometry (O, Ho, Wo, 3, 3, 2, 2, "
                        "ph, pw, 1, 1, H, W) of a 3x3 stride-2 undilated conv with padding >= 0 and its tile "
                        "counts ((H + 3) // 4, (W + 3) // 4)");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------ tile transforms: winograd_* and s2_*
 * Both families run a conv as GEMMs between a weights transform (w -> u), an input transform
 * (x -> v) and an output transform (m -> out); their entry points take and check their
 * arguments here, by the family's sizes, and call the family's kernels on them. */

/* One call's arguments: ``a`` the buffer whose format is the call's (w, x, or out), ``b`` the
 * other (u, v, or m), ``rows`` the scratch where the family takes it. */
typedef struct {
    Geometry g;
    I na, nb, o, n0, n1, th, tw, ks;
    int flip, accumulate, has_rows;
    Py_buffer a, b, rows;
    const double *mats; /* the wg family's transform matrices (spatial._wg_matrices), else NULL */
} TileCall;

/* A kernel on a call's checked arguments, run without the GIL; nonzero: out of memory. */
typedef int (*TileKernel)(const TileCall *t);

static int winograd_weights_f32_call(const TileCall *t)
{
    winograd_weights_f32(t->a.buf, t->b.buf, t->na, t->nb, t->flip);
    return 0;
}
static int winograd_weights_f64_call(const TileCall *t)
{
    winograd_weights_f64(t->a.buf, t->b.buf, t->na, t->nb, t->flip);
    return 0;
}
static int winograd_input_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa == 2 && wino_plane8(&t->g, t->th, t->tw)) {
        winograd_input8_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
    if (isa == 2 && wino_plane16(&t->g, t->th, t->tw)) {
        winograd_input16_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
    if (isa == 2 && wino_plane32(&t->g, t->th, t->tw)) {
        winograd_input32_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
    if (isa == 1 && wino_plane32(&t->g, t->th, t->tw)) {
        winograd_input32_f32_256(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
    if (isa == 2 && wino_plane32_d2(&t->g, t->th, t->tw)) {
        winograd_input32_d2_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
#endif
    return ISA_CALL_AT(winograd_isa(t->tw, 4), winograd_input_f32, t->a.buf, t->b.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
}
static int winograd_input_f64_call(const TileCall *t)
{
    return ISA_CALL_AT(winograd_isa(t->tw, 2), winograd_input_f64, t->a.buf, t->b.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
}
static int winograd_output_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa == 2 && wino_plane8(&t->g, t->th, t->tw)) {
        winograd_output8_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate);
        return 0;
    }
    if (isa == 2 && wino_plane16(&t->g, t->th, t->tw)) {
        winograd_output_wide_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate, 16);
        return 0;
    }
    if (isa == 2 && wino_plane32(&t->g, t->th, t->tw)) {
        winograd_output_wide_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate, 32);
        return 0;
    }
    if (isa == 1 && wino_plane32(&t->g, t->th, t->tw)) {
        winograd_output32_f32_256(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate);
        return 0;
    }
    if (isa == 2 && wino_plane32_d2(&t->g, t->th, t->tw)) {
        winograd_output32_d2_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate);
        return 0;
    }
#endif
    return ISA_CALL_AT(winograd_isa(t->tw, 4), winograd_output_f32, t->b.buf, t->a.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks, t->accumulate);
}
static int winograd_output_f64_call(const TileCall *t)
{
    return ISA_CALL_AT(winograd_isa(t->tw, 2), winograd_output_f64, t->b.buf, t->a.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks, t->accumulate);
}
static int winograd_taps_f32_call(const TileCall *t)
{
    winograd_taps_f32(t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int winograd_taps_f64_call(const TileCall *t)
{
    winograd_taps_f64(t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int winograd_grad_f32_call(const TileCall *t)
{
    return winograd_grad_f32(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
}
static int winograd_grad_f64_call(const TileCall *t)
{
    return winograd_grad_f64(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
}
static int s2_weights_f32_call(const TileCall *t)
{
    S2_CALL(s2_weights_f32, t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int s2_weights_f64_call(const TileCall *t)
{
    S2_CALL(s2_weights_f64, t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int s2_grad_f32_call(const TileCall *t)
{
    s2_grad_f32(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_grad_f64_call(const TileCall *t)
{
    s2_grad_f64(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_grad_t_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa == 2 && s2_grad_t_gathers(&t->g, t->o, t->th, t->tw)) {
        s2_grad_t_gather_f32_512(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
        return 0;
    }
#endif
    s2_grad_t_f32(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_grad_t_f64_call(const TileCall *t)
{
    s2_grad_t_f64(t->a.buf, t->b.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_input_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa >= 1 && s2_plane_wide(&t->g, t->th, t->tw)) {
        if (isa == 2)
            s2_input_wide_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks, t->g.h);
        else
            s2_input_wide_f32_256(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks, t->g.h);
        return 0;
    }
#endif
    S2_CALL(s2_input_f32, t->a.buf, t->b.buf, t->rows.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_input_f64_call(const TileCall *t)
{
    S2_CALL(s2_input_f64, t->a.buf, t->b.buf, t->rows.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_output_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa >= 1 && s2_output_plane_wide(&t->g, t->th, t->tw)) {
        if (isa == 2)
            s2_output_wide_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->g.h);
        else
            s2_output_wide_f32_256(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->g.h);
        return 0;
    }
#endif
    S2_CALL(s2_output_f32, t->b.buf, t->a.buf, t->rows.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2_output_f64_call(const TileCall *t)
{
    S2_CALL(s2_output_f64, t->b.buf, t->a.buf, t->rows.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}

static int s2d_weights_f32_call(const TileCall *t)
{
    S2_CALL(s2d_weights_f32, t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int s2d_weights_f64_call(const TileCall *t)
{
    S2_CALL(s2d_weights_f64, t->a.buf, t->b.buf, t->na, t->nb);
    return 0;
}
static int s2d_input_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa == 2 && s2d_plane_wide(&t->g, t->th, t->tw)) {
        s2d_input_wide_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks, t->g.h);
        return 0;
    }
    if (isa == 2 && s2d_plane8(&t->g, t->th, t->tw)) {
        s2d_input8_f32_512(t->a.buf, t->b.buf, t->g.c, t->n0, t->n1, t->ks);
        return 0;
    }
#endif
    S2_CALL(s2d_input_f32, t->a.buf, t->b.buf, t->rows.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2d_input_f64_call(const TileCall *t)
{
    S2_CALL(s2d_input_f64, t->a.buf, t->b.buf, t->rows.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks);
    return 0;
}
static int s2d_output_f32_call(const TileCall *t)
{
#if WINO_PLANE8
    if (isa == 2 && s2d_plane_wide(&t->g, t->th, t->tw)) {
        s2d_output_wide_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate, t->g.h);
        return 0;
    }
    if (isa == 2 && s2d_plane8(&t->g, t->th, t->tw)) {
        s2d_output8_f32_512(t->b.buf, t->a.buf, t->o, t->n0, t->n1, t->ks, t->accumulate);
        return 0;
    }
#endif
    S2_CALL(s2d_output_f32, t->b.buf, t->a.buf, t->rows.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks,
            t->accumulate);
    return 0;
}
static int s2d_output_f64_call(const TileCall *t)
{
    S2_CALL(s2d_output_f64, t->b.buf, t->a.buf, t->rows.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks,
            t->accumulate);
    return 0;
}

/* ``slices`` GEMM operands, ks apart in v and m, with ``depth`` rows of v per input channel;
 * ``adjoint``: the weights and output transforms run backwards (the weight gradient's: u -> w
 * into w, out -> m into m, where the forward's write u and out);
 * ``check`` the geometry and tile counts it computes; ``input_rows`` / ``output_rows``: the
 * items of the scratch rows the caller hands the transform for tw tiles a row (NULL: none);
 * the kernels of each entry point, float32 then float64. */
typedef struct {
    const char *weights, *input, *output; /* the entry points' names, for errors */
    int (*check)(const Geometry *g, I th, I tw);
    I slices, depth;
    int flips, accumulates, adjoint;
    I (*input_rows)(I tw);
    I (*output_rows)(I tw);
    I (*columns)(I p); /* a slice row's columns for p tiles (NULL: p) */
    TileKernel weights_kernels[2], input_kernels[2], output_kernels[2];
} TileFamily;

static const TileFamily WINOGRAD = {
    "winograd_weights", "winograd_input", "winograd_output", check_winograd, 16, 1, 1, 1, 0, NULL, NULL, NULL,
    {winograd_weights_f32_call, winograd_weights_f64_call}, {winograd_input_f32_call, winograd_input_f64_call},
    {winograd_output_f32_call, winograd_output_f64_call}};
static const TileFamily WINOGRAD_FILTER = {
    "winograd_taps", "winograd_input", "winograd_grad", check_winograd, 16, 1, 0, 0, 1, NULL, NULL, NULL,
    {winograd_taps_f32_call, winograd_taps_f64_call}, {winograd_input_f32_call, winograd_input_f64_call},
    {winograd_grad_f32_call, winograd_grad_f64_call}};
static const TileFamily S2 = {
    "s2_weights", "s2_input", "s2_output", check_s2, 9, 4, 0, 0, 0, s2_input_rows, s2_output_rows, NULL,
    {s2_weights_f32_call, s2_weights_f64_call}, {s2_input_f32_call, s2_input_f64_call},
    {s2_output_f32_call, s2_output_f64_call}};

/* The weight gradient's: s2_input as the forward's, its taps in NumPy (spatial.py) */
static const TileFamily S2_FILTER = {
    "s2_weights", "s2_input", "s2_grad", check_s2, 9, 4, 0, 0, 1, s2_input_rows, NULL, NULL,
    {s2_weights_f32_call, s2_weights_f64_call}, {s2_input_f32_call, s2_input_f64_call},
    {s2_grad_f32_call, s2_grad_f64_call}};
static const TileFamily S2_FILTER_T = {
    "s2_weights", "s2_input", "s2_grad_t", check_s2, 9, 4, 0, 0, 1, s2_input_rows, NULL, NULL,
    {s2_weights_f32_call, s2_weights_f64_call}, {s2_input_f32_call, s2_input_f64_call},
    {s2_grad_t_f32_call, s2_grad_t_f64_call}};

/* The input gradient's (s2d_*): 25 positions of depth O (dy's channels), u (25, C, O) */
static const TileFamily S2D = {
    "s2d_weights", "s2d_input", "s2d_output", check_s2d, 25, 1, 0, 1, 0, s2d_rows, s2d_rows, s2d_columns,
    {s2d_weights_f32_call, s2d_weights_f64_call}, {s2d_input_f32_call, s2d_input_f64_call},
    {s2d_output_f32_call, s2d_output_f64_call}};

/* F(2x2, 5x5) (wg_*, tile_conv's 'wg'): 36 positions of depth C, its matrices in the call */
static int wg_weights_f32_call(const TileCall *t)
{
    return ISA_CALL(wg_weights_2_5_f32, t->a.buf, t->b.buf, t->na, t->nb, t->flip, t->mats);
}
static int wg_weights_f64_call(const TileCall *t)
{
    return ISA_CALL(wg_weights_2_5_f64, t->a.buf, t->b.buf, t->na, t->nb, t->flip, t->mats);
}
static int wg_input_f32_call(const TileCall *t)
{
    return ISA_CALL(wg_input_2_5_f32, t->a.buf, t->b.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks, t->mats);
}
static int wg_input_f64_call(const TileCall *t)
{
    return ISA_CALL(wg_input_2_5_f64, t->a.buf, t->b.buf, &t->g, t->n0, t->n1, t->th, t->tw, t->ks, t->mats);
}
static int wg_output_f32_call(const TileCall *t)
{
    return ISA_CALL(wg_output_2_5_f32, t->b.buf, t->a.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks,
                    t->accumulate, t->mats);
}
static int wg_output_f64_call(const TileCall *t)
{
    return ISA_CALL(wg_output_2_5_f64, t->b.buf, t->a.buf, &t->g, t->o, t->n0, t->n1, t->th, t->tw, t->ks,
                    t->accumulate, t->mats);
}
static int check_wg(const Geometry *g, I th, I tw, I m, I nmats);
static int check_wg_2_5(const Geometry *g, I th, I tw) { return check_wg(g, th, tw, 2, WG_2_5_MATS); }
static const TileFamily WG = {
    "wg_weights", "wg_input", "wg_output", check_wg_2_5, 36, 1, 1, 1, 0, NULL, NULL, NULL,
    {wg_weights_f32_call, wg_weights_f64_call}, {wg_input_f32_call, wg_input_f64_call},
    {wg_output_f32_call, wg_output_f64_call}};

/* (w, u, A, B[, flip]): u[slices][A][depth * B] of w (A, B, 3, 3) (flip: (B, A, 3, 3)). */
static int tile_weights_args(PyObject *args, const TileFamily *f, TileCall *t)
{
    PyObject *wo, *uo;
    t->flip = t->has_rows = 0;
    if (!PyArg_ParseTuple(args, f->flips ? "OOnnp" : "OOnn", &wo, &uo, &t->na, &t->nb, &t->flip)) return -1;
    if (t->na < 1 || t->nb < 1) {
        PyErr_Format(PyExc_ValueError, "%s: channel counts must be positive, got %zd, %zd", f->weights, t->na, t->nb);
        return -1;
    }
    return get_three(wo, &t->a, f->adjoint, t->na * t->nb * 9, "w", uo, &t->b, !f->adjoint,
                     f->slices * t->na * f->depth * t->nb, "u", NULL, NULL, 0, 0, NULL);
}

/* (x, v, geometry, N, n0, n1, th, tw, ks[, rows]): v[slices][depth * C][tiles of samples [n0, n1)]. */
static int tile_input_args(PyObject *args, const TileFamily *f, TileCall *t)
{
    PyObject *xo, *vo, *go, *ro = NULL;
    I n;
    if (!PyArg_ParseTuple(args, f->input_rows ? "OOOnnnnnnO" : "OOOnnnnnn", &xo, &vo, &go, &n, &t->n0, &t->n1,
                          &t->th, &t->tw, &t->ks, &ro))
        return -1;
    if (!parse_geometry(go, &t->g) || f->check(&t->g, t->th, t->tw) < 0 || check_range(t->n0, t->n1, n, "samples") < 0)
        return -1;
    const I p = (t->n1 - t->n0) * t->th * t->tw, used = f->depth * t->g.c * (f->columns ? f->columns(p) : p);
    if (t->ks < used) {
        PyErr_Format(PyExc_ValueError, "%s: ks: slices of v %zd apart overlap (need at least %zd)", f->input, t->ks,
                     used);
        return -1;
    }
    t->has_rows = ro != NULL;
    return get_three(xo, &t->a, 0, n * t->g.c * t->g.h * t->g.w, "x", vo, &t->b, 1, (f->slices - 1) * t->ks + used, "v",
                     ro, &t->rows, 1, ro ? f->input_rows(t->tw) : 0, "rows");
}

/* (m, out, geometry, O, N, n0, n1, th, tw, ks[, accumulate][, rows]): out (+)= the tiles
 * m[slices][O][tiles of samples [n0, n1)] transformed back. */
static int tile_output_args(PyObject *args, const TileFamily *f, TileCall *t)
{
    PyObject *mo, *oo, *go, *ro = NULL;
    I n;
    const char *format = f->accumulates ? (f->output_rows ? "OOOnnnnnnnpO" : "OOOnnnnnnnp")
                                        : (f->output_rows ? "OOOnnnnnnnO" : "OOOnnnnnnn");
    /* the optional items' pointers in the format's order; one it does not name is not read */
    void *first = f->accumulates ? (void *)&t->accumulate : (void *)&ro;
    t->accumulate = 0;
    if (!PyArg_ParseTuple(args, format, &mo, &oo, &go, &t->o, &n, &t->n0, &t->n1, &t->th, &t->tw, &t->ks, first, &ro))
        return -1;
    if (!parse_geometry(go, &t->g) || f->check(&t->g, t->th, t->tw) < 0 || check_range(t->n0, t->n1, n, "samples") < 0)
        return -1;
    if (t->o < 1) {
        PyErr_Format(PyExc_ValueError, "%s: O: expected a positive channel count, got %zd", f->output, t->o);
        return -1;
    }
    const I p = (t->n1 - t->n0) * t->th * t->tw, used = t->o * (f->columns ? f->columns(p) : p);
    if (t->ks < used) {
        PyErr_Format(PyExc_ValueError, "%s: ks: slices of m %zd apart overlap (need at least %zd)", f->output, t->ks,
                     used);
        return -1;
    }
    t->has_rows = ro != NULL;
    return get_three(oo, &t->a, !f->adjoint, n * t->o * t->g.ho * t->g.wo, f->adjoint ? "dy" : "out", mo, &t->b,
                     f->adjoint, (f->slices - 1) * t->ks + used, "m", ro, &t->rows, 1,
                     ro ? f->output_rows(t->tw) : 0, "rows");
}

/* An entry point: its arguments taken by ``parse``, then the kernel of their dtype on them. */
static PyObject *tile_call(PyObject *args, const TileFamily *f, int (*parse)(PyObject *, const TileFamily *, TileCall *),
                           const TileKernel *kernels)
{
    TileCall t;
    int failed;
    if (parse(args, f, &t) < 0) return NULL;
    const TileKernel kernel = kernels[t.a.itemsize == 4 ? 0 : 1];
    RELEASE_GIL
    failed = kernel(&t);
    REACQUIRE_GIL
    release_three(&t.a, &t.b, t.has_rows ? &t.rows : NULL);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* the entry point NAME: tile_call with the family's KIND (weights, input, output) parser and kernels */
#define TILE_ENTRY(NAME, FAMILY, KIND)                                                         \
    static PyObject *NAME(PyObject *self, PyObject *args)                                      \
    {                                                                                          \
        return tile_call(args, &FAMILY, tile_##KIND##_args, FAMILY.KIND##_kernels);            \
    }

TILE_ENTRY(py_winograd_weights, WINOGRAD, weights)
TILE_ENTRY(py_winograd_input, WINOGRAD, input)
TILE_ENTRY(py_winograd_output, WINOGRAD, output)
TILE_ENTRY(py_winograd_taps, WINOGRAD_FILTER, weights)
TILE_ENTRY(py_winograd_grad, WINOGRAD_FILTER, output)
TILE_ENTRY(py_s2_weights, S2, weights)
TILE_ENTRY(py_s2_input, S2, input)
TILE_ENTRY(py_s2_output, S2, output)
TILE_ENTRY(py_s2_grad, S2_FILTER, output)
TILE_ENTRY(py_s2_grad_t, S2_FILTER_T, output)
TILE_ENTRY(py_s2d_weights, S2D, weights)
TILE_ENTRY(py_s2d_input, S2D, input)
TILE_ENTRY(py_s2d_output, S2D, output)

static int check_wg(const Geometry *g, I th, I tw, I m, I nmats)
{
    const I r = g->kh;
    if (!wg_supported(m, r) || g->kw != r || g->sh != 1 || g->sw != 1 || g->dh != 1 || g->dw != 1 ||
        g->ph < 0 || g->pw < 0 || g->ho != g->h + 2 * g->ph - (r - 1) || g->wo != g->w + 2 * g->pw - (r - 1) ||
        g->ho < 1 || g->wo < 1 || th != (g->ho + m - 1) / m || tw != (g->wo + m - 1) / m) {
        PyErr_SetString(PyExc_ValueError, "wg kernels: need F(2x2, 5x5), F(4x4, 5x5) or F(4x4, 3x3): a square "
                        "kernel of that size, stride 1, no dilation, padding >= 0, the Ho, Wo of that "
                        "geometry and its tile counts");
        return -1;
    }
    const I n = m + r - 1;
    if (nmats < m * n + n * r + n * n) {
        PyErr_Format(PyExc_ValueError, "wg kernels: mats needs %zd float64 values, got %zd", m * n + n * r + n * n, nmats);
        return -1;
    }
    return 0;
}

static PyObject *py_wg_weights(PyObject *self, PyObject *args)
{
    PyObject *wo, *uo, *mo;
    I na, nb, m, r;
    int flip;
    if (!PyArg_ParseTuple(args, "OOnnpnnO", &wo, &uo, &na, &nb, &flip, &m, &r, &mo)) return NULL;
    if (na < 1 || nb < 1 || !wg_supported(m, r)) {
        PyErr_SetString(PyExc_ValueError, "wg_weights: channel counts must be positive and (m, r) one of "
                        "(2, 5), (4, 5), (4, 3)");
        return NULL;
    }
    const I n = m + r - 1;
    Py_buffer w, u, mats;
    if (get_three(wo, &w, 0, na * nb * r * r, "w", uo, &u, 1, n * n * na * nb, "u", NULL, NULL, 0, 0, NULL) < 0)
        return NULL;
    if (get_buffer(mo, &mats, 0, "d", m * n + n * r + n * n, "mats") < 0) {
        release_three(&w, &u, NULL);
        return NULL;
    }
    int failed;
    RELEASE_GIL
    if (w.itemsize == 4)
        failed = WG_DISPATCH(weights, f32, m, r, w.buf, u.buf, na, nb, flip, mats.buf);
    else
        failed = WG_DISPATCH(weights, f64, m, r, w.buf, u.buf, na, nb, flip, mats.buf);
    REACQUIRE_GIL
    release_three(&w, &u, &mats);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_wg_input(PyObject *self, PyObject *args)
{
    PyObject *xo, *vo, *go, *mo;
    Geometry g;
    I n, n0, n1, th, tw, ks, m;
    int failed;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnO", &xo, &vo, &go, &n, &n0, &n1, &th, &tw, &ks, &m, &mo)) return NULL;
    if (!parse_geometry(go, &g) || check_wg(&g, th, tw, m, 1 << 20) < 0 || check_range(n0, n1, n, "samples") < 0)
        return NULL;
    const I k = (m + g.kh - 1) * (m + g.kh - 1);
    if (ks < g.c * (n1 - n0) * th * tw) {
        PyErr_SetString(PyExc_ValueError, "wg_input: the slices of v overlap");
        return NULL;
    }
    Py_buffer x, v, mats;
    if (get_three(xo, &x, 0, n * g.c * g.h * g.w, "x", vo, &v, 1, (k - 1) * ks + g.c * (n1 - n0) * th * tw, "v",
                  NULL, NULL, 0, 0, NULL) < 0)
        return NULL;
    if (get_buffer(mo, &mats, 0, "d", 0, "mats") < 0) {
        release_three(&x, &v, NULL);
        return NULL;
    }
    if (check_wg(&g, th, tw, m, mats.len / 8) < 0) {
        release_three(&x, &v, &mats);
        return NULL;
    }
    RELEASE_GIL
    if (x.itemsize == 4)
        failed = WG_DISPATCH(input, f32, m, g.kh, x.buf, v.buf, &g, n0, n1, th, tw, ks, mats.buf);
    else
        failed = WG_DISPATCH(input, f64, m, g.kh, x.buf, v.buf, &g, n0, n1, th, tw, ks, mats.buf);
    REACQUIRE_GIL
    release_three(&x, &v, &mats);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* The operands wg_output and wg_grad share: the plane buffer (out or dy, n * o * Ho * Wo values),
 * m (the GEMM results, k slices ks apart) and the transform matrices, each checked; on failure
 * nothing is held and a Python error is set. */
static int wg_plane_operands(const char *name, const Geometry *g, I o, I n, I n0, I n1, I th, I tw, I ks, I m,
                             PyObject *planeo, Py_buffer *plane, int plane_writable, const char *plane_name,
                             PyObject *mo_, Py_buffer *mm, PyObject *mo, Py_buffer *mats)
{
    if (check_wg(g, th, tw, m, 1 << 20) < 0 || check_range(n0, n1, n, "samples") < 0)
        return -1;
    const I k = (m + g->kh - 1) * (m + g->kh - 1);
    if (o < 1 || ks < o * (n1 - n0) * th * tw) {
        PyErr_Format(PyExc_ValueError, "%s: need a positive channel count and slices of m that do not overlap",
                     name);
        return -1;
    }
    if (get_three(planeo, plane, plane_writable, n * o * g->ho * g->wo, plane_name, mo_, mm, !plane_writable,
                  (k - 1) * ks + o * (n1 - n0) * th * tw, "m", NULL, NULL, 0, 0, NULL) < 0)
        return -1;
    if (get_buffer(mo, mats, 0, "d", 0, "mats") < 0) {
        release_three(plane, mm, NULL);
        return -1;
    }
    if (check_wg(g, th, tw, m, mats->len / 8) < 0) {
        release_three(plane, mm, mats);
        return -1;
    }
    return 0;
}

static PyObject *py_wg_output(PyObject *self, PyObject *args)
{
    PyObject *mo_, *oo, *go, *mo;
    Geometry g;
    I o, n, n0, n1, th, tw, ks, m;
    int accumulate, failed;
    Py_buffer out, mm, mats;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnpnO", &mo_, &oo, &go, &o, &n, &n0, &n1, &th, &tw, &ks, &accumulate, &m, &mo))
        return NULL;
    if (!parse_geometry(go, &g) ||
        wg_plane_operands("wg_output", &g, o, n, n0, n1, th, tw, ks, m, oo, &out, 1, "out", mo_, &mm, mo, &mats) < 0)
        return NULL;
    RELEASE_GIL
    if (out.itemsize == 4)
        failed = WG_DISPATCH(output, f32, m, g.kh, mm.buf, out.buf, &g, o, n0, n1, th, tw, ks, accumulate, mats.buf);
    else
        failed = WG_DISPATCH(output, f64, m, g.kh, mm.buf, out.buf, &g, o, n0, n1, th, tw, ks, accumulate, mats.buf);
    REACQUIRE_GIL
    release_three(&out, &mm, &mats);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* wg_grad(m, dy, geometry, O, N, n0, n1, th, tw, ks, m_tile, mats): the geometry is the forward's
 * (x's channels and plane, the 5x5 taps, dy's plane Ho x Wo). */
static PyObject *py_wg_grad(PyObject *self, PyObject *args)
{
    PyObject *mo_, *yo, *go, *mo;
    Geometry g;
    I o, n, n0, n1, th, tw, ks, m;
    int failed;
    Py_buffer dy, mm, mats;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnnO", &mo_, &yo, &go, &o, &n, &n0, &n1, &th, &tw, &ks, &m, &mo))
        return NULL;
    if (!parse_geometry(go, &g))
        return NULL;
    if (m != 2 || g.kh != 5) {
        PyErr_SetString(PyExc_ValueError, "wg_grad: only F(2x2, 5x5)'s weight gradient (m 2, 5x5 taps)");
        return NULL;
    }
    if (wg_plane_operands("wg_grad", &g, o, n, n0, n1, th, tw, ks, m, yo, &dy, 0, "dy", mo_, &mm, mo, &mats) < 0)
        return NULL;
    RELEASE_GIL
    if (dy.itemsize == 4)
        failed = wg_grad_2_5_f32(dy.buf, mm.buf, &g, o, n0, n1, th, tw, ks, mats.buf);
    else
        failed = wg_grad_2_5_f64(dy.buf, mm.buf, &g, o, n0, n1, th, tw, ks, mats.buf);
    REACQUIRE_GIL
    release_three(&dy, &mm, &mats);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_depthwise_backward_data(PyObject *self, PyObject *args)
{
    PyObject *dyo, *wo, *dxo, *go;
    Geometry g;
    I n, p0, p1;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOOnnnp", &dyo, &wo, &dxo, &go, &n, &p0, &p1, &accumulate)) return NULL;
    if (!parse_geometry(go, &g) || check_range(p0, p1, n * g.c, "planes") < 0) return NULL;
    Py_buffer dy, w, dx;
    if (get_three(dxo, &dx, 1, n * g.c * g.h * g.w, "dx", wo, &w, 0, g.c * g.kh * g.kw, "w",
                  dyo, &dy, 0, n * g.c * g.ho * g.wo, "dy") < 0)
        return NULL;
    RELEASE_GIL
    if (dx.itemsize == 4)
        depthwise_backward_data_f32(dy.buf, w.buf, dx.buf, &g, p0, p1, accumulate);
    else
        depthwise_backward_data_f64(dy.buf, w.buf, dx.buf, &g, p0, p1, accumulate);
    REACQUIRE_GIL
    release_three(&dx, &w, &dy);
    Py_RETURN_NONE;
}

static int check_direct(const Geometry *g, const char *name);

static PyObject *py_depthwise_phase_data(PyObject *self, PyObject *args)
{
    PyObject *dyo, *wo, *dxo, *go;
    Geometry g;
    I n, p0, p1;
    int accumulate, failed;
    if (!PyArg_ParseTuple(args, "OOOOnnnp", &dyo, &wo, &dxo, &go, &n, &p0, &p1, &accumulate)) return NULL;
    if (!parse_geometry(go, &g) || check_direct(&g, "depthwise_phase_data") < 0 ||
        check_range(p0, p1, n * g.c, "planes") < 0)
        return NULL;
    Py_buffer dy, w, dx;
    if (get_three(dxo, &dx, 1, n * g.c * g.h * g.w, "dx", wo, &w, 0, g.c * g.kh * g.kw, "w",
                  dyo, &dy, 0, n * g.c * g.ho * g.wo, "dy") < 0)
        return NULL;
    RELEASE_GIL
    const int level = depthwise_level(&g, 1, dx.itemsize);
    if (dx.itemsize == 4)
        failed = ISA_CALL_AT(level, depthwise_phase_data_f32, dy.buf, w.buf, dx.buf, &g, p0, p1, accumulate);
    else
        failed = ISA_CALL_AT(level, depthwise_phase_data_f64, dy.buf, w.buf, dx.buf, &g, p0, p1, accumulate);
    REACQUIRE_GIL
    release_three(&dx, &w, &dy);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* An epilogue's per-channel vector: None (NULL, not applied) or ``count`` values of ``fmt``. */
static int get_optional(PyObject *obj, Py_buffer *view, const char *fmt, I count, const char *name, void **data)
{
    *data = NULL;
    view->obj = NULL;
    if (obj == Py_None) return 0;
    if (get_buffer(obj, view, 0, fmt, count, name) < 0) return -1;
    *data = view->buf;
    return 0;
}

static void release_optional(Py_buffer *view)
{
    if (view->obj) PyBuffer_Release(view);
}

static int check_grid(const Geometry *g, int flip)
{
    if (g->sh < 1 || g->sw < 1 || (flip && (g->sh != 1 || g->sw != 1)) || g->ph < 0 || g->pw < 0 ||
        g->dh < 1 || g->dw < 1 || g->ho != (g->h + 2 * g->ph - (g->kh - 1) * g->dh - 1) / g->sh + 1 ||
        g->wo != (g->w + 2 * g->pw - (g->kw - 1) * g->dw - 1) / g->sw + 1 || g->ho < 1 || g->wo < 1) {
        PyErr_SetString(PyExc_ValueError, "depthwise grid kernels: need padding >= 0, the Ho, Wo of that "
                        "geometry, and stride 1 to flip the taps");
        return -1;
    }
    return 0;
}

static PyObject *py_depthwise_grid(PyObject *self, PyObject *args)
{
    PyObject *xo, *wo, *oo, *go, *so = Py_None, *ho = Py_None, *ro = Py_None;
    Geometry g;
    I n, p0, p1;
    int flip, accumulate, relu = 0, failed;
    if (!PyArg_ParseTuple(args, "OOOOnnnpp|OOpO", &xo, &wo, &oo, &go, &n, &p0, &p1, &flip, &accumulate,
                          &so, &ho, &relu, &ro))
        return NULL;
    if (!parse_geometry(go, &g) || check_grid(&g, flip) < 0 || check_range(p0, p1, n * g.c, "planes") < 0)
        return NULL;
    if (accumulate && (so != Py_None || ho != Py_None || relu || ro != Py_None)) {
        PyErr_SetString(PyExc_ValueError,
                        "depthwise_grid: an epilogue (scale, shift, relu, residual) needs accumulate off");
        return NULL;
    }
    Py_buffer x, w, out, sv, hv, rv;
    void *scale = NULL, *shift = NULL, *res = NULL;
    if (get_three(xo, &x, 0, n * g.c * g.h * g.w, "x", wo, &w, 0, g.c * g.kh * g.kw, "w",
                  oo, &out, 1, n * g.c * g.ho * g.wo, "out") < 0)
        return NULL;
    sv.obj = hv.obj = rv.obj = NULL;
    if (get_optional(so, &sv, out.format, g.c, "scale", &scale) < 0 ||
        get_optional(ho, &hv, out.format, g.c, "shift", &shift) < 0 ||
        get_optional(ro, &rv, out.format, n * g.c * g.ho * g.wo, "residual", &res) < 0) {
        release_optional(&sv);
        release_optional(&hv);
        release_optional(&rv);
        release_three(&x, &w, &out);
        return NULL;
    }
    RELEASE_GIL
    const int level = depthwise_level(&g, !flip && !accumulate, x.itemsize);
    if (x.itemsize == 4)
        failed = ISA_CALL_AT(level, depthwise_grid_f32, x.buf, w.buf, out.buf, &g, p0, p1, flip, accumulate,
                             scale, shift, res, relu);
    else
        failed = ISA_CALL_AT(level, depthwise_grid_f64, x.buf, w.buf, out.buf, &g, p0, p1, flip, accumulate,
                             scale, shift, res, relu);
    REACQUIRE_GIL
    release_optional(&sv);
    release_optional(&hv);
    release_optional(&rv);
    release_three(&x, &w, &out);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_depthwise_grid_filter(PyObject *self, PyObject *args)
{
    PyObject *xo, *dyo, *dwo, *go;
    Geometry g;
    I n, c0, c1;
    int accumulate, failed;
    if (!PyArg_ParseTuple(args, "OOOOnnnp", &xo, &dyo, &dwo, &go, &n, &c0, &c1, &accumulate)) return NULL;
    if (!parse_geometry(go, &g) || check_grid(&g, 0) < 0 || check_range(c0, c1, g.c, "channels") < 0)
        return NULL;
    Py_buffer x, dy, dw;
    if (get_three(dwo, &dw, 1, g.c * g.kh * g.kw, "dw", xo, &x, 0, n * g.c * g.h * g.w, "x",
                  dyo, &dy, 0, n * g.c * g.ho * g.wo, "dy") < 0)
        return NULL;
    RELEASE_GIL
    const int level = depthwise_level(&g, 1, dw.itemsize);
    if (dw.itemsize == 4)
        failed = ISA_CALL_AT(level, depthwise_grid_filter_f32, x.buf, dy.buf, dw.buf, &g, n, c0, c1, accumulate);
    else
        failed = ISA_CALL_AT(level, depthwise_grid_filter_f64, x.buf, dy.buf, dw.buf, &g, n, c0, c1, accumulate);
    REACQUIRE_GIL
    release_three(&dw, &x, &dy);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static int check_direct(const Geometry *g, const char *name)
{
    if (g->sh < 1 || g->sw < 1 || g->ph < 0 || g->pw < 0 || g->dh < 1 || g->dw < 1 ||
        g->ho != (g->h + 2 * g->ph - (g->kh - 1) * g->dh - 1) / g->sh + 1 ||
        g->wo != (g->w + 2 * g->pw - (g->kw - 1) * g->dw - 1) / g->sw + 1 || g->ho < 1 || g->wo < 1) {
        PyErr_Format(PyExc_ValueError, "%s: need padding >= 0 and the Ho, Wo of that geometry", name);
        return -1;
    }
    return 0;
}

/* py_direct_conv's call of one float32 build: PLAIN, or EPI where there is an epilogue */
#define DIRECT_F32_CALL(PLAIN, EPI)                                                                \
    (scale || shift || relu || res                                                              \
         ? EPI(x.buf, w.buf, out.buf, &g, groups, o, n0, n1, 0, 0, scale, shift, relu, res)     \
         : PLAIN(x.buf, w.buf, out.buf, &g, groups, o, n0, n1, flip, accumulate, NULL, NULL, 0, NULL))

static PyObject *py_direct_conv(PyObject *self, PyObject *args)
{
    PyObject *xo, *wo, *oo, *go, *so = Py_None, *ho = Py_None, *ro = Py_None;
    Geometry g;
    I groups, o, n, n0, n1;
    int flip, accumulate, relu = 0, failed;
    if (!PyArg_ParseTuple(args, "OOOOnnnnnpp|OOpO", &xo, &wo, &oo, &go, &groups, &o, &n, &n0, &n1, &flip,
                          &accumulate, &so, &ho, &relu, &ro))
        return NULL;
    if (!parse_geometry(go, &g) || check_direct(&g, "direct_conv") < 0 || check_range(n0, n1, n, "samples") < 0) return NULL;
    if (groups < 1 || g.c % groups || o % groups) {
        PyErr_Format(PyExc_ValueError, "direct_conv: %zd input and %zd output channels do not split into %zd groups",
                     g.c, o, groups);
        return NULL;
    }
    if ((so != Py_None || ho != Py_None || relu || ro != Py_None) && (flip || accumulate)) {
        PyErr_SetString(PyExc_ValueError,
                        "direct_conv: an epilogue (scale, shift, relu, residual) needs flip and accumulate off");
        return NULL;
    }
    Py_buffer x, w, out, sv, hv, rv;
    void *scale, *shift, *res;
    if (get_three(xo, &x, 0, n * g.c * g.h * g.w, "x", wo, &w, 0, o * (g.c / groups) * g.kh * g.kw, "w",
                  oo, &out, 1, n * o * g.ho * g.wo, "out") < 0)
        return NULL;
    if (get_optional(so, &sv, x.format, o, "scale", &scale) < 0) {
        release_three(&x, &w, &out);
        return NULL;
    }
    if (get_optional(ho, &hv, x.format, o, "shift", &shift) < 0) {
        release_optional(&sv);
        release_three(&x, &w, &out);
        return NULL;
    }
    if (get_optional(ro, &rv, x.format, n * o * g.ho * g.wo, "residual", &res) < 0) {
        release_optional(&sv);
        release_optional(&hv);
        release_three(&x, &w, &out);
        return NULL;
    }
    RELEASE_GIL
    if (pointwise(&g, groups)) {
        failed = 0;
        if (x.itemsize == 4)
            ISA_CALL(pointwise_conv_f32, x.buf, w.buf, out.buf, g.c, o, g.h * g.w, n0, n1, flip, accumulate, scale,
                     shift, relu, res);
        else
            ISA_CALL(pointwise_conv_f64, x.buf, w.buf, out.buf, g.c, o, g.h * g.w, n0, n1, flip, accumulate, scale,
                     shift, relu, res);
    } else if (pointwise_gathered(&g, groups))
        failed = x.itemsize == 4 ? ISA_CALL(pointwise_strided_f32, x.buf, w.buf, out.buf, &g, o, n0, n1, flip, accumulate,
                                            scale, shift, relu, res)
                                 : ISA_CALL(pointwise_strided_f64, x.buf, w.buf, out.buf, &g, o, n0, n1, flip, accumulate,
                                            scale, shift, relu, res);
    else if (x.itemsize == 4 && direct_half(&g))
        failed = DIRECT_F32_CALL(direct_conv_f32_512h, direct_conv_epi_f32_512h);
    else if (x.itemsize == 4 && direct_512_8x2(&g))
        failed = DIRECT_F32_CALL(direct_conv_f32_512_8x2, direct_conv_epi_f32_512_8x2);
    else if (x.itemsize == 4 && direct_6x2(&g, o / groups))
        failed = DIRECT_F32_CALL(direct_conv_f32_256_6x2, direct_conv_epi_f32_256_6x2);
    else if (x.itemsize == 4)
        failed = scale || shift || relu || res
                     ? ISA_CALL(direct_conv_epi_f32, x.buf, w.buf, out.buf, &g, groups, o, n0, n1, 0, 0, scale, shift, relu,
                                res)
                     : ISA_CALL(direct_conv_f32, x.buf, w.buf, out.buf, &g, groups, o, n0, n1, flip, accumulate,
                                NULL, NULL, 0, NULL);
    else
        failed = scale || shift || relu || res
                     ? ISA_CALL(direct_conv_epi_f64, x.buf, w.buf, out.buf, &g, groups, o, n0, n1, 0, 0, scale, shift, relu,
                                res)
                     : ISA_CALL(direct_conv_f64, x.buf, w.buf, out.buf, &g, groups, o, n0, n1, flip, accumulate,
                                NULL, NULL, 0, NULL);
    REACQUIRE_GIL
    release_optional(&sv);
    release_optional(&hv);
    release_optional(&rv);
    release_three(&x, &w, &out);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* pointwise_scatter(dy, w, dx, geometry, O, N, n0, n1, accumulate): samples [n0, n1) of the input
 * gradient of a strided 1x1 conv (geometry: the forward's) */
static PyObject *py_pointwise_scatter(PyObject *self, PyObject *args)
{
    PyObject *yo, *wo, *xo, *go;
    Geometry g;
    I o, n, n0, n1;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOOnnnnp", &yo, &wo, &xo, &go, &o, &n, &n0, &n1, &accumulate)) return NULL;
    if (!parse_geometry(go, &g) || check_direct(&g, "pointwise_scatter") < 0 ||
        check_range(n0, n1, n, "samples") < 0)
        return NULL;
    if (g.kh != 1 || g.kw != 1 || o < 1) {
        PyErr_Format(PyExc_ValueError, "pointwise_scatter: needs a 1x1 kernel and O >= 1, got %zdx%zd and O = %zd",
                     g.kh, g.kw, o);
        return NULL;
    }
    Py_buffer dy, w, dx;
    if (get_three(yo, &dy, 0, n * o * g.ho * g.wo, "dy", wo, &w, 0, o * g.c, "w", xo, &dx, 1, n * g.c * g.h * g.w, "dx") < 0)
        return NULL;
    int failed;
    RELEASE_GIL
    failed = dy.itemsize == 4 ? ISA_CALL(pointwise_scatter_f32, dy.buf, w.buf, dx.buf, &g, o, n0, n1, accumulate)
                              : ISA_CALL(pointwise_scatter_f64, dy.buf, w.buf, dx.buf, &g, o, n0, n1, accumulate);
    REACQUIRE_GIL
    release_three(&dy, &w, &dx);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Whether [a, a + na) and [b, b + nb) bytes share any. */
static int overlap(const void *a, I na, const void *b, I nb)
{
    const char *pa = a, *pb = b;
    return pa < pb + nb && pb < pa + na;
}

/* tile_gemm_f64 where ``wide`` (float64), else tile_gemm_f32, on the callers' untyped buffers */
static void tile_gemm_of(int wide, const void *u, const void *v, void *m, I positions, I o, I c, I p, I us, I vs,
                         I ms, const I *depth, I uc, int accumulate)
{
    if (wide)
        ISA_CALL(tile_gemm_f64, u, v, m, positions, o, c, p, us, vs, ms, depth, uc, accumulate);
    else
        ISA_CALL(tile_gemm_f32, u, v, m, positions, o, c, p, us, vs, ms, depth, uc, accumulate);
}

/* (u, v, m, positions, O, C, P, vs, ms, accumulate=False, us=O*C): m[k] (+)= u[k] v[k] for k <
 * positions, u's slices (O, C) us items apart, v's (C, P) and m's (O, P) vs and ms apart
 * (_tile_run's GEMMs; the 5x5 weight gradient's with u its input tiles, whose slices lie a
 * cache line apart as _tile_run's v); with ``s2`` (no positions argument: 9) the phase
 * Winograd's, u (9, O, 4C) and position k's depth S2_DEPTH[k] C (s2_row). */
static PyObject *tile_gemm_call(PyObject *args, int s2)
{
    const char *name = s2 ? "s2_gemm" : "tile_gemm";
    PyObject *uo, *vo, *mo;
    I positions = 9, o, c, p, vs, ms, us = 0;
    int accumulate = 0;
    if (!(s2 ? PyArg_ParseTuple(args, "OOOnnnnn", &uo, &vo, &mo, &o, &c, &p, &vs, &ms)
             : PyArg_ParseTuple(args, "OOOnnnnnn|pn", &uo, &vo, &mo, &positions, &o, &c, &p, &vs, &ms, &accumulate,
                                &us)))
        return NULL;
    if (positions < 1 || o < 1 || c < 1 || p < 1) {
        PyErr_Format(PyExc_ValueError, "%s: positions, O, C, P must be positive, got %zd, %zd, %zd, %zd", name,
                     positions, o, c, p);
        return NULL;
    }
    const I uc = s2 ? 4 * c : c; /* u's row, and the deepest slice of v */
    I depth[9];
    for (I k = 0; s2 && k < 9; k++) depth[k] = S2_DEPTH[k] * c;
    if (us == 0) us = o * uc;
    if (vs < uc * p || ms < o * p) {
        PyErr_Format(PyExc_ValueError, "%s: vs, ms: slices of v and m overlap (need at least %zd and %zd, "
                     "got %zd and %zd)", name, uc * p, o * p, vs, ms);
        return NULL;
    }
    if (us < o * uc) {
        PyErr_Format(PyExc_ValueError, "%s: us: slices of u overlap (need at least %zd, got %zd)", name, o * uc, us);
        return NULL;
    }
    Py_buffer u, v, m;
    if (get_three(uo, &u, 0, (positions - 1) * us + o * uc, "u", vo, &v, 0, (positions - 1) * vs + uc * p, "v", mo, &m, 1,
                  (positions - 1) * ms + o * p, "m") < 0)
        return NULL;
    if (overlap(m.buf, m.len, u.buf, u.len) || overlap(m.buf, m.len, v.buf, v.len)) {
        release_three(&u, &v, &m);
        PyErr_Format(PyExc_ValueError, "%s: m: expected a buffer apart from u and v", name);
        return NULL;
    }
    const I *depths = s2 ? depth : NULL;
    RELEASE_GIL
    tile_gemm_of(u.itemsize == 8, u.buf, v.buf, m.buf, positions, o, c, p, us, vs, ms, depths, uc, accumulate);
    REACQUIRE_GIL
    release_three(&u, &v, &m);
    Py_RETURN_NONE;
}

static PyObject *py_tile_gemm(PyObject *self, PyObject *args) { return tile_gemm_call(args, 0); }

/* ------------------------------------------------ a tiled conv in one call: tile_conv
 * Per chunk of samples the input transform, the GEMMs on tile_gemm's register blocks, the output
 * transform and the epilogue, the chunks dealt to this thread and the lanes (_lane_pool.h) inside
 * one GIL release. Run from Python, a chunk's four kernels were four calls, and the lanes handed
 * over through the GIL between them: a fifth of the ResNet's 3x3 stride-2 32 -> 64 forward went
 * outside the kernels. Each lane transforms the taps into its own slot before its first chunk:
 * where the two vCPUs sat on cores far apart, reading the caller's copy from the other core
 * slowed that forward (docs/numpy.md, session 42). */

typedef struct TileTask {
    void (*run)(const struct TileTask *, I lo, I hi);
    const TileFamily *f;
    int wide;                         /* float64 */
    TileCall in, out;                 /* the transforms' arguments but for the samples and scratch */
    char *u;                          /* the taps: a copy per slot (ubytes apart) */
    I ubytes;
    TileCall taps;                    /* the taps' kernel arguments but for u */
    int *tapped;                      /* slot k's copy of the taps is written */
    char *v, *m, *rows;               /* the lanes' scratch: ``slots`` slots of vbytes, mbytes, rbytes */
    I vbytes, mbytes, rbytes, slots;
    int *taken;                       /* slot k in use */
    const I *depth;
    I n, per, positions, n_out, n_in, uc, plane;
    const void *scale, *shift, *res;
    int relu, failed;
    char *parts;                      /* wg_filter: each slot's products of a chunk (ubytes apart) */
} TileTask;

#define LANE_TASK TileTask
#include "_lane_pool.h"

/* the scratch slot this thread took last: a lane that keeps its slot from call to call finds its
 * scratch in its own core's cache, where the other core's last use would have to move it over */
static __thread I tile_slot;

/* chunks [lo, hi) of t->per samples, each on a scratch slot no other lane holds */
static void tile_chunks(const TileTask *t, I lo, I hi)
{
    I slot = tile_slot < t->slots ? tile_slot : 0;
    while (__atomic_exchange_n(&t->taken[slot], 1, __ATOMIC_ACQUIRE)) slot = (slot + 1) % t->slots;
    tile_slot = slot;
    char *u = t->u + slot * t->ubytes;
    if (!t->tapped[slot]) {
        TileCall taps = t->taps;
        taps.b.buf = u;
        if (t->f->weights_kernels[t->wide](&taps)) {
            __atomic_store_n(&((TileTask *)t)->failed, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&t->taken[slot], 0, __ATOMIC_RELEASE);
            return;
        }
        t->tapped[slot] = 1;
    }
    TileCall in = t->in, out = t->out;
    char *v = t->v + slot * t->vbytes, *m = t->m + slot * t->mbytes;
    in.b.buf = v;
    out.b.buf = m;
    in.rows.buf = out.rows.buf = t->rows ? t->rows + slot * t->rbytes : NULL;
    int failed = 0;
    for (I k = lo; k < hi && !failed; k++) {
        const I n0 = k * t->per, n1 = n0 + t->per < t->n ? n0 + t->per : t->n, tiles = (n1 - n0) * in.th * in.tw;
        const I p = t->f->columns ? t->f->columns(tiles) : tiles;
        in.n0 = out.n0 = n0;
        in.n1 = out.n1 = n1;
        failed = t->f->input_kernels[t->wide](&in);
        if (failed) break;
        tile_gemm_of(t->wide, u, v, m, t->positions, t->n_out, t->n_in, p, t->n_out * t->uc, in.ks, out.ks, t->depth,
                     t->uc, 0);
        failed = t->f->output_kernels[t->wide](&out);
        if (!failed && (t->scale || t->shift || t->res || t->relu)) {
            if (t->wide)
                epilogue_f64(out.a.buf, t->scale, t->shift, t->res, t->n_out, t->plane, n0 * t->n_out,
                             n1 * t->n_out, 0, t->plane, t->relu);
            else
                epilogue_f32(out.a.buf, t->scale, t->shift, t->res, t->n_out, t->plane, n0 * t->n_out,
                             n1 * t->n_out, 0, t->plane, t->relu);
        }
    }
    if (failed) __atomic_store_n(&((TileTask *)t)->failed, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&t->taken[slot], 0, __ATOMIC_RELEASE);
}

/* tile_conv's buffers */
enum { TC_W, TC_SRC, TC_DST, TC_U, TC_V, TC_M, TC_ROWS, TC_SCALE, TC_SHIFT, TC_RES, TC_COUNT };

/* (family, w, src, dst, u, v, m, rows, geometry, n_out, n_in, N, per, th, tw, vs, ms, flip, accumulate,
 *  lanes, scale, shift, relu, residual[, mats]): see the method table */
static PyObject *py_tile_conv(PyObject *self, PyObject *args)
{
    PyObject *obj[TC_COUNT], *go, *mo = Py_None;
    const char *name;
    TileTask t = {.run = tile_chunks};
    I vs, ms, lanes;
    int flip, accumulate, relu;
    if (!PyArg_ParseTuple(args, "sOOOOOOOOnnnnnnnnppnOOpO|O", &name, &obj[TC_W], &obj[TC_SRC], &obj[TC_DST],
                          &obj[TC_U], &obj[TC_V], &obj[TC_M], &obj[TC_ROWS], &go, &t.n_out, &t.n_in, &t.n, &t.per,
                          &t.in.th, &t.in.tw, &vs, &ms, &flip, &accumulate, &lanes, &obj[TC_SCALE], &obj[TC_SHIFT],
                          &relu, &obj[TC_RES], &mo))
        return NULL;
    const TileFamily *f = strcmp(name, "wino") == 0 ? &WINOGRAD : strcmp(name, "s2") == 0 ? &S2
                          : strcmp(name, "s2d") == 0 ? &S2D : strcmp(name, "wg") == 0 ? &WG : NULL;
    if (!f) {
        PyErr_Format(PyExc_ValueError, "tile_conv: family: expected 'wino', 's2', 's2d' or 'wg', got '%s'", name);
        return NULL;
    }
    if ((f == &WG) != (mo != Py_None)) {
        PyErr_Format(PyExc_ValueError, "tile_conv: mats: expected F(2x2, 5x5)'s matrices for 'wg' and none for "
                     "the other families, got %s for '%s'", mo == Py_None ? "none" : "some", name);
        return NULL;
    }
    Geometry *g = &t.in.g;
    if (!parse_geometry(go, g) || f->check(g, t.in.th, t.in.tw) < 0) return NULL;
    if (t.n_out < 1 || t.n_in < 1 || t.n < 1 || t.per < 1 || lanes < 1) {
        PyErr_Format(PyExc_ValueError, "tile_conv: n_out, n_in, N, per, lanes must be positive, got %zd, %zd, %zd, "
                     "%zd, %zd", t.n_out, t.n_in, t.n, t.per, lanes);
        return NULL;
    }
    if (g->c != t.n_in) {
        PyErr_Format(PyExc_ValueError, "tile_conv: n_in: expected the geometry's %zd channels, got %zd", g->c, t.n_in);
        return NULL;
    }
    if ((flip && !f->flips) || (accumulate && !f->accumulates)) {
        PyErr_Format(PyExc_ValueError, "tile_conv: %s: flip and accumulate are the input gradient's", name);
        return NULL;
    }
    if (accumulate && (obj[TC_SCALE] != Py_None || obj[TC_SHIFT] != Py_None || relu || obj[TC_RES] != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "tile_conv: an epilogue (scale, shift, relu, residual) needs accumulate off");
        return NULL;
    }
    t.uc = f->depth * t.n_in;
    t.positions = f->slices;
    const I tiles = t.in.th * t.in.tw, most = t.per < t.n ? t.per : t.n;
    const I p = f->columns ? f->columns(most * tiles) : most * tiles;
    if (vs < t.uc * p || ms < t.n_out * p) {
        PyErr_Format(PyExc_ValueError, "tile_conv: vs, ms: slices of v and m overlap (need at least %zd and %zd, "
                     "got %zd and %zd)", t.uc * p, t.n_out * p, vs, ms);
        return NULL;
    }
    const I rlen = f->input_rows ? f->input_rows(t.in.tw) : 0, olen = f->output_rows ? f->output_rows(t.in.tw) : 0;
    const I rows = rlen > olen ? rlen : olen, chunks = (t.n + t.per - 1) / t.per;
    if (lanes > chunks) lanes = chunks;
    if (lanes > MAX_LANES) lanes = MAX_LANES;
    /* the taps' kernel takes w's (first, second) channel counts: the input gradient's w is the forward's */
    const I na = f == &S2D ? t.n_in : t.n_out, nb = f == &S2D ? t.n_out : t.n_in;
    t.plane = g->ho * g->wo;
    static const char *names[TC_COUNT] = {"w", "src", "dst", "u", "v", "m", "rows", "scale", "shift", "residual"};
    static const int written[TC_COUNT] = {0, 0, 1, 1, 1, 1, 1, 0, 0, 0};
    const I counts[TC_COUNT] = {na * nb * g->kh * g->kw, t.n * t.n_in * g->h * g->w, t.n * t.n_out * t.plane,
                                lanes * t.positions * t.n_out * t.uc, lanes * t.positions * vs, lanes * t.positions * ms,
                                lanes * rows, t.n_out, t.n_out, t.n * t.n_out * t.plane};
    Py_buffer view[TC_COUNT], mats = {.obj = NULL};
    if (f == &WG && get_buffer(mo, &mats, 0, "d", WG_2_5_MATS, "mats") < 0) return NULL;
    void *data[TC_COUNT];
    int got = 0, failed = 0;
    for (; got < TC_COUNT && !failed; got++) {
        if (got >= TC_SCALE || (got == TC_ROWS && !rows)) /* no rows for a family without: None */
            failed = get_optional(obj[got], &view[got], view[TC_W].format, counts[got], names[got], &data[got]) < 0;
        else {
            failed = get_buffer(obj[got], &view[got], written[got], got ? view[TC_W].format : NULL, counts[got],
                                names[got]) < 0;
            data[got] = failed ? NULL : view[got].buf;
        }
    }
    if (failed) got--; /* the one that failed holds no view */
    /* a written buffer apart from every other: each is read after another is written */
    for (int i = 0; i < got && !failed; i++)
        for (int j = i + 1; j < got && !failed; j++)
            if ((written[i] || written[j]) && data[i] && data[j] &&
                overlap(data[i], view[i].len, data[j], view[j].len)) {
                PyErr_Format(PyExc_ValueError, "tile_conv: %s and %s: expected buffers apart", names[i], names[j]);
                failed = 1;
            }
    if (!failed) {
        int taken[MAX_LANES] = {0}, tapped[MAX_LANES] = {0};
        I depth[9];
        for (int k = 0; f == &S2 && k < 9; k++) depth[k] = S2_DEPTH[k] * t.n_in;
        t.f = f;
        t.wide = view[TC_W].itemsize == 8;
        t.depth = f == &S2 ? depth : NULL;
        t.u = data[TC_U];
        t.ubytes = t.positions * t.n_out * t.uc * view[TC_W].itemsize;
        t.tapped = tapped;
        t.v = data[TC_V];
        t.m = data[TC_M];
        t.rows = rows ? data[TC_ROWS] : NULL;
        t.vbytes = t.positions * vs * view[TC_W].itemsize;
        t.mbytes = t.positions * ms * view[TC_W].itemsize;
        t.rbytes = rows * view[TC_W].itemsize;
        t.slots = lanes;
        t.taken = taken;
        t.scale = data[TC_SCALE];
        t.shift = data[TC_SHIFT];
        t.res = data[TC_RES];
        t.relu = relu;
        t.in.ks = vs;
        t.in.a.buf = data[TC_SRC];
        t.in.flip = flip;
        t.in.accumulate = accumulate;
        t.in.has_rows = rows > 0;
        t.in.mats = mats.obj ? mats.buf : NULL;
        t.out = t.in;
        t.out.ks = ms;
        t.out.o = t.n_out;
        t.out.a.buf = data[TC_DST];
        t.taps = (TileCall){.na = na, .nb = nb, .flip = flip, .mats = t.in.mats};
        t.taps.a.buf = data[TC_W];
        RELEASE_GIL
        deal_in_lanes(&t, 0, chunks, (int)lanes, 1);
        failed = t.failed;
        REACQUIRE_GIL
        if (failed) PyErr_NoMemory();
    }
    for (int i = 0; i < got; i++)
        if (i >= TC_SCALE || (i == TC_ROWS && !rows)) release_optional(&view[i]);
        else PyBuffer_Release(&view[i]);
    release_optional(&mats);
    if (failed) return NULL;
    Py_RETURN_NONE;
}
/* ------------------------------------------------ F(2x2, 5x5)'s weight gradient in one call: wg_filter
 * spatial._wg_backward_filter's lanes inside one GIL release: run from Python, each chunk's input
 * tiles, dy's tiles, 36 GEMMs and the sum were four calls, the lanes handing over through the GIL
 * between them (as tile_conv's families before it). Slots [lo, hi): slot k sums the chunks of the
 * k-th of ``slots`` contiguous parts (threads.run_gemm_pieces's split), each chunk's products
 * apart and then added in chunk order, whichever thread takes the slot (deal_in_lanes: a worker
 * that wakes late leaves its slot to the caller): the same bits for a given slot count. */
static void wg_filter_parts(const TileTask *t, I lo, I hi)
{
    const I chunks = (t->n + t->per - 1) / t->per, slots = t->slots, tiles = t->in.th * t->in.tw;
    for (I k = lo; k < hi; k++) {
        const I c0 = chunks * k / slots, c1 = chunks * (k + 1) / slots;
        TileCall in = t->in;
        char *v = t->v + k * t->vbytes, *m = t->m + k * t->mbytes, *sum = t->u + k * t->ubytes,
             *part = t->parts + k * t->ubytes;
        in.b.buf = v;
        for (I c = c0; c < c1; c++) {
            const I n0 = c * t->per, n1 = n0 + t->per < t->n ? n0 + t->per : t->n, p = (n1 - n0) * tiles;
            in.n0 = n0;
            in.n1 = n1;
            char *dst = c > c0 ? part : sum;
            int failed = t->f->input_kernels[t->wide](&in);
            if (!failed)
                failed = t->wide ? wg_grad_2_5_f64(t->out.a.buf, (double *)m, &in.g, t->n_out, n0, n1, in.th, in.tw,
                                                   t->out.ks, in.mats)
                                 : wg_grad_2_5_f32(t->out.a.buf, (float *)m, &in.g, t->n_out, n0, n1, in.th, in.tw,
                                                   t->out.ks, in.mats);
            if (!failed)
                tile_gemm_of(t->wide, v, m, dst, 36, t->n_in, p, t->n_out, in.ks, t->out.ks, t->n_in * t->n_out, NULL,
                             p, 0);
            if (failed) {
                __atomic_store_n(&((TileTask *)t)->failed, 1, __ATOMIC_RELAXED);
                return;
            }
            if (c == c0) continue;
            const I count = 36 * t->n_in * t->n_out;
            if (t->wide)
                for (I i = 0; i < count; i++) ((double *)sum)[i] += ((const double *)part)[i];
            else
                for (I i = 0; i < count; i++) ((float *)sum)[i] += ((const float *)part)[i];
        }
    }
}

/* wg_filter's buffers */
enum { WF_X, WF_DY, WF_SUMS, WF_PARTS, WF_V, WF_M, WF_COUNT };

/* (x, dy, sums, parts, v, m, geometry, O, N, per, th, tw, vs, ms, slots, mats): see the method table */
static PyObject *py_wg_filter(PyObject *self, PyObject *args)
{
    PyObject *obj[WF_COUNT], *go, *mo;
    TileTask t = {.run = wg_filter_parts, .f = &WG};
    I o, vs, ms, slots;
    if (!PyArg_ParseTuple(args, "OOOOOOOnnnnnnnnO", &obj[WF_X], &obj[WF_DY], &obj[WF_SUMS], &obj[WF_PARTS],
                          &obj[WF_V], &obj[WF_M], &go, &o, &t.n, &t.per, &t.in.th, &t.in.tw, &vs, &ms, &slots, &mo))
        return NULL;
    Geometry *g = &t.in.g;
    if (!parse_geometry(go, g) || check_wg_2_5(g, t.in.th, t.in.tw) < 0) return NULL;
    if (o < 1 || t.n < 1 || t.per < 1 || slots < 1 || slots > MAX_LANES) {
        PyErr_Format(PyExc_ValueError, "wg_filter: O, N, per must be positive and slots in [1, %d], got %zd, %zd, "
                     "%zd, %zd", MAX_LANES, o, t.n, t.per, slots);
        return NULL;
    }
    const I chunks = (t.n + t.per - 1) / t.per, most = (t.per < t.n ? t.per : t.n) * t.in.th * t.in.tw;
    if (slots > chunks) {
        PyErr_Format(PyExc_ValueError, "wg_filter: slots: expected at most the %zd chunks, got %zd", chunks, slots);
        return NULL;
    }
    if (vs < g->c * most || ms < o * most) {
        PyErr_Format(PyExc_ValueError, "wg_filter: vs, ms: slices of v and m overlap (need at least %zd and %zd, "
                     "got %zd and %zd)", g->c * most, o * most, vs, ms);
        return NULL;
    }
    Py_buffer mats;
    if (get_buffer(mo, &mats, 0, "d", WG_2_5_MATS, "mats") < 0) return NULL;
    static const char *names[WF_COUNT] = {"x", "dy", "sums", "parts", "v", "m"};
    static const int written[WF_COUNT] = {0, 0, 1, 1, 1, 1};
    const I counts[WF_COUNT] = {t.n * g->c * g->h * g->w, t.n * o * g->ho * g->wo, slots * 36 * g->c * o,
                                slots * 36 * g->c * o, slots * 36 * vs, slots * 36 * ms};
    Py_buffer view[WF_COUNT];
    int got = 0, failed = 0;
    for (; got < WF_COUNT && !failed; got++)
        failed = get_buffer(obj[got], &view[got], written[got], got ? view[WF_X].format : NULL, counts[got],
                            names[got]) < 0;
    if (failed) got--; /* the one that failed holds no view */
    for (int i = 0; i < got && !failed; i++)
        for (int j = i + 1; j < got && !failed; j++)
            if ((written[i] || written[j]) && overlap(view[i].buf, view[i].len, view[j].buf, view[j].len)) {
                PyErr_Format(PyExc_ValueError, "wg_filter: %s and %s: expected buffers apart", names[i], names[j]);
                failed = 1;
            }
    if (!failed) {
        const I item = view[WF_X].itemsize;
        t.wide = item == 8;
        t.n_in = g->c;
        t.n_out = o;
        t.slots = slots;
        t.u = view[WF_SUMS].buf;
        t.parts = view[WF_PARTS].buf;
        t.ubytes = 36 * g->c * o * item;
        t.v = view[WF_V].buf;
        t.m = view[WF_M].buf;
        t.vbytes = 36 * vs * item;
        t.mbytes = 36 * ms * item;
        t.in.a.buf = view[WF_X].buf;
        t.in.ks = vs;
        t.in.mats = mats.buf;
        t.out.a.buf = view[WF_DY].buf;
        t.out.ks = ms;
        RELEASE_GIL
        deal_in_lanes(&t, 0, slots, (int)slots, 1);
        failed = t.failed;
        REACQUIRE_GIL
        if (failed) PyErr_NoMemory();
    }
    for (int i = 0; i < got; i++) PyBuffer_Release(&view[i]);
    PyBuffer_Release(&mats);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_s2_gemm(PyObject *self, PyObject *args) { return tile_gemm_call(args, 1); }

static PyObject *py_s2_filter_gemm(PyObject *self, PyObject *args)
{
    PyObject *uo, *vo, *mo;
    I c, p, o, us, vs;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOnnnnn|p", &uo, &vo, &mo, &c, &p, &o, &us, &vs, &accumulate)) return NULL;
    if (c < 1 || p < 1 || o < 1) {
        PyErr_Format(PyExc_ValueError, "s2_filter_gemm: C, P, O must be positive, got %zd, %zd, %zd", c, p, o);
        return NULL;
    }
    if (us < 4 * c * p || vs < p * o) {
        PyErr_Format(PyExc_ValueError, "s2_filter_gemm: us, vs: slices of u and v overlap (need at least %zd and "
                     "%zd, got %zd and %zd)", 4 * c * p, p * o, us, vs);
        return NULL;
    }
    Py_buffer u, v, m;
    if (get_three(uo, &u, 0, 8 * us + 4 * c * p, "u", vo, &v, 0, 8 * vs + p * o, "v", mo, &m, 1, 25 * c * o, "m") < 0)
        return NULL;
    if (overlap(m.buf, m.len, u.buf, u.len) || overlap(m.buf, m.len, v.buf, v.len)) {
        release_three(&u, &v, &m);
        PyErr_SetString(PyExc_ValueError, "s2_filter_gemm: m: expected a buffer apart from u and v");
        return NULL;
    }
    RELEASE_GIL
    if (u.itemsize == 4)
        ISA_CALL(s2_filter_gemm_f32, u.buf, v.buf, m.buf, c, p, o, us, vs, accumulate);
    else
        ISA_CALL(s2_filter_gemm_f64, u.buf, v.buf, m.buf, c, p, o, us, vs, accumulate);
    REACQUIRE_GIL
    release_three(&u, &v, &m);
    Py_RETURN_NONE;
}

static PyObject *py_epilogue(PyObject *self, PyObject *args)
{
    PyObject *oo, *so, *ho, *ro = Py_None;
    I n, c, inner, p0, p1, i0, i1;
    int relu;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnp|O", &oo, &so, &ho, &n, &c, &inner, &p0, &p1, &i0, &i1, &relu, &ro))
        return NULL;
    if (n < 0 || c < 1 || inner < 0 || check_range(p0, p1, n * c, "planes") < 0 ||
        check_range(i0, i1, inner, "values") < 0)
        return NULL;
    Py_buffer out, sv, hv, rv;
    void *scale, *shift, *res;
    if (get_buffer(oo, &out, 1, NULL, n * c * inner, "out") < 0) return NULL;
    if (get_optional(so, &sv, out.format, c, "scale", &scale) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    if (get_optional(ho, &hv, out.format, c, "shift", &shift) < 0) {
        release_optional(&sv);
        PyBuffer_Release(&out);
        return NULL;
    }
    if (get_optional(ro, &rv, out.format, n * c * inner, "residual", &res) < 0) {
        release_optional(&sv);
        release_optional(&hv);
        PyBuffer_Release(&out);
        return NULL;
    }
    RELEASE_GIL
    if (out.itemsize == 4)
        epilogue_f32(out.buf, scale, shift, res, c, inner, p0, p1, i0, i1, relu);
    else
        epilogue_f64(out.buf, scale, shift, res, c, inner, p0, p1, i0, i1, relu);
    REACQUIRE_GIL
    release_optional(&sv);
    release_optional(&hv);
    release_optional(&rv);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_direct_grid_filter(PyObject *self, PyObject *args)
{
    PyObject *xo, *dyo, *dwo, *go;
    Geometry g;
    I groups, o, n, n0, n1;
    int accumulate, failed;
    if (!PyArg_ParseTuple(args, "OOOOnnnnnp", &xo, &dyo, &dwo, &go, &groups, &o, &n, &n0, &n1, &accumulate))
        return NULL;
    if (!parse_geometry(go, &g) || check_direct(&g, "direct_grid_filter") < 0 ||
        check_range(n0, n1, n, "samples") < 0)
        return NULL;
    if (groups < 1 || g.c % groups || o % groups) {
        PyErr_Format(PyExc_ValueError, "direct_grid_filter: %zd input and %zd output channels do not split "
                     "into %zd groups", g.c, o, groups);
        return NULL;
    }
    Py_buffer x, dy, dw;
    if (get_three(dwo, &dw, 1, o * (g.c / groups) * g.kh * g.kw, "dw", xo, &x, 0, n * g.c * g.h * g.w, "x",
                  dyo, &dy, 0, n * o * g.ho * g.wo, "dy") < 0)
        return NULL;
    RELEASE_GIL
    if (dw.itemsize == 4)
        failed = ISA_CALL(direct_grid_filter_f32, x.buf, dy.buf, dw.buf, &g, groups, o, n0, n1, accumulate);
    else
        failed = ISA_CALL(direct_grid_filter_f64, x.buf, dy.buf, dw.buf, &g, groups, o, n0, n1, accumulate);
    REACQUIRE_GIL
    release_three(&dw, &x, &dy);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    {"s2_weights", py_s2_weights, METH_VARARGS,
     "s2_weights(w, u, O, C): u (9, O, 4C) = the taps of a 3x3 stride-2 conv as F(2x2, 2x2) on its phases"},
    {"s2_input", py_s2_input, METH_VARARGS,
     "s2_input(x, v, geometry, N, n0, n1, th, tw, ks, rows): v[pos*ks:] = the transformed 5x5 patches of "
     "samples [n0, n1) of a 3x3 stride-2 conv (rows: scratch of 7 * (4 * tw + 4) items of x's dtype)"},
    {"s2_output", py_s2_output, METH_VARARGS,
     "s2_output(m, out, geometry, O, N, n0, n1, th, tw, ks, rows): out = the products m transformed back "
     "(rows: scratch of 4 * tw items of out's dtype)"},
    {"s2_grad", py_s2_grad, METH_VARARGS,
     "s2_grad(m, dy, geometry, O, N, n0, n1, th, tw, ks): m[pos*ks:] = dy's 2x2 tiles as A dY A^T, the adjoint "
     "of s2_output (the 3x3 stride-2 weight gradient's)"},
    {"s2_grad_t", py_s2_grad_t, METH_VARARGS,
     "s2_grad_t(m, dy, geometry, O, N, n0, n1, th, tw, ks): s2_grad with each slice transposed, (tiles, O)"},
    {"s2d_weights", py_s2d_weights, METH_VARARGS,
     "s2d_weights(w, u, O, C): u (25, C, O) = the taps of w (O, C, 3, 3) for the 3x3 stride-2 input gradient "
     "as F(2x2, 2x2) on dx's phases"},
    {"s2d_input", py_s2d_input, METH_VARARGS,
     "s2d_input(dy, v, geometry, N, n0, n1, th, tw, ks, rows): v[pos*ks:] = dy's transformed 3x3 patches of "
     "samples [n0, n1) (geometry (O, Ho, Wo, 3, 3, 2, 2, ph, pw, 1, 1, H, W); rows: scratch of 16 * tw + 16 "
     "items of dy's dtype)"},
    {"s2d_output", py_s2d_output, METH_VARARGS,
     "s2d_output(m, dx, geometry, C, N, n0, n1, th, tw, ks, accumulate, rows): dx (+)= the products m "
     "transformed back into 4x4 blocks (rows: scratch of 16 * tw + 16 items of dx's dtype)"},
    {"direct_grid_filter", py_direct_grid_filter, METH_VARARGS,
     "direct_grid_filter(x, dy, dw, geometry, groups, O, N, n0, n1, accumulate): the weight "
     "gradient of samples [n0, n1), computed directly (strided ones on the input's phase planes)"},
    {"tile_conv", py_tile_conv, METH_VARARGS,
     "tile_conv(family, w, src, dst, u, v, m, rows, geometry, n_out, n_in, N, per, th, tw, vs, ms, flip, "
     "accumulate, lanes, scale, shift, relu, residual[, mats]): dst (+)= the tiled conv of family 'wino' "
     "(F(2x2, 3x3)), 's2' (the 3x3 stride-2 forward), 's2d' (its input gradient) or 'wg' (F(2x2, 5x5), with "
     "its float64 matrices mats, spatial._wg_matrices(2, 5)) in one call: chunks of "
     "``per`` samples dealt over ``lanes`` threads, each on its own slot of u, v, m and rows (lanes slots: "
     "the taps of w (positions x n_out x depth n_in), positions x vs, positions x ms, the family's rows), "
     "the epilogue on each chunk (the forward's: accumulate off)"},
    {"wg_filter", py_wg_filter, METH_VARARGS,
     "wg_filter(x, dy, sums, parts, v, m, geometry, O, N, per, th, tw, vs, ms, slots, mats): the weight gradient "
     "of F(2x2, 5x5) (spatial._wg_backward_filter) but for its taps transform, in one call: chunks of ``per`` "
     "samples in ``slots`` contiguous parts dealt over the lanes, part k's chunks' 36 GEMMs of the input tiles (wg_input, "
     "slices vs apart in v[k]) by dy's (wg_grad, ms apart in m[k]) summed into sums[k] (36, C, O) (each chunk's "
     "products in parts[k], then added); mats: spatial._wg_matrices(2, 5, WG_FILTER_POINTS)"},
    USE_SIDE_LANES_METHOD,
    {"s2_gemm", py_s2_gemm, METH_VARARGS,
     "s2_gemm(u, v, m, O, C, P, vs, ms): m[k] = u[k][:, :K(k)] @ v[k], the 9 GEMMs of the 3x3 stride-2 phase Winograd"},
    {"s2_filter_gemm", py_s2_filter_gemm, METH_VARARGS,
     "s2_filter_gemm(u, v, m, C, P, O, us, vs, accumulate=False): the 3x3 stride-2 weight gradient's nine "
     "GEMMs of a chunk, m[rows of position k] (+)= u[k] (S2_DEPTH[k]*C x P) @ v[k] (P x O), positions' rows "
     "one after the other"},
    {"tile_gemm", py_tile_gemm, METH_VARARGS,
     "tile_gemm(u, v, m, positions, O, C, P, vs, ms, accumulate=False, us=O*C): m[k] (+)= u[k] @ v[k], the GEMMs "
     "of a tiled conv (u's slices us apart)"},
    {"direct_conv", py_direct_conv, METH_VARARGS,
     "direct_conv(x, w, out, geometry, groups, O, N, n0, n1, flip, accumulate, scale=None, shift=None, "
     "relu=False, residual=None): samples [n0, n1) of a grouped conv (any stride, padding >= 0) computed "
     "directly (flip: the input gradient of a stride-1 conv, x = dy); out = conv * scale[o] + shift[o] "
     "+ residual, then max(out, 0) where relu (the forward's epilogue)"},
    {"pointwise_scatter", py_pointwise_scatter, METH_VARARGS,
     "pointwise_scatter(dy, w, dx, geometry, O, N, n0, n1, accumulate): samples [n0, n1) of the input gradient "
     "of a strided 1x1 ungrouped conv (geometry: the forward's): dx (+)= W^T dy at the pixels under the kernel, "
     "zero elsewhere unless accumulate"},
    {"im2col", py_im2col, METH_VARARGS,
     "im2col(x, cols, geometry, N, n0, n1, r0, r1, sample_stride, row_stride): the windows of "
     "samples [n0, n1) and output rows [r0, r1) of NCHW x as columns (zeros in the padding)"},
    {"col2im", py_col2im, METH_VARARGS,
     "col2im(cols, dx, geometry, N, n0, n1, sample_stride, row_stride, accumulate, phases=None): dx (+)= "
     "the columns of samples [n0, n1) added back to the positions they were read from (stride 2: by "
     "phase planes in ``phases``, 4 * ((H + 2ph + 1) // 2) * ((W + 2pw + 1) // 2) items of dx's dtype, "
     "where given)"},
    {"winograd_weights", py_winograd_weights, METH_VARARGS,
     "winograd_weights(w, u, A, B, flip): u[16][A][B], the F(2x2, 3x3) transform of the taps "
     "(flip: w is (B, A, 3, 3), taps reversed)"},
    {"winograd_input", py_winograd_input, METH_VARARGS,
     "winograd_input(x, v, geometry, N, n0, n1, th, tw, ks): v[16][C][tiles of samples [n0, n1)], "
     "the 16 slices ks apart"},
    {"winograd_output", py_winograd_output, METH_VARARGS,
     "winograd_output(m, out, geometry, O, N, n0, n1, th, tw, ks, accumulate): out (+)= the tiles "
     "m[16][O][tiles] (slices ks apart) of samples [n0, n1) transformed back"},
    {"winograd_grad", py_winograd_grad, METH_VARARGS,
     "winograd_grad(m, dy, geometry, O, N, n0, n1, th, tw, ks): m[16][tiles][O] (slices ks apart), "
     "the tiles of dy of samples [n0, n1) through the adjoint of winograd_output (the weight gradient's)"},
    {"winograd_taps", py_winograd_taps, METH_VARARGS,
     "winograd_taps(w, u, A, B): w (A, B, 3, 3) = the adjoint of winograd_weights (unflipped) of "
     "u[16][B][A], the taps' gradient from the transformed taps' one"},
    {"wg_weights", py_wg_weights, METH_VARARGS,
     "wg_weights(w, u, A, B, flip, m, r, mats): u[N*N][A][B], the F(m x m, r x r) transform of the "
     "taps (N = m + r - 1; flip: w is (B, A, r, r), taps reversed)"},
    {"wg_input", py_wg_input, METH_VARARGS,
     "wg_input(x, v, geometry, N, n0, n1, th, tw, ks, m, mats): v[N*N][C][tiles of samples [n0, n1)]"},
    {"wg_grad", py_wg_grad, METH_VARARGS,
     "wg_grad(m, dy, geometry, O, N, n0, n1, th, tw, ks, m_tile, mats): m[36][tiles][O] (slices ks apart), the "
     "tiles of dy of samples [n0, n1) through the adjoint of wg_output (F(2x2, 5x5)'s weight gradient)"},
    {"wg_output", py_wg_output, METH_VARARGS,
     "wg_output(m_, out, geometry, O, N, n0, n1, th, tw, ks, accumulate, m, mats): out (+)= the tiles "
     "transformed back"},
    {"epilogue", py_epilogue, METH_VARARGS,
     "epilogue(out, scale, shift, N, C, inner, p0, p1, i0, i1, relu, residual=None): values [i0, i1) of "
     "planes [p0, p1) of (N, C, inner) out = out * scale[c] + shift[c] (None: 1, 0) + residual (same "
     "shape as out; None: 0), then max(out, 0) where relu"},
    {"bias_add", py_bias_add, METH_VARARGS,
     "bias_add(out, bias, N, C, inner, p0, p1): planes [p0, p1) of (N, C, inner) out += bias[c]"},
    {"bias_grad", py_bias_grad, METH_VARARGS,
     "bias_grad(dy, dbias, N, C, inner, c0, c1, accumulate): dbias[c] (+)= the sum of dy's "
     "channel c, channels [c0, c1)"},
    {"depthwise_backward_data", py_depthwise_backward_data, METH_VARARGS,
     "depthwise_backward_data(dy, w, dx, geometry, N, p0, p1, accumulate)"},
    {"depthwise_phase_data", py_depthwise_phase_data, METH_VARARGS,
     "depthwise_phase_data(dy, w, dx, geometry, N, p0, p1, accumulate): planes [p0, p1) of a strided "
     "depthwise input gradient on the phase planes (padding >= 0)"},
    {"depthwise_grid", py_depthwise_grid, METH_VARARGS,
     "depthwise_grid(x, w, out, geometry, N, p0, p1, flip, accumulate, scale=None, shift=None, relu=False, "
     "residual=None): planes [p0, p1) of a depthwise conv of any stride (flip, stride 1 only: taps reversed, "
     "the input gradient as a conv of dy), each plane then given the epilogue (as epilogue's) as it is stored"},
    {"depthwise_grid_filter", py_depthwise_grid_filter, METH_VARARGS,
     "depthwise_grid_filter(x, dy, dw, geometry, N, c0, c1, accumulate): the depthwise weight gradient of "
     "channels [c0, c1), any stride"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_conv_kernels",
                                    "im2col/col2im, direct and depthwise convolution and bias passes for the NumPy backend.",
                                    -1, methods};

/* $JUICEPY_CPU_ISA lowers isa (never raises it: the wider builds would fault on this CPU), so
 * the narrower builds and the algorithm choices that key on isa (spatial.py) can be run and
 * timed on a wider machine. A ValueError, not an ImportError: kernels.load takes an
 * ImportError for "not built" and would quietly fall back to the pure-NumPy paths. */
static int isa_override(void)
{
    static const char *const names[] = {"baseline", "avx2", "avx512"};
    const char *want = getenv("JUICEPY_CPU_ISA");
    if (!want || !*want) return 0;
    for (int i = 0; i <= isa; i++) {
        if (strcmp(want, names[i]) == 0) {
            isa = i;
            return 0;
        }
    }
    PyObject *allowed = PyList_New(0);
    for (int i = isa; allowed && i >= 0; i--) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (!name || PyList_Append(allowed, name) < 0) Py_CLEAR(allowed);
        Py_XDECREF(name);
    }
    if (allowed) {
        PyErr_Format(PyExc_ValueError,
                     "JUICEPY_CPU_ISA must be one of %R (what this CPU runs, widest first), got '%s'",
                     allowed, want);
        Py_DECREF(allowed);
    }
    return -1;
}

/* The CPU's vendor string and display family (base + extended family), so that spatial.py can
 * key an algorithm choice on a CPU kind where two kinds with the same instruction set were
 * measured to rank the algorithms differently; "" and 0 off x86-64. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#endif
static void cpu_kind(char vendor[13], unsigned *family)
{
    vendor[0] = 0;
    *family = 0;
#if defined(__GNUC__) && defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    unsigned base = (a >> 8) & 0xf;
    *family = base == 0xf ? base + ((a >> 20) & 0xff) : base;
#endif
}

PyMODINIT_FUNC PyInit__conv_kernels(void)
{
    static int registered = 0;
    if (!registered && pthread_atfork(NULL, NULL, lane_pool_after_fork) == 0) registered = 1;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        isa = 2;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        isa = 1;
    avx512vl = __builtin_cpu_supports("avx512vl");
#endif
    int cpu_isa = isa;
    if (isa_override() < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* spatial.py picks algorithms by isa: the direct kernels need a wide enough vector unit */
    char vendor[13];
    unsigned family;
    cpu_kind(vendor, &family);
    if (PyModule_AddIntConstant(m, "isa", isa) < 0 || PyModule_AddIntConstant(m, "cpu_isa", cpu_isa) < 0
        || PyModule_AddStringConstant(m, "cpu_vendor", vendor) < 0
        || PyModule_AddIntConstant(m, "cpu_family", (long)family) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* the BT patterns wg_input's sparse builds were compiled for: tests hold them to spatial.py's */
    PyObject *nz = Py_BuildValue("{(ii)K(ii)K(ii)K}", 2, 5, WG_BT_NZ_2_5, 4, 5, WG_BT_NZ_4_5, 4, 3, WG_BT_NZ_4_3);
    if (!nz || PyModule_AddObject(m, "wg_bt_nonzero", nz) < 0) {
        Py_XDECREF(nz);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
