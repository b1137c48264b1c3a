/* Max pooling for the NumPy backend in one pass (NumPy needs about five per kernel offset to
 * keep the argmax). Optional: setup.py builds it where a C compiler exists; spatial.py
 * falls back to its NumPy version otherwise or when JUICEPY_CPU_KERNELS=numpy.
 *
 * PyTorch's rules: each window scans its rows then columns inside the input (padding never
 * wins), the first maximum in that order is kept, and NaN counts as a maximum (the last NaN
 * wins). argmax holds the flat h*W+w index of each maximum in its plane. The GIL is released
 * inside each kernel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "_gil_hint.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef struct {
    Py_ssize_t planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw;
} Geometry;

/* v != v is NaN: NaN wins, a later NaN too, as in torch */
#define SCAN_ROW(T, STRIDE)                                                                    \
    for (Py_ssize_t j = lo; j < hi; j++) {                                                    \
        T v = row[j * (STRIDE)];                                                              \
        int take = (v > value[j]) | (v != v);                                                 \
        value[j] = take ? v : value[j];                                                       \
        best[j] = take ? base + (int)(j * (STRIDE)) : best[j];                                \
    }

/* Row by row: for each input row and kernel column of a row of windows, one pass over all the
 * windows of that output row (a simple loop over j the compiler can unroll), instead of a
 * tiny loop per window. Windows see their elements in row-major order, as in torch. */
