//! A3D fusion for [candle](https://github.com/huggingface/candle) (feature `candle`).
//!
//! [`fuse`] applies the fusion operator to candle tensors as a custom op: the forward pass and
//! both gradients run a3d's CPU kernels directly on candle's CPU storage (f32, f16, bf16), and
//! candle's autograd reaches `x` and `w` through them. With feature `candle-cuda` the same op
//! runs a3d's CUDA kernels on candle's CUDA tensors.
//!
//! [`A3dConv`] is the A3D layer: fusion, then a per-slice 2D convolution, with the reference
//! implementation's parameter names. Which implementation runs depends on the input:
//!
//! - CPU tensors and `groups == 1`: the whole layer is one candle custom op running a3d's
//!   A3DConv operator ([`crate::a3dconv::A3dConv`]), forward and backward. candle custom ops
//!   take at most three tensors, so the convolution weight (flattened) and the bias are packed
//!   into one parameter vector with [`Tensor::cat`] (differentiable: candle's autograd splits
//!   its gradient back to the two variables); the op is `x.apply_op3(fusion_weights, params)`,
//!   or `x.apply_op2(params)` without fusion. Its backward pass is one call of
//!   [`crate::a3dconv::A3dConv::backward`] computing only the gradients candle tracks (`dx` is
//!   skipped for an input that is not a variable and depends on none).
//! - `groups > 1` (which a3d's operator does not support), or a tensor on another device (CUDA
//!   with `candle-cuda`): [`fuse`], then candle's own `conv2d` on the `B * D` slices, with
//!   candle's autograd for the convolution.
//!
//! Other devices (Metal) are not implemented: candle reports that the fusion op has no
//! implementation there.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::a3dconv::{self, Conv2dParams, Grads};
use crate::fusion::{check_backward, check_forward, FusionDims};
use crate::TensorInfo;
use crate::ops::fusion::cpu_kernel;
use crate::dtype::with_dtype;
use crate::tensor::{element_count, HostElement};
use crate::{DType, Element};

/// Name of the forward op, as candle reports it in errors.
const FORWARD_NAME: &str = "a3d-fusion";

/// Shape and dtype of one candle argument, for a3d's argument checks.
struct ArgInfo<'a> {
    shape: &'a [usize],
    dtype: DType,
}

impl TensorInfo for ArgInfo<'_> {
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// An a3d error as a candle error, prefixed with the op's name.
fn candle_err(op: &str, e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {e}")).bt()
}

/// The a3d dtype of a candle CPU storage; other dtypes are an error naming the dtype.
fn a3d_dtype(op: &str, arg: &str, s: &CpuStorage) -> candle_core::Result<DType> {
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

fn info<'a>(
    op: &str,
    arg: &str,
    s: &CpuStorage,
    l: &'a Layout,
) -> candle_core::Result<ArgInfo<'a>> {
    Ok(ArgInfo {
        shape: l.dims(),
        dtype: a3d_dtype(op, arg, s)?,
    })
}

/// The elements of `l`'s view of `data`, in row-major order: borrowed when the view is
/// contiguous (from `start_offset`), copied element by element along the strides otherwise.
fn contiguous<'a, T: Copy>(data: &'a [T], l: &Layout) -> candle_core::Result<Cow<'a, [T]>> {
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

fn weights_f32<T: Element>(w: &[T]) -> Vec<f32> {
    w.iter().map(|v| v.to_f32()).collect()
}

fn forward_typed<T: Element>(
    dims: &FusionDims,
    x: &[T],
    lx: &Layout,
    w: &[T],
    lw: &Layout,
) -> candle_core::Result<Vec<T>> {
    let x = contiguous(x, lx)?;
    let w = weights_f32(&contiguous(w, lw)?);
    let mut y = vec![T::from_f32(0.0); dims.len()];
    if !dims.is_empty() {
        cpu_kernel::forward(dims, &x, &w, &mut y);
    }
    Ok(y)
}

/// Which gradient a backward op computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grad {
    Input,
    Weight,
}

