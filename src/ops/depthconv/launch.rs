//! Launch plans of the depth-convolution kernels (kernels/depthconv.cu), run by the CUDA backend
//! and the host emulation alike; formulas from the decomposition at the top of depthconv.cu.

use super::DepthConvDims;
use crate::kernel_params::{A3dDepthConvParams, A3D_DEPTHCONV_BLOCK, A3D_DEPTHCONV_MAX_TAPS};
use crate::ops::common::{KernelLaunch, MAX_GRID_YZ};
use crate::{DType, Error, Result};

const BLOCK: (u32, u32, u32) = (A3D_DEPTHCONV_BLOCK, 1, 1);

/// Whether kernels exist for `taps` (K = 1, 3, 5, 7).
pub(crate) fn check_taps(taps: usize) -> Result<()> {
    if taps % 2 == 1 && taps <= A3D_DEPTHCONV_MAX_TAPS as usize {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "the CUDA depth-convolution kernels take K = 1, 3, 5 or 7 taps, got {taps} (the CPU \
             path takes any odd K)"
        )))
    }
}

pub(crate) fn params(dims: &DepthConvDims, partial_blocks: u64) -> A3dDepthConvParams {
    let i = &dims.input;
    A3dDepthConvParams {
        batch: i.batch as u64,
        channels: i.channels as u64,
        depth: i.depth as u64,
        pixels: i.pixels as u64,
        taps: dims.taps as u64,
        partial_blocks,
    }
}

/// Units (4 pixels of every slice of one plane pair) per channel.
fn units(dims: &DepthConvDims) -> u64 {
    dims.input.batch as u64 * (dims.input.pixels as u64).div_ceil(4)
}

fn channel_grid(dims: &DepthConvDims, max_grid_y: u64) -> u64 {
    (dims.input.channels as u64).clamp(1, max_grid_y.clamp(1, MAX_GRID_YZ))
}

/// Forward (`grad_input = false`) or grad-input: about four waves of blocks, never more blocks
/// per channel than it has 256-unit steps. `resident` is the device's resident blocks.
pub(crate) fn mix(
    dims: &DepthConvDims,
    grad_input: bool,
    dtype: DType,
    resident: u64,
    max_grid_y: u64,
) -> KernelLaunch {
    let gy = channel_grid(dims, max_grid_y);
    let steps = units(dims).div_ceil(A3D_DEPTHCONV_BLOCK as u64).max(1);
    let gx = (4 * resident).div_ceil(gy).clamp(1, steps);
    let op = if grad_input { "grad_input" } else { "forward" };
    KernelLaunch {
        module: "depthconv",
        name: format!("depthconv_{op}_{dtype}_k{}", dims.taps),
        grid: (gx as u32, gy as u32, 1),
        block: BLOCK,
        shared_mem_bytes: 0,
    }
}

/// The two grad-weight launches, their parameters and the partials buffer's length.
pub(crate) struct GradWeightPlan {
    pub partial: KernelLaunch,
    pub reduce: KernelLaunch,
    pub params: A3dDepthConvParams,
    pub partials_len: usize,
}

pub(crate) fn grad_weight(
    dims: &DepthConvDims,
    dtype: DType,
    resident: u64,
    sm_count: u32,
    max_grid_y: u64,
) -> GradWeightPlan {
    let gy = channel_grid(dims, max_grid_y);
    let steps = units(dims).div_ceil(A3D_DEPTHCONV_BLOCK as u64).max(1);
    let partial_blocks = (2 * resident).div_ceil(gy).clamp(1, steps);
    let entries = (dims.input.channels * dims.taps) as u64;
    let reduce_blocks = entries
        .div_ceil(A3D_DEPTHCONV_BLOCK as u64)
        .clamp(1, 4 * sm_count.max(1) as u64);
    GradWeightPlan {
        partial: KernelLaunch {
            module: "depthconv",
            name: format!("depthconv_grad_weight_partial_{dtype}_k{}", dims.taps),
            grid: (partial_blocks as u32, gy as u32, 1),
            block: BLOCK,
            shared_mem_bytes: 0,
        },
        reduce: KernelLaunch {
            module: "depthconv",
            name: format!("depthconv_grad_weight_reduce_{dtype}"),
            grid: (reduce_blocks as u32, 1, 1),
            block: BLOCK,
            shared_mem_bytes: 0,
        },
        params: params(dims, partial_blocks),
        partials_len: (entries * partial_blocks) as usize,
    }
}