#define DEFINE_MAX_POOL(NAME, T)                                                              \
    VECTOR_CLONES static void NAME(const T *restrict x, T *restrict out, int *restrict argmax,              \
                     const Geometry *g)                                                       \
    {                                                                                         \
        for (Py_ssize_t p = 0; p < g->planes; p++) {                                          \
            const T *plane = x + p * g->h * g->w;                                             \
            for (Py_ssize_t i = 0; i < g->ho; i++) {                                          \
                T *value = out + (p * g->ho + i) * g->wo;                                     \
                int *best = argmax + (p * g->ho + i) * g->wo;                                 \
                Py_ssize_t r0 = i * g->sh - g->ph, r1 = r0 + g->kh;                           \
                if (r0 < 0) r0 = 0;                                                           \
                if (r1 > g->h) r1 = g->h;                                                     \
                for (Py_ssize_t j = 0; j < g->wo; j++) {                                      \
                    Py_ssize_t c0 = j * g->sw - g->pw;                                        \
                    value[j] = -INFINITY;                                                     \
                    best[j] = (int)(r0 * g->w + (c0 < 0 ? 0 : c0));                           \
                }                                                                             \
                for (Py_ssize_t r = r0; r < r1; r++)                                          \
                    for (Py_ssize_t dc = 0; dc < g->kw; dc++) {                               \
                        /* windows j whose column j*sw - pw + dc lies inside the row */       \
                        Py_ssize_t offset = dc - g->pw;                                       \
                        Py_ssize_t lo = offset >= 0 ? 0 : (-offset + g->sw - 1) / g->sw;      \
                        Py_ssize_t hi = g->w - 1 - offset < 0 ? 0                             \
                                        : (g->w - 1 - offset) / g->sw + 1;                    \
                        if (hi > g->wo) hi = g->wo;                                           \
                        const T *row = plane + r * g->w + offset;                             \
                        int base = (int)(r * g->w + offset);                                  \
                        if (g->sw == 2) /* the common stride as a constant: vectorisable */ \
                            SCAN_ROW(T, 2)                                                    \
                        else                                                                  \
                            SCAN_ROW(T, g->sw)                                                \
                    }                                                                         \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_MAX_POOL(max_pool_f32, float)
DEFINE_MAX_POOL(max_pool_f64, double)

/* The common 2x2 stride-2 unpadded window, unrolled: the generic kernel's row scans cost it four
 * passes over each output row plus the -inf start. Same scan order and NaN rule. */
#define TAKE(T, V, K, C, KC)                                                                  \
    do {                                                                                      \
        T c_ = (C);                                                                           \
        int t_ = (c_ > V) | (c_ != c_);                                                       \
        V = t_ ? c_ : V;                                                                      \
        K = t_ ? (KC) : K;                                                                    \
    } while (0)

#define DEFINE_MAX_POOL_2X2(NAME, T)                                                          \
    VECTOR_CLONES static void NAME(const T *restrict x, T *restrict out, int *restrict argmax,  \
                                   const Geometry *g)                                         \
    {                                                                                         \
        const Py_ssize_t h = g->h, w = g->w, ho = g->ho, wo = g->wo;                          \
        for (Py_ssize_t p = 0; p < g->planes; p++)                                            \
            for (Py_ssize_t i = 0; i < ho; i++) {                                             \
                const T *r0 = x + p * h * w + 2 * i * w, *r1 = r0 + w;                        \
                T *value = out + (p * ho + i) * wo;                                           \
                int *best = argmax + (p * ho + i) * wo;                                       \
                const int base = (int)(2 * i * w);                                            \
                for (Py_ssize_t j = 0; j < wo; j++) {                                         \
                    T v = r0[2 * j];                                                          \
                    int k = base + (int)(2 * j);                                              \
                    TAKE(T, v, k, r0[2 * j + 1], k + 1);                                      \
                    TAKE(T, v, k, r1[2 * j], base + (int)(w + 2 * j));                        \
                    TAKE(T, v, k, r1[2 * j + 1], base + (int)(w + 2 * j + 1));                \
                    value[j] = v;                                                             \
                    best[j] = k;                                                              \
                }                                                                             \
            }                                                                                 \
    }

DEFINE_MAX_POOL_2X2(max_pool_2x2_f32, float)
DEFINE_MAX_POOL_2X2(max_pool_2x2_f64, double)

#define DEFINE_MAX_POOL_BACKWARD(NAME, T)                                                     \
    static void NAME(const T *restrict dy, const int *restrict argmax, T *restrict dx,        \
                     Py_ssize_t planes, Py_ssize_t per_plane, Py_ssize_t plane_size,          \
                     int accumulate)                                                          \
    {                                                                                         \
        if (!accumulate)                                                                      \
            memset(dx, 0, (size_t)(planes * plane_size) * sizeof(T));                         \
        for (Py_ssize_t p = 0; p < planes; p++) {                                             \
            T *d = dx + p * plane_size;                                                       \
            const T *g = dy + p * per_plane;                                                  \
            const int *a = argmax + p * per_plane;                                            \
            for (Py_ssize_t k = 0; k < per_plane; k++) d[a[k]] += g[k];                       \
        }                                                                                     \
    }

DEFINE_MAX_POOL_BACKWARD(max_pool_backward_f32, float)
DEFINE_MAX_POOL_BACKWARD(max_pool_backward_f64, double)

/* A C-contiguous buffer of ``format`` ("f", "d" or "i") holding exactly ``count`` items. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *format,
                      Py_ssize_t count, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    if (!view->format || strcmp(view->format, format) || view->len != count * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of format '%s', got %zd of '%s'",
                     name, count, format, view->len / view->itemsize,
                     view->format ? view->format : "?");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_max_pool(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo, *ao;
    Geometry g;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnnnnn", &xo, &oo, &ao, &g.planes, &g.h, &g.w, &g.ho,
                          &g.wo, &g.kh, &g.kw, &g.sh, &g.sw, &g.ph, &g.pw))
        return NULL;
    Py_buffer probe;
    if (PyObject_GetBuffer(xo, &probe, PyBUF_FORMAT) < 0) return NULL;
    const char *fmt = !probe.format ? "?" : strcmp(probe.format, "f") == 0 ? "f" : "d";
    PyBuffer_Release(&probe);
    Py_buffer x, out, argmax;
    if (get_buffer(xo, &x, 0, fmt, g.planes * g.h * g.w, "x") < 0) return NULL;
    if (get_buffer(oo, &out, 1, fmt, g.planes * g.ho * g.wo, "out") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_buffer(ao, &argmax, 1, "i", g.planes * g.ho * g.wo, "argmax") < 0) {
        PyBuffer_Release(&x); PyBuffer_Release(&out);
        return NULL;
    }
    int two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0;
    RELEASE_GIL
    if (two && fmt[0] == 'f')
        max_pool_2x2_f32(x.buf, out.buf, argmax.buf, &g);
    else if (two)
        max_pool_2x2_f64(x.buf, out.buf, argmax.buf, &g);
    else if (fmt[0] == 'f')
        max_pool_f32(x.buf, out.buf, argmax.buf, &g);
    else
        max_pool_f64(x.buf, out.buf, argmax.buf, &g);
    REACQUIRE_GIL
    PyBuffer_Release(&x); PyBuffer_Release(&out); PyBuffer_Release(&argmax);
    Py_RETURN_NONE;
}

static PyObject *py_max_pool_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *ao, *dxo;
    Py_ssize_t planes, per_plane, plane_size;
    int accumulate;
    if (!PyArg_ParseTuple(args, "OOOnnnp", &dyo, &ao, &dxo, &planes, &per_plane, &plane_size,
                          &accumulate))
        return NULL;
    Py_buffer probe;
    if (PyObject_GetBuffer(dxo, &probe, PyBUF_FORMAT) < 0) return NULL;
    const char *fmt = !probe.format ? "?" : strcmp(probe.format, "f") == 0 ? "f" : "d";
    PyBuffer_Release(&probe);
    Py_buffer dy, argmax, dx;
    if (get_buffer(dyo, &dy, 0, fmt, planes * per_plane, "dy") < 0) return NULL;
    if (get_buffer(ao, &argmax, 0, "i", planes * per_plane, "argmax") < 0) {
        PyBuffer_Release(&dy);
        return NULL;
    }
    if (get_buffer(dxo, &dx, 1, fmt, planes * plane_size, "dx") < 0) {
        PyBuffer_Release(&dy); PyBuffer_Release(&argmax);
        return NULL;
    }
    RELEASE_GIL
    if (fmt[0] == 'f')
        max_pool_backward_f32(dy.buf, argmax.buf, dx.buf, planes, per_plane, plane_size, accumulate);
    else
        max_pool_backward_f64(dy.buf, argmax.buf, dx.buf, planes, per_plane, plane_size, accumulate);
    REACQUIRE_GIL
    PyBuffer_Release(&dy); PyBuffer_Release(&argmax); PyBuffer_Release(&dx);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    {"max_pool", py_max_pool, METH_VARARGS,
     "max_pool(x, out, argmax, planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw): max and int32 "
     "argmax (flat h*W+w) of every window of every plane"},
    {"max_pool_backward", py_max_pool_backward, METH_VARARGS,
     "max_pool_backward(dy, argmax, dx, planes, Ho*Wo, H*W, accumulate): dx (+)= dy scattered "
     "to the argmax positions"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pool_kernels",
                                    "One-pass max pooling for the NumPy backend.", -1, methods};

PyMODINIT_FUNC PyInit__pool_kernels(void) { return PyModule_Create(&module); }
