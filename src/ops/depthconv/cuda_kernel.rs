//! The depth convolution on NVIDIA GPUs (feature `cuda`): the kernels of kernels/depthconv.cu
//! with the plans of `launch.rs` (the ones the host emulation runs in CI).

use super::{check_backward, check_forward, launch, DepthConvDims};
use crate::cuda::launch::{check_bf16, prepare, Slices};
use crate::cuda::{driver_error, CudaDevice, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dDepthConvParams;
use crate::ops::common::MAX_GRID_YZ;
use crate::Result;
use cudarc::driver::{DeviceRepr, PushKernelArg};

// SAFETY: A3dDepthConvParams is `#[repr(C)]` plain data (six u64), laid out exactly as the C
// struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dDepthConvParams {}

fn resident(device: &CudaDevice) -> u64 {
    2 * device.sm_count().max(1) as u64
}

fn mix_typed<T: CudaElement>(
    dims: &DepthConvDims,
    grad_input: bool,
    input: &CudaTensor,
    v: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let device = input.device().clone();
    check_bf16(&device, T::DTYPE)?;
    let l = launch::mix(dims, grad_input, T::DTYPE, resident(&device), MAX_GRID_YZ);
    let (f, cfg) = prepare(&device, &l)?;
    let params = launch::params(dims, 0);
    let (iv, vv, mut ov) = (input.view::<T>()?, v.view::<T>()?, out.view_mut::<T>()?);
    let mut b = device.stream().launch_builder(&f);
    b.arg(&iv).arg(&vv).arg(&mut ov).arg(&params);
    // SAFETY: (const T* in, const T* v, T* out, params by value); in and out hold B*C*D*P
    // elements and v K*C (validated shapes), all on this device's stream.
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

fn dv_typed<T: CudaElement>(
    dims: &DepthConvDims,
    x: &CudaTensor,
    dy: &CudaTensor,
    dv: &mut CudaTensor,
) -> Result<()> {
    let device = x.device().clone();
    check_bf16(&device, T::DTYPE)?;
    let plan = launch::grad_weight(
        dims,
        T::DTYPE,
        resident(&device),
        device.sm_count(),
        MAX_GRID_YZ,
    );
    let stream = device.stream();
    // SAFETY: every partial is written by the partial kernel (each block writes all K entries
    // of its slot, zeros when it had no units) before the reduce kernel, queued after it on the
    // same stream, reads any.
    let mut partials = unsafe { stream.alloc::<f32>(plan.partials_len) }.map_err(driver_error)?;
    let (f, cfg) = prepare(&device, &plan.partial)?;
    let (xv, gv) = (x.view::<T>()?, dy.view::<T>()?);
    let mut b = stream.launch_builder(&f);
    b.arg(&xv).arg(&gv).arg(&mut partials).arg(&plan.params);
    // SAFETY: (const T* x, const T* dy, float* partials, params); partials holds
    // C * partial_blocks * K floats, what the plan's grid writes.
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    let (f, cfg) = prepare(&device, &plan.reduce)?;
    let mut dvv = dv.view_mut::<T>()?;
    let mut b = stream.launch_builder(&f);
    b.arg(&partials).arg(&mut dvv).arg(&plan.params);
    // SAFETY: (const float* partials, T* dv, params); dv holds K*C elements.
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

/// `y = depth_conv(x, v)` into a device tensor of `x`'s shape and dtype.
pub fn forward_into(x: &CudaTensor, v: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    let dims = check_forward(x, v)?;
    launch::check_taps(dims.taps)?;
    dims.input.check_input_like("y", y.shape())?;
    x.check_same_device("v", v)?;
    x.check_same_device("y", y)?;
    if dims.input.is_empty() {
        return Ok(());
    }
    with_dtype!(x.dtype(), T => mix_typed::<T>(&dims, false, x, v, y))
}

/// The requested gradients into device tensors (`dx` of `x`'s shape, `dv` `[K, C]`), each only
/// when given.
pub fn backward_into(
    x: &CudaTensor,
    v: &CudaTensor,
    dy: &CudaTensor,
    dx: Option<&mut CudaTensor>,
    dv: Option<&mut CudaTensor>,
) -> Result<()> {
    let dims = check_backward(x, v, dy)?;
    launch::check_taps(dims.taps)?;
    x.check_same_device("v", v)?;
    x.check_same_device("dy", dy)?;
    if let Some(dx) = dx {
        dims.input.check_input_like("dx", dx.shape())?;
        x.check_same_device("dx", dx)?;
        if !dims.input.is_empty() {
            with_dtype!(x.dtype(), T => mix_typed::<T>(&dims, true, dy, v, dx))?;
        }
    }
    if let Some(dv) = dv {
        x.check_same_device("dw", dv)?;
        if dims.input.is_empty() {
            let host = crate::Tensor::zeros(&dims.weight_shape(), x.dtype())?;
            *dv = CudaTensor::upload(&host, x.device())?;
        } else {
            with_dtype!(x.dtype(), T => dv_typed::<T>(&dims, x, dy, dv))?;
        }
    }
    Ok(())
}
