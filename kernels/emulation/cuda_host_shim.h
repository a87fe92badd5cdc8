// Host shim: lets CUDA kernel source (kernels/*.cu) compile as plain C++ and run on the CPU
// under the fiber emulator in kernels/emulation/emulator.cpp.
//
// Every emulated translation unit is compiled as
//   g++ -x c++ -std=c++20 -O2 -DA3D_HOST_EMULATION -include kernels/emulation/cuda_host_shim.h
//       -isystem <cuda include> -I kernels ...
// (build/emulation.rs does this), so the .cu files stay exactly as nvcc sees them.
//
// What the shim provides (the CUDA subset the kernels may use):
//   threadIdx, blockIdx, blockDim, gridDim, warpSize;
//   __global__, __device__, __host__, __forceinline__ (from CUDA's headers), __launch_bounds__,
//   __shared__ (a `static` variable: blocks of a launch run one after another and launches are
//   serialised by a global lock, so one copy per kernel is enough);
//   __syncthreads (+ _count/_and/_or), __syncwarp, __shfl_sync/_up/_down/_xor (full-warp masks),
//   atomics, __ldg, __threadfence*, and a few math/bit intrinsics;
//   __half / __nv_bfloat16 / float4 / uint4 / dim3 come from CUDA's own host headers.
// Threads of a block are fibers on one OS thread; a barrier or shuffle is a rendezvous that
// switches fibers, so a missing barrier gives a deterministic wrong result and a barrier that not
// every thread reaches is reported as a deadlock (the launch fails, it never hangs).
#ifndef A3D_CUDA_HOST_SHIM_H
#define A3D_CUDA_HOST_SHIM_H

#ifndef A3D_HOST_EMULATION
#define A3D_HOST_EMULATION 1
#endif

// Included before the built-in variables below become macros: cuda_runtime.h uses `gridDim` and
// `blockDim` as parameter names, so a kernel that includes it must find it already included.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>  // before __noinline__ is defined: libstdc++ uses __attribute__((__noinline__))
#include <source_location>
#include <type_traits>
#include <utility>

// ---- keywords -------------------------------------------------------------------------------
// CUDA's host headers define __global__, __device__, __host__ and __constant__ as empty and
// __forceinline__ as `inline __attribute__((always_inline))`; they define __shared__ as empty,
// which would make shared arrays per-thread locals. Blocks run one at a time (see above), so a
// function-local `static` is exactly one shared copy per block.
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#undef __noinline__
#define __noinline__ __attribute__((noinline))

