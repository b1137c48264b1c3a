/* Fused recurrent cells for the NumPy backend: one pass per time step over the gates where the
 * NumPy fallback (recurrent.py) needs a dozen ufunc passes, each with its own Python call.
 * Optional: setup.py builds it when a C compiler is present; recurrent.py falls back to NumPy
 * otherwise or when JUICEPY_CPU_KERNELS=numpy. Formulas and argument order are those of the
 * cell ops in backends/base.py; the GIL is released inside each kernel.
 *
 * float32 runs 8 lanes at a time with GCC vector extensions and its own exp (Cephes' expf
 * polynomial) and tanh (Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 - 2 / (e^2x + 1)
 * above), because libm's tanhf/expf do not vectorise without -ffast-math; both stay within a few
 * float32 ulps. Each tanh pass pads its tail into full vectors, so every element's tanh is the
 * same formula wherever it sits; the cheap arithmetic around it runs a scalar tail.
 * float64 calls libm per element (exact to double rounding, like NumPy's fallback).
 */
#include "_kernels.h"

/* The vector helpers are always inlined into the kernels, so no vector crosses a call: the
 * warning about the AVX calling convention does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

/* Own clones with FMA (x86-64-v3 = AVX2 + FMA): the exp and tanh polynomials are chains of
 * multiply-adds, and fusing them nearly halves a step's cell time. Contraction is on for this
 * file only (setup.py), so the rounding differs between the clones, i.e. between CPU
 * generations, as OpenBLAS's GEMMs already do; on one machine results stay deterministic. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define RNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNN_CLONES
#endif

typedef Py_ssize_t I;
typedef float vf __attribute__((vector_size(32)));
typedef int vi __attribute__((vector_size(32)));
#define W 8
#define INLINE static inline __attribute__((always_inline))

INLINE vf splat(float x) { return (vf){x, x, x, x, x, x, x, x}; }

INLINE vf load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

INLINE vf vmin(vf a, vf b) { return (vf)(((vi)(a < b) & (vi)a) | (~(vi)(a < b) & (vi)b)); }
INLINE vf vmax(vf a, vf b) { return (vf)(((vi)(a > b) & (vi)a) | (~(vi)(a > b) & (vi)b)); }
INLINE vf vselect(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' degree-7 polynomial, 2^n from the
 * exponent bits. Clamped so that 2^n stays a normal float. */
