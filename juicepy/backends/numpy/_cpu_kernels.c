/* Fused kernels for the NumPy backend: one pass over param, grad and state where NumPy needs a
 * dozen (optimizers), one pass where it needs a mask and a product (ReLU backward). Optional: setup.py builds it when a C compiler is present, and the
 * backend falls back to NumPy ufuncs otherwise. The GIL is released inside each kernel so the
 * backend can run lanes of one flat block on several threads.
 *
 * Formulas are torch.optim's, in the same form as backend.py's fallback:
 *   Adam:  m += (g - m)(1 - b1);  v = b2 v + (1 - b2) g^2;
 *          p -= step_size * m / (sqrt(v) + eps_scaled)
 *          with step_size = lr / bc1 * sqrt(bc2), eps_scaled = eps * sqrt(bc2)
 *   SGD:   torch.optim.SGD with momentum, dampening, Nesterov, weight decay.
 */
#include "_kernels.h"

#define DEFINE_ADAM(NAME, T, SQRT)                                                           \
    VECTOR_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict m,          \
                                   T *restrict v, T *restrict vmax, Py_ssize_t n, T c1, T b2, \
                                   T c2, T step_size, T eps_scaled, T l2, T shrink)           \
    {                                                                                         \
        for (Py_ssize_t i = 0; i < n; i++) {                                                  \
            T pi = p[i] * shrink;                                                             \
            T gi = g[i] + l2 * pi;                                                            \
            T mi = m[i] + (gi - m[i]) * c1;                                                   \
            T vi = v[i] * b2 + c2 * gi * gi;                                                  \
            T second = vi;                                                                    \
            if (vmax) {                                                                       \
                second = vmax[i] > vi ? vmax[i] : vi;                                         \
                vmax[i] = second;                                                             \
            }                                                                                 \
            m[i] = mi;                                                                        \
            v[i] = vi;                                                                        \
            p[i] = pi - step_size * mi / (SQRT(second) + eps_scaled);                        \
        }                                                                                     \
    }

DEFINE_ADAM(adam_f32, float, sqrtf)
DEFINE_ADAM(adam_f64, double, sqrt)

#define DEFINE_SGD(NAME, T)                                                                   \
    VECTOR_CLONES static void NAME(T *restrict p, const T *restrict g, T *restrict buf,        \
                                   Py_ssize_t n, T lr, T momentum, T damp, T wd, int nesterov, \
                                   int first)                                                 \
    {                                                                                         \
        for (Py_ssize_t i = 0; i < n; i++) {                                                  \
            T gi = g[i] + wd * p[i];                                                          \
            if (buf) {                                                                        \
                T bi = first ? gi : buf[i] * momentum + damp * gi;                            \
                buf[i] = bi;                                                                  \
                gi = nesterov ? gi + momentum * bi : bi;                                      \
            }                                                                                 \
            p[i] -= lr * gi;                                                                  \
        }                                                                                     \
    }

DEFINE_SGD(sgd_f32, float)
DEFINE_SGD(sgd_f64, double)

#define DEFINE_RELU_BACKWARD(NAME, T)                                                         \
    VECTOR_CLONES static void NAME(const T *restrict y, const T *restrict dy, T *restrict dx,    \
                                   Py_ssize_t n, int accumulate)                                 \
    {                                                                                           \
        if (accumulate)                                                                         \
            for (Py_ssize_t i = 0; i < n; i++) dx[i] += y[i] > 0 ? dy[i] : (T)0;                \
        else                                                                                    \
            for (Py_ssize_t i = 0; i < n; i++) dx[i] = y[i] > 0 ? dy[i] : (T)0;                 \
    }

DEFINE_RELU_BACKWARD(relu_backward_f32, float)
DEFINE_RELU_BACKWARD(relu_backward_f64, double)

/* x < 0 ? 0 : x keeps NaN (and -0.0) as np.maximum(x, 0) does; NumPy's maximum against a
 * Python scalar runs a slower mixed-type loop */
#define DEFINE_RELU(NAME, T)                                                                  \
    VECTOR_CLONES static void NAME(const T *restrict x, T *restrict y, Py_ssize_t n)          \
    {                                                                                         \
        for (Py_ssize_t i = 0; i < n; i++) y[i] = x[i] < 0 ? (T)0 : x[i];                     \
    }

