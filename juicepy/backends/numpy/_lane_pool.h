/* The C lanes of a kernel module: a call split over threads inside the C call, with the GIL
 * released throughout. threads.py's lanes hand work over through the GIL, and a thread waiting
 * for the GIL blocks in the kernel, and on the project's VMs such a thread's wake-up took about as
 * long as a whole batch-norm pass on the ResNet's shapes (docs/numpy.md).
 *
 * Include after defining LANE_TASK, a struct type with a member
 *     void (*run)(const LANE_TASK *, Py_ssize_t lo, Py_ssize_t hi);
 * run_in_lanes(t, lo, hi, lanes) calls t->run over [lo, hi) in ``lanes`` contiguous parts;
 * deal_in_lanes(t, lo, hi, lanes, grain) in pieces of ``grain`` that each lane takes in turn, so a
 * worker that wakes late takes fewer (pieces that write disjoint outputs only). The parts go to
 * threads.py's lanes where they poll for their next Python call (_side_lanes.h: ``side_lanes``,
 * set by the module's use_side_lanes); where none polls (they never ran, or blocked after a
 * while without calls) the module's own workers take them (``pool``; its PyInit registers
 * lane_pool_after_fork with pthread_atfork): running such a call alone left a training loop's
 * first products of each step on one thread (the MLP step measured so, docs/numpy.md). */
#ifndef JUICEPY_LANE_POOL_H
#define JUICEPY_LANE_POOL_H

#include <pthread.h>
#include <stdint.h>

#include "_side_lanes.h"

#define MAX_LANES 64
/* seconds a worker polls for the next call before it blocks (threads.LANE_SPIN's reasoning) */
#define POLL_SECONDS 2e-3

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int workers;          /* worker threads started: lanes 1 .. workers */
    long long posted;     /* calls posted; every worker takes part in each */
    int pending;          /* workers not yet through the current call */
    int sleeping;         /* workers blocked on ``wake`` */
    int busy;             /* a call holds the pool (another caller runs its lanes itself) */
    const LANE_TASK *task;
    Py_ssize_t c0, c1;
    int lanes;
    Py_ssize_t grain;     /* deal_in_lanes's piece (0: run_in_lanes's fixed parts) */
    Py_ssize_t next;      /* the next piece not taken yet */
    int inside;           /* workers taking pieces of the call dealt now */
    long long start[MAX_LANES]; /* ``posted`` when each worker was started */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void run_lane(const LANE_TASK *t, Py_ssize_t c0, Py_ssize_t c1, int lanes, int k)
{
    const Py_ssize_t lo = c0 + (c1 - c0) * k / lanes, hi = c0 + (c1 - c0) * (k + 1) / lanes;
    if (lo < hi) t->run(t, lo, hi);
}

/* Takes a dealt call's pieces of ``grain`` below c1 until none is left: *next counts on past c1,
 * so a thread that comes in after the caller returned takes nothing and never reads its task */
static void take_pieces(const LANE_TASK *t, Py_ssize_t *next, Py_ssize_t grain, Py_ssize_t c1)
{
    for (;;) {
        const Py_ssize_t lo = __atomic_fetch_add(next, grain, __ATOMIC_SEQ_CST);
        if (lo >= c1) return;
        t->run(t, lo, lo + grain < c1 ? lo + grain : c1);
    }
}

/* One poll of a caller waiting for its lanes: a pause, and the core to any other runnable thread
 * every 16 */
static inline void poll_pause(unsigned long i)
{
    cpu_pause();
    if ((i & 15) == 15) sched_yield();
}

/* threads.py's lanes (None until use_side_lanes) and one lane's part of a call handed to them */
static SideLanes *side_lanes;

typedef struct {
    const LANE_TASK *task;
    Py_ssize_t c0, c1, grain;
    Py_ssize_t *next; /* the dealt call's next piece (grain > 0) */
    int lanes, part;
} SidePart;

