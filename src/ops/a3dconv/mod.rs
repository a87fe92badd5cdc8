//! A3DConv: optional A3D fusion, then the same 2D convolution applied to every slice.
//!
//! ```text
//! z[b,c,d,h,w]    = sum_e x[b,c,e,h,w] * fw[e,d,c]              (fusion; z = x without it)
//! y[b,o,d,i,j]    = bias[o] + sum_{c,p,q} cw[o,c,p,q] * z[b,c,d, i*sh - ph + p*dh, j*sw - pw + q*dw]
//! ```
//!
//! `x` is `[B, C, D, H, W]`, the fusion weights `fw` are `[D, D, C]`, the convolution weight `cw`
//! is `[O, C, kh, kw]` (PyTorch's conv2d layout and parameter name `weight`), the bias `[O]`;
//! `y` is `[B, O, D, H', W']`. Taps outside the input read zero (padding). Storage may be f32,
//! f16 or bf16 (all arguments alike); arithmetic is f32, and every gradient is reduced in an
//! order that does not depend on the thread count.
//!
//! Layout of this op: `cpu_kernel.rs` (task slabs, fusion per slab, im2col + GEMM, reductions),
//! `direct.rs` (the direct AVX-512 stride-1 convolution), `reference.rs` (float64 direct
//! convolution), tests in `tests/a3dconv.rs` and `tests/cpu_isa.rs`, bench `a3d bench a3dconv`,
//! `benches/a3dconv.rs` and `bench/torch_a3dconv.py` (the PyTorch side).
//!
//! ```
//! use a3d::a3dconv::{A3dConv, Conv2dParams, Grads};
//! use a3d::{fusion, Tensor};
//!
//! let (b, c, d, h, w, o) = (1, 3, 5, 9, 7, 4);
//! let mut rng = a3d::rng::SplitMix64::new(1);
//! let x = Tensor::from_vec(rng.vec_f32(b * c * d * h * w, -1.0, 1.0), &[b, c, d, h, w])?;
//! let fw = fusion::init_weights(d, c, 2)?;
//! let cw = Tensor::from_vec(rng.vec_f32(o * c * 3 * 3, -0.2, 0.2), &[o, c, 3, 3])?;
//! let layer = A3dConv {
//!     fusion_weight: Some(&fw),
//!     conv_weight: &cw,
//!     bias: None,
//!     params: Conv2dParams::padded(1),
//! };
//! let y = layer.forward(&x)?;
//! assert_eq!(y.shape(), &[b, o, d, h, w]);
//! let dy = Tensor::full(y.shape(), 1.0, a3d::DType::F32)?;
//! let g = layer.backward(&x, &dy, Grads::ALL)?;
//! assert_eq!(g.d_fusion_weight.unwrap().shape(), &[d, d, c]);
//! # Ok::<(), a3d::Error>(())
//! ```

mod backward;
pub(crate) mod cpu_kernel;
#[cfg(target_arch = "x86_64")]
mod direct;
mod geometry;
pub mod reference;

use crate::batchnorm::Affine;
use crate::ops::fusion::{check_dtype, check_shape, FusionDims};
use crate::tensor::element_count;
use crate::TensorInfo;
use crate::{DType, Error, Result, Tensor};

/// Stride, padding and dilation of the per-slice convolution, as `[rows, columns]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions; at least 1.
    pub stride: [usize; 2],
    /// Zeros added on each side of the input.
    pub padding: [usize; 2],
    /// Step between kernel taps; at least 1.
    pub dilation: [usize; 2],
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

impl Conv2dParams {
    /// Stride 1, dilation 1, `padding` on every side (`padded(1)` keeps a 3x3 conv's size).
    pub fn padded(padding: usize) -> Self {
        Conv2dParams {
            padding: [padding, padding],
            ..Default::default()
        }
    }
}

/// Sizes of one A3DConv problem, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct A3dConvDims {
    /// Sizes of the input (and of the fusion).
    pub input: FusionDims,
    /// O
    pub out_channels: usize,
    /// `[kh, kw]`
    pub kernel: [usize; 2],
    /// `[H', W']`
    pub out_size: [usize; 2],
    /// Stride, padding and dilation.
    pub params: Conv2dParams,
    /// Whether fusion weights are present.
    pub fused: bool,
}

