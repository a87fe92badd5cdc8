//! Batch normalisation + ReLU, the pre-activation of every dense layer of the detector
//! (`BatchNorm3d -> ReLU -> A3DConv`, reference-detector.md sections 2.2-2.3).
//!
//! - [`channel_stats`]: per-channel mean and (biased) variance of `x[B, C, ...]` over every axis
//!   but the channel, in one pass; float64 partial sums over fixed chunks reduced in a fixed
//!   order, so the result is the same bits for any thread count.
//! - [`Affine`]: the per-channel `scale`, `shift` a batch norm amounts to (batch statistics in
//!   training, running statistics in evaluation), and [`update_running`] for the running
//!   statistics (momentum 0.1, unbiased variance, as PyTorch).
//! - [`bn_relu_forward`] / [`bn_relu_backward`]: `y = max(x * scale[c] + shift[c], 0)` and its
//!   gradients `dx` (through the ReLU mask and the affine), `d_scale`, `d_shift` (deterministic).
//!
//! The gradient through the batch statistics themselves (training mode) is the chain rule from
//! `d_scale` and `d_shift` onward; `a3d::candle::BnReluA3dConv` lets candle's autograd do it.

pub(crate) mod cpu_kernel;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "emulation")]
mod emulated;
#[cfg(any(feature = "cuda", feature = "emulation"))]
pub(crate) mod launch;
#[doc(hidden)]
pub mod reference;

use crate::ops::common::{check_dtype, check_shape};
use crate::{DType, Error, Result, Tensor};

/// PyTorch's default `eps` of `BatchNorm3d`.
pub const DEFAULT_EPS: f32 = 1e-5;
/// PyTorch's default `momentum` of `BatchNorm3d`.
pub const DEFAULT_MOMENTUM: f32 = 0.1;

/// Per-channel statistics of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Biased variance (divided by `count`) per channel: what training-mode BN normalises with.
    pub var: Vec<f32>,
    /// Values per channel (`B * D * H * W`).
    pub count: usize,
}

/// `[B, C, rest...]`: batch, channels, values per (batch, channel) plane.
pub(crate) fn planes(arg: &'static str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::Rank {
            arg,
            expected: 5,
            layout: "[B, C, D, H, W] (any rank >= 2 with channels second)",
            got: shape.to_vec(),
        });
    }
    let rest = crate::tensor::element_count(&shape[2..])?;
    crate::tensor::element_count(shape)?;
    Ok((shape[0], shape[1], rest))
}

/// Mean and biased variance of every channel of `x` (`[B, C, ...]`).
pub fn channel_stats(x: &Tensor) -> Result<ChannelStats> {
    crate::dtype::with_dtype!(x.dtype(), T => channel_stats_of::<T>(x.shape(), x.as_slice::<T>()?))
}

/// [`channel_stats`] of the row-major `data` of `shape`.
pub(crate) fn channel_stats_of<T: crate::tensor::HostElement>(
    shape: &[usize],
    data: &[T],
) -> Result<ChannelStats> {
    let (b, c, rest) = planes("x", shape)?;
    if data.len() != b * c * rest {
        return Err(Error::InvalidArgument {
            arg: "x",
            message: format!("{} values for shape {shape:?}", data.len()),
        });
    }
    let (sum, sumsq) = cpu_kernel::sums::<T>(data, b, c, rest);
    let count = b * rest;
    let n = count.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    Ok(ChannelStats {
        var: sumsq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n - m * m).max(0.0) as f32)
            .collect(),
        mean: mean.into_iter().map(|m| m as f32).collect(),
        count,
    })
}

/// The per-channel affine map of a batch norm: `x * scale[c] + shift[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// `weight / sqrt(var + eps)`.
    pub scale: Vec<f32>,
    /// `bias - mean * scale`.
    pub shift: Vec<f32>,
}

