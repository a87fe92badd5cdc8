// Box kernels: the pairwise IoU matrix and the NMS suppression bitmask.
//
// IoU (src/ops/boxes/mod.rs): w = max(min(x2a, x2b) - max(x1a, x1b) + offset, 0), same for h,
// inter = w * h, IoU = inter / (area_a + area_b - inter), 0 when the union is 0; the f32
// operations in the order of the CPU path, so both give the same bits (no FMA contraction:
// the products are written out with __fmul_rn).
//
// KERNELS (A3D_NMS_KERNELS at the end lists them)
//   iou_matrix_f32(const float* a, const float* b, float* out, A3dBoxParams p)
//     out[i * n_b + j] = IoU(a[i], b[j]). Block (A3D_IOU_BLOCK, 1, 1); ANY grid: a grid-stride
//     loop over the n_a * n_b entries.
//   nms_mask_f32(const float* boxes, const float* unused, unsigned long long* mask, A3dBoxParams p)
//     Boxes sorted by descending score. mask[i * words + w] (words = ceil(n / 64)) has bit b set
//     when box i suppresses box j = 64 w + b: j > i and IoU > threshold (>= with
//     suppress_equal). Block (A3D_NMS_TILE, 1, 1); grid (words, gy): blockIdx.x is the column
//     tile, blockIdx.y walks the row tiles with a stride of gridDim.y, so any gy >= 1 is
//     correct. Each block stages its column tile's boxes in shared memory; the row box sits in
//     registers. Words left of the diagonal are written as 0. The host then walks the boxes in
//     order (src/ops/boxes/cpu_kernel.rs `scan_mask`): that serial step is O(n * words).
// No atomics; every output element is written exactly once.

#include <stdint.h>

#include "nms_params.h"

namespace {

struct Box {
    float x1, y1, x2, y2;
};

__device__ __forceinline__ Box load_box(const float* b, uint64_t i) {
    Box r;
    r.x1 = b[4 * i];
    r.y1 = b[4 * i + 1];
    r.x2 = b[4 * i + 2];
    r.y2 = b[4 * i + 3];
    return r;
}

__device__ __forceinline__ float box_area(const Box& b, float off) {
    return __fmul_rn(b.x2 - b.x1 + off, b.y2 - b.y1 + off);
}

__device__ __forceinline__ float box_iou(const Box& a, float area_a, const Box& b, float area_b,
                                         float off) {
    const float w = fmaxf(fminf(a.x2, b.x2) - fmaxf(a.x1, b.x1) + off, 0.0f);
    const float h = fmaxf(fminf(a.y2, b.y2) - fmaxf(a.y1, b.y1) + off, 0.0f);
    const float inter = __fmul_rn(w, h);
    const float uni = area_a + area_b - inter;
    return uni > 0.0f ? __fdiv_rn(inter, uni) : 0.0f;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(A3D_IOU_BLOCK, 4)
    iou_matrix_f32(const float* __restrict__ a, const float* __restrict__ b,
                   float* __restrict__ out, A3dBoxParams p) {
    const uint64_t total = p.n_a * p.n_b;
    for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t i = e / p.n_b, j = e % p.n_b;
        const Box ba = load_box(a, i), bb = load_box(b, j);
        out[e] = box_iou(ba, box_area(ba, p.offset), bb, box_area(bb, p.offset), p.offset);
    }
}

extern "C" __global__ void __launch_bounds__(A3D_NMS_TILE, 8)
    nms_mask_f32(const float* __restrict__ boxes, const float* __restrict__ unused,
                 unsigned long long* __restrict__ mask, A3dBoxParams p) {
    (void)unused;
    __shared__ Box tile[A3D_NMS_TILE];
    __shared__ float tile_area[A3D_NMS_TILE];
    const uint64_t n = p.n_a;
    const uint64_t words = (n + A3D_NMS_TILE - 1) / A3D_NMS_TILE;
    const uint64_t col = blockIdx.x;
    const uint64_t col0 = col * A3D_NMS_TILE;
    const uint64_t cols = n - col0 < A3D_NMS_TILE ? n - col0 : A3D_NMS_TILE;
    if (threadIdx.x < cols) {
        tile[threadIdx.x] = load_box(boxes, col0 + threadIdx.x);
        tile_area[threadIdx.x] = box_area(tile[threadIdx.x], p.offset);
    }
    __syncthreads();
    for (uint64_t row = blockIdx.y; row < words; row += gridDim.y) {
        const uint64_t i = row * A3D_NMS_TILE + threadIdx.x;
        if (i >= n) continue;
        unsigned long long bits = 0;
        if (col >= row) {
            const Box bi = load_box(boxes, i);
            const float ai = box_area(bi, p.offset);
            for (uint64_t t = 0; t < cols; ++t) {
                if (col0 + t <= i) continue;
                const float v = box_iou(bi, ai, tile[t], tile_area[t], p.offset);
                const bool hit = p.suppress_equal ? v >= p.threshold : v > p.threshold;
                bits |= (unsigned long long)hit << t;
            }
        }
        mask[i * words + col] = bits;
    }
}

// Every kernel name (the host emulation registers them from this list).
#define A3D_NMS_KERNELS(X) X(iou_matrix_f32) X(nms_mask_f32)
