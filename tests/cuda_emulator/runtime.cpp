// The CUDA emulator's runtime: launches a kernel's grid on the CPU.
//
// Each block runs on one worker (an OS thread), its CUDA threads as fibers scheduled
// cooperatively: a thread runs until it finishes or waits (at __syncthreads or in a warp
// collective), then the next one runs. Threads are started lazily by "runner" fibers, so a
// kernel without barriers costs no context switch per thread; a thread that waits keeps its
// runner fiber and a new one starts the next thread. Blocks and threads run in forward or in
// reverse order (a kernel whose result depends on it is missing a barrier). Misuse that CUDA
// leaves undefined is reported by name and fails the launch:
//   - a __syncthreads() that some threads of the block never reach (they exited or wait
//     elsewhere), or threads waiting at different __syncthreads() calls;
//   - a warp collective whose mask leaves out the calling lane, names lanes the block does not
//     have, differs between the lanes, reads a lane outside the mask, or is never completed.
// Out-of-bounds memory accesses are the AddressSanitizer build's job (see build.py).

// System headers first: cuda_emulator.h defines CUDA's qualifiers as macros (__noinline__ among
// them), which libstdc++ 13 and later spell in its own attributes.
#include <sys/mman.h>

#include <atomic>
#include <cstdarg>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define JP_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define JP_EMU_ASAN 0
#endif

#if !defined(__x86_64__) && !defined(JP_EMU_UCONTEXT)
#define JP_EMU_UCONTEXT 1
#endif
#if defined(JP_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#include "cuda_emulator.h"
#include "kernel_table.h"

#define JP_EMU_API extern "C" __attribute__((visibility("default")))

