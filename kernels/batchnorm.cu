// Batch norm: deterministic per-channel statistics and the fused BN-ReLU(-fusion) forward.
//
// KERNELS (A3D_BATCHNORM_KERNELS at the end lists them)
//   bn_stats_partial_<dt>(const T* x, double* partials, A3dBatchNormParams p)
//     grid (partial_blocks, gy): blockIdx.y walks the channels (stride gridDim.y); block bx of
//     channel c owns the values v = bx * 256 + t, += partial_blocks * 256 of the channel's
//     N = B * D * P values (v -> batch v / (D P), offset v % (D P)). Each thread sums x and x^2
//     in double, the block adds them with a fixed shared-memory tree and writes
//     partials[(c * partial_blocks + bx) * 2 + {0, 1}] (zeros for blocks without values).
//   bn_stats_reduce(const double* partials, float* stats, A3dBatchNormParams p)
//     any 1-D grid; thread i (grid-stride) adds channel i's partials in block order and writes
//     stats[2i] = mean, stats[2i + 1] = max(E[x^2] - mean^2, 0). Bitwise reproducible for a given
//     partial_blocks (no atomics).
//   bn_relu_fusion_forward_<dt>(const T* x, const T* w, const float* affine, T* y, params)
//     a grid-stride loop over the B * C * P columns (b, c, pixel): the D values of the column
//     become a[d] = max(x * scale[c] + shift[c], 0) in registers; with p.fused, y[k] =
//     sum_d a[d] * w[d, k, c] (fmaf, d increasing: the CPU path's order), else y = a. The
//     pre-activated tensor is never written. D <= A3D_BATCHNORM_MAX_DEPTH.
//   dt: f32, f16, bf16 (bf16: host emulation and sm_80+ only). Block (256, 1, 1). The fused
//   forward holds up to 16 slices per thread: it is bounded to 3 resident blocks per SM (85
//   registers), which it needs to avoid spilling.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "batchnorm_params.h"
#include "storage.cuh"

