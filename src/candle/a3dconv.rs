//! The A3D layer for candle: [`A3dConv`] (fusion, then a per-slice 2D convolution) with the
//! reference parameter names; on the CPU one custom op running a3d's A3DConv operator.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use super::fuse;
use super::storage::{
    candle_err, candle_tensor, contiguous, cpu_storage, host_f32, host_tensor, with_cpu_storage,
};
use crate::a3dconv::{self, Conv2dParams, Grads};
use crate::tensor::{element_count, HostElement};

/// Name of the A3DConv op, as candle reports it in errors.
const A3DCONV_NAME: &str = "a3dconv";

/// The packed parameter vector (`conv_weight` flattened, then `bias` when there is one) as
/// a3d host tensors of its dtype: `conv_weight` `[O, C, kh, kw]` and `bias` `[O]`.
fn host_params(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    weight_shape: [usize; 4],
    bias: bool,
    extra: usize,
) -> candle_core::Result<(crate::Tensor, Option<crate::Tensor>, Vec<f32>)> {
    fn typed<T: HostElement>(
        op: &str,
        v: &[T],
        l: &Layout,
        weight_shape: [usize; 4],
        bias: bool,
        extra: usize,
    ) -> candle_core::Result<(crate::Tensor, Option<crate::Tensor>, Vec<f32>)> {
        let err = |e| candle_err(op, e);
        let n = element_count(&weight_shape).map_err(err)?;
        let nb = n + if bias { weight_shape[0] } else { 0 };
        let expected = nb + extra;
        if l.dims() != [expected] {
            candle_core::bail!(
                "{op}: `params` must have shape [{expected}] (conv_weight {weight_shape:?} \
                 flattened{}{}), got {:?}",
                if bias { ", then bias" } else { "" },
                if extra > 0 {
                    ", then the norm's weight and bias"
                } else {
                    ""
                },
                l.dims()
            );
        }
        let v = contiguous(v, l)?;
        let weight = crate::Tensor::from_slice(&v[..n], &weight_shape).map_err(err)?;
        let bias = bias
            .then(|| crate::Tensor::from_slice(&v[n..nb], &[weight_shape[0]]))
            .transpose()
            .map_err(err)?;
        Ok((weight, bias, v[nb..].iter().map(|x| x.to_f32()).collect()))
    }
    match s {
        CpuStorage::F32(v) => typed(op, v, l, weight_shape, bias, extra),
        CpuStorage::F16(v) => typed(op, v, l, weight_shape, bias, extra),
        CpuStorage::BF16(v) => typed(op, v, l, weight_shape, bias, extra),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: `params` has dtype {:?}, expected f32, f16 or bf16",
            other.dtype()
        ))
        .bt()),
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
#[derive(Debug, Clone)]
struct A3dConvOp {
    /// `[O, C, kh, kw]`
    weight_shape: [usize; 4],
    /// Whether `params` has a bias `[O]` after the weight.
    bias: bool,
    /// Stride, padding, dilation.
    params: Conv2dParams,
    /// A batch norm + ReLU applied to `x` as the layer's prologue; `params` then ends with the
    /// norm's weight and bias `[C]` each.
    prologue: Option<super::batchnorm::Prologue>,
}