namespace jp_emu {

JP_EMU_TLS dim3 block_idx, block_dim, grid_dim, thread_idx;

// ------------------------------------------------------------------ context switching
#if !defined(JP_EMU_UCONTEXT)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save and
// continues on the stack `load` (made by this function or by fresh_stack below).
extern "C" void jp_emu_switch(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .type jp_emu_switch, @function
jp_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size jp_emu_switch, .-jp_emu_switch
)");
#endif

struct Context {
#if defined(JP_EMU_UCONTEXT)
    ucontext_t uc;
#else
    void* sp = nullptr;
#endif
};

enum State { NOT_STARTED, RUNNING, RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber;

struct Thread {
    unsigned linear;
    dim3 idx;
    State state;
    Fiber* fiber;
    const char* func;  // where it waits
    int line;
};

struct Fiber {
    Context ctx;
    char* map = nullptr;  // guard page + stack
    size_t map_size = 0;
    char* stack_lo = nullptr;
    size_t stack_size = 0;
    Thread* thread = nullptr;
    size_t stagger = 0;
};

struct WarpState {
    bool active = false;
    int op = 0, width = 32;
    unsigned mask = 0, arrived = 0;
    const char* func = nullptr;
    int line = 0;
    unsigned long long values[32];
    int params[32];
    unsigned long long results[32];
};

struct Launch {
    const KernelInfo* kernel;
    void** args;
    dim3 grid, block;
    size_t shared_bytes;
    bool reverse;
    long long total_blocks;
    std::atomic<long long> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;
};

#if JP_EMU_ASAN
constexpr size_t STACK_SIZE = 256 * 1024;
#else
constexpr size_t STACK_SIZE = 64 * 1024;
#endif
constexpr size_t PAGE = 4096;

struct Worker {
    Launch* launch = nullptr;
    std::vector<Thread> threads;
    std::vector<unsigned> order;
    size_t cursor = 0;
    std::vector<Fiber*> fibers, free_fibers;
    std::vector<WarpState> warps;
    std::vector<unsigned char> shared;
    Context scheduler;
    Fiber* current_fiber = nullptr;
    Thread* current = nullptr;
    bool block_failed = false;
#if JP_EMU_ASAN
    const void* scheduler_bottom = nullptr;
    size_t scheduler_size = 0;
#endif
    ~Worker() {
        for (Fiber* f : fibers) {
            munmap(f->map, f->map_size);
            delete f;
        }
    }
};

JP_EMU_TLS Worker* tls_worker = nullptr;

static Worker& worker() {
    static thread_local Worker instance;
    tls_worker = &instance;
    return instance;
}

[[noreturn]] static void fiber_main();

extern "C" [[noreturn]] void jp_emu_fiber_entry() {
#if JP_EMU_ASAN
    Worker& w = *tls_worker;
    __sanitizer_finish_switch_fiber(nullptr, &w.scheduler_bottom, &w.scheduler_size);
#endif
    fiber_main();
}

#if defined(JP_EMU_UCONTEXT)
static void fiber_entry_ucontext() { jp_emu_fiber_entry(); }
#endif

// Prepares f to start at jp_emu_fiber_entry on its own stack when switched to.
static void fresh_stack(Fiber* f) {
#if JP_EMU_ASAN
    const size_t used = 32 * 1024;  // runner frames live near the top; clear what an abandoned one poisoned
    __asan_unpoison_memory_region(f->stack_lo + f->stack_size - used, used);
#endif
#if defined(JP_EMU_UCONTEXT)
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = f->stack_lo;
    f->ctx.uc.uc_stack.ss_size = f->stack_size;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, fiber_entry_ucontext, 0);
#else
    // stacks are STACK_SIZE apart: stagger their tops so the fibers' frames do not all fall
    // into the same cache sets
    uintptr_t top = reinterpret_cast<uintptr_t>(f->stack_lo + f->stack_size - f->stagger) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;  // the entry function's return address slot: it never returns
    *--sp = reinterpret_cast<void*>(&jp_emu_fiber_entry);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f->ctx.sp = sp;
#endif
}

static Fiber* new_fiber(Worker& w) {
    Fiber* f = new Fiber;
    f->map_size = STACK_SIZE + PAGE;
    void* map = mmap(nullptr, f->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
        delete f;
        return nullptr;
    }
    f->map = static_cast<char*>(map);
    mprotect(f->map, PAGE, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    f->stack_lo = f->map + PAGE;
    f->stack_size = STACK_SIZE;
    f->stagger = (w.fibers.size() % 61) * 64;
    w.fibers.push_back(f);
    return f;
}

static void switch_context(Context& save, Context& load, const void* load_bottom, size_t load_size, bool exiting) {
#if JP_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake_stack, load_bottom, load_size);
#else
    (void)load_bottom;
    (void)load_size;
    (void)exiting;
#endif
#if defined(JP_EMU_UCONTEXT)
    swapcontext(&save.uc, &load.uc);
#else
    jp_emu_switch(&save.sp, load.sp);
#endif
#if JP_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// From a fiber back to the worker's scheduler.
static void to_scheduler(Worker& w, Fiber* f, bool exiting) {
#if JP_EMU_ASAN
    switch_context(f->ctx, w.scheduler, w.scheduler_bottom, w.scheduler_size, exiting);
#else
    switch_context(f->ctx, w.scheduler, nullptr, 0, exiting);
#endif
}

// From the scheduler into a fiber (resuming a thread, or starting a runner).
static void to_fiber(Worker& w, Fiber* f) {
    w.current_fiber = f;
    switch_context(w.scheduler, f->ctx, f->stack_lo, f->stack_size, false);
    w.current_fiber = nullptr;
}

// ------------------------------------------------------------------ reporting
static std::string ranges(const std::vector<unsigned>& ids) {
    std::string out;
    char buf[64];
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        if (j == i) snprintf(buf, sizeof buf, "%u", ids[i]);
        else snprintf(buf, sizeof buf, "%u..%u", ids[i], ids[j]);
        if (!out.empty()) out += ", ";
        out += buf;
        i = j + 1;
    }
    return out.empty() ? "none" : out;
}

static void record_error(Worker& w, const std::string& message) {
    Launch& L = *w.launch;
    std::lock_guard<std::mutex> lock(L.error_mutex);
    if (L.error.empty()) {
        char where[160];
        snprintf(where, sizeof where, "kernel %s, block (%u, %u, %u): ", L.kernel->name, block_idx.x, block_idx.y,
                 block_idx.z);
        L.error = where + message;
    }
    L.failed = true;
    w.block_failed = true;
}

static std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// Called on a fiber: report and leave the block for good (the fiber is abandoned).
[[noreturn]] static void fail_here(Worker& w, const std::string& message) {
    record_error(w, message);
    Fiber* f = w.current_fiber;
    to_scheduler(w, f, true);
    __builtin_unreachable();
}

static const char* op_name(int op) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
    return op >= 0 && op < 8 ? names[op] : "warp collective";
}

// ------------------------------------------------------------------ the device API
[[noreturn]] static void fiber_main() {
    Worker& w = *tls_worker;
    Fiber* f = w.current_fiber;
    Launch& L = *w.launch;
    while (w.cursor < w.threads.size()) {
        Thread& t = w.threads[w.order[w.cursor++]];
        t.fiber = f;
        f->thread = &t;
        w.current = &t;
        thread_idx = t.idx;
        t.state = RUNNING;
        L.kernel->invoke(L.kernel->function, L.args);
        t.state = DONE;
    }
    f->thread = nullptr;
    w.free_fibers.push_back(f);
    to_scheduler(w, f, true);
    __builtin_unreachable();
}

static void wait_here(Worker& w, State state, const char* func, int line) {
    Thread& t = *w.current;
    t.state = state;
    t.func = func;
    t.line = line;
    to_scheduler(w, t.fiber, false);
    // resumed by the scheduler, which restored thread_idx and set RUNNING
}

void syncthreads(const char* func, int line) {
    Worker& w = *tls_worker;
    wait_here(w, WAIT_BLOCK, func, line);
}

void* dynamic_shared() { return tls_worker->shared.data(); }

static unsigned existing_lanes(Worker& w, unsigned warp) {
    const size_t n = w.threads.size();
    const size_t first = size_t(warp) * 32;
    const size_t count = n - first >= 32 ? 32 : n - first;
    return count == 32 ? 0xffffffffu : ((1u << count) - 1u);
}

unsigned lane_mask_active() {
    Worker& w = *tls_worker;
    const unsigned warp = w.current->linear >> 5;
    unsigned mask = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
        const size_t i = size_t(warp) * 32 + lane;
        if (i < w.threads.size() && w.threads[i].state != DONE) mask |= 1u << lane;
    }
    return mask;
}

