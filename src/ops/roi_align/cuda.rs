//! RoIAlign on NVIDIA GPUs (feature `cuda`): the kernels of kernels/roi_align.cu with the plans
//! of `launch.rs` (the ones the host emulation runs in CI), on a3d device tensors. RoIs are host
//! slices (hundreds of boxes), validated on the host and uploaded.

use super::{launch, RoiAlign};
use crate::cuda::launch::{check_bf16, prepare, Slices};
use crate::cuda::{driver_error, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dRoiAlignParams;
use crate::ops::common::{check_dtype, check_shape};
use crate::{DType, Result};
use cudarc::driver::{DeviceRepr, PushKernelArg};

// SAFETY: A3dRoiAlignParams is `#[repr(C)]` plain data (eight u64, an f32, a u32), laid out
// exactly as the C struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dRoiAlignParams {}

fn forward_typed<T: CudaElement>(
    op: &RoiAlign,
    features: &CudaTensor,
    rois: &[[f32; 5]],
    out: &mut CudaTensor,
) -> Result<()> {
    let dims = op.check(features, rois)?;
    let device = features.device().clone();
    check_bf16(&device, T::DTYPE)?;
    if out.is_empty() {
        return Ok(());
    }
    let stream = device.stream();
    let rd = stream
        .clone_htod(&launch::rois_flat(rois))
        .map_err(driver_error)?;
    let params = launch::params(op, &dims);
    let (f, cfg) = prepare(
        &device,
        &launch::launch("forward", &dims, T::DTYPE, device.sm_count()),
    )?;
    let (fv, mut ov) = (features.view::<T>()?, out.view_mut::<T>()?);
    let mut b = stream.launch_builder(&f);
    b.arg(&fv).arg(&rd).arg(&mut ov).arg(&params);
    // SAFETY: (const T* features, const float* rois, T* out, params): features holds N*C*H*W
    // elements, rois 5*K floats with batch indices in [0, N) (checked), out K*C*ph*pw (checked).
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

/// Pools every RoI of `features` (`[N, C, H, W]` on a GPU) into `out` (`[K, C, ph, pw]`, the same
/// dtype and device).
pub fn forward_into(
    op: &RoiAlign,
    features: &CudaTensor,
    rois: &[[f32; 5]],
    out: &mut CudaTensor,
) -> Result<()> {
    let dims = op.check(features, rois)?;
    check_shape("out", &dims.output_shape(), out.shape())?;
    check_dtype("out", features.dtype(), out.dtype())?;
    features.check_same_device("out", out)?;
    with_dtype!(features.dtype(), T => forward_typed::<T>(op, features, rois, out))
}

fn backward_typed<T: CudaElement>(
    op: &RoiAlign,
    rois: &[[f32; 5]],
    dy: &CudaTensor,
    dx: &mut CudaTensor,
) -> Result<()> {
    let dims = op.check(&*dx, rois)?;
    let device = dy.device().clone();
    check_bf16(&device, T::DTYPE)?;
    let stream = device.stream();
    let rd = stream
        .clone_htod(&launch::rois_flat(rois))
        .map_err(driver_error)?;
    let params = launch::params(op, &dims);
    let n: usize = dims.feature_shape().iter().product();
    let bwd = launch::launch("backward", &dims, T::DTYPE, device.sm_count());
    let dyv = dy.view::<T>()?;
    if T::DTYPE == DType::F32 {
        let mut dxv = dx.view_mut::<f32>()?;
        stream.memset_zeros(&mut dxv).map_err(driver_error)?;
        if dy.is_empty() {
            return Ok(());
        }
        let (f, cfg) = prepare(&device, &bwd)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dyv).arg(&rd).arg(&mut dxv).arg(&params);
        // SAFETY: (const T* dy, const float* rois, float* dx, params): dy holds K*C*ph*pw
        // elements, dx N*C*H*W floats (zeroed above), rois validated.
        unsafe { b.launch(cfg) }.map_err(driver_error)?;
        return Ok(());
    }
    let mut acc = stream.alloc_zeros::<f32>(n.max(1)).map_err(driver_error)?;
    if !dy.is_empty() {
        let (f, cfg) = prepare(&device, &bwd)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dyv).arg(&rd).arg(&mut acc).arg(&params);
        // SAFETY: as above, into the zeroed f32 accumulator of N*C*H*W floats.
        unsafe { b.launch(cfg) }.map_err(driver_error)?;
    }
    let (f, cfg) = prepare(
        &device,
        &launch::launch("cast", &dims, T::DTYPE, device.sm_count()),
    )?;
    let mut dxv = dx.view_mut::<T>()?;
    let mut b = stream.launch_builder(&f);
    b.arg(&acc).arg(&acc).arg(&mut dxv).arg(&params);
    // SAFETY: (const float* src, const float* unused, T* dst, params) over N*C*H*W elements of
    // the accumulator and dx.
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

/// The gradient to the features into `dx` (`[N, C, H, W]`, overwritten) from `dy`
/// (`[K, C, ph, pw]`), on `dy`'s GPU. Accumulates with atomics (see the module documentation).
pub fn backward_into(
    op: &RoiAlign,
    rois: &[[f32; 5]],
    dy: &CudaTensor,
    dx: &mut CudaTensor,
) -> Result<()> {
    let dims = op.check(&*dx, rois)?;
    check_shape("dy", &dims.output_shape(), dy.shape())?;
    check_dtype("dx", dy.dtype(), dx.dtype())?;
    dy.check_same_device("dx", dx)?;
    with_dtype!(dy.dtype(), T => backward_typed::<T>(op, rois, dy, dx))
}