DEFINE_RELU(relu_f32, float)
DEFINE_RELU(relu_f64, double)

/* out = a + b, then the ReLU above in the same pass (a residual block's sum and its ReLU: one
 * read of each operand and one write instead of two reads and two writes of out). No restrict
 * on out: the Add layer sums more than two inputs in place (out is a). */
#define DEFINE_ADD(NAME, T)                                                                   \
    VECTOR_CLONES static void NAME(const T *a, const T *b, T *out, Py_ssize_t n, int relu)    \
    {                                                                                         \
        if (relu)                                                                             \
            for (Py_ssize_t i = 0; i < n; i++) {                                              \
                T v = a[i] + b[i];                                                            \
                out[i] = v < 0 ? (T)0 : v;                                                    \
            }                                                                                 \
        else                                                                                  \
            for (Py_ssize_t i = 0; i < n; i++) out[i] = a[i] + b[i];                          \
    }

DEFINE_ADD(add_f32, float)
DEFINE_ADD(add_f64, double)

/* Buffers: writable, C-contiguous, all of one itemsize (4 or 8) and one length. */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous%s float buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    if (!view->format || (strcmp(view->format, "f") && strcmp(view->format, "d"))) {
        PyErr_Format(PyExc_TypeError, "%s: expected float32 or float64, got format '%s'", name,
                     view->format ? view->format : "?");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int same_layout(Py_buffer *a, Py_buffer *b, const char *name)
{
    if (a->itemsize != b->itemsize || a->len != b->len) {
        PyErr_Format(PyExc_ValueError, "%s: dtype or length differs from the param's", name);
        return -1;
    }
    return 0;
}

static PyObject *py_adam(PyObject *self, PyObject *args)
{
    PyObject *po, *go, *mo, *vo, *vmaxo;
    double c1, b2, c2, step_size, eps_scaled, l2, shrink;
    if (!PyArg_ParseTuple(args, "OOOOOddddddd", &po, &go, &mo, &vo, &vmaxo, &c1, &b2, &c2,
                          &step_size, &eps_scaled, &l2, &shrink))
        return NULL;
    Py_buffer p, g, m, v, vmax;
    int have_vmax = vmaxo != Py_None, got = 0;
    if (get_buffer(po, &p, 1, "param") < 0) return NULL;
    got = 1;
    if (get_buffer(go, &g, 0, "grad") < 0 || (got = 2, same_layout(&p, &g, "grad") < 0)) goto fail;
    if (get_buffer(mo, &m, 1, "exp_avg") < 0 || (got = 3, same_layout(&p, &m, "exp_avg") < 0)) goto fail;
    if (get_buffer(vo, &v, 1, "exp_avg_sq") < 0 || (got = 4, same_layout(&p, &v, "exp_avg_sq") < 0)) goto fail;
    if (have_vmax && (get_buffer(vmaxo, &vmax, 1, "max_exp_avg_sq") < 0 ||
                      (got = 5, same_layout(&p, &vmax, "max_exp_avg_sq") < 0)))
        goto fail;
    Py_ssize_t n = p.len / p.itemsize;
    RELEASE_GIL
    if (p.itemsize == 4)
        adam_f32(p.buf, g.buf, m.buf, v.buf, have_vmax ? vmax.buf : NULL, n, (float)c1, (float)b2,
                 (float)c2, (float)step_size, (float)eps_scaled, (float)l2, (float)shrink);
    else
        adam_f64(p.buf, g.buf, m.buf, v.buf, have_vmax ? vmax.buf : NULL, n, c1, b2, c2,
                 step_size, eps_scaled, l2, shrink);
    REACQUIRE_GIL
    PyBuffer_Release(&p); PyBuffer_Release(&g); PyBuffer_Release(&m); PyBuffer_Release(&v);
    if (have_vmax) PyBuffer_Release(&vmax);
    Py_RETURN_NONE;
fail:
    if (got >= 1) PyBuffer_Release(&p);
    if (got >= 2) PyBuffer_Release(&g);
    if (got >= 3) PyBuffer_Release(&m);
    if (got >= 4) PyBuffer_Release(&v);
    if (got >= 5) PyBuffer_Release(&vmax);
    return NULL;
}

static PyObject *py_sgd(PyObject *self, PyObject *args)
{
    PyObject *po, *go, *bo;
    double lr, momentum, damp, wd;
    int nesterov, first;
    if (!PyArg_ParseTuple(args, "OOOddddpp", &po, &go, &bo, &lr, &momentum, &damp, &wd,
                          &nesterov, &first))
        return NULL;
    Py_buffer p, g, b;
    int have_buf = bo != Py_None, got = 0;
    if (get_buffer(po, &p, 1, "param") < 0) return NULL;
    got = 1;
    if (get_buffer(go, &g, 0, "grad") < 0 || (got = 2, same_layout(&p, &g, "grad") < 0)) goto fail;
    if (have_buf && (get_buffer(bo, &b, 1, "momentum_buffer") < 0 ||
                     (got = 3, same_layout(&p, &b, "momentum_buffer") < 0)))
        goto fail;
    Py_ssize_t n = p.len / p.itemsize;
    RELEASE_GIL
    if (p.itemsize == 4)
        sgd_f32(p.buf, g.buf, have_buf ? b.buf : NULL, n, (float)lr, (float)momentum, (float)damp,
                (float)wd, nesterov, first);
    else
        sgd_f64(p.buf, g.buf, have_buf ? b.buf : NULL, n, lr, momentum, damp, wd, nesterov, first);
    REACQUIRE_GIL
    PyBuffer_Release(&p); PyBuffer_Release(&g);
    if (have_buf) PyBuffer_Release(&b);
    Py_RETURN_NONE;
fail:
    if (got >= 1) PyBuffer_Release(&p);
    if (got >= 2) PyBuffer_Release(&g);
    if (got >= 3) PyBuffer_Release(&b);
    return NULL;
}

/* The calls (in0, in1, out, flag) of the elementwise kernels above that read two arrays and
 * write a third of the same layout: relu_backward (flag: accumulate) and add (flag: relu). */
typedef void (*binary_f32)(const float *, const float *, float *, Py_ssize_t, int);
typedef void (*binary_f64)(const double *, const double *, double *, Py_ssize_t, int);

static PyObject *binary_call(PyObject *args, const char *in0_name, const char *in1_name,
                             const char *out_name, binary_f32 f32, binary_f64 f64)
{
    PyObject *in0o, *in1o, *outo;
    int flag;
    if (!PyArg_ParseTuple(args, "OOOp", &in0o, &in1o, &outo, &flag))
        return NULL;
    Py_buffer in0, in1, out;
    int got = 0;
    if (get_buffer(outo, &out, 1, out_name) < 0) return NULL;
    got = 1;
    if (get_buffer(in0o, &in0, 0, in0_name) < 0 || (got = 2, same_layout(&out, &in0, in0_name) < 0)) goto fail;
    if (get_buffer(in1o, &in1, 0, in1_name) < 0 || (got = 3, same_layout(&out, &in1, in1_name) < 0)) goto fail;
    Py_ssize_t n = out.len / out.itemsize;
    RELEASE_GIL
    if (out.itemsize == 4)
        f32(in0.buf, in1.buf, out.buf, n, flag);
    else
        f64(in0.buf, in1.buf, out.buf, n, flag);
    REACQUIRE_GIL
    PyBuffer_Release(&out); PyBuffer_Release(&in0); PyBuffer_Release(&in1);
    Py_RETURN_NONE;
fail:
    if (got >= 1) PyBuffer_Release(&out);
    if (got >= 2) PyBuffer_Release(&in0);
    if (got >= 3) PyBuffer_Release(&in1);
    return NULL;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    return binary_call(args, "y", "dy", "dx", relu_backward_f32, relu_backward_f64);
}

static PyObject *py_relu(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo;
    if (!PyArg_ParseTuple(args, "OO", &xo, &yo))
        return NULL;
    Py_buffer x, y;
    if (get_buffer(yo, &y, 1, "out") < 0) return NULL;
    if (get_buffer(xo, &x, 0, "x") < 0) {
        PyBuffer_Release(&y);
        return NULL;
    }
    if (same_layout(&y, &x, "x") < 0) {
        PyBuffer_Release(&y); PyBuffer_Release(&x);
        return NULL;
    }
    Py_ssize_t n = y.len / y.itemsize;
    RELEASE_GIL
    if (y.itemsize == 4)
        relu_f32(x.buf, y.buf, n);
    else
        relu_f64(x.buf, y.buf, n);
    REACQUIRE_GIL
    PyBuffer_Release(&y); PyBuffer_Release(&x);
    Py_RETURN_NONE;
}

static PyObject *py_add(PyObject *self, PyObject *args)
{
    return binary_call(args, "a", "b", "out", add_f32, add_f64);
}

/* spin_while(flags, index, value, seconds, releases=None, seen=-1, handover=0.0): wait
 * (spin_while_equal), with the GIL released, while the int64 flags[index] still equals value, for
 * at most ``seconds``; True once it changed. threads.py's lanes hand work over through these
 * flags. Once it changed, with ``releases`` (kernels.py's GIL_RELEASES, _gil_hint.h) it also
 * waits, at most ``handover`` seconds, while releases[0] still equals flags[seen] (the count when
 * the work was posted), so that the GIL is taken once the dispatching thread let it go. */
static PyObject *py_spin_while(PyObject *self, PyObject *args)
{
    PyObject *fo, *ro = Py_None;
    Py_ssize_t index, seen = -1;
    long long value;
    double seconds, handover = 0.0;
    if (!PyArg_ParseTuple(args, "OnLd|Ond", &fo, &index, &value, &seconds, &ro, &seen, &handover)) return NULL;
    Py_buffer f, r;
    if (PyObject_GetBuffer(fo, &f, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Py_ssize_t words = f.len / 8;
    int bad = f.itemsize != 8 || index < 0 || index >= words, counted = 0;
    if (!bad && ro != Py_None) {
        if (PyObject_GetBuffer(ro, &r, PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&f);
            return NULL;
        }
        counted = 1;
        bad = r.itemsize != 8 || r.len < 8 || seen < 0 || seen >= words;
    }
    if (bad) {
        PyBuffer_Release(&f);
        if (counted) PyBuffer_Release(&r);
        PyErr_SetString(PyExc_ValueError,
                        "spin_while: flags and releases must be int64, index and seen inside flags");
        return NULL;
    }
    const long long *flag = (const long long *)f.buf + index;
    int changed;
    RELEASE_GIL
    changed = spin_while_equal(flag, value, seconds);
    if (changed && counted)
        spin_while_equal((const long long *)r.buf, __atomic_load_n((const long long *)f.buf + seen, __ATOMIC_ACQUIRE),
                         handover);
    REACQUIRE_GIL
    PyBuffer_Release(&f);
    if (counted) PyBuffer_Release(&r);
    return PyBool_FromLong(changed);
}

static PyMethodDef methods[] = {
    COUNT_GIL_RELEASES_METHOD,
    {"relu", py_relu, METH_VARARGS, "relu(x, out): out = max(x, 0), NaN kept"},
    {"add", py_add, METH_VARARGS, "add(a, b, out, relu): out = a + b, then max(out, 0) (NaN kept) when relu"},
    {"relu_backward", py_relu_backward, METH_VARARGS,
     "relu_backward(y, dy, dx, accumulate): dx (+)= dy where y > 0, in one pass"},
    {"adam", py_adam, METH_VARARGS,
     "adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq|None, c1, beta2, c2, step_size, "
     "eps_scaled, l2, shrink): one fused Adam/AdamW pass, in place"},
    {"sgd", py_sgd, METH_VARARGS,
     "sgd(param, grad, momentum_buffer|None, lr, momentum, 1-dampening, weight_decay, nesterov, "
     "first_step): one fused SGD pass, in place"},
    {"spin_while", py_spin_while, METH_VARARGS,
     "spin_while(flags, index, value, seconds, releases=None, seen=-1, handover=0.0): wait (GIL released) "
     "while int64 flags[index] == value, at most seconds; True once it changed (then, with releases, also "
     "while releases[0] == flags[seen], at most handover seconds)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                                    "Fused CPU kernels (optimizers, ReLU backward) for the NumPy backend.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&module); }