static void run_side_part(void *arg, int lane)
{
    const SidePart *p = arg;
    (void)lane;
    if (p->grain)
        take_pieces(p->task, p->next, p->grain, p->c1);
    else
        run_lane(p->task, p->c0, p->c1, p->lanes, p->part);
}

/* The call on this thread and up to lanes - 1 polling side lanes (fixed parts, or dealt pieces
 * of ``grain``): 1 where it ran so, 0 where none polls (the caller uses its own pool). */
static int side_call(const LANE_TASK *t, Py_ssize_t c0, Py_ssize_t c1, int lanes, Py_ssize_t grain)
{
    const int count = side_lanes ? __atomic_load_n(&side_lanes->count, __ATOMIC_ACQUIRE) : 0;
    if (!count) return 0;
    int ks[SIDE_LANES_MAX];
    int claimed = 0;
    for (int k = 1; k <= count && k < SIDE_LANES_MAX && claimed < lanes - 1; k++) {
        int polling = 1;
        if (__atomic_compare_exchange_n(&side_lanes->lane[k].state, &polling, 2, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            ks[claimed++] = k;
    }
    if (!claimed) return 0;
    Py_ssize_t next = c0;
    SidePart parts[SIDE_LANES_MAX];
    long long posted[SIDE_LANES_MAX];
    for (int p = 0; p <= claimed; p++) parts[p] = (SidePart){t, c0, c1, grain, &next, claimed + 1, p};
    for (int j = 0; j < claimed; j++) {
        SideLane *l = &side_lanes->lane[ks[j]];
        l->run = run_side_part;
        l->arg = &parts[j + 1];
        posted[j] = __atomic_add_fetch(&l->posted, 1, __ATOMIC_RELEASE);
    }
    run_side_part(&parts[0], 0);
    /* done may be past posted already: once done, the lane can be claimed by the next caller */
    for (int j = 0; j < claimed; j++)
        for (unsigned long i = 0; __atomic_load_n(&side_lanes->lane[ks[j]].done, __ATOMIC_ACQUIRE) < posted[j]; i++)
            poll_pause(i);
    return 1;
}

static void *worker_main(void *arg)
{
    const int lane = (int)(intptr_t)arg;
    long long seen = pool.start[lane];
    for (;;) {
        if (!spin_while_equal(&pool.posted, seen, POLL_SECONDS)) {
            pthread_mutex_lock(&pool.lock);
            __atomic_add_fetch(&pool.sleeping, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&pool.posted, __ATOMIC_SEQ_CST) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            __atomic_sub_fetch(&pool.sleeping, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&pool.lock);
        }
        /* the next call cannot be posted before this worker is through this one */
        seen = __atomic_load_n(&pool.posted, __ATOMIC_SEQ_CST);
        if (lane < pool.lanes && pool.grain) {
            __atomic_add_fetch(&pool.inside, 1, __ATOMIC_SEQ_CST);
            take_pieces(pool.task, &pool.next, pool.grain, pool.c1);
            __atomic_sub_fetch(&pool.inside, 1, __ATOMIC_SEQ_CST);
        } else if (lane < pool.lanes) {
            run_lane(pool.task, pool.c0, pool.c1, pool.lanes, lane);
        }
        __atomic_sub_fetch(&pool.pending, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Posts a call to every worker (``lanes`` 0: none runs anything, it only wakes them) */
static void post(const LANE_TASK *t, Py_ssize_t c0, Py_ssize_t c1, int lanes, Py_ssize_t grain)
{
    pool.grain = grain;
    pool.next = c0;
    pool.task = t;
    pool.c0 = c0;
    pool.c1 = c1;
    pool.lanes = lanes;
    __atomic_store_n(&pool.pending, pool.workers, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&pool.posted, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool.sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
}

/* Starts workers until there are ``wanted``; 1 where it started any */
static int start_workers(int wanted)
{
    int started = 0;
    while (pool.workers < wanted) {
        pthread_t id;
        pthread_attr_t attr;
        const int lane = pool.workers + 1;
        pool.start[lane] = pool.posted;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&id, &attr, worker_main, (void *)(intptr_t)lane);
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool.workers = lane;
        started = 1;
    }
    return started;
}

/* t->run over [c0, c1) in ``lanes`` parts, lane 0 on this thread. Where a worker is
 * asleep, just started or still finishing a wake-up, this call runs alone and leaves the
 * workers awake for the next one: waiting for a blocked thread cost more than the split saves.
 * Runs without the GIL. */
static inline void run_in_lanes(const LANE_TASK *t, Py_ssize_t c0, Py_ssize_t c1, int lanes)
{
    if (lanes > c1 - c0) lanes = (int)(c1 - c0);
    if (lanes > MAX_LANES) lanes = MAX_LANES;
    if (lanes > 1 && side_call(t, c0, c1, lanes, 0)) return;
    if (lanes <= 1 || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE)) {
        t->run(t, c0, c1);
        return;
    }
    int ready = __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) == 0;
    if (start_workers(lanes - 1)) ready = 0;
    if (ready && __atomic_load_n(&pool.sleeping, __ATOMIC_SEQ_CST)) ready = 0;
    if (lanes > pool.workers + 1) lanes = pool.workers + 1;
    if (ready && lanes > 1) {
        post(t, c0, c1, lanes, 0);
        run_lane(t, c0, c1, lanes, 0);
        for (unsigned long i = 0; __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE); i++) poll_pause(i);
    } else {
        if (pool.workers && __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) == 0) post(t, c0, c1, 0, 0);
        t->run(t, c0, c1);
    }
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}

/* t->run over [c0, c1) in pieces of ``grain``, dealt to this thread and up to lanes - 1 workers
 * as each asks for the next: a worker asleep is woken but not waited for (the pieces it would
 * have taken run here), and a worker still in the last call leaves this one to run alone. Runs
 * without the GIL. */
static inline void deal_in_lanes(const LANE_TASK *t, Py_ssize_t c0, Py_ssize_t c1, int lanes, Py_ssize_t grain)
{
    if (lanes > MAX_LANES) lanes = MAX_LANES;
    if (grain < 1) grain = 1;
    const int split = lanes > 1 && c1 - c0 > grain;
    if (split && side_call(t, c0, c1, lanes, grain)) return;
    if (!split || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE)) {
        t->run(t, c0, c1);
        return;
    }
    start_workers(lanes - 1);
    if (pool.workers && __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) == 0) {
        post(t, c0, c1, lanes, grain);
        take_pieces(t, &pool.next, grain, c1);
        for (unsigned long i = 0; __atomic_load_n(&pool.inside, __ATOMIC_SEQ_CST); i++) poll_pause(i);
    } else {
        t->run(t, c0, c1);
    }
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}

/* use_side_lanes(capsule): hand this module's splits to threads.py's lanes (_cpu_kernels.side_lanes;
 * None: to this module's own workers again) */
static PyObject *py_use_side_lanes(PyObject *self, PyObject *capsule)
{
    SideLanes *lanes = NULL;
    if (capsule != Py_None && (lanes = PyCapsule_GetPointer(capsule, SIDE_LANES_CAPSULE)) == NULL) return NULL;
    side_lanes = lanes;
    Py_RETURN_NONE;
}

#define USE_SIDE_LANES_METHOD                                                                     \
    {"use_side_lanes", py_use_side_lanes, METH_O,                                                  \
     "use_side_lanes(capsule): run this module's splits on threads.py's lanes while they poll "  \
     "(_cpu_kernels.side_lanes; None: on its own workers)"}

/* A forked child has none of the parent's threads */
static void lane_pool_after_fork(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.workers = pool.pending = pool.sleeping = pool.busy = pool.inside = 0;
}

#endif
