// Host emulator for CUDA kernel source: runs the kernels of kernels/*.cu on the CPU, one block
// after another, the threads of a block as fibers (ucontext) on the calling OS thread.
//
// Scheduling is deterministic: fibers run in thread order (linear thread index), each until it
// blocks (at __syncthreads, __syncwarp or a shuffle) or exits; a fiber that arrives at a
// rendezvous always yields, and the threads a rendezvous releases continue in the next pass, again
// in thread order. So a kernel that lacks a barrier reads shared memory before the threads that
// should have written it have run, and gives the same wrong answer every time -- when the writer
// has a higher thread index than the reader. a3d_emu_launch_ordered(..., 1) runs the threads in
// descending order instead, which exposes the other half (reader above writer); launching a
// kernel in both orders and comparing catches most missing barriers.
//
// A barrier that can never complete (some threads exited or wait at another barrier or shuffle)
// is detected when no fiber is runnable: the launch fails with a message naming the block, the
// sites and the thread counts. It never hangs. Threads that all reach a barrier, but at different
// source sites, are reported as barrier divergence as well.
//
// C API (see src/emulation.rs):
//   int a3d_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz,
//                      unsigned bx, unsigned by, unsigned bz, void** args);   // 0 = ok
//   int a3d_emu_launch_ordered(..., void** args, int order);  // order 0 forward, 1 reverse
//   const char* a3d_emu_last_error(void);       // message of this OS thread's last failed launch
//   int a3d_emu_has_kernel(const char* name);   // 1 if registered
//   int a3d_emu_kernel_arity(const char* name); // number of parameters, -1 if unknown
// Launches hold a global mutex (shared memory is static); a failed launch leaves the emulator
// usable. Fiber stacks: A3D_EMU_STACK_KIB KiB each (default 256, 1024 under ASan), read once,
// with a PROT_NONE guard page below each, so a stack overflow crashes (SIGSEGV) loudly.
//
// Kernel table: every emulated source file is compiled in its own translation unit that includes
// the .cu and defines `extern "C" void a3d_emu_register_<unit>(void)`, which expands the file's
// X-macro (A3D_FUSION_KERNELS, A3D_SELFCHECK_KERNELS, ...) with A3D_EMU_REGISTER. build.rs
// generates those units and passes -D'A3D_EMU_UNITS(X)=X(fusion) X(selfcheck)' here.
#include "cuda_host_shim.h"

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define A3D_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define A3D_EMU_ASAN 1
#endif
#endif
#if defined(A3D_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#ifndef A3D_EMU_UNITS
// Normally defined by build/emulation.rs, e.g. -D'A3D_EMU_UNITS(X)=X(fusion) X(selfcheck)'.
#define A3D_EMU_UNITS(X)
#endif

#define A3D_EMU_DECLARE_UNIT(unit) extern "C" void a3d_emu_register_##unit(void);
A3D_EMU_UNITS(A3D_EMU_DECLARE_UNIT)
#undef A3D_EMU_DECLARE_UNIT

namespace a3d_emu {

FiberState* g_current = nullptr;
LaunchState g_launch{};

namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxWarps = kMaxThreads / 32;
constexpr unsigned kMain = UINT_MAX;  // "switch to the launching thread's own context"

enum class State : unsigned char { Runnable, AtBarrier, AtWarp, Exited };

struct Fiber {
    FiberState st{};
    ucontext_t ctx{};
    bool ctx_ready = false;  // getcontext done once; makecontext per block
    char* stack = nullptr;   // lowest usable byte (a PROT_NONE guard page lies below)
    std::size_t stack_size = 0;

    State state = State::Runnable;
    // Where the fiber waits (for diagnostics and divergence checks).
    const char* what = nullptr;
    const char* file = nullptr;
    unsigned line = 0;
    // Barrier arrival.
    int barrier_op = -1;  // -1 plain, 0 count, 1 and, 2 or
    int predicate = 0;
    int barrier_result = 0;
    // Warp operation arrival.
    int op = 0;
    std::uint64_t bits = 0;
    unsigned size = 0;
    int arg = 0;
    int width = 32;
    std::uint64_t result = 0;
};

struct Block {
    const char* kernel = nullptr;
    Invoker invoke = nullptr;
    void** args = nullptr;

    unsigned n = 0;        // threads per block
    bool reverse = false;  // run fibers in descending thread order
    unsigned warps = 0;
    unsigned runnable = 0;
    unsigned exited = 0;
    unsigned at_barrier = 0;
    unsigned warp_lanes[kMaxWarps] = {};
    unsigned warp_arrived[kMaxWarps] = {};

