//! Host-emulation backend: runs the kernels of kernels/fusion.cu, compiled for the CPU under
//! kernels/emulation/cuda_host_shim.h, with the launch plans the CUDA backend uses. This is how
//! CI executes the GPU kernels' own source without a GPU.

use super::launch::{self, Launch};
use super::{check_backward, check_forward, FusionDims, Gradients, Grads};
use crate::emulation::{self, arg, Order};
use crate::selftest::FusionBackend;
use crate::tensor::HostElement;
use crate::dtype::with_dtype;
use crate::{Error, Result, Tensor};
use std::ffi::c_void;

/// Runs the CUDA kernels on the CPU (feature `emulation`).
///
/// `sm_count` sizes the grids as a GPU with that many SMs would get them (small values give
/// grids whose grid-stride loops wrap, large ones grids with idle blocks); `misaligned` offsets
/// every buffer by one element so the kernels' scalar path runs; `reverse_threads` runs the
/// threads of a block last-first, which exposes missing barriers the other order hides.
#[derive(Debug, Clone, Copy)]
pub struct Emulated {
    /// SMs of the pretend device.
    pub sm_count: u32,
    /// Offset every buffer by one element (not 16-byte aligned).
    pub misaligned: bool,
    /// Run the threads of each block in descending order.
    pub reverse_threads: bool,
    /// Cap on the channel blocks of a grid (65535 on a GPU); small caps make every block loop
    /// over several channels.
    pub max_grid_y: u32,
}

impl Default for Emulated {
    fn default() -> Self {
        Emulated {
            sm_count: 2,
            misaligned: false,
            reverse_threads: false,
            max_grid_y: 65535,
        }
    }
}

/// A host buffer the kernels see through a (possibly misaligned) raw pointer.
struct Buffer<T> {
    data: Vec<T>,
    offset: usize,
}

impl<T: HostElement> Buffer<T> {
    fn from_slice(values: &[T], offset: usize) -> Buffer<T> {
        let mut data = vec![T::from_f32(f32::NAN); offset];
        data.extend_from_slice(values);
        Buffer { data, offset }
    }

    fn poisoned(len: usize, offset: usize) -> Buffer<T> {
        Buffer {
            data: vec![T::from_f32(f32::NAN); offset + len],
            offset,
        }
    }

    fn ptr(&self) -> *const T {
        self.data[self.offset..].as_ptr()
    }

    fn ptr_mut(&mut self) -> *mut T {
        self.data[self.offset..].as_mut_ptr()
    }

    fn into_tensor(self, shape: &[usize]) -> Result<Tensor> {
        let mut data = self.data;
        data.drain(..self.offset);
        Tensor::from_vec(data, shape)
    }
}

impl Emulated {
    fn offset(&self) -> usize {
        usize::from(self.misaligned)
    }

    fn resident(&self) -> u64 {
        launch::resident_blocks(self.sm_count, 9)
    }

    fn launch(&self, l: &Launch, args: &mut [*mut c_void]) -> Result<()> {
        let order = if self.reverse_threads {
            Order::Descending
        } else {
            Order::Ascending
        };
        // SAFETY: callers build `args` from live values of exactly the kernel's parameter types
        // (typed pointers into `Buffer`s sized for the launch's shape, and the params struct);
        // the launch is synchronous, so they outlive it.
        unsafe { emulation::launch_ordered(&l.name, l.grid, launch::BLOCK, args, order) }.map_err(
            |message| Error::Backend {
                backend: "emulation",
                message,
            },
        )
    }

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
        self.launch(
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
            self.launch(
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
            self.launch(
                &plan.partial,
                &mut [arg(&mut px), arg(&mut pdy), arg(&mut pp), arg(&mut params)],
            )?;
            let mut pp_const = partials.as_ptr();
            let mut pdw = dwb.ptr_mut();
            self.launch(
                &plan.reduce,
                &mut [arg(&mut pp_const), arg(&mut pdw), arg(&mut params)],
            )?;
            out.dw = Some(dwb.into_tensor(&dims.weight_shape())?);
        }
        Ok(out)
    }
}

impl FusionBackend for Emulated {
    fn name(&self) -> String {
        let mut name = format!("emulated:{}sm", self.sm_count);
        if self.misaligned {
            name.push_str(",misaligned");
        }
        if self.reverse_threads {
            name.push_str(",reversed");
        }
        if self.max_grid_y < 65535 {
            name.push_str(&format!(",gy<={}", self.max_grid_y));
        }
        name
    }

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