// ---- emulator state (defined in emulator.cpp) -----------------------------------------------
namespace a3d_emu {

// Per-fiber (per CUDA thread) state that kernel code reads through threadIdx.
struct FiberState {
    uint3 thread_idx;
    unsigned linear;  // x + y * blockDim.x + z * blockDim.x * blockDim.y (the fiber's index)
};

// Per-launch / per-block state.
struct LaunchState {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

extern FiberState* g_current;  // the running fiber; only changes inside the runtime's calls
extern LaunchState g_launch;

// Runtime entry points (emulator.cpp). They may switch fibers.
void syncthreads(const char* file, unsigned line);
int syncthreads_reduce(int op, int predicate, const char* file, unsigned line);
enum WarpOp : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kSyncWarp = 4 };
std::uint64_t warp_op(int op, unsigned mask, std::uint64_t bits, unsigned size, int lane_arg,
                      int width, const char* name, const char* file, unsigned line);

// Kernel registry: each kernel is registered with a type-erased invoker that unpacks
// cuLaunchKernel-style `void** args` according to the kernel's own parameter types.
using Invoker = void (*)(void** args);
void register_kernel(const char* name, Invoker invoke, unsigned arity);

template <class... P>
constexpr unsigned arity_of(void (*)(P...)) {
    return sizeof...(P);
}

template <class... P, std::size_t... I>
inline void call_with_args(void (*fn)(P...), void** args, std::index_sequence<I...>) {
    static_assert((std::is_trivially_copyable_v<std::remove_cv_t<P>> && ...),
                  "kernel parameters must be trivially copyable (passed by value like CUDA)");
    static_assert((!std::is_reference_v<P> && ...), "kernel parameters cannot be references");
    fn(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}

template <class... P>
inline void call_kernel(void (*fn)(P...), void** args) {
    call_with_args(fn, args, std::index_sequence_for<P...>{});
}

template <auto Kernel>
void invoke(void** args) {
    call_kernel(Kernel, args);
}

template <class T>
inline std::uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                  "shuffled values must be trivially copyable and at most 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <class T>
inline T from_bits(std::uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

}  // namespace a3d_emu

// X-macro helper: `A3D_FUSION_KERNELS(A3D_EMU_REGISTER)` registers every listed kernel.
#define A3D_EMU_REGISTER(name)                                                                  \
    ::a3d_emu::register_kernel(#name, &::a3d_emu::invoke<&name>, ::a3d_emu::arity_of(&name));

// ---- built-in variables ---------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::a3d_emu::g_current->thread_idx))
#define blockIdx (static_cast<const uint3&>(::a3d_emu::g_launch.block_idx))
#define blockDim (static_cast<const dim3&>(::a3d_emu::g_launch.block_dim))
#define gridDim (static_cast<const dim3&>(::a3d_emu::g_launch.grid_dim))
inline constexpr int warpSize = 32;

// ---- barriers -------------------------------------------------------------------------------
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    ::a3d_emu::syncthreads(loc.file_name(), loc.line());
}
inline int __syncthreads_count(int predicate,
                               std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::syncthreads_reduce(0, predicate, loc.file_name(), loc.line());
}
inline int __syncthreads_and(int predicate,
                             std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::syncthreads_reduce(1, predicate, loc.file_name(), loc.line());
}
inline int __syncthreads_or(int predicate,
                            std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::syncthreads_reduce(2, predicate, loc.file_name(), loc.line());
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location loc = std::source_location::current()) {
    ::a3d_emu::warp_op(::a3d_emu::kSyncWarp, mask, 0, 0, 0, 32, "__syncwarp", loc.file_name(),
                       loc.line());
}
// Memory fences order memory between threads; fibers switch only at barriers and shuffles, so
// there is nothing to order.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- warp shuffles (full-warp masks only; a partial mask fails the launch) -------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                     std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::from_bits<T>(::a3d_emu::warp_op(::a3d_emu::kShflIdx, mask,
                                                      ::a3d_emu::to_bits(var), sizeof(T), src_lane,
                                                      width, "__shfl_sync", loc.file_name(),
                                                      loc.line()));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::from_bits<T>(::a3d_emu::warp_op(
        ::a3d_emu::kShflUp, mask, ::a3d_emu::to_bits(var), sizeof(T), static_cast<int>(delta),
        width, "__shfl_up_sync", loc.file_name(), loc.line()));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::from_bits<T>(::a3d_emu::warp_op(
        ::a3d_emu::kShflDown, mask, ::a3d_emu::to_bits(var), sizeof(T), static_cast<int>(delta),
        width, "__shfl_down_sync", loc.file_name(), loc.line()));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                         std::source_location loc = std::source_location::current()) {
    return ::a3d_emu::from_bits<T>(::a3d_emu::warp_op(::a3d_emu::kShflXor, mask,
                                                      ::a3d_emu::to_bits(var), sizeof(T), lane_mask,
                                                      width, "__shfl_xor_sync", loc.file_name(),
                                                      loc.line()));
}

// ---- atomics ----------------------------------------------------------------------------------
// Fibers switch only inside barriers and shuffles, and launches hold a global lock, so a plain
// read-modify-write is atomic with respect to every other emulated thread.
#define A3D_EMU_ATOMIC(name, T, expr)                                                           \
    inline T name(T* address, T val) {                                                          \
        T old = *address;                                                                       \
        *address = (expr);                                                                      \
        return old;                                                                             \
    }
