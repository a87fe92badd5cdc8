// RoIAlign: forward pooling, the gradient to the features, and the f32 -> storage cast of that
// gradient.
//
// Geometry and sampling rules (src/ops/roi_align/mod.rs, reference-detector.md section 5.1):
//   reference: start = x1 * s, end = (x2 + 1) * s, size = max(end - start, 0)
//   aligned:   start = x1 * s - 0.5, end = x2 * s - 0.5, size = end - start
//   bin = size / pooled; grid g = sampling_ratio or ceil(bin) (0 if bin <= 0) per axis;
//   sample (i, j) at start + i * bin + (j + 0.5) * bin / g; count = max(gh * gw, 1).
//   Bilinear: 0 outside [-1, H] x [-1, W]; coordinates < 0 clamp to 0; at or past the last
//   row / column the sample is that row / column exactly. The same f32 operations as
//   src/ops/roi_align/cpu_kernel.rs (the device may contract multiply-adds, so results agree to
//   rounding, not bits).
//
// KERNELS (A3D_ROI_ALIGN_KERNELS at the end lists them)
//   roi_align_forward_<dt>(const T* features, const float* rois, T* out, A3dRoiAlignParams p)
//     one output element per loop step: a grid-stride loop over K * C * ph * pw.
//   roi_align_backward_<dt>(const T* dy, const float* rois, float* dx, A3dRoiAlignParams p)
//     dx (f32, [N, C, H, W], zeroed by the caller) += each dy element's share, by atomicAdd:
//     overlapping RoIs make the summation order, and so the last bits, vary run to run.
//   roi_align_cast_<dt>(const float* src, const float* unused, T* dst, A3dRoiAlignParams p)
//     dst = src over N * C * H * W elements (the f16 / bf16 gradient; f32 needs no cast).
//   dt: f32, f16, bf16 (bf16: host emulation and sm_80+ only).
// Block (A3D_ROI_ALIGN_BLOCK = 256, 1, 1); ANY grid is correct (grid-stride loops).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "roi_align_params.h"
#include "storage.cuh"

namespace {

struct RoiGeometry {
    uint64_t image;
    float start_h, start_w, bin_h, bin_w;
    uint64_t grid_h, grid_w;
    float count;
};

__device__ __forceinline__ uint64_t adaptive_grid(float bin) {
    const float g = ceilf(bin);
    return g > 0.0f ? (uint64_t)g : 0;
}

__device__ __forceinline__ RoiGeometry roi_geometry(const float* rois, uint64_t k,
                                                    const A3dRoiAlignParams& p) {
    const float* r = rois + 5 * k;
    const float s = p.spatial_scale;
    RoiGeometry g;
    g.image = (uint64_t)r[0];
    float roi_w, roi_h;
    if (p.aligned) {
        g.start_w = r[1] * s - 0.5f;
        g.start_h = r[2] * s - 0.5f;
        roi_w = (r[3] * s - 0.5f) - g.start_w;
        roi_h = (r[4] * s - 0.5f) - g.start_h;
    } else {
        g.start_w = r[1] * s;
        g.start_h = r[2] * s;
        roi_w = fmaxf((r[3] + 1.0f) * s - g.start_w, 0.0f);
        roi_h = fmaxf((r[4] + 1.0f) * s - g.start_h, 0.0f);
    }
    g.bin_h = roi_h / (float)p.pooled_h;
    g.bin_w = roi_w / (float)p.pooled_w;
    g.grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : adaptive_grid(g.bin_h);
    g.grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : adaptive_grid(g.bin_w);
    const uint64_t n = g.grid_h * g.grid_w;
    g.count = (float)(n > 0 ? n : 1);
    return g;
}

// Offsets within one plane are 32-bit (the host checks H * W < 2^32): four 64-bit offsets per
// sample pushed the forward kernel past 64 registers.
struct Bilinear {
    uint32_t o[4];
    float w[4];
    bool inside;
};

__device__ __forceinline__ Bilinear bilinear(float y, float x, uint32_t h, uint32_t w) {
    Bilinear b;
    b.inside = !(y < -1.0f || y > (float)h || x < -1.0f || x > (float)w);
    if (!b.inside) return b;
    y = fmaxf(y, 0.0f);
    x = fmaxf(x, 0.0f);
    uint32_t yl = (uint32_t)y, xl = (uint32_t)x, yh, xh;
    if (yl >= h - 1) {
        yl = yh = h - 1;
        y = (float)yl;
    } else {
        yh = yl + 1;
    }
    if (xl >= w - 1) {
        xl = xh = w - 1;
        x = (float)xl;
    } else {
        xh = xl + 1;
    }
    const float ly = y - (float)yl, lx = x - (float)xl;
    const float hy = 1.0f - ly, hx = 1.0f - lx;
    b.o[0] = yl * w + xl;
    b.o[1] = yl * w + xh;
    b.o[2] = yh * w + xl;
    b.o[3] = yh * w + xh;
    b.w[0] = hy * hx;
    b.w[1] = hy * lx;
    b.w[2] = ly * hx;
    b.w[3] = ly * lx;
    return b;
}

__device__ __forceinline__ float sample_at(float start, float bin, uint64_t i, uint64_t j,
                                           uint64_t grid) {
    return start + (float)i * bin + ((float)j + 0.5f) * bin / (float)grid;
}

template <typename T>
__device__ __forceinline__ void roi_align_forward(const T* __restrict__ features,
                                                  const float* __restrict__ rois,
                                                  T* __restrict__ out, const A3dRoiAlignParams& p) {
    const uint64_t bins = p.pooled_h * p.pooled_w;
    const uint64_t total = p.rois * p.channels * bins;
    const uint64_t plane = p.height * p.width;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t pw = e % p.pooled_w, ph = (e / p.pooled_w) % p.pooled_h;
        const uint64_t c = (e / bins) % p.channels, k = e / (bins * p.channels);
        const RoiGeometry g = roi_geometry(rois, k, p);
        const T* src = features + (g.image * p.channels + c) * plane;
        float acc = 0.0f;
        for (uint64_t iy = 0; iy < g.grid_h; ++iy) {
            const float y = sample_at(g.start_h, g.bin_h, ph, iy, g.grid_h);
            for (uint64_t ix = 0; ix < g.grid_w; ++ix) {
                const float x = sample_at(g.start_w, g.bin_w, pw, ix, g.grid_w);
                const Bilinear b = bilinear(y, x, (uint32_t)p.height, (uint32_t)p.width);
                if (!b.inside) continue;
                acc += b.w[0] * Storage<T>::to_f(src[b.o[0]]) +
                       b.w[1] * Storage<T>::to_f(src[b.o[1]]) +
                       b.w[2] * Storage<T>::to_f(src[b.o[2]]) +
                       b.w[3] * Storage<T>::to_f(src[b.o[3]]);
            }
        }
        out[e] = Storage<T>::from_f(acc / g.count);
    }
}

