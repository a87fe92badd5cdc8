//! Host tensors: a shape, a dtype and contiguous row-major (NCDHW) storage.
//!
//! A device tensor (`cuda::CudaTensor`, feature `cuda`) mirrors this type: same shape/dtype
//! accessors, with upload from and download to a [`Tensor`].

use crate::{DType, Element, Error, Result};
use half::{bf16, f16};

/// Number of elements of `shape`, or an error if the product (or its byte size for the largest
/// dtype) overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    let overflow = || Error::ElementCountOverflow {
        shape: shape.to_vec(),
    };
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    // Keep byte offsets representable too (isize::MAX is the allocation limit).
    n.checked_mul(std::mem::size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(overflow)?;
    Ok(n)
}

/// `n` zeros of an element type whose all-zero bit pattern is 0.0, or `None` when the memory
/// cannot be reserved. The zeros come from the allocator (`calloc`: fresh pages are already
/// zero), so a large buffer is not written twice.
pub(crate) fn try_zeroed_vec<T: HostElement>(n: usize) -> Option<Vec<T>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).ok()?;
    // SAFETY: the layout has a non-zero size (n > 0, T is not zero-sized).
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` comes from the global allocator with the layout of `[T; n]`; every element is
    // all-zero bits, a valid 0.0 of f32, f16 and bf16 (the only `HostElement`s).
    Some(unsafe { Vec::from_raw_parts(p, n, n) })
}

/// Typed contiguous storage of a host tensor.
#[derive(Clone, PartialEq)]
pub enum Storage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

/// Dispatch on the element type of a [`Storage`]: `with_storage!(storage, v => expr)` evaluates
/// `expr` with `v` bound to the typed `Vec` (by reference, or mutably with `mut`).
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F16($v) => $body,
            $crate::tensor::Storage::BF16($v) => $body,
        }
    };
}

impl Storage {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_storage!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros, or `None` when the memory cannot be reserved (instead of aborting).
    fn try_zeros(dtype: DType, n: usize) -> Option<Storage> {
        Some(match dtype {
            DType::F32 => Storage::F32(try_zeroed_vec(n)?),
            DType::F16 => Storage::F16(try_zeroed_vec(n)?),
            DType::BF16 => Storage::BF16(try_zeroed_vec(n)?),
        })
    }
}

/// Storage that can be built from and viewed as a typed `Vec`.
trait TypedStorage: Element {
    fn wrap(v: Vec<Self>) -> Storage;
    fn view(s: &Storage) -> Option<&[Self]>;
    fn view_mut(s: &mut Storage) -> Option<&mut [Self]>;
    fn take(s: Storage) -> Option<Vec<Self>>;
}

macro_rules! typed_storage {
    ($t:ty, $variant:ident) => {
        impl TypedStorage for $t {
            fn wrap(v: Vec<Self>) -> Storage {
                Storage::$variant(v)
            }
            fn view(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn view_mut(s: &mut Storage) -> Option<&mut [Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn take(s: Storage) -> Option<Vec<Self>> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
typed_storage!(f32, F32);
typed_storage!(f16, F16);
typed_storage!(bf16, BF16);

/// Elements a host [`Tensor`] can hold (`f32`, `half::f16`, `half::bf16`).
#[allow(private_bounds)]
pub trait HostElement: Element + TypedStorage {}
impl<T: Element + TypedStorage> HostElement for T {}

/// A contiguous host tensor.
///
/// ```
/// use a3d::{DType, Tensor};
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 2, 3])?;
/// assert_eq!(t.shape(), &[1, 2, 3]);
/// let h = t.to_dtype(DType::F16);
/// assert_eq!(h.to_f32_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// # Ok::<(), a3d::Error>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype())
            .finish_non_exhaustive()
    }
}