INLINE vf vexp(vf x)
{
    x = vmin(vmax(x, splat(-87.3f)), splat(88.3f));
    const vf shifter = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf n = (x * splat(1.44269504088896341f) + shifter) - shifter;
    vf r = x - n * splat(0.693359375f);
    r = r - n * splat(-2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

/* tanh of U vectors in lockstep: one tanh is a chain of ~35 dependent operations, so a lone
 * chain leaves the vector units idle; U independent chains side by side fill them. */
#define U 4
INLINE void vtanh_u(vf *y)
{
    vf ax[U], e[U];
    vi sign[U];
    for (int k = 0; k < U; k++) {
        sign[k] = (vi)y[k] & (vi)splat(-0.0f);
        ax[k] = (vf)((vi)y[k] & ~(vi)splat(-0.0f));
    }
    for (int k = 0; k < U; k++) e[k] = vexp(ax[k] + ax[k]);
    for (int k = 0; k < U; k++) {
        vf big = (vf)((vi)(splat(1.0f) - splat(2.0f) / (e[k] + splat(1.0f))) | sign[k]);
        vf z = y[k] * y[k];
        vf p = splat(-5.70498872745e-3f);
        p = p * z + splat(2.06390887954e-2f);
        p = p * z - splat(5.37397155531e-2f);
        p = p * z + splat(1.33314422036e-1f);
        p = p * z - splat(3.33332819422e-1f);
        y[k] = vselect((vi)(ax[k] < splat(0.625f)), p * z * y[k] + y[k], big);
    }
}

/* dst = tanh(src) over len contiguous floats (dst may be src). The tail is padded into a full
 * group, so every element goes through the same formula wherever it sits. */
INLINE void tanh_span(float *dst, const float *src, I len)
{
    I j = 0;
    vf y[U];
    for (; j + U * W <= len; j += U * W) {
        for (int k = 0; k < U; k++) y[k] = load(src + j + k * W);
        vtanh_u(y);
        for (int k = 0; k < U; k++) store(dst + j + k * W, y[k]);
    }
    if (j < len) {
        float t[U * W] = {0};
        memcpy(t, src + j, (size_t)(len - j) * sizeof(float));
        for (int k = 0; k < U; k++) y[k] = load(t + k * W);
        vtanh_u(y);
        for (int k = 0; k < U; k++) store(t + k * W, y[k]);
        memcpy(dst + j, t, (size_t)(len - j) * sizeof(float));
    }
}

/* Elementwise passes over a row in 8-column vectors, and a scalar tail with the same
 * arithmetic (no transcendental in these). */
#define ROW_LOOP(J, LEN, VBODY, SBODY)                         \
    do {                                                       \
        I J = 0;                                               \
        for (; J + W <= (LEN); J += W) { VBODY; }              \
        for (; J < (LEN); J++) { SBODY; }                      \
    } while (0)

/* Columns processed per block of a row: the pre-activations and tanh(c) of one block stay in L1. */
#define BLOCK 512

/* ---------------------------------------------------------------- RNN: h = act(xw + hw + b) */
RNN_CLONES static void rnn_f32(const float *xw, const float *hw, const float *b, float *h, I rows,
                                  I hid, int relu)
{
    for (I n = 0; n < rows; n++) {
        const float *x = xw + n * hid, *y = hw ? hw + n * hid : NULL;
        float *o = h + n * hid;
        ROW_LOOP(j, hid,
                 vf a = load(x + j); if (y) a += load(y + j); if (b) a += load(b + j);
                 store(o + j, relu ? vmax(a, splat(0.0f)) : a),
                 float a = x[j]; if (y) a += y[j]; if (b) a += b[j];
                 o[j] = relu ? (a > 0.0f ? a : 0.0f) : a);
        if (!relu) tanh_span(o, o, hid);
    }
}

/* ---------------------------------------------------------------- LSTM (gate order i, f, g, o) */
/* sigmoid(a) = 0.5 + 0.5 tanh(a / 2): the four gates of a row are then one tanh pass. */
RNN_CLONES static void lstm_f32(const float *xw, const float *hw, const float *b,
                                   const float *c_prev, float *gates, float *c, float *h, I rows, I hid)
{
    for (I n = 0; n < rows; n++) {
        const float *x = xw + n * 4 * hid, *y = hw ? hw + n * 4 * hid : NULL;
        float *g = gates + n * 4 * hid, *cn = c + n * hid, *hn = h + n * hid;
        const float *cp = c_prev + n * hid;
        for (int k = 0; k < 4; k++) {
            const float s = k == 2 ? 1.0f : 0.5f;
            const float *xk = x + k * hid, *yk = y ? y + k * hid : NULL, *bk = b ? b + k * hid : NULL;
            float *gk = g + k * hid;
            ROW_LOOP(j, hid,
                     vf a = load(xk + j); if (yk) a += load(yk + j); if (bk) a += load(bk + j);
                     store(gk + j, a * splat(s)),
                     float a = xk[j]; if (yk) a += yk[j]; if (bk) a += bk[j]; gk[j] = a * s);
        }
        tanh_span(g, g, 4 * hid);
        float *gi = g, *gf = g + hid, *gg = g + 2 * hid, *go = g + 3 * hid;
        ROW_LOOP(j, hid,
                 vf i = load(gi + j) * splat(0.5f) + splat(0.5f);
                 vf f = load(gf + j) * splat(0.5f) + splat(0.5f);
                 vf o = load(go + j) * splat(0.5f) + splat(0.5f);
                 store(gi + j, i); store(gf + j, f); store(go + j, o);
                 store(cn + j, f * load(cp + j) + i * load(gg + j)),
                 float i = gi[j] * 0.5f + 0.5f; float f = gf[j] * 0.5f + 0.5f;
                 float o = go[j] * 0.5f + 0.5f;
                 gi[j] = i; gf[j] = f; go[j] = o; cn[j] = f * cp[j] + i * gg[j]);
        tanh_span(hn, cn, hid);
        ROW_LOOP(j, hid, store(hn + j, load(go + j) * load(hn + j)), hn[j] = go[j] * hn[j]);
    }
}

/* dc_prev may be dc itself: every element is read before it is written. */
RNN_CLONES static void lstm_backward_f32(const float *gates, const float *c_prev, const float *c,
                                            const float *dh, const float *dc, float *dgates,
                                            float *dc_prev, I rows, I hid)
{
    float tc[BLOCK];
    for (I n = 0; n < rows; n++)
        for (I j0 = 0; j0 < hid; j0 += BLOCK) {
            const I len = hid - j0 < BLOCK ? hid - j0 : BLOCK, at = n * hid + j0;
            const float *g = gates + n * 4 * hid + j0, *cp = c_prev + at, *vdh = dh + at, *vdc = dc + at;
            const float *gi = g, *gf = g + hid, *gg = g + 2 * hid, *go = g + 3 * hid;
            float *d = dgates + n * 4 * hid + j0, *dcp = dc_prev + at;
            float *di = d, *df = d + hid, *dg = d + 2 * hid, *dO = d + 3 * hid;
            tanh_span(tc, c + at, len);
            ROW_LOOP(j, len,
                     const vf one = splat(1.0f);
                     vf i = load(gi + j); vf f = load(gf + j); vf gv = load(gg + j); vf o = load(go + j);
                     vf t = load(tc + j); vf e = load(vdh + j);
                     vf dct = load(vdc + j) + e * o * (one - t * t);
                     store(di + j, dct * gv * i * (one - i));
                     store(df + j, dct * load(cp + j) * f * (one - f));
                     store(dg + j, dct * i * (one - gv * gv));
                     store(dO + j, e * t * o * (one - o));
                     store(dcp + j, dct * f),
                     float i = gi[j]; float f = gf[j]; float gv = gg[j]; float o = go[j];
                     float t = tc[j]; float e = vdh[j];
                     float dct = vdc[j] + e * o * (1.0f - t * t);
                     di[j] = dct * gv * i * (1.0f - i);
                     df[j] = dct * cp[j] * f * (1.0f - f);
                     dg[j] = dct * i * (1.0f - gv * gv);
                     dO[j] = e * t * o * (1.0f - o);
                     dcp[j] = dct * f);
        }
}

/* ---------------------------------------------------------------- GRU (gate order r, z, n) */
RNN_CLONES static void gru_f32(const float *xw, const float *hw, const float *b,
                                  const float *h_prev, float *gates, float *h, I rows, I hid)
{
    for (I n = 0; n < rows; n++) {
        const float *x = xw + n * 3 * hid, *y = hw ? hw + n * 3 * hid : NULL, *hp = h_prev + n * hid;
        float *g = gates + n * 4 * hid, *out = h + n * hid;
        for (int k = 0; k < 2; k++) {  /* r, z: sigmoid(a) = 0.5 + 0.5 tanh(a / 2) */
            const float *xk = x + k * hid, *yk = y ? y + k * hid : NULL, *bk = b ? b + k * hid : NULL;
            float *gk = g + k * hid;
            ROW_LOOP(j, hid,
                     vf a = load(xk + j); if (yk) a += load(yk + j); if (bk) a += load(bk + j);
                     store(gk + j, a * splat(0.5f)),
                     float a = xk[j]; if (yk) a += yk[j]; if (bk) a += bk[j]; gk[j] = a * 0.5f);
        }
        tanh_span(g, g, 2 * hid);
        const float *xn = x + 2 * hid, *yn = y ? y + 2 * hid : NULL, *bn = b ? b + 2 * hid : NULL;
        float *gr = g, *gz = g + hid, *gn = g + 2 * hid, *ghn = g + 3 * hid;
        ROW_LOOP(j, hid,
                 vf r = load(gr + j) * splat(0.5f) + splat(0.5f);
                 vf z = load(gz + j) * splat(0.5f) + splat(0.5f);
                 vf hn = yn ? load(yn + j) : splat(0.0f); if (bn) hn += load(bn + j);
                 store(gr + j, r); store(gz + j, z); store(ghn + j, hn);
                 store(gn + j, load(xn + j) + r * hn),
                 float r = gr[j] * 0.5f + 0.5f; float z = gz[j] * 0.5f + 0.5f;
                 float hn = yn ? yn[j] : 0.0f; if (bn) hn += bn[j];
                 gr[j] = r; gz[j] = z; ghn[j] = hn; gn[j] = xn[j] + r * hn);
        tanh_span(gn, gn, hid);
        ROW_LOOP(j, hid,
                 vf z = load(gz + j);
                 store(out + j, (splat(1.0f) - z) * load(gn + j) + z * load(hp + j)),
                 float z = gz[j]; out[j] = (1.0f - z) * gn[j] + z * hp[j]);
    }
}

/* dh_prev may be dh itself: every element is read before it is written. */
RNN_CLONES static void gru_backward_f32(const float *gates, const float *h_prev, const float *dh,
                                           float *dxw, float *dhw, float *dh_prev, I rows, I hid)
{
    for (I n = 0; n < rows; n++) {
        const float *g = gates + n * 4 * hid, *hp = h_prev + n * hid, *vdh = dh + n * hid;
        const float *gr = g, *gz = g + hid, *gn = g + 2 * hid, *ghn = g + 3 * hid;
        float *dx = dxw + n * 3 * hid, *dy = dhw + n * 3 * hid, *dhp = dh_prev + n * hid;
        ROW_LOOP(j, hid,
                 const vf one = splat(1.0f);
                 vf r = load(gr + j); vf z = load(gz + j); vf nn = load(gn + j); vf hn = load(ghn + j);
                 vf e = load(vdh + j);
                 vf dn = e * (one - z) * (one - nn * nn);
                 vf dz = e * (load(hp + j) - nn) * z * (one - z);
                 vf dr = dn * hn * r * (one - r);
                 store(dx + j, dr); store(dx + hid + j, dz); store(dx + 2 * hid + j, dn);
                 store(dy + j, dr); store(dy + hid + j, dz); store(dy + 2 * hid + j, dn * r);
                 store(dhp + j, e * z),
                 float r = gr[j]; float z = gz[j]; float nn = gn[j]; float hn = ghn[j]; float e = vdh[j];
                 float dn = e * (1.0f - z) * (1.0f - nn * nn);
                 float dz = e * (hp[j] - nn) * z * (1.0f - z);
                 float dr = dn * hn * r * (1.0f - r);
                 dx[j] = dr; dx[hid + j] = dz; dx[2 * hid + j] = dn;
                 dy[j] = dr; dy[hid + j] = dz; dy[2 * hid + j] = dn * r;
                 dhp[j] = e * z);
    }
}

/* ---------------------------------------------------------------- float64 */
static void rnn_f64(const double *xw, const double *hw, const double *b, double *h, I rows, I hid,
                    int relu)
{
    for (I n = 0; n < rows; n++)
        for (I j = 0; j < hid; j++) {
            I at = n * hid + j;
            double a = xw[at] + (hw ? hw[at] : 0.0) + (b ? b[j] : 0.0);
            h[at] = relu ? (a > 0.0 ? a : 0.0) : tanh(a);
        }
}

static void lstm_f64(const double *xw, const double *hw, const double *b, const double *c_prev,
                     double *gates, double *c, double *h, I rows, I hid)
{
    for (I n = 0; n < rows; n++)
        for (I j = 0; j < hid; j++) {
            double a[4];
            for (int k = 0; k < 4; k++) {
                I at = n * 4 * hid + k * hid + j;
                a[k] = xw[at] + (hw ? hw[at] : 0.0) + (b ? b[k * hid + j] : 0.0);
            }
            double gi = sigmoid_d(a[0]), gf = sigmoid_d(a[1]), gg = tanh(a[2]), go = sigmoid_d(a[3]);
            double *g = gates + n * 4 * hid + j;
            g[0] = gi; g[hid] = gf; g[2 * hid] = gg; g[3 * hid] = go;
            double cn = gf * c_prev[n * hid + j] + gi * gg;
            c[n * hid + j] = cn;
            h[n * hid + j] = go * tanh(cn);
        }
}

static void lstm_backward_f64(const double *gates, const double *c_prev, const double *c,
                              const double *dh, const double *dc, double *dgates, double *dc_prev,
                              I rows, I hid)
{
    for (I n = 0; n < rows; n++)
        for (I j = 0; j < hid; j++) {
            const double *g = gates + n * 4 * hid + j;
            double *d = dgates + n * 4 * hid + j;
            I at = n * hid + j;
            double gi = g[0], gf = g[hid], gg = g[2 * hid], go = g[3 * hid];
            double tc = tanh(c[at]), vdh = dh[at];
            double dct = dc[at] + vdh * go * (1.0 - tc * tc);
            d[0] = dct * gg * gi * (1.0 - gi);
            d[hid] = dct * c_prev[at] * gf * (1.0 - gf);
            d[2 * hid] = dct * gi * (1.0 - gg * gg);
            d[3 * hid] = vdh * tc * go * (1.0 - go);
            dc_prev[at] = dct * gf;
        }
}

static void gru_f64(const double *xw, const double *hw, const double *b, const double *h_prev,
                    double *gates, double *h, I rows, I hid)
{
    for (I n = 0; n < rows; n++)
        for (I j = 0; j < hid; j++) {
            const double *x = xw + n * 3 * hid + j, *y = hw ? hw + n * 3 * hid + j : NULL;
            double ar = x[0] + (y ? y[0] : 0.0) + (b ? b[j] : 0.0);
            double az = x[hid] + (y ? y[hid] : 0.0) + (b ? b[hid + j] : 0.0);
            double hn = (y ? y[2 * hid] : 0.0) + (b ? b[2 * hid + j] : 0.0);
            double r = sigmoid_d(ar), z = sigmoid_d(az), nn = tanh(x[2 * hid] + r * hn);
            double *g = gates + n * 4 * hid + j;
            g[0] = r; g[hid] = z; g[2 * hid] = nn; g[3 * hid] = hn;
            h[n * hid + j] = (1.0 - z) * nn + z * h_prev[n * hid + j];
        }
}

static void gru_backward_f64(const double *gates, const double *h_prev, const double *dh,
                             double *dxw, double *dhw, double *dh_prev, I rows, I hid)
{
    for (I n = 0; n < rows; n++)
        for (I j = 0; j < hid; j++) {
            const double *g = gates + n * 4 * hid + j;
            double *dx = dxw + n * 3 * hid + j, *dy = dhw + n * 3 * hid + j;
            I at = n * hid + j;
            double r = g[0], z = g[hid], nn = g[2 * hid], hn = g[3 * hid], vdh = dh[at];
            double dn = vdh * (1.0 - z) * (1.0 - nn * nn);
            double dz = vdh * (h_prev[at] - nn) * z * (1.0 - z);
            double dr = dn * hn * r * (1.0 - r);
            dx[0] = dr; dx[hid] = dz; dx[2 * hid] = dn;
            dy[0] = dr; dy[hid] = dz; dy[2 * hid] = dn * r;
            dh_prev[at] = vdh * z;
        }
}

/* ---------------------------------------------------------------- whole sequences (float32) */
/* All T steps of one direction in one call, for LSTM and GRU. The hidden units are split over
 * the threads in chunks of 16; each thread owns its units' gate columns: per step it multiplies
 * h_{t-1} by its own slice of W_hh^T (packed once per call, own micro-kernel: a BLAS call per
 * slice would fork and join its own threads every step) and runs the cell on its units while
 * the gates are still in its cache. The threads meet once per step, when the new h is complete.
 *
 * The backward splits the same way: each thread turns its units' dh into their dgates, then
 * multiplies those gate columns by the matching rows of W_hh, a partial dh_{t-1} over all units;
 * the next step sums the threads' partials in thread order (deterministic for a fixed thread
 * count). Partials alternate between two buffers, so one meeting per step suffices there too. */
#include <pthread.h>
#include <sched.h>

#define NR 16 /* columns of a packed weight panel: two vectors */
#define MR 6  /* rows of a micro-tile: 12 accumulators, 2 panel vectors and a broadcast in 16 registers */

/* C[mr x 16] = [A1 | A2][mr x (K1 + K2)] (row strides lda1, lda2) times one packed panel
 * B[K1 + K2][16]; C row stride ldc. Two sources, so that a step's h_{t-1} and x_t multiply their
 * weights in one pass into the same accumulators. */
INLINE void tile(int mr, I K1, const float *A1, I lda1, I K2, const float *A2, I lda2, const float *B, float *C,
                 I ldc)
{
    vf acc0[MR], acc1[MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) acc0[r] = acc1[r] = splat(0.0f);
    for (I k = 0; k < K1; k++) {
        const vf b0 = load(B + k * NR), b1 = load(B + k * NR + W);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            const float a = A1[r * lda1 + k]; /* scalar times vector: one vbroadcastss */
            acc0[r] += a * b0;
            acc1[r] += a * b1;
        }
    }
    B += K1 * NR;
    for (I k = 0; k < K2; k++) {
        const vf b0 = load(B + k * NR), b1 = load(B + k * NR + W);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            const float a = A2[r * lda2 + k];
            acc0[r] += a * b0;
            acc1[r] += a * b1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        store(C + r * ldc, acc0[r]);
        store(C + r * ldc + W, acc1[r]);
    }
}

/* C[M x 16 panels] = [A1 | A2][M x (K1 + K2)] times ``panels`` packed panels, each ``bstride``
 * floats after the last. */
INLINE void gemm_panels2(I M, I K1, const float *A1, I lda1, I K2, const float *A2, I lda2, const float *B,
                         I bstride, I panels, float *C, I ldc)
{
    for (I p = 0; p < panels; p++) {
        const float *bp = B + p * bstride;
        float *cp = C + p * NR;
        I m = 0;
        for (; m + MR <= M; m += MR)
            tile(MR, K1, A1 + m * lda1, lda1, K2, A2 + m * lda2, lda2, bp, cp + m * ldc, ldc);
        const float *a1 = A1 + m * lda1, *a2 = A2 + m * lda2;
        float *c = cp + m * ldc;
        switch (M - m) {
        case 1: tile(1, K1, a1, lda1, K2, a2, lda2, bp, c, ldc); break;
        case 2: tile(2, K1, a1, lda1, K2, a2, lda2, bp, c, ldc); break;
        case 3: tile(3, K1, a1, lda1, K2, a2, lda2, bp, c, ldc); break;
        case 4: tile(4, K1, a1, lda1, K2, a2, lda2, bp, c, ldc); break;
        case 5: tile(5, K1, a1, lda1, K2, a2, lda2, bp, c, ldc); break;
        default: break;
        }
    }
}

/* C[M x 16 panels] = A[M x K] times ``panels`` packed panels stored one after another. */
INLINE void gemm_panels(I M, I K, const float *A, I lda, const float *B, I panels, float *C, I ldc)
{
    gemm_panels2(M, K, A, lda, 0, A, lda, B, K * NR, panels, C, ldc);
}

/* C[mr x 16] += A^T B over Kn: A[k * ak + r] for row r (consecutive floats of one of Kn rows
 * of A), B one packed panel [Kn][16]; C row stride ldc. */
INLINE void tile_t(int mr, I Kn, const float *A, I ak, const float *B, float *C, I ldc)
{
    vf acc0[MR], acc1[MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        acc0[r] = load(C + r * ldc);
        acc1[r] = load(C + r * ldc + W);
    }
    for (I k = 0; k < Kn; k++) {
        const vf b0 = load(B + k * NR), b1 = load(B + k * NR + W);
        const float *a = A + k * ak;
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            acc0[r] += a[r] * b0;
            acc1[r] += a[r] * b1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        store(C + r * ldc, acc0[r]);
        store(C + r * ldc + W, acc1[r]);
    }
}

/* C[rows x 16 panels] += A^T B: A's columns [0, rows) over Kn rows of stride ak, B ``panels``
 * packed panels [Kn][16] one after another. Rows outer, so a tile's A stays in L1 over the panels. */
INLINE void gemm_t(I rows, I Kn, const float *A, I ak, const float *B, I panels, float *C, I ldc)
{
    for (I r = 0; r < rows; r += MR) {
        const int mr = rows - r < MR ? (int)(rows - r) : MR;
        for (I p = 0; p < panels; p++) {
            const float *bp = B + p * Kn * NR;
            float *c = C + r * ldc + p * NR;
            switch (mr) {
            case 6: tile_t(6, Kn, A + r, ak, bp, c, ldc); break;
            case 5: tile_t(5, Kn, A + r, ak, bp, c, ldc); break;
            case 4: tile_t(4, Kn, A + r, ak, bp, c, ldc); break;
            case 3: tile_t(3, Kn, A + r, ak, bp, c, ldc); break;
            case 2: tile_t(2, Kn, A + r, ak, bp, c, ldc); break;
            default: tile_t(1, Kn, A + r, ak, bp, c, ldc); break;
            }
        }
    }
}

/* src (N rows of stride ld, ``cols`` columns) as 16-column panels [N][16], zero past cols. */
static void pack_rows(const float *src, I N, I cols, I ld, I padded, float *out)
{
    for (I p = 0; p < padded / NR; p++)
        for (I m = 0; m < N; m++) {
            float *dst = out + (p * N + m) * NR;
            const float *row = src + m * ld;
            for (int u = 0; u < NR; u++) {
                I col = p * NR + u;
                dst[u] = col < cols ? row[col] : 0.0f;
            }
        }
}

/* A barrier that spins (the threads meet every few hundred microseconds), yielding the core
 * after a while so that an oversubscribed machine still makes progress. */
typedef struct {
    int count, generation, parties;
} Barrier;

static void barrier_wait(Barrier *b)
{
    if (b->parties == 1) return;
    int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->parties) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (spins < 20000) __builtin_ia32_pause();
        else sched_yield();
    }
}

