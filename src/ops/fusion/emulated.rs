//! A3D fusion under the host emulation: the kernels of kernels/fusion.cu with the launch plans
//! of `launch.rs`, the same ones the CUDA backend runs.

use super::launch;
use super::{check_backward, check_forward, FusionDims, Gradients, Grads};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::FusionBackend;
use crate::dtype::with_dtype;
use crate::emulation::arg;
use crate::tensor::HostElement;
use crate::{Result, Tensor};

impl Emulated {
    fn forward_typed<T: HostElement>(
        &self,
        dims: &FusionDims,
        x: &Tensor,
        w: &Tensor,
    ) -> Result<Tensor> {
        let off = self.offset();
        let xb = Buffer::from_slice(x.as_slice::<T>()?, off);
        let wb = Buffer::from_slice(w.as_slice::<T>()?, off);
        let mut yb = Buffer::<T>::poisoned(dims.len(), off);
        let plan = launch::elementwise(
            "forward",
            dims,
            T::DTYPE,
            self.resident(),
            self.max_grid_y.into(),
        );
        let (mut px, mut pw, mut py) = (xb.ptr(), wb.ptr(), yb.ptr_mut());
        let mut params = launch::params(dims, 0);
        self.run(
            &plan,
            &mut [arg(&mut px), arg(&mut pw), arg(&mut py), arg(&mut params)],
        )?;
        yb.into_tensor(x.shape())
    }

    fn backward_typed<T: HostElement>(
        &self,
        dims: &FusionDims,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        let off = self.offset();
        let wb = Buffer::from_slice(w.as_slice::<T>()?, off);
        let dyb = Buffer::from_slice(dy.as_slice::<T>()?, off);
        let mut out = Gradients { dx: None, dw: None };
        if grads.input {
            let mut dxb = Buffer::<T>::poisoned(dims.len(), off);
            let plan = launch::elementwise(
                "grad_input",
                dims,
                T::DTYPE,
                self.resident(),
                self.max_grid_y.into(),
            );
            let (mut pdy, mut pw, mut pdx) = (dyb.ptr(), wb.ptr(), dxb.ptr_mut());
            let mut params = launch::params(dims, 0);
            self.run(
                &plan,
                &mut [arg(&mut pdy), arg(&mut pw), arg(&mut pdx), arg(&mut params)],
            )?;
            out.dx = Some(dxb.into_tensor(x.shape())?);
        }
        if grads.weight {
            let xb = Buffer::from_slice(x.as_slice::<T>()?, off);
            let plan = launch::grad_weight(
                dims,
                T::DTYPE,
                self.resident(),
                self.sm_count,
                self.max_grid_y.into(),
            );
            let mut partials = vec![f32::NAN; plan.partials_len];
            let mut dwb = Buffer::<T>::poisoned(dims.depth * dims.depth * dims.channels, off);
            let (mut px, mut pdy) = (xb.ptr(), dyb.ptr());
            let mut pp = partials.as_mut_ptr();
            let mut params = plan.params;
            self.run(
                &plan.partial,
                &mut [arg(&mut px), arg(&mut pdy), arg(&mut pp), arg(&mut params)],
            )?;
            let mut pp_const = partials.as_ptr();
            let mut pdw = dwb.ptr_mut();
            self.run(
                &plan.reduce,
                &mut [arg(&mut pp_const), arg(&mut pdw), arg(&mut params)],
            )?;
            out.dw = Some(dwb.into_tensor(&dims.weight_shape())?);
        }
        Ok(out)
    }
}

impl FusionBackend for Emulated {
    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dims = check_forward(x, w)?;
        if dims.is_empty() {
            return Tensor::zeros(x.shape(), x.dtype());
        }
        with_dtype!(x.dtype(), T => self.forward_typed::<T>(&dims, x, w))
    }

    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, grads: Grads) -> Result<Gradients> {
        let dims = check_backward(x, w, dy)?;
        if dims.is_empty() {
            let zeros = |wanted: bool, shape: &[usize]| {
                wanted.then(|| Tensor::zeros(shape, x.dtype())).transpose()
            };
            return Ok(Gradients {
                dx: zeros(grads.input, x.shape())?,
                dw: zeros(grads.weight, &dims.weight_shape())?,
            });
        }
        with_dtype!(x.dtype(), T => self.backward_typed::<T>(&dims, x, w, dy, grads))
    }
}
