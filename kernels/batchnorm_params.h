// Launch parameters of the batch-norm kernels (kernels/batchnorm.cu): channel statistics and
// the fused BN-ReLU(-fusion) forward.
//
// Source of truth for the by-value struct the kernels take; src/kernel_params.rs is generated
// from it by scripts/generate-bindings.sh and committed (CI checks it is current).
//
// x / y: contiguous [B, C, D, P] (P = H * W); w: the fusion weights [D, D, C]; affine: [C][2]
// floats (scale, shift); partials: [C][partial_blocks][2] doubles; stats: [C][2] floats (mean,
// biased variance).
#ifndef A3D_BATCHNORM_PARAMS_H
#define A3D_BATCHNORM_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Threads per block of every batch-norm kernel.
#define A3D_BATCHNORM_BLOCK 256
/// Largest D the fused BN-ReLU-fusion kernel takes (its slices sit in registers).
#define A3D_BATCHNORM_MAX_DEPTH 16

typedef struct A3dBatchNormParams {
    /// B: batch size.
    uint64_t batch;
    /// C: channels.
    uint64_t channels;
    /// D: slices.
    uint64_t depth;
    /// P = H * W: pixels of one slice.
    uint64_t pixels;
    /// Statistics: blocks per channel, each summing a fixed subset of the channel's values.
    uint64_t partial_blocks;
    /// Forward: 1 to mix the slices with w after the BN-ReLU, 0 for the BN-ReLU alone.
    uint32_t fused;
    uint32_t reserved;
} A3dBatchNormParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_BATCHNORM_PARAMS_H
