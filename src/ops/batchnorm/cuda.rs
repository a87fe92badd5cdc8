//! Batch-norm statistics and the fused BN-ReLU(-fusion) forward on NVIDIA GPUs (feature `cuda`):
//! the kernels of kernels/batchnorm.cu with the plans of `launch.rs` (the ones the host emulation
//! runs in CI), on a3d device tensors.

use super::{launch, planes, Affine, ChannelStats};
use crate::cuda::launch::{check_bf16, prepare, Slices};
use crate::cuda::{driver_error, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dBatchNormParams;
use crate::ops::common::{check_dtype, check_shape, MAX_GRID_YZ};
use crate::Result;
use cudarc::driver::{DeviceRepr, PushKernelArg};

// SAFETY: A3dBatchNormParams is `#[repr(C)]` plain data (five u64, two u32), laid out exactly as
// the C struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dBatchNormParams {}

fn stats_typed<T: CudaElement>(x: &CudaTensor) -> Result<ChannelStats> {
    let (b, c, rest) = planes("x", x.shape())?;
    if x.is_empty() {
        return Ok(ChannelStats {
            mean: vec![0.0; c],
            var: vec![0.0; c],
            count: b * rest,
        });
    }
    let device = x.device().clone();
    check_bf16(&device, T::DTYPE)?;
    let resident = 2 * device.sm_count().max(1) as u64;
    let (partial, reduce, pb) = launch::stats(x.shape(), T::DTYPE, resident, MAX_GRID_YZ);
    let stream = device.stream();
    // SAFETY: the partial kernel writes every one of the C * pb * 2 doubles before the reduce
    // kernel, queued after it on the same stream, reads them.
    let mut partials = unsafe { stream.alloc::<f64>(c * pb as usize * 2) }.map_err(driver_error)?;
    let mut stats = stream.alloc_zeros::<f32>(2 * c).map_err(driver_error)?;
    let params = launch::params(x.shape(), pb, false);
    let xv = x.view::<T>()?;
    let (f, cfg) = prepare(&device, &partial)?;
    let mut l = stream.launch_builder(&f);
    l.arg(&xv).arg(&mut partials).arg(&params);
    // SAFETY: (const T* x, double* partials, params): x holds B*C*D*P elements.
    unsafe { l.launch(cfg) }.map_err(driver_error)?;
    let (f, cfg) = prepare(&device, &reduce)?;
    let mut l = stream.launch_builder(&f);
    l.arg(&partials).arg(&mut stats).arg(&params);
    // SAFETY: (const double* partials, float* stats, params): C * pb * 2 doubles in, 2C out.
    unsafe { l.launch(cfg) }.map_err(driver_error)?;
    let host = stream.clone_dtoh(&stats).map_err(driver_error)?;
    Ok(launch::stats_from(&host, b * rest))
}

/// Mean and biased variance per channel of a device tensor `[B, C, ...]` (deterministic: fixed
/// blocks, fixed reduction order).
pub fn channel_stats(x: &CudaTensor) -> Result<ChannelStats> {
    with_dtype!(x.dtype(), T => stats_typed::<T>(x))
}

fn forward_typed<T: CudaElement>(
    x: &CudaTensor,
    affine: &Affine,
    w: Option<&CudaTensor>,
    y: &mut CudaTensor,
) -> Result<()> {
    let device = x.device().clone();
    check_bf16(&device, T::DTYPE)?;
    if x.is_empty() {
        return Ok(());
    }
    let stream = device.stream();
    let ad = stream
        .clone_htod(&launch::affine_flat(affine))
        .map_err(driver_error)?;
    let params = launch::params(x.shape(), 0, w.is_some());
    let resident = 2 * device.sm_count().max(1) as u64;
    let (f, cfg) = prepare(&device, &launch::forward(x.shape(), T::DTYPE, resident))?;
    let xv = x.view::<T>()?;
    let mut yv = y.view_mut::<T>()?;
    let mut l = stream.launch_builder(&f);
    l.arg(&xv);
    // Without fusion the kernel never reads w: x stands in for it.
    let wv = match w {
        Some(w) => w.view::<T>()?,
        None => x.view::<T>()?,
    };
    l.arg(&wv).arg(&ad).arg(&mut yv).arg(&params);
    // SAFETY: (const T* x, const T* w, const float* affine, T* y, params): x and y hold B*C*D*P
    // elements, w D*D*C (checked) when fused, affine 2C floats.
    unsafe { l.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

/// `y = fusion(max(x * scale + shift, 0), w)` (the BN-ReLU alone without `w`) in one kernel:
/// `x`, `y` `[B, C, D, H, W]` (D <= 16), `w` `[D, D, C]`, one dtype, one device.
pub fn bn_relu_fusion_forward_into(
    x: &CudaTensor,
    affine: &Affine,
    w: Option<&CudaTensor>,
    y: &mut CudaTensor,
) -> Result<()> {
    let dims = crate::fusion::FusionDims::from_input_shape(x.shape())?;
    affine.check(dims.channels)?;
    if let Some(w) = w {
        dims.check_weight_shape("w", w.shape())?;
        check_dtype("w", x.dtype(), w.dtype())?;
        x.check_same_device("w", w)?;
    }
    launch::check_depth(dims.depth)?;
    check_shape("y", x.shape(), y.shape())?;
    check_dtype("y", x.dtype(), y.dtype())?;
    x.check_same_device("y", y)?;
    with_dtype!(x.dtype(), T => forward_typed::<T>(x, affine, w, y))
}