    bool failed = false;
    std::string error;

    ucontext_t main_ctx{};
    const void* main_stack_bottom = nullptr;
    std::size_t main_stack_size = 0;
};

std::mutex g_lock;  // serialises launches: __shared__ is static, the state below is global
Block g_block;
std::unique_ptr<Fiber[]> g_fibers;
std::size_t g_stack_bytes = 0;
thread_local std::string t_last_error;

// ---- helpers ----------------------------------------------------------------------------------

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// "…/kernels/fusion.cu" -> "kernels/fusion.cu"; other paths -> their last component.
const char* short_path(const char* file) {
    if (file == nullptr) return "?";
    const char* best = nullptr;
    for (const char* p = std::strstr(file, "kernels/"); p != nullptr;
         p = std::strstr(p + 1, "kernels/"))
        best = p;
    if (best != nullptr) return best;
    const char* slash = std::strrchr(file, '/');
    return slash != nullptr ? slash + 1 : file;
}

bool same_site(const Fiber& a, const Fiber& b) {
    if (a.line != b.line || a.what != b.what) return false;
    if (a.file == b.file) return true;
    return a.file != nullptr && b.file != nullptr && std::strcmp(a.file, b.file) == 0;
}

std::string site(const Fiber& f) {
    return format("%s (%s:%u)", f.what != nullptr ? f.what : "?", short_path(f.file), f.line);
}

std::string thread_name(const Fiber& f) {
    return format("(%u,%u,%u)", f.st.thread_idx.x, f.st.thread_idx.y, f.st.thread_idx.z);
}

std::string block_name() {
    const LaunchState& l = g_launch;
    return format("block (%u,%u,%u) of kernel %s (grid (%u,%u,%u), block (%u,%u,%u))",
                  l.block_idx.x, l.block_idx.y, l.block_idx.z, g_block.kernel, l.grid_dim.x,
                  l.grid_dim.y, l.grid_dim.z, l.block_dim.x, l.block_dim.y, l.block_dim.z);
}

std::size_t stack_bytes() {
    if (g_stack_bytes == 0) {
#if defined(A3D_EMU_ASAN)
        std::size_t kib = 1024;  // ASan's redzones make frames several times larger
#else
        std::size_t kib = 256;
#endif
        if (const char* env = std::getenv("A3D_EMU_STACK_KIB")) {
            long v = std::strtol(env, nullptr, 10);
            if (v >= 16) kib = static_cast<std::size_t>(v);
        }
        g_stack_bytes = kib * 1024;
    }
    return g_stack_bytes;
}

// Maps the stack of fiber slot `i` on first use: [guard page][stack]. A stack overflow hits the
// PROT_NONE guard page and crashes (SIGSEGV) instead of silently corrupting another stack.
bool ensure_stack(Fiber& f) {
    if (f.stack != nullptr) return true;
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t size = (stack_bytes() + page - 1) / page * page;
    void* base = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED) return false;
    if (mprotect(base, page, PROT_NONE) != 0) {
        munmap(base, size + page);
        return false;
    }
    f.stack = static_cast<char*>(base) + page;
    f.stack_size = size;
    return true;
}

// ---- context switching ----------------------------------------------------------------------

// Switches from the context saved in `from` to fiber `to` (or to the launching thread when
// to == kMain). `exiting`: the current fiber is finished and will never be resumed.
void jump(ucontext_t* from, unsigned to, bool exiting) {
    ucontext_t* target = to == kMain ? &g_block.main_ctx : &g_fibers[to].ctx;
#if defined(A3D_EMU_ASAN)
    void* fake_stack = nullptr;
    const void* bottom = to == kMain ? g_block.main_stack_bottom : g_fibers[to].stack;
    std::size_t size = to == kMain ? g_block.main_stack_size : g_fibers[to].stack_size;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake_stack, bottom, size);
#else
    (void)exiting;
#endif
    g_current = to == kMain ? nullptr : &g_fibers[to].st;
    if (swapcontext(from, target) != 0) {
        std::fprintf(stderr, "a3d emulator: swapcontext failed\n");
        std::abort();
    }
#if defined(A3D_EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

unsigned current_index() { return g_current->linear; }

