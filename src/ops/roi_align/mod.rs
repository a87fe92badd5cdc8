//! RoIAlign: bilinear pooling of box regions of a feature map to a fixed `ph x pw` grid, with
//! its gradient to the feature map.
//!
//! Features are `[N, C, H, W]` (f32, f16 or bf16 storage; f32 arithmetic); RoIs are
//! `[batch_index, x1, y1, x2, y2]` in input pixels, scaled by `spatial_scale` onto the feature
//! map; the output is `[K, C, ph, pw]`.
//!
//! Two pixel conventions ([`RoiAlignMode`]):
//! - [`RoiAlignMode::Reference`], the reference detector's (mmdetection 1.0's CUDA kernel,
//!   reference-detector.md section 5.1): the RoI spans `x1 * s .. (x2 + 1) * s`, its size is
//!   clamped at 0 (an inverted RoI, which delta decoding can produce, pools the values around its
//!   start point), no half-pixel shift;
//! - [`RoiAlignMode::Aligned`], torchvision's `aligned=True`: `x1 * s - 0.5 .. x2 * s - 0.5`, no
//!   clamp.
//!
//! In both, each bin averages `g x g` bilinear samples at `start + bin * (i + (j + 0.5) / g)`
//! (`g = sampling_ratio`, or `ceil(roi_size / pooled)` per RoI for `sampling_ratio = 0`; a bin
//! with no sample is 0); a sample with `y < -1`, `y > H`, `x < -1` or `x > W` is 0, coordinates
//! below 0 are clamped to 0 and those at or past the last row or column sample it exactly.
//!
//! The CPU backward is deterministic (each thread owns whole feature planes and visits the RoIs
//! in order). The CUDA backward accumulates with f32 `atomicAdd`, so its last bits may vary from
//! run to run where RoIs overlap.

pub(crate) mod cpu_kernel;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "emulation")]
mod emulated;
#[cfg(any(feature = "cuda", feature = "emulation"))]
pub(crate) mod launch;
#[doc(hidden)]
pub mod reference;

use crate::ops::common::{check_dtype, check_rank, check_shape};
use crate::{Error, Result, Tensor, TensorInfo};

/// Where an RoI's corners sit on the feature grid (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoiAlignMode {
    /// mmdetection 1.0's rules, as the reference detector runs them.
    #[default]
    Reference,
    /// torchvision's `roi_align(..., aligned=True)`.
    Aligned,
}

/// The RoIAlign settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlign {
    /// Output rows per RoI.
    pub pooled_h: usize,
    /// Output columns per RoI.
    pub pooled_w: usize,
    /// Feature-map pixels per input pixel (the reference: 1/4).
    pub spatial_scale: f32,
    /// Samples per bin along each axis; 0 picks `ceil(roi_size / pooled)` per RoI.
    pub sampling_ratio: usize,
    /// Pixel convention.
    pub mode: RoiAlignMode,
}

/// The sizes of one RoIAlign call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoiDims {
    /// N: images.
    pub batch: usize,
    /// C: channels.
    pub channels: usize,
    /// H: feature rows.
    pub height: usize,
    /// W: feature columns.
    pub width: usize,
    /// K: RoIs.
    pub rois: usize,
    /// Output rows per RoI.
    pub pooled_h: usize,
    /// Output columns per RoI.
    pub pooled_w: usize,
}

impl RoiDims {
    /// `[N, C, H, W]`.
    pub fn feature_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }
    /// `[K, C, ph, pw]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.rois, self.channels, self.pooled_h, self.pooled_w]
    }
}

/// Most samples per bin axis the adaptive rule may pick (keeps a huge RoI from meaning hours
/// of work per bin); more is an error.
pub const MAX_ADAPTIVE_SAMPLES: usize = 1024;

impl RoiAlign {
    /// The reference detector's box head: 7 x 7, scale 1/4, 2 x 2 samples, mmdetection rules.
    pub fn reference() -> RoiAlign {
        RoiAlign {
            pooled_h: 7,
            pooled_w: 7,
            spatial_scale: 0.25,
            sampling_ratio: 2,
            mode: RoiAlignMode::Reference,
        }
    }

