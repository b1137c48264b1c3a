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
#include "_side_lanes.h"

#include <pthread.h>

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

static SideLanes side;

/* Runs the side task posted to a claimed lane (waiting for the caller to post it), then leaves
 * the lane in ``next_state`` */
static void serve_side(SideLane *l, int k, int next_state)
{
    const long long done = l->done;
    while (__atomic_load_n(&l->posted, __ATOMIC_ACQUIRE) == done) cpu_pause();
    l->run(l->arg, k);
    __atomic_store_n(&l->done, done + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&l->state, next_state, __ATOMIC_RELEASE);
}

/* spin_while_equal for lane k's wait for its next Python call, running the side tasks handed
 * to it meanwhile (each restarts its ``seconds``) */
static int serve_while_equal(const long long *word, long long value, double seconds, int k)
{
    SideLane *l = &side.lane[k];
    int count = __atomic_load_n(&side.count, __ATOMIC_RELAXED);
    while (count < k && !__atomic_compare_exchange_n(&side.count, &count, k, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {}
    __atomic_store_n(&l->state, 1, __ATOMIC_SEQ_CST);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int changed = 0;
    for (unsigned long i = 0;; i++) {
        if (__atomic_load_n(&l->state, __ATOMIC_ACQUIRE) == 2) {
            serve_side(l, k, 1);
            clock_gettime(CLOCK_MONOTONIC, &start);
            continue;
        }
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) {
            changed = 1;
            break;
        }
        if ((i & 15) == 15) {
            if (seconds_since(&start) > seconds) break;
            sched_yield();
        }
        cpu_pause();
    }
    int polling = 1;
    if (!__atomic_compare_exchange_n(&l->state, &polling, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        serve_side(l, k, 0);  /* claimed as it left */
    return changed;
}

/* A forked child has none of the parent's lane threads */
static void side_after_fork(void) { memset(&side, 0, sizeof side); }

/* side_tasks_done(): the side tasks every lane has run so far (tests see the hand-over with it) */
static PyObject *py_side_tasks_done(PyObject *self, PyObject *unused)
{
    long long total = 0;
    for (int k = 0; k < SIDE_LANES_MAX; k++) total += __atomic_load_n(&side.lane[k].done, __ATOMIC_ACQUIRE);
    return PyLong_FromLongLong(total);
}

/* spin_while(flags, index, value, seconds, releases=None, seen=-1, handover=0.0, lane=0): wait
 * (spin_while_equal), with the GIL released, while the int64 flags[index] still equals value, for
 * at most ``seconds``; True once it changed. threads.py's lanes hand work over through these
 * flags. Once it changed, with ``releases`` (kernels.py's GIL_RELEASES, _gil_hint.h) it also
 * waits, at most ``handover`` seconds, while releases[0] still equals flags[seen] (the count when
 * the work was posted), so that the GIL is taken once the dispatching thread let it go. With
 * ``lane`` (1 .. SIDE_LANES_MAX - 1), threads.py's lane of that number, it runs the side tasks
 * handed to it while it waits for the flag (_side_lanes.h). */
static PyObject *py_spin_while(PyObject *self, PyObject *args)
{
    PyObject *fo, *ro = Py_None;
    Py_ssize_t index, seen = -1;
    long long value;
    double seconds, handover = 0.0;
    int lane = 0;
    if (!PyArg_ParseTuple(args, "OnLd|Ondi", &fo, &index, &value, &seconds, &ro, &seen, &handover, &lane)) return NULL;
    if (lane < 0 || lane >= SIDE_LANES_MAX) {
        PyErr_Format(PyExc_ValueError, "spin_while: lane must be in [0, %d), got %d", SIDE_LANES_MAX, lane);
        return NULL;
    }
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
    changed = lane ? serve_while_equal(flag, value, seconds, lane) : spin_while_equal(flag, value, seconds);
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
     "spin_while(flags, index, value, seconds, releases=None, seen=-1, handover=0.0, lane=0): wait (GIL "
     "released) while int64 flags[index] == value, at most seconds; True once it changed (then, with releases, "
     "also while releases[0] == flags[seen], at most handover seconds); lane > 0 runs side tasks meanwhile"},
    {"side_tasks_done", py_side_tasks_done, METH_NOARGS,
     "side_tasks_done(): how many side tasks (_side_lanes.h) threads.py's lanes have run in this process"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                                    "Fused CPU kernels (optimizers, ReLU backward) for the NumPy backend.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cpu_kernels(void)
{
    static int registered = 0;
    if (!registered && pthread_atfork(NULL, NULL, side_after_fork) == 0) registered = 1;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *capsule = PyCapsule_New(&side, SIDE_LANES_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "side_lanes", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