// Next runnable fiber after `cur` in thread order (descending order when g_block.reverse),
// wrapping around (a new pass); kMain if none.
unsigned next_runnable(unsigned cur) {
    const Block& b = g_block;
    if (b.runnable == 0) return kMain;
    if (b.reverse) {
        for (unsigned i = cur; i-- > 0;)
            if (g_fibers[i].state == State::Runnable) return i;
        for (unsigned i = b.n; i-- > cur;)
            if (g_fibers[i].state == State::Runnable) return i;
        return kMain;
    }
    for (unsigned i = cur + 1; i < b.n; ++i)
        if (g_fibers[i].state == State::Runnable) return i;
    for (unsigned i = 0; i <= cur && i < b.n; ++i)
        if (g_fibers[i].state == State::Runnable) return i;
    return kMain;
}

// The current fiber has changed its own state (waits, or exited): run the next one.
void yield_from(unsigned cur, bool exiting) {
    unsigned next = g_block.failed ? kMain : next_runnable(cur);
    if (next == cur) return;  // released by its own arrival and nobody else can run
    jump(&g_fibers[cur].ctx, next, exiting);
}

// Fails the launch from inside a fiber, with the message already in g_block.error: returns to the
// launching thread. The block's fibers are abandoned (their stacks are reinitialised by the next
// launch), so the caller must not hold objects that own memory (their destructors never run).
[[noreturn]] void abort_block() {
    g_block.failed = true;
    unsigned cur = current_index();
    jump(&g_fibers[cur].ctx, kMain, false);
    std::fprintf(stderr, "a3d emulator: a failed fiber was resumed\n");
    std::abort();
}

void trampoline(int idx) {
#if defined(A3D_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    g_block.invoke(g_block.args);
    Fiber& f = g_fibers[static_cast<unsigned>(idx)];
    f.state = State::Exited;
    ++g_block.exited;
    --g_block.runnable;
    yield_from(static_cast<unsigned>(idx), true);
    std::fprintf(stderr, "a3d emulator: an exited fiber was resumed\n");
    std::abort();
}

// ---- rendezvous -----------------------------------------------------------------------------

const char* barrier_name(int op) {
    switch (op) {
        case 0: return "__syncthreads_count";
        case 1: return "__syncthreads_and";
        case 2: return "__syncthreads_or";
        default: return "__syncthreads";
    }
}

// All n threads wait at a barrier: check they wait at the same one, then release them.
void release_barrier() {
    Block& b = g_block;
    const Fiber& first = g_fibers[0];
    for (unsigned i = 1; i < b.n; ++i) {
        const Fiber& f = g_fibers[i];
        if (!same_site(f, first) || f.barrier_op != first.barrier_op) {
            g_block.error = format(
                "barrier divergence in %s: thread %s waits at %s while thread %s waits at %s; "
                "every thread of a block must reach the same __syncthreads",
                block_name().c_str(), thread_name(first).c_str(), site(first).c_str(),
                thread_name(f).c_str(), site(f).c_str());
            abort_block();
        }
    }
    int count = 0;
    for (unsigned i = 0; i < b.n; ++i) count += g_fibers[i].predicate != 0;
    int result = 0;
    switch (first.barrier_op) {
        case 0: result = count; break;
        case 1: result = count == static_cast<int>(b.n); break;
        case 2: result = count != 0; break;
        default: break;
    }
    for (unsigned i = 0; i < b.n; ++i) {
        g_fibers[i].state = State::Runnable;
        g_fibers[i].barrier_result = result;
    }
    b.runnable = b.n;
    b.at_barrier = 0;
}

int barrier(int op, int predicate, const char* file, unsigned line) {
    unsigned idx = current_index();
    Fiber& f = g_fibers[idx];
    f.state = State::AtBarrier;
    f.what = barrier_name(op);
    f.file = file;
    f.line = line;
    f.barrier_op = op;
    f.predicate = predicate;
    --g_block.runnable;
    if (++g_block.at_barrier == g_block.n) release_barrier();
    yield_from(idx, false);
    return f.barrier_result;
}

std::uint64_t poison(unsigned size) {
    return size >= 8 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (8 * size)) - 1);
}