    /// Checks the settings, the feature shape and every RoI; returns the sizes.
    pub fn check(&self, features: &impl TensorInfo, rois: &[[f32; 5]]) -> Result<RoiDims> {
        if !(self.spatial_scale.is_finite() && self.spatial_scale > 0.0) {
            return Err(Error::InvalidArgument {
                arg: "spatial_scale",
                message: format!("{} must be positive and finite", self.spatial_scale),
            });
        }
        if self.pooled_h == 0 || self.pooled_w == 0 {
            return Err(Error::InvalidArgument {
                arg: "pooled",
                message: format!("{} x {} output bins", self.pooled_h, self.pooled_w),
            });
        }
        if self.sampling_ratio > MAX_ADAPTIVE_SAMPLES {
            return Err(Error::InvalidArgument {
                arg: "sampling_ratio",
                message: format!("{} exceeds {MAX_ADAPTIVE_SAMPLES}", self.sampling_ratio),
            });
        }
        let shape = features.shape();
        check_rank("features", 4, "[N, C, H, W]", shape)?;
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        if h.checked_mul(w).is_none_or(|p| p > u32::MAX as usize) {
            return Err(Error::InvalidArgument {
                arg: "features",
                message: format!("{h} x {w} planes exceed 2^32 pixels"),
            });
        }
        crate::tensor::element_count(&[rois.len(), c, self.pooled_h, self.pooled_w])?;
        crate::tensor::element_count(shape)?;
        for (k, r) in rois.iter().enumerate() {
            if !r.iter().all(|v| v.is_finite()) {
                return Err(Error::InvalidArgument {
                    arg: "rois",
                    message: format!("RoI {k} is {r:?}: coordinates must be finite"),
                });
            }
            if r[0] < 0.0 || r[0].fract() != 0.0 || r[0] as usize >= n {
                return Err(Error::InvalidArgument {
                    arg: "rois",
                    message: format!("RoI {k} has batch index {} for {n} images", r[0]),
                });
            }
            if self.sampling_ratio == 0 {
                let g = cpu_kernel::Geometry::new(self, r, h, w);
                if g.grid_h > MAX_ADAPTIVE_SAMPLES || g.grid_w > MAX_ADAPTIVE_SAMPLES {
                    return Err(Error::InvalidArgument {
                        arg: "rois",
                        message: format!(
                            "RoI {k} ({r:?}) needs {} x {} adaptive samples per bin, more than \
                             {MAX_ADAPTIVE_SAMPLES}",
                            g.grid_h, g.grid_w
                        ),
                    });
                }
            }
        }
        Ok(RoiDims {
            batch: n,
            channels: c,
            height: h,
            width: w,
            rois: rois.len(),
            pooled_h: self.pooled_h,
            pooled_w: self.pooled_w,
        })
    }

    /// Pools every RoI: `[K, C, ph, pw]` in the features' dtype.
    pub fn forward(&self, features: &Tensor, rois: &[[f32; 5]]) -> Result<Tensor> {
        let dims = self.check(features, rois)?;
        let mut out = Tensor::zeros(&dims.output_shape(), features.dtype())?;
        self.forward_into(features, rois, &mut out)?;
        Ok(out)
    }

    /// [`RoiAlign::forward`] into an existing `[K, C, ph, pw]` tensor of the features' dtype.
    pub fn forward_into(
        &self,
        features: &Tensor,
        rois: &[[f32; 5]],
        out: &mut Tensor,
    ) -> Result<()> {
        let dims = self.check(features, rois)?;
        check_shape("out", &dims.output_shape(), out.shape())?;
        check_dtype("out", features.dtype(), out.dtype())?;
        crate::dtype::with_dtype!(features.dtype(), T => cpu_kernel::forward::<T>(
            self,
            &dims,
            features.as_slice::<T>()?,
            rois,
            out.as_mut_slice::<T>()?,
        ))
    }

    /// The gradient to the features, `[N, C, H, W]` in `dy`'s dtype, given `dy` `[K, C, ph, pw]`
    /// (RoIs get none: the reference detaches its proposals).
    pub fn backward(
        &self,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor> {
        let mut dx = Tensor::zeros(feature_shape, dy.dtype())?;
        self.backward_into(rois, dy, &mut dx)?;
        Ok(dx)
    }

    /// [`RoiAlign::backward`] into an existing features-shaped tensor (overwritten).
    pub fn backward_into(&self, rois: &[[f32; 5]], dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        let dims = self.check(&*dx, rois)?;
        check_shape("dy", &dims.output_shape(), dy.shape())?;
        check_dtype("dx", dy.dtype(), dx.dtype())?;
        crate::dtype::with_dtype!(dy.dtype(), T => cpu_kernel::backward::<T>(
            self,
            &dims,
            rois,
            dy.as_slice::<T>()?,
            dx.as_mut_slice::<T>()?,
        ))
    }
}
