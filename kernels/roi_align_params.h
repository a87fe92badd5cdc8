// Launch parameters of the RoIAlign kernels (kernels/roi_align.cu).
//
// Source of truth for the by-value struct the kernels take; src/kernel_params.rs is generated
// from it by scripts/generate-bindings.sh and committed (CI checks it is current).
//
// features / dx: [N, C, H, W]; rois: [K, 5] floats (batch index, x1, y1, x2, y2), validated on
// the host (finite, batch index an integer in [0, N)); out / dy: [K, C, ph, pw].
#ifndef A3D_ROI_ALIGN_PARAMS_H
#define A3D_ROI_ALIGN_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Threads per block of every RoIAlign kernel.
#define A3D_ROI_ALIGN_BLOCK 256

typedef struct A3dRoiAlignParams {
    /// N: images.
    uint64_t batch;
    /// C: channels.
    uint64_t channels;
    /// H: feature rows.
    uint64_t height;
    /// W: feature columns.
    uint64_t width;
    /// K: RoIs.
    uint64_t rois;
    /// Output rows per RoI.
    uint64_t pooled_h;
    /// Output columns per RoI.
    uint64_t pooled_w;
    /// Samples per bin axis; 0 = ceil(roi size / pooled) per RoI.
    uint64_t sampling_ratio;
    /// Feature pixels per input pixel.
    float spatial_scale;
    /// 0: the reference (mmdetection 1.0) rules; 1: torchvision's aligned=True.
    uint32_t aligned;
} A3dRoiAlignParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_ROI_ALIGN_PARAMS_H