// All lanes of warp w wait at a warp operation: check they agree, compute, release.
void release_warp(unsigned w) {
    Block& b = g_block;
    const unsigned base = w * 32;
    const unsigned lanes = b.warp_lanes[w];
    const Fiber& first = g_fibers[base];
    for (unsigned l = 1; l < lanes; ++l) {
        const Fiber& f = g_fibers[base + l];
        if (f.op != first.op || f.size != first.size || f.width != first.width) {
            g_block.error = format(
                "warp divergence in %s, warp %u: lane 0 %s waits at %s (%u-byte value, width %d) "
                "while lane %u %s waits at %s (%u-byte value, width %d)",
                block_name().c_str(), w, thread_name(first).c_str(), site(first).c_str(),
                first.size, first.width, l, thread_name(f).c_str(), site(f).c_str(), f.size,
                f.width);
            abort_block();
        }
    }
    if (first.op != kSyncWarp) {
        // PTX shfl.sync semantics (CUDA passes c = ((32 - width) << 8) | (up ? 0 : 0x1f)).
        const int seg = (32 - first.width) & 31;
        for (unsigned l = 0; l < lanes; ++l) {
            Fiber& f = g_fibers[base + l];
            const int lane = static_cast<int>(l);
            const int bval = f.arg & 31;
            const int min_lane = lane & seg;
            const int max_lane = first.op == kShflUp ? min_lane : (min_lane | (31 & ~seg));
            int j = lane;
            bool in_range = false;
            switch (first.op) {
                case kShflUp: j = lane - bval; in_range = j >= max_lane; break;
                case kShflDown: j = lane + bval; in_range = j <= max_lane; break;
                case kShflXor: j = lane ^ bval; in_range = j <= max_lane; break;
                default: j = min_lane | (bval & ~seg); in_range = j <= max_lane; break;
            }
            if (!in_range) j = lane;
            // A lane that does not exist (last warp of a block whose size is not a multiple of
            // 32) yields garbage on a GPU; poison it (all bits set: NaN, -1) so it shows.
            const unsigned src = static_cast<unsigned>(j);
            f.result = src < lanes ? g_fibers[base + src].bits : poison(first.size);
        }
    }
    for (unsigned l = 0; l < lanes; ++l) g_fibers[base + l].state = State::Runnable;
    b.runnable += lanes;
    b.warp_arrived[w] = 0;
}

// ---- diagnosis of a block that cannot continue ------------------------------------------------

std::string diagnose_stuck() {
    const Block& b = g_block;
    struct Group {
        const Fiber* first;
        unsigned warp;
        unsigned count;
    };
    std::vector<Group> groups;
    bool warp_level = false;
    for (unsigned i = 0; i < b.n; ++i) {
        const Fiber& f = g_fibers[i];
        unsigned warp = f.state == State::AtWarp ? i / 32 : UINT_MAX;
        warp_level = warp_level || f.state == State::AtWarp;
        bool found = false;
        for (Group& g : groups) {
            if (g.first->state == f.state && g.warp == warp &&
                (f.state == State::Exited || same_site(*g.first, f))) {
                ++g.count;
                found = true;
                break;
            }
        }
        if (!found) groups.push_back(Group{&f, warp, 1});
    }
    std::string msg = format("deadlock (%s divergence) in %s: not all threads reach the same %s; ",
                             warp_level ? "warp" : "barrier", block_name().c_str(),
                             warp_level ? "barrier or warp operation" : "barrier");
    constexpr std::size_t kShown = 8;
    for (std::size_t k = 0; k < groups.size() && k < kShown; ++k) {
        const Group& g = groups[k];
        if (k > 0) msg += "; ";
        const char* wait = g.count == 1 ? "waits" : "wait";
        if (g.first->state == State::Exited) {
            msg += format("%u %s exited (first: thread %s)", g.count,
                          g.count == 1 ? "thread has" : "threads have",
                          thread_name(*g.first).c_str());
        } else if (g.first->state == State::AtWarp) {
            msg += format("%u of %u lanes of warp %u %s at %s (first: thread %s)", g.count,
                          b.warp_lanes[g.warp], g.warp, wait, site(*g.first).c_str(),
                          thread_name(*g.first).c_str());
        } else {
            msg += format("%u of %u threads %s at %s (first: thread %s)", g.count, b.n, wait,
                          site(*g.first).c_str(), thread_name(*g.first).c_str());
        }
    }
    if (groups.size() > kShown) msg += format("; and %zu more groups", groups.size() - kShown);
    return msg;
}

// ---- blocks and launches --------------------------------------------------------------------

// getcontext "returns twice"; kept out of run_block so the compiler need not assume that of it.
__attribute__((noinline)) bool capture_context(ucontext_t* ctx) { return getcontext(ctx) == 0; }

