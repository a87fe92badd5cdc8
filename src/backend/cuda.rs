//! The CUDA backend: each op's kernels on a GPU, with host tensors uploaded and results
//! downloaded (the selftest and the tests use it; a program keeping data on the device calls
//! the ops' device functions, e.g. `a3d::fusion::cuda`, directly).

use super::{
    Backend, BatchNormBackend, BoxBackend, DepthConvBackend, FusionBackend, RoiAlignBackend,
    ShiftBackend,
};
use crate::batchnorm::{self, Affine, ChannelStats};
use crate::boxes::{self, Nms, PixelConvention};
use crate::cuda::CudaTensor;
use crate::fusion::{self, FusionDims, Gradients, Grads};
use crate::roi_align::{self, RoiAlign};
use crate::shift::Shift;
use crate::{depthconv, Result, Tensor};

/// The CUDA kernels on a GPU (feature `cuda`). Outputs are NaN-poisoned before each launch.
#[derive(Debug, Clone)]
pub struct Cuda {
    /// The device to run on.
    pub device: crate::cuda::CudaDevice,
}

impl Backend for Cuda {
    fn name(&self) -> String {
        format!("cuda:{}", self.device.ordinal())
    }
}

impl FusionBackend for Cuda {
    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dev = &self.device;
        let (xd, wd) = (CudaTensor::upload(x, dev)?, CudaTensor::upload(w, dev)?);
        let mut y = CudaTensor::full(x.shape(), f32::NAN, x.dtype(), dev)?;
        fusion::cuda::forward_into(&xd, &wd, &mut y)?;
        y.download()
    }

    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        let dev = &self.device;
        let (xd, wd, dyd) = (
            CudaTensor::upload(x, dev)?,
            CudaTensor::upload(w, dev)?,
            CudaTensor::upload(dy, dev)?,
        );
        let dims = FusionDims::from_input_shape(x.shape())?;
        let poisoned = |wanted: bool, shape: &[usize]| {
            wanted
                .then(|| CudaTensor::full(shape, f32::NAN, x.dtype(), dev))
                .transpose()
        };
        let mut dx = poisoned(grads.input, x.shape())?;
        let mut dw = poisoned(grads.weight, &dims.weight_shape())?;
        fusion::cuda::backward_into(&xd, &wd, &dyd, dx.as_mut(), dw.as_mut())?;
        Ok(Gradients {
            dx: dx.map(|t| t.download()).transpose()?,
            dw: dw.map(|t| t.download()).transpose()?,
        })
    }
}

impl ShiftBackend for Cuda {
    fn shift_forward(&self, shift: &Shift, x: &Tensor) -> Result<Tensor> {
        self.shift(shift, x, false)
    }

    fn shift_backward(&self, shift: &Shift, dy: &Tensor) -> Result<Tensor> {
        self.shift(shift, dy, true)
    }
}

impl Cuda {
    fn shift(&self, shift: &Shift, input: &Tensor, backward: bool) -> Result<Tensor> {
        let dev = &self.device;
        let xd = CudaTensor::upload(input, dev)?;
        let mut out = CudaTensor::full(input.shape(), f32::NAN, input.dtype(), dev)?;
        if backward {
            crate::shift::cuda::backward_into(shift, &xd, &mut out)?;
        } else {
            crate::shift::cuda::forward_into(shift, &xd, &mut out)?;
        }
        out.download()
    }
}

impl DepthConvBackend for Cuda {
    fn depthconv_forward(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dev = &self.device;
        let (xd, vd) = (CudaTensor::upload(x, dev)?, CudaTensor::upload(v, dev)?);
        let mut y = CudaTensor::full(x.shape(), f32::NAN, x.dtype(), dev)?;
        depthconv::cuda::forward_into(&xd, &vd, &mut y)?;
        y.download()
    }

    fn depthconv_backward(
        &self,
        x: &Tensor,
        v: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        let dev = &self.device;
        let (xd, vd, dyd) = (
            CudaTensor::upload(x, dev)?,
            CudaTensor::upload(v, dev)?,
            CudaTensor::upload(dy, dev)?,
        );
        let poisoned = |wanted: bool, shape: &[usize]| {
            wanted
                .then(|| CudaTensor::full(shape, f32::NAN, x.dtype(), dev))
                .transpose()
        };
        let mut dx = poisoned(grads.input, x.shape())?;
        let mut dv = poisoned(grads.weight, v.shape())?;
        depthconv::cuda::backward_into(&xd, &vd, &dyd, dx.as_mut(), dv.as_mut())?;
        Ok(Gradients {
            dx: dx.map(|t| t.download()).transpose()?,
            dw: dv.map(|t| t.download()).transpose()?,
        })
    }
}

impl BoxBackend for Cuda {
    fn iou_matrix(
        &self,
        a: &[[f32; 4]],
        b: &[[f32; 4]],
        convention: PixelConvention,
    ) -> Result<Vec<f32>> {
        boxes::cuda::iou_matrix(&self.device, a, b, convention)
    }

    fn nms(&self, nms: &Nms, b: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>> {
        boxes::cuda::nms(&self.device, nms, b, scores)
    }
}

impl RoiAlignBackend for Cuda {
    fn roi_align_forward(
        &self,
        op: &RoiAlign,
        features: &Tensor,
        rois: &[[f32; 5]],
    ) -> Result<Tensor> {
        let dev = &self.device;
        let dims = op.check(features, rois)?;
        let fd = CudaTensor::upload(features, dev)?;
        let mut out = CudaTensor::full(&dims.output_shape(), f32::NAN, features.dtype(), dev)?;
        roi_align::cuda::forward_into(op, &fd, rois, &mut out)?;
        out.download()
    }

    fn roi_align_backward(
        &self,
        op: &RoiAlign,
        feature_shape: &[usize],
        rois: &[[f32; 5]],
        dy: &Tensor,
    ) -> Result<Tensor> {
        let dev = &self.device;
        let dyd = CudaTensor::upload(dy, dev)?;
        let mut dx = CudaTensor::full(feature_shape, f32::NAN, dy.dtype(), dev)?;
        roi_align::cuda::backward_into(op, rois, &dyd, &mut dx)?;
        dx.download()
    }
}

impl BatchNormBackend for Cuda {
    fn channel_stats(&self, x: &Tensor) -> Result<ChannelStats> {
        batchnorm::cuda::channel_stats(&CudaTensor::upload(x, &self.device)?)
    }

    fn bn_relu_fusion_forward(
        &self,
        x: &Tensor,
        affine: &Affine,
        w: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dev = &self.device;
        let xd = CudaTensor::upload(x, dev)?;
        let wd = w.map(|w| CudaTensor::upload(w, dev)).transpose()?;
        let mut y = CudaTensor::full(x.shape(), f32::NAN, x.dtype(), dev)?;
        batchnorm::cuda::bn_relu_fusion_forward_into(&xd, affine, wd.as_ref(), &mut y)?;
        y.download()
    }
}
