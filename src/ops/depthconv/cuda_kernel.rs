//! The depth convolution on NVIDIA GPUs (feature `cuda`): the kernels of kernels/depthconv.cu
//! with the plans of `launch.rs` (the ones the host emulation runs in CI). [`forward_into`] and
//! [`backward_into`] take a3d device tensors; [`launch_mix`] and [`launch_grad_weight`] take
//! cudarc views.

use super::{check_backward, check_forward, launch, DepthConvDims};
use crate::cuda::launch::{check_bf16, launch_partials_then_reduce, launch_two_in_one_out, Slices};
use crate::cuda::{driver_error, CudaDevice, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dDepthConvParams;
use crate::ops::common::MAX_GRID_YZ;
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

// SAFETY: A3dDepthConvParams is `#[repr(C)]` plain data (six u64), laid out exactly as the C
// struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dDepthConvParams {}

fn resident(device: &CudaDevice) -> u64 {
    2 * device.sm_count().max(1) as u64
}

/// Queues forward (`grad_input = false`: `out = depth_conv(input, v)`) or grad-input
/// (`out = dx` of `input = dy`) on `device`'s stream. Views: `input` and `out` hold
/// `dims.input.len()` elements, `v` `K * C`. For callers holding device memory of their own.
pub fn launch_mix<T: CudaElement>(
    device: &CudaDevice,
    dims: &DepthConvDims,
    grad_input: bool,
    input: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    launch::check_taps(dims.taps)?;
    check_bf16(device, T::DTYPE)?;
    check_lengths(dims, &[input.len(), out.len()], v.len())?;
    if dims.input.is_empty() {
        return Ok(());
    }
    let l = launch::mix(dims, grad_input, T::DTYPE, resident(device), MAX_GRID_YZ);
    let params = launch::params(dims, 0);
    // SAFETY: the mixing kernels take (const T* in, const T* v, T* out, A3dDepthConvParams) and
    // index B*C*D*P elements of in / out and K*C of v (lengths checked above).
    unsafe { launch_two_in_one_out(device, &l, input, v, out, &params) }
}

/// Queues the two weight-gradient kernels: `dv[K, C]` from `x` and `dy` (`dims.input.len()`
/// elements each); a fixed-order reduction, bitwise reproducible run to run on a given GPU.
pub fn launch_grad_weight<T: CudaElement>(
    device: &CudaDevice,
    dims: &DepthConvDims,
    x: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
    dv: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    launch::check_taps(dims.taps)?;
    check_bf16(device, T::DTYPE)?;
    check_lengths(dims, &[x.len(), dy.len()], dv.len())?;
    let stream = device.stream();
    if dims.input.is_empty() {
        // Empty sums: dv is zero.
        stream.memset_zeros(dv).map_err(driver_error)?;
        return Ok(());
    }
    let plan = launch::grad_weight(
        dims,
        T::DTYPE,
        resident(device),
        device.sm_count(),
        MAX_GRID_YZ,
    );
    // SAFETY: the partial kernel takes (const T* x, const T* dy, float* partials, params) and
    // writes all C * partial_blocks * K partials (zeros for blocks without units); the reduce
    // kernel takes (const float*, T* dv, params); lengths checked above.
    unsafe {
        launch_partials_then_reduce(
            device,
            &plan.partial,
            &plan.reduce,
            plan.partials_len,
            x,
            dy,
            dv,
            &plan.params,
        )
    }
}

fn check_lengths(dims: &DepthConvDims, big: &[usize], small: usize) -> Result<()> {
    let want_small = dims.taps * dims.input.channels;
    if big.iter().all(|&n| n == dims.input.len()) && small == want_small {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cuda",
            message: format!(
                "depthconv: buffer lengths {big:?} / {small} do not match shape {:?} ({} / {want_small})",
                dims.input.input_shape(),
                dims.input.len()
            ),
        })
    }
}

fn mix_typed<T: CudaElement>(
    dims: &DepthConvDims,
    grad_input: bool,
    input: &CudaTensor,
    v: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let device = input.device().clone();
    launch_mix::<T>(
        &device,
        dims,
        grad_input,
        &input.view()?,
        &v.view()?,
        &mut out.view_mut()?,
    )
}

fn dv_typed<T: CudaElement>(
    dims: &DepthConvDims,
    x: &CudaTensor,
    dy: &CudaTensor,
    dv: &mut CudaTensor,
) -> Result<()> {
    let device = x.device().clone();
    launch_grad_weight::<T>(&device, dims, &x.view()?, &dy.view()?, &mut dv.view_mut()?)
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
        crate::ops::common::check_shape("dw", &dims.weight_shape(), dv.shape())?;
        x.check_same_device("dw", dv)?;
        with_dtype!(x.dtype(), T => dv_typed::<T>(&dims, x, dy, dv))?;
    }
    Ok(())
}