impl A3dConvDims {
    /// The shape of `y` and `dy`: `[B, O, D, H', W']`.
    pub fn output_shape(&self) -> [usize; 5] {
        let i = &self.input;
        [
            i.batch,
            self.out_channels,
            i.depth,
            self.out_size[0],
            self.out_size[1],
        ]
    }

    /// The shape of the convolution weight: `[O, C, kh, kw]`.
    pub fn conv_weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.input.channels,
            self.kernel[0],
            self.kernel[1],
        ]
    }

    /// Multiply-adds of the convolution (the fusion not counted), times two: the FLOP count
    /// benchmarks quote.
    pub fn conv_flops(&self) -> f64 {
        let i = &self.input;
        2.0 * (i.batch * i.depth) as f64
            * (self.out_channels * self.out_size[0] * self.out_size[1]) as f64
            * (i.channels * self.kernel[0] * self.kernel[1]) as f64
    }

    /// Whether the convolution is a plain matrix product per slice (1x1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.params.stride == [1, 1] && self.params.padding == [0, 0]
    }
}

/// Output length of one spatial dimension, or an error naming the dimension.
fn out_len(
    arg: &'static str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<usize> {
    let invalid = |message: String| Error::InvalidArgument { arg, message };
    if stride == 0 {
        return Err(invalid("stride must be at least 1".into()));
    }
    if dilation == 0 {
        return Err(invalid("dilation must be at least 1".into()));
    }
    let span = (kernel - 1)
        .checked_mul(dilation)
        .and_then(|s| s.checked_add(1))
        .ok_or_else(|| invalid("dilated kernel extent overflows usize".into()))?;
    let padded = padding
        .checked_mul(2)
        .and_then(|p| p.checked_add(input))
        .ok_or_else(|| invalid("padded input size overflows usize".into()))?;
    if span > padded {
        return Err(invalid(format!(
            "dilated kernel extent {span} exceeds the padded input size {padded} \
             (input {input}, padding {padding})"
        )));
    }
    Ok((padded - span) / stride + 1)
}

/// Validates the forward arguments and returns the problem's sizes.
///
/// Checks, in order: `x` rank and element count, `conv_weight` rank `[O, C, kh, kw]` with
/// `x`'s C and non-zero kernel, `fusion_weight` `[D, D, C]`, `bias` `[O]`, dtypes equal to
/// `x`'s, stride and dilation at least 1, a kernel that fits the padded input, and a countable
/// output.
pub fn check_forward<X: TensorInfo, T: TensorInfo>(
    x: &X,
    fusion_weight: Option<&T>,
    conv_weight: &T,
    bias: Option<&T>,
    params: &Conv2dParams,
) -> Result<A3dConvDims> {
    let input = FusionDims::from_input_shape(x.shape())?;
    let &[out_channels, in_channels, kh, kw] = conv_weight.shape() else {
        return Err(Error::Rank {
            arg: "conv_weight",
            expected: 4,
            layout: "[O, C, kh, kw]",
            got: conv_weight.shape().to_vec(),
        });
    };
    if in_channels != input.channels || kh == 0 || kw == 0 {
        return Err(Error::Shape {
            arg: "conv_weight",
            expected: vec![out_channels, input.channels, kh.max(1), kw.max(1)],
            got: conv_weight.shape().to_vec(),
        });
    }
    element_count(conv_weight.shape())?;
    check_dtype("conv_weight", x.dtype(), conv_weight.dtype())?;
    if let Some(fw) = fusion_weight {
        input.check_weight_shape("fusion_weight", fw.shape())?;
        check_dtype("fusion_weight", x.dtype(), fw.dtype())?;
    }
    if let Some(b) = bias {
        check_shape("bias", &[out_channels], b.shape())?;
        check_dtype("bias", x.dtype(), b.dtype())?;
    }
    let oh = out_len(
        "params (rows)",
        input.height,
        kh,
        params.stride[0],
        params.padding[0],
        params.dilation[0],
    )?;
    let ow = out_len(
        "params (columns)",
        input.width,
        kw,
        params.stride[1],
        params.padding[1],
        params.dilation[1],
    )?;
    let dims = A3dConvDims {
        input,
        out_channels,
        kernel: [kh, kw],
        out_size: [oh, ow],
        params: *params,
        fused: fusion_weight.is_some(),
    };
    element_count(&dims.output_shape())?;
    // The im2col rows: C * kh * kw (and O * kh * kw for the input gradient).
    element_count(&[in_channels.max(out_channels), kh, kw])?;
    Ok(dims)
}

