//! Launch plans of the box kernels (kernels/nms.cu), run by the CUDA backend and the host
//! emulation alike.

use crate::kernel_params::{A3dBoxParams, A3D_IOU_BLOCK, A3D_NMS_TILE};
use crate::ops::common::{KernelLaunch, MAX_GRID_YZ};

/// Boxes as the kernels take them: `[n, 4]` floats.
pub(crate) fn boxes_flat(boxes: &[[f32; 4]]) -> Vec<f32> {
    boxes.iter().flatten().copied().collect()
}

/// Most blocks of the IoU-matrix grid (a grid-stride loop covers the rest).
const MAX_IOU_BLOCKS: u64 = 4096;

pub(crate) fn params(
    n_a: usize,
    n_b: usize,
    offset: f32,
    threshold: f32,
    equal: bool,
) -> A3dBoxParams {
    A3dBoxParams {
        n_a: n_a as u64,
        n_b: n_b as u64,
        offset,
        threshold,
        suppress_equal: u32::from(equal),
        reserved: 0,
    }
}

pub(crate) fn iou_matrix(n_a: usize, n_b: usize) -> KernelLaunch {
    let total = (n_a as u64) * (n_b as u64);
    let blocks = total
        .div_ceil(A3D_IOU_BLOCK as u64)
        .clamp(1, MAX_IOU_BLOCKS);
    KernelLaunch {
        module: "nms",
        name: "iou_matrix_f32".into(),
        grid: (blocks as u32, 1, 1),
        block: (A3D_IOU_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Mask words per box: one bit per box of the sorted list.
pub(crate) fn mask_words(n: usize) -> usize {
    n.div_ceil(A3D_NMS_TILE as usize)
}

/// `max_grid_y` caps the row tiles (65535 on a GPU; the emulation tests pass small caps so the
/// row loop wraps).
pub(crate) fn nms_mask(n: usize, max_grid_y: u64) -> KernelLaunch {
    let words = mask_words(n).max(1) as u64;
    KernelLaunch {
        module: "nms",
        name: "nms_mask_f32".into(),
        grid: (
            words as u32,
            words.clamp(1, max_grid_y.clamp(1, MAX_GRID_YZ)) as u32,
            1,
        ),
        block: (A3D_NMS_TILE, 1, 1),
        shared_mem_bytes: 0,
    }
}
