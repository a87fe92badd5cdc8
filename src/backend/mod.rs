//! Where the ops run: one trait per op family, implemented by every backend (the CPU always;
//! CUDA with feature `cuda`; the host emulation of the CUDA kernels with feature `emulation`).
//! Tests, `a3d selftest` and the benchmarks loop over the backends present, so every backend is
//! measured against the same float64 references.
//!
//! Every backend fills its outputs with NaN before the kernels run, so an element a kernel
//! forgets to write shows up as an error instead of a plausible zero.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "emulation")]
pub(crate) mod emulated;

#[cfg(feature = "cuda")]
pub use cuda::Cuda;
#[cfg(feature = "emulation")]
pub use emulated::Emulated;

use crate::batchnorm::{self, Affine, ChannelStats};
use crate::boxes::{Nms, PixelConvention};
use crate::fusion::{self, FusionDims, Gradients, Grads};
use crate::roi_align::RoiAlign;
use crate::shift::Shift;
use crate::{depthconv, Result, Tensor};

/// What every backend has: a name for reports.
pub trait Backend {
    /// Short name printed in reports (`cpu`, `cuda:0`, `emulated:2sm`).
    fn name(&self) -> String;
}

/// A backend that runs every op family (what `a3d selftest` loops over).
pub trait OpBackend:
    FusionBackend + ShiftBackend + DepthConvBackend + BoxBackend + RoiAlignBackend + BatchNormBackend
{
}
impl<
        B: FusionBackend
            + ShiftBackend
            + DepthConvBackend
            + BoxBackend
            + RoiAlignBackend
            + BatchNormBackend,
    > OpBackend for B
{
}

/// A3D fusion on a backend.
pub trait FusionBackend: Backend {
    /// `y = fuse(x, w)`.
    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// The requested gradients (`dw` is `[D, D, C]`).
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients>;
}

/// TSM and AlignShift on a backend.
pub trait ShiftBackend: Backend {
    /// `y = shift(x)`.
    fn shift_forward(&self, shift: &Shift, x: &Tensor) -> Result<Tensor>;
    /// `dx = shift^T(dy)`.
    fn shift_backward(&self, shift: &Shift, dy: &Tensor) -> Result<Tensor>;
}

/// The symmetric depth convolution on a backend.
pub trait DepthConvBackend: Backend {
    /// `y = depth_conv(x, v)`, `v` `[K, C]`.
    fn depthconv_forward(&self, x: &Tensor, v: &Tensor) -> Result<Tensor>;
    /// The requested gradients (`dw` is `dv`, `[K, C]`).
    fn depthconv_backward(
        &self,
        x: &Tensor,
        v: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients>;
}

/// IoU and NMS on a backend.
pub trait BoxBackend: Backend {
    /// `IoU(a[i], b[j])` at `[i * b.len() + j]`.
    fn iou_matrix(
        &self,
        a: &[[f32; 4]],
        b: &[[f32; 4]],
        convention: PixelConvention,
    ) -> Result<Vec<f32>>;
    /// The kept indices, highest score first (as [`Nms::run`]).
    fn nms(&self, nms: &Nms, boxes: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>>;
}

/// RoIAlign on a backend.
pub trait RoiAlignBackend: Backend {
    /// `[K, C, ph, pw]` pooled from `features` `[N, C, H, W]`.
    fn roi_align_forward(
        &self,
        op: &RoiAlign,
        features: &Tensor,
        rois: &[[f32; 5]],
    ) -> Result<Tensor>;
    /// The gradient to the features (`feature_shape`) given `dy` `[K, C, ph, pw]`.
    fn roi_align_backward(
        &self,
        op: &RoiAlign,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor>;
}

/// Batch-norm statistics and the BN-ReLU(-fusion) forward on a backend.
pub trait BatchNormBackend: Backend {
    /// Mean and biased variance per channel of `x` `[B, C, ...]`.
    fn channel_stats(&self, x: &Tensor) -> Result<ChannelStats>;
    /// `fusion(max(x * scale + shift, 0), w)` for `x` `[B, C, D, H, W]`, or the BN-ReLU alone
    /// without `w`.
    fn bn_relu_fusion_forward(
        &self,
        x: &Tensor,
        affine: &Affine,
        w: Option<&Tensor>,
    ) -> Result<Tensor>;
}

/// The CPU kernels.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

/// A NaN-filled tensor of `shape` when `wanted`.
fn poisoned(wanted: bool, shape: &[usize], like: &Tensor) -> Result<Option<Tensor>> {
    wanted
        .then(|| Tensor::full(shape, f32::NAN, like.dtype()))
        .transpose()
}

impl Backend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }
}

impl FusionBackend for Cpu {
    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        fusion::check_forward(x, w)?;
        let mut y = Tensor::full(x.shape(), f32::NAN, x.dtype())?;
        fusion::forward_into(x, w, &mut y)?;
        Ok(y)
    }

    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        // Validated first: the gradient shapes below are read off x's shape.
        let dims: FusionDims = fusion::check_backward(x, w, dy)?;
        let mut dx = poisoned(grads.input, x.shape(), x)?;
        let mut dw = poisoned(grads.weight, &dims.weight_shape(), x)?;
        fusion::backward_into(x, w, dy, dx.as_mut(), dw.as_mut())?;
        Ok(Gradients { dx, dw })
    }
}