impl Affine {
    /// Folds a batch norm's parameters and statistics (batch or running) into scale and shift.
    pub fn from_batch_norm(
        weight: &[f32],
        bias: &[f32],
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Affine> {
        let c = weight.len();
        for (arg, len) in [
            ("bias", bias.len()),
            ("mean", mean.len()),
            ("var", var.len()),
        ] {
            check_shape(arg, &[c], &[len])?;
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::InvalidArgument {
                arg: "eps",
                message: format!("{eps} must be finite and non-negative"),
            });
        }
        if let Some(i) = var.iter().position(|&v| v.is_nan() || v + eps <= 0.0) {
            return Err(Error::InvalidArgument {
                arg: "var",
                message: format!("channel {i}: var + eps = {} is not positive", var[i] + eps),
            });
        }
        let scale: Vec<f32> = weight
            .iter()
            .zip(var)
            .map(|(w, v)| w / (v + eps).sqrt())
            .collect();
        let shift = bias
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(Affine { scale, shift })
    }

    pub(crate) fn check(&self, channels: usize) -> Result<()> {
        check_shape("scale", &[channels], &[self.scale.len()])?;
        check_shape("shift", &[channels], &[self.shift.len()])
    }
}

/// Updates running statistics the way PyTorch's `BatchNorm` does in training mode:
/// `running = (1 - momentum) * running + momentum * batch`, with the unbiased batch variance
/// (`var * count / (count - 1)`).
pub fn update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    batch: &ChannelStats,
    momentum: f32,
) -> Result<()> {
    let c = batch.mean.len();
    check_shape("running_mean", &[c], &[running_mean.len()])?;
    check_shape("running_var", &[c], &[running_var.len()])?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::InvalidArgument {
            arg: "momentum",
            message: format!("{momentum} is outside [0, 1]"),
        });
    }
    let unbias = if batch.count > 1 {
        batch.count as f64 / (batch.count - 1) as f64
    } else {
        1.0
    };
    for i in 0..c {
        running_mean[i] = (1.0 - momentum) * running_mean[i] + momentum * batch.mean[i];
        running_var[i] =
            (1.0 - momentum) * running_var[i] + momentum * (batch.var[i] as f64 * unbias) as f32;
    }
    Ok(())
}

/// `y = max(x * scale[c] + shift[c], 0)` in `x`'s dtype.
pub fn bn_relu_forward(x: &Tensor, affine: &Affine) -> Result<Tensor> {
    let (b, c, rest) = planes("x", x.shape())?;
    affine.check(c)?;
    let mut y = Tensor::zeros(x.shape(), x.dtype())?;
    crate::dtype::with_dtype!(x.dtype(), T => cpu_kernel::forward::<T>(
        x.as_slice::<T>()?, affine, b, c, rest, y.as_mut_slice::<T>()?,
    ));
    Ok(y)
}

/// Checks the arguments of the fused BN-ReLU-fusion forward: `x` `[B, C, D, H, W]`, the affine
/// map of C channels, the fusion weights `[D, D, C]` of `x`'s dtype when given.
pub(crate) fn check_forward(x: &Tensor, affine: &Affine, w: Option<&Tensor>) -> Result<()> {
    let dims = crate::fusion::FusionDims::from_input_shape(x.shape())?;
    affine.check(dims.channels)?;
    if let Some(w) = w {
        dims.check_weight_shape("w", w.shape())?;
        check_dtype("w", x.dtype(), w.dtype())?;
    }
    Ok(())
}

/// `fusion(relu(x * scale + shift), w)` (or the BN-ReLU alone without `w`) on the CPU: the two
/// steps one after the other (the GPU runs them as one kernel).
pub fn bn_relu_fusion_forward(x: &Tensor, affine: &Affine, w: Option<&Tensor>) -> Result<Tensor> {
    check_forward(x, affine, w)?;
    let a = bn_relu_forward(x, affine)?;
    match w {
        Some(w) => crate::fusion::forward(&a, w),
        None => Ok(a),
    }
}

/// The gradients of [`bn_relu_forward`] given `dy`.
#[derive(Debug, Clone, PartialEq)]
pub struct BnReluGradients {
    /// `dy * [x * scale + shift > 0] * scale`, `x`'s shape and dtype.
    pub dx: Tensor,
    /// `sum dy * mask * x` per channel.
    pub d_scale: Vec<f32>,
    /// `sum dy * mask` per channel.
    pub d_shift: Vec<f32>,
}

