// TSM and AlignShift: forward and transposed (grad-input) shift kernels.
//
// Operator (shared/docs/operator.md, src/ops/shift/mod.rs): with fold = C / fold_div,
//   c <  fold          y[d] = a*x[d] + n*x[d+1] (d < D-1),  y[D-1] = e*x[D-1]
//   fold <= c < 2fold  y[d] = a*x[d] + n*x[d-1] (d > 0),    y[0]   = e*x[0]
//   c >= 2fold         y[d] = x[d]
// with (a, n, e) = coef[3*b .. 3*b+3] per sample (TSM: 0, 1, 0). The backward kernel applies the
// transpose: the same own-slice coefficient, the neighbour read from the other side. A term
// whose coefficient is exactly 0 is left out; a lone term with coefficient 1 is a bit copy, so
// TSM moves stored values unchanged in every dtype.
//
// KERNELS (A3D_SHIFT_KERNELS at the end lists them)
//   shift_forward_<dt>(const T* in, T* out, const float* coef, A3dShiftParams p)
//   shift_backward_<dt>(const T* in, T* out, const float* coef, A3dShiftParams p)
//   dt: f32, f16, bf16 (bf16: host emulation and sm_80+ only).
// Block: (A3D_SHIFT_BLOCK = 256, 1, 1). ANY grid is correct:
//   blockIdx.y walks the rows r = (b*C + c)*D + d (grid-stride by gridDim.y); the row's terms
//   are computed once per block and row. blockIdx.x * 256 + threadIdx.x walks the row's units
//   of V = 16 / sizeof(T) pixels (grid-stride by gridDim.x * 256).
//   Units are 16-byte vectors when in and out are 16-byte aligned and P % V == 0, else the
//   same units with scalar accesses (same arithmetic, same results).
//   Recommended grid (src/ops/shift/launch.rs): gx = clamp(ceil(units / (256 * 4)), 1, 64),
//   gy = min(B*C*D, 65535): every thread has up to 4 independent 16-byte loads per row.
// Memory: reads each input row at most twice (own and neighbour; the second read hits L2),
// writes each output element once. No shared memory, no atomics, no reduction.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "shift_params.h"
#include "storage.cuh"

