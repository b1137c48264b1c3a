/* Batch-norm passes for the NumPy backend, per channel over (N, C, inner) arrays: statistics in
 * two passes over the planes (NumPy needs a centered copy and a squared copy of the whole
 * input), the normalising affine map in one pass, and the backward's two sums and its input
 * gradient in one pass each. Optional: setup.py builds it where a C compiler exists;
 * spatial.py falls back to its NumPy version otherwise or when JUICEPY_CPU_KERNELS=numpy.
 *
 * Every kernel takes a channel range [c0, c1) so spatial.py can split a call over threads; the
 * GIL is released inside. Sums add each plane in float vectors, then the planes in double, in
 * a fixed order.
 */
#include "_kernels.h"

#include <stdint.h>

typedef Py_ssize_t I;

/* Sums over a channel's planes: each plane in LANES float partial sums the compiler vectorises
 * without reassociating, each lane widened and added to its double lane across the planes, and
 * the lanes added up once per channel (lanes_total). Adding a plane's lanes into one double in
 * order was a chain of 32 dependent adds per plane: most of the time of a pass over 8x8 and
 * 16x16 planes. */
#define LANES 32

static double lanes_total(const double *acc)
{
    double total = 0;
    for (int l = 0; l < LANES; l++) total += acc[l];
    return total;
}

/* ACC[l] += the sum of EXPR over the plane's values k with k % LANES == l */
#define PLANE_ADD(T, ACC, COUNT, EXPR)                                                         \
    do {                                                                                       \
        T s0_[16] = {0}, s1_[16] = {0};                                                        \
        I i = 0;                                                                               \
        for (; i + LANES <= (COUNT); i += LANES) {                                             \
            for (int l_ = 0; l_ < 16; l_++) {                                                  \
                { const I k = i + l_; s0_[l_] += (EXPR); }                                     \
                { const I k = i + 16 + l_; s1_[l_] += (EXPR); }                                \
            }                                                                                  \
        }                                                                                      \
        for (int l_ = 0; l_ < 16; l_++) {                                                      \
            (ACC)[l_] += (double)s0_[l_];                                                      \
            (ACC)[16 + l_] += (double)s1_[l_];                                                 \
        }                                                                                      \
        for (; i < (COUNT); i++) { const I k = i; (ACC)[k % LANES] += (EXPR); }               \
    } while (0)

/* PLANE_ADD of two expressions in one sweep (each as PLANE_ADD adds it, so the same bits): the
 * backward's sums read each plane of dy (and of the ReLU output) once */
#define PLANE_ADD2(T, ACC_A, ACC_B, COUNT, EXPR_A, EXPR_B)                                     \
    do {                                                                                       \
        T a0_[16] = {0}, a1_[16] = {0}, b0_[16] = {0}, b1_[16] = {0};                           \
        I i = 0;                                                                               \
        for (; i + LANES <= (COUNT); i += LANES) {                                             \
            for (int l_ = 0; l_ < 16; l_++) {                                                  \
                { const I k = i + l_; a0_[l_] += (EXPR_A); b0_[l_] += (EXPR_B); }              \
                { const I k = i + 16 + l_; a1_[l_] += (EXPR_A); b1_[l_] += (EXPR_B); }         \
            }                                                                                  \
        }                                                                                      \
        for (int l_ = 0; l_ < 16; l_++) {                                                      \
            (ACC_A)[l_] += (double)a0_[l_];                                                    \
            (ACC_A)[16 + l_] += (double)a1_[l_];                                               \
            (ACC_B)[l_] += (double)b0_[l_];                                                    \
            (ACC_B)[16 + l_] += (double)b1_[l_];                                               \
        }                                                                                      \
        for (; i < (COUNT); i++) {                                                             \
            const I k = i;                                                                     \
            (ACC_A)[k % LANES] += (EXPR_A);                                                    \
            (ACC_B)[k % LANES] += (EXPR_B);                                                    \
        }                                                                                      \
    } while (0)