/// `dx`, `d_scale` and `d_shift` of `y = bn_relu_forward(x, affine)`.
pub fn bn_relu_backward(x: &Tensor, affine: &Affine, dy: &Tensor) -> Result<BnReluGradients> {
    let (b, c, rest) = planes("x", x.shape())?;
    affine.check(c)?;
    check_shape("dy", x.shape(), dy.shape())?;
    check_dtype("dy", x.dtype(), dy.dtype())?;
    let mut dx = Tensor::zeros(x.shape(), x.dtype())?;
    let (ds, dt) = crate::dtype::with_dtype!(x.dtype(), T => cpu_kernel::backward::<T>(
        x.as_slice::<T>()?, affine, dy.as_slice::<T>()?, b, c, rest, dx.as_mut_slice::<T>()?,
    ));
    Ok(BnReluGradients {
        dx,
        d_scale: ds,
        d_shift: dt,
    })
}

/// A batch norm's learned parameters and `eps`, for the training-mode passes.
#[derive(Debug, Clone, Copy)]
pub struct BatchNorm<'a> {
    /// `[C]` (`norm.weight`).
    pub weight: &'a [f32],
    /// `[C]` (`norm.bias`).
    pub bias: &'a [f32],
    /// Added to the variance ([`DEFAULT_EPS`]).
    pub eps: f32,
}

/// The gradients of the training-mode BN-ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainGradients {
    /// `dx` through the ReLU, the affine and the batch statistics; `x`'s shape and dtype.
    pub dx: Tensor,
    /// `d weight` per channel.
    pub d_weight: Vec<f32>,
    /// `d bias` per channel.
    pub d_bias: Vec<f32>,
}