static unsigned source_lane(int op, unsigned lane, int param, int width) {
    const unsigned segment = lane & ~unsigned(width - 1);
    switch (op) {
        case SHFL_IDX: return segment + (unsigned(param) & unsigned(width - 1));
        case SHFL_UP: return (lane - segment) >= unsigned(param) ? lane - param : lane;
        case SHFL_DOWN: return (lane - segment) + unsigned(param) < unsigned(width) ? lane + param : lane;
        case SHFL_XOR: {
            const unsigned src = lane ^ unsigned(param);
            return (src & ~unsigned(width - 1)) == segment ? src : lane;
        }
        default: return lane;
    }
}

unsigned long long warp_collective(int op, unsigned mask, unsigned long long value, int param, int width,
                                   const char* func, int line) {
    Worker& w = *tls_worker;
    Thread& t = *w.current;
    const unsigned lane = t.linear & 31, warp = t.linear >> 5;
    const unsigned existing = existing_lanes(w, warp);
    if (!((mask >> lane) & 1u))
        fail_here(w, format("%s in %s line %d: lane %u of warp %u calls it with mask 0x%08x, which leaves the "
                            "calling lane out", op_name(op), func, line, lane, warp, mask));
    if (mask & ~existing)
        fail_here(w, format("%s in %s line %d: mask 0x%08x names lanes this block does not have (warp %u has lanes "
                            "0x%08x)", op_name(op), func, line, mask, warp, existing));
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail_here(w, format("%s in %s line %d: width %d is not a power of two up to 32", op_name(op), func, line, width));
    WarpState& ws = w.warps[warp];
    if (!ws.active) {
        ws.active = true;
        ws.op = op;
        ws.mask = mask;
        ws.width = width;
        ws.func = func;
        ws.line = line;
        ws.arrived = 0;
    } else if (ws.mask != mask || ws.op != op || ws.width != width) {
        std::vector<unsigned> waiting;
        for (unsigned l = 0; l < 32; ++l)
            if ((ws.arrived >> l) & 1u) waiting.push_back(l);
        fail_here(w, format("inconsistent warp collective in warp %u: lane %u calls %s(mask 0x%08x, width %d) in %s "
                            "line %d while lanes %s wait in %s(mask 0x%08x, width %d) in %s line %d",
                            warp, lane, op_name(op), mask, width, func, line, ranges(waiting).c_str(),
                            op_name(ws.op), ws.mask, ws.width, ws.func, ws.line));
    }
    ws.values[lane] = value;
    ws.params[lane] = param;
    ws.arrived |= 1u << lane;
    if (ws.arrived != mask) {
        wait_here(w, WAIT_WARP, func, line);
        return ws.results[lane];
    }
    // the last lane of the mask arrived: compute every lane's result, wake the others
    unsigned long long ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && ws.values[l]) ballot |= 1ull << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        switch (op) {
            case BALLOT: ws.results[l] = ballot; break;
            case ANY: ws.results[l] = ballot != 0; break;
            case ALL: ws.results[l] = ballot == mask; break;
            case SYNCWARP: ws.results[l] = 0; break;
            default: {
                const unsigned src = source_lane(op, l, ws.params[l], width);
                if (!((mask >> src) & 1u))
                    fail_here(w, format("%s in %s line %d: lane %u of warp %u reads lane %u, which is not in the "
                                        "mask 0x%08x", op_name(op), func, line, l, warp, src, mask));
                ws.results[l] = ws.values[src];
            }
        }
        if (l != lane) w.threads[size_t(warp) * 32 + l].state = RUNNABLE;
    }
    ws.active = false;
    return ws.results[lane];
}