/* The float backward sums with their lanes in vector registers (backward_sums_f32): GCC kept
 * PLANE_ADD2's partial sums and the double lanes in memory, re-read and re-stored for every
 * plane, which bound the pass over 8x8 and 16x16 planes. Each plane's 32 float lanes are four
 * 8-float vectors, widened into eight 4-double vectors (the channel's double lanes) once per
 * plane; lane l adds the same values in the same order as PLANE_ADD2 into double lanes, so the
 * same bits. (The statistics pass kept PLANE_ADD: this form measured no faster there.) */
/* D[0..1] (4 doubles each) += the 8 floats of V, widened */
#define WIDEN_ADD(D, V)                                                                        \
    do {                                                                                       \
        vf32x4 lo_, hi_;                                                                        \
        memcpy(&lo_, &(V), sizeof lo_);                                                        \
        memcpy(&hi_, (const char *)&(V) + sizeof lo_, sizeof hi_);                             \
        (D)[0] += __builtin_convertvector(lo_, vf64x4);                                         \
        (D)[1] += __builtin_convertvector(hi_, vf64x4);                                         \
    } while (0)
/* the channel's total of double lanes DA (lanes_total) */
static double vector_lanes_total(const vf64x4 *da)
{
    double lanes[LANES];
    memcpy(lanes, da, sizeof lanes);
    return lanes_total(lanes);
}

/* mean[c] and the biased var[c] of x[:, c] */
#define DEFINE_STATS(NAME, T)                                                                  \
    VECTOR_CLONES static void NAME(const T *restrict x, T *restrict mean, T *restrict var,    \
                                   I n, I c, I inner, I c0, I c1)                             \
    {                                                                                          \
        const double count = (double)(n * inner);                                             \
        for (I ch = c0; ch < c1; ch++) {                                                      \
            double sums[LANES] = {0}, squares[LANES] = {0};                                   \
            for (I s = 0; s < n; s++) {                                                       \
                const T *p = x + (s * c + ch) * inner;                                        \
                PLANE_ADD(T, sums, inner, p[k]);                                              \
            }                                                                                 \
            const T m = (T)(lanes_total(sums) / count);                                       \
            for (I s = 0; s < n; s++) {                                                       \
                const T *p = x + (s * c + ch) * inner;                                        \
                PLANE_ADD(T, squares, inner, (p[k] - m) * (p[k] - m));                        \
            }                                                                                 \
            mean[ch] = m;                                                                     \
            var[ch] = (T)(lanes_total(squares) / count);                                      \
        }                                                                                     \
    }

DEFINE_STATS(stats_f32, float)
DEFINE_STATS(stats_f64, double)

/* out[:, c] = (x[:, c] - center[c]) * scale[c] + shift[c], then max(out, 0) where ``relu``
 * (a ReLU after the batch norm in the same pass; v < 0 ? 0 : v keeps NaN as np.maximum) */
#define DEFINE_AFFINE(NAME, T)                                                                 \
    VECTOR_CLONES static void NAME(const T *restrict x, const T *restrict center,             \
                                   const T *restrict scale, const T *restrict shift,          \
                                   T *restrict out, I n, I c, I inner, I c0, I c1, int relu)  \
    {                                                                                          \
        for (I s = 0; s < n; s++)                                                             \
            for (I ch = c0; ch < c1; ch++) {                                                  \
                const T *p = x + (s * c + ch) * inner;                                        \
                T *o = out + (s * c + ch) * inner;                                            \
                const T m = center[ch], a = scale[ch], b = shift[ch];                         \
                if (relu)                                                                     \
                    for (I i = 0; i < inner; i++) {                                           \
                        const T v = (p[i] - m) * a + b;                                       \
                        o[i] = v < 0 ? (T)0 : v;                                              \
                    }                                                                         \
                else                                                                          \
                    for (I i = 0; i < inner; i++) o[i] = (p[i] - m) * a + b;                  \
            }                                                                                 \
    }

