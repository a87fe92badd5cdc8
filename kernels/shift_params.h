// Launch parameters of the shift kernels (kernels/shift.cu): TSM and AlignShift.
//
// Source of truth for the by-value struct the kernels take; src/kernel_params.rs is generated
// from it by scripts/generate-bindings.sh and committed (CI checks it is current).
//
// Shapes: in and out are contiguous [B, C, D, P] (P = H*W); coef is [B, 3] floats per sample:
// (a, n, e) = own-slice coefficient, neighbour-slice coefficient, own-slice coefficient at the
// open end (TSM: 0, 1, 0).
#ifndef A3D_SHIFT_PARAMS_H
#define A3D_SHIFT_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Threads per block of every shift kernel.
#define A3D_SHIFT_BLOCK 256

typedef struct A3dShiftParams {
    /// B: batch size.
    uint64_t batch;
    /// C: channels.
    uint64_t channels;
    /// D: slices.
    uint64_t depth;
    /// P = H * W: pixels of one slice.
    uint64_t pixels;
    /// Channels [0, fold) read the next slice, [fold, 2 fold) the previous one (forward).
    uint64_t fold;
} A3dShiftParams;

#ifdef __cplusplus
}
#endif

#endif // A3D_SHIFT_PARAMS_H
