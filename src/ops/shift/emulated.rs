//! The shift kernels (kernels/shift.cu) under the host emulation, with the launch plans of
//! `launch.rs`, the ones the CUDA backend runs.

use super::cpu_kernel::Direction;
use super::{launch, Shift};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::ShiftBackend;
use crate::dtype::with_dtype;
use crate::emulation::arg;
use crate::tensor::HostElement;
use crate::{Result, Tensor};

impl Emulated {
    fn shift_typed<T: HostElement>(
        &self,
        shift: &Shift,
        arg_name: &'static str,
        input: &Tensor,
        direction: Direction,
    ) -> Result<Tensor> {
        let plan = shift.plan(arg_name, input)?;
        if plan.dims.is_empty() {
            return Tensor::zeros(input.shape(), input.dtype());
        }
        let off = self.offset();
        let inb = Buffer::from_slice(input.as_slice::<T>()?, off);
        let coef = Buffer::from_slice(&launch::coefficients(&plan), off);
        let mut outb = Buffer::<T>::poisoned(plan.dims.len(), off);
        let l = launch::shift(&plan, direction, T::DTYPE, self.max_grid_y.into());
        let (mut pin, mut pout, mut pcoef) = (inb.ptr(), outb.ptr_mut(), coef.ptr());
        let mut params = launch::params(&plan);
        self.run(
            &l,
            &mut [
                arg(&mut pin),
                arg(&mut pout),
                arg(&mut pcoef),
                arg(&mut params),
            ],
        )?;
        outb.into_tensor(input.shape())
    }
}

impl ShiftBackend for Emulated {
    fn shift_forward(&self, shift: &Shift, x: &Tensor) -> Result<Tensor> {
        with_dtype!(x.dtype(), T => self.shift_typed::<T>(shift, "x", x, Direction::Forward))
    }

    fn shift_backward(&self, shift: &Shift, dy: &Tensor) -> Result<Tensor> {
        with_dtype!(dy.dtype(), T => self.shift_typed::<T>(shift, "dy", dy, Direction::Backward))
    }
}