DEFINE_AFFINE(affine_f32, float)
DEFINE_AFFINE(affine_f64, double)

/* The gradient at the batch norm's output: dy itself, or, where a ReLU follows in the same pass
 * (``y`` its output), dy where y > 0 and 0 elsewhere, as relu_backward writes it */
#define GRAD(T, Y, E, K) ((Y) ? ((Y)[K] > 0 ? (E)[K] : (T)0) : (E)[K])

/* sum_dy[c] = sum dy[:, c]; sum_dy_xhat[c] = sum dy * (x - mean) * invstd */
#define DEFINE_BACKWARD_SUMS(NAME, T)                                                          \
    VECTOR_CLONES static void NAME(const T *restrict x, const T *restrict dy,                 \
                                   const T *restrict y, const T *restrict mean,               \
                                   const T *restrict invstd, T *restrict sum_dy,              \
                                   T *restrict sum_dy_xhat, I n, I c, I inner, I c0, I c1)    \
    {                                                                                          \
        for (I ch = c0; ch < c1; ch++) {                                                      \
            double a[LANES] = {0}, b[LANES] = {0};                                            \
            const T m = mean[ch];                                                             \
            for (I s = 0; s < n; s++) {                                                       \
                const I at = (s * c + ch) * inner;                                            \
                const T *p = x + at, *e = dy + at, *r = y ? y + at : NULL;                    \
                if (r)                                                                        \
                    PLANE_ADD2(T, a, b, inner, GRAD(T, r, e, k), GRAD(T, r, e, k) * (p[k] - m)); \
                else                                                                          \
                    PLANE_ADD2(T, a, b, inner, e[k], e[k] * (p[k] - m));                      \
            }                                                                                 \
            sum_dy[ch] = (T)lanes_total(a);                                                   \
            sum_dy_xhat[ch] = (T)(lanes_total(b) * invstd[ch]);                               \
        }                                                                                     \
    }

DEFINE_BACKWARD_SUMS(backward_sums_f64, double)

/* dy's 8 values at K, zero where the ReLU's output R (if given) is not > 0, as GRAD */
#define GRAD_F32X8(R, E, K) ((R) ? (vf32x8)((vi32x8)LOADV(vf32x8, (E) + (K)) & (LOADV(vf32x8, (R) + (K)) > 0)) \
                                 : LOADV(vf32x8, (E) + (K)))

/* Channels whose float backward sums one sweep over the samples adds side by side
 * (backward_sums_f32): a sample's planes of such a block lie next to each other, so the sweep
 * reads runs of up to SUMS_BLOCK planes where a channel at a time jumps a whole sample ahead
 * after every plane (8x8 planes: 256-byte runs 16 KiB apart, which the hardware prefetchers do
 * not follow from memory). Each channel still adds its planes in sample order: the same bits. */
#define SUMS_BLOCK 16

