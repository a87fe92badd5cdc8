//! The candle ops on candle's CUDA tensors (feature `candle-cuda`): a3d's kernels run on
//! candle's own device memory and stream, with no copy through the host.
//!
//! How the pointers travel: candle's `CudaStorage` holds a cudarc `CudaSlice<T>`; a contiguous
//! argument is passed to a3d's launcher as a cudarc view of that slice (offset by the layout's
//! `start_offset`), a strided one is first copied to a contiguous device buffer with candle's
//! own strided copy. The launches are queued on `CudaDevice::cuda_stream()`, the stream candle
//! runs everything else on, through an `a3d::cuda::CudaDevice` built around that stream (cached
//! per stream, so the fusion module is loaded once per context). cudarc's event tracking orders
//! the launches after pending work on the same buffers.

use crate::cuda::CudaDevice as A3dDevice;
use crate::cuda::CudaElement;
use crate::fusion::cuda::{launch_forward, launch_grad_input, launch_grad_weight};
use crate::fusion::FusionDims;
use crate::ops::common::ShapeInfo;
use crate::DType;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CudaDevice, Layout};
use cudarc::driver::{CudaSlice, CudaView};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Shape and dtype of a candle CUDA argument, for a3d's argument checks.
pub(crate) fn arg<'a>(
    op: &str,
    name: &str,
    s: &CudaStorage,
    l: &'a Layout,
) -> candle_core::Result<ShapeInfo<'a>> {
    let dtype = match s.dtype() {
        candle_core::DType::F32 => DType::F32,
        candle_core::DType::F16 => DType::F16,
        candle_core::DType::BF16 => DType::BF16,
        other => {
            candle_core::bail!("{op}: `{name}` has dtype {other:?}, expected f32, f16 or bf16")
        }
    };
    Ok(ShapeInfo {
        shape: l.dims(),
        dtype,
    })
}

fn err(op: &str, e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {e}")).bt()
}

/// The a3d device wrapping candle's stream, made once per stream.
fn a3d_device(op: &str, dev: &CudaDevice) -> candle_core::Result<A3dDevice> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, A3dDevice>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let key = Arc::as_ptr(&stream) as usize;
    let mut map = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(d) = map.get(&key) {
        return Ok(d.clone());
    }
    let d = A3dDevice::from_stream(stream).map_err(|e| err(op, e))?;
    map.insert(key, d.clone());
    Ok(d)
}

/// A contiguous device view of an argument: borrowed from candle's slice when the layout is
/// contiguous, else a fresh contiguous copy.
enum Contiguous<'a, T> {
    Borrowed(CudaView<'a, T>),
    Owned(CudaSlice<T>),
}

impl<T> Contiguous<'_, T> {
    fn view(&self) -> CudaView<'_, T> {
        match self {
            Contiguous::Borrowed(v) => v.slice(..),
            Contiguous::Owned(s) => s.slice(..),
        }
    }
}

fn contiguous<'a, T: CudaDType + CudaElement>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<Contiguous<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok(Contiguous::Borrowed(slice.slice(start..end)));
    }
    let n = l.shape().elem_count();
    let dev = s.device().clone();
    // SAFETY: every element of the buffer is written by the strided copy below before use.
    let buf = unsafe { dev.alloc::<T>(n) }?;
    let mut dst = T::wrap_cuda_slice(buf, dev);
    s.copy_strided_src(&mut dst, 0, l)?;
    let owned = T::as_cuda_slice(&dst)?.clone();
    Ok(Contiguous::Owned(owned))
}

/// `y = fuse(x, w)` on candle's device.
pub(crate) fn forward<T: CudaDType + CudaElement>(
    op: &str,
    dims: &FusionDims,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = x.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let (xc, wc) = (contiguous::<T>(x, xl)?, contiguous::<T>(w, wl)?);
    // SAFETY: the forward kernel writes every element of y.
    let mut y = unsafe { dev.alloc::<T>(dims.len()) }?;
    launch_forward(&a3d, dims, &xc.view(), &wc.view(), &mut y.slice_mut(..))
        .map_err(|e| err(op, e))?;
    Ok(T::wrap_cuda_slice(y, dev))
}

/// `dx` (`input == true`) or `dw` of the fusion on candle's device.
pub(crate) fn gradient<T: CudaDType + CudaElement>(
    op: &str,
    input: bool,
    dims: &FusionDims,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = x.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let dyc = contiguous::<T>(dy, dyl)?;
    let out = if input {
        let wc = contiguous::<T>(w, wl)?;
        // SAFETY: the grad-input kernel writes every element of dx.
        let mut dx = unsafe { dev.alloc::<T>(dims.len()) }?;
        launch_grad_input(&a3d, dims, &dyc.view(), &wc.view(), &mut dx.slice_mut(..))
            .map_err(|e| err(op, e))?;
        dx
    } else {
        let xc = contiguous::<T>(x, xl)?;
        let n = dims.depth * dims.depth * dims.channels;
        // SAFETY: the reduce kernel (or the zero fill for empty inputs) writes every element.
        let mut dw = unsafe { dev.alloc::<T>(n) }?;
        launch_grad_weight(&a3d, dims, &xc.view(), &dyc.view(), &mut dw.slice_mut(..))
            .map_err(|e| err(op, e))?;
        dw
    };
    Ok(T::wrap_cuda_slice(out, dev))
}

