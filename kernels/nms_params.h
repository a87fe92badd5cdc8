// Launch parameters of the box kernels (kernels/nms.cu): the IoU matrix and the NMS bitmask.
//
// Source of truth for the by-value struct the kernels take; src/kernel_params.rs is generated
// from it by scripts/generate-bindings.sh and committed (CI checks it is current).
//
// Boxes are [n, 4] floats (x1, y1, x2, y2), contiguous; widths are x2 - x1 + offset.
#ifndef A3D_NMS_PARAMS_H
#define A3D_NMS_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Boxes per NMS tile: one bit of a 64-bit mask word each; also the NMS block size.
#define A3D_NMS_TILE 64
/// Threads per block of the IoU-matrix kernel.
#define A3D_IOU_BLOCK 256

typedef struct A3dBoxParams {
    /// Boxes in `a` (NMS: the boxes).
    uint64_t n_a;
    /// Boxes in `b` (NMS: unused, equal to n_a).
    uint64_t n_b;
    /// 1 for the inclusive (+1) pixel convention, 0 for the continuous one.
    float offset;
    /// NMS: suppress when IoU > threshold (or >= with suppress_equal).
    float threshold;
    /// NMS: 1 to suppress at IoU == threshold too.
    uint32_t suppress_equal;
    uint32_t reserved;
} A3dBoxParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_NMS_PARAMS_H
