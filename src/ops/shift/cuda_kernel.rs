//! TSM and AlignShift on NVIDIA GPUs (feature `cuda`): the kernels of kernels/shift.cu with
//! the plans of `launch.rs` (the ones the host emulation runs in CI). [`forward_into`] and
//! [`backward_into`] take a3d device tensors; [`launch_shift`] takes cudarc views, for callers
//! holding device memory of their own.

use super::cpu_kernel::Direction;
use super::{launch, Shift};
use crate::cuda::launch::{check_bf16, prepare, Slices};
use crate::cuda::{driver_error, CudaDevice, CudaElement, CudaTensor};
use crate::dtype::with_dtype;
use crate::kernel_params::A3dShiftParams;
use crate::ops::common::MAX_GRID_YZ;
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

// SAFETY: A3dShiftParams is `#[repr(C)]` plain data (five u64), laid out exactly as the C struct
// the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dShiftParams {}

/// Queues `out = shift(input)` (or its transpose for `backward`) on `device`'s stream. The
/// views must hold `B*C*D*H*W` elements of the shape `input_shape`.
pub fn launch_shift<T: CudaElement>(
    device: &CudaDevice,
    shift: &Shift,
    input_shape: &[usize],
    backward: bool,
    input: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let plan = shift.plan("x", &(input_shape, T::DTYPE))?;
    check_bf16(device, T::DTYPE)?;
    if input.len() != plan.dims.len() || out.len() != plan.dims.len() {
        return Err(crate::Error::Backend {
            backend: "cuda",
            message: format!(
                "shift: buffers of {} / {} elements for shape {input_shape:?}",
                input.len(),
                out.len()
            ),
        });
    }
    if plan.dims.is_empty() {
        return Ok(());
    }
    let direction = if backward {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let l = launch::shift(&plan, direction, T::DTYPE, MAX_GRID_YZ);
    let (f, cfg) = prepare(device, &l)?;
    let stream = device.stream();
    let coef = stream
        .clone_htod(&launch::coefficients(&plan))
        .map_err(driver_error)?;
    let params = launch::params(&plan);
    let mut b = stream.launch_builder(&f);
    b.arg(input).arg(out).arg(&coef).arg(&params);
    // SAFETY: the arguments match the kernel's signature (const T* in, T* out, const float*
    // coef, A3dShiftParams by value); in and out hold B*C*D*P elements and coef 3*B floats
    // (checked above); cudarc orders the launch after pending work on these buffers.
    unsafe { b.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

fn run_typed<T: CudaElement>(
    shift: &Shift,
    backward: bool,
    input: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let device = input.device().clone();
    launch_shift::<T>(
        &device,
        shift,
        input.shape(),
        backward,
        &input.view()?,
        &mut out.view_mut()?,
    )
}

/// `y = shift(x)` into an existing device tensor of `x`'s shape and dtype, on `x`'s device.
pub fn forward_into(shift: &Shift, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
    run_into(shift, false, x, y)
}

/// `dx = shift^T(dy)` into an existing device tensor of `dy`'s shape and dtype.
pub fn backward_into(shift: &Shift, dy: &CudaTensor, dx: &mut CudaTensor) -> Result<()> {
    run_into(shift, true, dy, dx)
}

/// `out = shift(input)` (or the transpose) into an existing device tensor of `input`'s shape.
pub(crate) fn run_into(
    shift: &Shift,
    backward: bool,
    input: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let (in_arg, out_arg) = if backward { ("dy", "dx") } else { ("x", "y") };
    let plan = shift.plan(in_arg, input)?;
    plan.check_output(out_arg, input.dtype(), out)?;
    input.check_same_device(out_arg, out)?;
    with_dtype!(input.dtype(), T => run_typed::<T>(shift, backward, input, out))
}