impl Tensor {
    /// Takes ownership of `data` as a tensor of `shape` (row-major).
    pub fn from_vec<T: HostElement>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                shape: shape.to_vec(),
                expected,
                len: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: T::wrap(data),
        })
    }

    /// Copies `data` into a tensor of `shape`.
    pub fn from_slice<T: HostElement>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                shape: shape.to_vec(),
                expected,
                len: data.len(),
            });
        }
        Self::from_vec(data.to_vec(), shape)
    }

    /// Builds a tensor of `dtype` from f32 values (rounded to nearest even).
    pub fn from_f32(data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, shape)?.to_dtype(dtype))
    }

    /// A zero-filled tensor. Errors (never aborts) when the memory cannot be had.
    pub fn zeros(shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = element_count(shape)?;
        let storage = Storage::try_zeros(dtype, n).ok_or_else(|| Error::OutOfMemory {
            shape: shape.to_vec(),
            bytes: n * dtype.size_in_bytes(),
        })?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A tensor filled with `value` (rounded to `dtype`).
    pub fn full(shape: &[usize], value: f32, dtype: DType) -> Result<Tensor> {
        let mut t = Tensor::zeros(shape, dtype)?;
        with_storage!(&mut t.storage, v => v.fill(Element::from_f32(value)));
        Ok(t)
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
        self.storage.len()
    }

    /// Whether the tensor has no elements (some dimension is zero).
    pub fn is_empty(&self) -> bool {
        self.storage.is_empty()
    }

    /// Size of the data in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }

    /// The typed storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements as a slice of `T`; errors if the dtype is not `T`.
    pub fn as_slice<T: HostElement>(&self) -> Result<&[T]> {
        T::view(&self.storage).ok_or(Error::WrongElementType {
            actual: self.dtype(),
            requested: T::DTYPE,
        })
    }

    /// The elements as a mutable slice of `T`; errors if the dtype is not `T`.
    pub fn as_mut_slice<T: HostElement>(&mut self) -> Result<&mut [T]> {
        let actual = self.dtype();
        T::view_mut(&mut self.storage).ok_or(Error::WrongElementType {
            actual,
            requested: T::DTYPE,
        })
    }

    /// Consumes the tensor, returning its elements; errors if the dtype is not `T`.
    pub fn into_vec<T: HostElement>(self) -> Result<Vec<T>> {
        let actual = self.dtype();
        T::take(self.storage).ok_or(Error::WrongElementType {
            actual,
            requested: T::DTYPE,
        })
    }

    /// A copy of the elements converted to `T`.
    pub fn to_vec<T: HostElement>(&self) -> Vec<T> {
        with_storage!(&self.storage, v => v.iter().map(|&e| T::from_f32(e.to_f32())).collect())
    }

    /// A copy of the elements widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        with_storage!(&self.storage, v => {
            let mut out = vec![0.0f32; v.len()];
            Element::load_f32(v, &mut out);
            out
        })
    }

    /// A copy of the elements widened to f64 (for references and error measurement).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_storage!(&self.storage, v => v.iter().map(|&e| e.to_f32() as f64).collect())
    }

    /// This tensor converted to `dtype` (a copy; rounding to nearest even when narrowing).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let f = self.to_f32_vec();
        let storage = match dtype {
            DType::F32 => Storage::F32(f),
            DType::F16 => Storage::F16(narrow(&f)),
            DType::BF16 => Storage::BF16(narrow(&f)),
        };
        Tensor {
            shape: self.shape.clone(),
            storage,
        }
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let expected = element_count(shape)?;
        if expected != self.len() {
            return Err(Error::DataLength {
                shape: shape.to_vec(),
                expected,
                len: self.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
}

fn narrow<T: Element>(src: &[f32]) -> Vec<T> {
    let mut out = vec![T::from_f32(0.0); src.len()];
    T::store_f32(src, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_validates_length_and_overflow() {
        assert!(matches!(
            Tensor::from_vec(vec![0.0f32; 5], &[2, 3]),
            Err(Error::DataLength {
                expected: 6,
                len: 5,
                ..
            })
        ));
        assert!(matches!(
            Tensor::zeros(&[usize::MAX, 2], DType::F32),
            Err(Error::ElementCountOverflow { .. })
        ));
        assert!(matches!(
            Tensor::zeros(&[1 << 62, 1], DType::F32),
            Err(Error::ElementCountOverflow { .. })
        ));
        let empty = Tensor::zeros(&[2, 0, 3], DType::BF16).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.shape(), &[2, 0, 3]);
    }

    #[test]
    fn typed_views_check_dtype() {
        let t = Tensor::from_vec(vec![f16::from_f32(1.5); 4], &[4]).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        assert!(t.as_slice::<f16>().is_ok());
        assert_eq!(
            t.as_slice::<f32>(),
            Err(Error::WrongElementType {
                actual: DType::F16,
                requested: DType::F32
            })
        );
        assert_eq!(t.to_vec::<f32>(), vec![1.5; 4]);
        assert_eq!(t.clone().into_vec::<f16>().unwrap().len(), 4);
        assert!(t.into_vec::<bf16>().is_err());
    }

    #[test]
    fn dtype_conversion_rounds() {
        let t = Tensor::from_vec(vec![1.0f32 + 1.0 / 512.0, -3.25, 65504.0, 1e6], &[4]).unwrap();
        let b = t.to_dtype(DType::BF16);
        assert_eq!(b.to_f32_vec(), vec![1.0, -3.25, 65536.0, 999424.0]);
        let h = t.to_dtype(DType::F16);
        assert_eq!(h.to_f32_vec()[3], f32::INFINITY);
        assert_eq!(h.to_dtype(DType::F32).dtype(), DType::F32);
    }

    #[test]
    fn reshape_keeps_count() {
        let t = Tensor::zeros(&[2, 3], DType::F32).unwrap();
        assert!(t.clone().reshape(&[3, 2]).is_ok());
        assert!(t.reshape(&[7]).is_err());
    }
}
