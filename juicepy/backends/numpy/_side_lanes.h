/* Side tasks for threads.py's lanes. A lane thread waiting for its next Python call polls in C
 * with the GIL released (_cpu_kernels.spin_while); while it does, a C kernel of another module
 * can hand it part of a call to run right there. Without this, such kernels kept their own
 * worker threads (_lane_pool.h), which polled beside the lanes: on two cores a polling worker
 * took the core a lane's work needed, and a ResNet step lost time to its regions' late starts
 * in about half the processes (docs/numpy.md, session 40).
 *
 * _cpu_kernels.c owns the one SideLanes of the process and hands its address to the other
 * modules (kernels.py: use_side_lanes). A lane's ``state``: 0 away (running Python or blocked), 1
 * polling, 2 claimed by a caller, who then sets run and arg and counts ``posted`` up; the lane
 * runs run(arg, lane), counts ``done`` up to ``posted`` and polls on (state 1) or leaves (0). */
#ifndef JUICEPY_SIDE_LANES_H
#define JUICEPY_SIDE_LANES_H

#define SIDE_LANES_MAX 64

typedef struct {
    int state;
    long long posted, done;
    void (*run)(void *arg, int lane);
    void *arg;
    char pad[64];  /* each lane's words on their own cache lines */
} SideLane;

typedef struct {
    int count;  /* lanes 1 .. count have polled at least once */
    SideLane lane[SIDE_LANES_MAX];
} SideLanes;

#define SIDE_LANES_CAPSULE "juicepy.backends.numpy._cpu_kernels.side_lanes"

#endif