/* One call's geometry and operands. Gate blocks G: 4 for the LSTM (i, f, g, o), 3 for the GRU's
 * W_hh (r, z, n); the GRU keeps 4 blocks of gates (r, z, n, hn). */
typedef struct {
    int gru, G, threads, reverse, backward;
    I T, N, H, chunks, slice, hpad; /* slice: a thread's padded unit count; hpad: H padded to 16 */
    const float *xw, *w, *b;        /* forward: xw (T, N, G*H), w (G*H, H), b (G*H) or NULL */
    /* Forward from the inputs themselves (xw NULL): x (T, N, IN), w_ih (G*H, IN). Then the
     * GRU's b is b_hh and b_ih its input bias (the LSTM's b is already b_ih + b_hh). */
    const float *x, *wih, *bih;
    I IN, xts, xld; /* x_t at x + t * xts, its rows xld apart: time-major (N * IN, IN) or batch-major (IN, T * IN) */
    /* The forward's accumulator blocks: block q sums kh[q] columns of h_{t-1} times W_hh's gate
     * block gh[q] and kx[q] columns of x_t times W_ih's block gx[q]. The GRU from its inputs
     * keeps W_hn h and W_in x apart (r multiplies only the first), so it has 4 blocks. */
    int nb, gh[4], gx[4];
    I kh[4], kx[4];
    float *hs, *cs, *gates;         /* (T+1, N, H), (T+1, N, H) (LSTM only), (T, N, 4H | 4H); cs and
                                     * gates NULL where no backward follows (c then in scratch) */
    const float *dout;              /* backward: (T, N, dstride) or batch-major (N, T, dstride), this
                                     * direction's dh at doff; row (t, m) at t * dts + m * dms */
    I dstride, doff, dts, dms;
    float *dx, *dhw;                /* (T, N, G*H): dgates (LSTM: one array), GRU: dxw and dhw; each may
                                     * be NULL where the weight gradients are made here */
    /* Backward with the weight gradients (wg: x given): dw_ih (G*H, IN), dw_hh (G*H, H), the
     * bias sums db (the LSTM's dgates; the GRU's dhw) and db_ih (the GRU's dxw), each NULL
     * where not wanted; xpad: IN padded to 16. */
    int wg;
    I xpad;
    float *dwih, *dwhh, *db, *dbih;
    float *scratch;
    I per_thread;
    Barrier barrier;
    int go; /* lanes wait for 1 (run) or -1 (quit) */
} Seq;