void syncwarp(unsigned mask, const char* func, int line) { warp_collective(SYNCWARP, mask, 0, 0, 32, func, line); }

// ------------------------------------------------------------------ the scheduler
static dim3 unflatten(long long i, dim3 d) {
    dim3 r;
    r.x = unsigned(i % d.x);
    r.y = unsigned((i / d.x) % d.y);
    r.z = unsigned(i / (long long)(d.x) / d.y);
    return r;
}

// Every thread not yet done waits: release a complete __syncthreads, or report what is wrong.
static bool release_or_report(Worker& w) {
    std::vector<unsigned> done, at_block;
    const Thread* warp_waiter = nullptr;
    for (const Thread& t : w.threads) {
        if (t.state == DONE) done.push_back(t.linear);
        else if (t.state == WAIT_BLOCK) at_block.push_back(t.linear);
        else if (t.state == WAIT_WARP && warp_waiter == nullptr) warp_waiter = &t;
    }
    if (warp_waiter != nullptr) {
        const unsigned warp = warp_waiter->linear >> 5;
        const WarpState& ws = w.warps[warp];
        std::vector<unsigned> missing;
        std::string where;
        for (unsigned l = 0; l < 32; ++l) {
            if (!((ws.mask >> l) & 1u) || ((ws.arrived >> l) & 1u)) continue;
            missing.push_back(l);
            const Thread& m = w.threads[size_t(warp) * 32 + l];
            if (where.empty())
                where = m.state == DONE ? "exited" : format("waits in %s line %d", m.func, m.line);
        }
        record_error(w, format("%s(mask 0x%08x) in %s line %d is never completed: lanes %s of warp %u do not reach "
                               "it (lane %u %s)", op_name(ws.op), ws.mask, ws.func, ws.line, ranges(missing).c_str(),
                               warp, missing.empty() ? 0 : missing[0], where.c_str()));
        return false;
    }
    if (at_block.empty()) return true;  // all done
    const Thread& first = w.threads[at_block[0]];
    if (!done.empty()) {
        record_error(w, format("__syncthreads() in %s line %d is not reached by every thread of the block: threads "
                               "%s wait there, threads %s have exited", first.func, first.line,
                               ranges(at_block).c_str(), ranges(done).c_str()));
        return false;
    }
    for (unsigned id : at_block) {
        const Thread& t = w.threads[id];
        if (t.func != first.func || t.line != first.line) {
            record_error(w, format("threads of one block wait at different __syncthreads(): thread %u in %s line %d, "
                                   "thread %u in %s line %d", first.linear, first.func, first.line, t.linear, t.func,
                                   t.line));
            return false;
        }
    }
    for (Thread& t : w.threads) t.state = RUNNABLE;
    return true;
}

