//! The symmetric shift operators TSM and AlignShift: the first `fold` channels take their next
//! slice, the next `fold` their previous slice, the rest pass through, with the same
//! coefficients for every slice (shared/docs/operator.md).
//!
//! ```text
//! fold = C / fold_div
//! c <  fold          y[d] = a*x[d] + n*x[d+1]   (d < D-1),   y[D-1] = e*x[D-1]
//! fold <= c < 2*fold  y[d] = a*x[d] + n*x[d-1]   (d > 0),     y[0]   = e*x[0]
//! c >= 2*fold         y[d] = x[d]
//! TSM          a = 0, n = 1, e = 0
//! AlignShift   alpha = 1 - clamp(ref_thickness / thickness[b], 0, 1) per sample,
//!              a = alpha, n = 1 - alpha, e = alpha with `padding_zero`, else 1
//! ```
//!
//! The backward pass is the transpose of that linear map (neither op has parameters to learn).
//! A term whose coefficient is exactly 0 is left out, so TSM moves values bit for bit (also in
//! f16 and bf16) and never turns an infinity into NaN. Storage f32, f16 or bf16; arithmetic f32.
//!
//! Layout of this op: `cpu_kernel.rs` (CPU), `reference.rs` (float64), `launch.rs` (grids, used
//! by CUDA and the emulation), `kernels/shift.cu`; tests `tests/shift.rs`; bench
//! `a3d bench tsm|alignshift` and `benches/context_ops.rs`.

pub(crate) mod cpu_kernel;
#[cfg(feature = "cuda")]
#[path = "cuda_kernel.rs"]
pub mod cuda;
#[cfg(feature = "emulation")]
pub(crate) mod emulated;
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) mod launch;
pub mod reference;

use crate::dtype::with_dtype;
use crate::fusion::FusionDims;
use crate::ops::common::{check_dtype, TensorInfo};
use crate::{Error, Result, Tensor};

/// One configured shift: TSM or AlignShift with its thicknesses. Build it with [`Shift::tsm`]
/// or [`Shift::align_shift`]; run it with [`Shift::forward`] and [`Shift::backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    fold_div: usize,
    mode: Mode,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Tsm,
    AlignShift {
        thickness: Vec<f32>,
        ref_thickness: f32,
        padding_zero: bool,
    },
}

/// Coefficients of one sample: `a` (own slice), `n` (neighbour slice), `e` (own slice at the
/// open end). The kernels take `[B, 3]` of them.
pub(crate) type SampleCoef = [f32; 3];

impl Shift {
    /// The reference's `n_fold`: an eighth of the channels shift each way.
    pub const DEFAULT_FOLD_DIV: usize = 8;
    /// The reference's `ref_thickness` in mm (the detector's slice spacing).
    pub const DEFAULT_REF_THICKNESS: f32 = 2.0;

    /// TSM with `fold = C / fold_div` channels shifted each way. `fold_div` must be at least 1
    /// (and at most C, checked when the op runs).
    pub fn tsm(fold_div: usize) -> Result<Shift> {
        check_fold_div(fold_div)?;
        Ok(Shift {
            fold_div,
            mode: Mode::Tsm,
        })
    }

    /// AlignShift: `thickness[b]` is sample b's slice interval in mm (finite, > 0; one per
    /// sample of the batch), `ref_thickness` the spacing the network expects (finite, > 0;
    /// [`Shift::DEFAULT_REF_THICKNESS`]), `padding_zero` scales the open ends by alpha instead
    /// of passing them through.
    pub fn align_shift(
        thickness: &[f32],
        ref_thickness: f32,
        padding_zero: bool,
        fold_div: usize,
    ) -> Result<Shift> {
        check_fold_div(fold_div)?;
        if !(ref_thickness.is_finite() && ref_thickness > 0.0) {
            return Err(Error::InvalidArgument {
                arg: "ref_thickness",
                message: format!("must be a finite number of mm > 0, got {ref_thickness}"),
            });
        }
        if let Some((b, t)) = thickness
            .iter()
            .enumerate()
            .find(|(_, t)| !(t.is_finite() && **t > 0.0))
        {
            return Err(Error::InvalidArgument {
                arg: "thickness",
                message: format!(
                    "sample {b}: slice thickness must be a finite number of mm > 0, got {t}"
                ),
            });
        }
        Ok(Shift {
            fold_div,
            mode: Mode::AlignShift {
                thickness: thickness.to_vec(),
                ref_thickness,
                padding_zero,
            },
        })
    }

    /// `C / fold_div`: channels shifted in each direction.
    pub fn fold(&self, channels: usize) -> usize {
        channels / self.fold_div
    }

    /// `fold_div`.
    pub fn fold_div(&self) -> usize {
        self.fold_div
    }

    /// Whether this is AlignShift (else TSM).
    pub fn is_align_shift(&self) -> bool {
        matches!(self.mode, Mode::AlignShift { .. })
    }