typedef struct {
    Seq *s;
    int tid;
} Lane;

/* The thread's units [j0, j1) and its chunk count. */
static void units(const Seq *s, int tid, I *j0, I *j1, I *nch)
{
    I c0 = s->chunks * tid / s->threads, c1 = s->chunks * (tid + 1) / s->threads;
    *j0 = c0 * NR;
    *j1 = c1 * NR < s->H ? c1 * NR : s->H;
    *nch = c1 - c0;
}

/* Floats of scratch one thread needs, and the partial dh buffers all threads share (backward). */
static I per_thread_floats(const Seq *s, int G, I N, I H, I slice, I hpad, int backward)
{
    if (!backward) {
        I packed = 0;
        for (int q = 0; q < s->nb; q++) packed += (s->kh[q] + s->kx[q]) * slice;
        return packed + N * s->nb * slice + N * slice; /* packed weights, gate sums, own c */
    }
    /* packed W_hh, dgates (the GRU's with its dn block where wg), dc|dh direct, dh row */
    I f = hpad * G * slice + N * (s->gru && s->wg ? 4 : G) * slice + N * slice * 2 + slice;
    if (s->wg) /* [h_prev | x_t] panels, the dW_hh and dW_ih sums, the bias sums */
        f += (hpad + s->xpad) * N + G * slice * (hpad + s->xpad) + 2 * G * slice;
    return f;
}

static I shared_floats(I N, I hpad, int threads, int backward) { return backward ? 2 * threads * N * hpad : 0; }

/* The weights of the thread's units, per accumulator block, as 16-column panels (zero past j1):
 * kh rows of W_hh^T's columns, then kx rows of W_ih^T's. */
static void pack_forward(const Seq *s, I j0, I j1, I nch, float *out)
{
    const I H = s->H;
    for (int q = 0; q < s->nb; q++) {
        const I kh = s->kh[q], kx = s->kx[q];
        for (I c = 0; c < nch; c++) {
            float *panel = out + c * (kh + kx) * NR;
            for (int u = 0; u < NR; u++) {
                I j = j0 + c * NR + u;
                const float *rh = j < j1 ? s->w + (s->gh[q] * H + j) * H : NULL;
                const float *rx = j < j1 && kx ? s->wih + (s->gx[q] * H + j) * s->IN : NULL;
                for (I kk = 0; kk < kh; kk++) panel[kk * NR + u] = rh ? rh[kk] : 0.0f;
                for (I kk = 0; kk < kx; kk++) panel[(kh + kk) * NR + u] = rx ? rx[kk] : 0.0f;
            }
        }
        out += nch * (kh + kx) * NR;
    }
}

/* The rows of W_hh of the thread's gate columns (row k * slice + jj for unit j0 + jj of block
 * k; zero past j1), as 16-column panels over H (zero past H). */
static void pack_backward(const Seq *s, I j0, I j1, float *out)
{
    const I H = s->H, K = s->G * s->slice;
    for (I p = 0; p < s->hpad / NR; p++)
        for (int k = 0; k < s->G; k++)
            for (I jj = 0; jj < s->slice; jj++) {
                float *dst = out + (p * K + k * s->slice + jj) * NR;
                I j = j0 + jj;
                for (int u = 0; u < NR; u++) {
                    I col = p * NR + u;
                    dst[u] = j < j1 && col < H ? s->w[(k * H + j) * H + col] : 0.0f;
                }
            }
}

INLINE void step_index(const Seq *s, I k, I *t, I *prev, I *cur)
{
    *t = s->reverse ? s->T - 1 - k : k;
    *prev = s->reverse ? *t + 1 : *t;
    *cur = s->reverse ? *t : *t + 1;
}