namespace {

// How one output row is made (mirrors `row_terms` in src/ops/shift/cpu_kernel.rs).
struct ShiftTerms {
    int kind;          // 0 zeros, 1 copy of row `src`, 2 arithmetic
    uint64_t own;      // row index of the own slice (absolute, in rows of P)
    uint64_t nb;       // row index of the neighbour slice
    float s;           // own coefficient (0: absent)
    float n;           // neighbour coefficient (0: absent)
    uint64_t src;      // kind 1: the row copied
};

__device__ __forceinline__ ShiftTerms shift_terms(const A3dShiftParams& p, const float* coef,
                                                  bool backward, uint64_t r) {
    const uint64_t d = r % p.depth;
    const uint64_t bc = r / p.depth;
    const uint64_t c = bc % p.channels;
    const uint64_t b = bc / p.channels;
    ShiftTerms t;
    t.own = r;
    t.nb = r;
    t.src = r;
    t.s = 1.0f;
    t.n = 0.0f;
    t.kind = 1;
    if (c >= 2 * p.fold) return t;  // pass-through: copy
    const int group = c < p.fold ? 0 : 1;
    const float a = coef[3 * b], n = coef[3 * b + 1], e = coef[3 * b + 2];
    const uint64_t open_end = group == 0 ? p.depth - 1 : 0;
    t.s = d == open_end ? e : a;
    const bool reads_next = (group == 0) != backward;
    bool has_nb;
    if (reads_next) {
        has_nb = d + 1 < p.depth;
        t.nb = r + 1;
    } else {
        has_nb = d > 0;
        t.nb = r - 1;
    }
    t.n = (has_nb && n != 0.0f) ? n : 0.0f;
    if (t.s == 0.0f && t.n == 0.0f) {
        t.kind = 0;
    } else if (t.n == 0.0f && t.s == 1.0f) {
        t.kind = 1;
        t.src = t.own;
    } else if (t.s == 0.0f && t.n == 1.0f) {
        t.kind = 1;
        t.src = t.nb;
    } else {
        t.kind = 2;
    }
    return t;
}

__device__ __forceinline__ float shift_mix(float s, float u, float n, float v) {
    if (s == 0.0f) return n * v;
    if (n == 0.0f) return s * u;
    return fmaf(s, u, n * v);
}

template <typename T>
__device__ __forceinline__ void shift_kernel(const T* __restrict__ in, T* __restrict__ out,
                                             const float* __restrict__ coef,
                                             const A3dShiftParams& p, bool backward) {
    typedef Storage<T> S;
    constexpr int V = Pack<T>::V;
    const uint64_t units = (p.pixels + V - 1) / V;
    const uint64_t rows = p.batch * p.channels * p.depth;
    const bool vec = p.pixels % V == 0 && aligned16(in) && aligned16(out);
    const uint64_t first = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const uint64_t step = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    for (uint64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const ShiftTerms t = shift_terms(p, coef, backward, r);
        T* o = out + r * p.pixels;
        const T* src = in + t.src * p.pixels;
        const T* own = in + t.own * p.pixels;
        const T* nb = in + t.nb * p.pixels;
        for (uint64_t u = first; u < units; u += step) {
            const uint64_t i0 = u * V;
            if (vec) {
                Pack<T> res = zero_pack<T>();
                if (t.kind == 0) {
                    res = zero_pack<T>();
                } else if (t.kind == 1) {
                    res = load_pack(src + i0);
                } else {
                    const Pack<T> x = load_pack(own + i0);
                    const Pack<T> y = load_pack(nb + i0);
#pragma unroll
                    for (int l = 0; l < V; ++l) res.set(l, shift_mix(t.s, x.get(l), t.n, y.get(l)));
                }
                store_pack(o + i0, res);
            } else {
                const uint64_t end = i0 + V < p.pixels ? i0 + V : p.pixels;
                for (uint64_t i = i0; i < end; ++i) {
                    if (t.kind == 0) {
                        o[i] = S::from_f(0.0f);
                    } else if (t.kind == 1) {
                        o[i] = src[i];
                    } else {
                        o[i] = S::from_f(shift_mix(t.s, S::to_f(own[i]), t.n, S::to_f(nb[i])));
                    }
                }
            }
        }
    }
}

}  // namespace

// An explicit minimum of resident blocks: without one, ptxas' occupancy heuristic caps these
// kernels at 32 registers and spills (which the build rejects); with 4 blocks of 256 threads
// they may use up to 64 registers and still keep half of an SM's threads resident.
#define A3D_SHIFT_MIN_BLOCKS 4

#define A3D_SHIFT_DEFINE(dt, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(A3D_SHIFT_BLOCK, A3D_SHIFT_MIN_BLOCKS)                                  \
        shift_forward_##dt(const T* __restrict__ in, T* __restrict__ out,                          \
                           const float* __restrict__ coef, A3dShiftParams p) {                     \
        shift_kernel<T>(in, out, coef, p, false);                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_SHIFT_BLOCK, A3D_SHIFT_MIN_BLOCKS)                                  \
        shift_backward_##dt(const T* __restrict__ in, T* __restrict__ out,                         \
                            const float* __restrict__ coef, A3dShiftParams p) {                    \
        shift_kernel<T>(in, out, coef, p, true);                                                   \
    }

A3D_SHIFT_DEFINE(f32, float)
A3D_SHIFT_DEFINE(f16, __half)
#if defined(A3D_BF16_ENABLED)
A3D_SHIFT_DEFINE(bf16, __nv_bfloat16)
#endif
#undef A3D_SHIFT_DEFINE

// Every kernel name (the host emulation registers them from this list).
#define A3D_SHIFT_KERNELS(X)                                                                       \
    X(shift_forward_f32) X(shift_backward_f32) X(shift_forward_f16) X(shift_backward_f16)          \
    X(shift_forward_bf16) X(shift_backward_bf16)
