// Launch parameters of the depth-convolution kernels (kernels/depthconv.cu).
//
// Source of truth for the by-value struct the kernels take; src/kernel_params.rs is generated
// from it by scripts/generate-bindings.sh and committed (CI checks it is current).
//
// Shapes: x, y, dx, dy are contiguous [B, C, D, P] (P = H*W); v and dv are [K, C] (tap t of
// channel c at t*C + c); partials are C * partial_blocks * K floats.
#ifndef A3D_DEPTHCONV_PARAMS_H
#define A3D_DEPTHCONV_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Threads per block of every depth-convolution kernel.
#define A3D_DEPTHCONV_BLOCK 256
/// Largest kernel size with CUDA kernels (K = 1, 3, 5, 7; the CPU takes any odd K).
#define A3D_DEPTHCONV_MAX_TAPS 7

typedef struct A3dDepthConvParams {
    /// B: batch size.
    uint64_t batch;
    /// C: channels.
    uint64_t channels;
    /// D: slices.
    uint64_t depth;
    /// P = H * W: pixels of one slice.
    uint64_t pixels;
    /// K: taps. For a kernel specialised for K taps (`_k<K>` suffix) this must equal K.
    uint64_t taps;
    /// grad-weight only: partial sums per channel (gridDim.x of the partial kernel).
    uint64_t partial_blocks;
} A3dDepthConvParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_DEPTHCONV_PARAMS_H