RNN_CLONES static void forward_lane(Seq *s, int tid)
{
    I j0, j1, nch;
    units(s, tid, &j0, &j1, &nch);
    const I N = s->N, H = s->H, G = s->G, SP = s->slice, w = j1 - j0, ld = s->nb * SP;
    float *pack = s->scratch + tid * s->per_thread, *acc = pack, *own_c;
    const float *blocks[4];
    for (int q = 0; q < s->nb; q++) {
        blocks[q] = acc;
        acc += nch * (s->kh[q] + s->kx[q]) * NR;
    }
    acc = pack;
    for (int q = 0; q < s->nb; q++) acc += (s->kh[q] + s->kx[q]) * SP;
    own_c = acc + N * ld; /* this thread's c where no backward keeps every step's */
    pack_forward(s, j0, j1, nch, pack);
    for (I k = 0; k < s->T; k++) {
        I t, prev, cur;
        step_index(s, k, &t, &prev, &cur);
        float *hp = s->hs + prev * N * H, *hc = s->hs + cur * N * H;
        float *cp = s->cs ? s->cs + prev * N * H : NULL, *cc = s->cs ? s->cs + cur * N * H : NULL;
        const float *xt = s->x ? s->x + t * s->xts : hp;
        if (k == 0) { /* zero initial states: no product with h, and this thread's units start at zero */
            for (I m = 0; m < N; m++) {
                memset(hp + m * H + j0, 0, (size_t)w * sizeof(float));
                if (cp) memset(cp + m * H + j0, 0, (size_t)w * sizeof(float));
                else if (!s->gru) memset(own_c + m * SP, 0, (size_t)w * sizeof(float));
            }
        }
        for (int q = 0; q < s->nb; q++) { /* block q's sums start at column q * SP */
            const I kh = s->kh[q], kx = s->kx[q];
            if (k == 0) /* the h part is zero: its panel rows are skipped */
                gemm_panels2(N, 0, hp, H, kx, xt, s->xld, blocks[q] + kh * NR, (kh + kx) * NR, nch, acc + q * SP, ld);
            else
                gemm_panels2(N, kh, hp, H, kx, xt, s->xld, blocks[q], (kh + kx) * NR, nch, acc + q * SP, ld);
        }
        for (I m = 0; m < N; m++) {
            float *a = acc + m * ld;
            const float *x = s->xw ? s->xw + (t * N + m) * G * H + j0 : NULL, *b = s->b ? s->b + j0 : NULL;
            float *g = s->gates ? s->gates + (t * N + m) * 4 * H + j0 : NULL;
            const I at = m * H + j0;
            if (!s->gru) {
                for (int q = 0; q < 4; q++) {
                    const float sc = q == 2 ? 1.0f : 0.5f;
                    const float *xq = x ? x + q * H : NULL, *bq = b ? b + q * H : NULL;
                    float *aq = a + q * SP;
                    ROW_LOOP(j, w,
                             vf v = load(aq + j); if (xq) v = load(xq + j) + v; if (bq) v += load(bq + j);
                             store(aq + j, v * splat(sc)),
                             float v = aq[j]; if (xq) v = xq[j] + v; if (bq) v += bq[j]; aq[j] = v * sc);
                }
                tanh_span(a, a, 4 * SP);
                float *ai = a, *af = a + SP, *ag = a + 2 * SP, *ao = a + 3 * SP;
                const float *vcp = cp ? cp + at : own_c + m * SP;
                float *vc = cc ? cc + at : own_c + m * SP, *vh = hc + at;
                ROW_LOOP(j, w,
                         vf i = load(ai + j) * splat(0.5f) + splat(0.5f);
                         vf f = load(af + j) * splat(0.5f) + splat(0.5f);
                         vf gv = load(ag + j);
                         vf o = load(ao + j) * splat(0.5f) + splat(0.5f);
                         if (g) { store(g + j, i); store(g + H + j, f); store(g + 2 * H + j, gv); store(g + 3 * H + j, o); }
                         store(ao + j, o);
                         store(vc + j, f * load(vcp + j) + i * gv),
                         float i = ai[j] * 0.5f + 0.5f; float f = af[j] * 0.5f + 0.5f; float gv = ag[j];
                         float o = ao[j] * 0.5f + 0.5f;
                         if (g) { g[j] = i; g[H + j] = f; g[2 * H + j] = gv; g[3 * H + j] = o; }
                         ao[j] = o; vc[j] = f * vcp[j] + i * gv);
                tanh_span(vh, vc, w);
                ROW_LOOP(j, w, store(vh + j, load(ao + j) * load(vh + j)), vh[j] = ao[j] * vh[j]);
            } else {
                const float *bi = s->bih ? s->bih + j0 : NULL;
                for (int q = 0; q < 2; q++) {
                    const float *xq = x ? x + q * H : NULL, *bq = b ? b + q * H : NULL, *iq = bi ? bi + q * H : NULL;
                    float *aq = a + q * SP;
                    ROW_LOOP(j, w,
                             vf v = load(aq + j); if (xq) v = load(xq + j) + v; if (bq) v += load(bq + j);
                             if (iq) v += load(iq + j);
                             store(aq + j, v * splat(0.5f)),
                             float v = aq[j]; if (xq) v = xq[j] + v; if (bq) v += bq[j]; if (iq) v += iq[j];
                             aq[j] = v * 0.5f);
                }
                tanh_span(a, a, 2 * SP);
                float *ar = a, *az = a + SP, *an = a + 2 * SP;
                const float *xn = x ? x + 2 * H : a + 3 * SP; /* W_in x_t: from xw, else the 4th block */
                const float *bn = b ? b + 2 * H : NULL, *bin = bi ? bi + 2 * H : NULL, *vhp = hp + at;
                float *vh = hc + at;
                ROW_LOOP(j, w,
                         vf r = load(ar + j) * splat(0.5f) + splat(0.5f);
                         vf z = load(az + j) * splat(0.5f) + splat(0.5f);
                         vf hn = load(an + j); if (bn) hn += load(bn + j);
                         vf xv = load(xn + j); if (bin) xv += load(bin + j);
                         if (g) { store(g + j, r); store(g + H + j, z); store(g + 3 * H + j, hn); }
                         store(az + j, z);
                         store(an + j, xv + r * hn),
                         float r = ar[j] * 0.5f + 0.5f; float z = az[j] * 0.5f + 0.5f;
                         float hn = an[j]; if (bn) hn += bn[j];
                         float xv = xn[j]; if (bin) xv += bin[j];
                         if (g) { g[j] = r; g[H + j] = z; g[3 * H + j] = hn; }
                         az[j] = z; an[j] = xv + r * hn);
                tanh_span(an, an, w);
                ROW_LOOP(j, w,
                         vf z = load(az + j); vf nv = load(an + j);
                         if (g) store(g + 2 * H + j, nv);
                         store(vh + j, (splat(1.0f) - z) * nv + z * load(vhp + j)),
                         float z = az[j]; float nv = an[j];
                         if (g) g[2 * H + j] = nv;
                         vh[j] = (1.0f - z) * nv + z * vhp[j]);
            }
        }
        barrier_wait(&s->barrier); /* the new h is complete before any thread multiplies it */
    }
}

