// Symmetric depth convolution: forward, grad-input and deterministic grad-weight kernels.
//
// Operator (shared/docs/operator.md, src/ops/depthconv/mod.rs), r = (K-1)/2, zero padding:
//   forward      y[b,c,k,p]  = sum_t v[t,c] * x[b,c,k+t-r,p]
//   grad input   dx[b,c,d,p] = sum_t v[t,c] * dy[b,c,d-t+r,p]
//   grad weight  dv[t,c]     = sum_{b,k,p} x[b,c,k+t-r,p] * dy[b,c,k,p]
// Storage f32 / f16 / bf16, arithmetic f32, the last dv step in f64. Terms outside 0..D are left
// out (not multiplied by a zero), taps are accumulated in increasing order with fmaf: the same
// order as the CPU kernels.
//
// KERNELS (A3D_DEPTHCONV_KERNELS at the end lists them), K in {1, 3, 5, 7}:
//   depthconv_forward_<dt>_k<K>(const T* x, const T* v, T* y, A3dDepthConvParams p)
//   depthconv_grad_input_<dt>_k<K>(const T* dy, const T* v, T* dx, A3dDepthConvParams p)
//   depthconv_grad_weight_partial_<dt>_k<K>(const T* x, const T* dy, float* partials, params)
//   depthconv_grad_weight_reduce_<dt>(const float* partials, T* dv, params)
//   dt: f32, f16, bf16 (bf16: host emulation and sm_80+ only).
// Block: (A3D_DEPTHCONV_BLOCK = 256, 1, 1).
//
// WORK DECOMPOSITION
//   unit  = 4 consecutive pixels of one (b, c) plane pair, for every slice; a channel has
//           U = B * ceil(P/4) units. blockIdx.y is the channel (grid-stride by gridDim.y).
//   forward / grad_input -- ANY grid is correct. Thread t of block bx takes units
//     u = bx*256 + t, += gridDim.x*256 and walks the D slices of its unit with a window of K
//     input quads in registers: every input element is read once and every output written
//     once. Quads are one 16-byte (f32) or 8-byte (16-bit) access when the tensors are aligned
//     to 4 elements and P % 4 == 0, else scalar accesses (same arithmetic).
//     Recommended: gy = min(C, 65535), gx = clamp(ceil(4 * RES / gy), 1, ceil(U / 256)),
//     RES = resident blocks (2 per SM).
//   grad_weight_partial -- grid (p.partial_blocks, gy); block bx owns the fixed unit subset
//     u = bx*256 + t, += partial_blocks*256, each thread accumulates K sums over its units and
//     slices (x window plus the dy quad), then the block adds them per tap with a fixed shared
//     memory tree and writes partials[(c*partial_blocks + bx)*K + t] (zeros for no units).
//     No atomics. Recommended: partial_blocks = clamp(ceil(2 * RES / gy), 1, ceil(U / 256)).
//   grad_weight_reduce -- any 1-D grid; thread i (grid-stride) adds the partial_blocks partials
//     of entry i = c*K + t in block order in f64 and writes dv[t*C + c]. Bitwise reproducible
//     for a given partial_blocks.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "depthconv_params.h"
#include "storage.cuh"