fn backward_typed<T: Element>(
    grad: Grad,
    dims: &FusionDims,
    (x, lx): (&[T], &Layout),
    (w, lw): (&[T], &Layout),
    (dy, ldy): (&[T], &Layout),
) -> candle_core::Result<Vec<T>> {
    let w = weights_f32(&contiguous(w, lw)?);
    let dy = contiguous(dy, ldy)?;
    let zero = T::from_f32(0.0);
    match grad {
        Grad::Input => {
            let mut dx = vec![zero; dims.len()];
            if !dims.is_empty() {
                // The kernel does not read `x` when only `dx` is asked for; it gets `dy` (same
                // shape) so that `x` need not be made contiguous.
                cpu_kernel::backward(dims, &dy, &w, &dy, Some(&mut dx), None);
            }
            Ok(dx)
        }
        Grad::Weight => {
            let x = contiguous(x, lx)?;
            let mut dw = vec![zero; dims.depth * dims.depth * dims.channels];
            if !dims.is_empty() {
                cpu_kernel::backward(dims, &x, &w, &dy, None, Some(&mut dw));
            }
            Ok(dw)
        }
    }
}

/// `y = fuse(x, w)` as a candle op: `x` `[B, C, D, H, W]`, `w` `[D, D, C]`, same dtype.
#[derive(Debug, Clone, Copy, Default)]
pub struct FusionOp;

impl CustomOp2 for FusionOp {
    fn name(&self) -> &'static str {
        FORWARD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dims = check_forward(&info(op, "x", s1, l1)?, &info(op, "w", s2, l2)?)
            .map_err(|e| candle_err(op, e))?;
        let y = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(forward_typed(&dims, x, l1, w, l2)?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w)) => {
                CpuStorage::F16(forward_typed(&dims, x, l1, w, l2)?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                CpuStorage::BF16(forward_typed(&dims, x, l1, w, l2)?)
            }
            _ => candle_core::bail!("{op}: `x` and `w` must share a dtype (f32, f16 or bf16)"),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::candle_cuda::{arg, forward};
        let op = self.name();
        let (xa, wa) = (arg(op, "x", s1, l1)?, arg(op, "w", s2, l2)?);
        let dims = check_forward(&xa, &wa).map_err(|e| candle_err(op, e))?;
        let (x, w) = ((s1, l1), (s2, l2));
        let y = with_dtype!(xa.dtype(), T => forward::<T>(op, &dims, x, w)?);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, dy, &FusionGradOp(Grad::Input))?;
        let dw = x.apply_op3_no_bwd(w, dy, &FusionGradOp(Grad::Weight))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// One gradient of the fusion, from `(x, w, dy)`: a3d's own backward kernels.
struct FusionGradOp(Grad);

impl CustomOp3 for FusionGradOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Grad::Input => "a3d-fusion-grad-input",
            Grad::Weight => "a3d-fusion-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dims = check_backward(
            &info(op, "x", s1, l1)?,
            &info(op, "w", s2, l2)?,
            &info(op, "dy", s3, l3)?,
        )
        .map_err(|e| candle_err(op, e))?;
        let g = self.0;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(dy)) => {
                CpuStorage::F32(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w), CpuStorage::F16(dy)) => {
                CpuStorage::F16(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w), CpuStorage::BF16(dy)) => {
                CpuStorage::BF16(backward_typed(g, &dims, (x, l1), (w, l2), (dy, l3))?)
            }
            _ => candle_core::bail!("{op}: `x`, `w` and `dy` must share a dtype"),
        };
        let shape = match g {
            Grad::Input => l1.shape().clone(),
            Grad::Weight => l2.shape().clone(),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::candle_cuda::{arg, gradient};
        let op = self.name();
        let xa = arg(op, "x", s1, l1)?;
        let dims = check_backward(&xa, &arg(op, "w", s2, l2)?, &arg(op, "dy", s3, l3)?)
            .map_err(|e| candle_err(op, e))?;
        let input = matches!(self.0, Grad::Input);
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let out = with_dtype!(xa.dtype(), T => gradient::<T>(op, input, &dims, args.0, args.1, args.2)?);
        let shape = if input {
            l1.shape().clone()
        } else {
            l2.shape().clone()
        };
        Ok((out, shape))
    }
}

/// `y = fuse(x, w)`: `x` `[B, C, D, H, W]`, `w` `[D, D, C]` (input slice, output slice,
/// channel), both f32, f16 or bf16 on the CPU. Differentiable with respect to both.
pub fn fuse(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2(w, FusionOp)
}

/// Name of the A3DConv op, as candle reports it in errors.
const A3DCONV_NAME: &str = "a3dconv";