/// Validates the backward arguments (forward's, plus `dy` of shape `[B, O, D, H', W']`).
pub fn check_backward<X: TensorInfo, T: TensorInfo>(
    x: &X,
    fusion_weight: Option<&T>,
    conv_weight: &T,
    dy: &X,
    params: &Conv2dParams,
) -> Result<A3dConvDims> {
    let dims = check_forward(x, fusion_weight, conv_weight, None, params)?;
    if dy.shape().len() != 5 {
        return Err(Error::Rank {
            arg: "dy",
            expected: 5,
            layout: "[B, O, D, H', W']",
            got: dy.shape().to_vec(),
        });
    }
    check_shape("dy", &dims.output_shape(), dy.shape())?;
    check_dtype("dy", x.dtype(), dy.dtype())?;
    Ok(dims)
}

/// Which gradients [`A3dConv::backward`] computes; each costs only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grads {
    /// `dx`.
    pub input: bool,
    /// The convolution weight's gradient.
    pub conv_weight: bool,
    /// The bias gradient.
    pub bias: bool,
    /// The fusion weights' gradient (ignored without fusion weights).
    pub fusion_weight: bool,
}

impl Grads {
    /// Every gradient.
    pub const ALL: Grads = Grads {
        input: true,
        conv_weight: true,
        bias: true,
        fusion_weight: true,
    };
    /// The parameters' gradients only (a first layer, whose input needs none).
    pub const PARAMETERS: Grads = Grads {
        input: false,
        conv_weight: true,
        bias: true,
        fusion_weight: true,
    };
}

/// What [`A3dConv::backward`] returns; each field is `Some` when it was requested (and, for the
/// fusion weights, when the layer has them). Dtypes are `x`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// `[B, C, D, H, W]`
    pub dx: Option<Tensor>,
    /// `[O, C, kh, kw]`
    pub d_conv_weight: Option<Tensor>,
    /// `[O]`
    pub d_bias: Option<Tensor>,
    /// `[D, D, C]`
    pub d_fusion_weight: Option<Tensor>,
    /// With a BN-ReLU prologue ([`A3dConv::backward_with`]): `d scale`, `[C]` f32.
    pub d_scale: Option<Vec<f32>>,
    /// With a BN-ReLU prologue: `d shift`, `[C]` f32.
    pub d_shift: Option<Vec<f32>>,
}

/// One A3DConv layer's parameters, borrowed: apply it with [`A3dConv::forward`], train it with
/// [`A3dConv::backward`].
#[derive(Debug, Clone, Copy)]
pub struct A3dConv<'a> {
    /// `[D, D, C]` fusion weights, or `None` for a plain per-slice convolution.
    pub fusion_weight: Option<&'a Tensor>,
    /// `[O, C, kh, kw]`
    pub conv_weight: &'a Tensor,
    /// `[O]`, or `None`.
    pub bias: Option<&'a Tensor>,
    /// Stride, padding, dilation.
    pub params: Conv2dParams,
}

