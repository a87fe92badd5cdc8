//! The depth-convolution kernels (kernels/depthconv.cu) under the host emulation, with the
//! launch plans of `launch.rs`, the ones the CUDA backend runs.

use super::{check_backward, check_forward, launch, DepthConvDims};
use crate::backend::emulated::Emulated;
use crate::backend::DepthConvBackend;
use crate::dtype::with_dtype;
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
        let l = launch::mix(
            dims,
            grad_input,
            T::DTYPE,
            self.resident(),
            self.max_grid_y.into(),
        );
        // SAFETY: the mixing kernels take (const T* in, const T* v, T* out, params) and index
        // B*C*D*P elements of in / out and K*C of v, the validated shapes passed here.
        unsafe {
            self.two_in_one_out(
                &l,
                input.as_slice::<T>()?,
                v.as_slice::<T>()?,
                input.shape(),
                launch::params(dims, 0),
            )
        }
    }

    fn depthconv_dv<T: HostElement>(
        &self,
        dims: &DepthConvDims,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let plan = launch::grad_weight(
            dims,
            T::DTYPE,
            self.resident(),
            self.sm_count,
            self.max_grid_y.into(),
        );
        // SAFETY: the partial kernel takes (const T* x, const T* dy, float*, params) and writes
        // the plan's partials_len floats; the reduce kernel (const float*, T* dv, params) writes
        // K*C elements; x and dy have the validated shape.
        unsafe {
            self.partials_then_reduce(
                &plan.partial,
                &plan.reduce,
                plan.partials_len,
                x.as_slice::<T>()?,
                dy.as_slice::<T>()?,
                &dims.weight_shape(),
                plan.params,
            )
        }
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
