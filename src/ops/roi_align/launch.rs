//! Launch plans of the RoIAlign kernels (kernels/roi_align.cu), run by the CUDA backend and the
//! host emulation alike.

use super::{RoiAlign, RoiAlignMode, RoiDims};
use crate::kernel_params::{A3dRoiAlignParams, A3D_ROI_ALIGN_BLOCK};
use crate::ops::common::KernelLaunch;
use crate::DType;

/// Blocks per SM the grid-stride grids are sized for.
const BLOCKS_PER_SM: u64 = 8;

pub(crate) fn params(op: &RoiAlign, dims: &RoiDims) -> A3dRoiAlignParams {
    A3dRoiAlignParams {
        batch: dims.batch as u64,
        channels: dims.channels as u64,
        height: dims.height as u64,
        width: dims.width as u64,
        rois: dims.rois as u64,
        pooled_h: dims.pooled_h as u64,
        pooled_w: dims.pooled_w as u64,
        sampling_ratio: op.sampling_ratio as u64,
        spatial_scale: op.spatial_scale,
        aligned: u32::from(op.mode == RoiAlignMode::Aligned),
    }
}

/// The RoI coordinates as the kernels take them: `[K, 5]` floats.
pub(crate) fn rois_flat(rois: &[[f32; 5]]) -> Vec<f32> {
    rois.iter().flatten().copied().collect()
}

fn grid(elements: usize, sm_count: u32) -> (u32, u32, u32) {
    let blocks = (elements as u64).div_ceil(A3D_ROI_ALIGN_BLOCK as u64);
    let cap = sm_count.max(1) as u64 * BLOCKS_PER_SM;
    (blocks.clamp(1, cap) as u32, 1, 1)
}

/// `pass`: "forward" (over the output), "backward" (over dy) or "cast" (over the features).
pub(crate) fn launch(pass: &str, dims: &RoiDims, dtype: DType, sm_count: u32) -> KernelLaunch {
    let elements = match pass {
        "cast" => dims.feature_shape().iter().product(),
        _ => dims.output_shape().iter().product(),
    };
    KernelLaunch {
        module: "roi_align",
        name: format!("roi_align_{pass}_{dtype}"),
        grid: grid(elements, sm_count),
        block: (A3D_ROI_ALIGN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
