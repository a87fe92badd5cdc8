//! A3D fusion under the host emulation: the kernels of kernels/fusion.cu with the launch plans
//! of `launch.rs`, the same ones the CUDA backend runs.

use super::launch;
use super::{check_backward, check_forward, FusionDims, Gradients, Grads};
use crate::backend::emulated::Emulated;
use crate::backend::FusionBackend;
use crate::dtype::with_dtype;
use crate::tensor::HostElement;
use crate::{Result, Tensor};

impl Emulated {
    fn mix_typed<T: HostElement>(
        &self,
        op: &str,
        dims: &FusionDims,
        input: &Tensor,
        w: &Tensor,
    ) -> Result<Tensor> {
        let plan = launch::elementwise(op, dims, T::DTYPE, self.resident(), self.max_grid_y.into());
        // SAFETY: forward and grad-input take (const T* in, const T* w, T* out, params) and
        // index B*C*D*P elements of in / out and D*D*C of w, the validated shapes passed here.
        unsafe {
            self.two_in_one_out(
                &plan,
                input.as_slice::<T>()?,
                w.as_slice::<T>()?,
                input.shape(),
                launch::params(dims, 0),
            )
        }
    }

    fn backward_typed<T: HostElement>(
        &self,
        dims: &FusionDims,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        grads: Grads,
    ) -> Result<Gradients> {
        let mut out = Gradients { dx: None, dw: None };
        if grads.input {
            out.dx = Some(self.mix_typed::<T>("grad_input", dims, dy, w)?);
        }
        if grads.weight {
            let plan = launch::grad_weight(
                dims,
                T::DTYPE,
                self.resident(),
                self.sm_count,
                self.max_grid_y.into(),
            );
            // SAFETY: the partial kernel takes (const T* x, const T* dy, float*, params) and
            // writes the plan's partials_len floats; the reduce kernel (const float*, T* dw,
            // params) writes D*D*C elements; x and dy have the validated shape.
            out.dw = Some(unsafe {
                self.partials_then_reduce(
                    &plan.partial,
                    &plan.reduce,
                    plan.partials_len,
                    x.as_slice::<T>()?,
                    dy.as_slice::<T>()?,
                    &dims.weight_shape(),
                    plan.params,
                )
            }?);
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
        with_dtype!(x.dtype(), T => self.mix_typed::<T>("forward", &dims, x, w))
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
