#ifndef JUICEPY_GIL_HINT_H
#define JUICEPY_GIL_HINT_H

/* The GIL hand-over hint. A lane thread of threads.py that is handed a call sees it while it
 * polls (GIL released), but the dispatching thread still holds the GIL for its own call's Python;
 * taking it then sleeps the lane on the GIL's condition variable, and a sleeping thread is slow
 * to wake on the project's VMs (docs/numpy.md). So every kernel counts its GIL releases in a shared int64
 * (count_gil_releases registers it: kernels.py's GIL_RELEASES), and a lane waits for that count
 * to move before it takes the GIL: it then finds the GIL free. Only a hint: NumPy's own
 * releases are not counted, and the lane takes the GIL the usual way after a bounded poll. */
static long long *gil_releases;
static PyObject *gil_releases_owner;

static inline void note_gil_release(void)
{
    if (gil_releases) __atomic_fetch_add(gil_releases, 1, __ATOMIC_RELEASE);
}

/* Py_BEGIN_ALLOW_THREADS that counts the release once the GIL is free */
#define RELEASE_GIL          \
    Py_BEGIN_ALLOW_THREADS   \
    note_gil_release();
#define REACQUIRE_GIL Py_END_ALLOW_THREADS

/* count_gil_releases(counter): this module's kernels add 1 to the int64 counter[0] each time
 * they release the GIL (None: stop counting) */
static PyObject *py_count_gil_releases(PyObject *self, PyObject *counter)
{
    long long *word = NULL;
    if (counter != Py_None) {
        Py_buffer b;
        if (PyObject_GetBuffer(counter, &b, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) return NULL;
        int ok = b.itemsize == 8 && b.len >= 8 && b.format && (b.format[0] == 'q' || b.format[0] == 'l');
        word = (long long *)b.buf;
        PyBuffer_Release(&b);  /* the buffer stays valid: the module keeps a reference to its owner */
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "count_gil_releases: counter must be a writable int64 array");
            return NULL;
        }
    }
    PyObject *owner = counter == Py_None ? NULL : counter, *previous = gil_releases_owner;
    Py_XINCREF(owner);
    gil_releases = word;
    gil_releases_owner = owner;
    Py_XDECREF(previous);
    Py_RETURN_NONE;
}

#define COUNT_GIL_RELEASES_METHOD                                          \
    {"count_gil_releases", py_count_gil_releases, METH_O,                  \
     "count_gil_releases(counter): add 1 to the int64 counter[0] at every GIL release of this "   \
     "module's kernels (None: stop)"}

#endif