RNN_CLONES static void backward_lane(Seq *s, int tid)
{
    I j0, j1, nch;
    units(s, tid, &j0, &j1, &nch);
    const I N = s->N, H = s->H, G = s->G, SP = s->slice, w = j1 - j0, K = G * SP, hp = s->hpad, IN = s->IN;
    const I Kd = s->gru && s->wg ? 4 * SP : K; /* the GRU keeps dn apart for dW_in: a 4th block */
    const I xp = s->xpad;
    float *pack = s->scratch + tid * s->per_thread, *d = pack + hp * K, *carry = d + N * Kd;
    float *row = carry + 2 * N * SP; /* carry: dc (LSTM) or dh * z (GRU) of this thread's units */
    float *bh = row + SP, *bx = bh + hp * N, *cwh = bx + xp * N, *cwx = cwh + K * hp, *dbh = cwx + K * xp;
    float *dbx = dbh + K; /* [h_prev | x_t] panels, dW_hh and dW_ih rows, bias sums (wg only) */
    float *partials = s->scratch + s->threads * s->per_thread; /* [2][threads][N][hpad] */
    pack_backward(s, j0, j1, pack);
    memset(d, 0, (size_t)(N * Kd) * sizeof(float));
    memset(carry, 0, (size_t)(N * SP) * sizeof(float));
    if (s->wg) memset(cwh, 0, (size_t)(K * (hp + xp) + 2 * K) * sizeof(float));
    int par = 0;
    for (I k = s->T - 1; k >= 0; k--) {
        I t, prev, cur;
        step_index(s, k, &t, &prev, &cur);
        const int later = k < s->T - 1; /* a later step passed its gradient back */
        for (I m = 0; m < N; m++) {
            const float *e = s->dout + t * s->dts + m * s->dms + s->doff + j0;
            float *dh = row, *cy = carry + m * SP;
            if (later) {
                ROW_LOOP(j, w, store(dh + j, load(e + j)), dh[j] = e[j]);
                if (s->gru) ROW_LOOP(j, w, store(dh + j, load(dh + j) + load(cy + j)), dh[j] += cy[j]);
                for (int th = 0; th < s->threads; th++) {
                    const float *pt = partials + ((par * s->threads + th) * N + m) * hp + j0;
                    ROW_LOOP(j, w, store(dh + j, load(dh + j) + load(pt + j)), dh[j] += pt[j]);
                }
            } else {
                ROW_LOOP(j, w, store(dh + j, load(e + j)), dh[j] = e[j]);
            }
            const float *g = s->gates + (t * N + m) * 4 * H + j0;
            float *dr = d + m * Kd;
            const I at = m * H + j0;
            if (!s->gru) {
                const float *gi = g, *gf = g + H, *gg = g + 2 * H, *go = g + 3 * H;
                const float *vcp = s->cs + prev * N * H + at, *vc = s->cs + cur * N * H + at;
                float *tc = dr + 3 * SP; /* tanh(c) waits in the o block, which is written last */
                tanh_span(tc, vc, w);
                float *o1 = s->dx ? s->dx + (t * N + m) * 4 * H + j0 : NULL;
                float *pi = dr, *pf = dr + SP, *pg = dr + 2 * SP, *po = dr + 3 * SP;
                ROW_LOOP(j, w,
                         const vf one = splat(1.0f);
                         vf i = load(gi + j); vf f = load(gf + j); vf gv = load(gg + j); vf o = load(go + j);
                         vf tt = load(tc + j); vf ev = load(dh + j);
                         vf dct = load(cy + j) + ev * o * (one - tt * tt);
                         vf vi_ = dct * gv * i * (one - i); vf vf_ = dct * load(vcp + j) * f * (one - f);
                         vf vg = dct * i * (one - gv * gv); vf vo = ev * tt * o * (one - o);
                         if (o1) { store(o1 + j, vi_); store(o1 + H + j, vf_); store(o1 + 2 * H + j, vg);
                                   store(o1 + 3 * H + j, vo); }
                         store(pi + j, vi_); store(pf + j, vf_); store(pg + j, vg); store(po + j, vo);
                         store(cy + j, dct * f),
                         float i = gi[j]; float f = gf[j]; float gv = gg[j]; float o = go[j];
                         float tt = tc[j]; float ev = dh[j];
                         float dct = cy[j] + ev * o * (1.0f - tt * tt);
                         float vi_ = dct * gv * i * (1.0f - i); float vf_ = dct * vcp[j] * f * (1.0f - f);
                         float vg = dct * i * (1.0f - gv * gv); float vo = ev * tt * o * (1.0f - o);
                         if (o1) { o1[j] = vi_; o1[H + j] = vf_; o1[2 * H + j] = vg; o1[3 * H + j] = vo; }
                         pi[j] = vi_; pf[j] = vf_; pg[j] = vg; po[j] = vo;
                         cy[j] = dct * f);
            } else {
                const float *gr = g, *gz = g + H, *gn = g + 2 * H, *ghn = g + 3 * H;
                const float *vhp = s->hs + prev * N * H + at;
                float *x1 = s->dx ? s->dx + (t * N + m) * 3 * H + j0 : NULL;
                float *y1 = s->dhw ? s->dhw + (t * N + m) * 3 * H + j0 : NULL;
                float *pr = dr, *pz = dr + SP, *pn = dr + 2 * SP, *px = s->wg ? dr + 3 * SP : NULL;
                ROW_LOOP(j, w,
                         const vf one = splat(1.0f);
                         vf r = load(gr + j); vf z = load(gz + j); vf nn = load(gn + j); vf hn = load(ghn + j);
                         vf ev = load(dh + j);
                         vf dn = ev * (one - z) * (one - nn * nn);
                         vf dz = ev * (load(vhp + j) - nn) * z * (one - z);
                         vf dr_ = dn * hn * r * (one - r);
                         vf dnr = dn * r;
                         if (x1) { store(x1 + j, dr_); store(x1 + H + j, dz); store(x1 + 2 * H + j, dn); }
                         if (y1) { store(y1 + j, dr_); store(y1 + H + j, dz); store(y1 + 2 * H + j, dnr); }
                         if (px) store(px + j, dn);
                         store(pr + j, dr_); store(pz + j, dz); store(pn + j, dnr);
                         store(cy + j, ev * z),
                         float r = gr[j]; float z = gz[j]; float nn = gn[j]; float hn = ghn[j]; float ev = dh[j];
                         float dn = ev * (1.0f - z) * (1.0f - nn * nn);
                         float dz = ev * (vhp[j] - nn) * z * (1.0f - z);
                         float dr_ = dn * hn * r * (1.0f - r);
                         float dnr = dn * r;
                         if (x1) { x1[j] = dr_; x1[H + j] = dz; x1[2 * H + j] = dn; }
                         if (y1) { y1[j] = dr_; y1[H + j] = dz; y1[2 * H + j] = dnr; }
                         if (px) px[j] = dn;
                         pr[j] = dr_; pz[j] = dz; pn[j] = dnr;
                         cy[j] = ev * z);
            }
            if (s->wg) { /* the bias sums, row by row in a fixed order */
                ROW_LOOP(jj, K, store(dbh + jj, load(dbh + jj) + load(dr + jj)), dbh[jj] += dr[jj]);
                if (s->gru) {
                    ROW_LOOP(jj, 2 * SP, store(dbx + jj, load(dbx + jj) + load(dr + jj)), dbx[jj] += dr[jj]);
                    ROW_LOOP(jj, SP, store(dbx + 2 * SP + jj, load(dbx + 2 * SP + jj) + load(dr + 3 * SP + jj)),
                             dbx[2 * SP + jj] += dr[3 * SP + jj]);
                }
            }
        }
        if (s->wg) { /* this step's share of dW_hh = dgates^T h_prev and dW_ih = dgates^T x_t */
            pack_rows(s->x + t * s->xts, N, IN, s->xld, xp, bx);
            if (k > 0) { /* the first step's h_prev is the zero initial state */
                pack_rows(s->hs + prev * N * H, N, H, H, hp, bh);
                gemm_t(K, N, d, Kd, bh, hp / NR, cwh, hp);
            }
            if (s->gru) {
                gemm_t(2 * SP, N, d, Kd, bx, xp / NR, cwx, xp);
                gemm_t(SP, N, d + 3 * SP, Kd, bx, xp / NR, cwx + 2 * SP * xp, xp);
            } else {
                gemm_t(K, N, d, Kd, bx, xp / NR, cwx, xp);
            }
        }
        if (k > 0) { /* the gradient into the previous state (none into the zero initial one) */
            gemm_panels(N, K, d, Kd, pack, hp / NR, partials + ((1 - par) * s->threads + tid) * N * hp, hp);
            barrier_wait(&s->barrier);
            par = 1 - par;
        }
    }
    if (s->wg) /* this thread's rows of the weight gradients */
        for (int q = 0; q < G; q++)
            for (I jj = 0; jj < w; jj++) {
                const I r = q * SP + jj, out = q * H + j0 + jj;
                memcpy(s->dwhh + out * H, cwh + r * hp, (size_t)H * sizeof(float));
                memcpy(s->dwih + out * IN, cwx + r * xp, (size_t)IN * sizeof(float));
                if (s->db) s->db[out] = dbh[r];
                if (s->dbih) s->dbih[out] = s->gru ? dbx[r] : dbh[r];
            }
}

static void *lane_main(void *arg)
{
    Lane *l = arg;
    if (l->s->backward) backward_lane(l->s, l->tid);
    else forward_lane(l->s, l->tid);
    return NULL;
}

/* Threads actually used: no more than there are 16-unit chunks. */
#define MAX_LANES 64
static int seq_threads(I H, int threads)
{
    I chunks = (H + NR - 1) / NR;
    if (threads < 1) threads = 1;
    if (threads > MAX_LANES) threads = MAX_LANES;
    return threads < chunks ? threads : (int)chunks;
}

/* Where x_t and dout's rows lie: time-major (T, N, .) or batch-major (N, T, .). */
static void seq_layout(Seq *s, int batch_first)
{
    s->xts = batch_first ? s->IN : s->N * s->IN;
    s->xld = batch_first ? s->T * s->IN : s->IN;
    s->dts = batch_first ? s->dstride : s->N * s->dstride;
    s->dms = batch_first ? s->T * s->dstride : s->dstride;
}

/* IN: the input width where the forward projects the inputs itself, else 0 (xw given). */
static void seq_geometry(Seq *s, int gru, I N, I H, I IN, int threads, int backward)
{
    const int G = gru ? 3 : 4;
    s->gru = gru;
    s->IN = IN;
    s->wg = backward && IN > 0;
    s->xpad = (IN + NR - 1) / NR * NR;
    s->nb = gru && IN ? 4 : G;
    for (int q = 0; q < s->nb; q++) {
        s->gh[q] = s->gx[q] = q < G ? q : 2;
        s->kh[q] = q < 3 || !gru ? H : 0;
        s->kx[q] = IN && !(gru && q == 2) ? IN : 0; /* the GRU's W_hn h and W_in x stay apart */
    }
    s->G = G;
    s->N = N;
    s->H = H;
    s->backward = backward;
    s->threads = seq_threads(H, threads);
    s->chunks = (H + NR - 1) / NR;
    s->slice = ((s->chunks + s->threads - 1) / s->threads) * NR;
    s->hpad = s->chunks * NR;
    s->per_thread = per_thread_floats(s, G, N, H, s->slice, s->hpad, backward);
}

static I seq_scratch_floats(const Seq *s)
{
    return s->threads * s->per_thread + shared_floats(s->N, s->hpad, s->threads, s->backward);
}

/* Runs lanes 1.. in their own threads and lane 0 here. Every lane waits for the go before it
 * touches anything, so where a thread would not start the others quit and nothing has changed:
 * returns 0, or -1 then. */
static void *lane_start(void *arg)
{
    Lane *l = arg;
    int go;
    for (long spins = 0; (go = __atomic_load_n(&l->s->go, __ATOMIC_ACQUIRE)) == 0; spins++)
        if (spins > 2000) sched_yield();
    return go > 0 ? lane_main(arg) : NULL;
}

static int seq_run(Seq *s)
{
    pthread_t ids[MAX_LANES];
    Lane lanes[MAX_LANES];
    int started = 1;
    s->barrier = (Barrier){0, 0, s->threads};
    s->go = 0;
    for (int k = 0; k < s->threads; k++) lanes[k] = (Lane){s, k};
    for (; started < s->threads; started++)
        if (pthread_create(&ids[started], NULL, lane_start, &lanes[started]) != 0) break;
    int ok = started == s->threads;
    __atomic_store_n(&s->go, ok ? 1 : -1, __ATOMIC_RELEASE);
    if (ok) lane_main(&lanes[0]);
    for (int k = 1; k < started; k++) pthread_join(ids[k], NULL);
    return ok ? 0 : -1;
}

/* ---------------------------------------------------------------- argument handling */
#define MAX_ARGS 16

/* The buffers of one call: each C-contiguous, of one float format (4 or 8 bytes), writable where
 * asked, with the given element count; None allowed where optional. */
typedef struct {
    Py_buffer views[MAX_ARGS];
    int held[MAX_ARGS];
    int count;
    Py_ssize_t itemsize;
} Args;

static void release(Args *a)
{
    for (int i = 0; i < a->count; i++)
        if (a->held[i]) PyBuffer_Release(&a->views[i]);
}