impl A3dConvOp {
    /// Elements of `params` after the weight and bias: the norm's weight and bias.
    fn extra(&self) -> usize {
        if self.prologue.is_some() {
            2 * self.weight_shape[1]
        } else {
            0
        }
    }

    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        fusion_weight: Option<(&CpuStorage, &Layout)>,
        (ps, pl): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = A3DCONV_NAME;
        // Read in place when f32 and contiguous (the usual case): a copy of every layer's input
        // was a tenth of the detector's inference time.
        let x = host_f32(op, "x", xs, xl)?;
        let fw = fusion_weight
            .map(|(s, l)| host_tensor(op, "fusion_weight", s, l))
            .transpose()?;
        let (weight, bias, norm) =
            host_params(op, ps, pl, self.weight_shape, self.bias, self.extra())?;
        let layer = a3dconv::A3dConv {
            fusion_weight: fw.as_ref(),
            conv_weight: &weight,
            bias: bias.as_ref(),
            params: self.params,
        };
        let affine = match &self.prologue {
            Some(p) => Some(p.forward_affine(op, (xl.dims(), &x.values), &norm)?),
            None => None,
        };
        let y = layer
            .forward_values(&x.info, &x.values, affine.as_ref())
            .map_err(|e| candle_err(op, e))?;
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
            // The prologue's gradients need the input-gradient pass anyway.
            input: x.track_op() || (self.prologue.is_some() && want_params),
            conv_weight: want_params,
            bias: want_params && self.bias,
            fusion_weight: fusion_weight.is_some_and(Tensor::track_op),
        };
        if !(grads.input || grads.conv_weight || grads.fusion_weight) {
            return Ok((None, None, None));
        }
        let fw = fusion_weight
            .map(|t| {
                with_cpu_storage(op, "fusion_weight", t, |s, l| {
                    host_tensor(op, "fusion_weight", s, l)
                })
            })
            .transpose()?;
        let (weight, bias, norm) = with_cpu_storage(op, "params", params, |s, l| {
            host_params(op, s, l, self.weight_shape, self.bias, self.extra())
        })?;
        let layer = a3dconv::A3dConv {
            fusion_weight: fw.as_ref(),
            conv_weight: &weight,
            bias: bias.as_ref(),
            params: self.params,
        };
        let affine = match &self.prologue {
            Some(p) => Some(p.backward_affine(op, &norm)?),
            None => None,
        };
        // x and dy are read in place (f32, contiguous) under their read locks, held together
        // for the pass (two different tensors: dy is the gradient of this op's output).
        let (g, d_norm) = with_cpu_storage(op, "x", x, |xs, xl| {
            let xh = host_f32(op, "x", xs, xl)?;
            with_cpu_storage(op, "dy", dy, |ds, dl| {
                let dyh = host_f32(op, "dy", ds, dl)?;
                let mut g = layer
                    .backward_values(
                        (&xh.info, &xh.values),
                        affine.as_ref(),
                        (&dyh.info, &dyh.values),
                        grads,
                    )
                    .map_err(|e| candle_err(op, e))?;
                // The norm's own gradients (through the batch statistics in training mode).
                let d_norm = match &self.prologue {
                    Some(p) => {
                        Some(p.finish_backward(op, (xl.dims(), &xh.values), &norm, &mut g)?)
                    }
                    None => None,
                };
                Ok((g, d_norm))
            })
        })?;
        let device = x.device();
        let dx = match x.track_op() {
            true => {
                g.dx.map(|t| candle_tensor(op, vec![t], x.dims(), device))
                    .transpose()?
            }
            false => None,
        };
        let dfw = match (g.d_fusion_weight, fusion_weight) {
            (Some(t), Some(fw)) => Some(candle_tensor(op, vec![t], fw.dims(), device)?),
            _ => None,
        };
        let dparams = match g.d_conv_weight {
            Some(dw) => {
                let dtype = dw.dtype();
                let norm_part = d_norm
                    .map(|(w, b)| {
                        let mut v = w;
                        v.extend(b);
                        let len = v.len();
                        crate::Tensor::from_vec(v, &[len]).map(|t| t.to_dtype(dtype))
                    })
                    .transpose()
                    .map_err(|e| candle_err(op, e))?;
                let parts = [Some(dw), g.d_bias, norm_part]
                    .into_iter()
                    .flatten()
                    .collect();
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
        self.forward_a3d_with(x, None)
    }

    /// [`A3dConv::forward_a3d`] with a BN-ReLU prologue (`norm`: its weight and bias, appended
    /// to the parameter vector so candle's autograd hands them their gradients).
    pub(crate) fn forward_a3d_with(
        &self,
        x: &Tensor,
        prologue: Option<(super::batchnorm::Prologue, &Tensor, &Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let weight = self.conv.weight();
        let (o, c, kh, kw) = weight.dims4()?;
        let cfg = &self.config;
        let (spec, norm) = match prologue {
            Some((p, w, b)) => (Some(p), Some((w, b))),
            None => (None, None),
        };
        let op = A3dConvOp {
            weight_shape: [o, c, kh, kw],
            bias: self.conv.bias().is_some(),
            params: Conv2dParams {
                stride: [cfg.stride; 2],
                padding: [cfg.padding; 2],
                dilation: [cfg.dilation; 2],
            },
            prologue: spec,
        };
        // One parameter vector: candle's autograd splits its gradient back to weight and bias
        // (and the norm's weight and bias).
        let flat = weight.flatten_all()?;
        let mut parts = vec![flat];
        if let Some(bias) = self.conv.bias() {
            parts.push(bias.clone());
        }
        if let Some((w, b)) = norm {
            parts.push(w.to_dtype(weight.dtype())?);
            parts.push(b.to_dtype(weight.dtype())?);
        }
        let params = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 0)?
        };
        match &self.align {
            Some(align) => x.apply_op3(align, &params, op),
            None => x.apply_op2(&params, op),
        }
    }

    /// Whether [`A3dConv::forward_a3d_with`] applies to `x` (CPU, `groups == 1`).
    pub(crate) fn runs_a3d_op(&self, x: &Tensor) -> bool {
        self.uses_a3d_op(x)
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
