// Launch parameters of the A3D fusion kernels (kernels/fusion.cu).
//
// This header is the single source of truth for the by-value struct every fusion kernel takes.
// Its Rust mirror (src/cuda/bindings.rs) is generated from it with bindgen by
// scripts/generate-bindings.sh and committed; CI fails when the two differ.
//
// Shapes: x, y, dx, dy are contiguous [B, C, D, P] (P = H*W, NCDHW order); w and dw are
// contiguous [D, D, C] (index d*D*C + k*C + c: input slice d, output slice k, channel c).
// All sizes are 64-bit so that B*C*D*P may exceed 2^31.
#ifndef A3D_FUSION_PARAMS_H
#define A3D_FUSION_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Threads per block of every fusion kernel (the kernels are compiled with this
/// `__launch_bounds__`; launching with another block size is an error).
#define A3D_FUSION_BLOCK 256

typedef struct A3dFusionParams {
    /// B: batch size.
    uint64_t batch;
    /// C: channels.
    uint64_t channels;
    /// D: slices. For a kernel specialised for depth N (`_d<N>` suffix) this must equal N.
    uint64_t depth;
    /// P = H * W: pixels of one slice.
    uint64_t pixels;
    /// grad-weight only: number of partial sums per channel, i.e. gridDim.x of
    /// `fusion_grad_weight_partial_*`; the partials buffer holds
    /// `channels * partial_blocks * depth * depth` floats.
    uint64_t partial_blocks;
} A3dFusionParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_FUSION_PARAMS_H