    /// AlignShift's alpha of each sample (`1 - clamp(ref / thickness, 0, 1)`); empty for TSM.
    pub fn alphas(&self) -> Vec<f32> {
        match &self.mode {
            Mode::Tsm => Vec::new(),
            Mode::AlignShift {
                thickness,
                ref_thickness,
                ..
            } => thickness
                .iter()
                .map(|t| 1.0 - (ref_thickness / t).clamp(0.0, 1.0))
                .collect(),
        }
    }

    /// Validates `x` (or `dy`) against this shift and returns the sizes, the fold and the
    /// per-sample coefficients the kernels take.
    pub(crate) fn plan<T: TensorInfo>(&self, arg: &'static str, x: &T) -> Result<ShiftPlan> {
        let dims = FusionDims::from_input_shape_of(arg, x.shape())?;
        if dims.channels > 0 && self.fold_div > dims.channels {
            return Err(Error::InvalidArgument {
                arg: "fold_div",
                message: format!(
                    "{} is larger than the {} channels of `{arg}` (no channel would shift)",
                    self.fold_div, dims.channels
                ),
            });
        }
        let coef = match &self.mode {
            Mode::Tsm => vec![[0.0, 1.0, 0.0]; dims.batch],
            Mode::AlignShift {
                thickness,
                padding_zero,
                ..
            } => {
                if thickness.len() != dims.batch {
                    return Err(Error::Shape {
                        arg: "thickness",
                        expected: vec![dims.batch],
                        got: vec![thickness.len()],
                    });
                }
                self.alphas()
                    .into_iter()
                    .map(|alpha| {
                        let pad = if *padding_zero { alpha } else { 1.0 };
                        [alpha, 1.0 - alpha, pad]
                    })
                    .collect()
            }
        };
        Ok(ShiftPlan {
            dims,
            fold: self.fold(dims.channels),
            coef,
        })
    }

    /// `y = shift(x)`: a new tensor of `x`'s shape and dtype.
    ///
    /// ```
    /// use a3d::{shift::Shift, Tensor};
    /// // C = 2, fold_div 2: channel 0 takes the next slice, channel 1 the previous one.
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0], &[1, 2, 3, 1, 1])?;
    /// let y = Shift::tsm(2)?.forward(&x)?;
    /// assert_eq!(y.to_f32_vec(), [2.0, 3.0, 0.0, 0.0, 10.0, 20.0]);
    /// # Ok::<(), a3d::Error>(())
    /// ```
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.plan("x", x)?;
        let mut y = Tensor::zeros(x.shape(), x.dtype())?;
        self.forward_into(x, &mut y)?;
        Ok(y)
    }

    /// `y = shift(x)` into an existing tensor of `x`'s shape and dtype.
    pub fn forward_into(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        self.run("x", x, "y", y, cpu_kernel::Direction::Forward)
    }

    /// `dx = shift^T(dy)`: the gradient of [`Shift::forward`].
    pub fn backward(&self, dy: &Tensor) -> Result<Tensor> {
        self.plan("dy", dy)?;
        let mut dx = Tensor::zeros(dy.shape(), dy.dtype())?;
        self.backward_into(dy, &mut dx)?;
        Ok(dx)
    }

    /// `dx = shift^T(dy)` into an existing tensor of `dy`'s shape and dtype.
    pub fn backward_into(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        self.run("dy", dy, "dx", dx, cpu_kernel::Direction::Backward)
    }

    fn run(
        &self,
        in_arg: &'static str,
        input: &Tensor,
        out_arg: &'static str,
        out: &mut Tensor,
        direction: cpu_kernel::Direction,
    ) -> Result<()> {
        let plan = self.plan(in_arg, input)?;
        plan.check_output(out_arg, input.dtype(), out)?;
        if plan.dims.is_empty() {
            return Ok(());
        }
        with_dtype!(input.dtype(), T => cpu_kernel::shift(
            &plan,
            direction,
            input.as_slice::<T>()?,
            out.as_mut_slice::<T>()?,
        ));
        Ok(())
    }
}

fn check_fold_div(fold_div: usize) -> Result<()> {
    if fold_div == 0 {
        return Err(Error::InvalidArgument {
            arg: "fold_div",
            message: "must be at least 1 (fold = C / fold_div channels shift each way)".into(),
        });
    }
    Ok(())
}

/// A validated shift problem: sizes, fold and the coefficients of every sample.
#[derive(Debug, Clone)]
pub(crate) struct ShiftPlan {
    pub dims: FusionDims,
    pub fold: usize,
    pub coef: Vec<SampleCoef>,
}

impl ShiftPlan {
    /// An output must have the input's shape and dtype.
    pub fn check_output<T: TensorInfo>(
        &self,
        arg: &'static str,
        dtype: crate::DType,
        out: &T,
    ) -> Result<()> {
        self.dims.check_input_like(arg, out.shape())?;
        check_dtype(arg, dtype, out.dtype())
    }
}
