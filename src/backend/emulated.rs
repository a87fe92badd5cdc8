//! The host-emulation backend: runs the kernels of `kernels/*.cu`, compiled for the CPU under
//! kernels/emulation/cuda_host_shim.h, with the launch plans the CUDA backend uses. This is how
//! CI executes the GPU kernels' own source without a GPU. Each op's launches live beside the op
//! (`src/ops/<op>/emulated.rs`); this file holds the pretend device and its buffers.

use crate::emulation::{self, arg, Order};
use crate::ops::common::KernelLaunch;
use crate::tensor::HostElement;
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
pub(crate) struct Buffer<T> {
    data: Vec<T>,
    offset: usize,
}

impl<T: HostElement> Buffer<T> {
    pub(crate) fn from_slice(values: &[T], offset: usize) -> Buffer<T> {
        let mut data = vec![T::from_f32(f32::NAN); offset];
        data.extend_from_slice(values);
        Buffer { data, offset }
    }

    pub(crate) fn poisoned(len: usize, offset: usize) -> Buffer<T> {
        Buffer {
            data: vec![T::from_f32(f32::NAN); offset + len],
            offset,
        }
    }

    pub(crate) fn ptr(&self) -> *const T {
        self.data[self.offset..].as_ptr()
    }

    pub(crate) fn ptr_mut(&mut self) -> *mut T {
        self.data[self.offset..].as_mut_ptr()
    }

    pub(crate) fn into_tensor(self, shape: &[usize]) -> Result<Tensor> {
        let mut data = self.data;
        data.drain(..self.offset);
        Tensor::from_vec(data, shape)
    }
}

impl Emulated {
    pub(crate) fn offset(&self) -> usize {
        usize::from(self.misaligned)
    }

    pub(crate) fn resident(&self) -> u64 {
        crate::fusion::launch::resident_blocks(self.sm_count, 9)
    }

    /// Runs a described launch (module kernels are all registered under their own names).
    pub(crate) fn run(&self, l: &KernelLaunch, args: &mut [*mut c_void]) -> Result<()> {
        let order = if self.reverse_threads {
            Order::Descending
        } else {
            Order::Ascending
        };
        // SAFETY: callers build `args` from live values of exactly the kernel's parameter types
        // (typed pointers into `Buffer`s sized for the launch's shape, and the params struct);
        // the launch is synchronous, so they outlive it.
        unsafe { emulation::launch_ordered(&l.name, l.grid, l.block, args, order) }.map_err(
            |message| Error::Backend {
                backend: "emulation",
                message: format!("{}::{}: {message}", l.module, l.name),
            },
        )
    }

    /// The report name: the pretend device and the variations it applies.
    pub(crate) fn label(&self) -> String {
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
}

impl super::Backend for Emulated {
    fn name(&self) -> String {
        self.label()
    }
}

impl Emulated {
    /// Runs `kernel(a, b, out, params)` (every mixing kernel's signature) on copies of `a` and
    /// `b` placed as [`Emulated::misaligned`] asks, into a NaN-poisoned output of `out_shape`.
    ///
    /// # Safety
    /// `l` names a kernel taking `(const T*, const T*, T*, P)`, whose accesses over `l`'s grid
    /// for `params` stay inside `a`, `b` and `out_shape`'s elements.
    pub(crate) unsafe fn two_in_one_out<T: HostElement, P>(
        &self,
        l: &KernelLaunch,
        a: &[T],
        b: &[T],
        out_shape: &[usize],
        mut params: P,
    ) -> Result<Tensor> {
        let off = self.offset();
        let (ab, bb) = (Buffer::from_slice(a, off), Buffer::from_slice(b, off));
        let mut out = Buffer::<T>::poisoned(out_shape.iter().product(), off);
        let (mut pa, mut pb, mut po) = (ab.ptr(), bb.ptr(), out.ptr_mut());
        self.run(
            l,
            &mut [arg(&mut pa), arg(&mut pb), arg(&mut po), arg(&mut params)],
        )?;
        out.into_tensor(out_shape)
    }

    /// The two launches of a deterministic reduction: `partial(a, b, partials, params)` into
    /// `partials_len` NaN-poisoned floats, then `reduce(partials, out, params)`.
    ///
    /// # Safety
    /// `partial` takes `(const T*, const T*, float*, P)`, `reduce` `(const float*, T*, P)`, and
    /// their accesses for `params` stay inside `a`, `b`, the partials and `out_shape`'s elements.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn partials_then_reduce<T: HostElement, P>(
        &self,
        partial: &KernelLaunch,
        reduce: &KernelLaunch,
        partials_len: usize,
        a: &[T],
        b: &[T],
        out_shape: &[usize],
        mut params: P,
    ) -> Result<Tensor> {
        let off = self.offset();
        let (ab, bb) = (Buffer::from_slice(a, off), Buffer::from_slice(b, off));
        let mut partials = vec![f32::NAN; partials_len];
        let mut out = Buffer::<T>::poisoned(out_shape.iter().product(), off);
        let (mut pa, mut pb, mut pp) = (ab.ptr(), bb.ptr(), partials.as_mut_ptr());
        self.run(
            partial,
            &mut [arg(&mut pa), arg(&mut pb), arg(&mut pp), arg(&mut params)],
        )?;
        let (mut pp, mut po) = (partials.as_ptr(), out.ptr_mut());
        self.run(reduce, &mut [arg(&mut pp), arg(&mut po), arg(&mut params)])?;
        out.into_tensor(out_shape)
    }
}
