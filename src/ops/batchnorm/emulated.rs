//! The batch-norm kernels (kernels/batchnorm.cu) under the host emulation, with the launch plans
//! of `launch.rs`, the ones the CUDA backend runs.

use super::{check_forward, launch, planes, Affine, ChannelStats};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::BatchNormBackend;
use crate::dtype::with_dtype;
use crate::emulation::arg;
use crate::tensor::HostElement;
use crate::{Result, Tensor};

impl Emulated {
    fn stats_typed<T: HostElement>(&self, x: &Tensor) -> Result<ChannelStats> {
        let (b, c, rest) = planes("x", x.shape())?;
        if x.is_empty() {
            return Ok(ChannelStats {
                mean: vec![0.0; c],
                var: vec![0.0; c],
                count: b * rest,
            });
        }
        let (partial, reduce, pb) =
            launch::stats(x.shape(), T::DTYPE, self.resident(), self.max_grid_y.into());
        let off = self.offset();
        let xb = Buffer::from_slice(x.as_slice::<T>()?, off);
        let mut partials = vec![f64::NAN; c * pb as usize * 2];
        let mut p = launch::params(x.shape(), pb, false);
        let (mut px, mut pp) = (xb.ptr(), partials.as_mut_ptr());
        self.run(&partial, &mut [arg(&mut px), arg(&mut pp), arg(&mut p)])?;
        let mut stats = vec![f32::NAN; 2 * c];
        let (mut pp, mut ps) = (partials.as_ptr(), stats.as_mut_ptr());
        self.run(&reduce, &mut [arg(&mut pp), arg(&mut ps), arg(&mut p)])?;
        Ok(launch::stats_from(&stats, b * rest))
    }

    fn forward_typed<T: HostElement>(
        &self,
        x: &Tensor,
        a: &Affine,
        w: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_forward(x, a, w)?;
        launch::check_depth(x.shape()[2])?;
        if x.is_empty() {
            return Tensor::zeros(x.shape(), x.dtype());
        }
        let off = self.offset();
        let xb = Buffer::from_slice(x.as_slice::<T>()?, off);
        let wb = Buffer::from_slice(w.map_or(Ok(&[][..]), |w| w.as_slice::<T>())?, off);
        let ab = Buffer::from_slice(&launch::affine_flat(a), off);
        let mut yb = Buffer::<T>::poisoned(x.len(), off);
        let mut p = launch::params(x.shape(), 0, w.is_some());
        let (mut px, mut pw, mut pa, mut py) = (xb.ptr(), wb.ptr(), ab.ptr(), yb.ptr_mut());
        self.run(
            &launch::forward(x.shape(), T::DTYPE, self.resident()),
            &mut [
                arg(&mut px),
                arg(&mut pw),
                arg(&mut pa),
                arg(&mut py),
                arg(&mut p),
            ],
        )?;
        yb.into_tensor(x.shape())
    }
}

impl BatchNormBackend for Emulated {
    fn channel_stats(&self, x: &Tensor) -> Result<ChannelStats> {
        with_dtype!(x.dtype(), T => self.stats_typed::<T>(x))
    }

    fn bn_relu_fusion_forward(
        &self,
        x: &Tensor,
        affine: &Affine,
        w: Option<&Tensor>,
    ) -> Result<Tensor> {
        with_dtype!(x.dtype(), T => self.forward_typed::<T>(x, affine, w))
    }
}