A3D_EMU_ATOMIC(atomicAdd, int, old + val)
A3D_EMU_ATOMIC(atomicAdd, unsigned int, old + val)
A3D_EMU_ATOMIC(atomicAdd, unsigned long long int, old + val)
A3D_EMU_ATOMIC(atomicAdd, float, old + val)
A3D_EMU_ATOMIC(atomicAdd, double, old + val)
A3D_EMU_ATOMIC(atomicSub, int, old - val)
A3D_EMU_ATOMIC(atomicSub, unsigned int, old - val)
A3D_EMU_ATOMIC(atomicExch, int, val)
A3D_EMU_ATOMIC(atomicExch, unsigned int, val)
A3D_EMU_ATOMIC(atomicExch, unsigned long long int, val)
A3D_EMU_ATOMIC(atomicExch, float, val)
A3D_EMU_ATOMIC(atomicMax, int, old > val ? old : val)
A3D_EMU_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
A3D_EMU_ATOMIC(atomicMax, long long int, old > val ? old : val)
A3D_EMU_ATOMIC(atomicMax, unsigned long long int, old > val ? old : val)
A3D_EMU_ATOMIC(atomicMin, int, old < val ? old : val)
A3D_EMU_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
A3D_EMU_ATOMIC(atomicMin, long long int, old < val ? old : val)
A3D_EMU_ATOMIC(atomicMin, unsigned long long int, old < val ? old : val)
A3D_EMU_ATOMIC(atomicAnd, int, old & val)
A3D_EMU_ATOMIC(atomicAnd, unsigned int, old & val)
A3D_EMU_ATOMIC(atomicOr, int, old | val)
A3D_EMU_ATOMIC(atomicOr, unsigned int, old | val)
A3D_EMU_ATOMIC(atomicXor, int, old ^ val)
A3D_EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
#undef A3D_EMU_ATOMIC
inline __half atomicAdd(__half* address, __half val) {
    __half old = *address;
    *address = __float2half_rn(__half2float(old) + __half2float(val));
    return old;
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 val) {
    __nv_bfloat16 old = *address;
    *address = __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(val));
    return old;
}
// Note: spinning on a value that another thread of the same block must change (a lock built from
// atomicCAS) never terminates here, because fibers do not preempt each other.
inline int atomicCAS(int* address, int compare, int val) {
    int old = *address;
    *address = old == compare ? val : old;
    return old;
}
inline unsigned int atomicCAS(unsigned int* address, unsigned int compare, unsigned int val) {
    unsigned int old = *address;
    *address = old == compare ? val : old;
    return old;
}
inline unsigned long long int atomicCAS(unsigned long long int* address,
                                        unsigned long long int compare,
                                        unsigned long long int val) {
    unsigned long long int old = *address;
    *address = old == compare ? val : old;
    return old;
}

// ---- loads and intrinsics ---------------------------------------------------------------------
template <class T>
inline T __ldg(const T* ptr) {
    return *ptr;
}
template <class T>
inline T __ldcs(const T* ptr) {
    return *ptr;
}
template <class T>
inline void __stcs(T* ptr, T value) {
    *ptr = value;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
#if !(defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 42)))
// glibc 2.42 and newer declare the C23 rsqrt functions themselves.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
#endif
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long int x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
// CUDA's device-side min/max overloads (std::min/std::max are unaffected).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long int min(long int a, long int b) { return a < b ? a : b; }
inline long int max(long int a, long int b) { return a > b ? a : b; }
inline unsigned long int min(unsigned long int a, unsigned long int b) { return a < b ? a : b; }
inline unsigned long int max(unsigned long int a, unsigned long int b) { return a > b ? a : b; }
inline long long int min(long long int a, long long int b) { return a < b ? a : b; }
inline long long int max(long long int a, long long int b) { return a > b ? a : b; }
inline unsigned long long int min(unsigned long long int a, unsigned long long int b) {
    return a < b ? a : b;
}
inline unsigned long long int max(unsigned long long int a, unsigned long long int b) {
    return a > b ? a : b;
}
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

#endif  // A3D_CUDA_HOST_SHIM_H
