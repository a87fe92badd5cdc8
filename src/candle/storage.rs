//! Moving data between candle's storage and a3d: argument views for a3d's checks, contiguous
//! element access through a layout, host tensors and back, and errors named after the op.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Tensor};

use crate::dtype::with_dtype;
use crate::ops::common::ShapeInfo;
use crate::tensor::HostElement;
use crate::{DType, Element};

/// An a3d error as a candle error, prefixed with the op's name.
pub(crate) fn candle_err(op: &str, e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {e}")).bt()
}

/// The a3d dtype of a candle CPU storage; other dtypes are an error naming the dtype.
pub(crate) fn a3d_dtype(op: &str, arg: &str, s: &CpuStorage) -> candle_core::Result<DType> {
    match s {
        CpuStorage::F32(_) => Ok(DType::F32),
        CpuStorage::F16(_) => Ok(DType::F16),
        CpuStorage::BF16(_) => Ok(DType::BF16),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: `{arg}` has dtype {:?}, expected f32, f16 or bf16",
            other.dtype()
        ))
        .bt()),
    }
}

pub(crate) fn info<'a>(
    op: &str,
    arg: &str,
    s: &CpuStorage,
    l: &'a Layout,
) -> candle_core::Result<ShapeInfo<'a>> {
    Ok(ShapeInfo {
        shape: l.dims(),
        dtype: a3d_dtype(op, arg, s)?,
    })
}

/// The elements of `l`'s view of `data`, in row-major order: borrowed when the view is
/// contiguous (from `start_offset`), copied element by element along the strides otherwise.
pub(crate) fn contiguous<'a, T: Copy>(
    data: &'a [T],
    l: &Layout,
) -> candle_core::Result<Cow<'a, [T]>> {
    let n = l.shape().elem_count();
    if let Some((start, end)) = l.contiguous_offsets() {
        return data
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or_else(|| candle_core::Error::Msg("a3d: layout outside its storage".into()));
    }
    let dims = l.dims();
    let strides = l.stride();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(Cow::Owned(out));
    }
    let mut index = vec![0usize; dims.len()];
    let mut offset = l.start_offset();
    for _ in 0..n {
        let v = data
            .get(offset)
            .ok_or_else(|| candle_core::Error::Msg("a3d: layout outside its storage".into()))?;
        out.push(*v);
        // Odometer step over the dimensions, last one fastest.
        for axis in (0..dims.len()).rev() {
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < dims[axis] {
                break;
            }
            offset -= strides[axis] * dims[axis];
            index[axis] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

pub(crate) fn weights_f32<T: Element>(w: &[T]) -> Vec<f32> {
    w.iter().map(|v| v.to_f32()).collect()
}

/// A candle CPU argument as an a3d host tensor of the same dtype (a contiguous copy).
pub(crate) fn host_tensor(
    op: &str,
    arg: &str,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<crate::Tensor> {
    fn typed<T: HostElement>(op: &str, v: &[T], l: &Layout) -> candle_core::Result<crate::Tensor> {
        let data = contiguous(v, l)?.into_owned();
        crate::Tensor::from_vec(data, l.dims()).map_err(|e| candle_err(op, e))
    }
    match s {
        CpuStorage::F32(v) => typed(op, v, l),
        CpuStorage::F16(v) => typed(op, v, l),
        CpuStorage::BF16(v) => typed(op, v, l),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: `{arg}` has dtype {:?}, expected f32, f16 or bf16",
            other.dtype()
        ))
        .bt()),
    }
}

/// A candle CPU argument's shape, dtype and values as f32: candle's own buffer when it is f32
/// and contiguous, else a converted copy.
pub(crate) struct HostF32<'a> {
    /// Shape and dtype, for the argument checks.
    pub(crate) info: ShapeInfo<'a>,
    /// Row-major values.
    pub(crate) values: Cow<'a, [f32]>,
}

/// `s` under layout `l` as [`HostF32`].
pub(crate) fn host_f32<'a>(
    op: &str,
    arg: &str,
    s: &'a CpuStorage,
    l: &'a Layout,
) -> candle_core::Result<HostF32<'a>> {
    let (dtype, values) = match s {
        CpuStorage::F32(v) => (DType::F32, contiguous(v, l)?),
        CpuStorage::F16(v) => (
            DType::F16,
            Cow::Owned(contiguous(v, l)?.iter().map(|x| x.to_f32()).collect()),
        ),
        CpuStorage::BF16(v) => (
            DType::BF16,
            Cow::Owned(contiguous(v, l)?.iter().map(|x| x.to_f32()).collect()),
        ),
        other => {
            return Err(candle_core::Error::Msg(format!(
                "{op}: `{arg}` has dtype {:?}, expected f32, f16 or bf16",
                other.dtype()
            ))
            .bt())
        }
    };
    Ok(HostF32 {
        info: ShapeInfo {
            shape: l.dims(),
            dtype,
        },
        values,
    })
}

/// An a3d host tensor as candle CPU storage of the same dtype.
pub(crate) fn cpu_storage(op: &str, t: crate::Tensor) -> candle_core::Result<CpuStorage> {
    let err = |e| candle_err(op, e);
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(t.into_vec().map_err(err)?),
        DType::F16 => CpuStorage::F16(t.into_vec().map_err(err)?),
        DType::BF16 => CpuStorage::BF16(t.into_vec().map_err(err)?),
    })
}

/// The a3d host tensors holding `parts`' elements one after the other, as a candle tensor of
/// shape `shape` (the parts' common dtype) on `device`.
pub(crate) fn candle_tensor(
    op: &str,
    parts: Vec<crate::Tensor>,
    shape: &[usize],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    fn typed<T: HostElement + candle_core::WithDType>(
        op: &str,
        parts: Vec<crate::Tensor>,
        shape: &[usize],
        device: &candle_core::Device,
    ) -> candle_core::Result<Tensor> {
        let mut parts = parts.into_iter();
        let mut data = match parts.next() {
            Some(first) => first.into_vec::<T>().map_err(|e| candle_err(op, e))?,
            None => Vec::new(),
        };
        for part in parts {
            data.extend(part.into_vec::<T>().map_err(|e| candle_err(op, e))?);
        }
        Tensor::from_vec(data, shape, device)
    }
    with_dtype!(parts.first().map_or(DType::F32, crate::Tensor::dtype), T => typed::<T>(op, parts, shape, device))
}

/// `f(storage, layout)` on a candle tensor's CPU storage; an error naming the device otherwise.
pub(crate) fn with_cpu_storage<R>(
    op: &str,
    arg: &str,
    t: &Tensor,
    f: impl FnOnce(&CpuStorage, &Layout) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(s, layout),
        _ => candle_core::bail!(
            "{op}: `{arg}` is on {:?}; this op runs on the CPU only",
            t.device().location()
        ),
    }
}