namespace {

constexpr int kDcBlock = A3D_DEPTHCONV_BLOCK;
static_assert(kDcBlock == 256, "the reduction tree assumes 256 threads");

// Four consecutive elements as one access.
template <typename T> struct alignas(4 * sizeof(T)) DcQuad {
    T v[4];
};

template <typename T>
__device__ __forceinline__ void dc_load(const T* base, uint64_t i, uint64_t pixels, bool vec,
                                        float (&out)[4]) {
    typedef Storage<T> S;
    if (vec) {
        const DcQuad<T> q = *reinterpret_cast<const DcQuad<T>*>(base + i);
#pragma unroll
        for (int l = 0; l < 4; ++l) out[l] = S::to_f(q.v[l]);
    } else {
#pragma unroll
        for (int l = 0; l < 4; ++l) out[l] = i + l < pixels ? S::to_f(base[i + l]) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ void dc_store(T* base, uint64_t i, uint64_t pixels, bool vec,
                                         const float (&in)[4]) {
    typedef Storage<T> S;
    if (vec) {
        DcQuad<T> q;
#pragma unroll
        for (int l = 0; l < 4; ++l) q.v[l] = S::from_f(in[l]);
        *reinterpret_cast<DcQuad<T>*>(base + i) = q;
    } else {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            if (i + l < pixels) base[i + l] = S::from_f(in[l]);
        }
    }
}

__device__ __forceinline__ bool dc_aligned(const void* p, uint64_t bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// The sliding window of one unit's slices: win[j] holds slice k - R + j of `plane` (zeros
// outside 0..D). Start at k = 0; advance from k to k + 1.
template <typename T, int K>
__device__ __forceinline__ void dc_window_start(const T* plane, uint64_t i, uint64_t D,
                                                uint64_t P, bool vec, float (&win)[K][4]) {
    constexpr int R = K / 2;
#pragma unroll
    for (int j = 0; j < K; ++j) {
        const int64_t d = static_cast<int64_t>(j) - R;
        if (d >= 0 && static_cast<uint64_t>(d) < D) {
            dc_load(plane + static_cast<uint64_t>(d) * P, i, P, vec, win[j]);
        } else {
#pragma unroll
            for (int l = 0; l < 4; ++l) win[j][l] = 0.0f;
        }
    }
}

template <typename T, int K>
__device__ __forceinline__ void dc_window_advance(const T* plane, uint64_t i, uint64_t k,
                                                  uint64_t D, uint64_t P, bool vec,
                                                  float (&win)[K][4]) {
    constexpr int R = K / 2;
#pragma unroll
    for (int j = 0; j + 1 < K; ++j) {
#pragma unroll
        for (int l = 0; l < 4; ++l) win[j][l] = win[j + 1][l];
    }
    const uint64_t next = k + 1 + R;
    if (next < D) {
        dc_load(plane + next * P, i, P, vec, win[K - 1]);
    } else {
#pragma unroll
        for (int l = 0; l < 4; ++l) win[K - 1][l] = 0.0f;
    }
}

// forward (kFlip = false) and grad-input (kFlip = true: taps applied reversed).
template <typename T, int K, bool kFlip>
__device__ __forceinline__ void dc_mix(const T* __restrict__ in, const T* __restrict__ v,
                                       T* __restrict__ out, const A3dDepthConvParams& p) {
    typedef Storage<T> S;
    constexpr int R = K / 2;
    const uint64_t D = p.depth, P = p.pixels, C = p.channels;
    const uint64_t per_row = (P + 3) / 4;
    const uint64_t units = p.batch * per_row;
    const bool vec = P % 4 == 0 && dc_aligned(in, 4 * sizeof(T)) && dc_aligned(out, 4 * sizeof(T));
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        float taps[K];
#pragma unroll
        for (int t = 0; t < K; ++t) taps[t] = S::to_f(v[(kFlip ? K - 1 - t : t) * C + c]);
        for (uint64_t u = static_cast<uint64_t>(blockIdx.x) * kDcBlock + threadIdx.x; u < units;
             u += static_cast<uint64_t>(gridDim.x) * kDcBlock) {
            const uint64_t b = u / per_row, i = (u % per_row) * 4;
            const T* src = in + (b * C + c) * D * P;
            T* dst = out + (b * C + c) * D * P;
            float win[K][4];
            dc_window_start<T, K>(src, i, D, P, vec, win);
            for (uint64_t k = 0; k < D; ++k) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                bool first = true;
#pragma unroll
                for (int t = 0; t < K; ++t) {
                    const int64_t d = static_cast<int64_t>(k) + t - R;
                    if (d >= 0 && static_cast<uint64_t>(d) < D) {
#pragma unroll
                        for (int l = 0; l < 4; ++l) {
                            acc[l] = first ? taps[t] * win[t][l] : fmaf(taps[t], win[t][l], acc[l]);
                        }
                        first = false;
                    }
                }
                dc_store(dst + k * P, i, P, vec, acc);
                dc_window_advance<T, K>(src, i, k, D, P, vec, win);
            }
        }
    }
}

template <typename T, int K>
__device__ __forceinline__ void dc_grad_weight(const T* __restrict__ x, const T* __restrict__ dy,
                                               float* __restrict__ partials,
                                               const A3dDepthConvParams& p) {
    constexpr int R = K / 2;
    __shared__ float red[kDcBlock];
    const uint64_t D = p.depth, P = p.pixels, C = p.channels, PB = p.partial_blocks;
    const uint64_t per_row = (P + 3) / 4;
    const uint64_t units = p.batch * per_row;
    const bool vec = P % 4 == 0 && dc_aligned(x, 4 * sizeof(T)) && dc_aligned(dy, 4 * sizeof(T));
    if (blockIdx.x >= PB) return;  // block-uniform: no barrier is skipped by part of a block
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        float acc[K];
#pragma unroll
        for (int t = 0; t < K; ++t) acc[t] = 0.0f;
        for (uint64_t u = blockIdx.x * static_cast<uint64_t>(kDcBlock) + threadIdx.x; u < units;
             u += PB * kDcBlock) {
            const uint64_t b = u / per_row, i = (u % per_row) * 4;
            const T* xs = x + (b * C + c) * D * P;
            const T* gs = dy + (b * C + c) * D * P;
            float win[K][4];
            dc_window_start<T, K>(xs, i, D, P, vec, win);
            for (uint64_t k = 0; k < D; ++k) {
                float g[4];
                dc_load(gs + k * P, i, P, vec, g);
#pragma unroll
                for (int t = 0; t < K; ++t) {
                    const int64_t d = static_cast<int64_t>(k) + t - R;
                    if (d >= 0 && static_cast<uint64_t>(d) < D) {
#pragma unroll
                        for (int l = 0; l < 4; ++l) acc[t] = fmaf(win[t][l], g[l], acc[t]);
                    }
                }
                dc_window_advance<T, K>(xs, i, k, D, P, vec, win);
            }
        }
        // Fixed tree per tap: pairs (i, i + s) for s = 128, 64, ..., 1.
#pragma unroll
        for (int t = 0; t < K; ++t) {
            red[threadIdx.x] = acc[t];
            __syncthreads();
            for (int s = kDcBlock / 2; s > 0; s >>= 1) {
                if (threadIdx.x < static_cast<unsigned>(s)) red[threadIdx.x] += red[threadIdx.x + s];
                __syncthreads();
            }
            if (threadIdx.x == 0) partials[(c * PB + blockIdx.x) * K + t] = red[0];
            __syncthreads();
        }
    }
}