// Runs the current block (g_launch.block_idx) to completion. Returns false with g_block.error set
// when it failed.
bool run_block() {
    Block& b = g_block;
    const dim3 bd = g_launch.block_dim;
    b.runnable = b.n;
    b.exited = 0;
    b.at_barrier = 0;
    b.failed = false;
    for (unsigned w = 0; w < b.warps; ++w) b.warp_arrived[w] = 0;
    for (unsigned i = 0; i < b.n; ++i) {
        Fiber& f = g_fibers[i];
        f.st.linear = i;
        f.st.thread_idx = make_uint3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
        f.state = State::Runnable;
        f.what = nullptr;
        f.file = nullptr;
        f.line = 0;
        if (!f.ctx_ready) {
            if (!capture_context(&f.ctx)) {
                b.error = "a3d emulator: getcontext failed";
                return false;
            }
            f.ctx_ready = true;
        }
#if defined(A3D_EMU_ASAN)
        // Frames of fibers abandoned by a failed launch leave poisoned shadow behind.
        ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);
#endif
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = f.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(&trampoline), 1, static_cast<int>(i));
#if defined(A3D_EMU_ASAN)
        // ASan's swapcontext interceptor clears the shadow of the whole target stack (uc_stack)
        // on every switch, which is slow and hides stack overflows; the stack is set up already.
        f.ctx.uc_stack.ss_sp = nullptr;
        f.ctx.uc_stack.ss_size = 0;
#endif
    }
    jump(&b.main_ctx, b.reverse ? b.n - 1 : 0, false);
    if (b.failed) return false;
    if (b.exited != b.n) {
        b.error = diagnose_stuck();
        return false;
    }
    return true;
}

struct Entry {
    Invoker invoke = nullptr;
    unsigned arity = 0;
    bool duplicate = false;
};
using Table = std::unordered_map<std::string, Entry>;
Table* g_building = nullptr;

const Table& table() {
    static const Table t = [] {
        Table built;
        g_building = &built;
#define A3D_EMU_CALL_UNIT(unit) a3d_emu_register_##unit();
        A3D_EMU_UNITS(A3D_EMU_CALL_UNIT)
#undef A3D_EMU_CALL_UNIT
        g_building = nullptr;
        return built;
    }();
    return t;
}

const Entry* find_kernel(const char* name) {
    if (name == nullptr) return nullptr;
    const Table& t = table();
    auto it = t.find(name);
    return it == t.end() ? nullptr : &it->second;
}

int launch(const char* kernel, dim3 grid, dim3 block, void** args, int order) {
    const Entry* e = find_kernel(kernel);
    if (e == nullptr) {
        t_last_error = format("unknown kernel '%s' (%zu kernels registered)",
                              kernel != nullptr ? kernel : "(null)", table().size());
        return 1;
    }
    if (e->duplicate) {
        t_last_error = format("kernel '%s' is registered by more than one source file", kernel);
        return 1;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
        t_last_error = format("%s: zero launch dimension: grid (%u,%u,%u), block (%u,%u,%u)",
                              kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return 1;
    }
    const unsigned long long threads =
        static_cast<unsigned long long>(block.x) * block.y * block.z;
    if (threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64) {
        t_last_error = format("%s: block too large: (%u,%u,%u) = %llu threads; CUDA allows at most "
                              "1024 threads per block (x, y <= 1024, z <= 64)",
                              kernel, block.x, block.y, block.z, threads);
        return 1;
    }
    if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
        t_last_error = format("%s: grid too large: (%u,%u,%u); CUDA allows x < 2^31, y, z <= 65535",
                              kernel, grid.x, grid.y, grid.z);
        return 1;
    }
    if (e->arity > 0 && args == nullptr) {
        t_last_error = format("%s: takes %u arguments but args is null", kernel, e->arity);
        return 1;
    }
    for (unsigned i = 0; i < e->arity; ++i) {
        if (args[i] == nullptr) {
            t_last_error = format("%s: args[%u] is null (it must point at the argument's value)",
                                  kernel, i);
            return 1;
        }
    }

    std::lock_guard<std::mutex> guard(g_lock);
    if (!g_fibers) g_fibers.reset(new Fiber[kMaxThreads]);
    Block& b = g_block;
    b.kernel = kernel;
    b.reverse = order == 1;
    b.invoke = e->invoke;
    b.args = args;
    b.n = static_cast<unsigned>(threads);
    b.warps = (b.n + 31) / 32;
    for (unsigned w = 0; w < b.warps; ++w)
        b.warp_lanes[w] = (w + 1) * 32 <= b.n ? 32 : b.n - w * 32;
    for (unsigned i = 0; i < b.n; ++i) {
        if (!ensure_stack(g_fibers[i])) {
            t_last_error = format("%s: cannot map a %zu-byte fiber stack", kernel, stack_bytes());
            return 1;
        }
    }
#if defined(A3D_EMU_ASAN)
    {
        pthread_attr_t attr;
        void* addr = nullptr;
        std::size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &size);
            pthread_attr_destroy(&attr);
        }
        b.main_stack_bottom = addr;
        b.main_stack_size = size;
    }
