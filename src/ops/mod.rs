//! Operators. Each lives in its own folder: public API and validation in `mod.rs`, the CPU path
//! in `cpu_kernel.rs`, a float64 `reference.rs`; its CUDA source sits in `kernels/<op>.cu`.

pub mod a3dconv;
pub mod fusion;