/* backward_sums in float, its lanes in vectors, a block of channels per sweep */
VECTOR_CLONES static void backward_sums_f32(const float *restrict x, const float *restrict dy,
                                            const float *restrict y, const float *restrict mean,
                                            const float *restrict invstd, float *restrict sum_dy,
                                            float *restrict sum_dy_xhat, I n, I c, I inner, I c0, I c1)
{
    for (I cb = c0; cb < c1; cb += SUMS_BLOCK) {
        const I ce = cb + SUMS_BLOCK < c1 ? cb + SUMS_BLOCK : c1;
        vf64x4 da[SUMS_BLOCK][LANES / 4], db[SUMS_BLOCK][LANES / 4];
        memset(da, 0, sizeof da);
        memset(db, 0, sizeof db);
        for (I s = 0; s < n; s++)
            for (I ch = cb; ch < ce; ch++) {
                const I at = (s * c + ch) * inner;
                const float *p = x + at, *e = dy + at, *r = y ? y + at : NULL;
                const float m = mean[ch];
                const vf32x8 mv = (vf32x8){0} + m;
                vf64x4 *ca = da[ch - cb], *cd = db[ch - cb];
                vf32x8 a[4] = {{0}}, b[4] = {{0}};
                I i = 0;
                for (; i + LANES <= inner; i += LANES)
                    for (int j = 0; j < 4; j++) {
                        const vf32x8 g = GRAD_F32X8(r, e, i + 8 * j);
                        a[j] += g;
                        b[j] += g * (LOADV(vf32x8, p + i + 8 * j) - mv);
                    }
                for (int j = 0; j < 4; j++) {
                    WIDEN_ADD(ca + 2 * j, a[j]);
                    WIDEN_ADD(cd + 2 * j, b[j]);
                }
                for (; i < inner; i++) {
                    const float g = GRAD(float, r, e, i);
                    ca[i % LANES / 4][i % 4] += g;
                    cd[i % LANES / 4][i % 4] += g * (p[i] - m);
                }
            }
        for (I ch = cb; ch < ce; ch++) {
            sum_dy[ch] = (float)vector_lanes_total(da[ch - cb]);
            sum_dy_xhat[ch] = (float)(vector_lanes_total(db[ch - cb]) * invstd[ch]);
        }
    }
}

/* dx[:, c] (+)= coef[c] * (M dy - sum_dy[c] - xhat * sum_dy_xhat[c]), xhat = (x - mean) invstd,
 * M = ``count`` (the values per channel over every replica under synchronised batch norm) */
#define DEFINE_BACKWARD_DX(NAME, T)                                                            \
    VECTOR_CLONES static void NAME(const T *restrict x, const T *restrict dy,                 \
                                   const T *restrict y, const T *restrict mean,               \
                                   const T *restrict invstd,                                  \
                                   const T *restrict coef, const T *restrict sum_dy,          \
                                   const T *restrict sum_dy_xhat, T *restrict dx, T count,    \
                                   I n, I c, I inner, I c0, I c1, int accumulate)             \
    {                                                                                          \
        for (I s = 0; s < n; s++)                                                             \
            for (I ch = c0; ch < c1; ch++) {                                                  \
                const I at = (s * c + ch) * inner;                                            \
                const T *p = x + at, *e = dy + at, *r = y ? y + at : NULL;                    \
                T *d = dx + at;                                                               \
                const T m = mean[ch], is = invstd[ch], k = coef[ch], a = sum_dy[ch];          \
                const T b = sum_dy_xhat[ch];                                                  \
                if (r && accumulate)                                                          \
                    for (I i = 0; i < inner; i++)                                             \
                        d[i] += k * (count * GRAD(T, r, e, i) - a - (p[i] - m) * is * b);     \
                else if (r)                                                                   \
                    for (I i = 0; i < inner; i++)                                             \
                        d[i] = k * (count * GRAD(T, r, e, i) - a - (p[i] - m) * is * b);      \
                else if (accumulate)                                                          \
                    for (I i = 0; i < inner; i++) d[i] += k * (count * e[i] - a - (p[i] - m) * is * b); \
                else                                                                          \
                    for (I i = 0; i < inner; i++) d[i] = k * (count * e[i] - a - (p[i] - m) * is * b); \
            }                                                                                 \
    }

DEFINE_BACKWARD_DX(backward_dx_f32, float)
DEFINE_BACKWARD_DX(backward_dx_f64, double)

/* Both backward passes a block of ``block`` channels at a time (at most SUMS_BLOCK, at least
 * one): the block's sums, then its dx while its planes are still in cache (the two-pass split
 * reads x, dy and y from memory twice). The same per-channel arithmetic as backward_sums then
 * backward_dx, so the same bits. */
