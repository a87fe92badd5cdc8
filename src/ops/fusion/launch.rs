//! Launch plans of the fusion kernels (kernels/fusion.cu): kernel names, grids and parameters.
//! The CUDA backend and the host emulation run the same plans, so CI exercises the grids a GPU
//! gets. The formulas follow the work decomposition documented at the top of fusion.cu.

use super::FusionDims;
use crate::kernel_params::{A3dFusionParams, A3D_FUSION_BLOCK};
use crate::ops::common::KernelLaunch;
use crate::DType;

/// Threads per block of every fusion kernel.
pub(crate) const BLOCK: (u32, u32, u32) = (A3D_FUSION_BLOCK, 1, 1);
const BLOCK_THREADS: u64 = A3D_FUSION_BLOCK as u64;
/// Largest depth with specialised (`_d<N>`) kernels.
pub(crate) const MAX_SPECIALISED_DEPTH: usize = 16;

/// One fusion kernel launch (module `fusion`, 256-thread blocks, no dynamic shared memory).
pub(crate) type Launch = KernelLaunch;

fn fusion_launch(name: String, grid: (u32, u32, u32)) -> Launch {
    KernelLaunch {
        module: "fusion",
        name,
        grid,
        block: BLOCK,
        shared_mem_bytes: 0,
    }
}

/// The launches of a grad-weight pass: partial sums, then their fixed-order reduction.
#[derive(Debug, Clone)]
pub(crate) struct GradWeightPlan {
    pub partial: Launch,
    pub reduce: Launch,
    pub params: A3dFusionParams,
    /// Floats in the partials buffer.
    pub partials_len: usize,
}

/// Elements per 16-byte vector: a work unit of the kernels.
fn vector_width(dtype: DType) -> u64 {
    16 / dtype.size_in_bytes() as u64
}

/// Units of one channel: `B * ceil(P / V)`.
fn units(dims: &FusionDims, dtype: DType) -> u64 {
    dims.batch as u64 * (dims.pixels as u64).div_ceil(vector_width(dtype))
}

/// `fusion_<op>_<dtype>_d<N>` for specialised depths, `..._dn` beyond.
pub(crate) fn kernel_name(op: &str, dtype: DType, depth: usize) -> String {
    if (1..=MAX_SPECIALISED_DEPTH).contains(&depth) {
        format!("fusion_{op}_{dtype}_d{depth}")
    } else {
        format!("fusion_{op}_{dtype}_dn")
    }
}

/// Blocks the device keeps resident at once: the kernels are compiled with
/// `__launch_bounds__(256, 2)`, so at least two per SM (up to four for the lighter kernels).
pub(crate) fn resident_blocks(sm_count: u32, _compute_major: i32) -> u64 {
    sm_count.max(1) as u64 * 2
}

pub(crate) fn params(dims: &FusionDims, partial_blocks: u64) -> A3dFusionParams {
    A3dFusionParams {
        batch: dims.batch as u64,
        channels: dims.channels as u64,
        depth: dims.depth as u64,
        pixels: dims.pixels as u64,
        partial_blocks,
    }
}

/// Most blocks along y (one channel each, looping over channels beyond): the CUDA limit.
pub(crate) const MAX_GRID_Y: u64 = 65535;

fn channel_grid(dims: &FusionDims, max_grid_y: u64) -> u64 {
    (dims.channels as u64).clamp(1, max_grid_y.clamp(1, MAX_GRID_Y))
}

/// Units one block covers per grid-stride step of forward / grad-input: 256 threads with one
/// lane per unit for f32 and two for 16-bit types, each handling R = max(1, 4L/D) units.
fn units_per_block_step(dims: &FusionDims, dtype: DType) -> u64 {
    let lanes = if dtype == DType::F32 { 1 } else { 2 };
    let per_thread = (4 * lanes / dims.depth.max(1) as u64).max(1);
    BLOCK_THREADS / lanes * per_thread
}

/// Forward (`op = "forward"`) or grad-input (`op = "grad_input"`): about four waves of blocks,
/// never more blocks per channel than it has block-sized steps of work.
/// `max_grid_y` caps the channel blocks (`MAX_GRID_Y` on a GPU; the emulation tests pass
/// smaller caps so blocks loop over several channels).
pub(crate) fn elementwise(
    op: &str,
    dims: &FusionDims,
    dtype: DType,
    resident: u64,
    max_grid_y: u64,
) -> Launch {
    let gy = channel_grid(dims, max_grid_y);
    let chunks = units(dims, dtype)
        .div_ceil(units_per_block_step(dims, dtype))
        .max(1);
    let gx = (4 * resident).div_ceil(gy).clamp(1, chunks);
    fusion_launch(
        kernel_name(op, dtype, dims.depth),
        (gx as u32, gy as u32, 1),
    )
}