#endif
    g_launch.grid_dim = grid;
    g_launch.block_dim = block;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                g_launch.block_idx = make_uint3(x, y, z);
                if (!run_block()) {
                    t_last_error = std::move(b.error);
                    b.error.clear();
                    g_current = nullptr;
                    return 1;
                }
            }
        }
    }
    g_current = nullptr;
    t_last_error.clear();
    return 0;
}

}  // namespace

// ---- entry points used by the shim --------------------------------------------------------------

void syncthreads(const char* file, unsigned line) { barrier(-1, 0, file, line); }

int syncthreads_reduce(int op, int predicate, const char* file, unsigned line) {
    return barrier(op, predicate, file, line);
}

std::uint64_t warp_op(int op, unsigned mask, std::uint64_t bits, unsigned size, int lane_arg,
                      int width, const char* name, const char* file, unsigned line) {
    const unsigned idx = current_index();
    Fiber& f = g_fibers[idx];
    const unsigned w = idx / 32;
    const unsigned lanes = g_block.warp_lanes[w];
    const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    f.what = name;
    f.file = file;
    f.line = line;
    if (mask != 0xffffffffu && mask != existing) {
        g_block.error = format(
            "partial warp mask 0x%08x in %s at %s:%u (thread %s, warp %u of %s): the emulator "
            "supports only full-warp masks (0xffffffff)",
            mask, name, short_path(file), line, thread_name(f).c_str(), w, block_name().c_str());
        abort_block();
    }
    if (op != kSyncWarp && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
        g_block.error = format("%s at %s:%u (thread %s of %s): width %d is not a power of two in "
                               "[1, 32]",
                               name, short_path(file), line, thread_name(f).c_str(),
                               block_name().c_str(), width);
        abort_block();
    }
    f.state = State::AtWarp;
    f.op = op;
    f.bits = bits;
    f.size = size;
    f.arg = lane_arg;
    f.width = op == kSyncWarp ? 32 : width;
    f.result = bits;
    --g_block.runnable;
    if (++g_block.warp_arrived[w] == lanes) release_warp(w);
    yield_from(idx, false);
    return f.result;
}

void register_kernel(const char* name, Invoker invoke, unsigned arity) {
    if (g_building == nullptr) {
        std::fprintf(stderr, "a3d emulator: register_kernel(%s) outside the registry build\n",
                     name);
        std::abort();
    }
    auto [it, inserted] = g_building->emplace(name, Entry{invoke, arity, false});
    if (!inserted) it->second.duplicate = true;
}

}  // namespace a3d_emu

extern "C" int a3d_emu_launch_ordered(const char* kernel, unsigned gx, unsigned gy, unsigned gz,
                                      unsigned bx, unsigned by, unsigned bz, void** args,
                                      int order) {
    if (order != 0 && order != 1) {
        a3d_emu::t_last_error =
            a3d_emu::format("%s: unknown thread order %d (0 forward, 1 reverse)",
                            kernel != nullptr ? kernel : "(null)", order);
        return 1;
    }
    return a3d_emu::launch(kernel, dim3(gx, gy, gz), dim3(bx, by, bz), args, order);
}

extern "C" int a3d_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz,
                              unsigned bx, unsigned by, unsigned bz, void** args) {
    return a3d_emu_launch_ordered(kernel, gx, gy, gz, bx, by, bz, args, 0);
}

extern "C" const char* a3d_emu_last_error(void) { return a3d_emu::t_last_error.c_str(); }

extern "C" int a3d_emu_has_kernel(const char* name) {
    const a3d_emu::Entry* e = a3d_emu::find_kernel(name);
    return e != nullptr && !e->duplicate ? 1 : 0;
}

extern "C" int a3d_emu_kernel_arity(const char* name) {
    const a3d_emu::Entry* e = a3d_emu::find_kernel(name);
    return e != nullptr ? static_cast<int>(e->arity) : -1;
}