#define DEFINE_BACKWARD_FUSED(NAME, SUMS, DX, T)                                               \
    static void NAME(const T *x, const T *dy, const T *y, const T *mean, const T *invstd,     \
                     const T *coef, T *sum_dy, T *sum_dy_xhat, T *dx, T count, I n, I c,     \
                     I inner, I c0, I c1, int accumulate, I block)                            \
    {                                                                                          \
        block = block < 1 ? 1 : block > SUMS_BLOCK ? SUMS_BLOCK : block;                       \
        for (I cb = c0; cb < c1; cb += block) {                                               \
            const I ce = cb + block < c1 ? cb + block : c1;                                   \
            SUMS(x, dy, y, mean, invstd, sum_dy, sum_dy_xhat, n, c, inner, cb, ce);           \
            DX(x, dy, y, mean, invstd, coef, sum_dy, sum_dy_xhat, dx, count, n, c, inner, cb, \
               ce, accumulate);                                                               \
        }                                                                                     \
    }

DEFINE_BACKWARD_FUSED(backward_fused_f32, backward_sums_f32, backward_dx_f32, float)
DEFINE_BACKWARD_FUSED(backward_fused_f64, backward_sums_f64, backward_dx_f64, double)

/* Training's forward one channel at a time: stats, invstd = 1 / sqrt(var + eps), scale = gamma
 * invstd, then the affine map (with the ReLU) while the channel's planes are still in cache;
 * the arithmetic of stats, NumPy's invstd and scale (sqrt in double rounds to the correctly
 * rounded float sqrt) and affine, so the same bits as those passes one after the other. */
#define DEFINE_TRAIN_FUSED(NAME, STATS, AFFINE, T)                                             \
    static void NAME(const T *x, const T *gamma, const T *beta, T *out, T *mean, T *var,     \
                     T *invstd, T *scale, T eps, I n, I c, I inner, I c0, I c1, int relu)    \
    {                                                                                          \
        for (I ch = c0; ch < c1; ch++) {                                                      \
            STATS(x, mean, var, n, c, inner, ch, ch + 1);                                     \
            invstd[ch] = (T)1 / (T)sqrt((double)(var[ch] + eps));                              \
            scale[ch] = gamma[ch] * invstd[ch];                                               \
            AFFINE(x, mean, scale, beta, out, n, c, inner, ch, ch + 1, relu);                 \
        }                                                                                     \
    }

DEFINE_TRAIN_FUSED(train_fused_f32, stats_f32, affine_f32, float)
DEFINE_TRAIN_FUSED(train_fused_f64, stats_f64, affine_f64, double)

/* ------------------------------------------------------------------ channel lanes */

/* Each channel's results come out the same whichever lane runs it, so they do not depend on the
 * lane count (the lanes: _lane_pool.h). */

typedef struct Task {
    void (*run)(const struct Task *, I c0, I c1);
    Py_buffer *v;
    const void *y;
    double scalar;
    I n, c, inner;
    int flag;
    I block; /* backward_fused's channels per block */
} Task;

#define LANE_TASK Task
#include "_lane_pool.h"

/* The kernels as Task runs: buffers in the order the Python call names them */
#define BUF(K) (t->v[K].buf)
#define BY_FORMAT(NAME, ...) (t->v[0].itemsize == 4 ? NAME##_f32(__VA_ARGS__) : NAME##_f64(__VA_ARGS__))

static void run_stats(const Task *t, I c0, I c1)
{
    BY_FORMAT(stats, BUF(0), BUF(1), BUF(2), t->n, t->c, t->inner, c0, c1);
}

static void run_affine(const Task *t, I c0, I c1)
{
    BY_FORMAT(affine, BUF(0), BUF(1), BUF(2), BUF(3), BUF(4), t->n, t->c, t->inner, c0, c1, t->flag);
}

static void run_backward_sums(const Task *t, I c0, I c1)
{
    BY_FORMAT(backward_sums, BUF(0), BUF(1), t->y, BUF(2), BUF(3), BUF(4), BUF(5), t->n, t->c, t->inner, c0, c1);
}