impl A3dConv<'_> {
    /// Validates the layer against `x` and returns the problem's sizes.
    pub fn dims(&self, x: &Tensor) -> Result<A3dConvDims> {
        check_forward(
            x,
            self.fusion_weight,
            self.conv_weight,
            self.bias,
            &self.params,
        )
    }

    /// `y[B, O, D, H', W']` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None)
    }

    /// The layer applied to `max(x * scale[c] + shift[c], 0)` (a batch norm and ReLU before
    /// it, `prologue`), computed as the input is staged: the pre-activated tensor is never
    /// written.
    pub fn forward_with(&self, x: &Tensor, prologue: Option<&Affine>) -> Result<Tensor> {
        self.forward_values(x, &f32_data(x)?, prologue)
    }

    /// [`A3dConv::forward_with`] of an input given as its shape and dtype (`x`) and its values
    /// as f32 (`xf`, row-major): the candle op passes candle's own buffer, uncopied.
    pub(crate) fn forward_values(
        &self,
        x: &impl TensorInfo,
        xf: &[f32],
        prologue: Option<&Affine>,
    ) -> Result<Tensor> {
        let dims = check_forward(
            x,
            self.fusion_weight,
            self.conv_weight,
            self.bias,
            &self.params,
        )?;
        check_prologue(&dims, prologue)?;
        if xf.len() != x.shape().iter().product::<usize>() {
            return Err(Error::InvalidArgument {
                arg: "x",
                message: format!("{} values for shape {:?}", xf.len(), x.shape()),
            });
        }
        let fw = self.fusion_weight.map(Tensor::to_f32_vec);
        let cw = f32_data(self.conv_weight)?;
        let bias = self.bias.map(Tensor::to_f32_vec);
        let y = cpu_kernel::forward(&dims, xf, prologue, fw.as_deref(), &cw, bias.as_deref())?;
        from_f32(y, &dims.output_shape(), x.dtype())
    }

    /// Gradients of `y = self.forward(x)` given `dy`; only those in `grads` are computed.
    pub fn backward(&self, x: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        self.backward_with(x, None, dy, grads)
    }

    /// Gradients of `y = self.forward_with(x, prologue)`: `dx` through the ReLU mask and the
    /// affine, and with a prologue always `d_scale` and `d_shift` (deterministic) besides the
    /// gradients `grads` asks for.
    pub fn backward_with(
        &self,
        x: &Tensor,
        prologue: Option<&Affine>,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        self.backward_values((x, &f32_data(x)?), prologue, (dy, &f32_data(dy)?), grads)
    }

    /// [`A3dConv::backward_with`] of `x` and `dy` given as shape and dtype with their values as
    /// f32 (row-major): the candle op passes candle's own buffers, uncopied.
    pub(crate) fn backward_values<X: TensorInfo>(
        &self,
        (x, xf): (&X, &[f32]),
        prologue: Option<&Affine>,
        (dy, dyf): (&X, &[f32]),
        grads: Grads,
    ) -> Result<Gradients> {
        let dims = check_backward(x, self.fusion_weight, self.conv_weight, dy, &self.params)?;
        for (arg, t, values) in [("x", x, xf), ("dy", dy, dyf)] {
            if values.len() != t.shape().iter().product::<usize>() {
                return Err(Error::InvalidArgument {
                    arg,
                    message: format!("{} values for shape {:?}", values.len(), t.shape()),
                });
            }
        }
        if let Some(b) = self.bias {
            check_shape("bias", &[dims.out_channels], b.shape())?;
            check_dtype("bias", x.dtype(), b.dtype())?;
        }
        let grads = Grads {
            fusion_weight: grads.fusion_weight && dims.fused,
            ..grads
        };
        let fw = self.fusion_weight.map(Tensor::to_f32_vec);
        let cw = f32_data(self.conv_weight)?;
        check_prologue(&dims, prologue)?;
        let g = cpu_kernel::backward(&dims, xf, prologue, fw.as_deref(), &cw, dyf, grads)?;
        let dtype = x.dtype();
        let wrap = |v: Option<Vec<f32>>, shape: &[usize]| -> Result<Option<Tensor>> {
            v.map(|v| from_f32(v, shape, dtype)).transpose()
        };
        Ok(Gradients {
            dx: wrap(g.dx, x.shape())?,
            d_conv_weight: wrap(g.d_conv_weight, &dims.conv_weight_shape())?,
            d_bias: wrap(g.d_bias, &[dims.out_channels])?,
            d_fusion_weight: wrap(g.d_fusion_weight, &dims.input.weight_shape())?,
            d_scale: g.d_prologue.as_ref().map(|p| p.0.clone()),
            d_shift: g.d_prologue.map(|p| p.1),
        })
    }
}

/// A prologue must have one scale and one shift per input channel.
fn check_prologue(dims: &A3dConvDims, prologue: Option<&Affine>) -> Result<()> {
    match prologue {
        Some(a) => a.check(dims.input.channels),
        None => Ok(()),
    }
}

/// The tensor's values as f32: borrowed when stored as f32, widened otherwise.
fn f32_data(t: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    Ok(match t.dtype() {
        DType::F32 => std::borrow::Cow::Borrowed(t.as_slice::<f32>()?),
        _ => std::borrow::Cow::Owned(t.to_f32_vec()),
    })
}

fn from_f32(v: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let t = Tensor::from_vec(v, shape)?;
    Ok(match dtype {
        DType::F32 => t,
        other => t.to_dtype(other),
    })
}
