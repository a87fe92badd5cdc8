//! A3D fusion on NVIDIA GPUs (feature `cuda`): the kernels of kernels/fusion.cu, launched on the
//! device's stream with the plans of `launch.rs` (the same plans the host emulation runs in CI).
//!
//! The typed launchers take cudarc views, so callers holding device memory of their own (e.g.
//! candle storage) can run the kernels on it without copies.

use super::launch;
use super::{check_backward, check_forward, check_outputs, FusionDims, Grads};
use crate::cuda::launch::{check_bf16, Slices};
use crate::cuda::launch::{launch_partials_then_reduce, launch_two_in_one_out};
use crate::cuda::{driver_error, CudaDevice, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dFusionParams;
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

// SAFETY: A3dFusionParams is `#[repr(C)]` plain data (five u64), laid out exactly as the C
// struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dFusionParams {}

/// Gradients computed on the device; each is `Some` when requested.
#[derive(Debug)]
pub struct CudaGradients {
    /// `dx`, shape of `x`.
    pub dx: Option<CudaTensor>,
    /// `dw`, `[D, D, C]`.
    pub dw: Option<CudaTensor>,
}

fn resident(device: &CudaDevice) -> u64 {
    launch::resident_blocks(device.sm_count(), device.compute_capability().0)
}

/// Queues the forward kernel: `y = fuse(x, w)`. Views must hold `dims.len()` (x, y) and
/// `D*D*C` (w) elements.
pub fn launch_forward<T: CudaElement>(
    device: &CudaDevice,
    dims: &FusionDims,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    y: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    launch_mix("forward", device, dims, x, w, y)
}

/// Queues the grad-input kernel: `dx[d] = sum_k w[d, k] * dy[k]` per channel.
pub fn launch_grad_input<T: CudaElement>(
    device: &CudaDevice,
    dims: &FusionDims,
    dy: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    dx: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    launch_mix("grad_input", device, dims, dy, w, dx)
}

/// Forward and grad-input share a signature (const T* in, const T* w, T* out, params) and a
/// launch plan; only the kernel differs.
fn launch_mix<T: CudaElement>(
    op: &str,
    device: &CudaDevice,
    dims: &FusionDims,
    input: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    check_lengths(dims, &[input.len(), out.len()], w.len())?;
    check_bf16(device, T::DTYPE)?;
    if dims.is_empty() {
        return Ok(());
    }
    let plan = launch::elementwise(op, dims, T::DTYPE, resident(device), launch::MAX_GRID_Y);
    let params = launch::params(dims, 0);
    // SAFETY: forward and grad-input take (const T* in, const T* w, T* out, A3dFusionParams)
    // and index B*C*D*P elements of in / out and D*D*C of w (lengths checked above).
    unsafe { launch_two_in_one_out(device, &plan, input, w, out, &params) }
}

/// Queues the two grad-weight kernels: per-block partial sums into a scratch buffer, then their
/// reduction in a fixed order (bitwise reproducible run to run on a given GPU).
pub fn launch_grad_weight<T: CudaElement>(
    device: &CudaDevice,
    dims: &FusionDims,
    x: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
    dw: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    check_lengths(dims, &[x.len(), dy.len()], dw.len())?;
    check_bf16(device, T::DTYPE)?;
    let stream = device.stream();
    if dims.is_empty() {
        // Empty sums: dw is zero.
        stream.memset_zeros(dw).map_err(driver_error)?;
        return Ok(());
    }
    let plan = launch::grad_weight(
        dims,
        T::DTYPE,
        resident(device),
        device.sm_count(),
        launch::MAX_GRID_Y,
    );
    // SAFETY: the partial kernel takes (const T* x, const T* dy, float* partials, params) and
    // writes all C * partial_blocks * D * D partials (each block writes every entry of its
    // slot); the reduce kernel takes (const float*, T* dw, params); lengths checked above.
    unsafe {
        launch_partials_then_reduce(
            device,
            &plan.partial,
            &plan.reduce,
            plan.partials_len,
            x,
            dy,
            dw,
            &plan.params,
        )
    }
}

fn check_lengths(dims: &FusionDims, big: &[usize], small: usize) -> Result<()> {
    let want_small = dims.depth * dims.depth * dims.channels;
    if big.iter().all(|&n| n == dims.len()) && small == want_small {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cuda",
            message: format!(
                "buffer lengths {big:?} / {small} do not match shape {:?} ({} / {want_small})",
                dims.input_shape(),
                dims.len()
            ),
        })
    }
}

fn forward_typed<T: CudaElement>(
    dims: &FusionDims,
    x: &CudaTensor,
    w: &CudaTensor,
    y: &mut CudaTensor,
) -> Result<()> {
    let device = x.device().clone();
    launch_forward::<T>(&device, dims, &x.view()?, &w.view()?, &mut y.view_mut()?)
}

/// `y = fuse(x, w)` on the device of `x` (a new tensor).
pub fn forward(x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
    let mut y = CudaTensor::zeros(x.shape(), x.dtype(), x.device())?;
    forward_into(x, w, &mut y)?;
    Ok(y)
}

/// `y = fuse(x, w)` into an existing device tensor of `x`'s shape and dtype.
pub fn forward_into(x: &CudaTensor, w: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    let dims = check_forward(x, w)?;
    check_outputs(&dims, x.dtype(), &[("y", Some(&*y))], None)?;
    x.check_same_device("w", w)?;
    x.check_same_device("y", y)?;
    with_dtype!(x.dtype(), T => forward_typed::<T>(&dims, x, w, y))
}

fn backward_typed<T: CudaElement>(
    dims: &FusionDims,
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    dx: Option<&mut CudaTensor>,
    dw: Option<&mut CudaTensor>,
) -> Result<()> {
    let device = x.device().clone();
    if let Some(dx) = dx {
        launch_grad_input::<T>(&device, dims, &dy.view()?, &w.view()?, &mut dx.view_mut()?)?;
    }
    if let Some(dw) = dw {
        launch_grad_weight::<T>(&device, dims, &x.view()?, &dy.view()?, &mut dw.view_mut()?)?;
    }
    Ok(())
}

/// The requested gradients of `y = fuse(x, w)` given `dy`, on the device of `x`.
pub fn backward(
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    grads: Grads,
) -> Result<CudaGradients> {
    let dims = check_backward(x, w, dy)?;
    let mut dx = grads
        .input
        .then(|| CudaTensor::zeros(x.shape(), x.dtype(), x.device()))
        .transpose()?;
    let mut dw = grads
        .weight
        .then(|| CudaTensor::zeros(&dims.weight_shape(), x.dtype(), x.device()))
        .transpose()?;
    backward_into(x, w, dy, dx.as_mut(), dw.as_mut())?;
    Ok(CudaGradients { dx, dw })
}

/// Gradients into existing device tensors, each only when given.
pub fn backward_into(
    x: &CudaTensor,
    w: &CudaTensor,
    dy: &CudaTensor,
    dx: Option<&mut CudaTensor>,
    dw: Option<&mut CudaTensor>,
) -> Result<()> {
    let dims = check_backward(x, w, dy)?;
    check_outputs(&dims, x.dtype(), &[("dx", dx.as_deref())], dw.as_deref())?;
    x.check_same_device("w", w)?;
    x.check_same_device("dy", dy)?;
    for (arg, t) in [("dx", dx.as_deref()), ("dw", dw.as_deref())] {
        if let Some(t) = t {
            x.check_same_device(arg, t)?;
        }
    }
    with_dtype!(x.dtype(), T => backward_typed::<T>(&dims, x, w, dy, dx, dw))
}
