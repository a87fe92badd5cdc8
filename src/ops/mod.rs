//! Operators. Each lives in its own folder: public API and validation in `mod.rs`, the CPU path
//! in `cpu_kernel.rs`, a float64 `reference.rs`, launch plans in `launch.rs`; its CUDA source
//! sits in `kernels/<op>.cu`. Shared argument checks are in `common.rs`.

pub mod a3dconv;
pub mod batchnorm;
pub mod boxes;
pub(crate) mod common;
pub mod depthconv;
pub mod fusion;
pub mod roi_align;
pub mod shift;
