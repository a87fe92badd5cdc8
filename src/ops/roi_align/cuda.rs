//! RoIAlign on NVIDIA GPUs (feature `cuda`): the kernels of kernels/roi_align.cu with the plans
//! of `launch.rs` (the ones the host emulation runs in CI), on a3d device tensors. RoIs are host
//! slices (hundreds of boxes), validated on the host and uploaded.

use super::{launch, RoiAlign, RoiDims};
use crate::cuda::launch::{check_bf16, prepare, Slices};
use crate::cuda::{driver_error, CudaDevice, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dRoiAlignParams;
use crate::ops::common::{check_dtype, check_shape};
use crate::{DType, Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: A3dRoiAlignParams is `#[repr(C)]` plain data (eight u64, an f32, a u32), laid out
// exactly as the C struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dRoiAlignParams {}

/// A device buffer of `name` holds `want` elements.
fn check_len(name: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        return Ok(());
    }
    Err(Error::Backend {
        backend: "cuda",
        message: format!("roi_align: `{name}` holds {got} elements, the shapes need {want}"),
    })
}

fn forward_typed<T: CudaElement>(
    op: &RoiAlign,
    features: &CudaTensor,
    rois: &[[f32; 5]],
    out: &mut CudaTensor,
) -> Result<()> {
    let dims = op.check(features, rois)?;
    let device = features.device().clone();
    launch_forward(
        &device,
        op,
        &dims,
        rois,
        &features.view::<T>()?,
        &mut out.view_mut::<T>()?,
    )
}

/// The forward launch on device views (a3d tensors above, candle's storage in
/// `candle_cuda`): `features` holds `dims`' N*C*H*W elements, `out` K*C*ph*pw, `rois` checked
/// against `dims` by [`RoiAlign::check`].
pub(crate) fn launch_forward<T: CudaElement>(
    device: &CudaDevice,
    op: &RoiAlign,
    dims: &RoiDims,
    rois: &[[f32; 5]],
    features: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    check_bf16(device, T::DTYPE)?;
    check_len(
        "features",
        dims.feature_shape().iter().product(),
        features.len(),
    )?;
    check_len("out", dims.output_shape().iter().product(), out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let stream = device.stream();
    let rd = stream
        .clone_htod(&launch::rois_flat(rois))
        .map_err(driver_error)?;
    let params = launch::params(op, dims);
    let (f, cfg) = prepare(
        device,
        &launch::launch("forward", dims, T::DTYPE, device.sm_count()),
    )?;
    let mut b = stream.launch_builder(&f);
    b.arg(features).arg(&rd).arg(out).arg(&params);
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
    launch_backward(
        &device,
        op,
        &dims,
        rois,
        &dy.view::<T>()?,
        &mut dx.view_mut::<T>()?,
    )
}

/// The backward launches on device views: `dx` (N*C*H*W elements, overwritten) from `dy`
/// (K*C*ph*pw); f32 accumulates into `dx` itself, f16 / bf16 into an f32 buffer cast at the end.
pub(crate) fn launch_backward<T: CudaElement>(
    device: &CudaDevice,
    op: &RoiAlign,
    dims: &RoiDims,
    rois: &[[f32; 5]],
    dy: &CudaView<'_, T>,
    dx: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    check_bf16(device, T::DTYPE)?;
    let n: usize = dims.feature_shape().iter().product();
    check_len("dy", dims.output_shape().iter().product(), dy.len())?;
    check_len("dx", n, dx.len())?;
    let stream = device.stream();
    let rd = stream
        .clone_htod(&launch::rois_flat(rois))
        .map_err(driver_error)?;
    let params = launch::params(op, dims);
    let bwd = launch::launch("backward", dims, T::DTYPE, device.sm_count());
    if T::DTYPE == DType::F32 {
        // The f32 kernel accumulates into dx itself (T is f32 here).
        stream.memset_zeros(dx).map_err(driver_error)?;
        if dy.is_empty() {
            return Ok(());
        }
        let (f, cfg) = prepare(device, &bwd)?;
        let mut b = stream.launch_builder(&f);
        b.arg(dy).arg(&rd).arg(dx).arg(&params);
        // SAFETY: (const T* dy, const float* rois, float* dx, params): dy holds K*C*ph*pw
        // elements, dx N*C*H*W floats (zeroed above), rois validated.
        unsafe { b.launch(cfg) }.map_err(driver_error)?;
        return Ok(());
    }
    let mut acc = stream.alloc_zeros::<f32>(n.max(1)).map_err(driver_error)?;
    if !dy.is_empty() {
        let (f, cfg) = prepare(device, &bwd)?;
        let mut b = stream.launch_builder(&f);
        b.arg(dy).arg(&rd).arg(&mut acc).arg(&params);
        // SAFETY: as above, into the zeroed f32 accumulator of N*C*H*W floats.
        unsafe { b.launch(cfg) }.map_err(driver_error)?;
    }
    let (f, cfg) = prepare(
        device,
        &launch::launch("cast", dims, T::DTYPE, device.sm_count()),
    )?;
    let mut b = stream.launch_builder(&f);
    b.arg(&acc).arg(&acc).arg(dx).arg(&params);
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