/// A candle CPU argument as an a3d host tensor of the same dtype (a contiguous copy).
fn host_tensor(
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

/// The packed parameter vector (`conv_weight` flattened, then `bias` when there is one) as
/// a3d host tensors of its dtype: `conv_weight` `[O, C, kh, kw]` and `bias` `[O]`.
fn host_params(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    weight_shape: [usize; 4],
    bias: bool,
) -> candle_core::Result<(crate::Tensor, Option<crate::Tensor>)> {
    fn typed<T: HostElement>(
        op: &str,
        v: &[T],
        l: &Layout,
        weight_shape: [usize; 4],
        bias: bool,
    ) -> candle_core::Result<(crate::Tensor, Option<crate::Tensor>)> {
        let err = |e| candle_err(op, e);
        let n = element_count(&weight_shape).map_err(err)?;
        let expected = n + if bias { weight_shape[0] } else { 0 };
        if l.dims() != [expected] {
            candle_core::bail!(
                "{op}: `params` must have shape [{expected}] (conv_weight {weight_shape:?} \
                 flattened{}), got {:?}",
                if bias { ", then bias" } else { "" },
                l.dims()
            );
        }
        let v = contiguous(v, l)?;
        let weight = crate::Tensor::from_slice(&v[..n], &weight_shape).map_err(err)?;
        let bias = bias
            .then(|| crate::Tensor::from_slice(&v[n..], &[weight_shape[0]]))
            .transpose()
            .map_err(err)?;
        Ok((weight, bias))
    }
    match s {
        CpuStorage::F32(v) => typed(op, v, l, weight_shape, bias),
        CpuStorage::F16(v) => typed(op, v, l, weight_shape, bias),
        CpuStorage::BF16(v) => typed(op, v, l, weight_shape, bias),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: `params` has dtype {:?}, expected f32, f16 or bf16",
            other.dtype()
        ))
        .bt()),
    }
}

/// An a3d host tensor as candle CPU storage of the same dtype.
fn cpu_storage(op: &str, t: crate::Tensor) -> candle_core::Result<CpuStorage> {
    let err = |e| candle_err(op, e);
    Ok(match t.dtype() {
        DType::F32 => CpuStorage::F32(t.into_vec().map_err(err)?),
        DType::F16 => CpuStorage::F16(t.into_vec().map_err(err)?),
        DType::BF16 => CpuStorage::BF16(t.into_vec().map_err(err)?),
    })
}

/// The a3d host tensors holding `parts`' elements one after the other, as a candle tensor of
/// shape `shape` (the parts' common dtype) on `device`.
fn candle_tensor(
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
fn with_cpu_storage<R>(
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

/// A3DConv (fusion when fusion weights are given, then the per-slice 2D convolution) as one
/// candle op on the CPU, running a3d's [`a3dconv::A3dConv`] forward and backward.
///
/// Arguments: `x` `[B, C, D, H, W]`, with fusion the fusion weights `[D, D, C]` (as
/// [`CustomOp3`]: `x.apply_op3(fusion_weight, params, op)`; without fusion [`CustomOp2`]:
/// `x.apply_op2(params, op)`), and `params`: the convolution weight `weight_shape` flattened,
/// followed by the bias `[O]` when `bias` is set. All of one dtype: f32, f16 or bf16.
/// The gradient of `params` is packed the same way.
#[derive(Debug, Clone, Copy)]
struct A3dConvOp {
    /// `[O, C, kh, kw]`
    weight_shape: [usize; 4],
    /// Whether `params` ends with a bias `[O]`.
    bias: bool,
    /// Stride, padding, dilation.
    params: Conv2dParams,
}

impl A3dConvOp {
    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        fusion_weight: Option<(&CpuStorage, &Layout)>,
        (ps, pl): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = A3DCONV_NAME;
        let x = host_tensor(op, "x", xs, xl)?;
        let fw = fusion_weight
            .map(|(s, l)| host_tensor(op, "fusion_weight", s, l))
            .transpose()?;
        let (weight, bias) = host_params(op, ps, pl, self.weight_shape, self.bias)?;
        let layer = a3dconv::A3dConv {
            fusion_weight: fw.as_ref(),
            conv_weight: &weight,
            bias: bias.as_ref(),
            params: self.params,
        };
        let y = layer.forward(&x).map_err(|e| candle_err(op, e))?;
        let shape = Shape::from_dims(y.shape());
        Ok((cpu_storage(op, y)?, shape))
    }

    /// `(dx, d_fusion_weight, d_params)`: one call of a3d's backward, for the arguments candle
    /// tracks (the others get `None`).
    fn backward(
        &self,
        x: &Tensor,
        fusion_weight: Option<&Tensor>,
        params: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = A3DCONV_NAME;
        let want_params = params.track_op();
        let grads = Grads {
            input: x.track_op(),
            conv_weight: want_params,
            bias: want_params && self.bias,
            fusion_weight: fusion_weight.is_some_and(Tensor::track_op),
        };
        if !(grads.input || grads.conv_weight || grads.fusion_weight) {
            return Ok((None, None, None));
        }
        // Each tensor is copied out under its own read lock, one at a time.
        let xh = with_cpu_storage(op, "x", x, |s, l| host_tensor(op, "x", s, l))?;
        let fw = fusion_weight
            .map(|t| {
                with_cpu_storage(op, "fusion_weight", t, |s, l| {
                    host_tensor(op, "fusion_weight", s, l)
                })
            })
            .transpose()?;
        let (weight, bias) = with_cpu_storage(op, "params", params, |s, l| {
            host_params(op, s, l, self.weight_shape, self.bias)
        })?;
        let dyh = with_cpu_storage(op, "dy", dy, |s, l| host_tensor(op, "dy", s, l))?;
        let layer = a3dconv::A3dConv {
            fusion_weight: fw.as_ref(),
            conv_weight: &weight,
            bias: bias.as_ref(),
            params: self.params,
        };
        let g = layer
            .backward(&xh, &dyh, grads)
            .map_err(|e| candle_err(op, e))?;
        let device = x.device();
        let dx =
            g.dx.map(|t| candle_tensor(op, vec![t], x.dims(), device))
                .transpose()?;
        let dfw = match (g.d_fusion_weight, fusion_weight) {
            (Some(t), Some(fw)) => Some(candle_tensor(op, vec![t], fw.dims(), device)?),
            _ => None,
        };
        let dparams = match g.d_conv_weight {
            Some(dw) => {
                let parts = [Some(dw), g.d_bias].into_iter().flatten().collect();
                Some(candle_tensor(op, parts, params.dims(), device)?)
            }
            None => None,
        };
        Ok((dx, dfw, dparams))
    }
}

impl CustomOp2 for A3dConvOp {
    fn name(&self) -> &'static str {
        A3DCONV_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), None, (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, _, dparams) = self.backward(x, None, params, dy)?;
        Ok((dx, dparams))
    }
}

