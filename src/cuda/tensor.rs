//! Device tensors: the CUDA twin of [`crate::Tensor`] (shape, dtype, contiguous storage).

use super::{driver_error, CudaDevice};
use crate::tensor::{element_count, Storage};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};

/// Typed device memory.
pub enum CudaStorage {
    /// f32 elements.
    F32(CudaSlice<f32>),
    /// f16 elements.
    F16(CudaSlice<f16>),
    /// bf16 elements.
    BF16(CudaSlice<bf16>),
}

impl CudaStorage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CudaStorage::F32(_) => DType::F32,
            CudaStorage::F16(_) => DType::F16,
            CudaStorage::BF16(_) => DType::BF16,
        }
    }
}

/// A contiguous tensor in GPU memory, bound to the device (and stream) it was made on.
pub struct CudaTensor {
    shape: Vec<usize>,
    storage: CudaStorage,
    device: CudaDevice,
}

impl std::fmt::Debug for CudaTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype())
            .field("device", &self.device)
            .finish()
    }
}

impl crate::TensorInfo for CudaTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dtype(&self) -> DType {
        self.storage.dtype()
    }
}

impl CudaTensor {
    /// Copies a host tensor to `device`.
    pub fn upload(host: &Tensor, device: &CudaDevice) -> Result<CudaTensor> {
        let stream = device.stream();
        let storage = match host.storage() {
            Storage::F32(v) => CudaStorage::F32(stream.clone_htod(v).map_err(driver_error)?),
            Storage::F16(v) => CudaStorage::F16(stream.clone_htod(v).map_err(driver_error)?),
            Storage::BF16(v) => CudaStorage::BF16(stream.clone_htod(v).map_err(driver_error)?),
        };
        Ok(CudaTensor {
            shape: host.shape().to_vec(),
            storage,
            device: device.clone(),
        })
    }

    /// A zero-filled tensor on `device`.
    pub fn zeros(shape: &[usize], dtype: DType, device: &CudaDevice) -> Result<CudaTensor> {
        let n = element_count(shape)?;
        let stream = device.stream();
        let storage = match dtype {
            DType::F32 => CudaStorage::F32(stream.alloc_zeros(n).map_err(driver_error)?),
            DType::F16 => CudaStorage::F16(stream.alloc_zeros(n).map_err(driver_error)?),
            DType::BF16 => CudaStorage::BF16(stream.alloc_zeros(n).map_err(driver_error)?),
        };
        Ok(CudaTensor {
            shape: shape.to_vec(),
            storage,
            device: device.clone(),
        })
    }

    /// A tensor filled with `value` (e.g. NaN, to catch elements a kernel does not write).
    pub fn full(shape: &[usize], value: f32, dtype: DType, device: &CudaDevice) -> Result<Self> {
        Self::upload(&Tensor::full(shape, value, dtype)?, device)
    }

    /// Copies the tensor back to the host (waits for the device's stream).
    pub fn download(&self) -> Result<Tensor> {
        let stream = self.device.stream();
        match &self.storage {
            CudaStorage::F32(s) => {
                Tensor::from_vec(stream.clone_dtoh(s).map_err(driver_error)?, &self.shape)
            }
            CudaStorage::F16(s) => {
                Tensor::from_vec(stream.clone_dtoh(s).map_err(driver_error)?, &self.shape)
            }
            CudaStorage::BF16(s) => {
                Tensor::from_vec(stream.clone_dtoh(s).map_err(driver_error)?, &self.shape)
            }
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device holding the data.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The typed device memory.
    pub fn storage(&self) -> &CudaStorage {
        &self.storage
    }

    /// The typed device memory, mutably.
    pub fn storage_mut(&mut self) -> &mut CudaStorage {
        &mut self.storage
    }

    /// Copies `src` into `self` on the device (same shape and dtype): the device-to-device
    /// copy benchmarks compare against.
    pub fn copy_from(&mut self, src: &CudaTensor) -> Result<()> {
        if src.shape != self.shape {
            return Err(Error::Shape {
                arg: "src",
                expected: self.shape.clone(),
                got: src.shape.clone(),
            });
        }
        self.check_same_device("src", src)?;
        let stream = self.device.stream().clone();
        match (&src.storage, &mut self.storage) {
            (CudaStorage::F32(s), CudaStorage::F32(d)) => stream.memcpy_dtod(s, d),
            (CudaStorage::F16(s), CudaStorage::F16(d)) => stream.memcpy_dtod(s, d),
            (CudaStorage::BF16(s), CudaStorage::BF16(d)) => stream.memcpy_dtod(s, d),
            (s, d) => {
                return Err(Error::DTypeMismatch {
                    arg: "src",
                    expected: d.dtype(),
                    got: s.dtype(),
                })
            }
        }
        .map_err(driver_error)
    }

    /// Checks that `other` lives on the same device as `self`.
    pub(crate) fn check_same_device(&self, arg: &'static str, other: &CudaTensor) -> Result<()> {
        if self.device.ordinal() == other.device.ordinal() {
            Ok(())
        } else {
            Err(Error::Backend {
                backend: "cuda",
                message: format!(
                    "`{arg}` is on device {}, `x` on device {}",
                    other.device.ordinal(),
                    self.device.ordinal()
                ),
            })
        }
    }
}