impl ShiftBackend for Cpu {
    fn shift_forward(&self, shift: &Shift, x: &Tensor) -> Result<Tensor> {
        shift.plan("x", x)?;
        let mut y = Tensor::full(x.shape(), f32::NAN, x.dtype())?;
        shift.forward_into(x, &mut y)?;
        Ok(y)
    }

    fn shift_backward(&self, shift: &Shift, dy: &Tensor) -> Result<Tensor> {
        shift.plan("dy", dy)?;
        let mut dx = Tensor::full(dy.shape(), f32::NAN, dy.dtype())?;
        shift.backward_into(dy, &mut dx)?;
        Ok(dx)
    }
}

impl DepthConvBackend for Cpu {
    fn depthconv_forward(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        depthconv::check_forward(x, v)?;
        let mut y = Tensor::full(x.shape(), f32::NAN, x.dtype())?;
        depthconv::forward_into(x, v, &mut y)?;
        Ok(y)
    }

    fn depthconv_backward(
        &self,
        x: &Tensor,
        v: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        depthconv::check_backward(x, v, dy)?;
        let mut dx = poisoned(grads.input, x.shape(), x)?;
        let mut dw = poisoned(grads.weight, v.shape(), x)?;
        depthconv::backward_into(x, v, dy, dx.as_mut(), dw.as_mut())?;
        Ok(Gradients { dx, dw })
    }
}

impl BoxBackend for Cpu {
    fn iou_matrix(
        &self,
        a: &[[f32; 4]],
        b: &[[f32; 4]],
        convention: PixelConvention,
    ) -> Result<Vec<f32>> {
        crate::boxes::iou_matrix(a, b, convention)
    }

    fn nms(&self, nms: &Nms, boxes: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>> {
        nms.run(boxes, scores)
    }
}

impl RoiAlignBackend for Cpu {
    fn roi_align_forward(
        &self,
        op: &RoiAlign,
        features: &Tensor,
        rois: &[[f32; 5]],
    ) -> Result<Tensor> {
        let dims = op.check(features, rois)?;
        let mut out = Tensor::full(&dims.output_shape(), f32::NAN, features.dtype())?;
        op.forward_into(features, rois, &mut out)?;
        Ok(out)
    }

    fn roi_align_backward(
        &self,
        op: &RoiAlign,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor> {
        op.check(&(feature_shape, dy.dtype()), rois)?;
        let mut dx = Tensor::full(feature_shape, f32::NAN, dy.dtype())?;
        op.backward_into(rois, dy, &mut dx)?;
        Ok(dx)
    }
}

impl BatchNormBackend for Cpu {
    fn channel_stats(&self, x: &Tensor) -> Result<ChannelStats> {
        batchnorm::channel_stats(x)
    }

    fn bn_relu_fusion_forward(
        &self,
        x: &Tensor,
        affine: &Affine,
        w: Option<&Tensor>,
    ) -> Result<Tensor> {
        batchnorm::bn_relu_fusion_forward(x, affine, w)
    }
}