impl CustomOp3 for A3dConvOp {
    fn name(&self) -> &'static str {
        A3DCONV_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), Some((s2, l2)), (s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        fusion_weight: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, Some(fusion_weight), params, dy)
    }
}

/// Configuration of an [`A3dConv`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct A3dConvConfig {
    /// Input channels `I` (`C` of `x`).
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// Slices `D`.
    pub depth: usize,
    /// Square kernel size of the per-slice 2D convolution.
    pub kernel_size: usize,
    /// Stride of the 2D convolution.
    pub stride: usize,
    /// Zero padding of the 2D convolution.
    pub padding: usize,
    /// Dilation of the 2D convolution.
    pub dilation: usize,
    /// Groups of the 2D convolution.
    pub groups: usize,
    /// Whether the convolution has a bias.
    pub bias: bool,
    /// Whether the layer fuses its slices first (`adaptive_align_weights`).
    pub fusion: bool,
}

impl A3dConvConfig {
    /// A 3x3, stride 1, padding 1 layer with bias and fusion.
    pub fn new(in_channels: usize, out_channels: usize, depth: usize) -> Self {
        A3dConvConfig {
            in_channels,
            out_channels,
            depth,
            kernel_size: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
            bias: true,
            fusion: true,
        }
    }
}

/// The A3D layer: optional fusion of the D slices, then one 2D convolution per slice.
/// `[B, I, D, H, W]` in, `[B, O, D, H', W']` out.
///
/// On the CPU with `groups == 1` the layer is one custom op running a3d's A3DConv operator,
/// forward and backward (see the [module documentation](self) for how its parameters are
/// packed). With `groups > 1`, which a3d's operator does not support, and on other devices
/// (CUDA with feature `candle-cuda`), it is [`fuse`] followed by candle's `conv2d`.
#[derive(Debug, Clone)]
pub struct A3dConv {
    align: Option<Tensor>,
    conv: Conv2d,
    config: A3dConvConfig,
}