/// Units in one shared-memory tile of grad-weight: `DwCfg<D, V>::TU` of fusion.cu (more
/// slices, smaller tiles). The emulation tests check this table against the kernels' own.
fn weight_tile_units(depth: usize, dtype: DType) -> u64 {
    match (dtype == DType::F32, depth) {
        (true, 0..=4) => 256,
        (true, 5..=8) => 128,
        (true, 9..=16) => 64,
        (false, 0..=2) => 256,
        (false, 3..=4) => 128,
        (false, 5..=8) => 64,
        (false, 9..=16) => 32,
        // General depth: no fixed tile; keep several units per block.
        _ => 8,
    }
}

/// Grad-weight: partial blocks per channel from the device size, then the reduction.
pub(crate) fn grad_weight(
    dims: &FusionDims,
    dtype: DType,
    resident: u64,
    sm_count: u32,
    max_grid_y: u64,
) -> GradWeightPlan {
    let gy = channel_grid(dims, max_grid_y);
    let tiles = units(dims, dtype)
        .div_ceil(weight_tile_units(dims.depth, dtype))
        .max(1);
    let partial_blocks = (2 * resident).div_ceil(gy).clamp(1, tiles);
    let dd = (dims.depth * dims.depth) as u64;
    let entries = dims.channels as u64 * dd;
    let reduce_blocks = entries
        .div_ceil(BLOCK_THREADS)
        .clamp(1, 4 * sm_count.max(1) as u64);
    GradWeightPlan {
        partial: fusion_launch(
            kernel_name("grad_weight_partial", dtype, dims.depth),
            (partial_blocks as u32, gy as u32, 1),
        ),
        reduce: fusion_launch(
            format!("fusion_grad_weight_reduce_{dtype}"),
            (reduce_blocks as u32, 1, 1),
        ),
        params: params(dims, partial_blocks),
        partials_len: (entries * partial_blocks) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "emulation")]
    #[test]
    fn weight_tiles_match_the_kernels() {
        unsafe extern "C" {
            fn a3d_fusion_dw_tile_units(
                depth: std::ffi::c_int,
                vector_width: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        for dtype in DType::ALL {
            for depth in 1..=MAX_SPECIALISED_DEPTH {
                // SAFETY: a pure function of two integers, compiled from kernels/fusion.cu into
                // the emulation library.
                let kernel =
                    unsafe { a3d_fusion_dw_tile_units(depth as i32, vector_width(dtype) as i32) };
                assert_eq!(
                    weight_tile_units(depth, dtype),
                    kernel as u64,
                    "{dtype} D={depth}: launch.rs and fusion.cu's DwCfg disagree"
                );
            }
        }
    }

    fn dims(shape: [usize; 5]) -> FusionDims {
        FusionDims::from_input_shape(&shape).unwrap()
    }

    #[test]
    fn names_follow_the_kernel_table() {
        assert_eq!(
            kernel_name("forward", DType::F32, 7),
            "fusion_forward_f32_d7"
        );
        assert_eq!(
            kernel_name("forward", DType::BF16, 16),
            "fusion_forward_bf16_d16"
        );
        assert_eq!(
            kernel_name("grad_input", DType::F16, 17),
            "fusion_grad_input_f16_dn"
        );
    }

    #[test]
    fn grids_stay_within_limits_and_work() {
        let h100 = resident_blocks(132, 9);
        let big = dims([2, 256, 7, 128, 128]);
        let l = elementwise("forward", &big, DType::F32, h100, MAX_GRID_Y);
        assert_eq!(l.grid.1, 256);
        assert!(l.grid.0 >= 1 && l.grid.0 as u64 * 256 >= 4 * h100);
        assert_eq!(h100, 264);
        let tiny = dims([1, 70000, 3, 1, 1]);
        let l = elementwise("forward", &tiny, DType::F16, h100, MAX_GRID_Y);
        assert_eq!(l.grid, (1, 65535, 1));
        let g = grad_weight(&big, DType::BF16, h100, 132, MAX_GRID_Y);
        assert!(g.params.partial_blocks >= 1);
        assert_eq!(g.partials_len, 256 * 49 * g.params.partial_blocks as usize);
    }
}