template <typename T>
__device__ __forceinline__ void dc_reduce(const float* __restrict__ partials, T* __restrict__ dv,
                                          const A3dDepthConvParams& p) {
    const uint64_t K = p.taps, C = p.channels, PB = p.partial_blocks;
    for (uint64_t e = static_cast<uint64_t>(blockIdx.x) * kDcBlock + threadIdx.x; e < C * K;
         e += static_cast<uint64_t>(gridDim.x) * kDcBlock) {
        const uint64_t c = e / K, t = e % K;
        double s = 0.0;
        for (uint64_t bx = 0; bx < PB; ++bx) s += static_cast<double>(partials[(c * PB + bx) * K + t]);
        dv[t * C + c] = Storage<T>::from_f(static_cast<float>(s));
    }
}

}  // namespace

// An explicit minimum of resident blocks: without one, ptxas' occupancy heuristic caps these
// kernels at 32 registers and spills (which the build rejects); with 4 blocks of 256 threads
// they may use up to 64 registers and still keep half of an SM's threads resident.
#define A3D_DEPTHCONV_MIN_BLOCKS 4

#define A3D_DC_DEFINE_TAPS(dt, T, K)                                                               \
    extern "C" __global__ void __launch_bounds__(A3D_DEPTHCONV_BLOCK, A3D_DEPTHCONV_MIN_BLOCKS)                              \
        depthconv_forward_##dt##_k##K(const T* __restrict__ x, const T* __restrict__ v,            \
                                      T* __restrict__ y, A3dDepthConvParams p) {                   \
        dc_mix<T, K, false>(x, v, y, p);                                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_DEPTHCONV_BLOCK, A3D_DEPTHCONV_MIN_BLOCKS)                              \
        depthconv_grad_input_##dt##_k##K(const T* __restrict__ dy, const T* __restrict__ v,        \
                                         T* __restrict__ dx, A3dDepthConvParams p) {               \
        dc_mix<T, K, true>(dy, v, dx, p);                                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_DEPTHCONV_BLOCK, A3D_DEPTHCONV_MIN_BLOCKS)                              \
        depthconv_grad_weight_partial_##dt##_k##K(const T* __restrict__ x,                         \
                                                  const T* __restrict__ dy,                        \
                                                  float* __restrict__ partials,                    \
                                                  A3dDepthConvParams p) {                          \
        dc_grad_weight<T, K>(x, dy, partials, p);                                                  \
    }

#define A3D_DC_DEFINE(dt, T)                                                                       \
    A3D_DC_DEFINE_TAPS(dt, T, 1)                                                                   \
    A3D_DC_DEFINE_TAPS(dt, T, 3)                                                                   \
    A3D_DC_DEFINE_TAPS(dt, T, 5)                                                                   \
    A3D_DC_DEFINE_TAPS(dt, T, 7)                                                                   \
    extern "C" __global__ void __launch_bounds__(A3D_DEPTHCONV_BLOCK, A3D_DEPTHCONV_MIN_BLOCKS)                              \
        depthconv_grad_weight_reduce_##dt(const float* __restrict__ partials, T* __restrict__ dv,  \
                                          A3dDepthConvParams p) {                                  \
        dc_reduce<T>(partials, dv, p);                                                             \
    }

A3D_DC_DEFINE(f32, float)
A3D_DC_DEFINE(f16, __half)
#if defined(A3D_BF16_ENABLED)
A3D_DC_DEFINE(bf16, __nv_bfloat16)
#endif
#undef A3D_DC_DEFINE
#undef A3D_DC_DEFINE_TAPS

// Every kernel name (the host emulation registers them from this list).
#define A3D_DC_KERNELS_TAPS(X, dt, K)                                                              \
    X(depthconv_forward_##dt##_k##K) X(depthconv_grad_input_##dt##_k##K)                           \
    X(depthconv_grad_weight_partial_##dt##_k##K)
#define A3D_DC_KERNELS_DTYPE(X, dt)                                                                \
    A3D_DC_KERNELS_TAPS(X, dt, 1) A3D_DC_KERNELS_TAPS(X, dt, 3) A3D_DC_KERNELS_TAPS(X, dt, 5)      \
    A3D_DC_KERNELS_TAPS(X, dt, 7) X(depthconv_grad_weight_reduce_##dt)
#define A3D_DEPTHCONV_KERNELS(X)                                                                   \
    A3D_DC_KERNELS_DTYPE(X, f32) A3D_DC_KERNELS_DTYPE(X, f16) A3D_DC_KERNELS_DTYPE(X, bf16)