impl A3dConv {
    /// Builds the layer from `vb` with the reference parameter names: `weight`
    /// `[O, I/groups, k, k]`, `bias` `[O]`, `adaptive_align_weights` `[D, D, I]`.
    ///
    /// New variables get the reference initialisation: fusion weights identity + U(-0.1, 0.1),
    /// convolution weights Kaiming-uniform (`candle_nn::init::DEFAULT_KAIMING_UNIFORM`: ReLU gain,
    /// fan in, U(-sqrt(6/fan_in), sqrt(6/fan_in))), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    /// fan_in = I/groups * k * k. Existing variables (a loaded checkpoint) are used as they are.
    pub fn new(config: A3dConvConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let c = config;
        if c.groups == 0
            || !c.in_channels.is_multiple_of(c.groups)
            || !c.out_channels.is_multiple_of(c.groups)
        {
            candle_core::bail!(
                "A3dConv: in_channels {} and out_channels {} must be multiples of groups {}",
                c.in_channels,
                c.out_channels,
                c.groups
            );
        }
        let weight = vb.get_with_hints(
            (
                c.out_channels,
                c.in_channels / c.groups,
                c.kernel_size,
                c.kernel_size,
            ),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_UNIFORM,
        )?;
        let bias = if c.bias {
            let fan_in = (c.in_channels / c.groups) * c.kernel_size * c.kernel_size;
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            Some(vb.get_with_hints(
                c.out_channels,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        let align = if c.fusion {
            let name = "adaptive_align_weights";
            let existed = vb.contains_tensor(name);
            let w = vb.get_with_hints(
                (c.depth, c.depth, c.in_channels),
                name,
                Init::Uniform { lo: -0.1, up: 0.1 },
            )?;
            if !existed {
                // A new variable: add the identity in place, so that the variable itself (for
                // example in a VarMap) holds identity + U(-0.1, 0.1).
                let eye = Tensor::eye(c.depth, w.dtype(), w.device())?.unsqueeze(2)?;
                let init = w.broadcast_add(&eye)?;
                w.slice_set(&init, 0, 0)?;
            }
            Some(w)
        } else {
            None
        };
        let cfg = Conv2dConfig {
            padding: c.padding,
            stride: c.stride,
            dilation: c.dilation,
            groups: c.groups,
            ..Default::default()
        };
        Ok(A3dConv {
            align,
            conv: Conv2d::new(weight, bias, cfg),
            config,
        })
    }

    /// The fusion weights `[D, D, I]`, when the layer fuses.
    pub fn adaptive_align_weights(&self) -> Option<&Tensor> {
        self.align.as_ref()
    }

    /// The convolution weight `[O, I/groups, k, k]`.
    pub fn weight(&self) -> &Tensor {
        self.conv.weight()
    }

    /// The convolution bias `[O]`, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.conv.bias()
    }

    /// The layer's configuration.
    pub fn config(&self) -> &A3dConvConfig {
        &self.config
    }

    /// Whether `x` takes the a3d custom op (CPU, `groups == 1`) rather than fusion + candle's
    /// `conv2d`.
    fn uses_a3d_op(&self, x: &Tensor) -> bool {
        self.config.groups == 1 && x.device().is_cpu()
    }

    /// The layer as one a3d custom op (CPU, `groups == 1`).
    fn forward_a3d(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.conv.weight();
        let (o, c, kh, kw) = weight.dims4()?;
        let cfg = &self.config;
        let op = A3dConvOp {
            weight_shape: [o, c, kh, kw],
            bias: self.conv.bias().is_some(),
            params: Conv2dParams {
                stride: [cfg.stride; 2],
                padding: [cfg.padding; 2],
                dilation: [cfg.dilation; 2],
            },
        };
        // One parameter vector: candle's autograd splits its gradient back to weight and bias.
        let flat = weight.flatten_all()?;
        let params = match self.conv.bias() {
            Some(bias) => Tensor::cat(&[&flat, bias], 0)?,
            None => flat,
        };
        match &self.align {
            Some(align) => x.apply_op3(align, &params, op),
            None => x.apply_op2(&params, op),
        }
    }

    /// Fusion, then candle's `conv2d` on the `B * D` slices.
    fn forward_conv2d(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        let x = match &self.align {
            Some(align) => fuse(x, align)?,
            None => x.clone(),
        };
        let slices = x.permute((0, 2, 1, 3, 4))?.reshape((b * d, c, h, w))?;
        let y = self.conv.forward(&slices)?;
        let (_, o, h2, w2) = y.dims4()?;
        y.reshape((b, d, o, h2, w2))?.permute((0, 2, 1, 3, 4))
    }
}

impl Module for A3dConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.uses_a3d_op(x) {
            self.forward_a3d(x)
        } else {
            self.forward_conv2d(x)
        }
    }
}
