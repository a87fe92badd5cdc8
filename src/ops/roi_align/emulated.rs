//! The RoIAlign kernels (kernels/roi_align.cu) under the host emulation, with the launch plans
//! of `launch.rs`, the ones the CUDA backend runs.

use super::{launch, RoiAlign};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::RoiAlignBackend;
use crate::dtype::with_dtype;
use crate::emulation::arg;
use crate::tensor::HostElement;
use crate::{DType, Result, Tensor};

impl Emulated {
    fn roi_forward_typed<T: HostElement>(
        &self,
        op: &RoiAlign,
        features: &Tensor,
        rois: &[[f32; 5]],
    ) -> Result<Tensor> {
        let dims = op.check(features, rois)?;
        let shape = dims.output_shape();
        if shape.iter().product::<usize>() == 0 {
            return Tensor::zeros(&shape, features.dtype());
        }
        let off = self.offset();
        let fb = Buffer::from_slice(features.as_slice::<T>()?, off);
        let rb = Buffer::from_slice(&launch::rois_flat(rois), off);
        let mut out = Buffer::<T>::poisoned(shape.iter().product(), off);
        let (mut pf, mut pr, mut po) = (fb.ptr(), rb.ptr(), out.ptr_mut());
        let mut p = launch::params(op, &dims);
        self.run(
            &launch::launch("forward", &dims, T::DTYPE, self.sm_count),
            &mut [arg(&mut pf), arg(&mut pr), arg(&mut po), arg(&mut p)],
        )?;
        out.into_tensor(&shape)
    }

    fn roi_backward_typed<T: HostElement>(
        &self,
        op: &RoiAlign,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor> {
        let dims = op.check(&(feature_shape, dy.dtype()), rois)?;
        crate::ops::common::check_shape("dy", &dims.output_shape(), dy.shape())?;
        let n: usize = feature_shape.iter().product();
        if n == 0 || dy.is_empty() {
            return Tensor::zeros(feature_shape, dy.dtype());
        }
        let off = self.offset();
        let db = Buffer::from_slice(dy.as_slice::<T>()?, off);
        let rb = Buffer::from_slice(&launch::rois_flat(rois), off);
        // The atomic accumulation needs zeros; the f16 / bf16 cast output is poisoned.
        let mut acc = Buffer::<f32>::from_slice(&vec![0.0; n], off);
        let mut p = launch::params(op, &dims);
        let (mut pd, mut pr, mut pa) = (db.ptr(), rb.ptr(), acc.ptr_mut());
        self.run(
            &launch::launch("backward", &dims, T::DTYPE, self.sm_count),
            &mut [arg(&mut pd), arg(&mut pr), arg(&mut pa), arg(&mut p)],
        )?;
        if T::DTYPE == DType::F32 {
            return acc.into_tensor(feature_shape);
        }
        let mut out = Buffer::<T>::poisoned(n, off);
        let (mut ps, mut pu, mut po) = (acc.ptr(), acc.ptr(), out.ptr_mut());
        self.run(
            &launch::launch("cast", &dims, T::DTYPE, self.sm_count),
            &mut [arg(&mut ps), arg(&mut pu), arg(&mut po), arg(&mut p)],
        )?;
        out.into_tensor(feature_shape)
    }
}

impl RoiAlignBackend for Emulated {
    fn roi_align_forward(
        &self,
        op: &RoiAlign,
        features: &Tensor,
        rois: &[[f32; 5]],
    ) -> Result<Tensor> {
        with_dtype!(features.dtype(), T => self.roi_forward_typed::<T>(op, features, rois))
    }

    fn roi_align_backward(
        &self,
        op: &RoiAlign,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor> {
        with_dtype!(dy.dtype(), T => self.roi_backward_typed::<T>(op, feature_shape, rois, dy))
    }
}
