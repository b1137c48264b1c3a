/* The NumPy backend's GEMM entries for its lanes (gemm: the gemm op's product; gemm_positions: a
 * tiled conv chunk's products): calls of the BLAS that NumPy loaded (its ILP64
 * CBLAS sgemm/dgemm, whose addresses blas.py finds and registers), with the GIL released and the
 * release counted (_gil_hint.h). np.matmul releases the GIL too, but uncounted, so a lane handed
 * a GEMM piece polled the whole hand-over window before it took the GIL (docs/numpy.md, session
 * 39); and BLAS's alpha, beta and strided operands spare the extra passes and copies around it. */
#include "_kernels.h"

#include <stdint.h>

/* CBLAS's enum values */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                         const float *, int64_t, float, float *, int64_t);
typedef void (*dgemm_fn)(int, int, int, int64_t, int64_t, int64_t, double, const double *, int64_t,
                         const double *, int64_t, double, double *, int64_t);

static sgemm_fn sgemm;
static dgemm_fn dgemm;

/* One product, cut into pieces of UNIT rows of out or UNIT columns (whole cache lines of floats) */
#define UNIT 16

typedef struct Task {
    void (*run)(const struct Task *, Py_ssize_t lo, Py_ssize_t hi);
    char fmt;
    int ta, tb, by_columns;
    int64_t m, n, k, lda, ldb, ldc;
    double alpha, beta;
    const char *a, *b;
    char *c;
    Py_ssize_t item;
    /* gemm_batch's: items between the products' b and c (residual's as c's), the column pieces
     * a product is cut into and their width, and the epilogue's operands; gemm_sum's: the
     * products and the parts they are summed in (pieces) */
    int64_t batch_b, batch_c, pieces, cols;
    const char *shift, *res;
    int relu;
    int64_t count;
} Task;

#define LANE_TASK Task
#include "_lane_pool.h"

/* The product's units [lo, hi): rows of a and out, or columns of b and out */
static void run_piece(const Task *t, Py_ssize_t lo, Py_ssize_t hi)
{
    const char *a = t->a, *b = t->b;
    char *c = t->c;
    int64_t m = t->m, n = t->n;
    const int64_t first = (int64_t)lo * UNIT, last = (int64_t)hi * UNIT;
    if (t->by_columns) {
        n = (last < t->n ? last : t->n) - first;
        b += (t->tb == NO_TRANS ? first : first * t->ldb) * t->item;
        c += first * t->item;
    } else {
        m = (last < t->m ? last : t->m) - first;
        a += (t->ta == NO_TRANS ? first * t->lda : first) * t->item;
        c += first * t->ldc * t->item;
    }
    if (t->fmt == 'f')
        sgemm(ROW_MAJOR, t->ta, t->tb, m, n, t->k, (float)t->alpha, (const float *)a, t->lda, (const float *)b,
              t->ldb, (float)t->beta, (float *)c, t->ldc);
    else
        dgemm(ROW_MAJOR, t->ta, t->tb, m, n, t->k, t->alpha, (const double *)a, t->lda, (const double *)b, t->ldb,
              t->beta, (double *)c, t->ldc);
}

/* set_gemm(sgemm_address, dgemm_address): the ILP64 cblas_sgemm / cblas_dgemm to call (0: none) */
static PyObject *py_set_gemm(PyObject *self, PyObject *args)
{
    unsigned long long s, d;
    if (!PyArg_ParseTuple(args, "KK", &s, &d)) return NULL;
    sgemm = (sgemm_fn)(uintptr_t)s;
    dgemm = (dgemm_fn)(uintptr_t)d;
    Py_RETURN_NONE;
}

/* How BLAS reads a row-major rows x cols operand with these byte strides: NO_TRANS or TRANS and
 * its leading dimension, or 0 where neither fits (negative, zero or non-unit strides). */