static void run_backward_dx(const Task *t, I c0, I c1)
{
    BY_FORMAT(backward_dx, BUF(0), BUF(1), t->y, BUF(2), BUF(3), BUF(4), BUF(5), BUF(6), BUF(7), t->scalar, t->n,
              t->c, t->inner, c0, c1, t->flag);
}

static void run_backward_fused(const Task *t, I c0, I c1)
{
    BY_FORMAT(backward_fused, BUF(0), BUF(1), t->y, BUF(2), BUF(3), BUF(4), BUF(5), BUF(6), BUF(7), t->scalar,
              t->n, t->c, t->inner, c0, c1, t->flag, t->block);
}

static void run_train_fused(const Task *t, I c0, I c1)
{
    BY_FORMAT(train_fused, BUF(0), BUF(1), BUF(2), BUF(3), BUF(4), BUF(5), BUF(6), BUF(7), t->scalar, t->n, t->c,
              t->inner, c0, c1, t->flag);
}

/* run_in_lanes with the GIL released */
static void run_released(const Task *t, I c0, I c1, int lanes)
{
    RELEASE_GIL
    run_in_lanes(t, c0, c1, lanes);
    REACQUIRE_GIL
}

/* ------------------------------------------------------------------ Python glue */

#define MAX_BUFFERS 8

/* Buffers of one float format: ``objs[i]`` must hold ``counts[i]`` items, C-contiguous,
 * writable where ``writable[i]``. Releases what it got on failure. */
static int get_buffers(int count, PyObject **objs, Py_buffer *views, const I *counts,
                       const int *writable, const char *const *names)
{
    const char *fmt = NULL;
    for (int i = 0; i < count; i++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable[i] ? PyBUF_WRITABLE : 0);
        const char *problem = NULL;
        if (PyObject_GetBuffer(objs[i], &views[i], flags) < 0) {
            PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s buffer", names[i],
                         writable[i] ? " writable" : "");
            problem = "";
        } else {
            const char *have = views[i].format ? views[i].format : "?";
            if (!fmt && (strcmp(have, "f") == 0 || strcmp(have, "d") == 0)) fmt = have;
            if (!fmt || strcmp(have, fmt) || views[i].len != counts[i] * views[i].itemsize) {
                PyErr_Format(PyExc_ValueError, "%s: expected %zd items of format '%s', got %zd of '%s'",
                             names[i], counts[i], fmt ? fmt : "f or d",
                             views[i].len / (views[i].itemsize ? views[i].itemsize : 1), have);
                PyBuffer_Release(&views[i]);
                problem = "";
            }
        }
        if (problem) {
            for (int j = 0; j < i; j++) PyBuffer_Release(&views[j]);
            return -1;
        }
    }
    return 0;
}

static void release(int count, Py_buffer *views)
{
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
}

static int check_channels(I n, I c, I inner, I c0, I c1)
{
    if (n < 0 || c < 0 || inner < 0 || c0 < 0 || c1 < c0 || c1 > c) {
        PyErr_Format(PyExc_ValueError, "channels [%zd, %zd) are not inside [0, %zd) (N %zd, inner %zd)",
                     c0, c1, c, n, inner);
        return -1;
    }
    return 0;
}

static PyObject *py_stats(PyObject *self, PyObject *args)
{
    PyObject *o[3];
    I n, c, inner, c0, c1;
    int lanes = 1;
    if (!PyArg_ParseTuple(args, "OOOnnnnn|i", &o[0], &o[1], &o[2], &n, &c, &inner, &c0, &c1, &lanes)) return NULL;
    if (check_channels(n, c, inner, c0, c1) < 0) return NULL;
    Py_buffer v[3];
    const I counts[] = {n * c * inner, c, c};
    const int writable[] = {0, 1, 1};
    const char *const names[] = {"x", "mean", "var"};
    if (get_buffers(3, o, v, counts, writable, names) < 0) return NULL;
    const Task t = {run_stats, v, NULL, 0, n, c, inner, 0};
    run_released(&t, c0, c1, lanes);
    release(3, v);
    Py_RETURN_NONE;
}