impl BatchNorm<'_> {
    /// Training mode: normalises with the batch's own statistics, `y = relu(bn(x))`. Returns
    /// `y` and the statistics (for [`update_running`] and [`BatchNorm::train_backward`]).
    pub fn train_forward(&self, x: &Tensor) -> Result<(Tensor, ChannelStats)> {
        let stats = channel_stats(x)?;
        let a = Affine::from_batch_norm(self.weight, self.bias, &stats.mean, &stats.var, self.eps)?;
        Ok((bn_relu_forward(x, &a)?, stats))
    }

    /// Evaluation mode: the running statistics folded into one affine map.
    pub fn eval_affine(&self, running_mean: &[f32], running_var: &[f32]) -> Result<Affine> {
        Affine::from_batch_norm(self.weight, self.bias, running_mean, running_var, self.eps)
    }

    /// The training-mode gradients given the batch statistics `stats` of the forward pass and
    /// `dy`: with `m` the ReLU mask, `g = m * dy`, `xhat = (x - mean) / sqrt(var + eps)`:
    /// `d_bias = sum g`, `d_weight = sum g * xhat`,
    /// `dx = weight / sqrt(var + eps) * (g - (d_bias + xhat * d_weight) / N)`.
    /// Two passes over `x` and `dy` (the sums, then `dx`); the sums are deterministic.
    pub fn train_backward(
        &self,
        x: &Tensor,
        stats: &ChannelStats,
        dy: &Tensor,
    ) -> Result<TrainGradients> {
        let (b, c, rest) = planes("x", x.shape())?;
        check_shape("dy", x.shape(), dy.shape())?;
        check_dtype("dy", x.dtype(), dy.dtype())?;
        let a = Affine::from_batch_norm(self.weight, self.bias, &stats.mean, &stats.var, self.eps)?;
        let (sx, sg) = crate::dtype::with_dtype!(x.dtype(), T => cpu_kernel::masked_sums::<T>(
            x.as_slice::<T>()?, &a, dy.as_slice::<T>()?, b, c, rest,
        ));
        let (p, q, d_weight, d_bias) = self.statistics_terms(stats, &sx, &sg);
        let mut dx = Tensor::zeros(x.shape(), x.dtype())?;
        crate::dtype::with_dtype!(x.dtype(), T => cpu_kernel::train_input_grad::<T>(
            x.as_slice::<T>()?, &a, dy.as_slice::<T>()?, &p, &q, c, rest, dx.as_mut_slice::<T>()?,
        ));
        Ok(TrainGradients {
            dx,
            d_weight,
            d_bias,
        })
    }

    /// The checks and per-channel terms both prologue backwards share: `(C, values per plane,
    /// p, q, d_weight, d_bias)` for an input of `shape` and its gradient `dx`.
    #[allow(clippy::type_complexity)]
    fn prologue_terms(
        &self,
        shape: &[usize],
        dx: &Tensor,
        stats: &ChannelStats,
        d_scale: &[f32],
        d_shift: &[f32],
    ) -> Result<(usize, usize, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (_, c, rest) = planes("x", shape)?;
        check_shape("dx", shape, dx.shape())?;
        check_shape("d_scale", &[c], &[d_scale.len()])?;
        check_shape("d_shift", &[c], &[d_shift.len()])?;
        let sx: Vec<f64> = d_scale.iter().map(|&v| v as f64).collect();
        let sg: Vec<f64> = d_shift.iter().map(|&v| v as f64).collect();
        let (p, q, d_weight, d_bias) = self.statistics_terms(stats, &sx, &sg);
        Ok((c, rest, p, q, d_weight, d_bias))
    }

    /// From `d_scale = sum g * x` and `d_shift = sum g` (`g` the gradient after the ReLU mask,
    /// e.g. the prologue gradients of [`crate::a3dconv::A3dConv::backward_with`]): the per-channel
    /// `p`, `q` with `dx = scale * g + p * x + q`, and `d_weight`, `d_bias`.
    fn statistics_terms(
        &self,
        stats: &ChannelStats,
        sx: &[f64],
        sg: &[f64],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = sx.len();
        let n = stats.count.max(1) as f64;
        let (mut p, mut q) = (vec![0.0f32; c], vec![0.0f32; c]);
        let (mut d_weight, mut d_bias) = (vec![0.0f32; c], vec![0.0f32; c]);
        for ch in 0..c {
            let invstd = 1.0 / (stats.var[ch] as f64 + self.eps as f64).sqrt();
            let mean = stats.mean[ch] as f64;
            // sum g * xhat = invstd * (sum g x - mean * sum g)
            let dw = invstd * (sx[ch] - mean * sg[ch]);
            let db = sg[ch];
            let s = self.weight[ch] as f64 * invstd;
            // dx = s g - s/N (db + (x - mean) invstd dw) = s g + p x + q
            p[ch] = (-s * invstd * dw / n) as f32;
            q[ch] = (-s / n * (db - mean * invstd * dw)) as f32;
            d_weight[ch] = dw as f32;
            d_bias[ch] = db as f32;
        }
        (p, q, d_weight, d_bias)
    }

    /// The training-mode gradients when the BN-ReLU ran as a prologue of the next layer:
    /// `dx` holds `scale * g` (what [`crate::a3dconv::A3dConv::backward_with`] returns as its
    /// `dx`) and gets the terms through the batch statistics added in place (one pass over `x`
    /// and `dx`); returns `(d_weight, d_bias)`.
    pub fn train_backward_from_prologue(
        &self,
        x: &Tensor,
        stats: &ChannelStats,
        d_scale: &[f32],
        d_shift: &[f32],
        dx: &mut Tensor,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        check_dtype("dx", x.dtype(), dx.dtype())?;
        let (c, rest, p, q, d_weight, d_bias) =
            self.prologue_terms(x.shape(), dx, stats, d_scale, d_shift)?;
        crate::dtype::with_dtype!(x.dtype(), T => cpu_kernel::add_affine_of::<T>(
            x.as_slice::<T>()?, &p, &q, c, rest, dx.as_mut_slice::<T>()?,
        ));
        Ok((d_weight, d_bias))
    }

    /// [`BatchNorm::train_backward_from_prologue`] of `x` given as its shape and f32 values
    /// (candle's buffer, uncopied); `dx` of any dtype (half types through f32).
    pub(crate) fn train_backward_from_prologue_values(
        &self,
        (shape, x): (&[usize], &[f32]),
        stats: &ChannelStats,
        d_scale: &[f32],
        d_shift: &[f32],
        dx: &mut Tensor,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        check_shape("x", &[dx.len()], &[x.len()])?;
        let (c, rest, p, q, d_weight, d_bias) =
            self.prologue_terms(shape, dx, stats, d_scale, d_shift)?;
        if dx.dtype() == DType::F32 {
            cpu_kernel::add_affine_of::<f32>(x, &p, &q, c, rest, dx.as_mut_slice::<f32>()?);
        } else {
            let mut wide = dx.to_f32_vec();
            cpu_kernel::add_affine_of::<f32>(x, &p, &q, c, rest, &mut wide);
            *dx = Tensor::from_vec(wide, shape)?.to_dtype(dx.dtype());
        }
        Ok((d_weight, d_bias))
    }
}