static int operand_layout(const Py_buffer *b, Py_ssize_t *ld)
{
    Py_ssize_t rows = b->shape[0], cols = b->shape[1], item = b->itemsize;
    Py_ssize_t s0 = b->strides[0], s1 = b->strides[1];
    if ((s1 == item || cols == 1) && s0 > 0 && s0 % item == 0 && s0 / item >= cols) {
        *ld = s0 / item;
        return NO_TRANS;
    }
    if (rows == 1 && (s1 == item || cols == 1)) {
        *ld = cols;
        return NO_TRANS;
    }
    if ((s0 == item || rows == 1) && s1 > 0 && s1 % item == 0 && s1 / item >= rows) {
        *ld = s1 / item;
        return TRANS;
    }
    if (cols == 1 && (s0 == item || rows == 1)) {
        *ld = rows;
        return TRANS;
    }
    return 0;
}

/* The bytes [lo, hi) that an operand's elements span */
static void span(const Py_buffer *b, char **lo, char **hi)
{
    *lo = (char *)b->buf;
    *hi = *lo + (b->shape[0] - 1) * b->strides[0] + (b->shape[1] - 1) * b->strides[1] + b->itemsize;
}

/* The three operands' buffers (strided views, formats; the third writable), or -1 with an
 * error set and none held */