static PyObject *py_affine(PyObject *self, PyObject *args)
{
    PyObject *o[5];
    I n, c, inner, c0, c1;
    int relu = 0, lanes = 1;
    if (!PyArg_ParseTuple(args, "OOOOOnnnnn|pi", &o[0], &o[1], &o[2], &o[3], &o[4], &n, &c, &inner, &c0, &c1,
                          &relu, &lanes))
        return NULL;
    if (check_channels(n, c, inner, c0, c1) < 0) return NULL;
    Py_buffer v[5];
    const I counts[] = {n * c * inner, c, c, c, n * c * inner};
    const int writable[] = {0, 0, 0, 0, 1};
    const char *const names[] = {"x", "center", "scale", "shift", "out"};
    if (get_buffers(5, o, v, counts, writable, names) < 0) return NULL;
    const Task t = {run_affine, v, NULL, 0, n, c, inner, relu};
    run_released(&t, c0, c1, lanes);
    release(5, v);
    Py_RETURN_NONE;
}

/* The optional ReLU output ``y`` (None: no ReLU): a buffer like x, or NULL */
static int optional_like(PyObject *obj, Py_buffer *view, const Py_buffer *like, const char *name)
{
    if (obj == Py_None) return 0;
    const char *fmt = like->format ? like->format : "?";
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous buffer", name);
        return -1;
    }
    if (!view->format || strcmp(view->format, fmt) || view->len != like->len) {
        PyErr_Format(PyExc_ValueError, "%s: expected the format and length of x", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 1;
}

static PyObject *py_backward_sums(PyObject *self, PyObject *args)
{
    PyObject *o[6], *yo = Py_None;
    I n, c, inner, c0, c1;
    int lanes = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnn|Oi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &n, &c, &inner,
                          &c0, &c1, &yo, &lanes))
        return NULL;
    if (check_channels(n, c, inner, c0, c1) < 0) return NULL;
    Py_buffer v[6], yv;
    const I counts[] = {n * c * inner, n * c * inner, c, c, c, c};
    const int writable[] = {0, 0, 0, 0, 1, 1};
    const char *const names[] = {"x", "dy", "mean", "invstd", "sum_dy", "sum_dy_xhat"};
    if (get_buffers(6, o, v, counts, writable, names) < 0) return NULL;
    int has_y = optional_like(yo, &yv, &v[0], "y");
    if (has_y < 0) {
        release(6, v);
        return NULL;
    }
    const void *y = has_y ? yv.buf : NULL;
    const Task t = {run_backward_sums, v, y, 0, n, c, inner, 0};
    run_released(&t, c0, c1, lanes);
    release(6, v);
    if (has_y) PyBuffer_Release(&yv);
    Py_RETURN_NONE;
}

/* backward_dx and backward_fused take the same arguments; the fused pass also writes the sums */
static PyObject *backward_dx_call(PyObject *args, int fused)
{
    PyObject *o[8], *yo = Py_None;
    I n, c, inner, c0, c1;
    double count;
    int accumulate, lanes = 1;
    I block = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOOOdnnnnnp|Oin", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &count, &n, &c, &inner, &c0, &c1, &accumulate, &yo, &lanes, &block))
        return NULL;
    if (check_channels(n, c, inner, c0, c1) < 0) return NULL;
    Py_buffer v[8], yv;
    const I counts[] = {n * c * inner, n * c * inner, c, c, c, c, c, n * c * inner};
    const int writable[] = {0, 0, 0, 0, 0, fused, fused, 1};
    const char *const names[] = {"x", "dy", "mean", "invstd", "coef", "sum_dy", "sum_dy_xhat", "dx"};
    if (get_buffers(8, o, v, counts, writable, names) < 0) return NULL;
    int has_y = optional_like(yo, &yv, &v[0], "y");
    if (has_y < 0) {
        release(8, v);
        return NULL;
    }
    const void *y = has_y ? yv.buf : NULL;
    const Task t = {fused ? run_backward_fused : run_backward_dx, v, y, count, n, c, inner, accumulate, block};
    run_released(&t, c0, c1, lanes);
    release(8, v);
    if (has_y) PyBuffer_Release(&yv);
    Py_RETURN_NONE;
}

