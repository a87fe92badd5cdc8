//! Detection ops for candle: [`roi_align`] as a custom op with its backward (the gradient to the
//! features; the RoIs get none, as the reference detaches its proposals), and [`nms`] on
//! candle tensors. CPU storage, and CUDA storage with feature `candle-cuda` (a3d's RoIAlign
//! kernels on candle's stream; the RoIs are copied to the host, where they are validated).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::storage::{candle_err, contiguous, cpu_storage, host_tensor};
use crate::boxes::Nms;
#[cfg(feature = "candle-cuda")]
use crate::ops::common::ShapeInfo;
use crate::roi_align::RoiAlign;

/// The RoIs of a candle `[K, 5]` tensor (any float dtype candle holds; read as f32).
fn rois_of(op: &str, s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<[f32; 5]>> {
    let dims = l.dims();
    if dims.len() != 2 || dims[1] != 5 {
        candle_core::bail!(
            "{op}: `rois` must be [K, 5] (batch index, x1, y1, x2, y2), got {dims:?}"
        );
    }
    let flat: Vec<f32> = match s {
        CpuStorage::F32(v) => contiguous(v, l)?.into_owned(),
        CpuStorage::F64(v) => contiguous(v, l)?.iter().map(|&x| x as f32).collect(),
        CpuStorage::F16(v) => contiguous(v, l)?.iter().map(|x| x.to_f32()).collect(),
        CpuStorage::BF16(v) => contiguous(v, l)?.iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!(
            "{op}: `rois` has dtype {:?}, expected a float dtype",
            other.dtype()
        ),
    };
    Ok(flat
        .chunks_exact(5)
        .map(|c| [c[0], c[1], c[2], c[3], c[4]])
        .collect())
}

/// RoIAlign as a candle op on `(features [N, C, H, W], rois [K, 5])`.
#[derive(Debug, Clone, Copy)]
pub struct RoiAlignOp(pub RoiAlign);

impl CustomOp2 for RoiAlignOp {
    fn name(&self) -> &'static str {
        "a3d-roi-align"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let features = host_tensor(op, "features", s1, l1)?;
        let rois = rois_of(op, s2, l2)?;
        let y = self
            .0
            .forward(&features, &rois)
            .map_err(|e| candle_err(op, e))?;
        let shape = Shape::from(y.shape());
        Ok((cpu_storage(op, y)?, shape))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let op = self.name();
        let fa = crate::candle_cuda::arg(op, "features", s1, l1)?;
        let rois = rois_of(op, &s2.to_cpu_storage()?, l2)?;
        let dims = self.0.check(&fa, &rois).map_err(|e| candle_err(op, e))?;
        let y = crate::candle_cuda::roi_align(op, &self.0, &dims, &rois, false, (s1, l1))?;
        Ok((y, Shape::from(dims.output_shape().as_slice())))
    }

    fn bwd(
        &self,
        features: &Tensor,
        rois: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = RoiAlignGradOp {
            op: self.0,
            feature_shape: features.dims().to_vec(),
        };
        Ok((Some(dy.apply_op2_no_bwd(rois, &grad)?), None))
    }
}

/// The features' gradient from `(dy, rois)`.
struct RoiAlignGradOp {
    op: RoiAlign,
    feature_shape: Vec<usize>,
}

impl CustomOp2 for RoiAlignGradOp {
    fn name(&self) -> &'static str {
        "a3d-roi-align-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dy = host_tensor(op, "dy", s1, l1)?;
        let rois = rois_of(op, s2, l2)?;
        let dx = self
            .op
            .backward(&self.feature_shape, &rois, &dy)
            .map_err(|e| candle_err(op, e))?;
        Ok((
            cpu_storage(op, dx)?,
            Shape::from(self.feature_shape.as_slice()),
        ))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let op = self.name();
        let dya = crate::candle_cuda::arg(op, "dy", s1, l1)?;
        let rois = rois_of(op, &s2.to_cpu_storage()?, l2)?;
        let features = ShapeInfo {
            shape: &self.feature_shape,
            dtype: dya.dtype,
        };
        let dims = self
            .op
            .check(&features, &rois)
            .map_err(|e| candle_err(op, e))?;
        if l1.dims() != dims.output_shape() {
            candle_core::bail!(
                "{op}: dy {:?}, the RoIs need {:?}",
                l1.dims(),
                dims.output_shape()
            );
        }
        let dx = crate::candle_cuda::roi_align(op, &self.op, &dims, &rois, true, (s1, l1))?;
        Ok((dx, Shape::from(self.feature_shape.as_slice())))
    }
}

/// `[K, C, ph, pw]` pooled from `features` `[N, C, H, W]` at `rois` `[K, 5]` (see
/// [`crate::roi_align`]). Differentiable with respect to the features.
pub fn roi_align(features: &Tensor, rois: &Tensor, op: RoiAlign) -> candle_core::Result<Tensor> {
    features.apply_op2(rois, RoiAlignOp(op))
}

/// [`Nms::run`] on candle tensors: `boxes` `[n, 4]`, `scores` `[n]` (any device; copied to the
/// host). Returns the kept indices, highest score first.
pub fn nms(boxes: &Tensor, scores: &Tensor, nms: &Nms) -> candle_core::Result<Vec<usize>> {
    let op = "a3d-nms";
    let dims = boxes.dims();
    if dims.len() != 2 || dims[1] != 4 {
        candle_core::bail!("{op}: `boxes` must be [n, 4], got {dims:?}");
    }
    let b: Vec<[f32; 4]> = boxes
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let s = scores
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    nms.run(&b, &s).map_err(|e| candle_err(op, e))
}