/* Adds obj (None where optional) as the next buffer; returns its data pointer or NULL (None, or
 * an error with *failed set). */
static void *take(Args *a, PyObject *obj, const char *name, int writable, int optional,
                  Py_ssize_t count, int *failed)
{
    int i = a->count++;
    a->held[i] = 0;
    if (*failed) return NULL;
    if (obj == Py_None && optional) return NULL;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    Py_buffer *v = &a->views[i];
    if (PyObject_GetBuffer(obj, v, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s float buffer", name,
                     writable ? " writable" : "");
        *failed = 1;
        return NULL;
    }
    a->held[i] = 1;
    if (!v->format || (strcmp(v->format, "f") && strcmp(v->format, "d"))) {
        PyErr_Format(PyExc_TypeError, "%s: expected float32 or float64, got format '%s'", name,
                     v->format ? v->format : "?");
        *failed = 1;
        return NULL;
    }
    if (a->itemsize == 0) a->itemsize = v->itemsize;
    if (v->itemsize != a->itemsize || v->len != count * v->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd elements of the cell's dtype", name, count);
        *failed = 1;
        return NULL;
    }
    return v->buf;
}

static int sizes(I rows, I hid)
{
    if (rows < 0 || hid < 1) {
        PyErr_SetString(PyExc_ValueError, "rows must be >= 0 and hidden >= 1");
        return -1;
    }
    return 0;
}

static PyObject *py_rnn_cell(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo, *bo, *ho;
    I rows, hid;
    int relu;
    if (!PyArg_ParseTuple(args, "OOOOnnp", &xo, &yo, &bo, &ho, &rows, &hid, &relu) || sizes(rows, hid) < 0)
        return NULL;
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    void *h = take(&a, ho, "h", 1, 0, rows * hid, &failed);
    void *xw = take(&a, xo, "xw", 0, 0, rows * hid, &failed);
    void *hw = take(&a, yo, "hw", 0, 1, rows * hid, &failed);
    void *b = take(&a, bo, "bias_hh", 0, 1, hid, &failed);
    if (failed) { release(&a); return NULL; }
    Py_ssize_t size = a.itemsize;
    RELEASE_GIL
    if (size == 4) rnn_f32(xw, hw, b, h, rows, hid, relu);
    else rnn_f64(xw, hw, b, h, rows, hid, relu);
    REACQUIRE_GIL
    release(&a);
    Py_RETURN_NONE;
}

static PyObject *py_lstm_cell(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo, *bo, *cpo, *go, *co, *ho;
    I rows, hid;
    if (!PyArg_ParseTuple(args, "OOOOOOOnn", &xo, &yo, &bo, &cpo, &go, &co, &ho, &rows, &hid) ||
        sizes(rows, hid) < 0)
        return NULL;
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    void *c = take(&a, co, "c", 1, 0, rows * hid, &failed);
    void *xw = take(&a, xo, "xw", 0, 0, rows * 4 * hid, &failed);
    void *hw = take(&a, yo, "hw", 0, 1, rows * 4 * hid, &failed);
    void *b = take(&a, bo, "bias_hh", 0, 1, 4 * hid, &failed);
    void *cp = take(&a, cpo, "c_prev", 0, 0, rows * hid, &failed);
    void *g = take(&a, go, "gates", 1, 0, rows * 4 * hid, &failed);
    void *h = take(&a, ho, "h", 1, 0, rows * hid, &failed);
    if (failed) { release(&a); return NULL; }
    Py_ssize_t size = a.itemsize;
    RELEASE_GIL
    if (size == 4) lstm_f32(xw, hw, b, cp, g, c, h, rows, hid);
    else lstm_f64(xw, hw, b, cp, g, c, h, rows, hid);
    REACQUIRE_GIL
    release(&a);
    Py_RETURN_NONE;
}

static PyObject *py_lstm_cell_backward(PyObject *self, PyObject *args)
{
    PyObject *go, *cpo, *co, *dho, *dco, *dgo, *dcpo;
    I rows, hid;
    if (!PyArg_ParseTuple(args, "OOOOOOOnn", &go, &cpo, &co, &dho, &dco, &dgo, &dcpo, &rows, &hid) ||
        sizes(rows, hid) < 0)
        return NULL;
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    void *c = take(&a, co, "c", 0, 0, rows * hid, &failed);
    void *g = take(&a, go, "gates", 0, 0, rows * 4 * hid, &failed);
    void *cp = take(&a, cpo, "c_prev", 0, 0, rows * hid, &failed);
    void *dh = take(&a, dho, "dh", 0, 0, rows * hid, &failed);
    void *dc = take(&a, dco, "dc", 0, 0, rows * hid, &failed);
    void *dg = take(&a, dgo, "dgates", 1, 0, rows * 4 * hid, &failed);
    void *dcp = take(&a, dcpo, "dc_prev", 1, 0, rows * hid, &failed);
    if (failed) { release(&a); return NULL; }
    Py_ssize_t size = a.itemsize;
    RELEASE_GIL
    if (size == 4) lstm_backward_f32(g, cp, c, dh, dc, dg, dcp, rows, hid);
    else lstm_backward_f64(g, cp, c, dh, dc, dg, dcp, rows, hid);
    REACQUIRE_GIL
    release(&a);
    Py_RETURN_NONE;
}

static PyObject *py_gru_cell(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo, *bo, *hpo, *go, *ho;
    I rows, hid;
    if (!PyArg_ParseTuple(args, "OOOOOOnn", &xo, &yo, &bo, &hpo, &go, &ho, &rows, &hid) ||
        sizes(rows, hid) < 0)
        return NULL;
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    void *h = take(&a, ho, "h", 1, 0, rows * hid, &failed);
    void *xw = take(&a, xo, "xw", 0, 0, rows * 3 * hid, &failed);
    void *hw = take(&a, yo, "hw", 0, 1, rows * 3 * hid, &failed);
    void *b = take(&a, bo, "bias_hh", 0, 1, 3 * hid, &failed);
    void *hp = take(&a, hpo, "h_prev", 0, 0, rows * hid, &failed);
    void *g = take(&a, go, "gates", 1, 0, rows * 4 * hid, &failed);
    if (failed) { release(&a); return NULL; }
    Py_ssize_t size = a.itemsize;
    RELEASE_GIL
    if (size == 4) gru_f32(xw, hw, b, hp, g, h, rows, hid);
    else gru_f64(xw, hw, b, hp, g, h, rows, hid);
    REACQUIRE_GIL
    release(&a);
    Py_RETURN_NONE;
}

static PyObject *py_gru_cell_backward(PyObject *self, PyObject *args)
{
    PyObject *go, *hpo, *dho, *dxo, *dyo, *dhpo;
    I rows, hid;
    if (!PyArg_ParseTuple(args, "OOOOOOnn", &go, &hpo, &dho, &dxo, &dyo, &dhpo, &rows, &hid) ||
        sizes(rows, hid) < 0)
        return NULL;
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    void *hp = take(&a, hpo, "h_prev", 0, 0, rows * hid, &failed);
    void *g = take(&a, go, "gates", 0, 0, rows * 4 * hid, &failed);
    void *dh = take(&a, dho, "dh", 0, 0, rows * hid, &failed);
    void *dx = take(&a, dxo, "dxw", 1, 0, rows * 3 * hid, &failed);
    void *dy = take(&a, dyo, "dhw", 1, 0, rows * 3 * hid, &failed);
    void *dhp = take(&a, dhpo, "dh_prev", 1, 0, rows * hid, &failed);
    if (failed) { release(&a); return NULL; }
    Py_ssize_t size = a.itemsize;
    RELEASE_GIL
    if (size == 4) gru_backward_f32(g, hp, dh, dx, dy, dhp, rows, hid);
    else gru_backward_f64(g, hp, dh, dx, dy, dhp, rows, hid);
    REACQUIRE_GIL
    release(&a);
    Py_RETURN_NONE;
}


/* ---------------------------------------------------------------- whole-sequence entry points */
static int seq_sizes(I T, I N, I H, int threads)
{
    if (T < 1 || N < 1 || H < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "steps, rows, hidden and threads must be >= 1");
        return -1;
    }
    return 0;
}