namespace {

constexpr int kBnBlock = A3D_BATCHNORM_BLOCK;
static_assert(kBnBlock == 256, "the reduction tree assumes 256 threads");

template <typename T>
__device__ __forceinline__ void bn_stats_partial(const T* __restrict__ x,
                                                 double* __restrict__ partials,
                                                 const A3dBatchNormParams& p) {
    __shared__ double sum[kBnBlock];
    __shared__ double sq[kBnBlock];
    const uint64_t rest = p.depth * p.pixels;
    const uint64_t n = p.batch * rest;
    const uint64_t stride = p.partial_blocks * kBnBlock;
    for (uint64_t c = blockIdx.y; c < p.channels; c += gridDim.y) {
        double s = 0.0, q = 0.0;
        for (uint64_t v = (uint64_t)blockIdx.x * kBnBlock + threadIdx.x; v < n; v += stride) {
            const uint64_t b = v / rest, r = v % rest;
            const double a = (double)Storage<T>::to_f(x[(b * p.channels + c) * rest + r]);
            s += a;
            q += a * a;
        }
        sum[threadIdx.x] = s;
        sq[threadIdx.x] = q;
        __syncthreads();
        for (unsigned half = kBnBlock / 2; half > 0; half /= 2) {
            if (threadIdx.x < half) {
                sum[threadIdx.x] += sum[threadIdx.x + half];
                sq[threadIdx.x] += sq[threadIdx.x + half];
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            double* out = partials + (c * p.partial_blocks + blockIdx.x) * 2;
            out[0] = sum[0];
            out[1] = sq[0];
        }
        __syncthreads();
    }
}

template <typename T>
__device__ __forceinline__ void bn_relu_fusion_forward(const T* __restrict__ x,
                                                       const T* __restrict__ w,
                                                       const float* __restrict__ affine,
                                                       T* __restrict__ y,
                                                       const A3dBatchNormParams& p) {
    const uint64_t cols = p.batch * p.channels * p.pixels;
    const uint64_t dn = p.depth;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < cols;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t px = e % p.pixels, bc = e / p.pixels, c = bc % p.channels;
        const float s = affine[2 * c], t = affine[2 * c + 1];
        const uint64_t base = bc * dn * p.pixels + px;
        // Fully unrolled over the largest depth with guards, so every a[d] is a register.
        float a[A3D_BATCHNORM_MAX_DEPTH];
#pragma unroll
        for (int d = 0; d < A3D_BATCHNORM_MAX_DEPTH; ++d) {
            a[d] = (uint64_t)d < dn
                       ? fmaxf(fmaf(Storage<T>::to_f(x[base + d * p.pixels]), s, t), 0.0f)
                       : 0.0f;
        }
        if (!p.fused) {
#pragma unroll
            for (int d = 0; d < A3D_BATCHNORM_MAX_DEPTH; ++d) {
                if ((uint64_t)d < dn) y[base + d * p.pixels] = Storage<T>::from_f(a[d]);
            }
            continue;
        }
        for (uint64_t k = 0; k < dn; ++k) {
            float out = 0.0f;
#pragma unroll
            for (int d = 0; d < A3D_BATCHNORM_MAX_DEPTH; ++d) {
                if ((uint64_t)d < dn) {
                    out = fmaf(a[d], Storage<T>::to_f(w[(d * dn + k) * p.channels + c]), out);
                }
            }
            y[base + k * p.pixels] = Storage<T>::from_f(out);
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kBnBlock, 4)
    bn_stats_reduce(const double* __restrict__ partials, float* __restrict__ stats,
                    A3dBatchNormParams p) {
    const double n = (double)(p.batch * p.depth * p.pixels);
    for (uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; c < p.channels;
         c += (uint64_t)gridDim.x * blockDim.x) {
        double s = 0.0, q = 0.0;
        for (uint64_t b = 0; b < p.partial_blocks; ++b) {
            s += partials[(c * p.partial_blocks + b) * 2];
            q += partials[(c * p.partial_blocks + b) * 2 + 1];
        }
        const double mean = n > 0.0 ? s / n : 0.0;
        const double var = n > 0.0 ? q / n - mean * mean : 0.0;
        stats[2 * c] = (float)mean;
        stats[2 * c + 1] = (float)(var > 0.0 ? var : 0.0);
    }
}

#define A3D_BATCHNORM_DEFINE(dt, T)                                                              \
    extern "C" __global__ void __launch_bounds__(kBnBlock, 4)                                    \
        bn_stats_partial_##dt(const T* __restrict__ x, double* __restrict__ partials,            \
                              A3dBatchNormParams p) {                                            \
        bn_stats_partial<T>(x, partials, p);                                                     \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(kBnBlock, 3)                                    \
        bn_relu_fusion_forward_##dt(const T* __restrict__ x, const T* __restrict__ w,            \
                                    const float* __restrict__ affine, T* __restrict__ y,         \
                                    A3dBatchNormParams p) {                                      \
        bn_relu_fusion_forward<T>(x, w, affine, y, p);                                           \
    }

A3D_BATCHNORM_DEFINE(f32, float)
A3D_BATCHNORM_DEFINE(f16, __half)
#if defined(A3D_BF16_ENABLED)
A3D_BATCHNORM_DEFINE(bf16, __nv_bfloat16)
#endif
#undef A3D_BATCHNORM_DEFINE

// Every kernel name (the host emulation registers them from this list).
#define A3D_BATCHNORM_KERNELS(X)                                                                 \
    X(bn_stats_reduce) X(bn_stats_partial_f32) X(bn_relu_fusion_forward_f32)                     \
    X(bn_stats_partial_f16) X(bn_relu_fusion_forward_f16) X(bn_stats_partial_bf16)               \
    X(bn_relu_fusion_forward_bf16)