static PyObject *py_backward_dx(PyObject *self, PyObject *args) { return backward_dx_call(args, 0); }

static PyObject *py_backward_fused(PyObject *self, PyObject *args) { return backward_dx_call(args, 1); }

static PyObject *py_train_fused(PyObject *self, PyObject *args)
{
    PyObject *o[8];
    I n, c, inner, c0, c1;
    double eps;
    int relu = 0, lanes = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOOOdnnnnn|pi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &eps, &n, &c, &inner, &c0, &c1, &relu, &lanes))
        return NULL;
    if (check_channels(n, c, inner, c0, c1) < 0) return NULL;
    Py_buffer v[8];
    const I counts[] = {n * c * inner, c, c, n * c * inner, c, c, c, c};
    const int writable[] = {0, 0, 0, 1, 1, 1, 1, 1};
    const char *const names[] = {"x", "gamma", "beta", "out", "mean", "var", "invstd", "scale"};
    if (get_buffers(8, o, v, counts, writable, names) < 0) return NULL;
    const Task t = {run_train_fused, v, NULL, eps, n, c, inner, relu};
    run_released(&t, c0, c1, lanes);
    release(8, v);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    USE_SIDE_LANES_METHOD,
    {"stats", py_stats, METH_VARARGS,
     "stats(x, mean, var, N, C, inner, c0, c1, lanes=1): per-channel mean and biased variance"},
    {"affine", py_affine, METH_VARARGS,
     "affine(x, center, scale, shift, out, N, C, inner, c0, c1, relu=False, lanes=1): out = (x - center) * "
     "scale + shift, max(out, 0) where relu"},
    {"backward_sums", py_backward_sums, METH_VARARGS,
     "backward_sums(x, dy, mean, invstd, sum_dy, sum_dy_xhat, N, C, inner, c0, c1, y=None, lanes=1): y, a "
     "ReLU's output after the batch norm, masks dy where y <= 0"},
    {"backward_dx", py_backward_dx, METH_VARARGS,
     "backward_dx(x, dy, mean, invstd, coef, sum_dy, sum_dy_xhat, dx, M, N, C, inner, c0, c1, "
     "accumulate, y=None, lanes=1): dx (+)= coef (M dy - sum_dy - xhat sum_dy_xhat), dy masked where y <= 0"},
    {"backward_fused", py_backward_fused, METH_VARARGS,
     "backward_fused(x, dy, mean, invstd, coef, sum_dy, sum_dy_xhat, dx, M, N, C, inner, c0, c1, "
     "accumulate, y=None, lanes=1, block=1): backward_sums then backward_dx, a block of channels at a time"},
    {"train_fused", py_train_fused, METH_VARARGS,
     "train_fused(x, gamma, beta, out, mean, var, invstd, scale, eps, N, C, inner, c0, c1, relu=False, lanes=1): "
     "stats, invstd = 1 / sqrt(var + eps), scale = gamma invstd, then affine, one channel at a time"},
    {NULL, NULL, 0, NULL},
};

/* Every kernel: ``lanes`` > 1 splits channels [c0, c1) over that many threads inside the call */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_norm_kernels",
                                    "Batch-norm passes for the NumPy backend.", -1, methods};

PyMODINIT_FUNC PyInit__norm_kernels(void)
{
    static int registered = 0;
    if (!registered && pthread_atfork(NULL, NULL, lane_pool_after_fork) == 0) registered = 1;
    return PyModule_Create(&module);
}