static PyObject *seq_finish(Args *a, Seq *s, void *scratch)
{
    if (a->itemsize != 4) {
        release(a);
        PyErr_SetString(PyExc_TypeError, "the sequence kernels compute in float32 only");
        return NULL;
    }
    s->scratch = scratch;
    int rc;
    RELEASE_GIL
    rc = seq_run(s);
    REACQUIRE_GIL
    release(a);
    if (rc < 0) {
        PyErr_SetString(PyExc_RuntimeError, "could not start the sequence kernel's threads");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_sequence_scratch(PyObject *self, PyObject *args)
{
    int gru, backward, threads;
    I N, H, IN;
    if (!PyArg_ParseTuple(args, "ppnnni", &gru, &backward, &N, &H, &IN, &threads) || seq_sizes(1, N, H, threads) < 0)
        return NULL;
    if (IN < 0) {
        PyErr_SetString(PyExc_ValueError, "inputs must be >= 0");
        return NULL;
    }
    Seq s = {0};
    seq_geometry(&s, gru, N, H, IN, threads, backward);
    return PyLong_FromSsize_t(seq_scratch_floats(&s));
}

static PyObject *py_sequence(PyObject *self, PyObject *args)
{
    PyObject *xwo, *xo, *wio, *wo, *bo, *bio, *ho, *co, *go, *so;
    I T, N, H, IN;
    int gru, reverse, threads, batch_first;
    if (!PyArg_ParseTuple(args, "pOOOOOOOOOnnnnppiO", &gru, &xwo, &xo, &wio, &wo, &bo, &bio, &ho, &co, &go, &T, &N,
                          &H, &IN, &reverse, &batch_first, &threads, &so) || seq_sizes(T, N, H, threads) < 0)
        return NULL;
    const int own_x = xwo == Py_None;
    if ((own_x ? (IN < 1 || xo == Py_None || wio == Py_None) : (IN != 0 || xo != Py_None || wio != Py_None)) ||
        (bio != Py_None && !(gru && own_x)) || (!gru && (co == Py_None) != (go == Py_None))) {
        PyErr_SetString(PyExc_ValueError, "sequence: either xw, or x, w_ih and inputs >= 1 (bias_ih: the GRU's, "
                                          "with x); c and gates both given or both None");
        return NULL;
    }
    Seq s = {0};
    const int G = gru ? 3 : 4;
    seq_geometry(&s, gru, N, H, IN, threads, 0);
    s.T = T;
    s.reverse = reverse;
    seq_layout(&s, batch_first);
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    s.xw = take(&a, xwo, "xw", 0, 1, T * N * G * H, &failed);
    s.x = take(&a, xo, "x", 0, 1, T * N * IN, &failed);
    s.wih = take(&a, wio, "w_ih", 0, 1, G * H * IN, &failed);
    s.w = take(&a, wo, "w_hh", 0, 0, G * H * H, &failed);
    s.b = take(&a, bo, "bias_hh", 0, 1, G * H, &failed);
    s.bih = take(&a, bio, "bias_ih", 0, 1, G * H, &failed);
    s.hs = take(&a, ho, "h", 1, 0, (T + 1) * N * H, &failed);
    s.cs = gru ? NULL : take(&a, co, "c", 1, 1, (T + 1) * N * H, &failed);
    s.gates = take(&a, go, "gates", 1, 1, T * N * 4 * H, &failed);
    void *scratch = take(&a, so, "scratch", 1, 0, seq_scratch_floats(&s), &failed);
    if (failed) { release(&a); return NULL; }
    return seq_finish(&a, &s, scratch);
}

static PyObject *py_sequence_backward(PyObject *self, PyObject *args)
{
    PyObject *wo, *go, *ho, *co, *dout, *dxo, *dyo, *xo, *dwio, *dwho, *dbo, *dbio, *so;
    I T, N, H, IN, dstride, doff;
    int gru, reverse, threads, batch_first;
    if (!PyArg_ParseTuple(args, "pOOOOOnnOOOOOOOnnnnppiO", &gru, &wo, &go, &ho, &co, &dout, &dstride, &doff, &dxo,
                          &dyo, &xo, &dwio, &dwho, &dbo, &dbio, &T, &N, &H, &IN, &reverse, &batch_first, &threads,
                          &so) ||
        seq_sizes(T, N, H, threads) < 0)
        return NULL;
    if (doff < 0 || doff + H > dstride) {
        PyErr_SetString(PyExc_ValueError, "dout: columns [offset, offset + hidden) must lie in its rows");
        return NULL;
    }
    const int wg = xo != Py_None;
    if (wg ? (IN < 1 || dwio == Py_None || dwho == Py_None || ho == Py_None)
           : (IN != 0 || dwio != Py_None || dwho != Py_None || dbo != Py_None || dbio != Py_None ||
              dxo == Py_None || (gru && dyo == Py_None)) ||
        (gru ? ho == Py_None : co == Py_None) || (!gru && dyo != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "sequence_backward: x, inputs >= 1, h, dw_ih and dw_hh for the weight "
                                          "gradients, else dgates (the GRU's dxw and dhw); c for the LSTM");
        return NULL;
    }
    Seq s = {0};
    const int G = gru ? 3 : 4;
    seq_geometry(&s, gru, N, H, IN, threads, 1);
    s.T = T;
    s.reverse = reverse;
    s.dstride = dstride;
    s.doff = doff;
    seq_layout(&s, batch_first);
    Args a = {.count = 0, .itemsize = 0};
    int failed = 0;
    s.w = take(&a, wo, "w_hh", 0, 0, G * H * H, &failed);
    s.gates = take(&a, go, "gates", 0, 0, T * N * 4 * H, &failed);
    s.hs = take(&a, ho, "h", 0, 1, (T + 1) * N * H, &failed);
    s.cs = gru ? NULL : take(&a, co, "c", 0, 0, (T + 1) * N * H, &failed);
    s.dout = take(&a, dout, "dout", 0, 0, T * N * dstride, &failed);
    s.dx = take(&a, dxo, gru ? "dxw" : "dgates", 1, 1, T * N * G * H, &failed);
    s.dhw = gru ? take(&a, dyo, "dhw", 1, 1, T * N * G * H, &failed) : NULL;
    s.x = wg ? take(&a, xo, "x", 0, 0, T * N * IN, &failed) : NULL;
    s.dwih = wg ? take(&a, dwio, "dw_ih", 1, 0, G * H * IN, &failed) : NULL;
    s.dwhh = wg ? take(&a, dwho, "dw_hh", 1, 0, G * H * H, &failed) : NULL;
    s.db = wg ? take(&a, dbo, "dbias", 1, 1, G * H, &failed) : NULL;
    s.dbih = wg ? take(&a, dbio, "dbias_ih", 1, 1, G * H, &failed) : NULL;
    void *scratch = take(&a, so, "scratch", 1, 0, seq_scratch_floats(&s), &failed);
    if (failed) { release(&a); return NULL; }
    return seq_finish(&a, &s, scratch);
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    {"rnn_cell", py_rnn_cell, METH_VARARGS,
     "rnn_cell(xw, hw|None, bias_hh|None, h, rows, hidden, relu): h = act(xw + hw + b_hh)"},
    {"lstm_cell", py_lstm_cell, METH_VARARGS,
     "lstm_cell(xw, hw|None, bias_hh|None, c_prev, gates, c, h, rows, hidden): one LSTM step"},
    {"lstm_cell_backward", py_lstm_cell_backward, METH_VARARGS,
     "lstm_cell_backward(gates, c_prev, c, dh, dc, dgates, dc_prev, rows, hidden); dc_prev may be dc"},
    {"gru_cell", py_gru_cell, METH_VARARGS,
     "gru_cell(xw, hw|None, bias_hh|None, h_prev, gates, h, rows, hidden): one GRU step"},
    {"gru_cell_backward", py_gru_cell_backward, METH_VARARGS,
     "gru_cell_backward(gates, h_prev, dh, dxw, dhw, dh_prev, rows, hidden); dh_prev may be dh"},
    {"sequence_scratch", py_sequence_scratch, METH_VARARGS,
     "sequence_scratch(gru, backward, rows, hidden, inputs, threads): float32 elements of scratch a sequence call "
     "needs (inputs: x's width where the forward projects x itself, else 0)"},
    {"sequence", py_sequence, METH_VARARGS,
     "sequence(gru, xw|None, x|None, w_ih|None, w_hh, bias_hh|None, bias_ih|None, h, c|None, gates|None, steps, "
     "rows, hidden, inputs, reverse, batch_first, threads, scratch): all steps of one direction, from zero states, "
     "from the projections xw or from x itself ((N, T, inputs) with batch_first); c and gates None where no "
     "backward follows"},
    {"sequence_backward", py_sequence_backward, METH_VARARGS,
     "sequence_backward(gru, w_hh, gates, h|None, c|None, dout, dout_stride, dout_offset, dgates|dxw|None, dhw|None, "
     "x|None, dw_ih|None, dw_hh|None, dbias|None, dbias_ih|None, steps, rows, hidden, inputs, reverse, batch_first, "
     "threads, scratch): the pre-activation gradients of all steps, and with x this direction's weight and bias "
     "gradients; batch_first: x and dout (N, T, .)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rnn_kernels",
                                    "Fused recurrent cells (RNN, LSTM, GRU) for the NumPy backend.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__rnn_kernels(void) { return PyModule_Create(&module); }
