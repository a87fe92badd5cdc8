//! What every op's CUDA launcher shares: the element types with kernels, the bf16 capability
//! check, typed views of device tensors, and the launch configuration of a described launch.

use super::{CudaDevice, CudaStorage, CudaTensor};
use crate::ops::common::KernelLaunch;
use crate::{DType, Element, Error, Result};
use cudarc::driver::{
    CudaFunction, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, ValidAsZeroBits,
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