template <typename T>
__device__ __forceinline__ void roi_align_backward(const T* __restrict__ dy,
                                                   const float* __restrict__ rois,
                                                   float* __restrict__ dx,
                                                   const A3dRoiAlignParams& p) {
    const uint64_t bins = p.pooled_h * p.pooled_w;
    const uint64_t total = p.rois * p.channels * bins;
    const uint64_t plane = p.height * p.width;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t pw = e % p.pooled_w, ph = (e / p.pooled_w) % p.pooled_h;
        const uint64_t c = (e / bins) % p.channels, k = e / (bins * p.channels);
        const RoiGeometry g = roi_geometry(rois, k, p);
        float* dst = dx + (g.image * p.channels + c) * plane;
        const float grad = Storage<T>::to_f(dy[e]);
        for (uint64_t iy = 0; iy < g.grid_h; ++iy) {
            const float y = sample_at(g.start_h, g.bin_h, ph, iy, g.grid_h);
            for (uint64_t ix = 0; ix < g.grid_w; ++ix) {
                const float x = sample_at(g.start_w, g.bin_w, pw, ix, g.grid_w);
                const Bilinear b = bilinear(y, x, (uint32_t)p.height, (uint32_t)p.width);
                if (!b.inside) continue;
                for (int i = 0; i < 4; ++i) atomicAdd(dst + b.o[i], grad * b.w[i] / g.count);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void roi_align_cast(const float* __restrict__ src, T* __restrict__ dst,
                                               const A3dRoiAlignParams& p) {
    const uint64_t total = p.batch * p.channels * p.height * p.width;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (uint64_t)gridDim.x * blockDim.x) {
        dst[e] = Storage<T>::from_f(src[e]);
    }
}

}  // namespace

#define A3D_ROI_ALIGN_MIN_BLOCKS 4

#define A3D_ROI_ALIGN_DEFINE(dt, T)                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_ROI_ALIGN_BLOCK, A3D_ROI_ALIGN_MIN_BLOCKS)   \
        roi_align_forward_##dt(const T* __restrict__ features, const float* __restrict__ rois,   \
                               T* __restrict__ out, A3dRoiAlignParams p) {                       \
        roi_align_forward<T>(features, rois, out, p);                                            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(A3D_ROI_ALIGN_BLOCK, A3D_ROI_ALIGN_MIN_BLOCKS)   \
        roi_align_backward_##dt(const T* __restrict__ dy, const float* __restrict__ rois,        \
                                float* __restrict__ dx, A3dRoiAlignParams p) {                   \
        roi_align_backward<T>(dy, rois, dx, p);                                                  \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(A3D_ROI_ALIGN_BLOCK, A3D_ROI_ALIGN_MIN_BLOCKS)   \
        roi_align_cast_##dt(const float* __restrict__ src, const float* __restrict__ unused,     \
                            T* __restrict__ dst, A3dRoiAlignParams p) {                          \
        (void)unused;                                                                            \
        roi_align_cast<T>(src, dst, p);                                                          \
    }

A3D_ROI_ALIGN_DEFINE(f32, float)
A3D_ROI_ALIGN_DEFINE(f16, __half)
#if defined(A3D_BF16_ENABLED)
A3D_ROI_ALIGN_DEFINE(bf16, __nv_bfloat16)
#endif
#undef A3D_ROI_ALIGN_DEFINE

// Every kernel name (the host emulation registers them from this list).
#define A3D_ROI_ALIGN_KERNELS(X)                                                                 \
    X(roi_align_forward_f32) X(roi_align_backward_f32) X(roi_align_cast_f32)                     \
    X(roi_align_forward_f16) X(roi_align_backward_f16) X(roi_align_cast_f16)                     \
    X(roi_align_forward_bf16) X(roi_align_backward_bf16) X(roi_align_cast_bf16)
