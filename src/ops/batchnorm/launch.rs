//! Launch plans of the batch-norm kernels (kernels/batchnorm.cu), run by the CUDA backend and the
//! host emulation alike.

use crate::kernel_params::{A3dBatchNormParams, A3D_BATCHNORM_BLOCK, A3D_BATCHNORM_MAX_DEPTH};
use crate::ops::common::{KernelLaunch, MAX_GRID_YZ};
use crate::{DType, Error, Result};

const BLOCK: (u32, u32, u32) = (A3D_BATCHNORM_BLOCK, 1, 1);

/// `[B, C, D, P]` of a tensor `[B, C, ...]`: rank 5 splits D and H * W; any other rank >= 2 is
/// one slice of all the remaining values.
pub(crate) fn dims(shape: &[usize]) -> (usize, usize, usize, usize) {
    match shape {
        [b, c, d, h, w] => (*b, *c, *d, h * w),
        [b, c, rest @ ..] => (*b, *c, 1, rest.iter().product()),
        _ => (0, 0, 0, 0),
    }
}

pub(crate) fn check_depth(depth: usize) -> Result<()> {
    if depth <= A3D_BATCHNORM_MAX_DEPTH as usize {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the fused BN-ReLU-fusion kernel takes D <= {A3D_BATCHNORM_MAX_DEPTH}, got {depth}"
        )))
    }
}

pub(crate) fn params(shape: &[usize], partial_blocks: u64, fused: bool) -> A3dBatchNormParams {
    let (b, c, d, p) = dims(shape);
    A3dBatchNormParams {
        batch: b as u64,
        channels: c as u64,
        depth: d as u64,
        pixels: p as u64,
        partial_blocks,
        fused: u32::from(fused),
        reserved: 0,
    }
}

/// The statistics pair: `(partial, reduce, partial_blocks)`. `resident` is the device's resident
/// blocks; `max_grid_y` caps the channel rows (small in emulation tests).
pub(crate) fn stats(
    shape: &[usize],
    dtype: DType,
    resident: u64,
    max_grid_y: u64,
) -> (KernelLaunch, KernelLaunch, u64) {
    let (b, c, d, p) = dims(shape);
    let n = (b * d * p) as u64;
    let gy = (c as u64).clamp(1, max_grid_y.clamp(1, MAX_GRID_YZ));
    let pb = (4 * resident)
        .div_ceil(gy)
        .clamp(1, n.div_ceil(A3D_BATCHNORM_BLOCK as u64).max(1));
    let partial = KernelLaunch {
        module: "batchnorm",
        name: format!("bn_stats_partial_{dtype}"),
        grid: (pb as u32, gy as u32, 1),
        block: BLOCK,
        shared_mem_bytes: 0,
    };
    let reduce = KernelLaunch {
        module: "batchnorm",
        name: "bn_stats_reduce".into(),
        grid: (
            (c as u64).div_ceil(A3D_BATCHNORM_BLOCK as u64).max(1) as u32,
            1,
            1,
        ),
        block: BLOCK,
        shared_mem_bytes: 0,
    };
    (partial, reduce, pb)
}

pub(crate) fn forward(shape: &[usize], dtype: DType, resident: u64) -> KernelLaunch {
    let (b, c, _, p) = dims(shape);
    let cols = (b * c * p) as u64;
    let blocks = cols
        .div_ceil(A3D_BATCHNORM_BLOCK as u64)
        .clamp(1, 4 * resident.max(1));
    KernelLaunch {
        module: "batchnorm",
        name: format!("bn_relu_fusion_forward_{dtype}"),
        grid: (blocks as u32, 1, 1),
        block: BLOCK,
        shared_mem_bytes: 0,
    }
}

/// The affine map as the kernel takes it: `[C][2]` (scale, shift).
pub(crate) fn affine_flat(a: &super::Affine) -> Vec<f32> {
    a.scale
        .iter()
        .zip(&a.shift)
        .flat_map(|(s, t)| [*s, *t])
        .collect()
}

/// `(mean, var)` from the reduce kernel's `[C][2]`.
pub(crate) fn stats_from(flat: &[f32], count: usize) -> super::ChannelStats {
    super::ChannelStats {
        mean: flat.iter().step_by(2).copied().collect(),
        var: flat.iter().skip(1).step_by(2).copied().collect(),
        count,
    }
}
