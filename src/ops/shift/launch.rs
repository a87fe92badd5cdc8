//! Launch plans of the shift kernels (kernels/shift.cu), run by the CUDA backend and the host
//! emulation alike. The grid follows the decomposition documented at the top of shift.cu.

use super::cpu_kernel::Direction;
use super::ShiftPlan;
use crate::kernel_params::{A3dShiftParams, A3D_SHIFT_BLOCK};
use crate::ops::common::{KernelLaunch, MAX_GRID_YZ};
use crate::DType;

/// Units (16-byte vectors) each thread takes per row at most, before more blocks are added.
const UNITS_PER_THREAD: u64 = 4;
/// Most blocks along a row.
const MAX_ROW_BLOCKS: u64 = 64;

pub(crate) fn params(plan: &ShiftPlan) -> A3dShiftParams {
    let d = &plan.dims;
    A3dShiftParams {
        batch: d.batch as u64,
        channels: d.channels as u64,
        depth: d.depth as u64,
        pixels: d.pixels as u64,
        fold: plan.fold as u64,
    }
}

/// The coefficients as the kernels take them: `[B, 3]` floats.
pub(crate) fn coefficients(plan: &ShiftPlan) -> Vec<f32> {
    plan.coef.iter().flatten().copied().collect()
}

/// `max_grid_y` caps the row blocks (`MAX_GRID_YZ` on a GPU; the emulation tests pass small
/// caps so that every block walks several rows).
pub(crate) fn shift(
    plan: &ShiftPlan,
    direction: Direction,
    dtype: DType,
    max_grid_y: u64,
) -> KernelLaunch {
    let d = &plan.dims;
    let v = (16 / dtype.size_in_bytes()) as u64;
    let units = (d.pixels as u64).div_ceil(v);
    let block = A3D_SHIFT_BLOCK as u64;
    let gx = units
        .div_ceil(block * UNITS_PER_THREAD)
        .clamp(1, MAX_ROW_BLOCKS);
    let rows = (d.batch * d.channels * d.depth) as u64;
    let gy = rows.clamp(1, max_grid_y.clamp(1, MAX_GRID_YZ));
    let op = match direction {
        Direction::Forward => "forward",
        Direction::Backward => "backward",
    };
    KernelLaunch {
        module: "shift",
        name: format!("shift_{op}_{dtype}"),
        grid: (gx as u32, gy as u32, 1),
        block: (A3D_SHIFT_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
