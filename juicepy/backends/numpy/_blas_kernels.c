/* The NumPy backend's GEMM entry for its lanes: one call of the BLAS that NumPy loaded (its ILP64
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
    if (PyObject_GetBuffer(ao, &a, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(bo, &b, PyBUF_STRIDES | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    if (PyObject_GetBuffer(co, &c, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        return NULL;
    }
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
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&c);
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blas_kernels",
                                    "The NumPy backend's GEMM entry: NumPy's BLAS with counted GIL releases.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__blas_kernels(void)
{
    static int registered = 0;
    if (!registered && pthread_atfork(NULL, NULL, lane_pool_after_fork) == 0) registered = 1;
    return PyModule_Create(&module);
}