static void run_block(Worker& w, long long linear_block) {
    Launch& L = *w.launch;
    block_idx = unflatten(linear_block, L.grid);
    const size_t n = w.threads.size();
    for (size_t i = 0; i < n; ++i) {
        Thread& t = w.threads[i];
        t.state = NOT_STARTED;
        t.fiber = nullptr;
        w.order[i] = unsigned(L.reverse ? n - 1 - i : i);
    }
    for (WarpState& ws : w.warps) ws.active = false;
    if (!w.shared.empty()) memset(w.shared.data(), 0xff, w.shared.size());  // NaN: uninitialised shared memory
    w.cursor = 0;
    w.block_failed = false;
    for (;;) {
        bool progress = false;
        for (size_t p = 0; p < n && !w.block_failed; ++p) {
            Thread& t = w.threads[w.order[p]];
            if (t.state == RUNNABLE) {
                t.state = RUNNING;
                w.current = &t;
                thread_idx = t.idx;
                to_fiber(w, t.fiber);
                progress = true;
            } else if (t.state == NOT_STARTED) {
                Fiber* f;
                if (!w.free_fibers.empty()) {
                    f = w.free_fibers.back();
                    w.free_fibers.pop_back();
                } else if ((f = new_fiber(w)) == nullptr) {
                    record_error(w, "out of memory for fiber stacks");
                    break;
                }
                fresh_stack(f);
                to_fiber(w, f);
                progress = true;
            }
        }
        if (w.block_failed) break;
        if (!progress && !release_or_report(w)) break;
        if (!progress) {
            bool all_done = true;
            for (const Thread& t : w.threads) all_done &= t.state == DONE;
            if (all_done) return;
        }
    }
    // a failed block abandons its fibers mid-kernel: every stack is free again
    w.free_fibers = w.fibers;
}

static void work(Launch& L) {
    Worker& w = worker();
    w.launch = &L;
    block_dim = L.block;
    grid_dim = L.grid;
    const size_t n = size_t(L.block.x) * L.block.y * L.block.z;
    w.threads.resize(n);
    w.order.resize(n);
    for (size_t i = 0; i < n; ++i) {
        w.threads[i].linear = unsigned(i);
        w.threads[i].idx = unflatten((long long)i, L.block);
    }
    w.warps.resize((n + 31) / 32);
    w.shared.assign(L.shared_bytes, 0);
    w.free_fibers = w.fibers;
    for (;;) {
        const long long k = L.next_block.fetch_add(1);
        if (k >= L.total_blocks || L.failed) break;
        run_block(w, L.reverse ? L.total_blocks - 1 - k : k);
    }
    w.launch = nullptr;
}

}  // namespace jp_emu

// ------------------------------------------------------------------ the host API (ctypes)
// Runs the kernel over grid x block with args (pointers to each argument's value, as
// cuLaunchKernel takes them). Returns 0, or 1 with the report in error.
JP_EMU_API int jp_emu_launch(const jp_emu::KernelInfo* kernel, const unsigned* grid, const unsigned* block, size_t shared_bytes,
                             void** args, int reverse, int workers, char* error, size_t error_size) {
    using namespace jp_emu;
    auto refuse = [&](const std::string& message) {
        snprintf(error, error_size, "kernel %s: %s", kernel->name, message.c_str());
        return 1;
    };
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64)
        return refuse(format("invalid block (%u, %u, %u): CUDA allows 1..1024 threads, z up to 64", block[0],
                             block[1], block[2]));
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 2147483647u || grid[1] > 65535 || grid[2] > 65535)
        return refuse(format("invalid grid (%u, %u, %u)", grid[0], grid[1], grid[2]));
    if (shared_bytes > 48 * 1024)
        return refuse(format("%zu bytes of dynamic shared memory: over 48 KiB needs an opt-in attribute", shared_bytes));
    Launch L;
    L.kernel = kernel;
    L.args = args;
    L.grid = dim3{grid[0], grid[1], grid[2]};
    L.block = dim3{block[0], block[1], block[2]};
    L.shared_bytes = shared_bytes;
    L.reverse = reverse != 0;
    L.total_blocks = (long long)grid[0] * grid[1] * grid[2];
    const long long helpers = std::min<long long>(workers, L.total_blocks) - 1;
    std::vector<std::thread> pool;
    for (long long i = 0; i < helpers; ++i) pool.emplace_back([&L] { work(L); });
    work(L);
    for (std::thread& t : pool) t.join();
    if (L.failed) {
        snprintf(error, error_size, "%s", L.error.c_str());
        return 1;
    }
    return 0;
}