/// TSM / AlignShift (or its transpose) of a candle CUDA tensor on candle's device.
pub(crate) fn shift<T: CudaDType + CudaElement>(
    op: &str,
    shift: &crate::shift::Shift,
    backward: bool,
    (x, xl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = x.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let xc = contiguous::<T>(x, xl)?;
    let n = xl.shape().elem_count();
    // SAFETY: the shift kernel writes every element of the output.
    let mut out = unsafe { dev.alloc::<T>(n) }?;
    crate::shift::cuda::launch_shift(
        &a3d,
        shift,
        xl.dims(),
        backward,
        &xc.view(),
        &mut out.slice_mut(..),
    )
    .map_err(|e| err(op, e))?;
    Ok(T::wrap_cuda_slice(out, dev))
}

/// `y = depth_conv(x, v)` on candle's device.
pub(crate) fn depthconv_forward<T: CudaDType + CudaElement>(
    op: &str,
    dims: &crate::depthconv::DepthConvDims,
    (x, xl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dev = x.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let (xc, vc) = (contiguous::<T>(x, xl)?, contiguous::<T>(v, vl)?);
    // SAFETY: the forward kernel writes every element of y.
    let mut y = unsafe { dev.alloc::<T>(dims.input.len()) }?;
    crate::depthconv::cuda::launch_mix(
        &a3d,
        dims,
        false,
        &xc.view(),
        &vc.view(),
        &mut y.slice_mut(..),
    )
    .map_err(|e| err(op, e))?;
    Ok(T::wrap_cuda_slice(y, dev))
}

/// Both gradients of the depth convolution, packed `[dx flattened, dv flattened]`, on candle's
/// device.
pub(crate) fn depthconv_grads<T: CudaDType + CudaElement>(
    op: &str,
    dims: &crate::depthconv::DepthConvDims,
    (x, xl): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    use crate::depthconv::cuda::{launch_grad_weight, launch_mix};
    let dev = x.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let (xc, vc, dyc) = (
        contiguous::<T>(x, xl)?,
        contiguous::<T>(v, vl)?,
        contiguous::<T>(dy, dyl)?,
    );
    let n = dims.input.len();
    // SAFETY: the grad-input kernel writes elements 0..n, the weight-gradient reduction (or its
    // zero fill) the K*C after them.
    let mut packed = unsafe { dev.alloc::<T>(n + dims.taps * dims.input.channels) }?;
    launch_mix(
        &a3d,
        dims,
        true,
        &dyc.view(),
        &vc.view(),
        &mut packed.slice_mut(..n),
    )
    .map_err(|e| err(op, e))?;
    launch_grad_weight(
        &a3d,
        dims,
        &xc.view(),
        &dyc.view(),
        &mut packed.slice_mut(n..),
    )
    .map_err(|e| err(op, e))?;
    Ok(T::wrap_cuda_slice(packed, dev))
}

/// RoIAlign on candle's device at host `rois` (checked into `dims`): from the features `src`
/// the pooled `[K, C, ph, pw]`, or with `backward` from `dy` the features' gradient.
pub(crate) fn roi_align(
    op: &str,
    roi_align: &crate::roi_align::RoiAlign,
    dims: &crate::roi_align::RoiDims,
    rois: &[[f32; 5]],
    backward: bool,
    src: (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let dtype = arg(op, if backward { "dy" } else { "features" }, src.0, src.1)?.dtype;
    crate::dtype::with_dtype!(dtype, T => roi_align_typed::<T>(op, roi_align, dims, rois, backward, src))
}

fn roi_align_typed<T: CudaDType + CudaElement>(
    op: &str,
    roi_align: &crate::roi_align::RoiAlign,
    dims: &crate::roi_align::RoiDims,
    rois: &[[f32; 5]],
    backward: bool,
    (src, sl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    use crate::roi_align::cuda::{launch_backward, launch_forward};
    let dev = src.device().clone();
    let a3d = a3d_device(op, &dev)?;
    let sc = contiguous::<T>(src, sl)?;
    let shape = if backward {
        dims.feature_shape()
    } else {
        dims.output_shape()
    };
    let n: usize = shape.iter().product();
    // SAFETY: the forward kernel writes every pooled element; the backward zeroes dx (or casts
    // its zeroed accumulator into all of it) before adding.
    let mut out = unsafe { dev.alloc::<T>(n.max(1)) }?;
    let mut view = out.slice_mut(..n);
    if backward {
        launch_backward(&a3d, roi_align, dims, rois, &sc.view(), &mut view)
    } else {
        launch_forward(&a3d, roi_align, dims, rois, &sc.view(), &mut view)
    }
    .map_err(|e| err(op, e))?;
    Ok(T::wrap_cuda_slice(out, dev))
}
