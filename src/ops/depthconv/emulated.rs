//! The depth-convolution kernels (kernels/depthconv.cu) under the host emulation, with the
//! launch plans of `launch.rs`, the ones the CUDA backend runs.

use super::{check_backward, check_forward, launch, DepthConvDims};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::DepthConvBackend;
use crate::dtype::with_dtype;
use crate::emulation::arg;
use crate::fusion::{Gradients, Grads};
use crate::tensor::HostElement;
use crate::{Result, Tensor};

impl Emulated {
    fn depthconv_mix<T: HostElement>(
        &self,
        dims: &DepthConvDims,
        grad_input: bool,
        input: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let off = self.offset();
        let inb = Buffer::from_slice(input.as_slice::<T>()?, off);
        let vb = Buffer::from_slice(v.as_slice::<T>()?, off);
        let mut outb = Buffer::<T>::poisoned(dims.input.len(), off);
        let l = launch::mix(
            dims,
            grad_input,
            T::DTYPE,
            self.resident(),
            self.max_grid_y.into(),
        );
        let (mut pin, mut pv, mut pout) = (inb.ptr(), vb.ptr(), outb.ptr_mut());
        let mut params = launch::params(dims, 0);
        self.run(
            &l,
            &mut [
                arg(&mut pin),
                arg(&mut pv),
                arg(&mut pout),
                arg(&mut params),
            ],
        )?;
        outb.into_tensor(input.shape())
    }

    fn depthconv_dv<T: HostElement>(
        &self,
        dims: &DepthConvDims,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let off = self.offset();
        let xb = Buffer::from_slice(x.as_slice::<T>()?, off);
        let dyb = Buffer::from_slice(dy.as_slice::<T>()?, off);
        let plan = launch::grad_weight(
            dims,
            T::DTYPE,
            self.resident(),
            self.sm_count,
            self.max_grid_y.into(),
        );
        let mut partials = vec![f32::NAN; plan.partials_len];
        let mut dvb = Buffer::<T>::poisoned(dims.taps * dims.input.channels, off);
        let (mut px, mut pdy, mut pp) = (xb.ptr(), dyb.ptr(), partials.as_mut_ptr());
        let mut params = plan.params;
        self.run(
            &plan.partial,
            &mut [arg(&mut px), arg(&mut pdy), arg(&mut pp), arg(&mut params)],
        )?;
        let (mut pp, mut pdv) = (partials.as_ptr(), dvb.ptr_mut());
        self.run(
            &plan.reduce,
            &mut [arg(&mut pp), arg(&mut pdv), arg(&mut params)],
        )?;
        dvb.into_tensor(&dims.weight_shape())
    }
}

impl DepthConvBackend for Emulated {
    fn depthconv_forward(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dims = check_forward(x, v)?;
        launch::check_taps(dims.taps)?;
        if dims.input.is_empty() {
            return Tensor::zeros(x.shape(), x.dtype());
        }
        with_dtype!(x.dtype(), T => self.depthconv_mix::<T>(&dims, false, x, v))
    }

    fn depthconv_backward(
        &self,
        x: &Tensor,
        v: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        let dims = check_backward(x, v, dy)?;
        launch::check_taps(dims.taps)?;
        let mut out = Gradients { dx: None, dw: None };
        if grads.input {
            out.dx = Some(if dims.input.is_empty() {
                Tensor::zeros(x.shape(), x.dtype())?
            } else {
                with_dtype!(x.dtype(), T => self.depthconv_mix::<T>(&dims, true, dy, v))?
            });
        }
        if grads.weight {
            out.dw = Some(if dims.input.is_empty() {
                Tensor::zeros(&dims.weight_shape(), x.dtype())?
            } else {
                with_dtype!(x.dtype(), T => self.depthconv_dv::<T>(&dims, x, dy))?
            });
        }
        Ok(out)
    }
}