static int get_operands(PyObject *ao, PyObject *bo, PyObject *co, Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    if (PyObject_GetBuffer(ao, a, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return -1;
    if (PyObject_GetBuffer(bo, b, PyBUF_STRIDES | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(a);
        return -1;
    }
    if (PyObject_GetBuffer(co, c, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(a);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static void release_operands(Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    PyBuffer_Release(a);
    PyBuffer_Release(b);
    PyBuffer_Release(c);
}

/* fill_*: c's rows x cols (rows t->ldc apart) = shift[row] (+ res at the same offsets) where
 * either is given, else nothing; returns whether c holds the sums' start (res alone being c:
 * nothing to write). relu_*: c's values below 0 set to 0. */
#define DEFINE_EPILOGUE(SUFFIX, T)                                                                 \
    static int fill_##SUFFIX(const Task *t, T *c, const T *res, int64_t rows, int64_t cols)          \
    {                                                                                              \
        const T *shift = (const T *)t->shift;                                                      \
        if (!shift && !res) return 0;                                                              \
        if (!shift && res == c) return 1;   /* adding to c as it is */                             \
        for (int64_t i = 0; i < rows; i++) {                                                       \
            T *row = c + i * t->ldc;                                                               \
            const T s = shift ? shift[i] : (T)0;                                                   \
            if (res)                                                                               \
                for (int64_t j = 0; j < cols; j++) row[j] = s + res[i * t->ldc + j];               \
            else                                                                                   \
                for (int64_t j = 0; j < cols; j++) row[j] = s;                                     \
        }                                                                                          \
        return 1;                                                                                  \
    }                                                                                              \
    static void relu_##SUFFIX(const Task *t, T *c, int64_t rows, int64_t cols)                      \
    {                                                                                              \
        for (int64_t i = 0; i < rows; i++) {                                                       \
            T *row = c + i * t->ldc;                                                               \
            for (int64_t j = 0; j < cols; j++) row[j] = row[j] < 0 ? (T)0 : row[j];                \
        }                                                                                          \
    }
DEFINE_EPILOGUE(f32, float)
DEFINE_EPILOGUE(f64, double)

/* gemm_batch's units [lo, hi): product i = unit / pieces, its columns [first, first + cols) */
static void run_batch(const Task *t, Py_ssize_t lo, Py_ssize_t hi)
{
    for (Py_ssize_t u = lo; u < hi; u++) {
        const int64_t i = u / t->pieces, first = (u % t->pieces) * t->cols;
        const int64_t n = (first + t->cols < t->n ? first + t->cols : t->n) - first;
        if (n <= 0) continue;
        const int64_t at_c = (i * t->batch_c + first) * t->item;
        const char *b = t->b + (i * t->batch_b + first) * t->item, *res = t->res ? t->res + at_c : NULL;
        char *c = t->c + at_c;
        if (t->fmt == 'f') {
            const int filled = fill_f32(t, (float *)c, (const float *)res, t->m, n);
            sgemm(ROW_MAJOR, t->ta, NO_TRANS, t->m, n, t->k, 1.0f, (const float *)t->a, t->lda, (const float *)b,
                  t->ldb, filled ? 1.0f : 0.0f, (float *)c, t->ldc);
            if (t->relu) relu_f32(t, (float *)c, t->m, n);
        } else {
            const int filled = fill_f64(t, (double *)c, (const double *)res, t->m, n);
            dgemm(ROW_MAJOR, t->ta, NO_TRANS, t->m, n, t->k, 1.0, (const double *)t->a, t->lda, (const double *)b,
                  t->ldb, filled ? 1.0 : 0.0, (double *)c, t->ldc);
            if (t->relu) relu_f64(t, (double *)c, t->m, n);
        }
    }
}

/* gemm_sum's parts [lo, hi): part k = the sum over its products i of a[i] @ b[i]^T */
static void run_sum(const Task *t, Py_ssize_t lo, Py_ssize_t hi)
{
    for (Py_ssize_t k = lo; k < hi; k++) {
        const int64_t first = t->count * k / t->pieces, last = t->count * (k + 1) / t->pieces;
        char *c = t->c + k * t->m * t->n * t->item;
        for (int64_t i = first; i < last; i++) {
            const char *a = t->a + i * t->m * t->k * t->item, *b = t->b + i * t->n * t->k * t->item;
            if (t->fmt == 'f')
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, t->m, t->n, t->k, 1.0f, (const float *)a, t->k, (const float *)b,
                      t->k, i > first ? 1.0f : 0.0f, (float *)c, t->n);
            else
                dgemm(ROW_MAJOR, NO_TRANS, TRANS, t->m, t->n, t->k, 1.0, (const double *)a, t->k, (const double *)b,
                      t->k, i > first ? 1.0 : 0.0, (double *)c, t->n);
        }
    }
}

/* gemm(a, b, out, alpha, beta, lanes=1, by_columns=False, grain=0): out = alpha a @ b + beta out
 * for 2-d float32 or float64 views (each with one unit stride, out's along its rows), on the
 * registered BLAS. With lanes > 1, split into pieces of ``grain`` units (UNIT rows of out, or
 * UNIT columns with by_columns; 0: one piece per lane) dealt over this module's C lanes
 * (_lane_pool.h; the caller has set BLAS to one thread). False, with nothing written, where it
 * cannot: no BLAS registered, other dtypes or layouts, an empty product, or out overlapping a
 * or b; the caller then runs np.matmul. */
static PyObject *py_gemm(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *co;
    double alpha, beta;
    int lanes = 1, by_columns = 0;
    Py_ssize_t grain = 0;
    if (!PyArg_ParseTuple(args, "OOOdd|ipn", &ao, &bo, &co, &alpha, &beta, &lanes, &by_columns, &grain)) return NULL;
    Py_buffer a, b, c;
    if (get_operands(ao, bo, co, &a, &b, &c) < 0) return NULL;
    int ran = 0;
    char fmt = a.format ? a.format[0] : 0;
    int same = a.ndim == 2 && b.ndim == 2 && c.ndim == 2 && a.itemsize == b.itemsize && a.itemsize == c.itemsize &&
               (fmt == 'f' || fmt == 'd') && b.format && c.format && b.format[0] == fmt && c.format[0] == fmt &&
               ((fmt == 'f' && sgemm) || (fmt == 'd' && dgemm));
    if (same && a.shape[0] == c.shape[0] && b.shape[1] == c.shape[1] && a.shape[1] == b.shape[0] &&
        c.shape[0] > 0 && c.shape[1] > 0 && a.shape[1] > 0) {
        Py_ssize_t lda, ldb, ldc;
        int ta = operand_layout(&a, &lda), tb = operand_layout(&b, &ldb), tc = operand_layout(&c, &ldc);
        char *alo, *ahi, *blo, *bhi, *clo, *chi;
        span(&a, &alo, &ahi);
        span(&b, &blo, &bhi);
        span(&c, &clo, &chi);
        int apart = (chi <= alo || ahi <= clo) && (chi <= blo || bhi <= clo);
        if (ta && tb && tc == NO_TRANS && apart) {
            Task t = {run_piece, fmt, ta, tb, by_columns, c.shape[0], c.shape[1], a.shape[1], lda, ldb, ldc, alpha,
                      beta, a.buf, b.buf, c.buf, a.itemsize};
            const Py_ssize_t units = ((by_columns ? t.n : t.m) + UNIT - 1) / UNIT;
            if (lanes < 1) lanes = 1;
            if (grain < 1) grain = (units + lanes - 1) / lanes;
            RELEASE_GIL
            deal_in_lanes(&t, 0, units, lanes, grain);
            REACQUIRE_GIL
            ran = 1;
        }
    }
    release_operands(&a, &b, &c);
    return PyBool_FromLong(ran);
}

/* An optional operand of gemm_batch (None: absent): a C-contiguous buffer of ``fmt`` and
 * ``count`` items, or -1 with an error set; 0 with view->buf NULL for None. */
static int optional_operand(PyObject *o, Py_buffer *view, char fmt, Py_ssize_t item, Py_ssize_t count, int *fits)
{
    view->buf = NULL;
    view->obj = NULL;
    if (o == Py_None) return 0;
    if (PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    *fits = *fits && view->format && view->format[0] == fmt && view->itemsize == item && view->len == count * item;
    return 0;
}

/* gemm_batch(a, b, c, shift, residual, relu, lanes): for every i, c[i] = a @ b[i] + shift (one
 * value a row, broadcast; None: none) + residual[i] (None: none), then max(., 0) where relu: a
 * 1x1 conv's forward (a: the weights, b[i] and c[i]: a sample's input and output planes). a
 * (M, K) with one unit stride (either: transposed reads), b (B, K, N) and c, residual (B, M, N)
 * C-contiguous, shift (M,). The sums start from shift + residual written into c (BLAS's beta
 * = 1), where a pass after the product read and wrote c again; with neither, beta = 0 as
 * gemm's. The products (cut into column pieces of whole UNITs where there are fewer than
 * ``lanes``) are dealt over this module's C lanes (the caller has set BLAS to one thread). False,
 * with nothing written, where it cannot: no BLAS registered, other dtypes, layouts or sizes, c
 * overlapping a, b or residual (but residual is c itself); the caller then runs its own. */
static PyObject *py_gemm_batch(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *co, *shift_o, *res_o;
    int relu, lanes;
    if (!PyArg_ParseTuple(args, "OOOOOpi", &ao, &bo, &co, &shift_o, &res_o, &relu, &lanes)) return NULL;
    Py_buffer a, b, c, shift, res;
    if (get_operands(ao, bo, co, &a, &b, &c) < 0) return NULL;
    char fmt = a.format ? a.format[0] : 0;
    int fits = (fmt == 'f' && sgemm) || (fmt == 'd' && dgemm);
    fits = fits && b.format && c.format && b.format[0] == fmt && c.format[0] == fmt && a.itemsize == b.itemsize &&
           a.itemsize == c.itemsize && a.ndim == 2 && b.ndim == 3 && c.ndim == 3 && PyBuffer_IsContiguous(&b, 'C') &&
           PyBuffer_IsContiguous(&c, 'C');
    fits = fits && b.shape[0] == c.shape[0] && a.shape[0] == c.shape[1] && a.shape[1] == b.shape[1] &&
           b.shape[2] == c.shape[2] && c.shape[0] > 0 && c.shape[1] > 0 && c.shape[2] > 0 && a.shape[1] > 0;
    Py_ssize_t lda = 0;
    const int ta = fits ? operand_layout(&a, &lda) : 0;
    if (optional_operand(shift_o, &shift, fmt, a.itemsize, fits ? c.shape[1] : 0, &fits) < 0) {
        release_operands(&a, &b, &c);
        return NULL;
    }
    if (optional_operand(res_o, &res, fmt, a.itemsize, fits ? c.shape[0] * c.shape[1] * c.shape[2] : 0, &fits) < 0) {
        PyBuffer_Release(&shift);
        release_operands(&a, &b, &c);
        return NULL;
    }
    int ran = 0;
    if (fits && ta) {
        char *alo, *ahi, *clo = c.buf, *chi = (char *)c.buf + c.len, *blo = b.buf, *bhi = (char *)b.buf + b.len;
        span(&a, &alo, &ahi);
        const char *rlo = res.buf, *rhi = res.buf ? (const char *)res.buf + res.len : NULL;
        int apart = (chi <= alo || ahi <= clo) && (chi <= blo || bhi <= clo) &&
                    (!res.buf || rlo == clo || chi <= rlo || rhi <= clo);
        if (apart) {
            const int64_t count = c.shape[0], cols = c.shape[2];
            if (lanes < 1) lanes = 1;
            const int64_t pieces = count >= lanes ? 1 : (lanes + count - 1) / count;
            const int64_t width = ((cols + pieces - 1) / pieces + UNIT - 1) / UNIT * UNIT;
            Task t = {.run = run_batch, .fmt = fmt, .ta = ta, .m = c.shape[1], .n = cols, .k = a.shape[1],
                      .lda = lda, .ldb = cols, .ldc = cols, .a = a.buf, .b = b.buf, .c = c.buf, .item = a.itemsize,
                      .batch_b = b.shape[1] * cols, .batch_c = c.shape[1] * cols, .pieces = pieces, .cols = width,
                      .shift = shift.buf, .res = res.buf, .relu = relu};
            RELEASE_GIL
            deal_in_lanes(&t, 0, count * pieces, lanes, 1);
            REACQUIRE_GIL
            ran = 1;
        }
    }
    PyBuffer_Release(&shift);
    PyBuffer_Release(&res);
    release_operands(&a, &b, &c);
    return PyBool_FromLong(ran);
}

/* gemm_sum(a, b, parts, lanes): the B products a[i] @ b[i]^T (a (B, M, K), b (B, N, K), both
 * C-contiguous) summed in P = parts.shape[0] parts (P, M, N), part k summing products
 * [B k / P, B (k + 1) / P) in order (BLAS's beta = 1 from the second on), the parts dealt over
 * this module's C lanes (the caller has set BLAS to one thread): a 1x1 conv's weight gradient
 * (a: the samples' inputs, b: their output gradients), where the caller adds the parts in order,
 * so that its bits depend on P only. False, with nothing written, where it cannot: no BLAS
 * registered, other dtypes, layouts or sizes, more parts than products, parts overlapping a or b. */
static PyObject *py_gemm_sum(PyObject *self, PyObject *args)
{
    PyObject *ao, *bo, *co;
    int lanes;
    if (!PyArg_ParseTuple(args, "OOOi", &ao, &bo, &co, &lanes)) return NULL;
    Py_buffer a, b, c;
    if (get_operands(ao, bo, co, &a, &b, &c) < 0) return NULL;
    char fmt = a.format ? a.format[0] : 0;
    int fits = (fmt == 'f' && sgemm) || (fmt == 'd' && dgemm);
    fits = fits && b.format && c.format && b.format[0] == fmt && c.format[0] == fmt && a.itemsize == b.itemsize &&
           a.itemsize == c.itemsize && a.ndim == 3 && b.ndim == 3 && c.ndim == 3 && PyBuffer_IsContiguous(&a, 'C') &&
           PyBuffer_IsContiguous(&b, 'C') && PyBuffer_IsContiguous(&c, 'C');
    fits = fits && a.shape[0] == b.shape[0] && a.shape[2] == b.shape[2] && c.shape[1] == a.shape[1] &&
           c.shape[2] == b.shape[1] && c.shape[0] > 0 && c.shape[0] <= a.shape[0] && a.shape[1] > 0 &&
           b.shape[1] > 0 && a.shape[2] > 0;
    const char *clo = c.buf, *chi = (const char *)c.buf + c.len, *alo = a.buf, *blo = b.buf;
    fits = fits && (chi <= alo || alo + a.len <= clo) && (chi <= blo || blo + b.len <= clo);
    if (fits) {
        Task t = {.run = run_sum, .fmt = fmt, .m = a.shape[1], .n = b.shape[1], .k = a.shape[2], .a = a.buf,
                  .b = b.buf, .c = c.buf, .item = a.itemsize, .pieces = c.shape[0], .count = a.shape[0]};
        RELEASE_GIL
        deal_in_lanes(&t, 0, c.shape[0], lanes < 1 ? 1 : lanes, 1);
        REACQUIRE_GIL
    }
    release_operands(&a, &b, &c);
    return PyBool_FromLong(fits);
}

/* The most positions gemm_positions takes (F(4x4, 5x5) has 64) */
#define MAX_POSITIONS 64

/* gemm_positions(u, v, m, depths, n_out, n_in, p, vs, ms): for each position pos of depths,
 * m[pos, :n_out*p] as (n_out, p) = u[pos, :, :depths[pos]*n_in] @ v[pos, :depths[pos]*n_in*p] as
 * (depths[pos]*n_in, p): the GEMMs of one chunk of _tile_run (spatial.py), u (positions, n_out,
 * width) and v, m (positions, vs / ms) C-contiguous, on this thread's BLAS with the GIL released
 * once and counted, where one np.matmul per position released it uncounted each time and the
 * lanes queued for it between them. False, with nothing written, where it cannot: no BLAS
 * registered, other dtypes, layouts or sizes, m overlapping u or v; the caller then runs
 * np.matmul. */
static PyObject *py_gemm_positions(PyObject *self, PyObject *args)
{
    PyObject *uo, *vo, *mo, *depths_o;
    Py_ssize_t n_out, n_in, p, vs, ms;
    if (!PyArg_ParseTuple(args, "OOOOnnnnn", &uo, &vo, &mo, &depths_o, &n_out, &n_in, &p, &vs, &ms)) return NULL;
    Py_ssize_t depth[MAX_POSITIONS], positions = PySequence_Check(depths_o) ? PySequence_Size(depths_o) : -1;
    if (positions < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "gemm_positions: depths must be a sequence of ints");
        return NULL;
    }
    int fits = positions > 0 && positions <= MAX_POSITIONS && n_out > 0 && n_in > 0 && p > 0;
    for (Py_ssize_t i = 0; fits && i < positions; i++) {
        PyObject *item = PySequence_GetItem(depths_o, i);
        if (!item) return NULL;
        depth[i] = PyLong_AsSsize_t(item);
        Py_DECREF(item);
        if (depth[i] == -1 && PyErr_Occurred()) return NULL;
        fits = depth[i] > 0;
    }
    if (!fits) Py_RETURN_FALSE;
    Py_buffer u, v, m;
    if (get_operands(uo, vo, mo, &u, &v, &m) < 0) return NULL;
    int ran = 0;
    char fmt = u.format ? u.format[0] : 0;
    int kind = (fmt == 'f' && sgemm) || (fmt == 'd' && dgemm);
    kind = kind && v.format && m.format && v.format[0] == fmt && m.format[0] == fmt && u.itemsize == v.itemsize &&
           u.itemsize == m.itemsize && u.ndim == 3 && v.ndim == 2 && m.ndim == 2 && PyBuffer_IsContiguous(&u, 'C') &&
           PyBuffer_IsContiguous(&v, 'C') && PyBuffer_IsContiguous(&m, 'C');
    const char *ub = u.buf, *vb = v.buf, *mb = m.buf;
    int apart = (mb + m.len <= ub || ub + u.len <= mb) && (mb + m.len <= vb || vb + v.len <= mb);
    if (kind && apart && u.shape[0] == positions && v.shape[0] == positions && m.shape[0] == positions &&
        u.shape[1] == n_out && v.shape[1] == vs && m.shape[1] == ms && n_out * p <= ms) {
        const Py_ssize_t width = u.shape[2];
        int sizes = 1;
        for (Py_ssize_t i = 0; i < positions; i++)
            sizes = sizes && depth[i] <= width / n_in && depth[i] * n_in * p <= vs;
        if (sizes) {
            RELEASE_GIL
            for (Py_ssize_t i = 0; i < positions; i++) {
                const int64_t k = depth[i] * n_in;
                if (fmt == 'f')
                    sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n_out, p, k, 1.0f, (const float *)u.buf + i * n_out * width,
                          width, (const float *)v.buf + i * vs, p, 0.0f, (float *)m.buf + i * ms, p);
                else
                    dgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n_out, p, k, 1.0, (const double *)u.buf + i * n_out * width,
                          width, (const double *)v.buf + i * vs, p, 0.0, (double *)m.buf + i * ms, p);
            }
            REACQUIRE_GIL
            ran = 1;
        }
    }
    release_operands(&u, &v, &m);
    return PyBool_FromLong(ran);
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    USE_SIDE_LANES_METHOD,
    {"set_gemm", py_set_gemm, METH_VARARGS,
     "set_gemm(sgemm_address, dgemm_address): the ILP64 cblas_sgemm and cblas_dgemm that gemm calls (0: none)"},
    {"gemm", py_gemm, METH_VARARGS,
     "gemm(a, b, out, alpha, beta, lanes=1, by_columns=False, grain=0): out = alpha a @ b + beta out on the "
     "registered BLAS, GIL released and counted, split over C lanes in pieces of grain x 16 rows (or columns); "
     "False (nothing written) where the dtypes, layouts or overlap do not fit, or no BLAS is set"},
    {"gemm_batch", py_gemm_batch, METH_VARARGS,
     "gemm_batch(a, b, c, shift, residual, relu, lanes): c[i] = a @ b[i] (+ shift per row) (+ residual[i]), then "
     "max(., 0) where relu, for every i, the sums from shift + residual written into c, over C lanes; False (nothing "
     "written) where the dtypes, layouts, sizes or overlap do not fit, or no BLAS is set"},
    {"gemm_sum", py_gemm_sum, METH_VARARGS,
     "gemm_sum(a, b, parts, lanes): parts[k] = the sum of a[i] @ b[i]^T over the k-th of parts.shape[0] equal "
     "runs of i, over C lanes; False (nothing written) where the dtypes, layouts, sizes or overlap do not fit, or "
     "no BLAS is set"},
    {"gemm_positions", py_gemm_positions, METH_VARARGS,
     "gemm_positions(u, v, m, depths, n_out, n_in, p, vs, ms): per position i, m[i, :n_out*p] (n_out x p) = "
     "u[i, :, :depths[i]*n_in] @ v[i, :depths[i]*n_in*p] (depths[i]*n_in x p) on the registered BLAS, GIL released "
     "once and counted; False (nothing written) where the dtypes, layouts, sizes or overlap do not fit, or no BLAS is "
     "set"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blas_kernels",
                                    "The NumPy backend's GEMM entries: NumPy's BLAS with counted GIL releases.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__blas_kernels(void)
{
    static int registered = 0;
    if (!registered && pthread_atfork(NULL, NULL, lane_pool_after_fork) == 0) registered = 1;
    return PyModule_Create(&module);
}
