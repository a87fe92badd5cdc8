//! A3D fusion for [candle](https://github.com/huggingface/candle) (feature `candle`).
//!
//! [`fuse`] applies the fusion operator to candle tensors as a custom op: the forward pass and
//! both gradients run a3d's CPU kernels directly on candle's CPU storage (f32, f16, bf16), and
//! candle's autograd reaches `x` and `w` through them. [`A3dConv`] is the A3D layer: fusion,
//! then a per-slice 2D convolution, with the reference implementation's parameter names.
//!
//! Only the CPU device is implemented; on a CUDA or Metal device candle reports that the op has
//! no implementation there.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::fusion::{check_backward, check_forward, FusionDims, TensorInfo};
use crate::ops::fusion::cpu_kernel;
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
        let y = match xa.dtype() {
            DType::F32 => forward::<f32>(op, &dims, x, w)?,
            DType::F16 => forward::<half::f16>(op, &dims, x, w)?,
            DType::BF16 => forward::<half::bf16>(op, &dims, x, w)?,
        };
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
        let out = match xa.dtype() {
            DType::F32 => gradient::<f32>(op, input, &dims, args.0, args.1, args.2)?,
            DType::F16 => gradient::<half::f16>(op, input, &dims, args.0, args.1, args.2)?,
            DType::BF16 => gradient::<half::bf16>(op, input, &dims, args.0, args.1, args.2)?,
        };
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

    /// The layer's configuration.
    pub fn config(&self) -> &A3dConvConfig {
        &self.config
    }
}

impl Module for A3dConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
