//! What every op's CUDA launcher shares: the element types with kernels, the bf16 capability
//! check, typed views of device tensors, and the launch configuration of a described launch.

use super::{driver_error, CudaDevice, CudaStorage, CudaTensor};
use crate::ops::common::KernelLaunch;
use crate::{DType, Element, Error, Result};
use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

/// Element types with device kernels.
pub trait CudaElement: Element + DeviceRepr + ValidAsZeroBits {}
impl CudaElement for f32 {}
impl CudaElement for half::f16 {}
impl CudaElement for half::bf16 {}

pub(crate) fn check_bf16(device: &CudaDevice, dtype: DType) -> Result<()> {
    if dtype == DType::BF16 && !device.supports_bf16() {
        let (major, minor) = device.compute_capability();
        return Err(Error::Unavailable(format!(
            "bf16 kernels need compute capability 8.0 or newer; {} is {major}.{minor}",
            device.name()
        )));
    }
    Ok(())
}

/// Typed access to a tensor's device memory.
pub(crate) trait Slices {
    fn view<T: CudaElement>(&self) -> Result<CudaView<'_, T>>;
    fn view_mut<T: CudaElement>(&mut self) -> Result<CudaViewMut<'_, T>>;
}

impl Slices for CudaTensor {
    fn view<T: CudaElement>(&self) -> Result<CudaView<'_, T>> {
        let wrong = || Error::WrongElementType {
            actual: self.dtype(),
            requested: T::DTYPE,
        };
        let any: &dyn std::any::Any = match self.storage() {
            CudaStorage::F32(s) => s,
            CudaStorage::F16(s) => s,
            CudaStorage::BF16(s) => s,
        };
        any.downcast_ref::<cudarc::driver::CudaSlice<T>>()
            .map(|s| s.as_view())
            .ok_or_else(wrong)
    }

    fn view_mut<T: CudaElement>(&mut self) -> Result<CudaViewMut<'_, T>> {
        let actual = self.dtype();
        let any: &mut dyn std::any::Any = match self.storage_mut() {
            CudaStorage::F32(s) => s,
            CudaStorage::F16(s) => s,
            CudaStorage::BF16(s) => s,
        };
        any.downcast_mut::<cudarc::driver::CudaSlice<T>>()
            .map(|s| s.as_view_mut())
            .ok_or(Error::WrongElementType {
                actual,
                requested: T::DTYPE,
            })
    }
}

/// The kernel and launch configuration of a described launch on `device`.
pub(crate) fn prepare(
    device: &CudaDevice,
    l: &KernelLaunch,
) -> Result<(CudaFunction, LaunchConfig)> {
    let f = device.function(l.module, &l.name)?;
    Ok((
        f,
        LaunchConfig {
            grid_dim: l.grid,
            block_dim: l.block,
            shared_mem_bytes: l.shared_mem_bytes,
        },
    ))
}

/// Queues `kernel(a, b, out, params)`: the signature of every mixing kernel (fusion's forward
/// and grad-input, the depth convolution's).
///
/// # Safety
/// `l` names a kernel taking `(const T*, const T*, T*, P)` by value, and every element that
/// kernel indexes over `l`'s grid for `params` lies inside `a`, `b` and `out`.
pub(crate) unsafe fn launch_two_in_one_out<T: CudaElement, P: DeviceRepr>(
    device: &CudaDevice,
    l: &KernelLaunch,
    a: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    params: &P,
) -> Result<()> {
    let (f, cfg) = prepare(device, l)?;
    let mut builder = device.stream().launch_builder(&f);
    builder.arg(a).arg(b).arg(out).arg(params);
    // SAFETY: the signature and the bounds are this function's contract; cudarc orders the
    // launch after pending work on these buffers.
    unsafe { builder.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}

/// Queues a deterministic reduction in two launches: `partial(a, b, partials, params)` writes
/// every one of `partials_len` f32 partial sums (into a scratch buffer allocated here), then
/// `reduce(partials, out, params)` adds them in a fixed order.
///
/// # Safety
/// `partial` takes `(const T*, const T*, float*, P)` and writes all `partials_len` floats;
/// `reduce` takes `(const float*, T*, P)`; every element either indexes for `params` lies
/// inside `a`, `b`, the partials and `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_partials_then_reduce<T: CudaElement, P: DeviceRepr>(
    device: &CudaDevice,
    partial: &KernelLaunch,
    reduce: &KernelLaunch,
    partials_len: usize,
    a: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    params: &P,
) -> Result<()> {
    let stream = device.stream();
    // SAFETY: every element is written by the partial kernel (this function's contract) before
    // the reduce kernel, queued after it on the same stream, reads any.
    let mut partials = unsafe { stream.alloc::<f32>(partials_len) }.map_err(driver_error)?;
    let (f, cfg) = prepare(device, partial)?;
    let mut builder = stream.launch_builder(&f);
    builder.arg(a).arg(b).arg(&mut partials).arg(params);
    // SAFETY: signature and bounds by this function's contract.
    unsafe { builder.launch(cfg) }.map_err(driver_error)?;
    let (f, cfg) = prepare(device, reduce)?;
    let mut builder = stream.launch_builder(&f);
    builder.arg(&partials).arg(out).arg(params);
    // SAFETY: as above, for the reduce kernel.
    unsafe { builder.launch(cfg) }.map_err(driver_error)?;
    Ok(())
}
